//! A node of a test cluster: a tracerd started with `--etcd` and a Docker engine of its
//! own, as the cluster tests and `cargo xtask bench cluster` run them.
use crate::{daemon::Daemon, docker::SecondEngine, etcd::EtcdCluster};

/// One node: a tracerd and its own Docker engine.
pub struct Node {
    pub name: &'static str,
    pub engine: SecondEngine,
    pub daemon: Daemon,
}

impl Node {
    pub fn start(name: &'static str, number: u8, etcd: &EtcdCluster) -> Self {
        Self::start_with(name, number, etcd, &[])
    }

    /// A node with `extra` flags.
    pub fn start_with(name: &'static str, number: u8, etcd: &EtcdCluster, extra: &[&str]) -> Self {
        let engine = SecondEngine::numbered(number);
        let socket = engine.socket().display().to_string();
        let endpoints = etcd.endpoints();
        let label = format!("role={name}");
        let mut args = vec![
            "--etcd",
            &endpoints,
            "--node",
            name,
            "--node-label",
            &label,
            "--docker-socket",
            &socket,
        ];
        args.extend_from_slice(extra);
        let daemon = Daemon::start(&args);
        Self {
            name,
            engine,
            daemon,
        }
    }

    /// Runs a sleeping container of the test image named `name` on this node's engine.
    pub fn run_container(&self, name: &str) {
        self.run_labelled(name, "none");
    }

    /// [`Node::run_container`] owned by `tenant` (tracerd's owner label).
    pub fn run_labelled(&self, name: &str, tenant: &str) {
        let label = format!("tracerd.tenant={tenant}");
        let run = self.engine.docker(&[
            "run",
            "-d",
            "--label",
            &label,
            "--name",
            name,
            "tracerd-test:latest",
            "sleep",
            "600",
        ]);
        assert!(run.status.success(), "docker run on {}: {run:?}", self.name);
    }

    /// `docker exec`s the workload: `calls` getppid calls in container `name`.
    pub fn exec_getppid(&self, name: &str, calls: u64) {
        let output = self.engine.docker(&[
            "exec",
            name,
            "/bin/syscall_loop",
            "getppid",
            &calls.to_string(),
        ]);
        assert!(
            output.status.success(),
            "docker exec on {}: {output:?}",
            self.name
        );
    }
}

impl Node {
    /// Waits (15 s at most) until `count` nodes are ready, as this node lists them.
    pub fn wait_ready(&self, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let (_, nodes) = self.daemon.call("GET", "/v1/nodes", None, None);
            let ready = nodes["nodes"].as_array().map_or(0, |nodes| {
                nodes.iter().filter(|n| n["status"] == "ready").count()
            });
            if ready == count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{count} nodes not ready: {nodes}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
