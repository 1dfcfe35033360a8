//! This node's part of one cluster session: an ordinary local session with the cluster
//! session's id (so its event log, counters, crash recovery and kernel objects are the local
//! ones), created when its target first matches something here, started, stopped and
//! reported as the cluster session says.
use std::{collections::HashMap, time::Duration};

use uuid::Uuid;

use super::{
    error::ClusterError,
    etcd::Versioned,
    placement,
    records::{ClusterSessionRecord, NodeRecord, PartRecord, PartStatus},
    shared::Shared,
};
use crate::{
    record::clock::now_rfc3339,
    session::{
        model::{Counters, Session, Status},
        spec::CreateSession,
        NewSession, Principal, SessionError, SessionManager, TargetError,
    },
};

/// A part waiting for a container retries at least this often (container events make it
/// retry at once).
const WAITING_RETRY: Duration = Duration::from_secs(5);

/// The local side of this node's parts: what could not be started, and why.
pub struct Parts {
    manager: std::sync::Arc<SessionManager>,
    /// Parts with no local session: waiting for a container, or refused here (why).
    unstarted: HashMap<Uuid, Unstarted>,
    /// Parts whose start or stop was refused, at which generation, and why.
    refused: HashMap<Uuid, (u64, String)>,
}

struct Unstarted {
    status: PartStatus,
    error: Option<String>,
    generation: u64,
    tried: tokio::time::Instant,
    changes_seen: u64,
}

/// What the part acts with: the session as seen (with its revision, for a launch's claim),
/// the ready nodes, and the container changes seen so far.
pub struct Acting<'a> {
    pub shared: &'a std::sync::Arc<Shared>,
    pub seen: &'a Versioned<ClusterSessionRecord>,
    pub ready: &'a [NodeRecord],
    pub container_changes: u64,
}

impl Parts {
    pub fn new(manager: std::sync::Arc<SessionManager>) -> Self {
        Self {
            manager,
            unstarted: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    /// Brings the local part of the session where it should be; returns what it is now.
    pub async fn act(&mut self, acting: &Acting<'_>) -> Result<PartRecord, ClusterError> {
        let session = &acting.seen.value;
        let agent = Principal::cluster_agent();
        let mut local = self.manager.get(&agent, session.id).await.ok();
        let refused_now = self
            .refused
            .get(&session.id)
            .is_some_and(|(generation, _)| *generation == session.generation);
        match (session.desired, local.as_ref().map(|part| part.status)) {
            (Status::Running, None) => local = self.create_and_start(acting).await?,
            (Status::Running, Some(Status::Created | Status::Stopped))
                if !refused_now && placement_allows(acting).await? =>
            {
                let started = self.manager.start(&agent, session.id).await;
                local = self.outcome(session, started).await;
            }
            (Status::Stopped | Status::Finished | Status::Failed, Some(Status::Running)) => {
                local = self.stop(session).await;
            }
            _ => {}
        }
        Ok(match local {
            Some(local) => self.part_of(acting, &local),
            None => self.unstarted_part(acting),
        })
    }

    /// Stops the local part if it runs (a session now stopped, or no longer for this node).
    pub async fn stop(&mut self, session: &ClusterSessionRecord) -> Option<Session> {
        let stopped = self
            .manager
            .stop(&Principal::cluster_agent(), session.id)
            .await;
        self.outcome(session, stopped).await
    }

    /// Whether the local part runs now.
    pub async fn is_running(&self, id: Uuid) -> bool {
        self.manager
            .get(&Principal::cluster_agent(), id)
            .await
            .is_ok_and(|part| part.status == Status::Running)
    }

    /// Forgets what it knew of sessions not in `present`.
    pub fn retain(&mut self, present: &std::collections::HashSet<Uuid>) {
        self.unstarted.retain(|id, _| present.contains(id));
        self.refused.retain(|id, _| present.contains(id));
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

    /// Whether a retry of an unstarted part is due.
    fn due(&self, session: &ClusterSessionRecord, container_changes: u64) -> bool {
        let Some(unstarted) = self.unstarted.get(&session.id) else {
            return true;
        };
        let changed = unstarted.generation != session.generation;
        match unstarted.status {
            // Refused here (no such backend, say): again only when the session changes.
            PartStatus::Failed => changed,
            _ => {
                changed
                    || unstarted.changes_seen != container_changes
                    || unstarted.tried.elapsed() >= WAITING_RETRY
            }
        }
    }

    /// Creates and starts the part when its target matches here; else remembers it waits.
    async fn create_and_start(
        &mut self,
        acting: &Acting<'_>,
    ) -> Result<Option<Session>, ClusterError> {
        let session = &acting.seen.value;
        if !self.due(session, acting.container_changes) {
            return Ok(None);
        }
        let request = part_request(session);
        if let Some(max) = session.request.limits.max_events {
            let budget = super::budget::EtcdBudget::new(acting.shared.clone(), session.id, max);
            self.manager.set_budget(session.id, budget);
        }
        let part = NewSession {
            id: session.id,
            tenant: session.tenant.clone(),
            restricted: session.restricted,
            name: session.name.clone(),
            request_text: serde_json::to_string(&request).unwrap_or_default(),
            request,
        };
        let (status, error) = match self.manager.create_part(part).await {
            Ok(_) => {
                self.unstarted.remove(&session.id);
                if !placement_allows(acting).await? {
                    // Placed elsewhere meanwhile: this node's copy goes.
                    let _ = self
                        .manager
                        .delete(&Principal::cluster_agent(), session.id)
                        .await;
                    return Ok(None);
                }
                let started = self
                    .manager
                    .start(&Principal::cluster_agent(), session.id)
                    .await;
                tracing::info!(session = %session.id, node = %acting.shared.node.name, "this node joined the cluster session");
                return Ok(self.outcome(session, started).await);
            }
            Err(SessionError::Target(TargetError::ImageMissing { image }))
                if session.request.target.launch.is_some() =>
            {
                let why = format!("image {image} is not on node {}", acting.shared.node.name);
                placement::lacks_image(acting.shared, acting.seen, acting.ready, &why).await?;
                (PartStatus::Failed, Some(why))
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
                changes_seen: acting.container_changes,
            },
        );
        Ok(None)
    }

    fn part_of(&self, acting: &Acting<'_>, local: &Session) -> PartRecord {
        let session = &acting.seen.value;
        let refused = self.refused.get(&session.id).map(|(_, why)| why.clone());
        PartRecord {
            node: acting.shared.node.name.clone(),
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

    fn unstarted_part(&self, acting: &Acting<'_>) -> PartRecord {
        let session = &acting.seen.value;
        let (status, error) = self
            .unstarted
            .get(&session.id)
            .map_or((PartStatus::Waiting, None), |u| (u.status, u.error.clone()));
        PartRecord {
            node: acting.shared.node.name.clone(),
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
}

/// A launch starts here only once this node has claimed its run (see [`placement`]); any
/// other session may always start.
async fn placement_allows(acting: &Acting<'_>) -> Result<bool, ClusterError> {
    if acting.seen.value.request.target.launch.is_none() {
        return Ok(true);
    }
    placement::claim(acting.shared, acting.seen).await
}

/// The request of this node's part of `session`: it stops at `max_events_per_node`; the
/// whole session's `max_events` is a budget its parts share (see [`super::budget`]). Its TTL
/// is not its own either: the session's one deadline ends every part (see
/// [`super::limits`]).
pub fn part_request(session: &ClusterSessionRecord) -> CreateSession {
    let mut request = session.request.clone();
    let limits = &mut request.limits;
    limits.max_events = limits.max_events_per_node;
    limits.ttl = None;
    if let Some(launch) = &mut request.target.launch {
        launch.ttl = None;
    }
    request.tenant = Some(session.tenant.clone());
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_stops_at_the_lower_limit_and_leaves_the_deadline_to_the_session() {
        let session = super::super::records::tests::session(
            serde_json::json!({"scope": "cluster", "target": {"container": "w"},
                               "limits": {"max_events": 100, "max_events_per_node": 30, "ttl": "60s"}}),
            None,
        );
        let part = part_request(&session);
        assert_eq!(
            part.limits.max_events,
            Some(30),
            "the session's 100 is a shared budget"
        );
        assert_eq!(part.limits.ttl, None);
        assert_eq!(part.tenant.as_deref(), Some("t"));
        assert!(part.validate().is_ok());
    }
}
