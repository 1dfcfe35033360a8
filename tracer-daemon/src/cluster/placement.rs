//! Where a cluster launch runs: one node, named or taken in turn among the ready ones.
//!
//! A launch must never run twice. The node it is placed on claims the run in etcd
//! (`launches/<id>/<run>`) before it starts the container, and only while the session is
//! still as it saw it (placed on it); another node places the launch elsewhere only while
//! no claim exists, in the same transaction. So a placed node that is lost before it
//! claimed is replaced, and one lost after fails the session with `node_lost`. A node
//! without the image gives the launch to the next node in turn, until none is left.
use super::{
    error::ClusterError,
    etcd::Versioned,
    records::{ClusterSessionRecord, NodeRecord},
    shared::Shared,
};
use crate::{record::clock::now_rfc3339, session::model::Status};

/// The node a launch starts on: the one it names (which must be ready), else the next
/// ready node in turn (a counter in etcd, so nodes placing launches at once take turns)
/// among those that match its selector and are not known to lack its image.
pub async fn choose(
    shared: &Shared,
    session: &ClusterSessionRecord,
    ready: &[NodeRecord],
) -> Result<String, ClusterError> {
    if let Some(node) = session
        .request
        .nodes
        .as_ref()
        .and_then(|nodes| nodes.first())
    {
        if !ready.iter().any(|ready| &ready.name == node) {
            return Err(ClusterError::NodeNotReady(node.clone()));
        }
        return Ok(node.clone());
    }
    let mut candidates: Vec<&str> = ready
        .iter()
        .filter(|node| {
            session
                .request
                .node_selector
                .as_ref()
                .is_none_or(|selector| {
                    selector
                        .iter()
                        .all(|(key, value)| node.labels.get(key) == Some(value))
                })
        })
        .filter(|node| !session.lacking_image.contains(&node.name))
        .map(|node| node.name.as_str())
        .collect();
    candidates.sort_unstable();
    if candidates.is_empty() {
        return Err(ClusterError::NoReadyNode);
    }
    let turn = next_turn(shared).await?;
    Ok(candidates[(turn % candidates.len() as u64) as usize].to_owned())
}

/// Takes the next number of the launch counter.
async fn next_turn(shared: &Shared) -> Result<u64, ClusterError> {
    for _ in 0..16 {
        let current = shared.etcd.get::<u64>("launch-turn").await?;
        let next = current.as_ref().map_or(0, |turn| turn.value) + 1;
        if shared
            .etcd
            .swap_counter("launch-turn", current.clone(), next)
            .await?
        {
            return Ok(next - 1);
        }
    }
    Err(ClusterError::Conflict)
}

fn claim_path(session: &ClusterSessionRecord) -> String {
    format!("launches/{}/{}", session.id, session.runs)
}

/// This node claims the launch's current run before starting its container: only while
/// the session is as `seen` (placed here) and nobody claimed it. Whether it may start.
pub async fn claim(
    shared: &Shared,
    seen: &Versioned<ClusterSessionRecord>,
) -> Result<bool, ClusterError> {
    let etcd = &shared.etcd;
    let claim = claim_path(&seen.value);
    let session = format!("sessions/{}", seen.value.id);
    let conditions = vec![etcd.unchanged(&session, seen.revision), etcd.absent(&claim)];
    if etcd
        .put_if_all(&claim, &shared.node.name, conditions)
        .await?
    {
        return Ok(true);
    }
    // Claimed already: by this node (a start that is being retried) or another.
    Ok(etcd
        .get::<String>(&claim)
        .await?
        .is_some_and(|claimed| claimed.value == shared.node.name))
}

/// This node lacks the launch's image: the launch goes to the next node in turn (or fails
/// when no node is left), unless the session changed meanwhile.
pub async fn lacks_image(
    shared: &Shared,
    seen: &Versioned<ClusterSessionRecord>,
    ready: &[NodeRecord],
    why: &str,
) -> Result<(), ClusterError> {
    let mut changed = seen.value.clone();
    changed.lacking_image.push(shared.node.name.clone());
    match choose(shared, &changed, ready).await {
        Ok(node) => changed.placement = Some(node),
        Err(ClusterError::NoReadyNode | ClusterError::NodeNotReady(_)) => {
            changed.desired = Status::Failed;
            changed.error = Some(format!("no ready node can launch it: {why}"));
        }
        Err(err) => return Err(err),
    }
    replace_unclaimed(shared, seen, changed).await.map(|_| ())
}

/// A running launch whose node is lost: placed on another ready node if it never claimed the
/// run, failed with `node_lost` if it did. Any node's agent may do this; the transaction lets
/// only one, and only while the session is as `seen`.
pub async fn settle(
    shared: &Shared,
    seen: &Versioned<ClusterSessionRecord>,
    ready: &[NodeRecord],
) -> Result<(), ClusterError> {
    let session = &seen.value;
    let placed = match &session.placement {
        Some(node)
            if session.desired == Status::Running && session.request.target.launch.is_some() =>
        {
            node
        }
        _ => return Ok(()),
    };
    if ready.iter().any(|node| &node.name == placed) {
        return Ok(());
    }
    let mut changed = session.clone();
    let claimed = shared.etcd.get::<String>(&claim_path(session)).await?;
    if claimed.is_some() {
        changed.desired = Status::Failed;
        changed.error = Some(format!(
            "node_lost: node `{placed}` was lost after it started the launched container"
        ));
        let path = format!("sessions/{}", session.id);
        let unchanged = vec![shared.etcd.unchanged(&path, seen.revision)];
        bump(&mut changed);
        if shared.etcd.put_if_all(&path, &changed, unchanged).await? {
            tracing::warn!(session = %session.id, lost = %placed, "a cluster launch's node was lost after it started");
        }
        return Ok(());
    }
    match choose(shared, &changed, ready).await {
        Ok(node) => changed.placement = Some(node),
        // Nowhere to go now: it waits for a node.
        Err(ClusterError::NoReadyNode | ClusterError::NodeNotReady(_)) => return Ok(()),
        Err(err) => return Err(err),
    }
    if replace_unclaimed(shared, seen, changed.clone()).await? {
        tracing::warn!(session = %session.id, lost = %placed, placement = ?changed.placement, "a cluster launch moved off a lost node");
    }
    Ok(())
}

/// Writes `changed` over the session if it is still as `seen` and its run is unclaimed.
async fn replace_unclaimed(
    shared: &Shared,
    seen: &Versioned<ClusterSessionRecord>,
    mut changed: ClusterSessionRecord,
) -> Result<bool, ClusterError> {
    let etcd = &shared.etcd;
    let path = format!("sessions/{}", seen.value.id);
    let conditions = vec![
        etcd.unchanged(&path, seen.revision),
        etcd.absent(&claim_path(&seen.value)),
    ];
    bump(&mut changed);
    etcd.put_if_all(&path, &changed, conditions).await
}

fn bump(session: &mut ClusterSessionRecord) {
    session.generation += 1;
    session.updated_at = now_rfc3339();
}
