//! A cluster session as the API shows it: one status and the sum of its parts' counters,
//! with every part (a lost node's with its last reported counters).
use std::collections::HashSet;

use super::records::{ClusterSessionRecord, PartRecord, PartStatus};
use crate::session::{
    model::{Counters, Session, Status},
    spec::Scope,
};

/// The resource of `record` with its `parts`; `ready` are the nodes whose lease is alive.
pub fn session(
    record: &ClusterSessionRecord,
    mut parts: Vec<PartRecord>,
    ready: &HashSet<String>,
) -> Session {
    for part in &mut parts {
        if !ready.contains(&part.node) && !part.status.is_final() {
            part.status = PartStatus::Lost;
        }
    }
    parts.sort_by(|a, b| a.node.cmp(&b.node));
    let counters = parts
        .iter()
        .fold(Counters::default(), |sum, part| sum + part.counters);
    let (status, finished_reason, error) = status(record, &parts);
    let request = &record.request;
    Session {
        id: record.id,
        name: record.name.clone(),
        tenant: record.tenant.clone(),
        target: request.target.clone(),
        syscalls: request.syscalls.clone(),
        conditions: request.conditions.clone(),
        label: request.label.clone(),
        backend: request.backend,
        backend_in_use: common(parts.iter().map(|part| part.backend_in_use.clone())),
        backend_reason: None,
        limits: request.limits.clone(),
        export: request.export.clone(),
        export_status: None,
        traced: None,
        status,
        not_recording: None,
        finished_reason,
        error,
        runs: record.runs,
        created_at: record.created_at.clone(),
        updated_at: record.updated_at.clone(),
        started_at: record.started_at.clone(),
        stopped_at: record.stopped_at.clone(),
        counters,
        scope: Scope::Cluster,
        nodes: request.nodes.clone(),
        node_selector: request.node_selector.clone(),
        placement: record.placement.clone(),
        parts: Some(parts),
    }
}

/// The session's one status: what was asked, except that a running session whose every
/// part has ended has ended too (`finished` if any part finished, else `failed`).
pub fn status(
    record: &ClusterSessionRecord,
    parts: &[PartRecord],
) -> (Status, Option<String>, Option<String>) {
    match record.desired {
        Status::Running if !parts.is_empty() && parts.iter().all(|p| p.status.is_final()) => {
            let finished: Vec<&PartRecord> = parts
                .iter()
                .filter(|part| part.status == PartStatus::Finished)
                .collect();
            if finished.is_empty() {
                let error = parts.iter().find_map(|part| {
                    part.error
                        .as_ref()
                        .map(|error| format!("{}: {error}", part.node))
                });
                (Status::Failed, None, error)
            } else {
                let reason = common(finished.iter().map(|part| part.finished_reason.clone()));
                (Status::Finished, reason, None)
            }
        }
        desired => (
            desired,
            record.finished_reason.clone(),
            record.error.clone(),
        ),
    }
}

/// The value every part agrees on, if they do.
fn common(mut values: impl Iterator<Item = Option<String>>) -> Option<String> {
    let first = values.next().flatten()?;
    values
        .all(|value| value.as_deref() == Some(first.as_str()))
        .then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::model::Counters;

    fn record(desired: Status) -> ClusterSessionRecord {
        let mut record = super::super::records::tests::session(
            serde_json::json!({"scope": "cluster", "target": {"container": "web"}}),
            None,
        );
        record.desired = desired;
        record.generation = 2;
        record
    }

    fn part(node: &str, status: PartStatus, delivered: u64) -> PartRecord {
        PartRecord {
            node: node.into(),
            status,
            generation: 2,
            counters: Counters {
                matched: delivered + 1,
                delivered,
                dropped: 1,
                ..Counters::default()
            },
            traced: None,
            not_recording: None,
            backend_in_use: Some("ebpf".into()),
            finished_reason: Some("targets_gone".into()),
            error: None,
            updated_at: String::new(),
        }
    }

    #[test]
    fn counters_are_the_parts_sum_and_a_lost_node_keeps_its_last() {
        let ready = HashSet::from(["a".to_owned()]);
        let parts = vec![
            part("b", PartStatus::Running, 30),
            part("a", PartStatus::Running, 12),
        ];
        let session = session(&record(Status::Running), parts, &ready);
        assert_eq!(session.status, Status::Running);
        assert_eq!(session.counters.delivered, 42);
        assert_eq!(session.counters.matched, 44);
        assert_eq!(session.counters.dropped, 2);
        let parts = session.parts.unwrap();
        assert_eq!(parts[0].node, "a");
        assert_eq!(parts[1].status, PartStatus::Lost);
        assert_eq!(session.backend_in_use.as_deref(), Some("ebpf"));
    }

    #[test]
    fn a_running_session_ends_when_every_part_has() {
        let ready = HashSet::from(["a".to_owned(), "b".to_owned()]);
        let some = vec![
            part("a", PartStatus::Finished, 1),
            part("b", PartStatus::Running, 1),
        ];
        assert_eq!(
            session(&record(Status::Running), some, &ready).status,
            Status::Running
        );
        let all = vec![
            part("a", PartStatus::Finished, 1),
            part("b", PartStatus::Finished, 1),
        ];
        let ended = session(&record(Status::Running), all, &ready);
        assert_eq!(ended.status, Status::Finished);
        assert_eq!(ended.finished_reason.as_deref(), Some("targets_gone"));
        let mut failed = part("b", PartStatus::Failed, 0);
        failed.error = Some("no such image".into());
        let ended = session(&record(Status::Running), vec![failed], &ready);
        assert_eq!(ended.status, Status::Failed);
        assert_eq!(ended.error.as_deref(), Some("b: no such image"));
        let stopped = vec![part("a", PartStatus::Stopped, 1)];
        assert_eq!(
            session(&record(Status::Stopped), stopped, &ready).status,
            Status::Stopped
        );
    }
}
