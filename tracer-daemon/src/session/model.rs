//! The session resource as the API shows it, and its state machine.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::spec::{BackendChoice, Conditions, CreateSession, Limits, Target};

/// Where a session is in its life.
///
/// `created → running ⇄ stopped`; `running → finished` (TTL, max_events, targets gone) or
/// `failed` (with a reason). `finished` and `failed` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Stopped,
    Finished,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Created,
        Status::Running,
        Status::Stopped,
        Status::Finished,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Finished => "finished",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// Whether `start` is allowed from here.
    pub fn can_start(self) -> bool {
        matches!(self, Status::Created | Status::Stopped)
    }

    /// Whether `stop` is allowed from here.
    pub fn can_stop(self) -> bool {
        self == Status::Running
    }
}

/// A session's counters, over all its runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counters {
    /// Syscalls that passed every filter of the session (counted in the kernel).
    pub matched: u64,
    /// Events recorded in the session's event log.
    pub delivered: u64,
    /// Matched events not recorded: lost in the kernel (ring full), behind a slow consumer,
    /// or past `limits.max_events`. `delivered + dropped == matched`.
    pub dropped: u64,
    /// Events exported as OpenTelemetry spans (the collector took them).
    pub exported: u64,
    /// Spans that waited in the on-disk spool because the collector was slow or away (they
    /// are sent from there, in order, once it is back).
    pub spooled: u64,
    /// Spans that will never be exported: the spool was full. The events stay in the
    /// event log.
    pub export_failed: u64,
    /// Recorded events removed from the event log to keep it under its size cap (oldest
    /// first).
    pub evicted: u64,
    /// ftrace only: threads that joined a target cgroup from outside (`docker exec`, a write
    /// to `cgroup.procs`) and were traced only from when tracerd saw the join, or not at all
    /// if they exited first (ftrace cannot filter by cgroup; eBPF can, and has no such gap).
    #[serde(default)]
    pub late_joins: u64,
    /// Their untraced time after joining, summed, in microseconds.
    #[serde(default)]
    pub late_join_delay_us: u64,
    /// The longest of those, in microseconds.
    #[serde(default)]
    pub late_join_max_delay_us: u64,
}

impl std::ops::Add for Counters {
    type Output = Counters;

    fn add(self, other: Counters) -> Counters {
        Counters {
            matched: self.matched + other.matched,
            delivered: self.delivered + other.delivered,
            dropped: self.dropped + other.dropped,
            exported: self.exported + other.exported,
            spooled: self.spooled + other.spooled,
            export_failed: self.export_failed + other.export_failed,
            evicted: self.evicted + other.evicted,
            late_joins: self.late_joins + other.late_joins,
            late_join_delay_us: self.late_join_delay_us + other.late_join_delay_us,
            late_join_max_delay_us: self
                .late_join_max_delay_us
                .max(other.late_join_max_delay_us),
        }
    }
}

/// Why a running session records nothing now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NotRecording {
    /// `disk_full` (the event log's disk is full: events are counted as dropped until space
    /// returns, then recording resumes by itself), `write_failed` (another write error),
    /// `resuming` (tracerd restarted and has not resumed the session yet), or
    /// `runtime_unavailable` (the container runtime is away: containers it starts are not
    /// followed until it is back).
    pub reason: String,
    pub message: String,
    /// Since when (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// The containers a container session's run traces, and how its selector matched them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TracedContainers {
    pub matched_by: crate::containers::MatchedBy,
    pub containers: Vec<TracedContainer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TracedContainer {
    pub id: String,
    pub name: String,
    /// Its cgroup's id (what the kernel filters on).
    pub cgroup_id: u64,
}

impl TracedContainer {
    pub fn of(container: &crate::containers::Container) -> Self {
        TracedContainer {
            id: container.id.clone(),
            name: container.name.clone(),
            cgroup_id: container.cgroup_id,
        }
    }
}

/// Where a node's part of a cluster session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PartStatus {
    /// Nothing on the node matches the target (yet): it joins when a container that
    /// matches starts there.
    Waiting,
    Created,
    Running,
    Stopped,
    Finished,
    Failed,
    /// The node's lease expired: its last reported counters are shown.
    Lost,
}

impl PartStatus {
    pub fn of(status: Status) -> Self {
        match status {
            Status::Created => PartStatus::Created,
            Status::Running => PartStatus::Running,
            Status::Stopped => PartStatus::Stopped,
            Status::Finished => PartStatus::Finished,
            Status::Failed => PartStatus::Failed,
        }
    }

    /// Whether the part will not record again.
    pub fn is_final(self) -> bool {
        matches!(self, PartStatus::Finished | PartStatus::Failed)
    }
}

/// A node's part of a cluster session, as the node reports it (and the API shows it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PartRecord {
    pub node: String,
    pub status: PartStatus,
    /// The session generation the part has acted on.
    pub generation: u64,
    pub counters: Counters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traced: Option<TracedContainers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_recording: Option<NotRecording>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_in_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the node last reported it (RFC 3339).
    pub updated_at: String,
}

/// A tracing session, as `GET /v1/sessions/{id}` returns it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub name: String,
    pub tenant: String,
    pub target: Target,
    /// Syscall names recorded; absent for all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<Vec<String>>,
    pub conditions: Conditions,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The backend asked for.
    pub backend: BackendChoice,
    /// The backend in use in the current or last run, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_in_use: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_reason: Option<String>,
    pub limits: Limits,
    /// Where the session's spans go, as asked (absent: the daemon's default collector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::sink::export::ExportRequest>,
    /// Span export of the current run: its collector and how it is going.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_status: Option<crate::sink::export::ExportStatus>,
    /// For a running container session: the containers it traces now, and how its selector
    /// matched them (an exact name, then an ID prefix, wins over part of a name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traced: Option<TracedContainers>,
    pub status: Status,
    /// Present while a `running` session is not recording, with why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_recording: Option<NotRecording>,
    /// Why the session finished (`ttl`, `max_events`, `targets_gone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_reason: Option<String>,
    /// Why the session failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many times it has been started.
    pub runs: u32,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    pub counters: Counters,
    /// `cluster` for a session that runs on every node whose targets match (absent: this
    /// node only).
    #[serde(default, skip_serializing_if = "is_local")]
    pub scope: super::spec::Scope,
    /// A cluster session's nodes (as asked; absent for all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
    /// A cluster launch session's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// A cluster session's parts, one per node that runs it (or waits to); `counters` is
    /// their sum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<PartRecord>>,
}

fn is_local(scope: &super::spec::Scope) -> bool {
    *scope == super::spec::Scope::Local
}

/// A session as stored: the request as received plus everything that changes.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub status: Status,
    /// The create request, parsed from `request_text`.
    pub request: CreateSession,
    /// The create request exactly as received.
    pub request_text: String,
    pub duplicate_key: String,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    pub runs: u32,
    pub backend_in_use: Option<String>,
    pub backend_reason: Option<String>,
    pub finished_reason: Option<String>,
    pub error: Option<String>,
    pub counters: Counters,
    /// Created by a tenant (not an admin): it sees only containers its tenant owns.
    pub restricted: bool,
}

impl SessionRow {
    /// The resource, with `counters` in place of the stored ones when the session runs.
    pub fn to_resource(&self, counters: Option<Counters>) -> Session {
        Session {
            id: self.id,
            name: self.name.clone(),
            tenant: self.tenant.clone(),
            target: self.request.target.clone(),
            syscalls: self.request.syscalls.clone(),
            conditions: self.request.conditions.clone(),
            label: self.request.label.clone(),
            backend: self.request.backend,
            backend_in_use: self.backend_in_use.clone(),
            backend_reason: self.backend_reason.clone(),
            limits: self.request.limits.clone(),
            export: self.request.export.clone(),
            export_status: None,
            traced: None,
            status: self.status,
            not_recording: None,
            finished_reason: self.finished_reason.clone(),
            error: self.error.clone(),
            runs: self.runs,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            started_at: self.started_at.clone(),
            stopped_at: self.stopped_at.clone(),
            counters: counters.unwrap_or(self.counters),
            scope: self.request.scope,
            nodes: self.request.nodes.clone(),
            node_selector: self.request.node_selector.clone(),
            placement: None,
            parts: None,
        }
    }
}

/// The default name of a session: `<target>.<yyyymmddhhmm>`.
pub fn default_name(target: &Target, at: time::OffsetDateTime) -> String {
    format!(
        "{}.{:04}{:02}{:02}{:02}{:02}",
        target.short_name(),
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_created_and_stopped_sessions_start_and_only_running_ones_stop() {
        let startable: Vec<Status> = Status::ALL.into_iter().filter(|s| s.can_start()).collect();
        assert_eq!(startable, [Status::Created, Status::Stopped]);
        let stoppable: Vec<Status> = Status::ALL.into_iter().filter(|s| s.can_stop()).collect();
        assert_eq!(stoppable, [Status::Running]);
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
    }

    #[test]
    fn default_names_read_target_dot_minute() {
        let at = time::Date::from_calendar_date(2026, time::Month::November, 22)
            .unwrap()
            .with_hms(9, 5, 0)
            .unwrap()
            .assume_utc();
        assert_eq!(
            default_name(
                &Target {
                    cgroup: Some("/sys/fs/cgroup/web".into()),
                    ..Target::default()
                },
                at
            ),
            "web.202611220905"
        );
    }
}
