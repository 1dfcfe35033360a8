//! The real `tracerd` binary, started for one test with its own data directory and port.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::free_port;

/// Where the binary is: `TRACERD_BIN` (set by `cargo xtask test`), else `target/<profile>/tracerd`
/// next to this test binary's `deps/` directory.
pub fn binary() -> PathBuf {
    built("TRACERD_BIN", "tracerd", "tracer-daemon")
}

/// The release build of the binary, for what is measured against what users run:
/// `TRACERD_RELEASE_BIN` (set by `cargo xtask test`), else `target/release/tracerd`.
pub fn release_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TRACERD_RELEASE_BIN") {
        return path.into();
    }
    let path = binary()
        .parent()
        .and_then(|profile| profile.parent())
        .map(|target| target.join("release").join("tracerd"))
        .expect("target/<profile>/tracerd");
    assert!(
        path.exists(),
        "no release tracerd at {}: run `cargo xtask test`, or `cargo build --release -p tracer-daemon` first",
        path.display()
    );
    path
}

/// A tokens file (for `--tokens`) with two tenants and an admin: `team-a-secret-token`
/// (tenant `team-a`), `team-b-secret-token` (`team-b`) and `the-admin-secret-token` (`ops`,
/// admin). `purpose` keeps the files of different tests apart.
pub fn tokens_file(purpose: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tracerd-test-tokens-{purpose}-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "[[token]]\ntoken = \"team-a-secret-token\"\ntenant = \"team-a\"\n\n\
         [[token]]\ntoken = \"team-b-secret-token\"\ntenant = \"team-b\"\n\n\
         [[token]]\ntoken = \"the-admin-secret-token\"\ntenant = \"ops\"\nadmin = true\n",
    )
    .expect("writing a tokens file");
    path
}

/// Where `tracerctl` is: `TRACERCTL_BIN`, else next to `tracerd`.
pub fn tracerctl() -> PathBuf {
    built("TRACERCTL_BIN", "tracerctl", "tracerctl")
}

fn built(variable: &str, name: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "no {name} binary at {}: run `cargo xtask test`, or `cargo build -p {package}` first",
        path.display()
    );
    path
}

pub struct Daemon {
    child: Child,
    port: u16,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// The command that runs it: a wrapper (`setpriv …`, `prlimit …`), if any, then the
    /// binary.
    command: Vec<String>,
    base_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    agent: ureq::Agent,
    /// The address it listens on (its port aside).
    host: &'static str,
}

impl Daemon {
    /// Starts tracerd on a free loopback port with a fresh data directory, plus `args`, and
    /// waits until `/healthz` answers.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Daemon::start`] with extra environment variables for the daemon.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_as(args, envs, &[])
    }

    /// [`Daemon::start`] as root without the capabilities `dropped` (`bpf`, `perfmon`, …):
    /// removed from its bounding and inheritable sets by `setpriv`.
    pub fn start_without_capabilities(args: &[&str], dropped: &[&str]) -> Self {
        let drop = dropped
            .iter()
            .map(|cap| format!("-{cap}"))
            .collect::<Vec<_>>()
            .join(",");
        let setpriv = [
            "setpriv".to_owned(),
            format!("--inh-caps={drop}"),
            format!("--bounding-set={drop}"),
        ];
        Self::start_at("127.0.0.1", args, &[], &setpriv, None, binary())
    }

    /// [`Daemon::start`] with at most `files` open files (soft and hard limit, by `prlimit`).
    pub fn start_with_open_files_limit(args: &[&str], files: u32) -> Self {
        let prlimit = ["prlimit".to_owned(), format!("--nofile={files}:{files}")];
        Self::start_at("127.0.0.1", args, &[], &prlimit, None, binary())
    }

    /// [`Daemon::start`] listening on every address (`0.0.0.0`), not only loopback.
    pub fn start_on_all_addresses(args: &[&str]) -> Self {
        Self::start_at("0.0.0.0", args, &[], &[], None, binary())
    }

    fn start_as(args: &[&str], envs: &[(&str, &str)], wrapper: &[String]) -> Self {
        Self::start_at("127.0.0.1", args, envs, wrapper, None, binary())
    }

    /// [`Daemon::start`] with its data directory at `data_dir` (removed when dropped).
    pub fn start_with_data_dir(args: &[&str], data_dir: PathBuf) -> Self {
        Self::start_at("127.0.0.1", args, &[], &[], Some(data_dir), binary())
    }

    /// [`Daemon::start`] of the release build ([`release_binary`]).
    pub fn start_release(args: &[&str]) -> Self {
        Self::start_at("127.0.0.1", args, &[], &[], None, release_binary())
    }

    fn start_at(
        host: &'static str,
        args: &[&str],
        envs: &[(&str, &str)],
        wrapper: &[String],
        data_dir: Option<PathBuf>,
        binary: PathBuf,
    ) -> Self {
        let port = free_port();
        let data_dir = data_dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("tracerd-test-data-{}-{port}", std::process::id()))
        });
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("test data dir");
        let log_path = data_dir.join("tracerd.log");
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let mut command = wrapper.to_vec();
        command.push(binary.to_string_lossy().into_owned());
        let child = spawn(host, port, &data_dir, &args, &envs, &command, &log_path);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut daemon = Self {
            child,
            port,
            args,
            envs,
            command,
            base_url: format!("http://127.0.0.1:{port}"),
            data_dir,
            log_path,
            agent,
            host,
        };
        daemon.wait_healthy(Duration::from_secs(15));
        daemon
    }

    /// Stops the daemon with `signal` (if it still runs) and starts it again with the same
    /// data directory, port and arguments; waits until `/healthz` answers.
    pub fn restart_after(&mut self, signal: i32) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop_with(signal, Duration::from_secs(10));
        }
        self.child = spawn(
            self.host,
            self.port,
            &self.data_dir,
            &self.args,
            &self.envs,
            &self.command,
            &self.log_path,
        );
        self.wait_healthy(Duration::from_secs(15));
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
            if matches!(self.agent.get(&self.url("/healthz")).call(), Ok(response) if response.status() == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "tracerd did not answer /healthz within {within:?}; its log:\n{}",
            self.log()
        );
    }

    /// The daemon's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of its API.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where it serves `/metrics` without a token (`--metrics-listen`; it logs the address
    /// it bound).
    pub fn metrics_address(&self) -> String {
        let log = self.log();
        log.lines()
            .find(|line| line.contains("serving /metrics without a token"))
            .and_then(|line| line.rsplit("listen=").next())
            .unwrap_or_else(|| panic!("no metrics listener in the log:\n{log}"))
            .trim()
            .to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// GETs `path` and parses the JSON body; panics (with the daemon's log) unless it is a 200.
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None, None);
        assert_eq!(
            status,
            200,
            "GET {path}: {body}; tracerd's log:\n{}",
            self.log()
        );
        body
    }

    /// The body of a 200 GET as text (for NDJSON and metrics).
    pub fn get_text(&self, path: &str) -> String {
        self.get_text_as(path, None)
    }

    /// [`Daemon::get_text`] with a bearer token.
    pub fn get_text_as(&self, path: &str, token: Option<&str>) -> String {
        let mut request = self.agent.get(&self.url(path));
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request
            .call()
            .unwrap_or_else(|err| panic!("GET {path} failed: {err}"));
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        response.body_mut().read_to_string().expect("a body")
    }

    /// Sends a request and returns the status and the JSON body (`Null` if there is none).
    /// `body` is sent as JSON; `token` as a bearer token.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let text = body.map(Value::to_string);
        self.call_raw(
            method,
            path,
            text.as_deref(),
            Some("application/json"),
            token,
        )
    }

    /// [`Daemon::call`] with a raw body and content type.
    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        content_type: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let (Some(content_type), Some(_)) = (content_type, body) {
            request = request.header("Content-Type", content_type);
        }
        let request = request
            .body(body.unwrap_or("").to_owned())
            .expect("a request");
        let mut response = self.agent.run(request).unwrap_or_else(|err| {
            panic!(
                "{method} {path} failed: {err}; tracerd's log:\n{}",
                self.log()
            )
        });
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .expect("a response body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// Creates a session from `body` and starts it; returns its id.
    pub fn create_and_start(&self, body: &Value) -> String {
        let (status, session) = self.call("POST", "/v1/sessions", Some(body), None);
        assert_eq!(status, 201, "{session}");
        let id = session["id"].as_str().expect("an id").to_owned();
        let (status, started) = self.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
        assert_eq!(status, 200, "{started}");
        id
    }

    /// A session's recorded events, parsed.
    pub fn events(&self, id: &str) -> Vec<Value> {
        self.get_text(&format!("/v1/sessions/{id}/events"))
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|err| panic!("bad NDJSON {line}: {err}"))
            })
            .collect()
    }

    /// Streams a session's event download (`query`: `?…` or empty), calling `each` with
    /// every line, without holding the body (a download can be gigabytes). Returns the
    /// number of lines.
    pub fn each_event_line(&self, id: &str, query: &str, mut each: impl FnMut(&str)) -> u64 {
        use std::io::BufRead as _;
        let path = format!("/v1/sessions/{id}/events{query}");
        let mut response = self
            .agent
            .get(&self.url(&path))
            .call()
            .unwrap_or_else(|err| panic!("GET {path} failed: {err}"));
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        let reader = std::io::BufReader::with_capacity(1 << 20, response.body_mut().as_reader());
        let mut lines = 0;
        for line in reader.lines() {
            each(&line.unwrap_or_else(|err| panic!("reading GET {path}: {err}")));
            lines += 1;
        }
        lines
    }

    /// Polls `GET /v1/sessions/{id}` until `done` holds (10 s at most); returns the session.
    pub fn wait_for_session(
        &self,
        id: &str,
        token: Option<&str>,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, session) = self.call("GET", &format!("/v1/sessions/{id}"), None, token);
            assert_eq!(status, 200, "GET session {id}: {session}");
            if done(&session) {
                return session;
            }
            assert!(
                Instant::now() < deadline,
                "waited 10 s for {what}: {session}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
        // What it pinned for a successor that will never come.
        tracer_daemon::pins::remove_node(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn spawn(
    host: &str,
    port: u16,
    data_dir: &Path,
    args: &[String],
    envs: &[(String, String)],
    program: &[String],
    log_path: &Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("daemon log file");
    let (program, program_args) = program.split_first().expect("a program");
    let mut command = Command::new(program);
    command.args(program_args);
    command
        .arg("--listen")
        .arg(format!("{host}:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(envs.iter().map(|(key, value)| (key, value)))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("starting tracerd")
}
