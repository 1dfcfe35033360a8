//! Where a cluster launch runs: one node, named or taken in turn among the ready ones; placed
//! again if that node is lost before its container started, failed with `node_lost` after.
use super::{
    error::ClusterError,
    records::{ClusterSessionRecord, NodeRecord, PartRecord, PartStatus},
    shared::Shared,
};
use crate::session::model::Status;

/// The node a launch starts on: the one it names (which must be ready), else the next
/// ready node in turn (a counter in etcd, so nodes placing launches at once take turns).
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
        let taken = match &current {
            None => shared.etcd.create("launch-turn", &1u64).await?,
            Some(turn) => {
                shared
                    .etcd
                    .replace("launch-turn", &(turn.value + 1), turn.revision)
                    .await?
            }
        };
        if taken {
            return Ok(current.map_or(0, |turn| turn.value));
        }
    }
    Err(ClusterError::Conflict)
}

/// A running launch whose node is lost: placed again if its container had not started there
/// (its part never ran), failed with `node_lost` if it had. Returns the session as it is
/// now. Any node's agent may do this; the compare-and-swap lets one win.
pub async fn settle(
    shared: &Shared,
    session: &ClusterSessionRecord,
    ready: &[NodeRecord],
) -> Result<ClusterSessionRecord, ClusterError> {
    let placed = match &session.placement {
        Some(node)
            if session.desired == Status::Running && session.request.target.launch.is_some() =>
        {
            node
        }
        _ => return Ok(session.clone()),
    };
    if ready.iter().any(|node| &node.name == placed) {
        return Ok(session.clone());
    }
    let part: Option<PartRecord> = shared
        .etcd
        .get(&format!("parts/{}/{placed}", session.id))
        .await?
        .map(|part| part.value);
    let Some(stored) = shared
        .etcd
        .get::<ClusterSessionRecord>(&format!("sessions/{}", session.id))
        .await?
    else {
        return Ok(session.clone());
    };
    let mut changed = stored.value.clone();
    match part.map(|part| part.status) {
        Some(PartStatus::Finished | PartStatus::Failed) => return Ok(session.clone()),
        Some(PartStatus::Running | PartStatus::Stopped) => {
            changed.desired = Status::Failed;
            changed.error = Some(format!(
                "node_lost: node `{placed}` was lost after the launched container started there"
            ));
        }
        // Never started there: another node takes it.
        _ => match choose(shared, &changed, ready).await {
            Ok(node) => changed.placement = Some(node),
            Err(ClusterError::NoReadyNode | ClusterError::NodeNotReady(_)) => {
                return Ok(session.clone())
            }
            Err(err) => return Err(err),
        },
    }
    changed.generation += 1;
    changed.updated_at = crate::record::clock::now_rfc3339();
    if shared
        .etcd
        .replace(
            &format!("sessions/{}", session.id),
            &changed,
            stored.revision,
        )
        .await?
    {
        tracing::warn!(session = %session.id, lost = %placed, placement = ?changed.placement, error = ?changed.error, "a cluster launch's node was lost");
        return Ok(changed);
    }
    Ok(session.clone())
}
