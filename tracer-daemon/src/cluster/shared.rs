//! What the agent, the API and the registration share: etcd and this node.
use super::{etcd::Etcd, records::NodeRecord};

/// What the agent, the API and the registration share.
pub struct Shared {
    pub etcd: Etcd,
    /// This node, as registered.
    pub node: NodeRecord,
}
