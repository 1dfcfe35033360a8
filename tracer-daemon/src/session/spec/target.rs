//! What a session traces, as asked and as validated.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::field::{invalid, parse_ttl, InvalidField};
use crate::containers::ContainerSelector;

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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::whole::option_list"
    )]
    pub pids: Option<Vec<u32>>,
    /// Running Docker containers by exact name, else ID prefix, else part of a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Running Docker containers carrying all these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// A container tracerd creates and starts itself, traced from its first syscall.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::object::option"
    )]
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

    pub(super) fn kind(&self) -> Result<TargetKind, InvalidField> {
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
