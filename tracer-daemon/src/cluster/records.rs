//! What the cluster keeps in etcd, as JSON: nodes, cluster sessions, and each node's part
//! of a cluster session.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use crate::session::model::{PartRecord, PartStatus};
use crate::session::{model::Status, spec::CreateSession};

/// A node as it registers itself (under its lease: gone when the node is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Where other nodes reach its API (absent: it cannot be reached for events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The backends its sessions can run on (`ebpf`, `ftrace`).
    pub backends: Vec<String>,
    /// Its tracerd version.
    pub version: String,
    /// When it (last) started, RFC 3339.
    pub started_at: String,
}

/// A cluster session as stored: what was asked and what every part should be doing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterSessionRecord {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    /// Limited to its tenant's containers.
    pub restricted: bool,
    pub request: CreateSession,
    pub request_text: String,
    /// What its parts should be: `created`, `running` or `stopped` (as asked through the API),
    /// `finished` (the parts' events reached `max_events`), or `failed` (a launch whose node
    /// was lost after its container started).
    pub desired: Status,
    /// Bumped at every change of `desired`: parts say which one they have acted on.
    pub generation: u64,
    /// How many times it has been started.
    pub runs: u32,
    /// A launch session's node (chosen when it is started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// Nodes this run's launch was placed on that lack its image (it is placed elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lacking_image: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it finished as a whole (`max_events`: the parts' sum reached the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
}

impl ClusterSessionRecord {
    /// Whether `node` runs a part of this session.
    pub fn runs_on(&self, node: &NodeRecord) -> bool {
        if self.request.target.launch.is_some() {
            return self.placement.as_deref() == Some(node.name.as_str());
        }
        let named = self
            .request
            .nodes
            .as_ref()
            .is_none_or(|nodes| nodes.contains(&node.name));
        let labelled = self.request.node_selector.as_ref().is_none_or(|selector| {
            selector
                .iter()
                .all(|(key, value)| node.labels.get(key) == Some(value))
        });
        named && labelled
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            api: None,
            backends: vec![],
            version: String::new(),
            started_at: String::new(),
        }
    }

    pub fn session(request: serde_json::Value, placement: Option<&str>) -> ClusterSessionRecord {
        ClusterSessionRecord {
            id: Uuid::nil(),
            tenant: "t".into(),
            name: "n".into(),
            restricted: false,
            request: serde_json::from_value(request).unwrap(),
            request_text: String::new(),
            desired: Status::Running,
            generation: 1,
            runs: 1,
            placement: placement.map(str::to_owned),
            lacking_image: Vec::new(),
            error: None,
            finished_reason: None,
            created_at: String::new(),
            updated_at: String::new(),
            started_at: None,
            stopped_at: None,
        }
    }

    #[test]
    fn a_session_runs_on_the_nodes_it_names_or_selects_and_a_launch_on_its_placement() {
        let (a, b) = (node("a", &[("zone", "x")]), node("b", &[("zone", "y")]));
        let all = session(
            serde_json::json!({"scope": "cluster", "target": {"container": "w"}}),
            None,
        );
        assert!(all.runs_on(&a) && all.runs_on(&b));
        let named = session(
            serde_json::json!({"scope": "cluster", "target": {"container": "w"}, "nodes": ["b"]}),
            None,
        );
        assert!(!named.runs_on(&a) && named.runs_on(&b));
        let selected = session(
            serde_json::json!({"scope": "cluster", "target": {"container": "w"}, "node_selector": {"zone": "x"}}),
            None,
        );
        assert!(selected.runs_on(&a) && !selected.runs_on(&b));
        let launch = session(
            serde_json::json!({"scope": "cluster", "target": {"launch": {"image": "busybox"}}}),
            Some("b"),
        );
        assert!(!launch.runs_on(&a) && launch.runs_on(&b));
    }
}
