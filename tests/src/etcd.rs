//! A real etcd cluster on loopback for the cluster-mode tests: `size` members, each with its
//! own ports and data directory under one temporary directory (removed when dropped, with
//! the members killed). Members can be killed and started again on their data.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_port;

pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one is healthy.
    pub fn start(size: usize) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tracerd-test-etcd-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd's directory");
        let members = (1..=size)
            .map(|n| Member {
                name: format!("e{n}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self { dir, members };
        for index in 0..size {
            cluster.start_member(index);
        }
        for index in 0..size {
            cluster.wait_healthy(index);
        }
        cluster
    }

    /// The client URLs, comma-separated (as `tracerd --etcd` takes them).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|member| format!("http://127.0.0.1:{}", member.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A counter or gauge from member `index`'s Prometheus metrics (0 if it has none).
    pub fn metric(&self, index: usize, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.members[index].client);
        let text = ureq::get(&url)
            .call()
            .ok()
            .and_then(|mut response| response.body_mut().read_to_string().ok())
            .unwrap_or_default();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Kills member `index` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data (it rejoins the cluster it was in).
    pub fn restart(&mut self, index: usize) {
        self.start_member(index);
    }

    /// Waits until member `index` says it is healthy (it has a leader and a quorum).
    pub fn wait_healthy(&self, index: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.members[index].client);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = ureq::get(&url)
                .call()
                .ok()
                .and_then(|mut response| response.body_mut().read_to_string().ok())
                .is_some_and(|body| body.contains("\"health\":\"true\""));
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {index} was not healthy within 30 s; its log:\n{}",
                self.log(index)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_member(&mut self, index: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer))
            .collect();
        let member = &self.members[index];
        let client = format!("http://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", member.name)))
            .expect("etcd's log");
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.dir.join(&member.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "tracerd-test",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting etcd (`cargo xtask setup` installs etcd-server)");
        self.members[index].child = Some(child);
    }

    fn log(&self, index: usize) -> String {
        let path = self.dir.join(format!("{}.log", self.members[index].name));
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
