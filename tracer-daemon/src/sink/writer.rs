//! A run's writer: takes the events the engine delivers to one session, writes them to its
//! event log and hands them to its span export, on a thread of the blocking pool (it does
//! file I/O), enforcing the session's event limit.
use std::{
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
    event_json,
    eventlog::EventLogWriter,
    export::{ExportSink, SpanInput},
    follow::{Feed, LogBatch},
};
use crate::{
    backend::EventReceiver,
    record::{clock::now_rfc3339, decode::Limits, ContainerMeta, WallClock},
    space::{is_out_of_space, SpaceReserve},
    sync::lock,
};

/// A batch is written once it holds this many bytes of JSON (or the channel is empty).
const BATCH_BYTES: usize = 1 << 20;
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
    /// Told once the run has recorded `max_events`.
    pub limit_reached: Option<oneshot::Sender<()>>,
    /// Where written events go to become spans.
    pub export: Option<ExportSink>,
    /// The run's wall-clock conversion, shared with its spans.
    pub clock: WallClock,
    /// How much of each argument's data the session shows.
    pub limits: Limits,
    /// Where each batch goes once it is in the log, for the session's followers.
    pub feed: Feed,
    /// The data directory's space reserve: while it is released (the disk was found full)
    /// the log takes nothing, so what room there is goes to the database.
    pub space: Option<Arc<SpaceReserve>>,
}

impl RunWriter {
    /// Writes the run's events until the engine closes the channel (the run ended), then
    /// closes the event log. Blocking: run it on the blocking pool.
    pub fn run(mut self, mut events: EventReceiver) -> std::io::Result<()> {
        let mut lines = Vec::with_capacity(BATCH_BYTES);
        let mut written = 0u64;
        // While writes fail: when the next one is tried.
        let mut retry_at: Option<Instant> = None;
        while let Some(first) = events.blocking_recv() {
            for (cgroup_id, container) in self.joins.try_iter() {
                self.containers.add(cgroup_id, container);
            }
            lines.clear();
            let first_seq = self.log.next_seq();
            let mut batch = 0u64;
            let mut over_limit = 0u64;
            let mut spans = Vec::new();
            let mut next = Some(first);
            while let Some(event) = next {
                if self.max_events.is_some_and(|max| written + batch >= max) {
                    over_limit += 1;
                } else {
                    let container = self.containers.get(event.record.cgroup_id);
                    event_json::write_line(
                        &event,
                        &self.session,
                        container.as_deref(),
                        &self.clock,
                        &self.limits,
                        first_seq + batch,
                        &mut lines,
                    );
                    if self.export.is_some() {
                        spans.push(SpanInput {
                            event: event.clone(),
                            container,
                            clock: self.clock,
                        });
                    }
                    batch += 1;
                }
                next = if lines.len() < BATCH_BYTES {
                    events.try_recv().ok()
                } else {
                    None
                };
            }
            let Some(evicted) = self.append(&lines, batch, &mut retry_at) else {
                self.progress.unwritten.fetch_add(batch, Ordering::Relaxed);
                self.progress
                    .over_limit
                    .fetch_add(over_limit, Ordering::Relaxed);
                continue;
            };
            if batch > 0 {
                self.feed.publish(LogBatch {
                    first_seq,
                    last_seq: first_seq + batch - 1,
                    lines: bytes::Bytes::copy_from_slice(&lines),
                });
            }
            if let Some(export) = &self.export {
                export.push(spans);
            }
            written += batch;
            self.progress.written.fetch_add(batch, Ordering::Relaxed);
            self.progress
                .over_limit
                .fetch_add(over_limit, Ordering::Relaxed);
            self.progress.evicted.fetch_add(evicted, Ordering::Relaxed);
            if self.max_events.is_some_and(|max| written >= max) {
                if let Some(limit_reached) = self.limit_reached.take() {
                    let _ = limit_reached.send(());
                }
            }
        }
        self.log.finish()
    }

    /// Appends a batch to the event log; `None` if it is not in the log (the write failed,
    /// or writes fail and it is not time to try again), and then the run says why.
    fn append(&mut self, lines: &[u8], events: u64, retry_at: &mut Option<Instant>) -> Option<u64> {
        if retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let disk_full = self.space.as_deref().is_some_and(SpaceReserve::is_released);
        let appended = if disk_full {
            Err(std::io::ErrorKind::StorageFull.into())
        } else {
            self.log.append(lines, events)
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
    use tokio::sync::mpsc as tokio_mpsc;

    use super::*;
    use crate::{
        record::{samples, Event},
        sink::eventlog::{read_events, EventFilter},
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
        let writer = RunWriter {
            session: Uuid::nil(),
            log: EventLogWriter::open(dir, 1 << 30).unwrap(),
            containers: ContainerOf::new(Default::default()),
            joins,
            progress: Arc::default(),
            max_events,
            limit_reached: Some(limit_tx),
            export: None,
            clock: WallClock::from_offset_ns(0),
            limits: Limits::default(),
            feed: crate::sink::follow::Feed::default(),
            space: None,
        };
        (writer, joins_tx, limit_rx)
    }

    fn read_back(dir: &std::path::Path) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        read_events(dir, &EventFilter::default(), |line| {
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
        let (events_tx, events) = tokio_mpsc::channel(16);
        for tid in 0..5 {
            events_tx
                .try_send(Arc::new(Event::new(&samples::record(39, 1, tid, 7), &[])))
                .unwrap();
        }
        drop(events_tx);
        writer.run(events).unwrap();
        assert_eq!(progress.written.load(Ordering::Relaxed), 3);
        assert_eq!(progress.over_limit.load(Ordering::Relaxed), 2);
        assert!(limit.try_recv().is_ok());
        assert_eq!(read_back(dir.path()).len(), 3);
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
        let (events_tx, events) = tokio_mpsc::channel(16);
        events_tx
            .try_send(Arc::new(Event::new(&samples::record(39, 1, 1, 7), &[])))
            .unwrap();
        events_tx
            .try_send(Arc::new(Event::new(&samples::record(39, 1, 1, 8), &[])))
            .unwrap();
        drop(events_tx);
        writer.run(events).unwrap();
        let lines = read_back(dir.path());
        assert_eq!(lines[0]["container"]["name"], "web");
        assert!(lines[1].get("container").is_none());
    }
}
