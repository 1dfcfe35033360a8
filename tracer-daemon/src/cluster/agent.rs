//! The agent: makes this node's parts of cluster sessions what etcd says they should be,
//! and reports each part back.
//!
//! A part is an ordinary local session with the cluster session's id (so its event log,
//! counters, crash recovery and kernel objects are the local ones), created when its target
//! first matches something here. The agent acts on every change etcd reports (a watch),
//! on container changes (a part waiting for a container joins), and once a second; every
//! pass reads the whole state again, so a missed event or an etcd outage only delays it.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use uuid::Uuid;

use super::{
    error::ClusterError,
    limits, placement,
    records::{ClusterSessionRecord, PartRecord, PartStatus},
    shared::Shared,
    watched::WatchedSessions,
};
use crate::{
    record::clock::now_rfc3339,
    session::{
        model::{Counters, Session, Status},
        spec::CreateSession,
        NewSession, Principal, SessionError, SessionManager,
    },
};

/// The agent's pass without any event: live counters are reported this often.
const PASS_EVERY: Duration = Duration::from_secs(1);
/// A part waiting for a container retries at least this often (container events make it
/// retry at once).
const WAITING_RETRY: Duration = Duration::from_secs(5);

pub struct Agent {
    shared: Arc<Shared>,
    manager: Arc<SessionManager>,
    /// What was last reported per session, so only changes are written.
    reported: HashMap<Uuid, PartRecord>,
    /// Parts with no local session: waiting for a container, or refused here (why).
    unstarted: HashMap<Uuid, Unstarted>,
    /// Parts whose start or stop was refused, at which generation, and why.
    refused: HashMap<Uuid, (u64, String)>,
    warned: bool,
}

struct Unstarted {
    status: PartStatus,
    error: Option<String>,
    generation: u64,
    tried: tokio::time::Instant,
    changes_seen: u64,
}

impl Agent {
    pub fn new(shared: Arc<Shared>, manager: Arc<SessionManager>) -> Self {
        Self {
            shared,
            manager,
            reported: HashMap::new(),
            unstarted: HashMap::new(),
            refused: HashMap::new(),
            warned: false,
        }
    }

    /// Runs until `stop` says so.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut containers = self.manager.container_changes();
        loop {
            let mut watched = match WatchedSessions::load(&self.shared.etcd).await {
                Ok(watched) => watched,
                Err(err) => {
                    self.unreachable(&err);
                    tokio::select! {
                        () = tokio::time::sleep(PASS_EVERY) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            loop {
                self.shared.set_known(watched.ids());
                let seen = *containers.borrow_and_update();
                self.pass(seen, &watched).await;
                tokio::select! {
                    alive = watched.changed() => if !alive { break },
                    _ = containers.changed() => {}
                    () = tokio::time::sleep(PASS_EVERY) => {}
                    _ = stop.changed() => return,
                }
                if watched.stale() {
                    break;
                }
            }
        }
    }

    async fn pass(&mut self, container_changes: u64, watched: &WatchedSessions) {
        match self.reconcile(container_changes, watched).await {
            Ok(()) => {
                if self.warned {
                    tracing::info!("etcd answers again: cluster sessions reconciled");
                }
                self.warned = false;
            }
            Err(err) => self.unreachable(&err),
        }
    }

    /// Logs once that etcd cannot be reached, until it can again.
    fn unreachable(&mut self, err: &ClusterError) {
        if !self.warned {
            tracing::warn!(%err, "cannot reconcile cluster sessions; parts running here go on recording");
        }
        self.warned = true;
    }

    async fn reconcile(
        &mut self,
        container_changes: u64,
        watched: &WatchedSessions,
    ) -> Result<(), ClusterError> {
        let ready = super::node::ready_nodes(&self.shared.etcd).await?;
        let shared = self.shared.clone();
        let me = &shared.node;
        let mut present = HashSet::new();
        for session in watched.sessions() {
            present.insert(session.id);
            let session = placement::settle(&self.shared, session, &ready).await?;
            if !session.runs_on(me) || session.desired == Status::Created {
                continue;
            }
            let part = self.act(&session, container_changes).await;
            self.report(&session, part).await?;
            limits::end_if_due(&shared, &session).await?;
        }
        self.remove_deleted(&present).await
    }

    /// Brings the local part of `session` where it should be; returns what it is now.
    async fn act(&mut self, session: &ClusterSessionRecord, container_changes: u64) -> PartRecord {
        let agent = Principal::cluster_agent();
        let mut local = self.manager.get(&agent, session.id).await.ok();
        let refused_now = self
            .refused
            .get(&session.id)
            .is_some_and(|(generation, _)| *generation == session.generation);
        match (session.desired, local.as_ref().map(|part| part.status)) {
            (Status::Running, None) => {
                local = self.create_and_start(session, container_changes).await;
            }
            (Status::Running, Some(Status::Created | Status::Stopped)) if !refused_now => {
                let started = self.manager.start(&agent, session.id).await;
                local = self.outcome(session, started).await;
            }
            (Status::Stopped | Status::Finished | Status::Failed, Some(Status::Running)) => {
                let stopped = self.manager.stop(&agent, session.id).await;
                local = self.outcome(session, stopped).await;
            }
            _ => {}
        }
        match local {
            Some(local) => self.part_of(session, &local),
            None => self.unstarted_part(session),
        }
    }

    /// The part after a start or stop. One that was refused (a duplicate of a session
    /// running here, say) keeps its error, and is not tried again until the cluster session
    /// changes.
    async fn outcome(
        &mut self,
        session: &ClusterSessionRecord,
        outcome: Result<Session, SessionError>,
    ) -> Option<Session> {
        match outcome {
            Ok(local) => {
                self.refused.remove(&session.id);
                Some(local)
            }
            Err(err) => {
                tracing::warn!(session = %session.id, %err, "could not change this node's part");
                self.refused
                    .insert(session.id, (session.generation, err.to_string()));
                self.manager
                    .get(&Principal::cluster_agent(), session.id)
                    .await
                    .ok()
            }
        }
    }

    /// Creates and starts the part when its target matches here; else remembers it waits.
    async fn create_and_start(
        &mut self,
        session: &ClusterSessionRecord,
        container_changes: u64,
    ) -> Option<Session> {
        if let Some(unstarted) = self.unstarted.get(&session.id) {
            let changed = unstarted.generation != session.generation;
            let retry = match unstarted.status {
                // Refused here (no such backend, say): again only when the session changes.
                PartStatus::Failed => changed,
                _ => {
                    changed
                        || unstarted.changes_seen != container_changes
                        || unstarted.tried.elapsed() >= WAITING_RETRY
                }
            };
            if !retry {
                return None;
            }
        }
        let part = NewSession {
            id: session.id,
            tenant: session.tenant.clone(),
            restricted: session.restricted,
            name: session.name.clone(),
            request: part_request(session),
            request_text: String::new(),
        };
        let part = NewSession {
            request_text: serde_json::to_string(&part.request).unwrap_or_default(),
            ..part
        };
        let (status, error) = match self.manager.create_part(part).await {
            Ok(_) => {
                self.unstarted.remove(&session.id);
                let agent = Principal::cluster_agent();
                let started = self.manager.start(&agent, session.id).await;
                tracing::info!(session = %session.id, node = %self.shared.node.name, "this node joined the cluster session");
                return self.outcome(session, started).await;
            }
            // Nothing here matches (yet): the part waits for a container.
            Err(SessionError::NoMatchingContainer { .. } | SessionError::Target(_)) => {
                (PartStatus::Waiting, None)
            }
            Err(err) => (PartStatus::Failed, Some(err.to_string())),
        };
        self.unstarted.insert(
            session.id,
            Unstarted {
                status,
                error,
                generation: session.generation,
                tried: tokio::time::Instant::now(),
                changes_seen: container_changes,
            },
        );
        None
    }

    fn part_of(&self, session: &ClusterSessionRecord, local: &Session) -> PartRecord {
        let refused = self.refused.get(&session.id).map(|(_, why)| why.clone());
        PartRecord {
            node: self.shared.node.name.clone(),
            status: PartStatus::of(local.status),
            generation: session.generation,
            counters: local.counters,
            traced: local.traced.clone(),
            not_recording: local.not_recording.clone(),
            backend_in_use: local.backend_in_use.clone(),
            finished_reason: local.finished_reason.clone(),
            error: local.error.clone().or(refused),
            updated_at: now_rfc3339(),
        }
    }

    fn unstarted_part(&self, session: &ClusterSessionRecord) -> PartRecord {
        let (status, error) = self
            .unstarted
            .get(&session.id)
            .map_or((PartStatus::Waiting, None), |u| (u.status, u.error.clone()));
        PartRecord {
            node: self.shared.node.name.clone(),
            status,
            generation: session.generation,
            counters: Counters::default(),
            traced: None,
            not_recording: None,
            backend_in_use: None,
            finished_reason: None,
            error,
            updated_at: now_rfc3339(),
        }
    }

    /// Writes the part to etcd if it changed since it was last written.
    async fn report(
        &mut self,
        session: &ClusterSessionRecord,
        part: PartRecord,
    ) -> Result<(), ClusterError> {
        let unchanged = self.reported.get(&session.id).is_some_and(|last| {
            PartRecord {
                updated_at: part.updated_at.clone(),
                ..last.clone()
            } == part
        });
        if unchanged {
            return Ok(());
        }
        let path = format!("parts/{}/{}", session.id, self.shared.node.name);
        self.shared.etcd.put(&path, &part, None).await?;
        self.reported.insert(session.id, part);
        Ok(())
    }

    /// Parts whose cluster session was deleted: deleted here too (events and all), and their
    /// reports.
    async fn remove_deleted(&mut self, present: &HashSet<Uuid>) -> Result<(), ClusterError> {
        let agent = Principal::cluster_agent();
        for row in self.manager.store().cluster_parts() {
            if present.contains(&row.id) {
                continue;
            }
            match self.manager.delete(&agent, row.id).await {
                Ok(()) | Err(SessionError::NotFound(_)) => {
                    tracing::info!(session = %row.id, "the cluster session was deleted: its part here is gone");
                }
                Err(err) => {
                    tracing::warn!(session = %row.id, %err, "could not delete this node's part");
                    continue;
                }
            }
            let path = format!("parts/{}/{}", row.id, self.shared.node.name);
            self.shared.etcd.delete(&path, false).await?;
        }
        // Parts that never had a local session (waiting, or refused here) go too.
        let gone: Vec<Uuid> = self
            .reported
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in gone {
            let path = format!("parts/{id}/{}", self.shared.node.name);
            self.shared.etcd.delete(&path, false).await?;
            self.reported.remove(&id);
        }
        self.unstarted.retain(|id, _| present.contains(id));
        self.refused.retain(|id, _| present.contains(id));
        Ok(())
    }
}

/// The request of this node's part of `session`: its limits made per node — the part stops
/// at `max_events_per_node` (or the whole session's `max_events`, if lower), and its TTL is
/// what is left of the session's since it was started, so every part ends at one deadline.
pub fn part_request(session: &ClusterSessionRecord) -> CreateSession {
    let mut request = session.request.clone();
    let limits = &mut request.limits;
    limits.max_events = match (limits.max_events, limits.max_events_per_node) {
        (Some(whole), Some(per_node)) => Some(whole.min(per_node)),
        (whole, per_node) => whole.or(per_node),
    };
    let ttl = session.request.validate().ok().and_then(|spec| spec.ttl);
    let started = session.started_at.as_deref().and_then(|at| {
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
    });
    if let (Some(ttl), Some(started)) = (ttl, started) {
        let elapsed = time::OffsetDateTime::now_utc() - started;
        let left = ttl.saturating_sub(elapsed.try_into().unwrap_or_default());
        limits.ttl = Some(format!("{}ms", left.as_millis().max(1)));
    }
    request.tenant = Some(session.tenant.clone());
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_stops_at_the_lower_limit_and_at_the_session_deadline() {
        let mut started = super::super::records::tests::session(
            serde_json::json!({"scope": "cluster", "target": {"container": "w"},
                               "limits": {"max_events": 100, "max_events_per_node": 30, "ttl": "60s"}}),
            None,
        );
        let ten_seconds_ago = time::OffsetDateTime::now_utc() - time::Duration::seconds(10);
        started.started_at = Some(crate::record::clock::rfc3339(ten_seconds_ago));
        let part = part_request(&started);
        assert_eq!(part.limits.max_events, Some(30));
        let ttl: u64 = part
            .limits
            .ttl
            .clone()
            .unwrap()
            .trim_end_matches("ms")
            .parse()
            .unwrap();
        assert!(
            (49_000..=50_100).contains(&ttl),
            "{ttl} ms left of 60 s after 10 s"
        );
        assert!(part.validate().is_ok());
    }
}
