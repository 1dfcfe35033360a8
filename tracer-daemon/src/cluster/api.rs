//! What the API does with cluster sessions: create, read, list, start, stop and delete them
//! in etcd, on behalf of the caller (with its rights: a tenant sees only its own). A start or
//! stop waits (up to [`ACK_WAIT`]) for every ready node's part to act on it, so the answer
//! shows the parts as they are after it.
use std::{collections::HashSet, time::Duration};

use uuid::Uuid;

use super::{
    error::ClusterError,
    node::ready_nodes,
    placement,
    records::{ClusterSessionRecord, NodeRecord, PartRecord},
    view, Cluster,
};
use crate::{
    record::clock::{now_rfc3339, rfc3339},
    session::{
        model::{Session, Status},
        spec::CreateSession,
        NewSession, Principal, SessionError,
    },
};

/// How long a start, stop or delete waits for the ready nodes' parts.
const ACK_WAIT: Duration = Duration::from_secs(10);
const ACK_POLL: Duration = Duration::from_millis(50);
/// How long a deleted session's tombstone tells nodes that were away to delete their part.
const TOMBSTONE_TTL_SECS: i64 = 7 * 24 * 3600;

/// A node that holds a part of a session, and how to reach its API.
pub struct EventSource {
    pub node: String,
    pub api: Option<String>,
    /// Whether its lease is alive (a lost node's events are not asked for).
    pub ready: bool,
}

impl Cluster {
    /// Whether `id` is a cluster session (this node's part of one counts): asks etcd only for
    /// an id this node does not know, so local sessions never wait for etcd.
    pub async fn is_cluster_session(&self, id: Uuid) -> Result<bool, ClusterError> {
        if let Some(row) = self
            .manager
            .store()
            .get(id)
            .await
            .map_err(SessionError::from)?
        {
            return Ok(row.request.scope == crate::session::spec::Scope::Cluster);
        }
        // Seen by the agent's watch: no need to ask (a deleted one is then not found).
        if self.shared.is_known(id) {
            return Ok(true);
        }
        Ok(self
            .shared
            .etcd
            .get::<serde_json::Value>(&session_path(id))
            .await?
            .is_some())
    }

    pub async fn create(
        &self,
        principal: &Principal,
        request: CreateSession,
        request_text: String,
    ) -> Result<Session, ClusterError> {
        let (new, _) = NewSession::from_request(principal, request, request_text)?;
        let now = time::OffsetDateTime::now_utc();
        let record = ClusterSessionRecord {
            id: new.id,
            tenant: new.tenant,
            restricted: new.restricted,
            name: new.name,
            request: new.request,
            request_text: new.request_text,
            desired: Status::Created,
            generation: 1,
            runs: 0,
            placement: None,
            lacking_image: Vec::new(),
            error: None,
            finished_reason: None,
            created_at: rfc3339(now),
            updated_at: rfc3339(now),
            started_at: None,
            stopped_at: None,
        };
        if !self
            .shared
            .etcd
            .create(&session_path(record.id), &record)
            .await?
        {
            return Err(ClusterError::Conflict);
        }
        tracing::info!(session = %record.id, name = %record.name, tenant = %record.tenant, "cluster session created");
        Ok(view::session(&record, Vec::new(), &HashSet::new()))
    }

    /// The session with its parts, read from etcd in one round trip.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<Session, ClusterError> {
        let session = session_path(id);
        let parts = format!("parts/{id}/");
        let read = self
            .shared
            .etcd
            .read_together(&[(&session, false), (&parts, true), ("nodes/", true)])
            .await?;
        let [records, parts, nodes] = <[Vec<serde_json::Value>; 3]>::try_from(read)
            .map_err(|_| ClusterError::Corrupt("a read of three answered otherwise".into()))?;
        let record: ClusterSessionRecord = match records.into_iter().next() {
            Some(record) => decoded(record)?,
            None => return Err(SessionError::NotFound(id).into()),
        };
        if !(principal.admin || record.tenant == principal.tenant) {
            return Err(SessionError::NotFound(id).into());
        }
        let parts: Vec<PartRecord> = parts.into_iter().map(decoded).collect::<Result<_, _>>()?;
        let ready = nodes
            .into_iter()
            .map(|node| decoded(node).map(|node: NodeRecord| node.name))
            .collect::<Result<_, ClusterError>>()?;
        Ok(view::session(&record, parts, &ready))
    }

    /// Every cluster session the caller may see, oldest first.
    pub async fn list(&self, principal: &Principal) -> Result<Vec<Session>, ClusterError> {
        // A list of sessions does not wait 3 s for an etcd the agent found away a moment ago.
        if !self.shared.is_reachable() {
            return Err(ClusterError::Unavailable(
                "the node's agent could not reach it at its last pass".into(),
            ));
        }
        let mut records: Vec<ClusterSessionRecord> = self.shared.etcd.list("sessions/").await?;
        records.retain(|record| principal.admin || record.tenant == principal.tenant);
        records.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id)));
        let ready = self.ready_names().await?;
        let mut parts = Vec::new();
        let mut by_session: std::collections::HashMap<Uuid, Vec<PartRecord>> =
            std::collections::HashMap::new();
        if !records.is_empty() {
            parts = self.all_parts().await?;
        }
        for (id, part) in parts.into_iter().filter_map(|(id, part)| Some((id?, part))) {
            by_session.entry(id).or_default().push(part);
        }
        Ok(records
            .iter()
            .map(|record| {
                let parts = by_session.remove(&record.id).unwrap_or_default();
                view::session(record, parts, &ready)
            })
            .collect())
    }

    pub async fn start(&self, principal: &Principal, id: Uuid) -> Result<Session, ClusterError> {
        self.change(principal, id, "start", |record| {
            if !record.desired.can_start() {
                return Err(invalid(record.desired, "start"));
            }
            record.desired = Status::Running;
            record.runs += 1;
            record.started_at = Some(now_rfc3339());
            record.error = None;
            record.finished_reason = None;
            Ok(())
        })
        .await
    }

    pub async fn stop(&self, principal: &Principal, id: Uuid) -> Result<Session, ClusterError> {
        self.change(principal, id, "stop", |record| {
            if !record.desired.can_stop() {
                return Err(invalid(record.desired, "stop"));
            }
            record.desired = Status::Stopped;
            record.stopped_at = Some(now_rfc3339());
            Ok(())
        })
        .await
    }

    /// Deletes the session from etcd; every node deletes its part (events and all) — a lost
    /// node when it comes back, told by a tombstone kept 7 days. A part etcd does not know
    /// (an orphan a node kept) is deleted here.
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<(), ClusterError> {
        let stored = match self.visible(principal, id).await {
            Ok(stored) => stored,
            Err(ClusterError::Session(SessionError::NotFound(_))) => {
                return Ok(self.manager.delete(principal, id).await?);
            }
            Err(err) => return Err(err),
        };
        let tombstone = format!("deleted/{id}");
        let lease = super::etcd::bounded(|| {
            let mut client = self.shared.etcd.client();
            async move { client.lease_grant(TOMBSTONE_TTL_SECS, None).await }
        })
        .await?;
        self.shared
            .etcd
            .put(&tombstone, &stored.value.name, Some(lease.id()))
            .await?;
        self.shared.etcd.delete(&session_path(id), false).await?;
        let ready = self.ready_names().await?;
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        loop {
            let parts = self.parts(id).await?;
            let waiting = parts.iter().any(|part| ready.contains(&part.node));
            if !waiting || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(ACK_POLL).await;
        }
        let leftovers = [
            format!("parts/{id}/"),
            format!("launches/{id}/"),
            format!("budget/{id}"),
        ];
        for leftover in leftovers {
            self.shared.etcd.delete(&leftover, true).await?;
        }
        tracing::info!(session = %id, name = %stored.value.name, "cluster session deleted");
        Ok(())
    }

    /// The nodes holding a part of the session (a part's events live there), with where
    /// their API is, if `principal` may see the session.
    pub async fn event_sources(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<Vec<EventSource>, ClusterError> {
        self.visible(principal, id).await?;
        let members: Vec<NodeRecord> = self.shared.etcd.list("members/").await?;
        let ready = self.ready_names().await?;
        let mut sources: Vec<EventSource> = self
            .parts(id)
            .await?
            .into_iter()
            .filter(|part| part.status != super::records::PartStatus::Waiting)
            .map(|part| {
                let api = members
                    .iter()
                    .find(|node| node.name == part.node)
                    .and_then(|node| node.api.clone());
                EventSource {
                    ready: ready.contains(&part.node),
                    node: part.node,
                    api,
                }
            })
            .collect();
        sources.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(sources)
    }

    /// Applies `change` to the stored session (compare-and-swap, retried if another node
    /// changed it meanwhile), then waits for the ready nodes' parts to act on it.
    async fn change(
        &self,
        principal: &Principal,
        id: Uuid,
        action: &'static str,
        change: impl Fn(&mut ClusterSessionRecord) -> Result<(), ClusterError>,
    ) -> Result<Session, ClusterError> {
        for _ in 0..16 {
            let stored = self.visible(principal, id).await?;
            let ready = ready_nodes(&self.shared.etcd).await?;
            let mut record = stored.value.clone();
            // What the session is now (a running one whose parts all ended has ended).
            record.desired = view::status(&record, &self.parts(id).await?).0;
            change(&mut record)?;
            let placed_ready = record
                .placement
                .as_ref()
                .is_some_and(|node| ready.iter().any(|ready| &ready.name == node));
            if action == "start" && record.request.target.launch.is_some() && !placed_ready {
                // Each run is placed: where the last ran may be gone, or lack the image.
                record.lacking_image.clear();
                record.placement = Some(placement::choose(&self.shared, &record, &ready).await?);
            }
            record.generation += 1;
            record.updated_at = now_rfc3339();
            if self
                .shared
                .etcd
                .replace(&session_path(id), &record, stored.revision)
                .await?
            {
                tracing::info!(session = %id, action, generation = record.generation, "cluster session changed");
                return self.acknowledged(&record, &ready).await;
            }
        }
        Err(ClusterError::Conflict)
    }

    /// The session once every ready node that runs it has reported acting on `record`'s
    /// generation (or [`ACK_WAIT`] has passed).
    async fn acknowledged(
        &self,
        record: &ClusterSessionRecord,
        ready: &[NodeRecord],
    ) -> Result<Session, ClusterError> {
        let expected: Vec<&str> = ready
            .iter()
            .filter(|node| record.runs_on(node))
            .map(|node| node.name.as_str())
            .collect();
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        loop {
            let parts = self.parts(record.id).await?;
            let acted = expected.iter().all(|node| {
                parts
                    .iter()
                    .any(|part| part.node == *node && part.generation >= record.generation)
            });
            if acted || tokio::time::Instant::now() >= deadline {
                let ready = ready.iter().map(|node| node.name.clone()).collect();
                return Ok(view::session(record, parts, &ready));
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    /// The stored session, if `principal` may see it.
    async fn visible(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<super::etcd::Versioned<ClusterSessionRecord>, ClusterError> {
        match self
            .shared
            .etcd
            .get::<ClusterSessionRecord>(&session_path(id))
            .await?
        {
            Some(stored) if principal.admin || stored.value.tenant == principal.tenant => {
                Ok(stored)
            }
            _ => Err(SessionError::NotFound(id).into()),
        }
    }

    async fn parts(&self, id: Uuid) -> Result<Vec<PartRecord>, ClusterError> {
        self.shared.etcd.list(&format!("parts/{id}/")).await
    }

    /// Every part of every session, with its session's id.
    async fn all_parts(&self) -> Result<Vec<(Option<Uuid>, PartRecord)>, ClusterError> {
        self.shared.etcd.list_keyed("parts/").await.map(|parts| {
            parts
                .into_iter()
                .map(|(path, part)| {
                    let id = path
                        .strip_prefix("parts/")
                        .and_then(|rest| rest.split('/').next())
                        .and_then(|id| id.parse().ok());
                    (id, part)
                })
                .collect()
        })
    }

    async fn ready_names(&self) -> Result<HashSet<String>, ClusterError> {
        Ok(ready_nodes(&self.shared.etcd)
            .await?
            .into_iter()
            .map(|node| node.name)
            .collect())
    }
}

fn decoded<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ClusterError> {
    serde_json::from_value(value).map_err(|err| ClusterError::Corrupt(err.to_string()))
}

fn session_path(id: Uuid) -> String {
    format!("sessions/{id}")
}

fn invalid(current: Status, action: &'static str) -> ClusterError {
    SessionError::InvalidTransition { current, action }.into()
}
