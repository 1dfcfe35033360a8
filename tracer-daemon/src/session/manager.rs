//! The session manager: the one owner of sessions' lifecycles.
//!
//! A running session has an engine slot (its kernel filter), a writer that turns its events
//! into event-log lines on the blocking pool, and a watcher for its TTL and its targets.
//! Counters are cumulative over runs: `base` (previous runs, from the store) plus the current
//! run's. Lifecycle changes are serialised by one lock; reads never take it.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use tokio::{sync::Mutex, task::JoinHandle};
use uuid::Uuid;

use super::{
    event_json::{self, WallClock},
    eventlog::EventLogWriter,
    model::{default_name, now_rfc3339, Counters, Session, Status},
    spec::{
        BackendChoice, ContainerSelector, CreateSession, InvalidField, Launch, SessionSpec,
        TargetKind,
    },
};
use crate::{
    cgroup::Cgroup,
    docker::{self, Container, ContainerEvent, DockerClient, DockerUnavailable},
    ebpf::KernelFilter,
    engine::{Backend, Engine, EngineError, Event, SessionHandle, SessionOptions},
    export::{
        span::SessionInfo, Export, ExportCounters, ExportOptions, ExportSink, OtlpConfig, SpanInput,
    },
    lock,
    store::{ListQuery, SessionRow, Store, StoreError},
};

/// The label on containers tracerd launches, naming their session.
pub const LAUNCH_SESSION_LABEL: &str = "tracerd.session";

/// Who is asking: a tenant, and whether it is an admin (sees and does everything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no session {0}")]
    NotFound(Uuid),
    #[error("the session is {}: it cannot be {action}", current.as_str())]
    InvalidTransition {
        current: Status,
        action: &'static str,
    },
    #[error("session {name} ({id}) already traces the same target with the same filter")]
    Duplicate { id: Uuid, name: String },
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("{0}")]
    Forbidden(String),
    #[error("target: {0}")]
    TargetUnavailable(String),
    #[error("no running container matches {selector}")]
    NoMatchingContainer {
        selector: String,
        close: Vec<String>,
    },
    #[error(transparent)]
    DockerUnavailable(#[from] DockerUnavailable),
    #[error("{0}")]
    BackendUnavailable(String),
    #[error("all kernel session slots are in use: stop a session first")]
    NoCapacity,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the engine: {0}")]
    Engine(EngineError),
    #[error("the event log: {0}")]
    EventLog(#[from] std::io::Error),
    #[error("span export: {0}")]
    Export(String),
}

impl From<EngineError> for ManagerError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::NoFreeSlot => ManagerError::NoCapacity,
            err @ EngineError::BackendUnavailable { .. } => {
                ManagerError::BackendUnavailable(err.to_string())
            }
            other => ManagerError::Engine(other),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// The container label that names a container's owning tenant.
    pub owner_label: String,
    /// Where sessions' event logs go (`<dir>/<id>/`).
    pub sessions_dir: PathBuf,
    /// Size cap of one session's event log, in compressed bytes.
    pub event_log_cap_bytes: u64,
    /// The collector sessions export to unless they name their own (or none).
    pub export_default: Option<OtlpConfig>,
    /// Batching and spooling of span export.
    pub export_options: ExportOptions,
    /// What every span's resource says (service, host).
    pub export_resource: opentelemetry_sdk::Resource,
}

/// What the writer of a run has done so far.
#[derive(Debug, Default)]
struct RunProgress {
    written: AtomicU64,
    over_limit: AtomicU64,
    evicted: AtomicU64,
}

/// A session that is running now.
struct Run {
    handle: SessionHandle,
    tenant: String,
    /// The cgroups this run traces.
    cgroups: Vec<u64>,
    follow: Option<Follow>,
    /// The container this run launched.
    launched: Option<String>,
    /// Counters of the session's previous runs.
    base: Counters,
    progress: Arc<RunProgress>,
    writer: JoinHandle<std::io::Result<()>>,
    watcher: JoinHandle<()>,
    /// The run's span export, if it exports.
    export: Option<Export>,
}

pub struct SessionManager {
    engine: Arc<Engine>,
    docker: Arc<DockerClient>,
    store: Store,
    options: ManagerOptions,
    /// Running sessions. Held only briefly, never across an await.
    runs: std::sync::Mutex<HashMap<Uuid, Run>>,
    /// Serialises lifecycle changes (start, stop, finish, delete) of one session; other
    /// sessions and reads do not wait for it.
    op_locks: std::sync::Mutex<HashMap<Uuid, Arc<Mutex<()>>>>,
    /// (tenant, target and filter) of every running session → that session: claimed and
    /// checked in one step, so two starts of duplicates cannot both succeed.
    running_keys: std::sync::Mutex<HashMap<(String, String), (Uuid, String)>>,
    /// Lets tasks of a run (its watcher, its writer) end it.
    this: Weak<SessionManager>,
}

impl SessionManager {
    pub fn new(
        engine: Arc<Engine>,
        docker: DockerClient,
        store: Store,
        options: ManagerOptions,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            engine,
            docker: Arc::new(docker),
            store,
            options,
            runs: std::sync::Mutex::new(HashMap::new()),
            op_locks: std::sync::Mutex::new(HashMap::new()),
            running_keys: std::sync::Mutex::new(HashMap::new()),
            this: this.clone(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn session_dir(&self, id: Uuid) -> PathBuf {
        self.options.sessions_dir.join(id.to_string())
    }

    /// Creates a session from `request`; `request_text` is the request as received, kept
    /// verbatim with the session.
    pub async fn create(
        &self,
        principal: &Principal,
        request: CreateSession,
        request_text: String,
    ) -> Result<Session, ManagerError> {
        let spec = request.validate()?;
        let tenant = match &request.tenant {
            Some(tenant) if !principal.admin && *tenant != principal.tenant => {
                return Err(ManagerError::Forbidden(format!(
                    "only an admin may create sessions for another tenant ({tenant})"
                )))
            }
            Some(tenant) => tenant.clone(),
            None => principal.tenant.clone(),
        };
        let restricted = !principal.admin;
        if restricted && !matches!(spec.target, TargetKind::Containers(_)) {
            return Err(ManagerError::Forbidden(
                "cgroup and pid targets need the admin role: a tenant may trace only the containers it owns".into(),
            ));
        }
        self.check_backend(&spec)?;
        // The target must exist now; it is resolved again at every start.
        match &spec.target {
            TargetKind::Launch(launch) => self.check_launch(launch).await?,
            _ => {
                self.resolve(&spec, &tenant, restricted, Uuid::nil(), 0)
                    .await?;
            }
        }
        let now = time::OffsetDateTime::now_utc();
        let created_at = crate::session::model::rfc3339(now);
        let row = SessionRow {
            id: Uuid::new_v4(),
            tenant,
            name: spec
                .name
                .clone()
                .unwrap_or_else(|| default_name(&request.target, now)),
            status: Status::Created,
            duplicate_key: spec.duplicate_key(),
            request,
            request_text,
            created_at: created_at.clone(),
            updated_at: created_at,
            started_at: None,
            stopped_at: None,
            runs: 0,
            backend_in_use: None,
            backend_reason: None,
            finished_reason: None,
            error: None,
            counters: Counters::default(),
            restricted,
        };
        self.store.insert(row.clone()).await?;
        tracing::info!(session = %row.id, name = %row.name, tenant = %row.tenant, "session created");
        Ok(row.to_resource(None))
    }

    /// The session, if `principal` may see it.
    async fn visible(&self, principal: &Principal, id: Uuid) -> Result<SessionRow, ManagerError> {
        match self.store.get(id).await? {
            Some(row) if principal.admin || row.tenant == principal.tenant => Ok(row),
            // Another tenant's session does not exist, as far as this caller knows.
            _ => Err(ManagerError::NotFound(id)),
        }
    }

    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<Session, ManagerError> {
        let row = self.visible(principal, id).await?;
        Ok(self.resource(&row).await)
    }

    /// A page of sessions and whether more follow.
    pub async fn list(
        &self,
        principal: &Principal,
        mut query: ListQuery,
    ) -> Result<(Vec<Session>, bool), ManagerError> {
        if !principal.admin {
            query.tenant = Some(principal.tenant.clone());
        }
        let (rows, more) = self.store.list(query).await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            sessions.push(if row.status == Status::Running {
                self.resource(&row).await
            } else {
                row.to_resource(None)
            });
        }
        Ok((sessions, more))
    }

    /// The directory of a session's event log, if `principal` may read it.
    pub async fn events_dir(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<PathBuf, ManagerError> {
        self.visible(principal, id).await?;
        Ok(self.session_dir(id))
    }

    pub async fn start(&self, principal: &Principal, id: Uuid) -> Result<Session, ManagerError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let row = self.visible(principal, id).await?;
        if !row.status.can_start() {
            return Err(ManagerError::InvalidTransition {
                current: row.status,
                action: "started",
            });
        }
        self.claim_key(&row)?;
        match self.begin_run(row).await {
            Ok(row) => Ok(row.to_resource(None)),
            Err(err) => {
                self.release_key(id);
                Err(err)
            }
        }
    }

    /// Refuses a session that asks for a backend this daemon cannot run.
    fn check_backend(&self, spec: &SessionSpec) -> Result<(), ManagerError> {
        let (name, status) = match spec.backend {
            BackendChoice::Auto => return Ok(()),
            BackendChoice::Ebpf => ("ebpf", self.engine.ebpf_status()),
            BackendChoice::Ftrace => ("ftrace", self.engine.ftrace_status()),
        };
        status.map_err(|why| {
            ManagerError::BackendUnavailable(format!("the {name} backend is unavailable: {why}"))
        })
    }

    /// The lock that serialises lifecycle changes of session `id`.
    fn op_lock(&self, id: Uuid) -> Arc<Mutex<()>> {
        lock(&self.op_locks).entry(id).or_default().clone()
    }

    /// Claims the session's (tenant, target and filter) as running, unless another session
    /// holds it.
    fn claim_key(&self, row: &SessionRow) -> Result<(), ManagerError> {
        let mut keys = lock(&self.running_keys);
        let key = (row.tenant.clone(), row.duplicate_key.clone());
        match keys.get(&key) {
            Some((other, name)) if *other != row.id => Err(ManagerError::Duplicate {
                id: *other,
                name: name.clone(),
            }),
            _ => {
                keys.insert(key, (row.id, row.name.clone()));
                Ok(())
            }
        }
    }

    fn release_key(&self, id: Uuid) {
        lock(&self.running_keys).retain(|_, (holder, _)| *holder != id);
    }

    /// Starts a run of a session that may run (the caller checked), recording the outcome:
    /// running, or failed with the reason when its target is gone.
    async fn begin_run(&self, mut row: SessionRow) -> Result<SessionRow, ManagerError> {
        let spec = row.request.validate()?;
        let resolved = match self
            .resolve(&spec, &row.tenant, row.restricted, row.id, row.runs + 1)
            .await
        {
            Ok(resolved) => resolved,
            Err(err) => {
                row.status = Status::Failed;
                row.error = Some(err.to_string());
                row.updated_at = now_rfc3339();
                self.store.save(row.clone()).await?;
                tracing::warn!(session = %row.id, %err, "session failed to start");
                return Err(err);
            }
        };
        let log =
            EventLogWriter::open(&self.session_dir(row.id), self.options.event_log_cap_bytes)?;
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
        let (handle, events) = match self.engine.start_session_with(&resolved.filter, &options) {
            Ok(started) => started,
            Err(err) => {
                let err = ManagerError::from(err);
                if matches!(err, ManagerError::BackendUnavailable(_)) {
                    row.status = Status::Failed;
                    row.error = Some(err.to_string());
                    row.updated_at = now_rfc3339();
                    self.store.save(row.clone()).await?;
                }
                return Err(err);
            }
        };
        let (backend_in_use, backend_reason) = (
            handle.backend().as_str(),
            handle.backend_reason().to_owned(),
        );
        // Before a launched container starts: nothing it does should wait for an export that
        // cannot start.
        let clock = WallClock::now();
        let export = match self.start_export(&row, &spec) {
            Ok(export) => export,
            Err(err) => {
                let _ = self.engine.stop_session(handle).await;
                if let Some(container) = &resolved.launched {
                    self.docker.remove(container).await;
                }
                return Err(err);
            }
        };
        if let Some(container) = &resolved.launched {
            // The kernel filter holds the container's cgroup already: its first syscall is
            // traced.
            if let Err(err) = self
                .start_launched(container, &resolved.filter.cgroups)
                .await
            {
                let _ = self.engine.stop_session(handle).await;
                self.docker.remove(container).await;
                if let Some(export) = export {
                    export.finish().await;
                }
                row.status = Status::Failed;
                row.error = Some(err.to_string());
                row.updated_at = now_rfc3339();
                self.store.save(row.clone()).await?;
                return Err(err);
            }
        }
        let progress = Arc::new(RunProgress::default());
        let containers = Arc::new(std::sync::RwLock::new(resolved.containers));
        let follow = resolved.follow.map(|(selector, traced)| Follow {
            selector,
            restricted: row.restricted,
            containers: containers.clone(),
            traced,
        });
        let writer = RunWriter {
            id: row.id,
            log,
            containers,
            progress: progress.clone(),
            max_events: spec
                .max_events
                .map(|max| max.saturating_sub(row.counters.delivered)),
            manager: self.this.clone(),
            runtime: tokio::runtime::Handle::current(),
            export: export.as_ref().map(Export::sink),
            clock,
        };
        let writer = tokio::task::spawn_blocking(move || writer.run(events));
        let watcher = tokio::spawn(watch(
            row.id,
            spec.ttl,
            resolved.presence,
            self.this.clone(),
        ));
        let now = now_rfc3339();
        row.status = Status::Running;
        row.runs += 1;
        row.started_at = Some(now.clone());
        row.stopped_at = None;
        row.updated_at = now;
        row.error = None;
        row.finished_reason = None;
        row.backend_in_use = Some(backend_in_use.into());
        row.backend_reason = Some(backend_reason);
        lock(&self.runs).insert(
            row.id,
            Run {
                handle,
                tenant: row.tenant.clone(),
                cgroups: resolved.filter.cgroups.clone(),
                follow,
                launched: resolved.launched.clone(),
                base: row.counters,
                progress,
                writer,
                watcher,
                export,
            },
        );
        self.store.save(row.clone()).await?;
        self.catch_up(row.id).await;
        tracing::info!(session = %row.id, run = row.runs, "session running");
        Ok(row)
    }

    pub async fn stop(&self, principal: &Principal, id: Uuid) -> Result<Session, ManagerError> {
        let row = self.visible(principal, id).await?;
        if !row.status.can_stop() {
            return Err(ManagerError::InvalidTransition {
                current: row.status,
                action: "stopped",
            });
        }
        let row = self.end_run(id, Some((Status::Stopped, None))).await?;
        Ok(row.to_resource(None))
    }

    /// Ends the run of `id`, if it has one, and records `outcome` (a status and a reason);
    /// with no outcome the status stays `running` (shutdown: it resumes at the next start).
    async fn end_run(
        &self,
        id: Uuid,
        outcome: Option<(Status, Option<String>)>,
    ) -> Result<SessionRow, ManagerError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let run = lock(&self.runs).remove(&id);
        let mut row = self
            .store
            .get(id)
            .await?
            .ok_or(ManagerError::NotFound(id))?;
        if row.status != Status::Running {
            // Someone else ended it first (a stop racing a TTL, say).
            return Ok(row);
        }
        if let Some(run) = run {
            run.watcher.abort();
            // Stopping a launched container's session stops the container.
            if let Some(container) = &run.launched {
                self.docker.kill(container).await;
            }
            let kernel = self.engine.stop_session(run.handle).await?;
            // The engine dropped the session's channel: the writer ends once it has written
            // everything that was delivered.
            match run.writer.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::error!(session = %id, %err, "writing the event log failed")
                }
                Err(err) => tracing::error!(session = %id, %err, "the event-log writer died"),
            }
            // Everything written is queued for export: send it (or leave it in the spool).
            let export = match run.export {
                Some(export) => {
                    let counters = export.counters_handle();
                    export.finish().await;
                    Some(counters)
                }
                None => None,
            };
            row.counters = run.base + run_counters(&kernel, &run.progress, export.as_deref());
            self.release_key(id);
        }
        let now = now_rfc3339();
        row.updated_at = now.clone();
        if let Some((status, reason)) = outcome {
            row.status = status;
            row.stopped_at = Some(now);
            match status {
                Status::Failed => row.error = reason,
                _ => row.finished_reason = reason,
            }
        }
        self.store.save(row.clone()).await?;
        tracing::info!(session = %id, status = row.status.as_str(), counters = ?row.counters, "session run ended");
        Ok(row)
    }

    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<(), ManagerError> {
        let row = self.visible(principal, id).await?;
        if row.status == Status::Running {
            self.end_run(id, Some((Status::Stopped, None))).await?;
        }
        let op = self.op_lock(id);
        let _op = op.lock().await;
        self.store.delete(id).await?;
        lock(&self.op_locks).remove(&id);
        if matches!(
            row.request.validate().map(|spec| spec.target),
            Ok(TargetKind::Launch(_))
        ) {
            if let Err(err) = self
                .docker
                .remove_labelled(LAUNCH_SESSION_LABEL, &id.to_string())
                .await
            {
                tracing::warn!(session = %id, %err, "removing the session's launched containers failed");
            }
        }
        match tokio::fs::remove_dir_all(self.session_dir(id)).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
        tracing::info!(session = %id, "session deleted");
        Ok(())
    }

    /// Counters of a running session now (`None` if it is not running here).
    async fn live_counters(&self, id: Uuid) -> Option<Counters> {
        let runs = lock(&self.runs);
        let run = runs.get(&id)?;
        let kernel = self.engine.counters(&run.handle).ok()?;
        Some(run.base + run_counters(&kernel, &run.progress, run.export_counters()))
    }

    /// A session's resource: stored, with live counters and export status if it runs here.
    async fn resource(&self, row: &SessionRow) -> Session {
        let mut session = row.to_resource(self.live_counters(row.id).await);
        session.export_status = lock(&self.runs)
            .get(&row.id)
            .and_then(|run| run.export.as_ref())
            .map(Export::status);
        session
    }

    /// Starts the run's span export, to the session's collector or the daemon's default.
    fn start_export(
        &self,
        row: &SessionRow,
        spec: &SessionSpec,
    ) -> Result<Option<Export>, ManagerError> {
        let default = self.options.export_default.as_ref();
        let config = match &spec.export {
            None => default.cloned(),
            Some(None) => None,
            Some(Some(own)) => Some(
                own.to_config(default)
                    .map_err(|err| InvalidField::new(err.field, err.message))?,
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
        };
        let export = Export::start(
            &config,
            &self.options.export_resource,
            &session,
            &self.session_dir(row.id).join("spool"),
            self.options.export_options.clone(),
        )
        .map_err(|err| ManagerError::Export(err.to_string()))?;
        tracing::info!(session = %row.id, endpoint = %config.endpoint, protocol = config.protocol.as_str(), "exporting spans");
        Ok(Some(export))
    }

    /// Counters of every running session, for persistence and metrics.
    pub async fn running_counters(&self) -> Vec<(Uuid, Counters)> {
        let runs = lock(&self.runs);
        runs.iter()
            .filter_map(|(id, run)| {
                let kernel = self.engine.counters(&run.handle).ok()?;
                Some((
                    *id,
                    run.base + run_counters(&kernel, &run.progress, run.export_counters()),
                ))
            })
            .collect()
    }

    /// Saves running sessions' counters (called every few hundred milliseconds, so a crash
    /// loses at most that much of them; the events themselves are on disk already).
    pub async fn persist_counters(&self) -> Result<(), StoreError> {
        let counters = self.running_counters().await;
        self.store.save_counters(counters).await
    }

    /// Restarts every session that was running when the daemon last stopped or died.
    /// Returns how many run again and how many failed (their target is gone).
    pub async fn recover(&self) -> Result<(usize, usize), ManagerError> {
        let (mut resumed, mut failed) = (0, 0);
        for row in self.store.with_status(Status::Running).await? {
            let id = row.id;
            if matches!(
                row.request.validate().map(|spec| spec.target),
                Ok(TargetKind::Launch(_))
            ) {
                // Its container ran untraced while tracerd was down: a launch is not re-run.
                failed += 1;
                let mut row = row;
                row.status = Status::Failed;
                row.error = Some(
                    "tracerd restarted while the launched container ran; a launch is not run again"
                        .into(),
                );
                row.updated_at = now_rfc3339();
                self.store.save(row).await?;
                let _ = self
                    .docker
                    .remove_labelled(LAUNCH_SESSION_LABEL, &id.to_string())
                    .await;
                continue;
            }
            let op = self.op_lock(id);
            let _op = op.lock().await;
            let started = match self.claim_key(&row) {
                Ok(()) => self.begin_run(row).await,
                Err(err) => Err(err),
            };
            if started.is_err() {
                self.release_key(id);
            }
            match started {
                Ok(_) => resumed += 1,
                Err(
                    ManagerError::TargetUnavailable(_) | ManagerError::NoMatchingContainer { .. },
                ) => failed += 1,
                Err(err) => {
                    failed += 1;
                    tracing::error!(session = %id, %err, "could not resume the session");
                    if let Ok(Some(mut row)) = self.store.get(id).await {
                        row.status = Status::Failed;
                        row.error = Some(format!("could not resume after a restart: {err}"));
                        row.updated_at = now_rfc3339();
                        self.store.save(row).await?;
                    }
                }
            }
        }
        Ok((resumed, failed))
    }

    /// Ends every run, leaving their sessions `running` so the next start resumes them.
    pub async fn shutdown(&self) {
        let ids: Vec<Uuid> = lock(&self.runs).keys().copied().collect();
        for id in ids {
            if let Err(err) = self.end_run(id, None).await {
                tracing::error!(session = %id, %err, "ending the run at shutdown failed");
            }
        }
    }

    /// Called by a run's own tasks when its TTL, its event limit or its targets end it.
    async fn finish(&self, id: Uuid, status: Status, reason: String) {
        tracing::info!(session = %id, status = status.as_str(), %reason, "session ended by itself");
        if let Err(err) = self.end_run(id, Some((status, Some(reason)))).await {
            tracing::error!(session = %id, %err, "ending the session failed");
        }
    }
}

/// The current run's share of a session's counters.
fn run_counters(
    kernel: &crate::engine::SessionCounters,
    progress: &RunProgress,
    export: Option<&ExportCounters>,
) -> Counters {
    let over_limit = progress.over_limit.load(Ordering::Relaxed);
    let exported = |counter: fn(&ExportCounters) -> &AtomicU64| {
        export.map_or(0, |export| counter(export).load(Ordering::Relaxed))
    };
    Counters {
        matched: kernel.matched,
        delivered: progress.written.load(Ordering::Relaxed),
        dropped: kernel.dropped_kernel + kernel.dropped_userspace + over_limit,
        exported: exported(|e| &e.exported),
        spooled: exported(|e| &e.spooled),
        export_failed: exported(|e| &e.failed),
        evicted: progress.evicted.load(Ordering::Relaxed),
    }
}

impl Run {
    fn export_counters(&self) -> Option<&ExportCounters> {
        self.export.as_ref().map(Export::counters)
    }
}

/// Whether a run's targets still exist.
enum Presence {
    /// A cgroup target's directory.
    Cgroups(Vec<std::path::PathBuf>),
    Pids(Vec<u32>),
    /// Containers: the Docker event stream says when they are gone (a stopped container's
    /// cgroup vanishes, but it may start again).
    DockerEvents,
    /// A launched container: its exit ends the run.
    Launched(String),
}

impl Presence {
    /// Whether every target is gone for good.
    fn all_gone(&self) -> bool {
        match self {
            Presence::Cgroups(paths) => paths.iter().all(|path| !path.exists()),
            Presence::Pids(pids) => pids
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
            Presence::DockerEvents | Presence::Launched(_) => false,
        }
    }
}

/// A target resolved now: the kernel filter, the containers it covers (by cgroup id), and
/// how to tell when it is gone.
struct Resolved {
    filter: KernelFilter,
    containers: HashMap<u64, Arc<ContainerMeta>>,
    presence: Presence,
    /// For container targets: what following the Docker events needs.
    follow: Option<(ContainerSelector, HashMap<String, u64>)>,
    /// For launch targets: the created container, to start once the filter is in place.
    launched: Option<String>,
}

/// A container run following Docker's events: containers that start and match are added,
/// those that exit are removed, and the session finishes when all it traced are removed.
struct Follow {
    selector: ContainerSelector,
    restricted: bool,
    /// cgroup id → container, shared with the run's writer.
    containers: Arc<std::sync::RwLock<HashMap<u64, Arc<ContainerMeta>>>>,
    /// Containers traced by this run (id → cgroup id), until they are removed.
    traced: HashMap<String, u64>,
}

/// What events say about the container they come from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerMeta {
    pub id: String,
    pub name: String,
    pub image: String,
}

impl SessionManager {
    /// Resolves a session's target and conditions now. `restricted` sessions (created by a
    /// tenant, not an admin) see only containers whose owner label names their tenant.
    /// `session` and `run` name a launched container.
    async fn resolve(
        &self,
        spec: &SessionSpec,
        tenant: &str,
        restricted: bool,
        session: Uuid,
        run: u32,
    ) -> Result<Resolved, ManagerError> {
        let filter = |cgroups: Vec<u64>, tgids: Option<Vec<u32>>| KernelFilter {
            cgroups,
            syscalls: spec.syscalls.clone(),
            tgids,
            failed_only: spec.conditions.failed_only,
        };
        match &spec.target {
            TargetKind::Cgroup(path) => {
                let cgroup = Cgroup::from_path(Path::new(path))
                    .map_err(|err| ManagerError::TargetUnavailable(err.to_string()))?;
                Ok(Resolved {
                    filter: filter(vec![cgroup.id], spec.conditions.tgids.clone()),
                    containers: HashMap::new(),
                    presence: Presence::Cgroups(vec![cgroup.path]),
                    follow: None,
                    launched: None,
                })
            }
            TargetKind::Pids(pids) => {
                let mut cgroups = Vec::new();
                for &pid in pids {
                    let cgroup = Cgroup::of_pid(pid).map_err(|_| {
                        ManagerError::TargetUnavailable(format!("process {pid} does not exist"))
                    })?;
                    if !cgroups.contains(&cgroup.id) {
                        cgroups.push(cgroup.id);
                    }
                }
                Ok(Resolved {
                    filter: filter(cgroups, Some(pids.clone())),
                    containers: HashMap::new(),
                    presence: Presence::Pids(pids.clone()),
                    follow: None,
                    launched: None,
                })
            }
            TargetKind::Containers(selector) => {
                let visible = self.visible_containers(tenant, restricted).await?;
                let chosen = docker::select(&visible, selector);
                if chosen.is_empty() {
                    let close = selector
                        .container
                        .as_deref()
                        .map(|text| docker::close_names(&visible, text))
                        .unwrap_or_default();
                    return Err(ManagerError::NoMatchingContainer {
                        selector: selector.to_string(),
                        close,
                    });
                }
                let mut cgroups = Vec::new();
                let mut containers = HashMap::new();
                let mut traced = HashMap::new();
                for container in chosen {
                    traced.insert(container.id.clone(), container.cgroup_id);
                    if !cgroups.contains(&container.cgroup_id) {
                        cgroups.push(container.cgroup_id);
                    }
                    containers.insert(
                        container.cgroup_id,
                        Arc::new(ContainerMeta {
                            id: container.id.clone(),
                            name: container.name.clone(),
                            image: container.image.clone(),
                        }),
                    );
                }
                Ok(Resolved {
                    filter: filter(cgroups, spec.conditions.tgids.clone()),
                    containers,
                    presence: Presence::DockerEvents,
                    follow: Some((selector.clone(), traced)),
                    launched: None,
                })
            }
            TargetKind::Launch(launch) => {
                let (container, cgroup) =
                    self.create_launched(launch, tenant, session, run).await?;
                let containers = HashMap::from([(cgroup.id, Arc::new(container.clone()))]);
                Ok(Resolved {
                    filter: filter(vec![cgroup.id], spec.conditions.tgids.clone()),
                    containers,
                    presence: Presence::Launched(container.id.clone()),
                    follow: None,
                    launched: Some(container.id),
                })
            }
        }
    }

    /// Whether a container can be launched now: the engine answers, lays out cgroups as
    /// `<parent>/<id>` (so tracerd can make the cgroup before the container starts), and has
    /// the image.
    async fn check_launch(&self, launch: &Launch) -> Result<(), ManagerError> {
        if !self.docker.uses_cgroupfs().await? {
            return Err(ManagerError::TargetUnavailable(
                "launching needs Docker's cgroupfs cgroup driver (the container's cgroup must be \
                 made, and traced, before it starts)"
                    .into(),
            ));
        }
        if !self.docker.has_image(&launch.image).await? {
            return Err(ManagerError::TargetUnavailable(format!(
                "image {} is not available locally",
                launch.image
            )));
        }
        Ok(())
    }

    /// Creates the container (not started) and its cgroup.
    async fn create_launched(
        &self,
        launch: &Launch,
        tenant: &str,
        session: Uuid,
        run: u32,
    ) -> Result<(ContainerMeta, Cgroup), ManagerError> {
        self.check_launch(launch).await?;
        // One container per run: `tracerd-<session>-<run>`.
        let name = format!("tracerd-{}-{}", &session.simple().to_string()[..12], run);
        let request = docker::LaunchRequest {
            name: name.clone(),
            image: launch.image.clone(),
            command: launch.command.clone(),
            env: launch.env.clone(),
            labels: BTreeMap::from([
                (LAUNCH_SESSION_LABEL.to_owned(), session.to_string()),
                (self.options.owner_label.clone(), tenant.to_owned()),
            ]),
        };
        let id = self.docker.create(&request).await?;
        let path = crate::cgroup::cgroup2_mount()
            .map_err(|err| ManagerError::TargetUnavailable(err.to_string()))?
            .join(docker::LAUNCH_CGROUP_PARENT.trim_start_matches('/'))
            .join(&id);
        let cgroup = std::fs::create_dir_all(&path)
            .map_err(|err| err.to_string())
            .and_then(|()| Cgroup::from_path(&path).map_err(|err| err.to_string()));
        let cgroup = match cgroup {
            Ok(cgroup) => cgroup,
            Err(err) => {
                self.docker.remove(&id).await;
                return Err(ManagerError::TargetUnavailable(format!(
                    "making the launched container's cgroup {}: {err}",
                    path.display()
                )));
            }
        };
        let meta = ContainerMeta {
            id: id.clone(),
            name,
            image: launch.image.clone(),
        };
        Ok((meta, cgroup))
    }

    /// Starts a launched container and checks it runs in the cgroup made for it.
    async fn start_launched(&self, id: &str, cgroups: &[u64]) -> Result<(), ManagerError> {
        self.docker.start(id).await?;
        match self.docker.inspect(id).await? {
            Some(container) if cgroups.contains(&container.cgroup_id) => Ok(()),
            // It ran and exited already: its syscalls were traced; the watcher sees the exit.
            None => Ok(()),
            Some(container) => Err(ManagerError::TargetUnavailable(format!(
                "the launched container runs in {} instead of the cgroup made for it",
                container.cgroup_path.display()
            ))),
        }
    }

    /// Follows the Docker engine's container events for as long as the daemon runs,
    /// subscribing again whenever the engine goes away.
    pub async fn follow_containers(self: Arc<Self>) {
        use futures_util::StreamExt as _;
        loop {
            match self.docker.events().await {
                Ok(events) => {
                    let mut events = std::pin::pin!(events);
                    while let Some(event) = events.next().await {
                        match event {
                            Ok(event) => self.on_container_event(event).await,
                            Err(err) => {
                                tracing::warn!(%err, "the Docker event stream ended");
                                break;
                            }
                        }
                    }
                }
                Err(err) => tracing::debug!(%err, "not following Docker events"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn on_container_event(&self, event: ContainerEvent) {
        match event {
            ContainerEvent::Started(id) => {
                let Ok(Some(container)) = self.docker.inspect(&id).await else {
                    return;
                };
                let mut runs = lock(&self.runs);
                for (session, run) in runs.iter_mut() {
                    self.add_if_matching(*session, run, &container);
                }
            }
            ContainerEvent::Died(id) => {
                let mut runs = lock(&self.runs);
                for (session, run) in runs.iter_mut() {
                    let Some(cgroup_id) =
                        run.follow.as_ref().and_then(|f| f.traced.get(&id).copied())
                    else {
                        continue;
                    };
                    if let Err(err) = self.engine.remove_cgroup(&run.handle, cgroup_id) {
                        tracing::error!(%session, %err, "removing an exited container failed");
                    }
                    run.cgroups.retain(|&cgroup| cgroup != cgroup_id);
                }
            }
            ContainerEvent::Destroyed(id) => {
                // Sessions that traced this container and now trace no container at all.
                let emptied: Vec<(Uuid, ContainerSelector, String, bool)> = lock(&self.runs)
                    .iter_mut()
                    .filter_map(|(session, run)| {
                        let follow = run.follow.as_mut()?;
                        follow.traced.remove(&id)?;
                        follow.traced.is_empty().then(|| {
                            (
                                *session,
                                follow.selector.clone(),
                                run.tenant.clone(),
                                follow.restricted,
                            )
                        })
                    })
                    .collect();
                for (session, selector, tenant, restricted) in emptied {
                    // Gone for good only if no running container matches either.
                    let still = match self.visible_containers(&tenant, restricted).await {
                        Ok(visible) => !docker::select(&visible, &selector).is_empty(),
                        Err(_) => false,
                    };
                    if !still {
                        if let Some(manager) = self.this.upgrade() {
                            tokio::spawn(async move {
                                manager
                                    .finish(session, Status::Finished, "targets_gone".into())
                                    .await
                            });
                        }
                    }
                }
            }
        }
    }

    /// Adds `container` to a following run if it matches the run's selector, its tenant may
    /// see it, and the run does not trace it yet.
    fn add_if_matching(&self, session: Uuid, run: &mut Run, container: &Container) {
        let Some(follow) = &mut run.follow else {
            return;
        };
        let owned = !follow.restricted
            || container.labels.get(&self.options.owner_label) == Some(&run.tenant);
        let selected =
            !docker::select(std::slice::from_ref(container), &follow.selector).is_empty();
        if !owned || !selected || follow.traced.get(&container.id) == Some(&container.cgroup_id) {
            return;
        }
        if let Err(err) = self.engine.add_cgroup(&run.handle, container.cgroup_id) {
            tracing::error!(%session, %err, "adding a container to the session failed");
            return;
        }
        follow
            .traced
            .insert(container.id.clone(), container.cgroup_id);
        follow
            .containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                container.cgroup_id,
                Arc::new(ContainerMeta {
                    id: container.id.clone(),
                    name: container.name.clone(),
                    image: container.image.clone(),
                }),
            );
        run.cgroups.push(container.cgroup_id);
        tracing::info!(%session, container = %container.name, "tracing a container that started");
    }

    /// Adds the matching containers that started between a run's first resolution and its
    /// registration, which the event stream cannot have delivered to it.
    async fn catch_up(&self, session: Uuid) {
        let (tenant, restricted) = match lock(&self.runs).get(&session).and_then(|run| {
            run.follow
                .as_ref()
                .map(|follow| (run.tenant.clone(), follow.restricted))
        }) {
            Some(found) => found,
            None => return,
        };
        let Ok(visible) = self.visible_containers(&tenant, restricted).await else {
            return;
        };
        let mut runs = lock(&self.runs);
        if let Some(run) = runs.get_mut(&session) {
            for container in &visible {
                self.add_if_matching(session, run, container);
            }
        }
    }

    /// Running containers a tenant may see: all of them for an unrestricted caller, else
    /// those whose owner label names the tenant.
    async fn visible_containers(
        &self,
        tenant: &str,
        restricted: bool,
    ) -> Result<Vec<Container>, ManagerError> {
        let mut containers = self.docker.running().await?;
        if restricted {
            containers.retain(|c| {
                c.labels.get(&self.options.owner_label).map(String::as_str) == Some(tenant)
            });
        }
        Ok(containers)
    }

    /// Running containers the caller may see, with the running sessions tracing each.
    pub async fn containers(
        &self,
        principal: &Principal,
    ) -> Result<Vec<ContainerView>, ManagerError> {
        let containers = self
            .visible_containers(&principal.tenant, !principal.admin)
            .await?;
        let runs = lock(&self.runs);
        Ok(containers
            .into_iter()
            .map(|container| {
                let sessions = runs
                    .iter()
                    .filter(|(_, run)| principal.admin || run.tenant == principal.tenant)
                    .filter(|(_, run)| run.cgroups.contains(&container.cgroup_id))
                    .map(|(id, _)| *id)
                    .collect();
                ContainerView {
                    container,
                    sessions,
                }
            })
            .collect())
    }
}

/// A running container and the sessions tracing it, as `GET /v1/containers` shows it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ContainerView {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub container: Container,
    pub sessions: Vec<Uuid>,
}

/// Ends a run when its TTL passes, its targets are gone, or its launched container exits.
async fn watch(id: Uuid, ttl: Option<Duration>, presence: Presence, manager: Weak<SessionManager>) {
    let deadline = ttl.map(|ttl| tokio::time::Instant::now() + ttl);
    let outcome = match &presence {
        Presence::Launched(container) => {
            let Some(docker) = manager.upgrade().map(|manager| manager.docker.clone()) else {
                return;
            };
            tokio::select! {
                _ = sleep_until(deadline) => {
                    docker.kill(container).await;
                    (Status::Finished, "ttl".to_owned())
                }
                exit = docker.wait(container) => match exit {
                    Ok(0) => (Status::Finished, "exited".to_owned()),
                    Ok(code) => (Status::Failed, format!("the launched container exited with code {code}")),
                    Err(err) => (Status::Failed, format!("waiting for the launched container: {err}")),
                },
            }
        }
        _ => {
            let mut check = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = sleep_until(deadline) => break (Status::Finished, "ttl".to_owned()),
                    _ = check.tick() => {
                        if presence.all_gone() {
                            break (Status::Finished, "targets_gone".to_owned());
                        }
                    }
                }
            }
        }
    };
    // Ending the run aborts this task: do it from another one.
    if let Some(manager) = manager.upgrade() {
        tokio::spawn(async move { manager.finish(id, outcome.0, outcome.1).await });
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What writes a run's events to its event log.
struct RunWriter {
    id: Uuid,
    log: EventLogWriter,
    /// cgroup id → the container it belongs to, for the events' `container` (updated as
    /// containers start and stop).
    containers: Arc<std::sync::RwLock<HashMap<u64, Arc<ContainerMeta>>>>,
    progress: Arc<RunProgress>,
    /// Events this run may still record (`limits.max_events` less earlier runs' events).
    max_events: Option<u64>,
    manager: Weak<SessionManager>,
    runtime: tokio::runtime::Handle,
    /// Where written events go to become spans.
    export: Option<ExportSink>,
    /// The run's wall-clock conversion, shared with its spans.
    clock: WallClock,
}

impl RunWriter {
    /// Writes the run's events until the engine closes the channel (the run ended). Runs on
    /// the blocking pool: it does file I/O.
    fn run(mut self, mut events: tokio::sync::mpsc::Receiver<Arc<Event>>) -> std::io::Result<()> {
        let clock = self.clock;
        let mut lines = Vec::with_capacity(1 << 20);
        let mut written = 0u64;
        let mut limit_reported = false;
        while let Some(first) = events.blocking_recv() {
            lines.clear();
            let mut batch = 0u64;
            let mut over_limit = 0u64;
            let mut next = Some(first);
            // Held while this batch is formatted (microseconds); the event follower waits.
            let containers = self.containers.read().unwrap_or_else(|e| e.into_inner());
            let mut spans = Vec::new();
            while let Some(event) = next {
                if self.max_events.is_some_and(|max| written + batch >= max) {
                    over_limit += 1;
                } else {
                    let container = containers.get(&event.record.cgroup_id);
                    if self.export.is_some() {
                        spans.push(SpanInput {
                            event: event.clone(),
                            container: container.cloned(),
                            clock,
                        });
                    }
                    event_json::write_line(
                        &event,
                        &self.id,
                        container.map(|c| &**c),
                        &clock,
                        &mut lines,
                    );
                    batch += 1;
                }
                next = if lines.len() < (1 << 20) {
                    events.try_recv().ok()
                } else {
                    None
                };
            }
            drop(containers);
            let evicted = self.log.append(&lines, batch)?;
            if let Some(export) = &self.export {
                export.push(spans);
            }
            written += batch;
            self.progress.written.fetch_add(batch, Ordering::Relaxed);
            self.progress
                .over_limit
                .fetch_add(over_limit, Ordering::Relaxed);
            self.progress.evicted.fetch_add(evicted, Ordering::Relaxed);
            if !limit_reported && self.max_events.is_some_and(|max| written >= max) {
                limit_reported = true;
                if let Some(manager) = self.manager.upgrade() {
                    let id = self.id;
                    self.runtime.spawn(async move {
                        manager
                            .finish(id, Status::Finished, "max_events".into())
                            .await
                    });
                }
            }
        }
        self.log.finish()
    }
}
