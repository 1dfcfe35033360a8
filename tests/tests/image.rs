//! The container image (`cargo xtask image`; the tests use the same image made from the
//! debug build, `TRACERD_IMAGE`), run with the documented command against the real Docker
//! engine: it traces a sibling container exactly, launches and traces a container, runs the
//! ftrace backend, leaves nothing in the host's kernel when stopped, resumes its sessions
//! from its volume, works with the least-privilege recipe, and refuses what it cannot do
//! without the host's PIDs.
//!
//! `docker run --privileged` fails on these VMs (their bounding set lacks CAP_SYS_RESOURCE):
//! the equivalent flags stand in for it here (see ../shared/TOOLCHAIN.md).
use std::{
    net::TcpListener,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tracer_tests::{docker::TestContainer, require_root};

/// `--privileged`, as these VMs allow it.
const PRIVILEGED: &[&str] = &[
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
];
/// The least-privilege recipe of docs/deployment.md.
const LEAST_PRIVILEGE: &[&str] = &[
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "apparmor=unconfined",
];
/// The host's view: its PIDs, cgroups, tracefs and Docker engine.
const HOST_VIEW: &[&str] = &[
    "--pid=host",
    "--cgroupns=host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup",
    "-v",
    "/sys/kernel/tracing:/sys/kernel/tracing",
    "-v",
    "/var/run/docker.sock:/var/run/docker.sock",
];

fn image() -> String {
    std::env::var("TRACERD_IMAGE").unwrap_or_else(|_| "tracerd:latest".into())
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// tracerd in a container, removed (with its volume) when dropped.
struct Tracerd {
    name: String,
    volume: String,
    /// Removed with the container (not when the test shares it between two).
    own_volume: bool,
    port: u16,
    token: String,
}

impl Tracerd {
    fn run(purpose: &str, flags: &[&str], volume: Option<&str>) -> Self {
        let name = format!("tracerd-image-{purpose}-{}", std::process::id());
        let volume = volume.map_or_else(|| format!("{name}-data"), str::to_owned);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(flags);
        let mount = format!("{volume}:/var/lib/tracerd");
        let publish = format!("127.0.0.1:{port}:8080");
        args.extend(["-v", &mount, "-p", &publish]);
        let image = image();
        args.push(&image);
        docker(&args);
        let mut tracerd = Self {
            own_volume: volume.starts_with(&name),
            name,
            volume,
            port,
            token: String::new(),
        };
        tracerd.wait_healthy();
        // The admin token it made in its volume (the image has no shell: copied out).
        let archive = Command::new("docker")
            .args([
                "cp",
                &format!("{}:/var/lib/tracerd/admin-token", tracerd.name),
                "-",
            ])
            .output()
            .expect("docker cp");
        let mut tar = tar_entry(&archive.stdout);
        tracerd.token = std::mem::take(&mut tar).trim().to_owned();
        assert_eq!(tracerd.token.len(), 64, "the admin token");
        tracerd
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = ureq::get(&self.url("/healthz")).call() {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tracerd in {} did not answer: {}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let output = Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .body(body.map_or_else(String::new, Value::to_string))
            .unwrap();
        let mut response = agent.run(request).expect("a request");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn create_and_start(&self, body: &Value) -> String {
        let (status, session) = self.call("POST", "/v1/sessions", Some(body));
        assert_eq!(status, 201, "{session}\n{}", self.logs());
        let id = session["id"].as_str().unwrap().to_owned();
        let (status, started) = self.call("POST", &format!("/v1/sessions/{id}/start"), None);
        assert_eq!(status, 200, "{started}");
        id
    }

    /// Waits (20 s at most) until session `id` satisfies `done`.
    fn wait(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, session) = self.call("GET", &format!("/v1/sessions/{id}"), None);
            if done(&session) {
                return session;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {what}: {session}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The session's events made by threads named `comm`.
    fn events_of(&self, id: &str, comm: &str) -> usize {
        let response = ureq::get(&self.url(&format!("/v1/sessions/{id}/events?comm={comm}")))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap();
        response
            .into_body()
            .read_to_string()
            .unwrap()
            .lines()
            .count()
    }

    fn stop_container(&self) {
        docker(&["stop", &self.name]);
    }
}

impl Drop for Tracerd {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        if self.own_volume {
            let _ = Command::new("docker")
                .args(["volume", "rm", &self.volume])
                .output();
        }
    }
}

/// The first file of a tar archive (what `docker cp … -` writes).
fn tar_entry(archive: &[u8]) -> String {
    let size = std::str::from_utf8(&archive[124..136])
        .ok()
        .and_then(|field| {
            u64::from_str_radix(field.trim_matches(|c| c == '\0' || c == ' '), 8).ok()
        })
        .expect("a tar header") as usize;
    String::from_utf8_lossy(&archive[512..512 + size]).into_owned()
}

#[test]
fn the_image_traces_containers_exactly_and_leaves_nothing_behind() {
    require_root();
    let mut flags = PRIVILEGED.to_vec();
    flags.extend_from_slice(HOST_VIEW);
    let volume = format!("tracerd-image-resume-{}", std::process::id());
    let tracerd = Tracerd::run("documented", &flags, Some(&volume));
    let health = tracerd.call("GET", "/healthz", None).1;
    assert_eq!(health["backends"]["ebpf"]["available"], true, "{health}");
    let program_ids: Vec<u64> = health["program_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();

    // A sibling container by name, a `docker exec`'d workload in it: exact counts.
    let sibling = TestContainer::run("image-sibling", &[]);
    let id = tracerd
        .create_and_start(&json!({"target": {"container": sibling.name}, "syscalls": ["getppid"]}));
    sibling.exec_workload(&["getppid", "1000"]);
    tracerd.wait(&id, "1000 getppid", |s| s["counters"]["delivered"] == 1000);
    assert_eq!(tracerd.events_of(&id, "syscall_loop"), 1000);

    // A container launched from inside the image, traced from its first syscall.
    let launched = tracerd.create_and_start(&json!({"target": {"launch": {
        "image": tracer_tests::docker::test_image(),
        "command": ["/bin/syscall_loop", "getppid", "500"]}}, "syscalls": ["getppid"]}));
    tracerd.wait(&launched, "the launched container to finish", |s| {
        s["status"] == "finished"
    });
    assert_eq!(tracerd.events_of(&launched, "syscall_loop"), 500);
    // Deleting the session removes the container it launched.
    let (status, _) = tracerd.call("DELETE", &format!("/v1/sessions/{launched}"), None);
    assert_eq!(status, 204);

    // The ftrace backend from inside the container: a process that starts after the join.
    let ftrace = tracerd.create_and_start(&json!({"target": {"container": sibling.name},
        "syscalls": ["getppid", "getpid"], "backend": "ftrace"}));
    let (_, session) = tracerd.call("GET", &format!("/v1/sessions/{ftrace}"), None);
    assert_eq!(session["backend_in_use"], "ftrace", "{session}");
    docker(&[
        "exec",
        &sibling.id,
        "/bin/sh",
        "-c",
        "sleep 1; /bin/syscall_loop getppid 700",
    ]);
    tracerd.wait(&ftrace, "700 getppid on ftrace", |s| {
        s["counters"]["delivered"].as_u64() >= Some(700)
    });
    assert_eq!(tracerd.events_of(&ftrace, "syscall_loop"), 700);
    let (status, _) = tracerd.call("DELETE", &format!("/v1/sessions/{ftrace}"), None);
    assert_eq!(status, 204);

    // `docker stop`: nothing of it left in the host's kernel (seen from the host).
    let (_, session) = tracerd.call("GET", &format!("/v1/sessions/{id}"), None);
    let recorded = session["counters"]["delivered"].as_u64().unwrap();
    tracerd.stop_container();
    let programs = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .unwrap();
    let programs = String::from_utf8_lossy(&programs.stdout);
    for id in &program_ids {
        assert!(
            !programs
                .lines()
                .any(|line| line.starts_with(&format!("{id}:"))),
            "program {id} left loaded:\n{programs}"
        );
    }
    let instances: Vec<String> = std::fs::read_dir("/sys/kernel/tracing/instances")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tracerd-"))
        .collect();
    assert!(instances.is_empty(), "{instances:?}");

    // `docker rm -f`, then a new container on the same volume resumes the session that was
    // running.
    docker(&["rm", "-f", &tracerd.name]);
    let resumed = Tracerd::run("resumed", &flags, Some(&volume));
    assert_eq!(
        resumed.token, tracerd.token,
        "the same admin token, from the volume"
    );
    let session = resumed.wait(&id, "the session to resume", |s| s["status"] == "running");
    assert_eq!(session["counters"]["delivered"], recorded, "{session}");
    sibling.exec_workload(&["getppid", "10"]);
    resumed.wait(&id, "10 more", |s| {
        s["counters"]["delivered"] == recorded + 10
    });
    drop((resumed, tracerd));
    docker(&["volume", "rm", &volume]);
}

#[test]
fn least_privilege_works_and_a_private_pid_namespace_is_refused_plainly() {
    require_root();
    let mut flags = LEAST_PRIVILEGE.to_vec();
    flags.extend_from_slice(HOST_VIEW);
    let tracerd = Tracerd::run("least", &flags, None);
    let sibling = TestContainer::run("image-least", &[]);
    let id = tracerd
        .create_and_start(&json!({"target": {"container": sibling.name}, "syscalls": ["getppid"]}));
    sibling.exec_workload(&["getppid", "300"]);
    tracerd.wait(&id, "300 getppid", |s| s["counters"]["delivered"] == 300);
    assert_eq!(tracerd.events_of(&id, "syscall_loop"), 300);

    // The seed's fewer flags: no --pid=host. Container targets would be wrong: refused.
    let private = Tracerd::run(
        "private-pids",
        &[LEAST_PRIVILEGE, &HOST_VIEW[1..]].concat(),
        None,
    );
    let (status, body) = private.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"container": sibling.name}})),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "host_pids_unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("--pid=host"),
        "{body}"
    );
    assert!(private.logs().contains("--pid=host"));
}
