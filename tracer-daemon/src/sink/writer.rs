//! A run's writer: takes the events the engine delivers to one session, writes them to its
//! event log and hands them to its span export, on a thread of the blocking pool (it does
//! file I/O), enforcing the session's event limit.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::{
    container_of::ContainerOf,
    eventlog::EventLogWriter,
    export::{ExportSink, SpanBatch},
    follow::{Feed, LogBatch},
};
use crate::{
    backend::EventReceiver,
    record::{batch::RecordBatch, clock::now_rfc3339, ContainerMeta, WallClock},
    space::{is_out_of_space, SpaceReserve},
    sync::lock,
};

/// While writes fail (a full disk), how often one is tried again; the batches in between
/// are counted as dropped without a try.
const RETRY_WRITES_EVERY: Duration = Duration::from_secs(1);

/// What the writer of a run has done so far.
#[derive(Debug, Default)]
pub struct RunProgress {
    /// Events written to the event log.
    pub written: AtomicU64,
    /// Delivered events not written because the run was past its event limit.
    pub over_limit: AtomicU64,
    /// Written events the event log removed to stay under its size cap.
    pub evicted: AtomicU64,
    /// Delivered events the event log could not take (the disk was full): dropped.
    pub unwritten: AtomicU64,
    /// Why the event log takes nothing now, while it does not.
    pub failure: Mutex<Option<WriteFailure>>,
}

/// The event log's writes fail: the run delivers events but records none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    /// The disk (or the quota) is full, rather than another I/O error.
    pub out_of_space: bool,
    pub message: String,
    /// When the first write failed (RFC 3339).
    pub since: String,
}

/// Where a run's events beyond its own limit come from when several runs share one: a
/// cluster session's `max_events` is one budget for all its parts, on all nodes.
pub trait EventBudget: Send + Sync {
    /// Takes up to `wanted` more events this run may record. Blocking (the writer runs on
    /// the blocking pool).
    fn grant(&self, wanted: u64) -> Grant;
    /// Gives back what was granted and not used (the run ended).
    fn release(&self, unused: u64);
}

/// What a budget grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// This many events (at least one).
    Events(u64),
    /// None: the budget is spent, the run has reached its limit.
    Spent,
}

/// A container that joined the run: events of its cgroup say they come from it.
pub type ContainerJoin = (u64, Arc<ContainerMeta>);

/// Everything a run's writer needs.
pub struct RunWriter {
    pub session: Uuid,
    pub log: EventLogWriter,
    /// The run's containers, for the events' `container`.
    pub containers: ContainerOf,
    /// Containers that join while the run goes on. Sent before their cgroup is traced, so
    /// they are here before their first event.
    pub joins: mpsc::Receiver<ContainerJoin>,
    pub progress: Arc<RunProgress>,
    /// Events this run may still record (`limits.max_events` less earlier runs' events).
    pub max_events: Option<u64>,
    /// Told once the run has recorded `max_events`, or its budget is spent.
    pub limit_reached: Option<oneshot::Sender<()>>,
    /// A limit shared with other runs (a cluster session's parts), beside `max_events`.
    pub budget: Option<Arc<dyn EventBudget>>,
    /// Where written events go to become spans.
    pub export: Option<ExportSink>,
    /// The run's wall-clock conversion, shared with its spans.
    pub clock: WallClock,
    /// Where each batch goes once it is in the log, for the session's followers.
    pub feed: Feed,
    /// The data directory's space reserve: while it is released (the disk was found full)
    /// the log takes nothing, so what room there is goes to the database.
    pub space: Option<Arc<SpaceReserve>>,
}

impl RunWriter {
    /// Writes the run's records until the engine closes the channel (the run ended), then
    /// closes the event log. Blocking: run it on the blocking pool.
    pub fn run(mut self, mut events: EventReceiver) -> std::io::Result<()> {
        let mut written = 0u64;
        // Events the budget has granted this run.
        let mut granted = 0u64;
        // While writes fail: when the next one is tried.
        let mut retry_at: Option<Instant> = None;
        // Cgroups whose container (or none) the log knows, and whether they are in one.
        let mut placed: HashMap<u64, bool> = HashMap::new();
        while let Some(mut batch) = events.blocking_recv() {
            for (cgroup_id, container) in self.joins.try_iter() {
                self.containers.add(cgroup_id, container);
                // Cgroups in no container so far may be under this one.
                placed.retain(|_, in_container| *in_container);
                placed.remove(&cgroup_id);
            }
            let mut room = self
                .max_events
                .map_or(u64::MAX, |max| max.saturating_sub(written));
            let mut spent = false;
            if let Some(budget) = &self.budget {
                let wanted = (batch.len() as u64).min(room);
                if granted - written < wanted {
                    match budget.grant(wanted - (granted - written)) {
                        Grant::Events(events) => granted += events,
                        Grant::Spent => spent = true,
                    }
                }
                room = room.min(granted - written);
            }
            let mut over_limit = 0u64;
            if room < batch.len() as u64 {
                over_limit = batch.len() as u64 - room;
                batch = batch.split_to(room as usize);
            }
            self.place_containers(&batch, &mut placed);
            let count = batch.len() as u64;
            let first_seq = self.log.next_seq();
            let Some(evicted) = self.append(&batch, &mut retry_at) else {
                self.progress.unwritten.fetch_add(count, Ordering::Relaxed);
                self.progress
                    .over_limit
                    .fetch_add(over_limit, Ordering::Relaxed);
                continue;
            };
            if count > 0 {
                let renderer = self.log.renderer();
                if let Some(export) = &self.export {
                    export.push(SpanBatch {
                        records: batch.clone(),
                        containers: renderer.containers.clone(),
                        clock: self.clock,
                    });
                }
                self.feed.publish(LogBatch {
                    first_seq,
                    last_seq: first_seq + count - 1,
                    records: batch,
                    renderer,
                });
            }
            written += count;
            self.progress.written.fetch_add(count, Ordering::Relaxed);
            self.progress
                .over_limit
                .fetch_add(over_limit, Ordering::Relaxed);
            self.progress.evicted.fetch_add(evicted, Ordering::Relaxed);
            if spent || self.max_events.is_some_and(|max| written >= max) {
                if let Some(limit_reached) = self.limit_reached.take() {
                    let _ = limit_reached.send(());
                }
            }
        }
        if let Some(budget) = &self.budget {
            budget.release(granted - written);
        }
        self.log.finish()
    }

    /// Tells the log which container each new cgroup of `batch` belongs to (events of a
    /// thread come in runs of one cgroup: one comparison per event otherwise).
    fn place_containers(&mut self, batch: &RecordBatch, placed: &mut HashMap<u64, bool>) {
        let mut last = None;
        for cgroup_id in batch.cgroup_ids() {
            if last == Some(cgroup_id) || placed.contains_key(&cgroup_id) {
                last = Some(cgroup_id);
                continue;
            }
            last = Some(cgroup_id);
            let container = self.containers.get(cgroup_id);
            placed.insert(cgroup_id, container.is_some());
            if let Some(container) = container {
                self.log.add_container(cgroup_id, container);
            }
        }
    }

    /// Appends a batch to the event log; `None` if it is not in the log (the write failed,
    /// or writes fail and it is not time to try again), and then the run says why.
    fn append(&mut self, batch: &RecordBatch, retry_at: &mut Option<Instant>) -> Option<u64> {
        if retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let disk_full = self.space.as_deref().is_some_and(SpaceReserve::is_released);
        let appended = if disk_full {
            Err(std::io::ErrorKind::StorageFull.into())
        } else {
            self.log.append(batch)
        };
        match appended {
            Ok(evicted) => {
                if retry_at.take().is_some() {
                    *lock(&self.progress.failure) = None;
                    tracing::info!(session = %self.session, "the event log takes events again");
                }
                Some(evicted)
            }
            Err(err) => {
                *retry_at = Some(Instant::now() + RETRY_WRITES_EVERY);
                let mut failure = lock(&self.progress.failure);
                if failure.is_none() {
                    tracing::error!(session = %self.session, %err,
                        "writing the event log failed: events are dropped until it works again");
                    *failure = Some(WriteFailure {
                        out_of_space: is_out_of_space(&err),
                        message: err.to_string(),
                        since: now_rfc3339(),
                    });
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backend::delivery::{DeliveryCounters, Route},
        record::{batch::BatchBuilder, decode::Limits, samples},
        sink::{event_filter::EventFilter, eventlog::read_events, render::RunContext},
    };

    fn writer(
        dir: &std::path::Path,
        max_events: Option<u64>,
    ) -> (
        RunWriter,
        mpsc::Sender<ContainerJoin>,
        oneshot::Receiver<()>,
    ) {
        let (joins_tx, joins) = mpsc::channel();
        let (limit_tx, limit_rx) = oneshot::channel();
        let clock = WallClock::from_offset_ns(0);
        let context = RunContext::new(Uuid::nil(), clock, Limits::default());
        let writer = RunWriter {
            session: Uuid::nil(),
            log: EventLogWriter::open(dir, 1 << 30, context).unwrap(),
            containers: ContainerOf::new(Default::default()),
            joins,
            progress: Arc::default(),
            max_events,
            limit_reached: Some(limit_tx),
            budget: None,
            export: None,
            clock,
            feed: crate::sink::follow::Feed::default(),
            space: None,
        };
        (writer, joins_tx, limit_rx)
    }

    /// Delivers batches of records (by thread id and cgroup) and closes the channel.
    fn delivered(batches: &[&[(u32, u64)]]) -> EventReceiver {
        let (route, events) = Route::new(1024, Arc::new(DeliveryCounters::default()));
        for records in batches {
            let mut batch = BatchBuilder::default();
            for (tid, cgroup_id) in *records {
                batch.push(&samples::record(39, 1, *tid, *cgroup_id), &[]);
            }
            route.deliver(batch.take());
        }
        events
    }

    fn read_back(dir: &std::path::Path) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        read_events(dir, &EventFilter::default(), |line: &[u8]| {
            lines.push(serde_json::from_slice(line).unwrap());
            true
        })
        .unwrap();
        lines
    }

    #[test]
    fn events_past_the_limit_are_counted_and_the_limit_is_told_once() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _joins, mut limit) = writer(dir.path(), Some(3));
        let progress = writer.progress.clone();
        let events = delivered(&[&[(0, 7), (1, 7)], &[(2, 7), (3, 7), (4, 7)]]);
        writer.run(events).unwrap();
        assert_eq!(progress.written.load(Ordering::Relaxed), 3);
        assert_eq!(progress.over_limit.load(Ordering::Relaxed), 2);
        assert!(limit.try_recv().is_ok());
        let tids: Vec<_> = read_back(dir.path())
            .iter()
            .map(|e| e["tid"].clone())
            .collect();
        assert_eq!(tids, [0, 1, 2]);
    }

    /// Grants up to `chunk` events at a time out of `left`; counts what is given back.
    struct Budget {
        left: Mutex<u64>,
        chunk: u64,
        released: AtomicU64,
    }

    impl EventBudget for Budget {
        fn grant(&self, wanted: u64) -> Grant {
            let mut left = lock(&self.left);
            let given = wanted.max(self.chunk).min(*left);
            *left -= given;
            if given == 0 {
                Grant::Spent
            } else {
                Grant::Events(given)
            }
        }

        fn release(&self, unused: u64) {
            self.released.fetch_add(unused, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_shared_budget_bounds_the_run_and_gets_back_what_it_did_not_use() {
        let dir = tempfile::tempdir().unwrap();
        let (mut run, _joins, mut limit) = writer(dir.path(), None);
        let budget = Arc::new(Budget {
            left: Mutex::new(4),
            chunk: 1,
            released: AtomicU64::new(0),
        });
        run.budget = Some(budget.clone());
        let progress = run.progress.clone();
        let events = delivered(&[&[(0, 7), (1, 7)], &[(2, 7), (3, 7), (4, 7)], &[(5, 7)]]);
        run.run(events).unwrap();
        assert_eq!(progress.written.load(Ordering::Relaxed), 4);
        assert_eq!(progress.over_limit.load(Ordering::Relaxed), 2);
        assert!(limit.try_recv().is_ok(), "a spent budget ends the run");
        assert_eq!(budget.released.load(Ordering::Relaxed), 0);

        let dir = tempfile::tempdir().unwrap();
        let (mut second, _joins, _limit) = writer(dir.path(), None);
        let budget = Arc::new(Budget {
            left: Mutex::new(100),
            chunk: 5,
            released: AtomicU64::new(0),
        });
        second.budget = Some(budget.clone());
        second.run(delivered(&[&[(0, 7), (1, 7)]])).unwrap();
        assert_eq!(
            budget.released.load(Ordering::Relaxed),
            3,
            "5 granted, 2 used"
        );
    }

    #[test]
    fn a_container_that_joined_names_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, joins, _limit) = writer(dir.path(), None);
        let meta = ContainerMeta {
            id: "c0ffee".into(),
            name: "web".into(),
            image: "shop:1".into(),
        };
        joins.send((7, Arc::new(meta))).unwrap();
        writer.run(delivered(&[&[(1, 7), (1, 8)]])).unwrap();
        let lines = read_back(dir.path());
        assert_eq!(lines[0]["container"]["name"], "web");
        assert_eq!(lines[0]["seq"], 1);
        assert!(lines[1].get("container").is_none());
    }
}
