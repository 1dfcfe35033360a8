//! A run's sender: takes batches in order (memory, else the spool), encodes each once, and
//! sends it until it goes; when the run ends with the collector away, what is left goes back
//! to the spool's head for the next run.
use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{
    span::SpanMaker,
    spool::Peeked,
    transport::{Accepted, SendError, Transport},
    ExportState, Queue, Shared, SpanBatch,
};
use crate::sync::lock;

/// A batch taken for sending.
struct Batch {
    inputs: Vec<SpanBatch>,
    /// Set when it came from the spool: committed there once sent.
    from_spool: Option<Peeked>,
    /// Spans of its first requests the collector took (a retry goes on after them), and
    /// how many of those it rejected.
    taken: u64,
    rejected: u64,
    /// The collector's answer when it refused one of its requests for good.
    refused: Option<String>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The sender: takes batches in order and sends each until it goes. The queue's spool is
/// on disk, so every step that may touch it runs on the blocking pool.
pub(super) async fn send(shared: Arc<Shared>, transport: Transport, mut maker: SpanMaker) {
    let mut closing_since: Option<Instant> = None;
    while let Some(mut batch) = take_batch(&shared).await {
        // Encoded once (ids assigned then), so a retry sends the same spans; on the
        // blocking pool, as a request of thousands of spans takes a millisecond or more.
        let requests;
        (requests, maker, batch) =
            blocking(move || (maker.requests(&batch.inputs), maker, batch)).await;
        // Requests the collector took: a retry goes on from the first it did not.
        let mut sent = 0;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut outcome = Ok(());
            while let Some(request) = requests.get(sent) {
                match send_request(&shared, &transport, request.bytes.clone()).await {
                    Ok(rejected) => {
                        batch.taken += request.spans;
                        batch.rejected += rejected.min(request.spans);
                        sent += 1;
                    }
                    Err(error) if error.permanent => {
                        refused(&shared, &mut batch, request.spans, error.message);
                        sent += 1;
                    }
                    Err(error) => {
                        outcome = Err(error.message);
                        break;
                    }
                }
            }
            let settled;
            (settled, batch, closing_since) = {
                let shared = shared.clone();
                blocking(move || {
                    let settled = settle(&shared, &batch, outcome, &mut closing_since);
                    (settled, batch, closing_since)
                })
                .await
            };
            match settled {
                Settled::Sent => break,
                Settled::Retry => {}
                // The run is over and the batch waits in the spool for the next one.
                Settled::GivenBack => return,
            }
            // Wait, but wake early when the run ends (to start its grace period).
            let _ = tokio::time::timeout(backoff, shared.wake.notified()).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Sends one request; `Ok` with the spans the collector rejected in it.
async fn send_request(
    shared: &Shared,
    transport: &Transport,
    request: Bytes,
) -> Result<u64, SendError> {
    // The transport has its own timeout; this one only guards against a hang.
    let deadline = shared.config.timeout + Duration::from_secs(1);
    match tokio::time::timeout(deadline, transport.send(request)).await {
        Ok(Ok(accepted)) => Ok(rejected(shared, &accepted)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(SendError {
            message: format!("no answer in {deadline:?}"),
            permanent: false,
        }),
    }
}

/// The collector refused a request for good (OTLP's non-retryable answers): its spans are
/// lost to export — counted as failed, logged, and shown as the export's last error —
/// rather than holding up every later span.
fn refused(shared: &Shared, batch: &mut Batch, spans: u64, message: String) {
    tracing::error!(
        endpoint = %shared.config.endpoint,
        %message,
        spans,
        "the collector refused a request for good; its spans are not sent again"
    );
    batch.taken += spans;
    batch.rejected += spans;
    batch.refused = Some(message);
}

/// The spans the collector took but rejected (OTLP's partial success): lost to export, said
/// here and counted as failed by [`count_taken`].
fn rejected(shared: &Shared, accepted: &Accepted) -> u64 {
    if accepted.rejected_spans > 0 {
        tracing::warn!(
            endpoint = %shared.config.endpoint,
            rejected = accepted.rejected_spans,
            message = %accepted.message,
            "the collector rejected spans"
        );
    }
    accepted.rejected_spans
}

/// Runs queue work that may read or write the spool on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Advances the spool past a peeked batch; its corrupt frames, skipped, count as failed.
fn commit_spool(shared: &Shared, queue: &mut Queue, peeked: &Peeked) {
    shared
        .counters
        .failed
        .fetch_add(peeked.skipped, Ordering::Relaxed);
    if let Err(err) = queue.spool.commit(peeked) {
        tracing::error!(%err, "advancing the span spool failed");
    }
}

enum Settled {
    Sent,
    Retry,
    GivenBack,
}

/// Records how a send went. A failed batch stays for a retry, unless the run ended and its
/// grace period is over: then it is given back to the spool.
fn settle(
    shared: &Shared,
    batch: &Batch,
    outcome: Result<(), String>,
    closing_since: &mut Option<Instant>,
) -> Settled {
    let mut queue = lock(&shared.queue);
    let Err(error) = outcome else {
        sent(shared, &mut queue, batch);
        return Settled::Sent;
    };
    if queue.state == ExportState::Ok {
        tracing::warn!(endpoint = %shared.config.endpoint, %error, "the collector did not take a batch; retrying, spans wait in the spool");
    }
    if queue.state != ExportState::SpoolFull {
        queue.state = ExportState::Retrying;
    }
    queue.last_error = Some(error);
    if let Some(closed) = queue.closed {
        let since = *closing_since.get_or_insert(closed);
        if since.elapsed() >= shared.options.close_grace {
            give_back(shared, &mut queue, batch);
            return Settled::GivenBack;
        }
    }
    Settled::Retry
}

/// A batch went: the spool moves past it, and its spans count as exported (or as failed,
/// those the collector rejected).
fn sent(shared: &Shared, queue: &mut Queue, batch: &Batch) {
    if let Some(peeked) = &batch.from_spool {
        commit_spool(shared, queue, peeked);
    }
    queue.in_flight = 0;
    if queue.state != ExportState::SpoolFull || queue.spool.is_empty() {
        queue.state = ExportState::Ok;
    }
    queue.last_error = batch.refused.clone();
    count_taken(shared, batch);
}

/// The spans the collector took count as exported, those it rejected as failed.
fn count_taken(shared: &Shared, batch: &Batch) {
    let counters = &shared.counters;
    counters
        .exported
        .fetch_add(batch.taken - batch.rejected, Ordering::Relaxed);
    counters.failed.fetch_add(batch.rejected, Ordering::Relaxed);
}

/// The run ended with the collector away: the unsent batch and the memory queue go to the
/// head of the spool, in order, for the next run.
/// What the collector took of the batch counts as such and is not sent again: only the rest
/// waits (from the spool, the batch is then moved past and its rest put back at its head).
fn give_back(shared: &Shared, queue: &mut Queue, batch: &Batch) {
    count_taken(shared, batch);
    let mut rest: Vec<SpanBatch> = Vec::new();
    match &batch.from_spool {
        None => rest.extend(batch.untaken()),
        Some(peeked) if batch.taken > 0 => {
            commit_spool(shared, queue, peeked);
            rest.extend(batch.untaken());
        }
        // Still whole at the spool's head.
        Some(_) => {}
    }
    rest.extend(queue.memory.drain(..));
    queue.memory_spans = 0;
    queue.in_flight = 0;
    keep_for_next_run(shared, queue, rest);
}

/// Puts unsent spans (older than everything in the spool) at the spool's head.
fn keep_for_next_run(shared: &Shared, queue: &mut Queue, rest: Vec<SpanBatch>) {
    let spans: u64 = rest.iter().map(|batch| batch.len() as u64).sum();
    let counter = match queue.spool.prepend(&rest) {
        Ok(()) => &shared.counters.spooled,
        Err(err) => {
            tracing::error!(%err, spans, "keeping unsent spans in the spool failed");
            &shared.counters.failed
        }
    };
    counter.fetch_add(spans, Ordering::Relaxed);
    tracing::warn!(
        spans = queue.spool.spans(),
        "the run ended with spans unsent; they wait in the spool for the next run"
    );
}

/// Waits for a batch: `batch_spans` of them, or whatever is there once the first has waited
/// `batch_delay` (or the run ended). `None` when the run ended and nothing is left.
async fn take_batch(shared: &Arc<Shared>) -> Option<Batch> {
    let mut first_seen: Option<Instant> = None;
    loop {
        let next;
        (next, first_seen) = {
            let shared = shared.clone();
            blocking(move || (next_batch(&shared, &mut first_seen), first_seen)).await
        };
        let wait = match next {
            Next::Batch(batch) => return Some(batch),
            Next::Done => return None,
            Next::Wait(wait) => wait,
        };
        let _ = tokio::time::timeout(wait, shared.wake.notified()).await;
    }
}

enum Next {
    Batch(Batch),
    /// The run ended and nothing is left to send.
    Done,
    /// Nothing is due yet: look again after this long, or when woken.
    Wait(Duration),
}

/// What the sender does next. Blocking: it may read the spool.
fn next_batch(shared: &Shared, first_seen: &mut Option<Instant>) -> Next {
    let options = &shared.options;
    let mut queue = lock(&shared.queue);
    let available = queue.memory_spans + queue.spool.spans();
    if available == 0 && queue.closed.is_some() {
        return Next::Done;
    }
    if queue
        .closed
        .is_some_and(|closed| closed.elapsed() >= options.close_grace)
    {
        // The run is over and its grace spent (a slow collector, a long spool): what
        // is in memory joins the spool's head for the next run.
        let rest: Vec<SpanBatch> = queue.memory.drain(..).collect();
        queue.memory_spans = 0;
        keep_for_next_run(shared, &mut queue, rest);
        return Next::Done;
    }
    if available > 0 {
        let since = *first_seen.get_or_insert_with(Instant::now);
        let due = available >= options.batch_spans as u64
            || queue.closed.is_some()
            || since.elapsed() >= options.batch_delay;
        if due {
            if !queue.memory.is_empty() {
                let inputs = take_spans(&mut queue, options.batch_spans);
                return Next::Batch(Batch::new(inputs, None));
            }
            match queue.spool.peek(options.batch_spans) {
                Ok(mut peeked) if !peeked.inputs.is_empty() => {
                    let inputs = std::mem::take(&mut peeked.inputs);
                    return Next::Batch(Batch::new(inputs, Some(peeked)));
                }
                Ok(peeked) => {
                    // Counted but unreadable (a torn or corrupt tail): those spans
                    // are lost to export, and counted so.
                    tracing::error!("the span spool has unreadable data; giving it up");
                    commit_spool(shared, &mut queue, &peeked);
                    let forgotten = queue.spool.forget_unreadable();
                    shared
                        .counters
                        .failed
                        .fetch_add(forgotten, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::error!(%err, "reading the span spool failed");
                    queue.last_error = Some(format!("reading the spool: {err}"));
                }
            }
        }
    }
    let wait = match first_seen {
        Some(since) => options.batch_delay.saturating_sub(since.elapsed()),
        None => Duration::from_secs(1),
    };
    Next::Wait(wait.max(Duration::from_millis(1)))
}

/// Takes up to `max` spans from the front of the memory queue (cutting a batch if need be).
fn take_spans(queue: &mut Queue, max: usize) -> Vec<SpanBatch> {
    let mut taken = Vec::new();
    let mut count = 0;
    while count < max {
        let Some(mut front) = queue.memory.pop_front() else {
            break;
        };
        if front.len() > max - count {
            let head = front.split_to(max - count);
            queue.memory.push_front(front);
            count += head.len();
            taken.push(head);
            break;
        }
        count += front.len();
        taken.push(front);
    }
    queue.memory_spans -= count as u64;
    queue.in_flight = count as u64;
    taken
}

impl Batch {
    fn new(inputs: Vec<SpanBatch>, from_spool: Option<Peeked>) -> Self {
        Self {
            inputs,
            from_spool,
            taken: 0,
            rejected: 0,
            refused: None,
        }
    }

    /// Its spans the collector has not taken, in order.
    fn untaken(&self) -> Vec<SpanBatch> {
        let mut skip = self.taken as usize;
        let mut rest = Vec::new();
        for input in &self.inputs {
            if skip >= input.len() {
                skip -= input.len();
                continue;
            }
            let mut input = input.clone();
            input.split_to(skip);
            skip = 0;
            rest.push(input);
        }
        rest
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{super::input::nrs, *};
    use crate::record::{batch::BatchBuilder, samples, WallClock};

    fn inputs(nrs: std::ops::Range<u32>) -> SpanBatch {
        let mut builder = BatchBuilder::default();
        for nr in nrs {
            builder.push(&samples::record(nr, 1, 1, 7), &[]);
        }
        SpanBatch {
            records: builder.take(),
            containers: Arc::new(HashMap::new()),
            clock: WallClock::from_offset_ns(0),
        }
    }

    #[test]
    fn only_what_the_collector_did_not_take_is_given_back() {
        let mut batch = Batch::new(vec![inputs(0..3), inputs(3..7)], None);
        assert_eq!(nrs(&batch.untaken()), [0, 1, 2, 3, 4, 5, 6]);
        batch.taken = 3;
        assert_eq!(nrs(&batch.untaken()), [3, 4, 5, 6]);
        batch.taken = 5;
        assert_eq!(nrs(&batch.untaken()), [5, 6]);
        batch.taken = 7;
        assert!(batch.untaken().is_empty());
    }
}
