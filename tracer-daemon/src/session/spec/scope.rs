//! Where a session runs: on the node that was asked (`local`, the default) or on every node
//! of a cluster whose containers match (`cluster`, with tracerd `--etcd`), optionally only
//! on named nodes or nodes with given labels.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    field::{invalid, InvalidField},
    CreateSession, MAX_LIST_LEN,
};

/// Where a session runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// On this node only.
    #[default]
    Local,
    /// On every node of the cluster whose targets match (needs tracerd `--etcd`).
    Cluster,
}

/// Node names and label values: what a hostname or a Kubernetes label value may hold.
pub const MAX_NODE_NAME_LEN: usize = 63;

/// Checks a node name (`--node`, `nodes`): 1 to 63 letters, digits, `.`, `_`, `-`.
pub fn validate_node_name(field: &'static str, name: &str) -> Result<(), InvalidField> {
    if name.is_empty()
        || name.len() > MAX_NODE_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            field,
            format!("`{name}` is not a node name: 1 to {MAX_NODE_NAME_LEN} letters, digits, `.`, `_` or `-`"),
        ));
    }
    Ok(())
}

impl CreateSession {
    /// The cluster-only fields are given only with `"scope": "cluster"`, and well formed.
    pub(super) fn check_scope(&self) -> Result<(), InvalidField> {
        if self.scope == Scope::Local {
            let cluster_only = [
                ("nodes", self.nodes.is_some()),
                ("node_selector", self.node_selector.is_some()),
                (
                    "limits.max_events_per_node",
                    self.limits.max_events_per_node.is_some(),
                ),
            ];
            if let Some((field, _)) = cluster_only.into_iter().find(|(_, given)| *given) {
                return Err(invalid(
                    field,
                    "is for cluster sessions: add \"scope\": \"cluster\"",
                ));
            }
            return Ok(());
        }
        if let Some(nodes) = &self.nodes {
            if nodes.is_empty() || nodes.len() > MAX_LIST_LEN {
                return Err(invalid(
                    "nodes",
                    format!("must name 1 to {MAX_LIST_LEN} nodes (or be left out for all)"),
                ));
            }
            for node in nodes {
                validate_node_name("nodes", node)?;
            }
        }
        if let Some(selector) = &self.node_selector {
            check_node_selector(selector)?;
        }
        if self.limits.max_events_per_node == Some(0) {
            return Err(invalid("limits.max_events_per_node", "must be at least 1"));
        }
        if self.target.launch.is_some() && self.nodes.as_ref().is_some_and(|n| n.len() > 1) {
            return Err(invalid(
                "nodes",
                "a launch runs on one node: name at most one (or none, to let tracerd place it)",
            ));
        }
        Ok(())
    }
}

fn check_node_selector(selector: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    if selector.is_empty() {
        return Err(invalid(
            "node_selector",
            "must hold at least one label (or be left out)",
        ));
    }
    for (key, value) in selector {
        if key.is_empty() || key.len() > 253 || key.chars().any(char::is_control) {
            return Err(invalid(
                "node_selector",
                format!("`{key}` is not a label name"),
            ));
        }
        if value.len() > 253 || value.chars().any(char::is_control) {
            return Err(invalid(
                "node_selector",
                format!("the value of `{key}` is not a label value"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> CreateSession {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn cluster_fields_need_cluster_scope_and_name_their_field() {
        let local = request(serde_json::json!({
            "target": {"container": "web"}, "nodes": ["a"],
        }));
        let err = local.validate().unwrap_err();
        assert_eq!(err.field, "nodes");
        let local = request(serde_json::json!({
            "target": {"container": "web"}, "limits": {"max_events_per_node": 5},
        }));
        assert_eq!(
            local.validate().unwrap_err().field,
            "limits.max_events_per_node"
        );
        let cluster = request(serde_json::json!({
            "scope": "cluster", "target": {"container": "web"}, "nodes": ["a", "b"],
            "node_selector": {"zone": "x"}, "limits": {"max_events_per_node": 5},
        }));
        assert!(cluster.validate().is_ok());
    }

    #[test]
    fn bad_node_names_and_a_launch_on_two_nodes_are_refused() {
        let bad = request(serde_json::json!({
            "scope": "cluster", "target": {"container": "web"}, "nodes": ["a b"],
        }));
        assert_eq!(bad.validate().unwrap_err().field, "nodes");
        let launch = request(serde_json::json!({
            "scope": "cluster", "target": {"launch": {"image": "busybox"}}, "nodes": ["a", "b"],
        }));
        let err = launch.validate().unwrap_err();
        assert_eq!(err.field, "nodes");
        assert!(err.message.contains("one node"), "{err}");
    }
}
