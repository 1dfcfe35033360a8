//! Container targets through the real Docker engine: selection by name, part of a name, ID
//! prefix and label, `docker exec`'d processes, container metadata on events, tenants, and
//! errors.
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracer_tests::{daemon::Daemon, docker::TestContainer, require_root};

fn wait_delivered(daemon: &Daemon, id: &str, count: u64, token: Option<&str>) -> Value {
    daemon.wait_for_session(id, token, &format!("{count} events"), |s| {
        s["counters"]["delivered"] == count
    })
}

/// Creates and starts a getppid session on `target`, runs `calls` getppid in the container,
/// and checks every event: the exact count, and the container on each.
fn trace_exactly(daemon: &Daemon, target: Value, container: &TestContainer, calls: u64) {
    let body = json!({"target": target, "syscalls": ["getppid"]});
    let (status, session) = daemon.call("POST", "/v1/sessions", Some(&body), None);
    assert_eq!(status, 201, "{target}: {session}");
    let id = session["id"].as_str().unwrap().to_owned();
    let (status, started) = daemon.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
    assert_eq!(status, 200, "{started}");
    container.exec_workload(&["getppid", &calls.to_string()]);
    let session = wait_delivered(daemon, &id, calls, None);
    assert_eq!(session["counters"]["matched"], calls, "{target}: {session}");
    let events: Vec<Value> = daemon
        .get_text(&format!("/v1/sessions/{id}/events"))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len() as u64, calls);
    for event in &events {
        assert_eq!(event["comm"], "syscall_loop");
        assert_eq!(event["container"]["id"], container.id.as_str());
        assert_eq!(event["container"]["name"], container.name.as_str());
        assert_eq!(
            event["container"]["image"],
            tracer_tests::docker::test_image()
        );
    }
    assert_eq!(
        daemon
            .call("DELETE", &format!("/v1/sessions/{id}"), None, None)
            .0,
        204
    );
}

#[test]
fn a_container_is_traced_by_name_part_of_a_name_id_prefix_and_label() {
    require_root();
    let label = format!("shop-{}", std::process::id());
    let container = TestContainer::run("shop-web", &[("app", &label)]);
    let daemon = Daemon::start(&[]);
    // Each selector on its own, with a different count so no session could be another's.
    trace_exactly(
        &daemon,
        json!({"container": container.name}),
        &container,
        1000,
    );
    let part = container.name.trim_start_matches("tracerd-test-");
    trace_exactly(&daemon, json!({"container": part}), &container, 1100);
    trace_exactly(
        &daemon,
        json!({"container": &container.id[..12]}),
        &container,
        1200,
    );
    trace_exactly(&daemon, json!({"labels": {"app": label}}), &container, 1300);
    trace_exactly(
        &daemon,
        json!({"container": part, "labels": {"app": label}}),
        &container,
        1400,
    );
}

#[test]
fn containers_are_listed_with_their_cgroup_and_the_sessions_tracing_them() {
    require_root();
    let container = TestContainer::run("listed", &[]);
    let daemon = Daemon::start(&[]);
    let body = json!({"target": {"container": container.name}});
    let (_, session) = daemon.call("POST", "/v1/sessions", Some(&body), None);
    let id = session["id"].as_str().unwrap();
    daemon.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
    let listing = daemon.get("/v1/containers");
    let ours = listing["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == container.id.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {listing}", container.name));
    assert_eq!(ours["name"], container.name.as_str());
    assert_eq!(ours["image"], tracer_tests::docker::test_image());
    assert!(ours["cgroup_id"].as_u64().unwrap() > 0);
    assert_eq!(ours["sessions"], json!([id]));
}

#[test]
fn no_matching_container_is_a_422_naming_the_selector_and_close_names() {
    require_root();
    let container = TestContainer::run("payments", &[]);
    let daemon = Daemon::start(&[]);
    let typo = container.name.replace("payments", "paymnets");
    let (status, body) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"container": typo}})),
        None,
    );
    assert_eq!(
        (status, &body["error"]),
        (422, &json!("no_matching_container")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains(&typo), "{body}");
    assert_eq!(body["close_names"][0], container.name.as_str(), "{body}");
}

#[test]
fn an_image_reference_docker_refuses_is_a_422_naming_the_field() {
    require_root();
    let daemon = Daemon::start(&[]);
    let (status, body) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"launch": {"image": "Not A Reference"}}})),
        None,
    );
    assert_eq!(
        (status, &body["error"], &body["field"]),
        (422, &json!("invalid_field"), &json!("target.launch.image")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("invalid reference format"),
        "{body}"
    );
}

#[test]
fn a_tenant_may_target_only_containers_it_owns() {
    require_root();
    let ours = TestContainer::run("team-a-app", &[("tracerd.tenant", "team-a")]);
    let theirs = TestContainer::run("team-b-app", &[("tracerd.tenant", "team-b")]);
    let tokens = std::env::temp_dir().join(format!(
        "tracerd-test-owner-tokens-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &tokens,
        "[[token]]\ntoken = \"team-a-secret-token\"\ntenant = \"team-a\"\n",
    )
    .unwrap();
    let daemon = Daemon::start(&["--tokens", tokens.to_str().unwrap()]);
    let a = Some("team-a-secret-token");

    let (status, body) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"container": ours.name}})),
        a,
    );
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        daemon
            .call("POST", &format!("/v1/sessions/{id}/start"), None, a)
            .0,
        200
    );
    ours.exec_workload(&["getppid", "250"]);
    let session = wait_delivered(&daemon, &id, 250 + extra_syscalls(&daemon, &id, a), a);
    assert_eq!(session["tenant"], "team-a");

    // Another tenant's container is as if it did not exist: no name to be had from it.
    let (status, body) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"container": theirs.name}})),
        a,
    );
    assert_eq!(
        (status, &body["error"]),
        (422, &json!("no_matching_container")),
        "{body}"
    );
    assert!(
        !body
            .to_string()
            .contains(&theirs.name.replace("team-b-app", "")),
        "{body}"
    );
    let (_, listing) = daemon.call("GET", "/v1/containers", None, a);
    let names: Vec<&str> = listing["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [ours.name.as_str()]);
    std::fs::remove_file(tokens).unwrap();
}

/// A session on all syscalls also records the exec's own machinery (runc's init runs in the
/// container's cgroup before it execs the command): the events say how many of those there
/// were, so the getppid count can be checked exactly.
fn extra_syscalls(daemon: &Daemon, id: &str, token: Option<&str>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = daemon
            .get_text_as(&format!("/v1/sessions/{id}/events"), token)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        // The workload's exit_group is its last syscall: once it is in, everything is.
        if lines
            .iter()
            .any(|e| e["syscall"] == "exit_group" && e["comm"] == "syscall_loop")
        {
            let getppid = lines.iter().filter(|e| e["syscall"] == "getppid").count() as u64;
            assert_eq!(getppid, 250, "exactly the workload's getppid calls");
            return lines.len() as u64 - getppid;
        }
        assert!(
            Instant::now() < deadline,
            "the workload's events did not arrive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn without_docker_container_targets_are_a_503_and_cgroup_targets_still_work() {
    require_root();
    let daemon = Daemon::start(&["--docker-socket", "/nonexistent/docker.sock"]);
    let (status, body) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"container": "web"}})),
        None,
    );
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("docker_unavailable")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/docker.sock"),
        "{body}"
    );
    let cgroup = tracer_tests::cgroup::TestCgroup::create("no-docker");
    let (status, _) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"cgroup": cgroup.path()}})),
        None,
    );
    assert_eq!(status, 201);
}

/// Creates and starts a getppid session on `target`; returns its id.
fn start_getppid_session(daemon: &Daemon, target: Value) -> String {
    let (status, session) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": target, "syscalls": ["getppid"]})),
        None,
    );
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_str().unwrap().to_owned();
    assert_eq!(
        daemon
            .call("POST", &format!("/v1/sessions/{id}/start"), None, None)
            .0,
        200
    );
    id
}

fn wait_status(daemon: &Daemon, id: &str, status: &str) -> Value {
    daemon.wait_for_session(id, None, status, |s| s["status"] == status)
}

#[test]
fn a_container_started_after_the_session_is_traced_when_it_matches() {
    require_root();
    // Both names contain `late-<pid>-`, and nothing else running does.
    let part = format!("late-{}-", std::process::id());
    let first = TestContainer::run(&format!("{part}a"), &[]);
    let daemon = Daemon::start(&[]);
    let id = start_getppid_session(&daemon, json!({"container": part}));
    first.exec_workload(&["getppid", "100"]);
    wait_delivered(&daemon, &id, 100, None);

    let second = TestContainer::run(&format!("{part}b"), &[]);
    // The engine's start event reaches tracerd asynchronously: poll until b's cgroup is in.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listing = daemon.get("/v1/containers");
        let traced = listing["containers"].as_array().unwrap().iter().any(|c| {
            c["id"] == second.id.as_str()
                && c["sessions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s == id.as_str())
        });
        if traced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late container was not added: {listing}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    second.exec_workload(&["getppid", "200"]);
    wait_delivered(&daemon, &id, 300, None);
    let events: Vec<Value> = daemon
        .get_text(&format!("/v1/sessions/{id}/events"))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let from_second = events
        .iter()
        .filter(|e| e["container"]["id"] == second.id.as_str())
        .count();
    assert_eq!(from_second, 200);
}

#[test]
fn a_restarted_container_is_picked_up_again_and_a_removed_one_ends_the_session() {
    require_root();
    let container = TestContainer::run("restarted", &[]);
    let daemon = Daemon::start(&[]);
    let id = start_getppid_session(&daemon, json!({"container": container.name}));
    container.exec_workload(&["getppid", "100"]);
    wait_delivered(&daemon, &id, 100, None);

    // A restart makes a new cgroup for the container; the session follows it.
    container.docker("restart");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut delivered = 100;
    while delivered < 300 {
        // Until the restart is seen, these calls are not traced; retry with a fresh count.
        container.exec_workload(&["getppid", "200"]);
        std::thread::sleep(Duration::from_millis(300));
        let (_, session) = daemon.call("GET", &format!("/v1/sessions/{id}"), None, None);
        delivered = session["counters"]["delivered"].as_u64().unwrap();
        assert!(
            delivered == 100 || delivered == 300,
            "partial counts after the restart: {session}"
        );
        assert!(
            Instant::now() < deadline,
            "the restarted container was not picked up: {session}"
        );
    }

    // Killed but not removed: it may start again, so the session goes on.
    container.docker("kill");
    std::thread::sleep(Duration::from_millis(1500));
    let (_, session) = daemon.call("GET", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!(session["status"], "running", "{session}");
    // Removed: gone for good.
    container.docker("rm");
    let finished = wait_status(&daemon, &id, "finished");
    assert_eq!(finished["finished_reason"], "targets_gone");
    assert_eq!(finished["counters"]["delivered"], 300);
}

#[test]
fn an_exact_name_wins_over_names_that_contain_it_now_and_later() {
    require_root();
    let exact = TestContainer::run("pname", &[]);
    let longer = TestContainer::named(&format!("{}-x", exact.name), &[]);
    let daemon = Daemon::start(&[]);
    let id = start_getppid_session(&daemon, json!({"container": exact.name}));
    let later = TestContainer::named(&format!("{}-later", exact.name), &[]);
    // Container events reach the session in order: once the restarted container's new
    // cgroup is traced, `later`'s start has been handled too.
    let traced_cgroup = |session: &Value| session["traced"]["containers"][0]["cgroup_id"].clone();
    let before = traced_cgroup(&daemon.get(&format!("/v1/sessions/{id}")));
    exact.docker("restart");
    let session = daemon.wait_for_session(&id, None, "the restart followed", |s| {
        traced_cgroup(s) != before
    });
    assert_eq!(session["traced"]["matched_by"], "name", "{session}");
    let names: Vec<&str> = session["traced"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [exact.name.as_str()]);
    for container in [&longer, &later, &exact] {
        container.exec_workload(&["getppid", "100"]);
    }
    let session = wait_delivered(&daemon, &id, 100, None);
    assert_eq!(session["counters"]["matched"], 100, "{session}");
    let from_exact = daemon
        .get_text(&format!("/v1/sessions/{id}/events"))
        .lines()
        .filter(|line| line.contains(&exact.id))
        .count();
    assert_eq!(from_exact, 100);
}

/// Creates and starts a session that launches `command` in the test image.
fn launch(daemon: &Daemon, command: &[&str], extra: Value) -> String {
    let mut target =
        json!({"launch": {"image": tracer_tests::docker::test_image(), "command": command}});
    if let (Some(launch), Some(extra)) = (target["launch"].as_object_mut(), extra.as_object()) {
        launch.extend(extra.clone());
    }
    let (status, session) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": target})),
        None,
    );
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_str().unwrap().to_owned();
    let (status, started) = daemon.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
    assert_eq!(status, 200, "{started}");
    id
}

fn container_exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn a_launched_container_is_traced_from_its_first_syscall_and_its_exit_ends_the_session() {
    require_root();
    let mut daemon = Daemon::start(&[]);
    let id = launch(&daemon, &["/bin/cat", "/etc/hostname"], json!({}));
    let finished = wait_status(&daemon, &id, "finished");
    assert_eq!(finished["finished_reason"], "exited", "{finished}");
    let events: Vec<Value> = daemon
        .get_text(&format!("/v1/sessions/{id}/events"))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // The command's execve, and the file it reads, are there.
    let execve = events
        .iter()
        .find(|e| e["syscall"] == "execve" && e["path"] == "/bin/cat")
        .unwrap_or_else(|| panic!("no execve of /bin/cat among {} events", events.len()));
    assert_eq!(execve["ret"], 0);
    assert!(events
        .iter()
        .any(|e| e["syscall"] == "openat" && e["path"] == "/etc/hostname" && e["comm"] == "cat"));
    let container = execve["container"]["id"].as_str().unwrap().to_owned();
    assert!(execve["container"]["name"]
        .as_str()
        .unwrap()
        .starts_with("tracerd-"));
    assert_eq!(
        finished["counters"]["matched"],
        finished["counters"]["delivered"]
    );

    // The run is over and its events are recorded: the container it launched is gone.
    assert!(!container_exists(&container), "{container} still exists");
    assert_eq!(
        daemon
            .call("DELETE", &format!("/v1/sessions/{id}"), None, None)
            .0,
        204
    );
    // Once the daemon stops, the launch parent cgroup goes from every hierarchy where no
    // other launched container (another test's, say) still has its cgroup.
    let status = daemon.stop_with(libc::SIGTERM, Duration::from_secs(20));
    assert!(status.success(), "{status}");
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
        let parent = hierarchy.unwrap().path().join("tracerd");
        let Ok(children) = std::fs::read_dir(&parent) else {
            continue;
        };
        let busy = children
            .filter_map(Result::ok)
            .any(|entry| entry.path().is_dir());
        assert!(busy, "{} outlived the daemon", parent.display());
    }
}

#[test]
fn a_launched_container_that_fails_fails_the_session_with_its_code() {
    require_root();
    let daemon = Daemon::start(&[]);
    let id = launch(&daemon, &["/bin/sh", "-c", "exit 3"], json!({}));
    let failed = wait_status(&daemon, &id, "failed");
    assert_eq!(
        failed["error"], "the launched container exited with code 3",
        "{failed}"
    );
    daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
}

#[test]
fn a_launch_ttl_kills_the_container_and_finishes_the_session() {
    require_root();
    let daemon = Daemon::start(&[]);
    let id = launch(&daemon, &["/bin/sleep", "600"], json!({"ttl": "1s"}));
    let finished = wait_status(&daemon, &id, "finished");
    assert_eq!(finished["finished_reason"], "ttl", "{finished}");
    let events: Vec<Value> = daemon
        .get_text(&format!("/v1/sessions/{id}/events?syscall=execve"))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let container = events[0]["container"]["id"].as_str().unwrap().to_owned();
    assert!(!container_exists(&container), "{container} still exists");
}

/// The host pid of the workload `docker exec` started in `container_cgroup`, once it is there.
fn exec_pid(container_cgroup: &std::path::Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = std::fs::read_to_string(container_cgroup.join("cgroup.procs")).unwrap();
        let found = procs
            .lines()
            .filter_map(|line| line.trim().parse::<u32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| cmdline.starts_with(b"/bin/syscall_loop"))
            });
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the exec'd workload never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_container_target_covers_cgroups_made_below_the_container() {
    use std::io::Write as _;
    require_root();
    let daemon = Daemon::start(&[]);
    let container = TestContainer::run("subcgroup", &[]);
    let id = start_getppid_session(&daemon, json!({"container": container.name}));
    let init_pid: u32 = String::from_utf8(
        std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", &container.id])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let container_cgroup = tracer_daemon::cgroup::Cgroup::of_pid(init_pid).unwrap();
    // A cgroup the container's own tooling could make (systemd in a container, a pod's
    // container under its pod cgroup), made after the session started.
    let sub = container_cgroup.path.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let sub_id = tracer_daemon::cgroup::Cgroup::from_path(&sub).unwrap().id;

    let mut exec = std::process::Command::new("docker")
        .args(["exec", "-i", &container.id, "/bin/syscall_loop"])
        .args(["pause-stdin", "1", "getppid", "400"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = exec_pid(&container_cgroup.path);
    std::fs::write(sub.join("cgroup.procs"), pid.to_string()).unwrap();
    exec.stdin.take().unwrap().write_all(b"x").unwrap();
    assert!(exec.wait().unwrap().success());

    let session = wait_delivered(&daemon, &id, 400, None);
    assert_eq!(session["counters"]["matched"], 400, "{session}");
    let events = daemon.events(&id);
    assert_eq!(events.len(), 400);
    for event in &events {
        assert_eq!(event["cgroup_id"], sub_id, "{event}");
        assert_eq!(
            event["container"]["name"],
            container.name.as_str(),
            "{event}"
        );
    }
    // Empty now (the workload exited): the container's removal can take its cgroup.
    std::fs::remove_dir(&sub).unwrap();
}
