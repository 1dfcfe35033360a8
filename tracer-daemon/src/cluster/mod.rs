//! Cluster mode (`tracerd --etcd …`): many nodes, one API, coordinated through etcd.
//!
//! Every node registers itself under a lease ([`node`]). A session created with
//! `"scope": "cluster"` is stored in etcd ([`api`]); each node's agent ([`agent`]), which
//! keeps the sessions from a watch ([`watched`]), runs the node's part of it ([`part`]) — an
//! ordinary local session with the same id — when the target matches there, and reports the
//! part back; reads sum the parts ([`view`]); events are merged from every node's API
//! ([`peers`]). A launch runs on one node ([`placement`]); `max_events` is one budget for
//! all parts ([`budget`]) and the TTL one deadline ([`limits`]). Without `--etcd` none of
//! this exists and the daemon is a single node.
mod agent;
mod api;
mod budget;
mod error;
pub mod etcd;
mod limits;
pub mod node;
mod part;
pub mod peers;
mod placement;
pub mod records;
mod shared;
mod view;
mod watched;

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

pub use self::{error::ClusterError, shared::Shared};
use self::{etcd::Etcd, records::NodeRecord};
use crate::session::SessionManager;

/// This node's membership of the cluster.
pub struct Cluster {
    shared: Arc<Shared>,
    manager: Arc<SessionManager>,
    peers: peers::Peers,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// How a node joins: from the daemon's flags.
pub struct Membership {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// For `https://` endpoints.
    pub tls: etcd::EtcdTls,
    pub node: NodeRecord,
}

impl Cluster {
    /// Joins the cluster: registers this node (in the background: a node started while etcd
    /// is away registers when it answers). Its agent starts with [`Self::start_agent`].
    pub async fn join(
        membership: Membership,
        manager: Arc<SessionManager>,
    ) -> Result<Arc<Self>, ClusterError> {
        let etcd =
            Etcd::connect(&membership.endpoints, &membership.prefix, &membership.tls).await?;
        let shared = Arc::new(Shared::new(etcd, membership.node));
        let (stop, stopped) = watch::channel(false);
        let registration = tokio::spawn(node::keep_registered(
            shared.etcd.clone(),
            shared.node.clone(),
            stopped.clone(),
        ));
        tracing::info!(node = %shared.node.name, endpoints = ?membership.endpoints, "joining the cluster");
        Ok(Arc::new(Self {
            shared,
            manager,
            peers: peers::Peers::new(),
            stop,
            tasks: std::sync::Mutex::new(vec![registration]),
        }))
    }

    /// Before the sessions that were running resume: parts of cluster sessions that were
    /// stopped, ended or deleted while this node was away are not resumed, and the others
    /// take from their session's event budget. If etcd does not answer (within 3 s), they
    /// all resume as they were and the agent settles them once it does.
    pub async fn settle_parts_before_recovery(&self) {
        let sessions = match self
            .shared
            .etcd
            .list::<records::ClusterSessionRecord>("sessions/")
            .await
        {
            Ok(sessions) => sessions,
            Err(err) => {
                tracing::warn!(%err, "etcd does not answer: this node's parts resume as they were");
                return;
            }
        };
        let running: std::collections::HashSet<uuid::Uuid> = sessions
            .iter()
            .filter(|session| session.desired == crate::session::model::Status::Running)
            .map(|session| session.id)
            .collect();
        // Parts that resume take from their session's shared event budget from the start.
        for session in &sessions {
            if let Some(max) = session.request.limits.max_events {
                let budget = budget::EtcdBudget::new(self.shared.clone(), session.id, max);
                self.manager.set_budget(session.id, budget);
            }
        }
        match self
            .manager
            .stop_parts_before_recovery(|id| running.contains(&id))
            .await
        {
            Ok(0) => {}
            Ok(stopped) => tracing::info!(
                stopped,
                "parts of cluster sessions no longer running are not resumed"
            ),
            Err(err) => {
                tracing::warn!(%err, "could not settle this node's parts before resuming them");
            }
        }
    }

    /// Starts the agent that runs this node's parts; after the sessions that were running
    /// here have been resumed, so the two never race.
    pub fn start_agent(&self) {
        let agent = agent::Agent::new(self.shared.clone(), self.manager.clone());
        let task = tokio::spawn(agent.run(self.stop.subscribe()));
        crate::sync::lock(&self.tasks).push(task);
    }

    pub fn peers(&self) -> &peers::Peers {
        &self.peers
    }

    pub fn node_name(&self) -> &str {
        &self.shared.node.name
    }

    /// Every node that has registered, ready or lost.
    pub async fn nodes(&self) -> Result<Vec<node::NodeView>, ClusterError> {
        node::list_nodes(&self.shared.etcd).await
    }

    /// Leaves: the agent stops (parts stay as they are, to resume at the next start) and the
    /// lease is revoked, so other nodes see this one as lost at once.
    pub async fn leave(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *crate::sync::lock(&self.tasks));
        for mut task in tasks {
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                // Mid-pass for too long: it must not start anything while runs end.
                task.abort();
            }
        }
    }
}
