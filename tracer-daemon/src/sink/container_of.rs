//! Which container an event comes from: the container whose cgroup is the event's, or an
//! ancestor of it. A session traces a container's whole cgroup subtree (a container that
//! makes its own sub-cgroups, a pod's containers under the pod cgroup), so an event's own
//! cgroup may be one the session never heard of; it is placed once, by walking the
//! containers' subtrees, and remembered.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{cgroup, record::ContainerMeta};

/// A run's containers by cgroup, and the cgroups below them seen so far.
pub struct ContainerOf {
    /// The containers' own cgroups.
    containers: HashMap<u64, Arc<ContainerMeta>>,
    /// Other cgroups events came from: the container they lie under, if any.
    below: HashMap<u64, Option<Arc<ContainerMeta>>>,
    /// Where each container's cgroup is (looked up once; `None` if it is gone).
    paths: HashMap<u64, Option<PathBuf>>,
    /// Where the cgroup2 hierarchy is mounted (`None`: cgroups below containers stay
    /// unplaced).
    mount: Option<PathBuf>,
}

impl ContainerOf {
    /// Bounds the memory of cgroups seen, on a node that makes many.
    const MAX_BELOW: usize = 65536;

    pub fn new(containers: HashMap<u64, Arc<ContainerMeta>>) -> Self {
        Self {
            containers,
            below: HashMap::new(),
            paths: HashMap::new(),
            mount: cgroup::cgroup2_mount().ok(),
        }
    }

    /// A container joined the run: cgroups placed under no container may be under it.
    pub fn add(&mut self, cgroup_id: u64, container: Arc<ContainerMeta>) {
        self.containers.insert(cgroup_id, container);
        self.below.retain(|_, found| found.is_some());
    }

    /// The container cgroup `cgroup_id` belongs to, if any. May walk the filesystem the
    /// first time a cgroup is seen: call it from the blocking pool.
    pub fn get(&mut self, cgroup_id: u64) -> Option<Arc<ContainerMeta>> {
        if let Some(container) = self.containers.get(&cgroup_id) {
            return Some(container.clone());
        }
        if self.containers.is_empty() {
            return None;
        }
        if let Some(found) = self.below.get(&cgroup_id) {
            return found.clone();
        }
        if self.below.len() > Self::MAX_BELOW {
            self.below.clear();
        }
        let found = self.search(cgroup_id);
        self.below.insert(cgroup_id, found.clone());
        found
    }

    /// Walks each container's subtree for `cgroup_id`.
    fn search(&mut self, cgroup_id: u64) -> Option<Arc<ContainerMeta>> {
        let mount = self.mount.clone()?;
        let ids: Vec<u64> = self.containers.keys().copied().collect();
        for container_cgroup in ids {
            let path = self
                .paths
                .entry(container_cgroup)
                .or_insert_with(|| cgroup::find_by_id(&mount, container_cgroup));
            let Some(path) = path.as_deref() else {
                continue;
            };
            if contains(path, cgroup_id) {
                return self.containers.get(&container_cgroup).cloned();
            }
        }
        None
    }
}

fn contains(root: &Path, cgroup_id: u64) -> bool {
    cgroup::Subtree::new(root).any(|cgroup| cgroup.id == cgroup_id)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn meta(name: &str) -> Arc<ContainerMeta> {
        Arc::new(ContainerMeta {
            id: format!("{name}-id"),
            name: name.to_owned(),
            image: "img".to_owned(),
        })
    }

    fn ino(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn a_cgroup_below_a_container_is_placed_under_it_and_others_under_none() {
        // Directories stand in for cgroups: the walk reads only names and inode numbers.
        let tree = tempfile::tempdir().unwrap();
        let container = tree.path().join("docker/abc");
        let sub = container.join("init.scope/deeper");
        let other = tree.path().join("other");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let mut of = ContainerOf {
            containers: HashMap::from([(ino(&container), meta("web"))]),
            below: HashMap::new(),
            paths: HashMap::new(),
            mount: Some(tree.path().to_owned()),
        };
        assert_eq!(of.get(ino(&container)).unwrap().name, "web");
        assert_eq!(of.get(ino(&sub)).unwrap().name, "web");
        assert!(of.get(ino(&other)).is_none());
        // A container that joins later can claim a cgroup placed under none.
        of.add(ino(&other), meta("late"));
        assert_eq!(of.get(ino(&other)).unwrap().name, "late");
        assert_eq!(of.below.len(), 1, "only the placed cgroup is remembered");
    }
}
