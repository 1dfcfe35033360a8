//! The real `tracerd` binary, started for one test with its own data directory and port.
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Where the binary is: `TRACERD_BIN` (set by `cargo xtask test`), else `target/<profile>/tracerd`
/// next to this test binary's `deps/` directory.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TRACERD_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("tracerd");
    assert!(
        path.exists(),
        "no tracerd binary at {}: run `cargo xtask test`, or `cargo build -p tracer-daemon` first",
        path.display()
    );
    path
}

pub struct Daemon {
    child: Child,
    base_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl Daemon {
    /// Starts tracerd on a free loopback port with a fresh data directory, plus `args`, and
    /// waits until `/healthz` answers.
    pub fn start(args: &[&str]) -> Self {
        let port = free_port();
        let data_dir =
            std::env::temp_dir().join(format!("tracerd-test-data-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("test data dir");
        let log_path = data_dir.join("tracerd.log");
        let log = std::fs::File::create(&log_path).expect("daemon log file");
        let child = Command::new(binary())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting tracerd");
        let mut daemon = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            data_dir,
            log_path,
        };
        daemon.wait_healthy(Duration::from_secs(15));
        daemon
    }

    fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("polling tracerd") {
                panic!(
                    "tracerd exited during start-up ({status}); its log:\n{}",
                    self.log()
                );
            }
            if ureq::get(&self.url("/healthz")).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "tracerd did not answer /healthz within {within:?}; its log:\n{}",
            self.log()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// GETs `path` and parses the JSON body; panics (with the daemon's log) on any failure.
    pub fn get(&self, path: &str) -> Value {
        match ureq::get(&self.url(path)).call() {
            Ok(mut response) => response.body_mut().read_json().expect("a JSON body"),
            Err(err) => panic!("GET {path} failed: {err}; tracerd's log:\n{}", self.log()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits up to `within` for the daemon to exit.
    pub fn stop_with(&mut self, signal: i32, within: Duration) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling tracerd") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tracerd still running {within:?} after signal {signal}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral port")
        .port()
}
