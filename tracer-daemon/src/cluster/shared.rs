//! What the agent, the API and the registration share: etcd and this node.
use std::collections::HashSet;

use uuid::Uuid;

use super::{etcd::Etcd, records::NodeRecord};

/// What the agent, the API and the registration share.
pub struct Shared {
    pub etcd: Etcd,
    /// This node, as registered.
    pub node: NodeRecord,
    /// The ids of the cluster sessions as the agent's watch last saw them: a hint that an id
    /// is a cluster session, so the API need not ask etcd (an id not in it is looked up).
    known: std::sync::RwLock<HashSet<Uuid>>,
    /// Whether the agent's last pass reached etcd (a list of sessions does not wait for an
    /// etcd known to be away).
    reachable: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(etcd: Etcd, node: NodeRecord) -> Self {
        Self {
            etcd,
            node,
            known: std::sync::RwLock::default(),
            reachable: std::sync::atomic::AtomicBool::new(true),
        }
    }

    pub fn set_reachable(&self, reachable: bool) {
        self.reachable
            .store(reachable, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_known(&self, ids: HashSet<Uuid>) {
        *self
            .known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
    }

    pub fn is_known(&self, id: Uuid) -> bool {
        self.known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&id)
    }
}
