//! Following a session's events as they are recorded: what `GET …/events?follow=true` and
//! the WebSocket stream send.
//!
//! A follower reads from what was recorded, never from the session's own path: the run's
//! writer appends each batch to the event log and then publishes it ([`Feed`]) on a broadcast
//! channel that never waits for anyone. A follower first catches up from the log on disk
//! (from `after_seq`, or the start), then takes the published batches; one that falls behind
//! the channel's window (a slow client) goes back to the log for what it missed. So a slow
//! follower only lags — the session neither slows down nor drops for it — and every event
//! reaches it in order, exactly once. Events the log's size cap evicted before a follower
//! read them are reported as a gap (`{"gap": n}`), never skipped silently.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::{
    event_filter::EventFilter,
    eventlog::{read_events, EventLines},
    render::LineRenderer,
};
use crate::record::batch::RecordBatch;

/// What a catch-up gathers of single lines before sending them: large enough that handing
/// chunks to the connection costs little next to reading them (at 64 KiB, thread switches
/// were about a sixth of a download's CPU samples, by perf), small enough that a few in
/// flight stay cheap.
const CATCH_UP_CHUNK: usize = 256 << 10;

/// Batches a follower may be behind before it reads the rest from disk.
pub const FEED_BATCHES: usize = 64;

/// Records the writer appended to the event log in one go, as it appended them.
#[derive(Debug)]
pub struct LogBatch {
    /// The `seq` of the first and last event in `records`.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Shared by every follower without a copy; rendered by each (its filter picks).
    pub records: RecordBatch,
    pub renderer: LineRenderer,
}

/// Where a run publishes what it recorded. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    sender: broadcast::Sender<Arc<LogBatch>>,
    /// The `seq` of the last event published.
    recorded: Arc<AtomicU64>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(FEED_BATCHES).0,
            recorded: Arc::default(),
        }
    }
}

impl Feed {
    /// Publishes a batch that is in the log; never waits (a follower too far behind reads
    /// the log instead).
    pub fn publish(&self, batch: LogBatch) {
        self.recorded.store(batch.last_seq, Ordering::Relaxed);
        // Nobody listening is not an error: the batch is in the log.
        let _ = self.sender.send(Arc::new(batch));
    }

    /// What is published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            recorded: self.recorded.clone(),
        }
    }
}

/// A follower's end of a [`Feed`].
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<LogBatch>>,
    recorded: Arc<AtomicU64>,
}

/// What a follower sends its client.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// Complete NDJSON lines, in `seq` order.
    Lines(Bytes),
    /// How many events were recorded but not sent yet, after the last lines (while the
    /// session runs).
    Lag(u64),
    /// Events evicted by the log's size cap before they could be read.
    Gap(u64),
    /// The stream is over: the session is not running (any more).
    End,
}

/// The followers of every session, for `/metrics`: their count and how far each is behind.
pub struct Followers {
    next_id: AtomicU64,
    all: Mutex<HashMap<u64, Progress>>,
    /// Set when the daemon shuts down: live followers end their streams, so the server's
    /// graceful shutdown does not wait for clients that would follow forever.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Followers {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            all: Mutex::default(),
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

/// How far one follower is: the last `seq` it sent, and the last one its run recorded.
#[derive(Clone)]
struct Progress {
    session: Uuid,
    sent: Arc<AtomicU64>,
    recorded: Option<Arc<AtomicU64>>,
}

impl Followers {
    /// Ends every live follower's stream (the daemon is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    fn register(self: &Arc<Self>, progress: Progress) -> FollowerGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sent = progress.sent.clone();
        self.all
            .lock()
            .expect("followers lock")
            .insert(id, progress);
        FollowerGuard {
            followers: self.clone(),
            id,
            sent,
        }
    }

    /// (session, events recorded but not yet sent) of every follower now.
    pub fn lags(&self) -> Vec<(Uuid, u64)> {
        self.all
            .lock()
            .expect("followers lock")
            .values()
            .map(|progress| {
                let recorded = progress
                    .recorded
                    .as_ref()
                    .map_or(0, |recorded| recorded.load(Ordering::Relaxed));
                let sent = progress.sent.load(Ordering::Relaxed);
                (progress.session, recorded.saturating_sub(sent))
            })
            .collect()
    }
}

/// A follower's entry in [`Followers`], removed when the follower ends.
struct FollowerGuard {
    followers: Arc<Followers>,
    id: u64,
    /// The last `seq` sent (or skipped by the filter).
    sent: Arc<AtomicU64>,
}

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        self.followers
            .all
            .lock()
            .expect("followers lock")
            .remove(&self.id);
    }
}

/// One follower of session `session`.
pub struct Follower {
    pub session: Uuid,
    /// The session's event log.
    pub dir: PathBuf,
    pub filter: EventFilter,
    /// The running run's feed (subscribed before anything is read), `None` if the session
    /// does not run: then the follower sends what was recorded and ends.
    pub live: Option<Subscription>,
    pub followers: Arc<Followers>,
}

impl Follower {
    /// Sends the session's events to `out` until the run ends or `out` is closed (the client
    /// left). Reading the log runs on the blocking pool.
    pub async fn run(self, out: mpsc::Sender<Followed>) {
        let after = self.filter.after_seq.unwrap_or(0);
        // Only live followers count (a download is not following anything).
        let guard = self.live.as_ref().map(|live| {
            self.followers.register(Progress {
                session: self.session,
                sent: Arc::new(AtomicU64::new(after)),
                recorded: Some(live.recorded.clone()),
            })
        });
        let sent = guard.as_ref().map_or_else(
            || Arc::new(AtomicU64::new(after)),
            |guard| guard.sent.clone(),
        );
        let Self {
            dir,
            mut filter,
            mut live,
            followers,
            ..
        } = self;
        // The next seq wanted.
        let mut next = filter.after_seq.unwrap_or(0).saturating_add(1);
        loop {
            filter.after_seq = Some(next - 1);
            let Some(read) = catch_up(&dir, &filter, &out).await else {
                return;
            };
            if read.gap > 0 && out.send(Followed::Gap(read.gap)).await.is_err() {
                return;
            }
            next = next.max(read.next_seq);
            sent.store(next - 1, Ordering::Relaxed);
            let Some(subscription) = &mut live else {
                let _ = out.send(Followed::End).await;
                return;
            };
            let mut closing = followers.closing.subscribe();
            let live = tokio::select! {
                live = follow_live(subscription, &filter, &mut next, &out, &sent) => live,
                _ = closing.wait_for(|&closing| closing) => Live::Ended,
            };
            match live {
                Live::Lagged => {}
                Live::Ended => {
                    let _ = out.send(Followed::End).await;
                    return;
                }
                Live::ClientGone => return,
            }
        }
    }
}

enum Live {
    /// Fell out of the feed's window: read the rest from disk.
    Lagged,
    /// The run ended (its writer published everything before it closed the feed).
    Ended,
    ClientGone,
}

/// Sends the published batches after `next`, filtered, keeping `sent` up to date.
async fn follow_live(
    subscription: &mut Subscription,
    filter: &EventFilter,
    next: &mut u64,
    out: &mpsc::Sender<Followed>,
    sent: &AtomicU64,
) -> Live {
    loop {
        sent.store(*next - 1, Ordering::Relaxed);
        // A client that leaves while nothing is recorded is noticed at once, not at the
        // next event.
        let received = tokio::select! {
            received = subscription.receiver.recv() => received,
            () = out.closed() => return Live::ClientGone,
        };
        let batch = match received {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(_)) => return Live::Lagged,
            Err(broadcast::error::RecvError::Closed) => return Live::Ended,
        };
        if batch.last_seq < *next {
            continue;
        }
        if batch.first_seq > *next {
            // Published before this follower subscribed and not on disk when it read: the
            // log has them now.
            return Live::Lagged;
        }
        let lines = filtered(&batch, *next, filter);
        *next = batch.last_seq + 1;
        if !lines.is_empty() && out.send(Followed::Lines(lines)).await.is_err() {
            return Live::ClientGone;
        }
        let recorded = subscription.recorded.load(Ordering::Relaxed);
        let lag = Followed::Lag(recorded.saturating_sub(*next - 1));
        if out.send(lag).await.is_err() {
            return Live::ClientGone;
        }
    }
}

/// The lines of `batch` from seq `from` on that pass `filter`.
fn filtered(batch: &LogBatch, from: u64, filter: &EventFilter) -> Bytes {
    let mut lines = Vec::new();
    batch
        .renderer
        .write_batch(&batch.records, batch.first_seq, from, filter, &mut lines);
    Bytes::from(lines)
}

/// What a catch-up from disk read.
struct CaughtUp {
    /// The seq after the last event in the log.
    next_seq: u64,
    gap: u64,
}

/// Sends what the log holds after `filter.after_seq`; `None` if the client left.
async fn catch_up(
    dir: &std::path::Path,
    filter: &EventFilter,
    out: &mpsc::Sender<Followed>,
) -> Option<CaughtUp> {
    let (dir, filter, out) = (dir.to_owned(), filter.clone(), out.clone());
    tokio::task::spawn_blocking(move || {
        let mut chunks = Chunks {
            chunk: Vec::new(),
            out,
            client_left: false,
        };
        let position = match read_events(&dir, &filter, &mut chunks) {
            Ok(position) => position,
            Err(err) => {
                tracing::error!(dir = %dir.display(), %err, "reading the event log failed");
                return None;
            }
        };
        if chunks.client_left || !chunks.send_chunk() {
            return None;
        }
        Some(CaughtUp {
            next_seq: position.next_seq,
            gap: position.gap,
        })
    })
    .await
    .ok()
    .flatten()
}

/// Sends what a catch-up reads to the client in chunks of lines: lines rendered together
/// go as they are (no copy), single lines (from segments of the first format) are gathered.
struct Chunks {
    chunk: Vec<u8>,
    out: mpsc::Sender<Followed>,
    client_left: bool,
}

impl Chunks {
    /// Sends the lines gathered so far, if any; false if the client left.
    fn send_chunk(&mut self) -> bool {
        if !self.chunk.is_empty() {
            let lines = Bytes::from(std::mem::take(&mut self.chunk));
            self.client_left |= self.out.blocking_send(Followed::Lines(lines)).is_err();
        }
        !self.client_left
    }
}

impl EventLines for &mut Chunks {
    fn line(&mut self, line: &[u8]) -> bool {
        self.chunk.extend_from_slice(line);
        self.chunk.push(b'\n');
        self.chunk.len() < CATCH_UP_CHUNK || self.send_chunk()
    }

    fn lines(&mut self, lines: Vec<u8>) -> bool {
        if !self.send_chunk() {
            return false;
        }
        self.client_left |= self
            .out
            .blocking_send(Followed::Lines(Bytes::from(lines)))
            .is_err();
        !self.client_left
    }
}

#[cfg(test)]
mod tests {
    use syscalls::Sysno;

    use super::*;
    use crate::{
        record::{batch::BatchBuilder, decode::Limits, samples},
        sink::{eventlog::EventLogWriter, render::RunContext},
    };

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tracerd-follow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn open(dir: &std::path::Path) -> EventLogWriter {
        let clock = crate::record::WallClock::from_offset_ns(0);
        let context = RunContext::new(Uuid::nil(), clock, Limits::default());
        EventLogWriter::open(dir, 1 << 30, context).unwrap()
    }

    /// Appends events `seqs` to the log (even ones `read`, odd ones `write`), then publishes
    /// them, as the writer does.
    fn record(log: &mut EventLogWriter, feed: &Feed, seqs: std::ops::RangeInclusive<u64>) {
        assert_eq!(log.next_seq(), *seqs.start());
        let mut batch = BatchBuilder::default();
        for seq in seqs.clone() {
            let syscall = if seq % 2 == 0 {
                Sysno::read
            } else {
                Sysno::write
            };
            batch.push(&samples::record(syscall.id() as u32, 1, 1, 7), &[]);
        }
        let records = batch.take();
        log.append(&records).unwrap();
        feed.publish(LogBatch {
            first_seq: *seqs.start(),
            last_seq: *seqs.end(),
            records,
            renderer: log.renderer(),
        });
    }

    async fn received(mut followed: mpsc::Receiver<Followed>) -> (Vec<u64>, Vec<u64>, bool) {
        let (mut seqs, mut gaps, mut ended) = (Vec::new(), Vec::new(), false);
        while let Some(item) = followed.recv().await {
            match item {
                Followed::Lines(lines) => {
                    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        let value: serde_json::Value = serde_json::from_slice(line).unwrap();
                        seqs.push(value["seq"].as_u64().unwrap());
                    }
                }
                Followed::Gap(gap) => gaps.push(gap),
                Followed::Lag(_) => {}
                Followed::End => ended = true,
            }
        }
        (seqs, gaps, ended)
    }

    fn follower(dir: &std::path::Path, feed: Option<&Feed>, filter: EventFilter) -> Follower {
        Follower {
            session: Uuid::nil(),
            dir: dir.to_owned(),
            filter,
            live: feed.map(Feed::subscribe),
            followers: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_follower_gets_the_log_then_every_new_event_in_order_until_the_run_ends() {
        let dir = temp_dir("live");
        let mut log = open(&dir);
        let feed = Feed::default();
        record(&mut log, &feed, 1..=3);
        let (out, followed) = mpsc::channel(4);
        let task = tokio::spawn(follower(&dir, Some(&feed), EventFilter::default()).run(out));
        // More batches than the feed holds while the follower may not have read any: it
        // falls behind and reads the rest from the log.
        for batch in 0..(FEED_BATCHES as u64 + 10) {
            let first = 4 + batch * 3;
            record(&mut log, &feed, first..=first + 2);
        }
        drop(feed);
        let (seqs, gaps, ended) = received(followed).await;
        task.await.unwrap();
        let last = 3 + (FEED_BATCHES as u64 + 10) * 3;
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
        assert!(gaps.is_empty());
        assert!(ended);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn resuming_after_a_seq_gets_exactly_the_rest_and_evicted_events_are_a_gap() {
        let dir = temp_dir("resume");
        let feed = Feed::default();
        let mut log = open(&dir);
        record(&mut log, &feed, 1..=4);
        log.finish().unwrap();
        let mut log = open(&dir);
        record(&mut log, &feed, 5..=8);
        let resume = |after, filter: EventFilter| {
            let (out, followed) = mpsc::channel(4);
            let filter = EventFilter {
                after_seq: Some(after),
                ..filter
            };
            tokio::spawn(follower(&dir, None, filter).run(out));
            received(followed)
        };
        assert_eq!(
            resume(5, EventFilter::default()).await,
            (vec![6, 7, 8], vec![], true)
        );
        let reads = EventFilter {
            syscalls: Some(vec!["read".into()]),
            ..EventFilter::default()
        };
        assert_eq!(resume(0, reads).await, (vec![2, 4, 6, 8], vec![], true));
        std::fs::remove_file(dir.join("00000000000000000001-4.tlog")).unwrap();
        assert_eq!(
            resume(2, EventFilter::default()).await,
            (vec![5, 6, 7, 8], vec![2], true)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_follower_whose_client_left_ends_and_unregisters() {
        let dir = temp_dir("gone");
        let mut log = open(&dir);
        let feed = Feed::default();
        record(&mut log, &feed, 1..=2);
        let followers = Arc::new(Followers::default());
        let (out, followed) = mpsc::channel(1);
        let mut follower = follower(&dir, Some(&feed), EventFilter::default());
        follower.followers = followers.clone();
        let task = tokio::spawn(follower.run(out));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(followers.lags().len(), 1);
        // The client leaves while nothing new is recorded.
        drop(followed);
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the follower ends once its client is gone")
            .unwrap();
        assert!(followers.lags().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
