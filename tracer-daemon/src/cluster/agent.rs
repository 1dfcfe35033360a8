//! The agent: makes this node's parts of cluster sessions what etcd says they should be
//! ([`super::part`]), and reports each part back.
//!
//! It keeps the sessions from a watch ([`WatchedSessions`]) and passes over them on every
//! change etcd reports, on every container change (a part waiting for a container joins),
//! and once a second (live counters). One session that cannot be acted on is logged and
//! skipped; an etcd outage only delays what the agent does.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use uuid::Uuid;

use super::{
    error::ClusterError,
    etcd::Versioned,
    limits,
    part::{Acting, Parts},
    placement,
    records::{ClusterSessionRecord, NodeRecord, PartRecord},
    shared::Shared,
    watched::WatchedSessions,
};
use crate::session::{model::Status, Principal, SessionError, SessionManager};

/// The agent's pass without any event: live counters are reported this often.
const PASS_EVERY: Duration = Duration::from_secs(1);

pub struct Agent {
    shared: Arc<Shared>,
    manager: Arc<SessionManager>,
    parts: Parts,
    /// What was last reported per session, so only changes are written.
    reported: HashMap<Uuid, PartRecord>,
    /// Sessions this agent has seen in etcd: a part whose session it saw go was deleted.
    seen: HashSet<Uuid>,
    /// Sessions whose last pass failed (logged once until they succeed).
    failing: HashSet<Uuid>,
    /// Local parts kept because etcd does not know their session (logged once).
    orphans: HashSet<Uuid>,
    warned: bool,
}

impl Agent {
    pub fn new(shared: Arc<Shared>, manager: Arc<SessionManager>) -> Self {
        Self {
            shared,
            parts: Parts::new(manager.clone()),
            manager,
            reported: HashMap::new(),
            seen: HashSet::new(),
            failing: HashSet::new(),
            orphans: HashSet::new(),
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
                self.shared.set_reachable(true);
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
        self.shared.set_reachable(false);
    }

    async fn reconcile(
        &mut self,
        container_changes: u64,
        watched: &WatchedSessions,
    ) -> Result<(), ClusterError> {
        let ready = super::node::ready_nodes(&self.shared.etcd).await?;
        let mut present = HashSet::new();
        for seen in watched.sessions() {
            present.insert(seen.value.id);
            self.seen.insert(seen.value.id);
            match self.reconcile_one(seen, &ready, container_changes).await {
                Ok(()) => {
                    self.failing.remove(&seen.value.id);
                }
                Err(err @ ClusterError::Unavailable(_)) => return Err(err),
                Err(err) => {
                    if self.failing.insert(seen.value.id) {
                        tracing::warn!(session = %seen.value.id, %err, "cannot act on this cluster session");
                    }
                }
            }
        }
        self.remove_deleted(&present).await
    }

    async fn reconcile_one(
        &mut self,
        seen: &Versioned<ClusterSessionRecord>,
        ready: &[NodeRecord],
        container_changes: u64,
    ) -> Result<(), ClusterError> {
        let session = &seen.value;
        placement::settle(&self.shared, seen, ready).await?;
        if !session.runs_on(&self.shared.node) {
            // Placed elsewhere, or no longer selected: a part still running here stops.
            if self.parts.is_running(session.id).await {
                self.parts.stop(session).await;
            }
            return Ok(());
        }
        if session.desired == Status::Created {
            return Ok(());
        }
        let acting = Acting {
            shared: &self.shared,
            seen,
            ready,
            container_changes,
        };
        let part = self.parts.act(&acting).await?;
        self.report(session, part).await?;
        limits::end_if_due(&self.shared, seen).await
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
    /// reports. Deleted means this agent saw the session go, or its delete left a tombstone:
    /// a part etcd simply does not know (a wrong `--etcd-prefix`, an emptied etcd) is kept.
    async fn remove_deleted(&mut self, present: &HashSet<Uuid>) -> Result<(), ClusterError> {
        for row in self.manager.store().cluster_parts() {
            if present.contains(&row.id) || !self.was_deleted(row.id).await? {
                continue;
            }
            match self
                .manager
                .delete(&Principal::cluster_agent(), row.id)
                .await
            {
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
        self.parts.retain(present);
        Ok(())
    }

    async fn was_deleted(&mut self, id: Uuid) -> Result<bool, ClusterError> {
        if self.seen.contains(&id)
            || self
                .shared
                .etcd
                .get::<serde_json::Value>(&format!("deleted/{id}"))
                .await?
                .is_some()
        {
            return Ok(true);
        }
        if self.orphans.insert(id) {
            tracing::warn!(session = %id, "a part of a cluster session etcd does not know: kept (is --etcd-prefix right?); DELETE /v1/sessions/{{id}} removes it");
        }
        Ok(false)
    }
}
