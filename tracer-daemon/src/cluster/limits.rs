//! A cluster session's own endings: its TTL (one deadline for every part, counted from its
//! start) and `max_events` (the sum of its parts). Any node's agent may end it; the change
//! is a compare-and-swap, so one does, and every node then stops its part.
//!
//! The parts themselves keep the event limits: each stops at `max_events_per_node` (see
//! [`super::part::part_request`]) and takes its events from the session's shared budget
//! ([`super::budget`]); the sum checked here ends the session, and every part with it, once
//! the budget is spent. The deadline is the session's alone, checked at every pass: parts
//! end within about a second of it (while etcd is unreachable, when it answers again).
use time::OffsetDateTime;

use super::{
    error::ClusterError,
    etcd::Versioned,
    records::{ClusterSessionRecord, PartRecord},
    shared::Shared,
};
use crate::{record::clock::now_rfc3339, session::model::Status};

/// Finishes the session if it runs past its deadline or its parts reached `max_events`;
/// only while it is still as `seen` (another node may have ended or changed it).
pub async fn end_if_due(
    shared: &Shared,
    seen: &Versioned<ClusterSessionRecord>,
) -> Result<(), ClusterError> {
    let session = &seen.value;
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
    let mut finished = session.clone();
    finished.desired = Status::Finished;
    finished.finished_reason = Some(reason.into());
    finished.stopped_at = Some(now_rfc3339());
    finished.generation += 1;
    finished.updated_at = now_rfc3339();
    let unchanged = vec![shared.etcd.unchanged(&path, seen.revision)];
    if shared.etcd.put_if_all(&path, &finished, unchanged).await? {
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
