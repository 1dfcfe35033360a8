//! How records reach a session, whichever backend made them: a bounded channel per session
//! that never makes the producer wait (a full channel is the session's counted drop), and
//! the counters that make `delivered + dropped == matched` hold.
use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::record::batch::RecordBatch;

/// How often readers read their buffers even without a wake-up: the bound on delivery
/// latency at low rates, when the kernel batches wake-ups.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// What a session's consumer receives: batches of its records, holding up to the route's
/// capacity in records at once.
pub struct EventReceiver {
    receiver: mpsc::UnboundedReceiver<RecordBatch>,
    queued: Arc<Queued>,
}

/// What a session's channel holds now.
#[derive(Debug, Default)]
struct Queued {
    records: AtomicUsize,
    bytes: AtomicUsize,
}

/// What a session's channel holds at most, in bytes of records, whatever its capacity in
/// records: 64 MiB is about 560,000 plain records, a sixth of a second of the fastest
/// syscall loop, for a writer that stalls (page-cache writeback, a busy core).
pub const QUEUE_BYTES: usize = 64 << 20;

/// A session's batch is delivered once it holds this many bytes of records.
pub use crate::record::batch::BATCH_BYTES;

impl EventReceiver {
    pub async fn recv(&mut self) -> Option<RecordBatch> {
        let batch = self.receiver.recv().await?;
        Some(self.taken(batch))
    }

    /// Waits for the next batch (off the runtime: the writer's thread).
    pub fn blocking_recv(&mut self) -> Option<RecordBatch> {
        let batch = self.receiver.blocking_recv()?;
        Some(self.taken(batch))
    }

    /// The next batch if one is waiting.
    pub fn try_recv(&mut self) -> Option<RecordBatch> {
        let batch = self.receiver.try_recv().ok()?;
        Some(self.taken(batch))
    }

    fn taken(&self, batch: RecordBatch) -> RecordBatch {
        self.queued
            .records
            .fetch_sub(batch.len(), Ordering::Relaxed);
        self.queued
            .bytes
            .fetch_sub(batch.packed().len(), Ordering::Relaxed);
        batch
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
    /// Threads traced late after joining a target cgroup (ftrace only).
    pub late_joins: LateJoins,
}

/// Threads that joined a target cgroup from outside and were traced only from when the
/// daemon saw the join, or never (they exited first): ftrace filters by thread, not cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LateJoins {
    pub count: u64,
    /// Their untraced time after joining, summed.
    pub delay_ns: u64,
    pub max_delay_ns: u64,
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

/// Userspace counters of a session, shared with whatever delivers its records.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl DeliveryCounters {
    /// The session's counters, given what the kernel side counted.
    pub fn with_kernel(&self, matched: u64, dropped_kernel: u64) -> SessionCounters {
        SessionCounters {
            matched,
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped_kernel,
            dropped_userspace: self.dropped.load(Ordering::Relaxed),
            late_joins: LateJoins::default(),
        }
    }

    /// On ftrace every record made is delivered or dropped by the queue, and events the
    /// ring buffer lost never became records.
    pub fn with_ftrace(&self, produced: u64, lost: u64, late_joins: LateJoins) -> SessionCounters {
        SessionCounters {
            late_joins,
            ..self.with_kernel(produced + lost, lost)
        }
    }
}

/// Where a session's records go: its channel (bounded in records and in bytes, not in
/// batches: a batch holds whatever one read of a buffer found), and its delivery counters.
#[derive(Clone)]
pub struct Route {
    sender: mpsc::UnboundedSender<RecordBatch>,
    /// Records and bytes sent and not yet received.
    queued: Arc<Queued>,
    capacity: usize,
    counters: Arc<DeliveryCounters>,
}

impl Route {
    /// A route holding up to `capacity` records (at least 1) and [`QUEUE_BYTES`], and its
    /// receiving end.
    pub fn new(capacity: usize, counters: Arc<DeliveryCounters>) -> (Self, EventReceiver) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(Queued::default());
        let route = Self {
            sender,
            queued: queued.clone(),
            capacity: capacity.max(1),
            counters,
        };
        (route, EventReceiver { receiver, queued })
    }

    /// Hands a batch to the session: as much of it as the session's channel has room for,
    /// from the front; the rest is the session's counted drop.
    pub fn deliver(&self, mut batch: RecordBatch) {
        let records = batch.len();
        if records == 0 {
            return;
        }
        // Room is taken before it is checked, so concurrent senders never overfill it.
        let bytes = batch.packed().len();
        let queued_records = self.queued.records.fetch_add(records, Ordering::Relaxed);
        let queued_bytes = self.queued.bytes.fetch_add(bytes, Ordering::Relaxed);
        let room = self.capacity.saturating_sub(queued_records);
        let byte_room = QUEUE_BYTES.saturating_sub(queued_bytes);
        let fits = if bytes <= byte_room {
            records.min(room)
        } else {
            batch.records_within(byte_room).min(room)
        };
        if fits < records {
            batch = batch.split_to(fits);
            self.queued
                .records
                .fetch_sub(records - fits, Ordering::Relaxed);
            self.queued
                .bytes
                .fetch_sub(bytes - batch.packed().len(), Ordering::Relaxed);
            self.counters
                .dropped
                .fetch_add((records - fits) as u64, Ordering::Relaxed);
        }
        if fits == 0 {
            return;
        }
        let sent_bytes = batch.packed().len();
        if self.sender.send(batch).is_ok() {
            self.counters
                .delivered
                .fetch_add(fits as u64, Ordering::Relaxed);
        } else {
            // The consumer is gone (its run ended): nothing will take these.
            self.queued.records.fetch_sub(fits, Ordering::Relaxed);
            self.queued.bytes.fetch_sub(sent_bytes, Ordering::Relaxed);
            self.counters
                .dropped
                .fetch_add(fits as u64, Ordering::Relaxed);
        }
    }
}

/// Drain work done, for the benchmark and `/metrics`.
#[derive(Debug, Default)]
pub struct DrainStats {
    pub records: AtomicU64,
    pub busy_ns: AtomicU64,
    pub passes: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{batch::BatchBuilder, samples};

    fn batch(records: u32) -> RecordBatch {
        let mut builder = BatchBuilder::default();
        for tid in 0..records {
            builder.push(&samples::record(39, 1, tid, 7), &[]);
        }
        builder.take()
    }

    #[test]
    fn what_does_not_fit_is_a_counted_drop_and_room_comes_back_when_taken() {
        let counters = Arc::new(DeliveryCounters::default());
        let (route, mut receiver) = Route::new(5, counters.clone());
        route.deliver(batch(3));
        // Two of three fit: the front two.
        route.deliver(batch(3));
        route.deliver(batch(2));
        let now = counters.with_kernel(8, 0);
        assert_eq!((now.delivered, now.dropped_userspace), (5, 3));
        assert!(now.balanced());
        assert_eq!(receiver.try_recv().unwrap().len(), 3);
        let front: Vec<u32> = receiver
            .try_recv()
            .unwrap()
            .iter()
            .map(|(r, _)| r.tid)
            .collect();
        assert_eq!(front, [0, 1]);
        route.deliver(batch(3));
        assert_eq!(counters.with_kernel(11, 0).delivered, 8);
        assert_eq!(receiver.try_recv().unwrap().len(), 3);
        assert!(receiver.try_recv().is_none());
    }

    #[test]
    fn ftrace_losses_count_as_matched_and_dropped() {
        let counters = DeliveryCounters::default().with_ftrace(10, 4, LateJoins::default());
        assert_eq!((counters.matched, counters.dropped_kernel), (14, 4));
    }
}
