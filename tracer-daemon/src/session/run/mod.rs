//! One run of a session: started from its stored row (target resolved, engine session,
//! event-log writer, span export, launched container), and ended (everything drained,
//! counters final). Owned by the session's actor.
mod containers;

use std::sync::{atomic::Ordering, mpsc, Arc};

use futures_util::future::BoxFuture;
use sync_wrapper::SyncWrapper;
use tokio::{sync::oneshot, task::JoinHandle};
use uuid::Uuid;

use super::{
    context::Context,
    error::SessionError,
    launch,
    model::{Counters, NotRecording, SessionRow, Status, TracedContainers},
    resolve::{Follow, Resolved, Resolving},
    spec::{BackendChoice, SessionSpec},
    store::LiveRun,
    watch::{run_ending, Ending},
};
use crate::{
    backend::{Backend, EventReceiver, SessionCounters, SessionOptions, Trace},
    record::{clock::now_rfc3339, WallClock},
    sink::{
        container_of::ContainerOf,
        eventlog::EventLogWriter,
        export::{span::SessionInfo, Export, ExportCounters, ExportStatus},
        follow::{Feed, Subscription},
        render::RunContext,
        writer::{ContainerJoin, RunProgress, RunWriter},
    },
    sync::lock,
};

/// A session that is running now.
pub struct Run {
    trace: Arc<dyn Trace>,
    pub tenant: String,
    /// The cgroups this run traces.
    pub cgroups: Vec<u64>,
    follow: Option<Follow>,
    /// The container this run launched.
    launched: Option<String>,
    /// Counters of the session's previous runs.
    base: Counters,
    progress: Arc<RunProgress>,
    writer: JoinHandle<std::io::Result<()>>,
    /// Containers joining the run, for its writer.
    joins: mpsc::Sender<ContainerJoin>,
    /// The run's span export, if it exports.
    export: Option<Export>,
    /// What the writer publishes for followers.
    feed: Feed,
    /// Since when the container runtime has been away, while it is.
    runtime_outage: Option<String>,
    /// Resolves when the run ends by itself. Only the actor polls it (through `&mut`), so
    /// the run can be shared while it waits.
    pub ending: SyncWrapper<BoxFuture<'static, Ending>>,
}

/// The parts of a run started so far, undone together when a later part fails.
struct Started {
    trace: Arc<dyn Trace>,
    /// The session's events, from the engine.
    events: EventReceiver,
    log: EventLogWriter,
    export: Option<Export>,
    launched: Option<String>,
    /// The run's wall clock, for its events and spans.
    clock: WallClock,
}

impl Started {
    async fn abandon(self, ctx: &Context) {
        if let Err(err) = self.trace.stop().await {
            tracing::error!(%err, "stopping the engine session of a run that failed to start");
        }
        if let Some(container) = &self.launched {
            ctx.runtime.remove(container).await;
        }
        if let Some(export) = self.export {
            export.finish().await;
        }
    }
}

/// Starts a run of a session that may run (the caller checked and claimed its key),
/// recording the outcome in the store: running, or failed with the reason when its target
/// is gone or its backend cannot run.
pub async fn begin(ctx: &Context, mut row: SessionRow) -> Result<(Run, SessionRow), SessionError> {
    let spec = row.request.validate()?;
    let resolving = Resolving {
        spec: &spec,
        tenant: &row.tenant,
        restricted: row.restricted,
        session: row.id,
        run: row.runs + 1,
    };
    let clock = WallClock::now();
    let (resolved, log, trace, events) = match prepare(ctx, &row, &spec, &resolving, clock).await {
        Ok(prepared) => prepared,
        Err(Unprepared::Target(err)) => {
            ctx.mark_failed(&mut row, err.to_string()).await?;
            tracing::warn!(session = %row.id, %err, "session failed to start");
            return Err(err);
        }
        Err(Unprepared::Tracing { err, launched }) => {
            if let Some(container) = launched {
                ctx.runtime.remove(&container).await;
            }
            if matches!(err, SessionError::BackendUnavailable { .. }) {
                ctx.mark_failed(&mut row, err.to_string()).await?;
            }
            return Err(err);
        }
    };
    // Before a launched container starts: nothing it does should wait for an export that
    // cannot start.
    let mut started = Started {
        trace,
        events,
        log,
        export: None,
        launched: resolved.launched.clone(),
        clock,
    };
    match start_export(ctx, &row, &spec).await {
        Ok(export) => started.export = export,
        Err(err) => {
            started.abandon(ctx).await;
            return Err(err);
        }
    }
    if let Some(container) = &resolved.launched {
        // The kernel filter holds the container's cgroup already: its first syscall is traced.
        if let Err(err) = launch::start(ctx, container, &resolved.filter.cgroups).await {
            started.abandon(ctx).await;
            ctx.mark_failed(&mut row, err.to_string()).await?;
            return Err(err);
        }
    }
    let run = assemble(ctx, &row, &spec, resolved, started);
    let resuming = row.status == Status::Running;
    mark_running(&mut row, run.trace.as_ref());
    match ctx.store.save(row.clone()).await {
        Ok(()) => {}
        // Stored as running already: on a full disk only the run's count and start time are
        // not saved, and the session records again rather than failing.
        Err(err) if resuming && err.is_disk_full() => {
            tracing::warn!(session = %row.id, %err, "resumed, but the disk is full: the run's start is not saved");
        }
        Err(err) => {
            // Not recorded as running: nothing of it may stay behind.
            if let Err(end) = run.end(ctx, row.id).await {
                tracing::error!(session = %row.id, %end, "ending a run that could not be recorded");
            }
            return Err(err.into());
        }
    }
    // Until the run ends: what a daemon starting after this one died needs to settle it.
    let live = LiveRun {
        session: row.id,
        pinned_counters: ctx.options.pinned_counters.clone(),
        slot: run.trace.slot(),
        base: run.base,
    };
    if let Err(err) = ctx.store.begin_run(live).await {
        tracing::warn!(session = %row.id, %err, "the run is not recorded as live: after a crash its counts since the last save are estimated");
    }
    tracing::info!(session = %row.id, run = row.runs, "session running");
    Ok((run, row))
}

/// Why a run could not be prepared.
enum Unprepared {
    /// The target is gone: the session fails.
    Target(SessionError),
    /// The event log or the engine session did not start (a launched container, created
    /// already, is to be removed).
    Tracing {
        err: SessionError,
        launched: Option<String>,
    },
}

type Prepared = (Resolved, EventLogWriter, Arc<dyn Trace>, EventReceiver);

/// Resolves the target, opens (or continues) the session's event log and starts its engine
/// session. A cgroup or pid target is all files and kernel maps: one trip to the blocking
/// pool; a container target is resolved through the runtime first.
async fn prepare(
    ctx: &Context,
    row: &SessionRow,
    spec: &SessionSpec,
    resolving: &Resolving<'_>,
    clock: WallClock,
) -> Result<Prepared, Unprepared> {
    let options = SessionOptions {
        backend: match spec.backend {
            BackendChoice::Auto => None,
            BackendChoice::Ebpf => Some(Backend::Ebpf),
            BackendChoice::Ftrace => Some(Backend::Ftrace),
        },
        name: row.id.to_string(),
        queue: None,
        ftrace_buffer_kb: spec.ftrace_buffer_kb,
    };
    let tracer = ctx.tracer.clone();
    let dir = ctx.session_dir(row.id);
    let cap = ctx.options.event_log_cap_bytes;
    let context = RunContext::new(row.id, clock, spec.capture.limits);
    let start = move |resolved: Resolved| {
        let started = EventLogWriter::open(&dir, cap, context)
            .map_err(|source| SessionError::EventLog { path: dir, source })
            .and_then(|log| {
                let (trace, events) = tracer.start(&resolved.filter, &options)?;
                Ok((log, trace, events))
            });
        match started {
            Ok((log, trace, events)) => Ok((resolved, log, trace, events)),
            Err(err) => Err(Unprepared::Tracing {
                err,
                launched: resolved.launched,
            }),
        }
    };
    let blocking = |err: tokio::task::JoinError| Unprepared::Target(err.into());
    match resolving.local() {
        Some(local) => tokio::task::spawn_blocking(move || {
            let resolved = local
                .resolve()
                .map_err(|err| Unprepared::Target(err.into()))?;
            start(resolved)
        })
        .await
        .map_err(blocking)?,
        None => {
            let resolved = resolving.resolve(ctx).await.map_err(Unprepared::Target)?;
            let launched = resolved.launched.clone();
            tokio::task::spawn_blocking(move || start(resolved))
                .await
                .map_err(|err| Unprepared::Tracing {
                    err: err.into(),
                    launched,
                })?
        }
    }
}

/// Starts the run's span export, to the session's collector or the daemon's default.
async fn start_export(
    ctx: &Context,
    row: &SessionRow,
    spec: &SessionSpec,
) -> Result<Option<Export>, SessionError> {
    let default = ctx.options.export_default.as_ref();
    let config = match &spec.export {
        None => default.cloned(),
        Some(None) => None,
        Some(Some(own)) => Some(
            own.to_config(default)
                .map_err(|err| super::spec::InvalidField::new(err.field, err.message))?,
        ),
    };
    let Some(config) = config else {
        return Ok(None);
    };
    let session = SessionInfo {
        id: row.id,
        name: row.name.clone(),
        label: spec.label.clone(),
        run: row.runs + 1,
        limits: spec.capture.limits,
    };
    let resource = ctx.options.export_resource.clone();
    let spool = ctx.session_dir(row.id).join("spool");
    let options = ctx.options.export_options.clone();
    let endpoint = config.endpoint.clone();
    let protocol = config.protocol.as_str();
    // Opening the spool reads its directory: the blocking pool (which can spawn the sender).
    let export = tokio::task::spawn_blocking(move || {
        Export::start(&config, &resource, &session, &spool, options)
    })
    .await??;
    tracing::info!(session = %row.id, %endpoint, protocol, "exporting spans");
    Ok(Some(export))
}

/// Puts a started run together: its writer on the blocking pool, and its ending.
fn assemble(
    ctx: &Context,
    row: &SessionRow,
    spec: &SessionSpec,
    resolved: Resolved,
    started: Started,
) -> Run {
    let progress = Arc::new(RunProgress::default());
    let feed = Feed::default();
    let (joins, joined) = mpsc::channel();
    let (limit_reached, limit) = oneshot::channel();
    let writer = RunWriter {
        session: row.id,
        log: started.log,
        containers: ContainerOf::new(resolved.containers),
        joins: joined,
        progress: progress.clone(),
        max_events: spec
            .max_events
            .map(|max| max.saturating_sub(row.counters.delivered)),
        limit_reached: Some(limit_reached),
        budget: crate::sync::lock(&ctx.budgets).get(&row.id).cloned(),
        export: started.export.as_ref().map(Export::sink),
        clock: started.clock,
        feed: feed.clone(),
        space: ctx.options.reserve.clone(),
    };
    let events = started.events;
    let writer = tokio::task::spawn_blocking(move || writer.run(events));
    Run {
        trace: started.trace,
        tenant: row.tenant.clone(),
        cgroups: resolved.filter.cgroups,
        follow: resolved.follow,
        launched: started.launched,
        base: row.counters,
        progress,
        writer,
        joins,
        export: started.export,
        feed,
        runtime_outage: None,
        ending: SyncWrapper::new(run_ending(
            spec.ttl,
            resolved.presence,
            limit,
            ctx.runtime.clone(),
        )),
    }
}

fn mark_running(row: &mut SessionRow, trace: &dyn Trace) {
    let now = now_rfc3339();
    row.status = Status::Running;
    row.runs += 1;
    row.started_at = Some(now.clone());
    row.stopped_at = None;
    row.updated_at = now;
    row.error = None;
    row.finished_reason = None;
    row.backend_in_use = Some(trace.backend().as_str().into());
    row.backend_reason = Some(trace.backend_reason().to_owned());
}

impl Run {
    /// Ends the run: a launched container is stopped, the engine drains and releases the
    /// session, the writer writes everything delivered, and export sends what it can (the
    /// rest stays in the spool). Returns the session's counters over all its runs.
    pub async fn end(self, ctx: &Context, id: Uuid) -> Result<Counters, SessionError> {
        if let Some(container) = &self.launched {
            ctx.runtime.kill(container).await;
        }
        // On an error the engine has still released the session's route (see `stop_slot`):
        // the writer and the export are finished either way.
        let kernel = self.trace.stop().await;
        // Its events are all read: the launched container has nothing more to give.
        if let Some(container) = &self.launched {
            launch::release(ctx, container).await;
        }
        // The engine dropped the session's channel: the writer ends once it has written
        // everything that was delivered.
        match self.writer.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(session = %id, %err, "writing the event log failed"),
            Err(err) => tracing::error!(session = %id, %err, "the event-log writer died"),
        }
        // Everything written is queued for export: send it (or leave it in the spool).
        let export = match self.export {
            Some(export) => {
                let counters = export.counters_handle();
                export.finish().await;
                Some(counters)
            }
            None => None,
        };
        Ok(self.base + run_counters(&kernel?, &self.progress, export.as_deref()))
    }

    /// The session's counters now, over all its runs (kernel counters read on the blocking
    /// pool).
    pub async fn counters(&self) -> Result<Counters, SessionError> {
        let trace = self.trace.clone();
        let kernel = tokio::task::spawn_blocking(move || trace.counters()).await??;
        let export = self.export.as_ref().map(Export::counters);
        Ok(self.base + run_counters(&kernel, &self.progress, export))
    }

    pub fn export_status(&self) -> Option<ExportStatus> {
        self.export.as_ref().map(Export::status)
    }

    /// Why the run records nothing now, if it does not.
    pub fn not_recording(&self) -> Option<NotRecording> {
        let Some(failure) = lock(&self.progress.failure).clone() else {
            return self.runtime_outage.as_ref().map(|since| NotRecording {
                reason: "runtime_unavailable".into(),
                message: "the container runtime is away: containers that start or restart are \
                          not traced until it is back"
                    .into(),
                since: Some(since.clone()),
            });
        };
        let (reason, message) = if failure.out_of_space {
            (
                "disk_full",
                format!(
                    "the data directory's disk is full ({}): events are counted as dropped \
                     until space returns",
                    failure.message
                ),
            )
        } else {
            (
                "write_failed",
                format!("writing the event log fails: {}", failure.message),
            )
        };
        Some(NotRecording {
            reason: reason.into(),
            message,
            since: Some(failure.since),
        })
    }

    pub fn traced(&self) -> Option<TracedContainers> {
        self.follow.as_ref().map(Follow::view)
    }

    /// A subscription to what the run's writer records from now on.
    pub fn subscribe(&self) -> Subscription {
        self.feed.subscribe()
    }
}

/// The current run's share of a session's counters.
fn run_counters(
    kernel: &SessionCounters,
    progress: &RunProgress,
    export: Option<&ExportCounters>,
) -> Counters {
    let over_limit = progress.over_limit.load(Ordering::Relaxed);
    let exported = |counter: fn(&ExportCounters) -> &std::sync::atomic::AtomicU64| {
        export.map_or(0, |export| counter(export).load(Ordering::Relaxed))
    };
    Counters {
        matched: kernel.matched,
        delivered: progress.written.load(Ordering::Relaxed),
        dropped: kernel.dropped_kernel
            + kernel.dropped_userspace
            + over_limit
            + progress.unwritten.load(Ordering::Relaxed),
        exported: exported(|e| &e.exported),
        spooled: exported(|e| &e.spooled),
        export_failed: exported(|e| &e.failed),
        evicted: progress.evicted.load(Ordering::Relaxed),
        late_joins: kernel.late_joins.count,
        late_join_delay_us: kernel.late_joins.delay_ns / 1000,
        late_join_max_delay_us: kernel.late_joins.max_delay_ns / 1000,
    }
}
