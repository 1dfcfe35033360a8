//! A Docker engine restart under a traced container, on a second engine the test starts
//! (the main one is never touched): while the engine is away the session says so, and once
//! it is back the container, restarted by the engine in a new cgroup, is traced again.
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracer_tests::{daemon::Daemon, docker::SecondEngine, require_root};

fn traced_cgroup(session: &Value) -> Value {
    session["traced"]["containers"][0]["cgroup_id"].clone()
}

fn exec_getppid(engine: &SecondEngine, container: &str, calls: u64) {
    let output = engine.docker(&[
        "exec",
        container,
        "/bin/syscall_loop",
        "getppid",
        &calls.to_string(),
    ]);
    assert!(output.status.success(), "docker exec: {output:?}");
}

#[test]
fn a_restarted_engine_is_reported_and_its_containers_are_traced_again() {
    require_root();
    let mut engine = SecondEngine::start();
    let name = format!("tracerd-test-always-{}", std::process::id());
    let run = engine.docker(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--stop-timeout",
        "1",
        "--name",
        &name,
        "tracerd-test:latest",
        "sleep",
        "600",
    ]);
    assert!(run.status.success(), "docker run: {run:?}");
    let socket = engine.socket().display().to_string();
    let daemon = Daemon::start(&["--docker-socket", &socket]);
    let id =
        daemon.create_and_start(&json!({"target": {"container": name}, "syscalls": ["getppid"]}));
    let path = format!("/v1/sessions/{id}");
    exec_getppid(&engine, &name, 100);
    daemon.wait_for_session(&id, None, "100 events", |s| {
        s["counters"]["delivered"] == 100
    });
    let before = traced_cgroup(&daemon.get(&path));
    assert!(before.is_u64(), "{}", daemon.get(&path));

    engine.stop();
    let away = daemon.wait_for_session(&id, None, "the outage to show", |s| {
        s["not_recording"]["reason"] == "runtime_unavailable"
    });
    assert_eq!(away["status"], "running");
    assert_eq!(daemon.get("/healthz")["status"], "degraded");

    // Back: the engine restarts the container in a new cgroup before it answers; the session
    // finds it there.
    engine.restart();
    let back = daemon.wait_for_session(&id, None, "the container in its new cgroup", |s| {
        s.get("not_recording").is_none() && traced_cgroup(s).is_u64() && traced_cgroup(s) != before
    });
    assert_eq!(back["status"], "running");
    let listing = daemon.get("/v1/containers");
    let listed = listing["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{listing}"));
    assert_eq!(listed["sessions"], json!([id]), "{listing}");
    exec_getppid(&engine, &name, 200);
    daemon.wait_for_session(&id, None, "300 events", |s| {
        s["counters"]["delivered"] == 300
    });

    // A later restart of the container alone is followed as before, without a failed
    // removal of the cgroup the engine restart already took out.
    let restarted = engine.docker(&["restart", "-t", "1", &name]);
    assert!(restarted.status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        exec_getppid(&engine, &name, 50);
        std::thread::sleep(Duration::from_millis(300));
        let delivered = daemon.get(&path)["counters"]["delivered"].as_u64().unwrap();
        if delivered >= 350 {
            assert_eq!((delivered - 300) % 50, 0, "partial counts: {delivered}");
            break;
        }
        assert!(Instant::now() < deadline, "not traced after docker restart");
    }
    let log = daemon.log();
    assert!(!log.contains("bpf_map_delete_elem"), "{log}");
    assert!(
        !log.contains("removing an exited container failed"),
        "{log}"
    );
}
