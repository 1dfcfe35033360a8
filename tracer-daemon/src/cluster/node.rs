//! This node in the cluster: its registration under an etcd lease, kept alive while the
//! daemon runs and revoked when it stops; and the list of nodes, ready or lost.
use std::{collections::BTreeSet, time::Duration};

use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use super::{
    error::ClusterError,
    etcd::{bounded, Etcd},
    records::NodeRecord,
};

/// A node's lease lives this long without a keep-alive: a node killed or cut off is `lost`
/// this long after its last keep-alive (the API promises within 15 s).
pub const LEASE_TTL_SECS: i64 = 6;
/// Keep-alives go this often, so two can be lost before the lease expires.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(2);

/// A node as `GET /v1/nodes` shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct NodeView {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// `ready` (its lease is alive) or `lost` (it stopped or was cut off: its lease expired).
    pub status: &'static str,
}

/// Every node that has registered, by name.
pub async fn list_nodes(etcd: &Etcd) -> Result<Vec<NodeView>, ClusterError> {
    let live: BTreeSet<String> = etcd
        .list::<NodeRecord>("nodes/")
        .await?
        .into_iter()
        .map(|node| node.name)
        .collect();
    let mut nodes: Vec<NodeView> = etcd
        .list::<NodeRecord>("members/")
        .await?
        .into_iter()
        .map(|record| NodeView {
            status: if live.contains(&record.name) {
                "ready"
            } else {
                "lost"
            },
            record,
        })
        .collect();
    nodes.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    Ok(nodes)
}

/// The names of the nodes whose lease is alive.
pub async fn ready_nodes(etcd: &Etcd) -> Result<Vec<NodeRecord>, ClusterError> {
    etcd.list("nodes/").await
}

/// Keeps `node` registered until `stop` says so, then revokes its lease (its `nodes/` key
/// goes at once; `members/` keeps it listed, as lost). While etcd is away it retries every
/// keep-alive period, registering anew (a new lease) once etcd answers.
pub async fn keep_registered(etcd: Etcd, node: NodeRecord, mut stop: watch::Receiver<bool>) {
    let mut lease = None;
    let mut warned = false;
    loop {
        let outcome = match lease {
            None => register(&etcd, &node).await.map(Some),
            Some(id) => keep_alive(&etcd, &node.name, id).await,
        };
        match outcome {
            Ok(now) => {
                if warned {
                    tracing::info!(node = %node.name, "registered in etcd again");
                }
                warned = false;
                lease = now;
            }
            Err(err) => {
                if !warned {
                    tracing::warn!(node = %node.name, %err, "cannot keep this node registered in etcd; retrying");
                }
                warned = true;
                // The lease may be gone (it expired while this node was cut off or frozen):
                // register anew; an old lease still alive expires by itself.
                lease = None;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(if lease.is_some() { KEEP_ALIVE_EVERY } else { Duration::from_millis(500) }) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(id) = lease {
        if let Err(err) = bounded(|| {
            let mut client = etcd.client();
            async move { client.lease_revoke(id).await }
        })
        .await
        {
            tracing::warn!(node = %node.name, %err, "could not revoke this node's lease; it expires by itself");
        }
    }
}

async fn register(etcd: &Etcd, node: &NodeRecord) -> Result<i64, ClusterError> {
    let lease = bounded(|| {
        let mut client = etcd.client();
        async move { client.lease_grant(LEASE_TTL_SECS, None).await }
    })
    .await?
    .id();
    etcd.put(&format!("members/{}", node.name), node, None)
        .await?;
    etcd.put(&format!("nodes/{}", node.name), node, Some(lease))
        .await?;
    tracing::info!(node = %node.name, lease, "registered in etcd");
    Ok(lease)
}

/// One keep-alive; `None` when the lease has expired or the node's key is no longer under
/// it (deleted, or another node registered under the same name): it registers again.
async fn keep_alive(etcd: &Etcd, name: &str, lease: i64) -> Result<Option<i64>, ClusterError> {
    let (mut keeper, mut answers) = bounded(|| {
        let mut client = etcd.client();
        async move { client.lease_keep_alive(lease).await }
    })
    .await?;
    keeper
        .keep_alive()
        .await
        .map_err(|err| ClusterError::Unavailable(err.to_string()))?;
    let answer = tokio::time::timeout(KEEP_ALIVE_EVERY, answers.message())
        .await
        .map_err(|_| ClusterError::Unavailable("no keep-alive answer".into()))?
        .map_err(|err| ClusterError::Unavailable(err.to_string()))?;
    if answer.is_none_or(|answer| answer.ttl() <= 0) {
        return Ok(None);
    }
    match etcd.lease_of(&format!("nodes/{name}")).await? {
        Some(held) if held == lease => Ok(Some(lease)),
        Some(_) => {
            tracing::warn!(node = %name, "another tracerd registered under this node's name: give every node its own --node");
            Ok(None)
        }
        None => Ok(None),
    }
}
