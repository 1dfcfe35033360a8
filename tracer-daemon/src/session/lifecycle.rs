//! The session manager: creates sessions, finds them for their callers, and hands every
//! lifecycle change to the session's actor ([`super::actor`]). Reads come from the store;
//! only a running session's live counters come from its actor.
use std::{collections::HashMap, sync::Arc};

use uuid::Uuid;

use super::{
    access::Principal,
    actor::{ActorHandle, Command, ContainerChange},
    context::{Context, ManagerOptions, Snapshot},
    duplicates::RunningKeys,
    error::SessionError,
    launch,
    model::{default_name, Counters, NotRecording, Session, SessionRow, Status},
    resolve::Resolving,
    spec::{BackendChoice, CreateSession, SessionSpec, TargetKind},
    store::{ListQuery, Store, StoreError},
};
use crate::{
    backend::{Backend, Tracer},
    containers::{Container, ContainerRuntime},
    record::clock::rfc3339,
    sink::{
        event_filter::EventFilter,
        follow::{Follower, Followers},
    },
    sync::lock,
};

/// How long a read waits for a running session's actor before using its last published view.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

pub struct SessionManager {
    ctx: Arc<Context>,
    /// The actor of every session that has been started, stopped or deleted since the
    /// daemon started. Held only to look one up or add one.
    actors: std::sync::Mutex<HashMap<Uuid, ActorHandle>>,
    /// Bumped at every container change told to the actors (the cluster agent waits on it
    /// to retry parts waiting for a container).
    container_changes: tokio::sync::watch::Sender<u64>,
}

impl SessionManager {
    pub fn new(
        tracer: Arc<dyn Tracer>,
        runtime: Arc<dyn ContainerRuntime>,
        store: Store,
        options: ManagerOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            ctx: Arc::new(Context {
                tracer,
                runtime,
                store,
                options,
                running: RunningKeys::default(),
                reported: std::sync::Mutex::new(HashMap::new()),
                resuming: std::sync::Mutex::new(std::collections::HashSet::new()),
                followers: Arc::new(Followers::default()),
                budgets: std::sync::Mutex::new(HashMap::new()),
            }),
            actors: std::sync::Mutex::new(HashMap::new()),
            container_changes: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    pub(super) fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.ctx.runtime
    }

    /// The actor of session `id`, started if it has none.
    fn actor(&self, id: Uuid) -> ActorHandle {
        lock(&self.actors)
            .entry(id)
            .or_insert_with(|| ActorHandle::spawn(self.ctx.clone(), id))
            .clone()
    }

    fn existing_actor(&self, id: Uuid) -> Option<ActorHandle> {
        lock(&self.actors).get(&id).cloned()
    }

    fn all_actors(&self) -> Vec<(Uuid, ActorHandle)> {
        lock(&self.actors)
            .iter()
            .map(|(id, actor)| (*id, actor.clone()))
            .collect()
    }

    /// Creates a session from `request`; `request_text` is the request as received, kept
    /// verbatim with the session. Creating never starts tracing.
    pub async fn create(
        &self,
        principal: &Principal,
        request: CreateSession,
        request_text: String,
    ) -> Result<Session, SessionError> {
        let (new, spec) = NewSession::from_request(principal, request, request_text)?;
        self.insert_new(new, &spec).await
    }

    /// Creates this node's part of a cluster session: the cluster session's id, owner, name
    /// and request (already checked where it was created). Fails as a create does when the
    /// target matches nothing here.
    pub async fn create_part(&self, part: NewSession) -> Result<Session, SessionError> {
        let spec = part.request.validate()?;
        self.insert_new(part, &spec).await
    }

    async fn insert_new(
        &self,
        new: NewSession,
        spec: &SessionSpec,
    ) -> Result<Session, SessionError> {
        self.ctx.check_space()?;
        self.check_backend(spec)?;
        // The target must exist now; it is resolved again at every start.
        match &spec.target {
            TargetKind::Launch(request) => {
                super::resolve::check_host_pids(&self.ctx, &spec.target)?;
                launch::check(&self.ctx, request).await?;
            }
            _ => {
                let resolving = Resolving {
                    spec,
                    tenant: &new.tenant,
                    restricted: new.restricted,
                    session: Uuid::nil(),
                    run: 0,
                };
                resolving.resolve(&self.ctx).await?;
            }
        }
        let created_at = rfc3339(time::OffsetDateTime::now_utc());
        let row = SessionRow {
            id: new.id,
            tenant: new.tenant,
            name: new.name,
            status: Status::Created,
            duplicate_key: spec.duplicate_key(),
            request: new.request,
            request_text: new.request_text,
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
            restricted: new.restricted,
        };
        self.ctx.store.insert(row.clone()).await?;
        tracing::info!(session = %row.id, name = %row.name, tenant = %row.tenant, "session created");
        Ok(row.to_resource(None))
    }

    /// Refuses a session that asks for a backend this daemon cannot run.
    fn check_backend(&self, spec: &SessionSpec) -> Result<(), SessionError> {
        let backend = match spec.backend {
            BackendChoice::Auto => return Ok(()),
            BackendChoice::Ebpf => Backend::Ebpf,
            BackendChoice::Ftrace => Backend::Ftrace,
        };
        self.ctx
            .tracer
            .backend_status(backend)
            .map_err(|why| SessionError::BackendUnavailable { backend, why })
    }

    /// The session, if `principal` may see it.
    async fn visible(&self, principal: &Principal, id: Uuid) -> Result<SessionRow, SessionError> {
        match self.ctx.store.get(id).await? {
            Some(row) if principal.may_see(&row) => Ok(row),
            // Another tenant's session does not exist, as far as this caller knows.
            _ => Err(SessionError::NotFound(id)),
        }
    }

    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<Session, SessionError> {
        let row = self.visible(principal, id).await?;
        Ok(self.resource(&row).await)
    }

    /// A page of sessions and whether more follow.
    pub async fn list(
        &self,
        principal: &Principal,
        mut query: ListQuery,
    ) -> Result<(Vec<Session>, bool), SessionError> {
        if !principal.admin {
            query.tenant = Some(principal.tenant.clone());
        }
        let (rows, more) = self.ctx.store.list(query).await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            sessions.push(self.resource(&row).await);
        }
        Ok((sessions, more))
    }

    /// The directory of a session's event log, if `principal` may read it.
    /// Every follower of every session, for `/metrics`.
    pub fn followers(&self) -> &Arc<Followers> {
        &self.ctx.followers
    }

    pub async fn events_dir(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<std::path::PathBuf, SessionError> {
        self.visible(principal, id).await?;
        Ok(self.ctx.session_dir(id))
    }

    /// A follower of the session's events from `filter` on: it ends when the session's
    /// current run does (at once, after what was recorded, if it does not run).
    pub async fn follower(
        &self,
        principal: &Principal,
        id: Uuid,
        filter: EventFilter,
    ) -> Result<Follower, SessionError> {
        self.visible(principal, id).await?;
        // Subscribed before anything is read, so nothing recorded meanwhile is missed.
        let live = self
            .actor(id)
            .call(|reply| Command::Subscribe { reply })
            .await
            .flatten();
        Ok(Follower {
            session: id,
            dir: self.ctx.session_dir(id),
            filter,
            live,
            followers: self.ctx.followers.clone(),
        })
    }

    pub async fn start(&self, principal: &Principal, id: Uuid) -> Result<Session, SessionError> {
        self.visible(principal, id).await?;
        self.ctx.check_space()?;
        let started = self
            .actor(id)
            .call(|reply| Command::Start {
                resume: false,
                reply,
            })
            .await
            .ok_or(SessionError::NotFound(id))??;
        Ok(started.to_resource(None))
    }

    pub async fn stop(&self, principal: &Principal, id: Uuid) -> Result<Session, SessionError> {
        self.visible(principal, id).await?;
        let stopped = self
            .actor(id)
            .call(|reply| Command::Stop { reply })
            .await
            .ok_or(SessionError::NotFound(id))??;
        Ok(stopped.to_resource(None))
    }

    /// Deletes a session: stops it if it runs, releases its kernel objects, removes it and
    /// its recorded events.
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<(), SessionError> {
        self.visible(principal, id).await?;
        let deleted = self
            .actor(id)
            .call(|reply| Command::Delete { reply })
            .await
            .ok_or(SessionError::NotFound(id))?;
        if deleted.is_ok() {
            lock(&self.actors).remove(&id);
            lock(&self.ctx.budgets).remove(&id);
        }
        deleted
    }

    /// A running session's live view, from its actor; while the actor is busy (a stop
    /// draining, say), its last published one, so reads never wait on lifecycle work.
    async fn snapshot(&self, id: Uuid) -> Option<Snapshot> {
        let actor = self.existing_actor(id)?;
        let asked = actor.call(|reply| Command::Snapshot { reply });
        match tokio::time::timeout(SNAPSHOT_WAIT, asked).await {
            Ok(answer) => answer.flatten(),
            Err(_) => self.ctx.last_report(id),
        }
    }

    /// A session's resource: stored, with live counters and export status if it runs here.
    async fn resource(&self, row: &SessionRow) -> Session {
        if row.status != Status::Running {
            return row.to_resource(None);
        }
        let snapshot = self.snapshot(row.id).await;
        let mut session = row.to_resource(snapshot.as_ref().and_then(|s| s.counters));
        match snapshot {
            Some(snapshot) => {
                session.export_status = snapshot.export_status;
                session.traced = snapshot.traced;
                session.not_recording = snapshot.not_recording;
            }
            // Stored as running, with no run here yet: tracerd restarted and resumes it.
            None if lock(&self.ctx.resuming).contains(&row.id) => {
                session.not_recording = Some(NotRecording {
                    reason: "resuming".into(),
                    message: "tracerd restarted and has not resumed this session yet".into(),
                    since: None,
                });
            }
            None => {}
        }
        session
    }

    /// Running sessions that are not recording, and why (as last reported).
    pub fn not_recording(&self) -> Vec<(Uuid, NotRecording)> {
        self.ctx.not_recording()
    }

    /// Every running session's view as its actor last reported it (export and recording
    /// state), for metrics.
    pub fn running_snapshots(&self) -> Vec<(Uuid, super::context::Snapshot)> {
        self.ctx.snapshots()
    }

    /// Counters of every running session now, for metrics.
    pub async fn running_counters(&self) -> Vec<(Uuid, Counters)> {
        let mut counters = Vec::new();
        for id in self.ctx.running_ids() {
            if let Some(Snapshot {
                counters: Some(now),
                ..
            }) = self.snapshot(id).await
            {
                counters.push((id, now));
            }
        }
        counters
    }

    /// Saves running sessions' counters as their actors last read them (called every few
    /// hundred milliseconds, so a crash loses at most that much of them; the events themselves
    /// are on disk already).
    pub async fn persist_counters(&self) -> Result<(), StoreError> {
        self.ctx.store.save_counters(self.ctx.reported()).await
    }

    /// Tells every session's actor about a container's change.
    pub(super) fn broadcast(&self, change: &ContainerChange) {
        for (_, actor) in self.all_actors() {
            actor.tell(Command::Container(change.clone()));
        }
        self.container_changes
            .send_modify(|changes| *changes = changes.wrapping_add(1));
    }

    /// Session `id`'s runs take their events from `budget` too (a cluster session's
    /// `max_events`, shared by its parts on every node); from their next start on.
    pub fn set_budget(&self, id: Uuid, budget: Arc<dyn crate::sink::writer::EventBudget>) {
        lock(&self.ctx.budgets).insert(id, budget);
    }

    /// Changes when a container starts, stops or the runtime resyncs.
    pub fn container_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.container_changes.subscribe()
    }

    /// Marks a session as waiting to be resumed, as `recover` does (tests).
    #[cfg(test)]
    pub(super) fn mark_resuming(&self, id: Uuid) {
        lock(&self.ctx.resuming).insert(id);
    }

    /// Marks `stopped` this node's parts of cluster sessions that were running when the
    /// daemon last stopped but should not run any more (`keep` says which should), so
    /// [`Self::recover`] does not start them again, not even for the moment until the
    /// cluster agent would stop them.
    pub async fn stop_parts_before_recovery(
        &self,
        keep: impl Fn(Uuid) -> bool,
    ) -> Result<usize, SessionError> {
        let mut stopped = 0;
        for mut row in self.ctx.store.cluster_parts() {
            if row.status != Status::Running || keep(row.id) {
                continue;
            }
            let now = rfc3339(time::OffsetDateTime::now_utc());
            row.status = Status::Stopped;
            row.stopped_at = Some(now.clone());
            row.updated_at = now;
            self.ctx.store.save(row).await?;
            stopped += 1;
        }
        Ok(stopped)
    }

    /// Settles the counters of runs a daemon died during (before [`Self::recover`]).
    pub async fn settle_crashed_runs(&self) -> Result<super::settle::Settled, SessionError> {
        super::settle::settle_crashed_runs(&self.ctx).await
    }

    /// Restarts every session that was running when the daemon last stopped or died.
    /// Returns how many run again and how many failed (their target is gone).
    pub async fn recover(&self) -> Result<(usize, usize), SessionError> {
        let (mut resumed, mut failed) = (0, 0);
        let rows = self.ctx.store.with_status(Status::Running).await?;
        lock(&self.ctx.resuming).extend(rows.iter().map(|row| row.id));
        for mut row in rows {
            let id = row.id;
            // Whatever comes of it, it is no longer waiting to be resumed.
            let _resumed = Resumed(&self.ctx, id);
            if matches!(
                row.request.validate().map(|spec| spec.target),
                Ok(TargetKind::Launch(_))
            ) {
                // Its container ran untraced while tracerd was down: a launch is not re-run.
                failed += 1;
                let reason =
                    "tracerd restarted while the launched container ran; a launch is not run again";
                self.ctx.mark_failed(&mut row, reason.into()).await?;
                let _ = self
                    .ctx
                    .runtime
                    .remove_labelled(launch::SESSION_LABEL, &id.to_string())
                    .await;
                continue;
            }
            let started = self
                .actor(id)
                .call(|reply| Command::Start {
                    resume: true,
                    reply,
                })
                .await
                .unwrap_or(Err(SessionError::NotFound(id)));
            match started {
                Ok(_) => resumed += 1,
                // Recorded as failed, with the reason, by the start itself.
                Err(SessionError::Target(_) | SessionError::NoMatchingContainer { .. }) => {
                    failed += 1;
                }
                // Stopped or deleted through the API (which serves already) before its turn.
                Err(SessionError::InvalidTransition { .. } | SessionError::NotFound(_)) => {}
                Err(err) => {
                    failed += 1;
                    tracing::error!(session = %id, %err, "could not resume the session");
                    if let Ok(Some(mut row)) = self.ctx.store.get(id).await {
                        let reason = format!("could not resume after a restart: {err}");
                        // The daemon serves on even if this cannot be saved (a full disk).
                        if let Err(err) = self.ctx.mark_failed(&mut row, reason).await {
                            tracing::error!(session = %id, %err, "recording the failed resume failed");
                        }
                    }
                }
            }
        }
        Ok((resumed, failed))
    }

    /// Ends every run, leaving their sessions `running` so the next start resumes them.
    pub async fn shutdown(&self) {
        for (_, actor) in self.all_actors() {
            actor.call(|reply| Command::Shutdown { reply }).await;
        }
        lock(&self.actors).clear();
    }

    /// Running containers the caller may see, with the running sessions tracing each.
    pub async fn containers(
        &self,
        principal: &Principal,
    ) -> Result<Vec<ContainerView>, SessionError> {
        let containers = self
            .ctx
            .visible_containers(&principal.tenant, !principal.admin)
            .await?;
        let mut runs = Vec::new();
        for id in self.ctx.running_ids() {
            if let Some(snapshot) = self.snapshot(id).await {
                if principal.admin || snapshot.tenant == principal.tenant {
                    runs.push((id, snapshot.cgroups));
                }
            }
        }
        Ok(containers
            .into_iter()
            .map(|container| {
                let sessions = runs
                    .iter()
                    .filter(|(_, cgroups)| cgroups.contains(&container.cgroup_id))
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

/// Takes a session off the list of those waiting to be resumed when dropped.
struct Resumed<'a>(&'a Context, Uuid);

impl Drop for Resumed<'_> {
    fn drop(&mut self) {
        lock(&self.0.resuming).remove(&self.1);
    }
}

/// A session to create: who owns it, its name and its request.
pub struct NewSession {
    pub id: Uuid,
    pub tenant: String,
    /// Limited to its tenant's containers (created by a tenant, not an admin).
    pub restricted: bool,
    pub name: String,
    pub request: CreateSession,
    /// The request as received, kept verbatim.
    pub request_text: String,
}

impl NewSession {
    /// A new session (a new id) from a create request, owned as `principal` may own it,
    /// named as asked or `<target>.<minute>`; with the request validated.
    pub fn from_request(
        principal: &Principal,
        request: CreateSession,
        request_text: String,
    ) -> Result<(Self, SessionSpec), SessionError> {
        let spec = request.validate()?;
        request.check_new()?;
        let (tenant, restricted) = principal.owner_of(&request, &spec.target)?;
        let now = time::OffsetDateTime::now_utc();
        let new = NewSession {
            id: Uuid::new_v4(),
            tenant,
            restricted,
            name: spec
                .name
                .clone()
                .unwrap_or_else(|| default_name(&request.target, now)),
            request,
            request_text,
        };
        Ok((new, spec))
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
