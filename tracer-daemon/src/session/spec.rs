//! What a user asks for when creating a session, and its validation.
//!
//! [`CreateSession`] is the request body as received (unknown fields are refused);
//! [`CreateSession::validate`] turns it into a [`SessionSpec`]: syscall names resolved to
//! numbers, durations parsed, names and labels checked. Every problem names the field.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of `POST /v1/sessions`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// A readable name; default `<target>.<yyyymmddhhmm>`. Letters, digits, `.`, `_`, `-`.
    #[serde(default)]
    pub name: Option<String>,
    /// What to trace.
    pub target: Target,
    /// Syscall names to record; absent for all.
    #[serde(default)]
    pub syscalls: Option<Vec<String>>,
    #[serde(default)]
    pub conditions: Conditions,
    /// A free string carried into every exported span, to find the session in a tracing
    /// backend.
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub backend: BackendChoice,
    #[serde(default)]
    pub limits: Limits,
    /// Where its spans go: `{"otlp": {"endpoint": …, "protocol": "grpc"}}`, or
    /// `{"otlp": null}` for none; absent, the daemon's default collector (if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::export::ExportRequest>,
    /// The tenant the session belongs to; only an admin may set it (default: the caller's).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// What a session traces: one of a cgroup, pids, or containers (by name, part of a name,
/// ID prefix, labels, or a name and labels together).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A cgroup v2 directory (absolute path under the cgroup2 mount), for containers of any
    /// runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Processes by pid (their threads; not the children they start later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<u32>>,
    /// Running Docker containers by exact name, else ID prefix, else part of a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Running Docker containers carrying all these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// A container tracerd creates and starts itself, traced from its first syscall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
}

/// A container to launch: `{"image": "…", "command": […], "env": {…}, "ttl": "30s"}`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// A local image.
    pub image: String,
    /// The command (the image's own when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the container (and finish the session) after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// A validated target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Cgroup(String),
    Pids(Vec<u32>),
    Containers(ContainerSelector),
    Launch(Launch),
}

/// Which running containers a session traces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerSelector {
    /// Exact name, else ID prefix, else part of a name.
    pub container: Option<String>,
    /// Labels a container must all carry.
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Display for ContainerSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(container) = &self.container {
            parts.push(format!("container `{container}`"));
        }
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!("labels {}", labels.join(",")));
        }
        f.write_str(&parts.join(" with "))
    }
}

impl Target {
    /// A short form for default session names: the cgroup's last component, `pids-<first>`,
    /// the container selector, or the first label's value.
    pub fn short_name(&self) -> String {
        let name = if let Some(path) = &self.cgroup {
            path.trim_end_matches('/')
                .rsplit('/')
                .next()
                .filter(|last| !last.is_empty())
                .unwrap_or("root")
                .to_owned()
        } else if let Some(pids) = &self.pids {
            format!("pids-{}", pids.first().copied().unwrap_or(0))
        } else if let Some(container) = &self.container {
            container.clone()
        } else if let Some(launch) = &self.launch {
            // `registry/name:tag` → `name`.
            let image = launch.image.rsplit('/').next().unwrap_or(&launch.image);
            image.split([':', '@']).next().unwrap_or(image).to_owned()
        } else {
            self.labels
                .as_ref()
                .and_then(|labels| labels.values().next().cloned())
                .unwrap_or_else(|| "containers".into())
        };
        // Names allow only letters, digits, `.`, `_` and `-`.
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }

    fn kind(&self) -> Result<TargetKind, InvalidField> {
        let containers = self.container.is_some() || self.labels.is_some();
        let kinds = [
            self.cgroup.is_some(),
            self.pids.is_some(),
            containers,
            self.launch.is_some(),
        ];
        match kinds.iter().filter(|&&given| given).count() {
            0 => return Err(invalid("target", "give one of `cgroup`, `pids`, `container`, `labels` or `launch`")),
            1 => {}
            _ => {
                return Err(invalid(
                    "target",
                    "give one kind of target: `cgroup`, `pids`, `launch`, or containers (`container` and/or `labels`)",
                ))
            }
        }
        if let Some(launch) = &self.launch {
            if launch.image.is_empty() || launch.image.len() > 256 {
                return Err(invalid(
                    "target.launch.image",
                    "must be 1 to 256 characters",
                ));
            }
            if launch.command.len() > 256 {
                return Err(invalid("target.launch.command", "at most 256 arguments"));
            }
            if launch
                .env
                .keys()
                .any(|key| key.is_empty() || key.contains('='))
            {
                return Err(invalid(
                    "target.launch.env",
                    "names must be non-empty and without `=`",
                ));
            }
            if let Some(ttl) = &launch.ttl {
                parse_ttl("target.launch.ttl", ttl)?;
            }
            return Ok(TargetKind::Launch(launch.clone()));
        }
        if let Some(path) = &self.cgroup {
            return Ok(TargetKind::Cgroup(path.clone()));
        }
        if let Some(pids) = &self.pids {
            return Ok(TargetKind::Pids(pids.clone()));
        }
        if let Some(container) = &self.container {
            if container.is_empty() || container.len() > 128 {
                return Err(invalid("target.container", "must be 1 to 128 characters"));
            }
        }
        let labels = self.labels.clone().unwrap_or_default();
        if self.labels.is_some() && labels.is_empty() {
            return Err(invalid(
                "target.labels",
                "must name at least one label (or be left out)",
            ));
        }
        Ok(TargetKind::Containers(ContainerSelector {
            container: self.container.clone(),
            labels,
        }))
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Only these processes (tgids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u64>,
    /// Ring-buffer size per CPU, in KiB, of the session's tracefs instance when it runs on
    /// the ftrace backend (default: the daemon's `--ftrace-buffer-kb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftrace_buffer_kb: Option<u32>,
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
    pub export: Option<Option<crate::export::config::OtlpRequest>>,
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

/// A request that cannot be accepted, naming the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        invalid(field, message)
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        message: message.into(),
    }
}

const MAX_NAME_LEN: usize = 128;
const MAX_LABEL_LEN: usize = 256;
const MAX_LIST_LEN: usize = 4096;
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl CreateSession {
    pub fn validate(&self) -> Result<SessionSpec, InvalidField> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        let target = self.target.kind()?;
        match &target {
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
        let syscalls = match &self.syscalls {
            None => None,
            Some(names) => Some(resolve_syscalls(names)?),
        };
        if let Some(tgids) = &self.conditions.tgids {
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
        }
        if let Some(label) = &self.label {
            if label.chars().count() > MAX_LABEL_LEN {
                return Err(invalid(
                    "label",
                    format!("at most {MAX_LABEL_LEN} characters"),
                ));
            }
            if label.chars().any(char::is_control) {
                return Err(invalid("label", "must not contain control characters"));
            }
        }
        let mut ttl = self
            .limits
            .ttl
            .as_deref()
            .map(|text| parse_ttl("limits.ttl", text))
            .transpose()?;
        // A launched container's TTL ends the session too; the shorter one wins.
        if let TargetKind::Launch(Launch {
            ttl: Some(text), ..
        }) = &target
        {
            let launch_ttl = parse_ttl("target.launch.ttl", text)?;
            ttl = Some(ttl.map_or(launch_ttl, |ttl| ttl.min(launch_ttl)));
        }
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
        if let Some(tenant) = &self.tenant {
            validate_tenant(tenant)?;
        }
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
        })
    }
}

fn parse_ttl(field: &'static str, text: &str) -> Result<Duration, InvalidField> {
    let ttl = humantime::parse_duration(text).map_err(|err| {
        invalid(
            field,
            format!("`{text}` is not a duration like \"30s\" or \"5m\": {err}"),
        )
    })?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(invalid(field, "must be more than 0 and at most 30 days"));
    }
    Ok(ttl)
}

fn validate_name(name: &str) -> Result<(), InvalidField> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "name",
            "may contain only letters, digits, `.`, `_` and `-`",
        ));
    }
    Ok(())
}

pub fn validate_tenant(tenant: &str) -> Result<(), InvalidField> {
    if tenant.is_empty()
        || tenant.len() > 64
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "tenant",
            "must be 1 to 64 letters, digits, `.`, `_` or `-`",
        ));
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
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<CreateSession, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn a_minimal_request_is_valid() {
        let spec = request(serde_json::json!({"target": {"cgroup": "/sys/fs/cgroup/x"}}))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(spec.target, TargetKind::Cgroup("/sys/fs/cgroup/x".into()));
        assert_eq!(spec.syscalls, None);
        assert_eq!(spec.backend, BackendChoice::Auto);
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        assert!(request(serde_json::json!({"target": {"cgroup": "/x"}, "colour": 1})).is_err());
        assert!(
            request(serde_json::json!({"target": {"cgroup": "/x"}, "conditions": {"x": 1}}))
                .is_err()
        );
        assert!(
            request(serde_json::json!({"target": {"container": "web", "image": "x"}})).is_err()
        );
    }

    #[test]
    fn syscall_names_resolve_sorted_and_deduplicated() {
        let spec = request(
            serde_json::json!({"target": {"pids": [1]}, "syscalls": ["write", "openat", "write"]}),
        )
        .unwrap()
        .validate()
        .unwrap();
        let mut expected = vec![
            syscalls::Sysno::write.id() as u32,
            syscalls::Sysno::openat.id() as u32,
        ];
        expected.sort_unstable();
        assert_eq!(spec.syscalls, Some(expected));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                serde_json::json!({"target": {"pids": [1]}, "syscalls": ["nosuchcall"]}),
                "syscalls",
            ),
            (serde_json::json!({"target": {"pids": []}}), "target.pids"),
            (
                serde_json::json!({"target": {"cgroup": "relative/path"}}),
                "target.cgroup",
            ),
            (
                serde_json::json!({"target": {"cgroup": "/a/../b"}}),
                "target.cgroup",
            ),
            (
                serde_json::json!({"target": {"pids": [1]}, "name": "has space"}),
                "name",
            ),
            (
                serde_json::json!({"target": {"pids": [1]}, "limits": {"ttl": "soon"}}),
                "limits.ttl",
            ),
            (
                serde_json::json!({"target": {"pids": [1]}, "limits": {"max_events": 0}}),
                "limits.max_events",
            ),
            (
                serde_json::json!({"target": {"pids": [1]}, "conditions": {"tgids": [2]}}),
                "conditions.tgids",
            ),
            (
                serde_json::json!({"target": {"pids": [1]}, "label": "a\u{7}b"}),
                "label",
            ),
            (
                serde_json::json!({"target": {"pids": [1]}, "tenant": "no spaces"}),
                "tenant",
            ),
        ];
        for (json, field) in cases {
            let err = request(json.clone()).unwrap().validate().unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }

    #[test]
    fn duplicates_ignore_order_of_pids_and_tgids() {
        let a = request(serde_json::json!({"target": {"pids": [2, 1]}}))
            .unwrap()
            .validate()
            .unwrap();
        let b = request(serde_json::json!({"target": {"pids": [1, 2, 2]}, "label": "other"}))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(a.duplicate_key(), b.duplicate_key());
        let c = request(
            serde_json::json!({"target": {"pids": [1, 2]}, "conditions": {"failed_only": true}}),
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_ne!(a.duplicate_key(), c.duplicate_key());
    }

    #[test]
    fn container_selectors_combine_a_name_and_labels() {
        let spec =
            request(serde_json::json!({"target": {"container": "web", "labels": {"app": "shop"}}}))
                .unwrap()
                .validate()
                .unwrap();
        let TargetKind::Containers(selector) = spec.target else {
            panic!("a container target");
        };
        assert_eq!(selector.container.as_deref(), Some("web"));
        assert_eq!(selector.labels["app"], "shop");
        assert_eq!(selector.to_string(), "container `web` with labels app=shop");
    }

    #[test]
    fn default_names_come_from_the_target() {
        let target = |json| serde_json::from_value::<Target>(json).unwrap().short_name();
        assert_eq!(
            target(serde_json::json!({"cgroup": "/sys/fs/cgroup/web/"})),
            "web"
        );
        assert_eq!(target(serde_json::json!({"pids": [42, 7]})), "pids-42");
        assert_eq!(
            target(serde_json::json!({"container": "shop/web"})),
            "shop-web"
        );
        assert_eq!(
            target(serde_json::json!({"labels": {"app": "shop"}})),
            "shop"
        );
    }
}
