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
    /// Clients need TLS with a client certificate: `ca.pem`, `client.pem`, `client.key` are
    /// in `dir`.
    tls: bool,
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
        Self::start_as(size, false)
    }

    /// [`EtcdCluster::start`] serving clients over TLS only, and only those with a client
    /// certificate its CA signed ([`EtcdCluster::file`]: `ca.pem`, `client.pem`,
    /// `client.key`).
    pub fn start_tls(size: usize) -> Self {
        Self::start_as(size, true)
    }

    /// A file of the cluster's directory (the TLS certificates).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn start_as(size: usize, tls: bool) -> Self {
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
        if tls {
            crate::certificates(&dir);
        }
        let mut cluster = Self { dir, members, tls };
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
            .map(|member| format!("{}://127.0.0.1:{}", self.scheme(), member.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A counter or gauge from member `index`'s Prometheus metrics (0 if it has none).
    pub fn metric(&self, index: usize, name: &str) -> f64 {
        self.fetch(index, "/metrics")
            .lines()
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

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// GETs `path` from member `index` (with curl: it speaks TLS with a client certificate).
    fn fetch(&self, index: usize, path: &str) -> String {
        let url = format!(
            "{}://127.0.0.1:{}{path}",
            self.scheme(),
            self.members[index].client
        );
        let mut curl = Command::new("curl");
        curl.args(["-s", "--max-time", "2", &url]);
        if self.tls {
            curl.arg("--cacert").arg(self.file("ca.pem"));
            curl.arg("--cert").arg(self.file("client.pem"));
            curl.arg("--key").arg(self.file("client.key"));
        }
        let output = curl.output().expect("running curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until member `index` says it is healthy (it has a leader and a quorum).
    pub fn wait_healthy(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = self.fetch(index, "/health").contains("\"health\":\"true\"");
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
        let client = format!("{}://127.0.0.1:{}", self.scheme(), member.client);
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
            .args(if self.tls {
                self.tls_flags()
            } else {
                Vec::new()
            })
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting etcd (`cargo xtask setup` installs etcd-server)");
        self.members[index].child = Some(child);
    }

    fn tls_flags(&self) -> Vec<String> {
        let file = |name: &str| self.file(name).display().to_string();
        vec![
            "--cert-file".into(),
            file("server.pem"),
            "--key-file".into(),
            file("server.key"),
            "--trusted-ca-file".into(),
            file("ca.pem"),
            "--client-cert-auth".into(),
        ]
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
