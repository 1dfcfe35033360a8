//! A cluster session's own endings: its TTL (one deadline for every part, counted from its
//! start) and `max_events` (the sum of its parts). Any node's agent may end it; the change
//! is a compare-and-swap, so one does, and every node then stops its part.
//!
//! Each part also carries the limits itself (see [`super::agent::part_request`]): it stops
//! at `max_events_per_node` exactly, and at the whole session's `max_events` on its own; the
//! sum over parts is checked at every agent pass (once a second), so parts recording on
//! several nodes at once may together pass `max_events` by what they record meanwhile.
use time::OffsetDateTime;

use super::{
    error::ClusterError,
    records::{ClusterSessionRecord, PartRecord},
    shared::Shared,
};
use crate::{record::clock::now_rfc3339, session::model::Status};

/// Finishes `session` if it runs past its deadline or its parts reached `max_events`.
pub async fn end_if_due(
    shared: &Shared,
    session: &ClusterSessionRecord,
) -> Result<(), ClusterError> {
    if session.desired != Status::Running {
        return Ok(());
    }
    let reason = if past_deadline(session) {
        "ttl"
    } else if reached_max_events(shared, session).await? {
        "max_events"
    } else {
        return Ok(());
    };
    let path = format!("sessions/{}", session.id);
    let Some(stored) = shared.etcd.get::<ClusterSessionRecord>(&path).await? else {
        return Ok(());
    };
    let mut finished = stored.value;
    if finished.desired != Status::Running {
        return Ok(());
    }
    finished.desired = Status::Finished;
    finished.finished_reason = Some(reason.into());
    finished.stopped_at = Some(now_rfc3339());
    finished.generation += 1;
    finished.updated_at = now_rfc3339();
    if shared
        .etcd
        .replace(&path, &finished, stored.revision)
        .await?
    {
        tracing::info!(session = %session.id, reason, "the cluster session finished");
    }
    Ok(())
}

fn past_deadline(session: &ClusterSessionRecord) -> bool {
    let Some(ttl) = session.request.validate().ok().and_then(|spec| spec.ttl) else {
        return false;
    };
    let Some(started) = session.started_at.as_deref().and_then(|at| {
        OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
    }) else {
        return false;
    };
    OffsetDateTime::now_utc() - started >= ttl
}

async fn reached_max_events(
    shared: &Shared,
    session: &ClusterSessionRecord,
) -> Result<bool, ClusterError> {
    let Some(limit) = session.request.limits.max_events else {
        return Ok(false);
    };
    let parts: Vec<PartRecord> = shared.etcd.list(&format!("parts/{}/", session.id)).await?;
    Ok(parts
        .iter()
        .map(|part| part.counters.delivered)
        .sum::<u64>()
        >= limit)
}
