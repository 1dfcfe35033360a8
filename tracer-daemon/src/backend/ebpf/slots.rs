//! The eBPF backend's sessions: 64 slots (a bit each in the kernel's filter maps), the
//! routes their records take, and one drain task per ring that reads records and fans them
//! out to the slots they belong to.
use std::{
    sync::{atomic::Ordering, Arc, Mutex, RwLock},
    time::Instant,
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracer_common::{SessionMask, SyscallRecord, MAX_SESSIONS};

use super::{
    ring::RecordRing, EbpfBackend, EbpfOptions, KernelCounters, LoadError, MapUpdateError,
    SlotCounters,
};
use crate::{
    backend::delivery::{DrainStats, Route, BATCH_BYTES, FLUSH_INTERVAL},
    record::{batch::BatchBuilder, monotonic_ns, TraceFilter},
    sync::lock,
};

/// The loaded programs and maps, the slots, and the drain tasks.
pub struct EbpfSessions {
    /// Every map update and counter read goes through here: callers are on the blocking pool.
    backend: Mutex<EbpfBackend>,
    routes: Arc<RwLock<Vec<Option<Route>>>>,
    free_slots: Mutex<Vec<u32>>,
    flushers: Vec<mpsc::Sender<oneshot::Sender<()>>>,
    drains: Vec<JoinHandle<()>>,
    /// The loaded programs' kernel ids, read once at load (a bpf() call each).
    program_ids: Vec<u32>,
}

impl EbpfSessions {
    /// Loads and attaches the programs and starts a drain task per ring. Must be called
    /// inside a tokio runtime.
    pub fn start(options: &EbpfOptions, drain_stats: &Arc<DrainStats>) -> Result<Self, LoadError> {
        let mut backend = EbpfBackend::load(options)?;
        let rings = backend.take_rings().map_err(|err| {
            LoadError::Cpus(format!("registering ring buffers with tokio: {err}"))
        })?;
        let routes: Arc<RwLock<Vec<Option<Route>>>> =
            Arc::new(RwLock::new(vec![None; MAX_SESSIONS as usize]));
        let mut flushers = Vec::new();
        let mut drains = Vec::new();
        for ring in rings {
            let (flush_tx, flush_rx) = mpsc::channel(4);
            flushers.push(flush_tx);
            drains.push(tokio::spawn(drain_task(
                ring,
                routes.clone(),
                drain_stats.clone(),
                flush_rx,
            )));
        }
        Ok(Self {
            program_ids: backend.program_ids(),
            backend: Mutex::new(backend),
            routes,
            // Lowest slots first, so a lone session is in slot 0.
            free_slots: Mutex::new((0..MAX_SESSIONS).rev().collect()),
            flushers,
            drains,
        })
    }

    /// Programs a free slot for `filter`, routing its records to `route`; `None` when every
    /// slot is taken. Blocking (map updates).
    pub fn start_session(
        &self,
        filter: &TraceFilter,
        route: Route,
    ) -> Result<Option<u32>, MapUpdateError> {
        let Some(slot) = lock(&self.free_slots).pop() else {
            return Ok(None);
        };
        // Route first: a record of this slot must never find nobody to go to.
        self.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)[slot as usize] = Some(route);
        let mut backend = lock(&self.backend);
        if let Err(err) = backend.program_slot(slot, monotonic_ns(), filter) {
            // Undo what was written, so the slot's next user starts clean.
            if let Err(undo) = backend.clear_slot(slot) {
                tracing::error!(slot, err = %undo, "clearing a slot that failed to start");
            }
            drop(backend);
            self.release_slot(slot);
            return Err(err);
        }
        drop(backend);
        // Drain tasks that idled start their periodic flush.
        for flusher in &self.flushers {
            let (ack, _) = oneshot::channel();
            let _ = flusher.try_send(ack);
        }
        Ok(Some(slot))
    }

    /// Adds a cgroup to a running slot. Blocking (a map update).
    pub fn add_cgroup(&self, slot: u32, cgroup_id: u64) -> Result<(), MapUpdateError> {
        lock(&self.backend).add_cgroup(cgroup_id, 1 << slot)
    }

    /// Removes a cgroup from a running slot. Blocking (a map update).
    pub fn remove_cgroup(&self, slot: u32, cgroup_id: u64) -> Result<(), MapUpdateError> {
        lock(&self.backend).remove_cgroup(cgroup_id, 1 << slot)
    }

    /// Stops `slot` matching anything new: `bpf()` map updates, which never sleep.
    pub fn clear_slot(&self, slot: u32) -> Result<(), MapUpdateError> {
        lock(&self.backend).clear_slot(slot)
    }

    /// What the kernel counted for `slot`: a `bpf()` map lookup, which never sleeps.
    pub fn slot_counters(&self, slot: u32) -> Result<SlotCounters, aya::maps::MapError> {
        lock(&self.backend).slot_counters(slot)
    }

    /// The kernel's totals. Blocking (map reads).
    pub fn kernel_counters(&self) -> Result<KernelCounters, aya::maps::MapError> {
        lock(&self.backend).counters()
    }

    pub fn program_ids(&self) -> &[u32] {
        &self.program_ids
    }

    /// Whether the programs are attached (while any session runs).
    pub fn programs_attached(&self) -> bool {
        lock(&self.backend).is_attached()
    }

    /// The cgroups the kernel's cache of cgroup sessions holds. Blocking (a `bpf()` call
    /// per entry).
    pub fn cached_cgroups(&self) -> Vec<u64> {
        lock(&self.backend).cached_cgroups()
    }

    /// How many rings (and drain tasks) there are.
    pub fn ring_count(&self) -> usize {
        self.drains.len()
    }

    /// Frees a slot whose records are all accounted for.
    pub fn release_slot(&self, slot: u32) {
        self.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)[slot as usize] = None;
        lock(&self.free_slots).push(slot);
    }

    /// Reads every ring once now and waits until that is done.
    pub async fn flush(&self) {
        let mut acks = Vec::new();
        for flusher in &self.flushers {
            let (ack, done) = oneshot::channel();
            if flusher.send(ack).await.is_ok() {
                acks.push(done);
            }
        }
        for done in acks {
            let _ = done.await;
        }
    }
}

impl Drop for EbpfSessions {
    fn drop(&mut self) {
        for drain in &self.drains {
            drain.abort();
        }
    }
}

/// Reads one ring: when the kernel wakes it, on every flush tick while any session runs,
/// and on request. With no session it only waits (an idle daemon does not wake up 100 times
/// a second per ring); a session's start wakes it with a request.
async fn drain_task(
    mut ring: RecordRing,
    routes: Arc<RwLock<Vec<Option<Route>>>>,
    stats: Arc<DrainStats>,
    mut flush_requests: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fan_out = FanOut::default();
    loop {
        let mut ack = None;
        let idle = routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .all(Option::is_none);
        tokio::select! {
            ready = ring.drain_when_ready(|record, data| fan_out.take(record, data, &routes)) => {
                if let Err(err) = ready {
                    tracing::error!(%err, "waiting on a record ring buffer failed");
                    tokio::time::sleep(FLUSH_INTERVAL).await;
                }
            }
            _ = tick.tick(), if !idle => {
                ring.drain_now(|record, data| fan_out.take(record, data, &routes));
            }
            request = flush_requests.recv() => {
                ring.drain_now(|record, data| fan_out.take(record, data, &routes));
                ack = request;
            }
        }
        let (handled, busy_ns) = fan_out.finish_pass(&routes);
        if handled > 0 {
            stats.records.fetch_add(handled as u64, Ordering::Relaxed);
            stats.passes.fetch_add(1, Ordering::Relaxed);
            stats.busy_ns.fetch_add(busy_ns, Ordering::Relaxed);
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

/// Sorts one drain pass's records into a batch per session, delivered when it is full and
/// at the end of the pass, with one lock of the routes per delivery.
#[derive(Default)]
struct FanOut {
    /// By slot: the records read for it and not yet delivered.
    batches: Vec<BatchBuilder>,
    /// Slots with records waiting.
    pending: SessionMask,
    /// Records read in this pass.
    read: usize,
    /// When the pass's first record was read: the start of its userspace work.
    first_read: Option<Instant>,
}

impl FanOut {
    /// Copies a record into the batch of every session it belongs to; returns the slots
    /// whose batch is full (deliver them before reading on).
    fn collect(&mut self, record: &SyscallRecord, data: &[u8]) -> SessionMask {
        self.first_read.get_or_insert_with(Instant::now);
        if self.batches.is_empty() {
            self.batches
                .resize_with(MAX_SESSIONS as usize, BatchBuilder::default);
        }
        self.read += 1;
        let mut full = 0;
        let mut sessions = record.sessions;
        while sessions != 0 {
            let slot = sessions.trailing_zeros();
            sessions &= sessions - 1;
            let batch = &mut self.batches[slot as usize];
            batch.push(record, data);
            self.pending |= 1 << slot;
            if batch.bytes() >= BATCH_BYTES {
                full |= 1 << slot;
            }
        }
        full
    }

    /// Delivers the batches of `slots` to their sessions; a session without room for its
    /// batch drops it, counted. Records of a slot with no route (its session stopped, its
    /// counters final before the route went) are let go.
    fn deliver(&mut self, slots: SessionMask, routes: &RwLock<Vec<Option<Route>>>) {
        let routes = routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut slots = slots & self.pending;
        self.pending &= !slots;
        while slots != 0 {
            let slot = slots.trailing_zeros() as usize;
            slots &= slots - 1;
            let batch = self.batches[slot].take();
            if let Some(Some(route)) = routes.get(slot) {
                route.deliver(batch);
            }
        }
    }

    /// Ends a pass: delivers every batch. Returns how many records the pass read and the
    /// nanoseconds spent on them, from reading the first to delivering the last.
    fn finish_pass(&mut self, routes: &RwLock<Vec<Option<Route>>>) -> (usize, u64) {
        let Some(first_read) = self.first_read.take() else {
            return (0, 0);
        };
        self.deliver(SessionMask::MAX, routes);
        // Between passes no slot holds a buffer (a stopped session's would be kept for
        // good): the next pass takes them from the pool again, the same ones.
        for batch in &mut self.batches {
            batch.release();
        }
        let read = std::mem::take(&mut self.read);
        (read, first_read.elapsed().as_nanos() as u64)
    }

    /// Reads a record in a drain pass, delivering batches that fill up.
    fn take(&mut self, record: &SyscallRecord, data: &[u8], routes: &RwLock<Vec<Option<Route>>>) {
        let full = self.collect(record, data);
        if full != 0 {
            self.deliver(full, routes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::delivery::DeliveryCounters, record::samples};

    #[test]
    fn a_record_goes_to_every_slot_in_its_mask_that_has_a_route() {
        let counters: Vec<Arc<DeliveryCounters>> = (0..3).map(|_| Arc::default()).collect();
        let mut receivers = Vec::new();
        let mut table = vec![None; MAX_SESSIONS as usize];
        for (slot, counters) in [0usize, 2].into_iter().zip(&counters) {
            let (route, receiver) = Route::new(8, counters.clone());
            table[slot] = Some(route);
            receivers.push(receiver);
        }
        let routes = RwLock::new(table);
        let mut fan_out = FanOut::default();
        let mut record = samples::record(39, 1, 1, 7);
        // Slots 0, 1 (no route: stopped) and 2.
        record.sessions = 0b111;
        fan_out.take(&record, &[], &routes);
        assert!(fan_out.batches[0].holds_buffer());
        assert_eq!(fan_out.finish_pass(&routes).0, 1);
        // Between passes no slot holds a buffer, a stopped session's included.
        assert!(!fan_out.batches.iter().any(BatchBuilder::holds_buffer));
        for receiver in &mut receivers {
            assert_eq!(receiver.try_recv().unwrap().len(), 1);
        }
        assert_eq!(counters[0].with_kernel(1, 0).delivered, 1);
        assert_eq!(counters[1].with_kernel(1, 0).delivered, 1);
    }
}
