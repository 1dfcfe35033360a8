//! A session's reader thread: reads binary pages from every CPU's `trace_pipe_raw`, decodes
//! them, orders each pass's events by time, and hands completed syscalls to the session.
use std::{
    fs::File,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, Sender},
        Arc,
    },
    time::{Duration, Instant},
};

use tracefs_parse::PageHeaderLayout;

use super::{
    decode::{decode_page, Decoder},
    joins::PidSync,
    order::PassEvents,
    pages::PageSource,
    tracefs::Instance,
    tracker::Tracker,
};
use crate::{
    backend::delivery::{DrainStats, Route, BATCH_BYTES, FLUSH_INTERVAL},
    record::batch::BatchBuilder,
};

/// Pages read from one CPU per pass before moving to the next, so one busy CPU cannot delay
/// the others' events (and their pairing) for long.
const PAGES_PER_CPU_PASS: usize = 64;
/// How often the traced threads are re-read from the target cgroups, as a safety net under
/// the join events (which report every join, but can be lost if the watcher's buffer fills).
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// A page's worth of a loop of syscalls at full speed, about (a 4 MiB buffer, 1,024 pages,
/// holds some 17 ms of it).
const PAGE_FILL_TIME: Duration = Duration::from_micros(16);
/// The longest wait after a pass that emptied every buffer.
const CAUGHT_UP_WAIT: Duration = Duration::from_millis(2);

/// At most this many passes (of up to 64 pages per CPU) answer one flush.
const MAX_FLUSH_PASSES: usize = 1024;

pub(super) enum Control {
    /// Read everything there is now, then acknowledge.
    Flush(Sender<()>),
    /// Read everything there is now, then end.
    Stop,
}

pub(super) struct Reader {
    pub instance: Arc<Instance>,
    pub cpus: Vec<File>,
    pub layout: PageHeaderLayout,
    pub decoder: Arc<Decoder>,
    pub tracker: Tracker,
    pub route: Route,
    /// Records made (each then delivered or dropped by the session's queue).
    pub produced: Arc<AtomicU64>,
    pub pids: Arc<PidSync>,
    /// The engine's totals of drain work (records, time), shared with the eBPF drains.
    pub stats: Arc<DrainStats>,
    /// The pass's records, delivered in batches (see [`Output`]).
    pub records: BatchBuilder,
    /// Pages in each CPU's buffer.
    pub ring_pages: usize,
}

impl Reader {
    pub fn run(mut self, control: Receiver<Control>) {
        let mut page = PageSource::new(self.layout.page_size(), PAGES_PER_CPU_PASS);
        let mut batch = PassEvents::default();
        let mut last_sync = Instant::now();
        loop {
            let pass = self.pass(&mut page, &mut batch);
            if last_sync.elapsed() >= RESYNC_INTERVAL {
                self.pids.resync();
                last_sync = Instant::now();
            }
            let wait = if pass.backlog {
                Duration::ZERO
            } else if pass.pages > 0 {
                // Caught up: let pages fill before reading again. The kernel hands over a
                // full page whole, but copies a page it is still writing event by event
                // under its reader lock; reading again at once would mostly read those.
                self.caught_up_wait()
            } else {
                FLUSH_INTERVAL
            };
            match control.recv_timeout(wait) {
                Ok(Control::Flush(ack)) => {
                    // Bounded: tracing goes on, maybe faster than the reader.
                    self.drain(&mut page, &mut batch, MAX_FLUSH_PASSES);
                    let _ = ack.send(());
                }
                Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // Tracing is off (stop turns it off first; a session dropped without a
                    // stop, here): everything recorded is read.
                    let _ = self.instance.write("tracing_on", "0");
                    self.drain(&mut page, &mut batch, usize::MAX);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// How long to let pages fill after a pass that emptied every buffer: up to
    /// [`CAUGHT_UP_WAIT`], and never more than a full-speed writer takes to fill an eighth of
    /// a CPU's buffer (a small buffer is read again sooner).
    fn caught_up_wait(&self) -> Duration {
        CAUGHT_UP_WAIT.min(PAGE_FILL_TIME * (self.ring_pages / 8).max(1) as u32)
    }

    /// Passes until the buffers are empty, or `max_passes` were made.
    fn drain(&mut self, page: &mut PageSource, batch: &mut PassEvents, max_passes: usize) {
        for _ in 0..max_passes {
            if self.pass(page, batch).pages == 0 {
                return;
            }
        }
    }

    /// Reads up to [`PAGES_PER_CPU_PASS`] pages from each CPU, then handles their events in
    /// time order.
    fn pass(&mut self, source: &mut PageSource, batch: &mut PassEvents) -> Pass {
        let mut pages = 0;
        let mut backlog = false;
        // From before the first read: a splice moves many pages at once.
        let started = Instant::now();
        // A CPU whose buffer was an eighth full, or that had more than a pass takes, is
        // read again at once.
        let busy = (self.ring_pages / 8).clamp(1, PAGES_PER_CPU_PASS);
        for cpu in &mut self.cpus {
            let read = source.read(cpu, PAGES_PER_CPU_PASS, |page| {
                decode_page(&self.layout, &self.decoder, page, batch.events());
            });
            let read = read.unwrap_or_else(|err| {
                tracing::error!(%err, "reading trace_pipe_raw failed");
                0
            });
            batch.end_cpu();
            pages += read;
            backlog |= read >= busy;
        }
        let mut records = 0;
        let mut out = Output {
            builder: &mut self.records,
            route: &self.route,
            produced: &self.produced,
            delivered: &mut records,
        };
        let tracker = &mut self.tracker;
        batch.take_in_order(|ts, raw| tracker.handle(ts, raw, &mut |record| out.push(&record)));
        out.deliver();
        if records > 0 {
            self.stats.records.fetch_add(records, Ordering::Relaxed);
            self.stats.passes.fetch_add(1, Ordering::Relaxed);
            self.stats
                .busy_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        Pass { pages, backlog }
    }
}

/// What a pass read.
struct Pass {
    pages: usize,
    /// A CPU had more pages than a pass takes: read again at once.
    backlog: bool,
}

/// Where a pass's records go: batches of up to [`BATCH_BYTES`], delivered as they fill (a
/// pass can make thousands of records; a batch much bigger than that would not go back to
/// the buffer pool, and new memory costs the kernel a zeroed page per 4 KiB).
struct Output<'a> {
    builder: &'a mut BatchBuilder,
    route: &'a Route,
    produced: &'a AtomicU64,
    /// Records delivered by this pass.
    delivered: &'a mut u64,
}

impl Output<'_> {
    fn push(&mut self, record: &tracer_common::SyscallRecord) {
        self.builder.push(record, &[]);
        if self.builder.bytes() >= BATCH_BYTES {
            self.deliver();
        }
    }

    fn deliver(&mut self) {
        let records = self.builder.len() as u64;
        if records == 0 {
            return;
        }
        // Counted before they are delivered, so delivered never exceeds matched.
        self.produced.fetch_add(records, Ordering::Relaxed);
        *self.delivered += records;
        self.route.deliver(self.builder.take());
    }
}
