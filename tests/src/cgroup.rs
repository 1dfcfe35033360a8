//! Throw-away cgroups in the cgroup2 hierarchy, found the way the daemon finds it.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tracer_daemon::cgroup::{cgroup2_mount, Cgroup};

/// A cgroup made for one test and removed when dropped.
pub struct TestCgroup {
    cgroup: Cgroup,
}

impl TestCgroup {
    pub fn create(purpose: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mount = cgroup2_mount().expect("a cgroup2 mount (see /proc/self/mountinfo)");
        let name = format!(
            "tracerd-test-{purpose}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = mount.join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("creating cgroup {}: {err}", path.display()));
        let cgroup = Cgroup::from_path(&path).expect("the new cgroup's id");
        Self { cgroup }
    }

    /// A child cgroup of this one (remove it first: declare it after its parent).
    pub fn child(&self, name: &str) -> Self {
        let path = self.path().join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("creating cgroup {}: {err}", path.display()));
        let cgroup = Cgroup::from_path(&path).expect("the new cgroup's id");
        Self { cgroup }
    }

    pub fn path(&self) -> &Path {
        &self.cgroup.path
    }

    pub fn id(&self) -> u64 {
        self.cgroup.id
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes that exited may take a moment to leave; an empty cgroup can be removed.
        let path: PathBuf = self.cgroup.path.clone();
        for _ in 0..50 {
            if std::fs::remove_dir(&path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove test cgroup {}", path.display());
    }
}
