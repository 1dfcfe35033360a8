//! What a user asks for when creating a session, and its validation.
//!
//! [`CreateSession`] is the request body as received (unknown fields are refused);
//! [`CreateSession::validate`] turns it into a [`SessionSpec`]: syscall names resolved to
//! numbers, durations parsed, names and labels checked. Every problem names the field.
mod capture;
mod field;
mod object;
mod scope;
mod target;
mod whole;

use std::{collections::BTreeSet, time::Duration};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use self::field::{invalid, parse_strict_ttl, parse_ttl, validate_name};
pub use self::{
    capture::{capture_bounds, Capture, DATA_SYSCALLS},
    field::{validate_tenant, InvalidField, MAX_NAME_LEN, TTL_PATTERN},
    scope::{validate_node_name, Scope, MAX_NODE_NAME_LEN},
    target::{Launch, Target, TargetKind},
};

/// The body of `POST /v1/sessions`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// A readable name; default `<target>.<yyyymmddhhmm>`. Letters, digits, `.`, `_`, `-`.
    #[serde(default)]
    pub name: Option<String>,
    /// What to trace.
    #[serde(deserialize_with = "object::only")]
    pub target: Target,
    /// Syscall names to record; absent for all.
    #[serde(default)]
    pub syscalls: Option<Vec<String>>,
    #[serde(default, deserialize_with = "object::only")]
    pub conditions: Conditions,
    /// A free string carried into every exported span, to find the session in a tracing
    /// backend.
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub backend: BackendChoice,
    #[serde(default, deserialize_with = "object::only")]
    pub limits: Limits,
    /// Where its spans go: `{"otlp": {"endpoint": …, "protocol": "grpc"}}`, or
    /// `{"otlp": null}` for none; absent, the daemon's default collector (if any).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::option"
    )]
    pub export: Option<crate::sink::export::ExportRequest>,
    /// The tenant the session belongs to; only an admin may set it (default: the caller's).
    #[serde(default)]
    pub tenant: Option<String>,
    /// What argument data the kernel reads (strings, buffers, socket addresses, argv) and
    /// how much of it is kept; absent for the defaults.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::option"
    )]
    pub capture: Option<Capture>,
    /// `local` (default): this node. `cluster`: every node of the cluster whose targets
    /// match (tracerd `--etcd`); each runs its part, the API sums them.
    #[serde(default, skip_serializing_if = "is_local")]
    pub scope: Scope,
    /// Cluster sessions only: run only on these nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// Cluster sessions only: run only on nodes carrying all these labels (`--node-label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
}

fn is_local(scope: &Scope) -> bool {
    *scope == Scope::Local
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Only these processes (tgids).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "self::whole::option_list"
    )]
    pub tgids: Option<Vec<u32>>,
    /// Only calls that fail (return value < 0).
    #[serde(default)]
    pub failed_only: bool,
}

/// Sizes a session's ftrace ring buffer may have, per CPU, in KiB (64 KiB to 1 GiB).
pub const FTRACE_BUFFER_KB: std::ops::RangeInclusive<u32> = 64..=1 << 20;

/// Which backend a session asks for.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Ebpf,
    Ftrace,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Stop after this long running (e.g. `"30s"`, `"5m"`); the session finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Stop after this many delivered events; the session finishes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "self::whole::option"
    )]
    pub max_events: Option<u64>,
    /// Ring-buffer size per CPU, in KiB, of the session's tracefs instance when it runs on
    /// the ftrace backend (default: the daemon's `--ftrace-buffer-kb`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "self::whole::option"
    )]
    pub ftrace_buffer_kb: Option<u32>,
    /// Cluster sessions only: stop each node's part after this many delivered events (that
    /// part finishes; `max_events` still bounds the whole session).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "self::whole::option"
    )]
    pub max_events_per_node: Option<u64>,
}

/// A validated request, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSpec {
    pub name: Option<String>,
    pub target: TargetKind,
    /// Syscall numbers, sorted; `None` for all.
    pub syscalls: Option<Vec<u32>>,
    pub conditions: Conditions,
    pub label: Option<String>,
    pub backend: BackendChoice,
    pub ttl: Option<Duration>,
    pub max_events: Option<u64>,
    pub ftrace_buffer_kb: Option<u32>,
    /// `None`: the daemon's default; `Some(None)`: no export; `Some(Some(_))`: its own.
    pub export: Option<Option<crate::sink::export::config::OtlpRequest>>,
    pub capture: crate::record::CaptureSettings,
}

impl SessionSpec {
    /// What makes two sessions duplicates of each other (same target and filter), as a
    /// canonical string.
    pub fn duplicate_key(&self) -> String {
        let mut tgids = self.conditions.tgids.clone();
        if let Some(tgids) = &mut tgids {
            tgids.sort_unstable();
            tgids.dedup();
        }
        let target = match &self.target {
            TargetKind::Cgroup(path) => serde_json::json!({ "cgroup": path }),
            TargetKind::Pids(pids) => {
                let mut pids = pids.clone();
                pids.sort_unstable();
                pids.dedup();
                serde_json::json!({ "pids": pids })
            }
            TargetKind::Containers(selector) => serde_json::json!({ "containers": selector }),
            // Every launch is a container of its own: never a duplicate.
            TargetKind::Launch(_) => serde_json::json!({ "launch": uuid::Uuid::new_v4() }),
        };
        serde_json::json!({
            "target": target,
            "syscalls": self.syscalls,
            "tgids": tgids,
            "failed_only": self.conditions.failed_only,
        })
        .to_string()
    }
}

pub const MAX_LABEL_LEN: usize = 256;
pub const MAX_LIST_LEN: usize = 4096;

impl CreateSession {
    pub fn validate(&self) -> Result<SessionSpec, InvalidField> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        let target = self.target.kind()?;
        self.check_target(&target)?;
        let syscalls = match &self.syscalls {
            None => None,
            Some(names) => Some(resolve_syscalls(names)?),
        };
        self.check_conditions()?;
        if let Some(label) = &self.label {
            check_label(label)?;
        }
        let ttl = self.ttl(&target)?;
        self.check_limits()?;
        self.check_scope()?;
        if let Some(tenant) = &self.tenant {
            validate_tenant(tenant)?;
        }
        let capture = self.capture.clone().unwrap_or_default().validate()?;
        let export = self.export.as_ref().and_then(|export| export.otlp.clone());
        if let Some(Some(otlp)) = &export {
            otlp.to_config(None)
                .map_err(|err| invalid(err.field, err.message))?;
        }
        Ok(SessionSpec {
            name: self.name.clone(),
            target,
            syscalls,
            conditions: self.conditions.clone(),
            label: self.label.clone(),
            backend: self.backend,
            ttl,
            max_events: self.limits.max_events,
            ftrace_buffer_kb: self.limits.ftrace_buffer_kb,
            export,
            capture,
        })
    }

    /// What a new request must meet besides [`Self::validate`]: durations in the one form
    /// the API documents (stored requests may hold an older, freer one).
    pub fn check_new(&self) -> Result<(), InvalidField> {
        if let Some(ttl) = &self.limits.ttl {
            parse_strict_ttl("limits.ttl", ttl)?;
        }
        if let Some(ttl) = self
            .target
            .launch
            .as_ref()
            .and_then(|launch| launch.ttl.as_ref())
        {
            parse_strict_ttl("target.launch.ttl", ttl)?;
        }
        Ok(())
    }

    fn check_target(&self, target: &TargetKind) -> Result<(), InvalidField> {
        match target {
            TargetKind::Cgroup(path) => {
                if !path.starts_with('/') {
                    return Err(invalid("target.cgroup", "must be an absolute path"));
                }
                if path.split('/').any(|part| part == "..") {
                    return Err(invalid("target.cgroup", "must not contain `..`"));
                }
            }
            TargetKind::Pids(pids) => {
                if pids.is_empty() {
                    return Err(invalid("target.pids", "must name at least one pid"));
                }
                if pids.len() > MAX_LIST_LEN {
                    return Err(invalid(
                        "target.pids",
                        format!("at most {MAX_LIST_LEN} pids"),
                    ));
                }
                if pids.contains(&0) {
                    return Err(invalid("target.pids", "0 is not a process id"));
                }
                if self.conditions.tgids.is_some() {
                    return Err(invalid(
                        "conditions.tgids",
                        "a pids target already selects processes; give one or the other",
                    ));
                }
            }
            TargetKind::Containers(_) | TargetKind::Launch(_) => {}
        }
        Ok(())
    }

    fn check_conditions(&self) -> Result<(), InvalidField> {
        let Some(tgids) = &self.conditions.tgids else {
            return Ok(());
        };
        if tgids.is_empty() {
            return Err(invalid(
                "conditions.tgids",
                "must name at least one tgid (or be left out)",
            ));
        }
        if tgids.len() > MAX_LIST_LEN {
            return Err(invalid(
                "conditions.tgids",
                format!("at most {MAX_LIST_LEN} tgids"),
            ));
        }
        Ok(())
    }

    /// `limits.ttl`; a launched container's TTL ends the session too, and the shorter wins.
    fn ttl(&self, target: &TargetKind) -> Result<Option<Duration>, InvalidField> {
        let mut ttl = self
            .limits
            .ttl
            .as_deref()
            .map(|text| parse_ttl("limits.ttl", text))
            .transpose()?;
        if let TargetKind::Launch(Launch {
            ttl: Some(text), ..
        }) = target
        {
            let launch_ttl = parse_ttl("target.launch.ttl", text)?;
            ttl = Some(ttl.map_or(launch_ttl, |ttl| ttl.min(launch_ttl)));
        }
        Ok(ttl)
    }

    fn check_limits(&self) -> Result<(), InvalidField> {
        if self.limits.max_events == Some(0) {
            return Err(invalid("limits.max_events", "must be at least 1"));
        }
        if let Some(kb) = self.limits.ftrace_buffer_kb {
            if !FTRACE_BUFFER_KB.contains(&kb) {
                return Err(invalid(
                    "limits.ftrace_buffer_kb",
                    format!(
                        "must be from {} to {} (KiB per CPU)",
                        FTRACE_BUFFER_KB.start(),
                        FTRACE_BUFFER_KB.end()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_label(label: &str) -> Result<(), InvalidField> {
    if label.chars().count() > MAX_LABEL_LEN {
        return Err(invalid(
            "label",
            format!("at most {MAX_LABEL_LEN} characters"),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(invalid("label", "must not contain control characters"));
    }
    Ok(())
}

/// Syscall names → sorted, deduplicated numbers on this architecture.
fn resolve_syscalls(names: &[String]) -> Result<Vec<u32>, InvalidField> {
    if names.is_empty() {
        return Err(invalid(
            "syscalls",
            "must name at least one syscall (or be left out for all)",
        ));
    }
    if names.len() > MAX_LIST_LEN {
        return Err(invalid("syscalls", format!("at most {MAX_LIST_LEN} names")));
    }
    let mut numbers = BTreeSet::new();
    for name in names {
        let sysno: syscalls::Sysno = name.parse().map_err(|_| {
            invalid(
                "syscalls",
                format!("unknown syscall `{name}` on this architecture"),
            )
        })?;
        numbers.insert(sysno.id() as u32);
    }
    Ok(numbers.into_iter().collect())
}

#[cfg(test)]
mod tests;
