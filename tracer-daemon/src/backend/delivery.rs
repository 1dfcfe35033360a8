//! How records reach a session, whichever backend made them: a bounded channel per session
//! that never makes the producer wait (a full channel is the session's counted drop), and
//! the counters that make `delivered + dropped == matched` hold.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::record::Event;

/// How often readers read their buffers even without a wake-up: the bound on delivery
/// latency at low rates, when the kernel batches wake-ups.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// What a session's consumer receives.
pub type EventReceiver = mpsc::Receiver<Arc<Event>>;

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

/// Where a session's records go: its bounded channel, and its delivery counters.
#[derive(Clone)]
pub struct Route {
    sender: mpsc::Sender<Arc<Event>>,
    counters: Arc<DeliveryCounters>,
}

impl Route {
    /// A route holding up to `capacity` records (at least 1), and its receiving end.
    pub fn new(capacity: usize, counters: Arc<DeliveryCounters>) -> (Self, EventReceiver) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Self { sender, counters }, receiver)
    }

    /// Hands one event to the session; a full channel is the session's counted drop.
    pub fn deliver(&self, event: Arc<Event>) {
        match self.sender.try_send(event) {
            Ok(()) => self.counters.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
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
    use crate::record::samples;

    fn event() -> Arc<Event> {
        Arc::new(Event::new(&samples::record(39, 1, 1, 7), &[]))
    }

    #[test]
    fn a_full_channel_is_a_counted_drop() {
        let counters = Arc::new(DeliveryCounters::default());
        let (route, mut receiver) = Route::new(2, counters.clone());
        for _ in 0..5 {
            route.deliver(event());
        }
        let counters = counters.with_kernel(5, 0);
        assert_eq!((counters.delivered, counters.dropped_userspace), (2, 3));
        assert!(counters.balanced());
        assert!(receiver.try_recv().is_ok());
    }

    #[test]
    fn ftrace_losses_count_as_matched_and_dropped() {
        let counters = DeliveryCounters::default().with_ftrace(10, 4, LateJoins::default());
        assert_eq!((counters.matched, counters.dropped_kernel), (14, 4));
    }
}
