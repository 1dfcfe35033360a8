//! Prometheus metrics, gathered at scrape time from the store, the session manager and the
//! engine (so nothing is counted twice and nothing goes stale).
use std::sync::{atomic::Ordering::Relaxed, Arc};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    backend::Engine,
    session::{model::Status, store::StoreError, SessionManager},
    sink::export::ExportState,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabel {
    session: String,
}

/// What a running session is, to join its id with: `tracerd_session_info` is always 1.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionInfoLabel {
    session: String,
    name: String,
    tenant: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotRecordingLabel {
    session: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<SessionLabel, Counter> {
    let family = Family::<SessionLabel, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

/// The Prometheus text of every metric, read now.
pub async fn render(
    manager: &SessionManager,
    engine: &Arc<Engine>,
) -> Result<String, MetricsError> {
    let mut registry = Registry::with_prefix("tracerd");
    register_session_counts(&mut registry, manager).await?;
    register_session_counters(&mut registry, manager).await;
    register_engine(&mut registry, engine).await;
    register_followers(&mut registry, manager);
    register_session_states(&mut registry, manager).await?;
    register_backends(&mut registry, engine);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// Sessions by status.
async fn register_session_counts(
    registry: &mut Registry,
    manager: &SessionManager,
) -> Result<(), MetricsError> {
    let sessions = Family::<StatusLabel, Gauge>::default();
    registry.register("sessions", "Sessions by status", sessions.clone());
    let counts = manager.store().count_by_status().await?;
    for status in Status::ALL {
        let count = counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        sessions
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .set(count as i64);
    }
    Ok(())
}

/// Every running session's counters.
async fn register_session_counters(registry: &mut Registry, manager: &SessionManager) {
    let matched = counter_family(
        registry,
        "session_matched",
        "Syscalls that passed a running session's filters",
    );
    let delivered = counter_family(
        registry,
        "session_delivered",
        "Events recorded for a running session",
    );
    let dropped = counter_family(
        registry,
        "session_dropped",
        "Matched events a running session did not record",
    );
    let exported = counter_family(
        registry,
        "session_exported",
        "Events of a running session exported as spans",
    );
    let spooled = counter_family(
        registry,
        "session_spooled",
        "Spans of a running session that waited in its on-disk spool for the collector",
    );
    let export_failed = counter_family(
        registry,
        "session_export_failed",
        "Spans of a running session that will never be exported (its spool was full, or the \
         collector rejected them)",
    );
    for (id, counters) in manager.running_counters().await {
        let label = SessionLabel {
            session: id.to_string(),
        };
        matched.get_or_create(&label).inc_by(counters.matched);
        delivered.get_or_create(&label).inc_by(counters.delivered);
        dropped.get_or_create(&label).inc_by(counters.dropped);
        exported.get_or_create(&label).inc_by(counters.exported);
        spooled.get_or_create(&label).inc_by(counters.spooled);
        export_failed
            .get_or_create(&label)
            .inc_by(counters.export_failed);
    }
}

/// The kernel's totals, the drain tasks' work and the rings.
async fn register_engine(registry: &mut Registry, engine: &Arc<Engine>) {
    // Map reads run on the blocking pool.
    let kernel = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.kernel_counters().ok())
            .await
            .ok()
            .flatten()
    };
    if let Some(kernel) = kernel {
        counter(
            registry,
            "ring_records_written",
            "Records the kernel wrote to the ring buffers",
            kernel.written,
        );
        counter(
            registry,
            "ring_dropped_full",
            "Records lost because a ring buffer was full",
            kernel.dropped_ring_full,
        );
        counter(
            registry,
            "inflight_dropped",
            "Syscalls lost for want of in-flight storage",
            kernel.dropped_inflight_full,
        );
        counter(
            registry,
            "captures_lost",
            "Records whose argument data could not be kept (no storage)",
            kernel.captures_lost,
        );
    }
    let drain = engine.drain_stats();
    counter(
        registry,
        "drain_records",
        "Records read from the ring buffers",
        drain.records.load(Relaxed),
    );
    counter(
        registry,
        "drain_passes",
        "Drain passes that found records",
        drain.passes.load(Relaxed),
    );
    counter(
        registry,
        "drain_busy_nanoseconds",
        "Time spent reading and fanning out records",
        drain.busy_ns.load(Relaxed),
    );
    let rings = Gauge::<i64>::default();
    rings.set(engine.ring_count() as i64);
    registry.register("rings", "Ring buffers (one per CPU, or one shared)", rings);
    let attached = Gauge::<i64>::default();
    attached.set(i64::from(engine.programs_attached()));
    registry.register(
        "programs_attached",
        "1 while the eBPF programs are attached (an eBPF session runs), else 0",
        attached,
    );
}

/// Live followers of sessions' events, and how far behind the slowest of each session is.
fn register_followers(registry: &mut Registry, manager: &SessionManager) {
    let lags = manager.followers().lags();
    let followers = Family::<SessionLabel, Gauge>::default();
    let lag = Family::<SessionLabel, Gauge>::default();
    for (session, behind) in lags {
        let label = SessionLabel {
            session: session.to_string(),
        };
        followers.get_or_create(&label).inc();
        let slowest = lag.get_or_create(&label);
        slowest.set(slowest.get().max(behind as i64));
    }
    registry.register(
        "stream_followers",
        "Clients following a session's events (NDJSON follow or WebSocket)",
        followers,
    );
    registry.register(
        "stream_lag_events",
        "Events recorded but not yet sent to a session's slowest follower",
        lag,
    );
}

/// Running sessions' names, export queues and recording state.
async fn register_session_states(
    registry: &mut Registry,
    manager: &SessionManager,
) -> Result<(), MetricsError> {
    let info = Family::<SessionInfoLabel, Gauge>::default();
    for row in manager.store().with_status(Status::Running).await? {
        info.get_or_create(&SessionInfoLabel {
            session: row.id.to_string(),
            name: row.name,
            tenant: row.tenant,
            backend: row.backend_in_use.unwrap_or_default(),
        })
        .set(1);
    }
    registry.register(
        "session_info",
        "A running session's name, tenant and backend (always 1)",
        info,
    );
    let pending = Family::<SessionLabel, Gauge>::default();
    let spool_bytes = Family::<SessionLabel, Gauge>::default();
    let spool_full = Family::<SessionLabel, Gauge>::default();
    let recording = Family::<SessionLabel, Gauge>::default();
    let not_recording = Family::<NotRecordingLabel, Gauge>::default();
    for (id, snapshot) in manager.running_snapshots() {
        let label = SessionLabel {
            session: id.to_string(),
        };
        recording
            .get_or_create(&label)
            .set(i64::from(snapshot.not_recording.is_none()));
        if let Some(export) = &snapshot.export_status {
            pending
                .get_or_create(&label)
                .set(export.pending_spans as i64);
            spool_bytes
                .get_or_create(&label)
                .set(export.spool_bytes as i64);
            spool_full
                .get_or_create(&label)
                .set(i64::from(export.state == ExportState::SpoolFull));
        }
        if let Some(why) = snapshot.not_recording {
            not_recording
                .get_or_create(&NotRecordingLabel {
                    session: label.session,
                    reason: why.reason,
                })
                .set(1);
        }
    }
    registry.register(
        "session_export_pending_spans",
        "Spans of a running session waiting to be exported (memory, in flight and spool)",
        pending,
    );
    registry.register(
        "session_export_spool_bytes",
        "Bytes of a running session's on-disk span spool",
        spool_bytes,
    );
    registry.register(
        "session_export_spool_full",
        "1 while a running session's span spool is full (new spans are lost to export)",
        spool_full,
    );
    registry.register(
        "session_recording",
        "1 while a running session records, 0 while it does not (see session_not_recording)",
        recording,
    );
    registry.register(
        "session_not_recording",
        "1 while a running session does not record, by reason (disk_full, write_failed, \
         resuming, runtime_unavailable)",
        not_recording,
    );
    Ok(())
}

/// Whether sessions can run on each backend.
fn register_backends(registry: &mut Registry, engine: &Engine) {
    let available = Family::<BackendLabel, Gauge>::default();
    for (backend, status) in [
        ("ebpf", engine.ebpf_status()),
        ("ftrace", engine.ftrace_status()),
    ] {
        available
            .get_or_create(&BackendLabel { backend })
            .set(i64::from(status.is_ok()));
    }
    registry.register(
        "backend_available",
        "1 when sessions can run on the backend (see /healthz for why not)",
        available,
    );
}
