//! The tracing engine: session slots in the kernel, drain tasks that read the ring buffers,
//! and the fan-out of every record to the sessions it belongs to.
//!
//! ```text
//!  ring (shared, or one per CPU) ──drain task──▶ Arc<Event> ──try_send──▶ session channel
//!      │ wake-up every N records                          full? count a userspace drop
//!      └ or the periodic flush (FLUSH_INTERVAL)
//! ```
//!
//! A slow consumer fills only its own bounded channel: its session counts the records it
//! missed, and the drain task never waits for it, so other sessions are not stalled.
//! For every session, `delivered + dropped_kernel + dropped_userspace == matched` once its
//! records are drained ([`Engine::stop_session`] waits for that).
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracer_common::{record_flags, SyscallRecord, MAX_SESSIONS};

use crate::{
    ebpf::{
        EbpfBackend, EbpfOptions, KernelCounters, KernelFilter, LoadError, MapUpdateError,
        RecordRing,
    },
    lock,
};

/// How often drain tasks read their ring even without a wake-up: the bound on delivery
/// latency at low rates, when the kernel batches wake-ups.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// One syscall, as delivered to sessions: the kernel record plus its decoded path.
#[derive(Clone, Debug)]
pub struct Event {
    pub record: SyscallRecord,
    /// The path argument, for syscalls that take one (lossily decoded as UTF-8).
    pub path: Option<Box<str>>,
}

impl Event {
    fn new(record: &SyscallRecord, path: &[u8]) -> Self {
        let readable = record_flags::HAS_PATH | record_flags::PATH_UNREADABLE;
        let path = (record.flags & readable == record_flags::HAS_PATH)
            .then(|| String::from_utf8_lossy(path).into_owned().into_boxed_str());
        Self {
            record: *record,
            path,
        }
    }

    pub fn path_truncated(&self) -> bool {
        self.record.flags & record_flags::PATH_TRUNCATED != 0
    }

    /// The syscall takes a path, but it could be read neither at entry nor at exit (NULL, a
    /// bad pointer, or memory that was not resident), or could not be kept.
    pub fn path_unavailable(&self) -> bool {
        self.record.flags & (record_flags::PATH_UNREADABLE | record_flags::PATH_LOST) != 0
    }
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionCounters {
    /// Records that passed every filter of the session, counted in the kernel.
    pub matched: u64,
    /// Records handed to the session's consumer.
    pub delivered: u64,
    /// Matched records the kernel could not keep or write (full map or ring buffer).
    pub dropped_kernel: u64,
    /// Records the session's consumer was too slow to take (its channel was full).
    pub dropped_userspace: u64,
}

impl SessionCounters {
    pub fn dropped(&self) -> u64 {
        self.dropped_kernel + self.dropped_userspace
    }

    /// Whether every matched record is accounted for.
    pub fn balanced(&self) -> bool {
        self.delivered + self.dropped() == self.matched
    }
}

/// Userspace counters of a session, shared with the drain tasks.
#[derive(Debug, Default)]
struct DeliveryCounters {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// Where the drain tasks send a slot's records.
#[derive(Clone)]
struct Route {
    sender: mpsc::Sender<Arc<Event>>,
    counters: Arc<DeliveryCounters>,
}

/// Drain work done, for the benchmark and `/metrics`.
#[derive(Debug, Default)]
pub struct DrainStats {
    pub records: AtomicU64,
    pub busy_ns: AtomicU64,
    pub passes: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("all {MAX_SESSIONS} kernel session slots are in use; stop a session first")]
    NoFreeSlot,
    #[error(transparent)]
    Map(#[from] MapUpdateError),
    #[error("reading kernel counters: {0}")]
    Counters(#[from] aya::maps::MapError),
}

/// A running session's handle: its slot and the receiving end of its records.
pub struct SessionHandle {
    slot: u32,
    counters: Arc<DeliveryCounters>,
}

impl SessionHandle {
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

/// Options for the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub ebpf: EbpfOptions,
    /// Default capacity of each session's channel, in records.
    pub session_queue: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            ebpf: EbpfOptions::default(),
            session_queue: 65536,
        }
    }
}

pub struct Engine {
    backend: Mutex<EbpfBackend>,
    routes: Arc<RwLock<Vec<Option<Route>>>>,
    free_slots: Mutex<Vec<u32>>,
    flushers: Vec<mpsc::Sender<oneshot::Sender<()>>>,
    drains: Vec<JoinHandle<()>>,
    drain_stats: Arc<DrainStats>,
    session_queue: usize,
}

impl Engine {
    /// Loads the kernel programs and starts one drain task per ring. Must be called inside a
    /// tokio runtime.
    pub fn start(options: &EngineOptions) -> Result<Self, LoadError> {
        let mut backend = EbpfBackend::load(&options.ebpf)?;
        let rings = backend.take_rings().map_err(|err| {
            LoadError::Cpus(format!("registering ring buffers with tokio: {err}"))
        })?;
        let routes: Arc<RwLock<Vec<Option<Route>>>> =
            Arc::new(RwLock::new(vec![None; MAX_SESSIONS as usize]));
        let drain_stats = Arc::new(DrainStats::default());
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
            backend: Mutex::new(backend),
            routes,
            // Lowest slots first, so a lone session is in slot 0.
            free_slots: Mutex::new((0..MAX_SESSIONS).rev().collect()),
            flushers,
            drains,
            drain_stats,
            session_queue: options.session_queue,
        })
    }

    /// Starts tracing for a new session; its records arrive on the returned receiver, which
    /// holds up to the engine's default `session_queue` records.
    pub fn start_session(
        &self,
        filter: &KernelFilter,
    ) -> Result<(SessionHandle, mpsc::Receiver<Arc<Event>>), EngineError> {
        self.start_session_with_queue(filter, self.session_queue)
    }

    /// [`Engine::start_session`] with a queue of `queue` records (at least 1) for this session.
    pub fn start_session_with_queue(
        &self,
        filter: &KernelFilter,
        queue: usize,
    ) -> Result<(SessionHandle, mpsc::Receiver<Arc<Event>>), EngineError> {
        let slot = lock(&self.free_slots)
            .pop()
            .ok_or(EngineError::NoFreeSlot)?;
        let (sender, receiver) = mpsc::channel(queue.max(1));
        let counters = Arc::new(DeliveryCounters::default());
        // Route first: a record of this slot must never find nobody to go to.
        self.routes.write().unwrap_or_else(|e| e.into_inner())[slot as usize] = Some(Route {
            sender,
            counters: counters.clone(),
        });
        let programmed = lock(&self.backend).program_slot(slot, monotonic_ns(), filter);
        if let Err(err) = programmed {
            self.release_slot(slot);
            return Err(err.into());
        }
        Ok((SessionHandle { slot, counters }, receiver))
    }

    /// Adds a cgroup to a running session.
    pub fn add_cgroup(&self, session: &SessionHandle, cgroup_id: u64) -> Result<(), EngineError> {
        Ok(lock(&self.backend).add_cgroup(cgroup_id, 1 << session.slot)?)
    }

    /// Removes a cgroup from a running session.
    pub fn remove_cgroup(
        &self,
        session: &SessionHandle,
        cgroup_id: u64,
    ) -> Result<(), EngineError> {
        Ok(lock(&self.backend).remove_cgroup(cgroup_id, 1 << session.slot)?)
    }

    /// The session's counters now.
    pub fn counters(&self, session: &SessionHandle) -> Result<SessionCounters, EngineError> {
        let kernel = lock(&self.backend).slot_counters(session.slot)?;
        Ok(SessionCounters {
            matched: kernel.matched,
            delivered: session.counters.delivered.load(Ordering::Relaxed),
            dropped_kernel: kernel.dropped,
            dropped_userspace: session.counters.dropped.load(Ordering::Relaxed),
        })
    }

    /// Stops a session: no new syscall matches it, every record already written for it is
    /// delivered (or counted dropped), and its slot is freed for reuse. Returns its final
    /// counters.
    pub async fn stop_session(
        &self,
        session: SessionHandle,
    ) -> Result<SessionCounters, EngineError> {
        lock(&self.backend).clear_slot(session.slot)?;
        // A program that matched before the clear may still be writing: drain until every
        // matched record is accounted for (bounded; syscalls that entered before the clear and
        // have not returned yet are not matched until they return, and then count for nobody
        // once the route is gone).
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut counters = self.counters(&session)?;
        while !counters.balanced() && Instant::now() < deadline {
            self.flush().await;
            counters = self.counters(&session)?;
            if !counters.balanced() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if !counters.balanced() {
            tracing::warn!(
                slot = session.slot,
                ?counters,
                "session stopped with records unaccounted for"
            );
        }
        self.release_slot(session.slot);
        Ok(counters)
    }

    fn release_slot(&self, slot: u32) {
        self.routes.write().unwrap_or_else(|e| e.into_inner())[slot as usize] = None;
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

    pub fn kernel_counters(&self) -> Result<KernelCounters, aya::maps::MapError> {
        lock(&self.backend).counters()
    }

    pub fn program_ids(&self) -> Vec<u32> {
        lock(&self.backend).program_ids()
    }

    pub fn drain_stats(&self) -> &DrainStats {
        &self.drain_stats
    }

    /// How many rings (and drain tasks) there are.
    pub fn ring_count(&self) -> usize {
        self.drains.len()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for drain in &self.drains {
            drain.abort();
        }
    }
}

/// Reads one ring: when the kernel wakes it, on every flush tick, and on request.
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
        tokio::select! {
            ready = ring.drain_when_ready(|record, path| fan_out.collect(record, path)) => {
                if let Err(err) = ready {
                    tracing::error!(%err, "waiting on a record ring buffer failed");
                    tokio::time::sleep(FLUSH_INTERVAL).await;
                }
            }
            _ = tick.tick() => {
                ring.drain_now(|record, path| fan_out.collect(record, path));
            }
            request = flush_requests.recv() => {
                ring.drain_now(|record, path| fan_out.collect(record, path));
                ack = request;
            }
        }
        let (handled, busy_ns) = fan_out.deliver(&routes);
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

/// Collects one drain pass's events, then delivers them with one lock of the routes.
#[derive(Default)]
struct FanOut {
    batch: Vec<Arc<Event>>,
    /// When the pass's first record was read: the start of its userspace work.
    first_read: Option<Instant>,
}

impl FanOut {
    fn collect(&mut self, record: &SyscallRecord, path: &[u8]) {
        self.first_read.get_or_insert_with(Instant::now);
        self.batch.push(Arc::new(Event::new(record, path)));
    }

    /// Sends each event to every session it belongs to; a full channel is that session's
    /// counted drop. Returns how many events there were and the nanoseconds spent on them,
    /// from reading the first to delivering the last.
    fn deliver(&mut self, routes: &RwLock<Vec<Option<Route>>>) -> (usize, u64) {
        let count = self.batch.len();
        let Some(first_read) = self.first_read.take() else {
            return (0, 0);
        };
        let routes = routes.read().unwrap_or_else(|e| e.into_inner());
        for event in self.batch.drain(..) {
            let mut sessions = event.record.sessions;
            while sessions != 0 {
                let slot = sessions.trailing_zeros() as usize;
                sessions &= sessions - 1;
                // No route: the session stopped; its counters were final before the route went.
                let Some(Some(route)) = routes.get(slot) else {
                    continue;
                };
                match route.sender.try_send(event.clone()) {
                    Ok(()) => route.counters.delivered.fetch_add(1, Ordering::Relaxed),
                    Err(_) => route.counters.dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        (count, first_read.elapsed().as_nanos() as u64)
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
