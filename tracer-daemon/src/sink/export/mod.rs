//! OpenTelemetry export: every delivered record becomes a span (see [`span`]), batched by
//! size and by time, sent as OTLP (gRPC or HTTP/protobuf, see [`transport`]), and never
//! lost to a slow or absent collector: what cannot be sent now waits in the session's
//! on-disk [`spool`] and is sent, in order, once the collector is back. The run's writer
//! hands over whole batches of records ([`SpanBatch`]), in memory or into the spool, at no
//! cost per record; records become spans on the sender's side.
//!
//! ```text
//!  RunWriter ──push──▶ memory queue (bounded) ──▶ sender task ──export──▶ collector
//!                 └ full, or the spool is not empty ─▶ spool (disk, capped) ─┘
//! ```
//!
//! Order is kept by one rule: while the spool holds anything, new spans go behind it (and
//! the memory queue is moved there first), so memory is always older than the spool. The
//! batch being sent is older than both: it is retried until it goes, and if the run ends
//! first it is put back at the spool's head. A batch's request is encoded once, straight
//! from its records, without the SDK's spans or its batch span processor (compared side by
//! side in `cargo xtask bench otlp`), and a retry sends the same bytes.
pub mod config;
mod input;
mod sender;
pub mod span;
pub mod spool;
mod transport;
mod wire;

use std::{
    collections::VecDeque,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use tokio::{sync::Notify, task::JoinHandle};
use utoipa::ToSchema;

pub use self::{
    config::{DaemonExport, ExportRequest, OtlpConfig, Protocol},
    input::SpanBatch,
};
use self::{
    span::{SessionInfo, SpanMaker},
    spool::Spool,
    transport::Transport,
};
use crate::sync::lock;

/// How a run's export batches and where it may spill.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// A batch is sent when it has this many spans…
    pub batch_spans: usize,
    /// …or when its first span has waited this long.
    pub batch_delay: Duration,
    /// Spans held in memory before new ones go to the spool.
    pub memory_spans: usize,
    /// The spool's size cap; spans beyond it are counted as failed.
    pub spool_cap_bytes: u64,
    /// How long the end of a run waits for a failing collector before leaving the rest in
    /// the spool for the next run.
    pub close_grace: Duration,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            batch_spans: 2048,
            batch_delay: Duration::from_millis(200),
            memory_spans: 65_536,
            spool_cap_bytes: 1 << 30,
            close_grace: Duration::from_secs(5),
        }
    }
}

/// A run's export counters.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans that went through the spool (written to disk to wait for the collector).
    pub spooled: AtomicU64,
    /// Spans that will never be exported: the spool was full (or could not be written), or
    /// the collector took the request but rejected them.
    pub failed: AtomicU64,
}

/// How a run's export is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportState {
    /// The last batch went.
    Ok,
    /// The collector is slow or away: spans wait in memory and the spool.
    Retrying,
    /// The spool is full: new spans are refused and counted as failed.
    SpoolFull,
}

/// Where a running session's export stands, for its status.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportStatus {
    pub state: ExportState,
    pub endpoint: String,
    pub protocol: Protocol,
    /// Spans waiting: in memory, in the batch being sent, and in the spool.
    pub pending_spans: u64,
    pub spool_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct Queue {
    memory: VecDeque<SpanBatch>,
    /// Spans in `memory`.
    memory_spans: u64,
    spool: Spool,
    /// Spans in the batch being sent, when it came from memory (a batch from the spool is
    /// still counted there until it is sent).
    in_flight: u64,
    /// When the run ended (no more pushes); the sender then has `close_grace` to send what is
    /// left before leaving it in the spool.
    closed: Option<Instant>,
    state: ExportState,
    last_error: Option<String>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    counters: ExportCounters,
    options: ExportOptions,
    config: OtlpConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("building the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("opening the spool {path}: {source}")]
    Spool {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A run's export counters, kept after the run's export ends.
pub struct ExportCountersHandle(Arc<Shared>);

impl std::ops::Deref for ExportCountersHandle {
    type Target = ExportCounters;

    fn deref(&self) -> &ExportCounters {
        &self.0.counters
    }
}

/// One run's export: the sink the run's writer pushes to, and the task that sends.
pub struct Export {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// The writer's side.
#[derive(Clone)]
pub struct ExportSink {
    shared: Arc<Shared>,
}

impl Export {
    /// Starts exporting a run's spans to `config`, spilling to `spool_dir` (which may hold
    /// spans an earlier run could not send: they go first). Must run inside tokio.
    pub fn start(
        config: &OtlpConfig,
        resource: &Resource,
        session: &SessionInfo,
        spool_dir: &Path,
        options: ExportOptions,
    ) -> Result<Self, ExportError> {
        let transport = Transport::new(config).map_err(|message| ExportError::Exporter {
            endpoint: config.endpoint.clone(),
            message,
        })?;
        let spool = Spool::open(spool_dir, options.spool_cap_bytes).map_err(|source| {
            ExportError::Spool {
                path: spool_dir.display().to_string(),
                source,
            }
        })?;
        if !spool.is_empty() {
            tracing::info!(session = %session.id, spans = spool.spans(), "sending spans an earlier run left in the spool first");
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                memory: VecDeque::new(),
                memory_spans: 0,
                spool,
                in_flight: 0,
                closed: None,
                state: ExportState::Ok,
                last_error: None,
            }),
            wake: Notify::new(),
            counters: ExportCounters::default(),
            options,
            config: config.clone(),
        });
        let maker = SpanMaker::new(session, resource);
        let task = tokio::spawn(sender::send(shared.clone(), transport, maker));
        Ok(Self { shared, task })
    }

    pub fn sink(&self) -> ExportSink {
        ExportSink {
            shared: self.shared.clone(),
        }
    }

    pub fn counters(&self) -> &ExportCounters {
        &self.shared.counters
    }

    /// The counters, kept after the export is finished.
    pub fn counters_handle(&self) -> ExportCountersHandle {
        ExportCountersHandle(self.shared.clone())
    }

    pub fn status(&self) -> ExportStatus {
        let queue = lock(&self.shared.queue);
        ExportStatus {
            state: queue.state,
            endpoint: self.shared.config.endpoint.clone(),
            protocol: self.shared.config.protocol,
            pending_spans: queue.memory_spans + queue.in_flight + queue.spool.spans(),
            spool_bytes: queue.spool.bytes(),
            last_error: queue.last_error.clone(),
        }
    }

    /// Ends the run's export: sends what is queued (waiting at most `close_grace` for a
    /// failing collector), leaving the rest in the spool.
    pub async fn finish(self) {
        lock(&self.shared.queue).closed = Some(Instant::now());
        self.shared.wake.notify_one();
        if let Err(err) = self.task.await {
            tracing::error!(%err, "the span sender died");
        }
    }
}

impl ExportSink {
    /// Queues a batch's spans (from the run's writer thread; never blocks on the network).
    pub fn push(&self, batch: SpanBatch) {
        if batch.is_empty() {
            return;
        }
        let shared = &self.shared;
        let mut queue = lock(&shared.queue);
        let spans = batch.len() as u64;
        if queue.spool.is_empty()
            && queue.memory_spans + spans <= shared.options.memory_spans as u64
        {
            queue.memory.push_back(batch);
            queue.memory_spans += spans;
        } else {
            // Behind everything waiting: memory first (it is older), then these.
            let mut spill: Vec<SpanBatch> = queue.memory.drain(..).collect();
            queue.memory_spans = 0;
            spill.push(batch);
            let total: u64 = spill.iter().map(|batch| batch.len() as u64).sum();
            let kept = match queue.spool.append(&spill) {
                Ok(kept) => kept,
                Err(err) => {
                    tracing::error!(%err, "writing the span spool failed");
                    queue.last_error = Some(format!("writing the spool: {err}"));
                    0
                }
            };
            shared
                .counters
                .spooled
                .fetch_add(kept as u64, Ordering::Relaxed);
            let refused = total - kept as u64;
            if refused > 0 {
                shared.counters.failed.fetch_add(refused, Ordering::Relaxed);
                queue.state = ExportState::SpoolFull;
            }
        }
        drop(queue);
        shared.wake.notify_one();
    }
}

/// The resource every span of this daemon carries.
pub fn resource() -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    Resource::builder()
        .with_service_name("tracerd")
        .with_attributes([
            opentelemetry::KeyValue::new("host.name", host),
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}
