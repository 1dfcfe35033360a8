//! The ftrace backend end to end: the real daemon, real tracefs instances, real workloads.
//! Parity with eBPF on a deterministic workload, `docker exec`'d processes, a daemon without
//! eBPF, counted drops, and instance clean-up after stop, delete and `kill -9`.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde_json::{json, Value};
use tracer_tests::{
    cgroup::TestCgroup, daemon::Daemon, docker::TestContainer, loaded_tracerd_programs,
    require_root, workload,
};

fn instances_dir() -> PathBuf {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("instances").is_dir())
        .expect("tracefs is mounted (cargo xtask setup mounts it)")
        .join("instances")
}

fn instance_exists(id: &str) -> bool {
    instances_dir().join(format!("tracerd-{id}")).exists()
}

fn tracerd_instances() -> Vec<String> {
    std::fs::read_dir(instances_dir())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tracerd-"))
        .collect()
}

/// Waits until the session has delivered an `exit_group` of `pid` (its last syscall), then
/// returns its events of `pid`, counted per syscall.
fn counts_of(daemon: &Daemon, id: &str, pid: u32) -> BTreeMap<String, u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = daemon.events(id);
        let of_pid: Vec<&Value> = events.iter().filter(|e| e["pid"] == pid).collect();
        if of_pid.iter().any(|e| e["syscall"] == "exit_group") {
            let mut counts = BTreeMap::new();
            for event in of_pid {
                *counts
                    .entry(event["syscall"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            return counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit_group of {pid} in 10 s; {} events; log:\n{}",
            events.len(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the workload in a fresh cgroup traced by two sessions on `backend` (every syscall;
/// failed openat/getppid only) and returns both sessions' counts for the workload.
fn trace_workload(
    daemon: &Daemon,
    backend: &str,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let cgroup = TestCgroup::create(&format!("parity-{backend}"));
    // Started first, paused in a read of stdin: the sessions find it in the cgroup.
    let child = workload::spawn_in(
        &cgroup,
        &[
            "pause-stdin",
            "1",
            "getppid",
            "3000",
            "getpid",
            "2000",
            "openat-missing",
            "1500",
            "write-null",
            "700",
            "openat-null",
            "300",
        ],
    );
    let pid = child.id();
    let all =
        daemon.create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "backend": backend}));
    let failed = daemon.create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "backend": backend,
               "syscalls": ["openat", "getppid", "exit_group"], "conditions": {"failed_only": true}}),
    );
    for id in [&all, &failed] {
        let session = daemon.get(&format!("/v1/sessions/{id}"));
        assert_eq!(session["backend_in_use"], backend, "{session}");
    }
    assert!(workload::resume_and_wait(child).success());
    let all_counts = counts_of(daemon, &all, pid);
    // exit_group never fails: the failed-only session ends when the workload's last failing
    // call is in; wait for the all-syscalls session first, then read what the other has.
    daemon.wait_for_session(&failed, None, "1800 failed calls", |s| {
        s["counters"]["delivered"].as_u64() >= Some(1800)
    });
    let mut failed_counts = BTreeMap::new();
    for event in daemon.events(&failed).iter().filter(|e| e["pid"] == pid) {
        assert!(event["ret"].as_i64().unwrap() < 0, "{event}");
        *failed_counts
            .entry(event["syscall"].as_str().unwrap().to_owned())
            .or_insert(0u64) += 1;
    }
    for id in [&all, &failed] {
        let session = daemon.get(&format!("/v1/sessions/{id}"));
        let counters = &session["counters"];
        assert_eq!(counters["dropped"], 0, "{session}");
        assert_eq!(counters["matched"], counters["delivered"], "{session}");
        assert_eq!(
            daemon
                .call("DELETE", &format!("/v1/sessions/{id}"), None, None)
                .0,
            204
        );
    }
    (all_counts, failed_counts)
}

#[test]
fn ftrace_gives_the_same_per_syscall_counts_as_ebpf() {
    require_root();
    let daemon = Daemon::start(&[]);
    let (ebpf_all, ebpf_failed) = trace_workload(&daemon, "ebpf");
    let (ftrace_all, ftrace_failed) = trace_workload(&daemon, "ftrace");
    assert_eq!(ebpf_all["getppid"], 3000, "{ebpf_all:?}");
    assert_eq!(ebpf_all["getpid"], 2000, "{ebpf_all:?}");
    assert_eq!(ebpf_all["write"], 700, "{ebpf_all:?}");
    assert_eq!(ftrace_all, ebpf_all, "per-syscall counts, ftrace vs eBPF");
    assert_eq!(
        ebpf_failed,
        BTreeMap::from([("openat".to_owned(), 1800)]),
        "failed calls only"
    );
    assert_eq!(ftrace_failed, ebpf_failed);
    // Stop and delete removed both backends' kernel objects of the sessions.
    assert_eq!(tracerd_instances(), Vec::<String>::new());
}

#[test]
fn ftrace_events_carry_what_ebpf_events_carry() {
    require_root();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("ftrace-fields");
    // In the cgroup before the session starts, so the session finds it there (a process that
    // joins later is traced from when the daemon sees the join: see the docker exec test).
    let child = workload::spawn_in(&cgroup, &["pause-stdin", "1", "openat-missing", "5"]);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(100));
    let id = daemon.create_and_start(
        &json!({"target": {"cgroup": cgroup.path()}, "backend": "ftrace",
               "syscalls": ["openat"], "label": "fields"}),
    );
    assert!(workload::resume_and_wait(child).success());
    daemon.wait_for_session(&id, None, "5 events", |s| s["counters"]["delivered"] == 5);
    for event in daemon.events(&id) {
        assert_eq!(event["pid"], pid, "{event}");
        assert_eq!(event["tid"], pid, "{event}");
        assert_eq!(event["comm"], "syscall_loop", "{event}");
        assert_eq!(event["syscall"], "openat", "{event}");
        assert_eq!(event["ret"], -2, "{event}");
        // The fourth argument is the mode the workload passes.
        assert_eq!(event["args"][3], 0o644, "{event}");
        assert_eq!(event["cgroup_id"], cgroup.id(), "{event}");
        // ftrace hands over the path's address, not its text.
        assert_eq!(event["path_unavailable"], true, "{event}");
        assert!(event["duration_ns"].as_u64().unwrap() > 0, "{event}");
    }
}

#[test]
fn ftrace_traces_docker_exec_processes() {
    require_root();
    let container = TestContainer::run("ftrace-exec", &[]);
    let daemon = Daemon::start(&[]);
    let id = daemon.create_and_start(
        &json!({"target": {"container": container.name}, "backend": "ftrace",
               "syscalls": ["getppid"]}),
    );
    assert!(instance_exists(&id));
    for calls in [1000u64, 700] {
        let before = daemon.get(&format!("/v1/sessions/{id}"))["counters"]["delivered"]
            .as_u64()
            .unwrap();
        container.exec_workload(&["getppid", &calls.to_string()]);
        let session = daemon.wait_for_session(&id, None, "the exec'd workload's calls", |s| {
            s["counters"]["delivered"].as_u64().unwrap() == before + calls
        });
        assert_eq!(session["counters"]["dropped"], 0, "{session}");
    }
    let events = daemon.events(&id);
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| e["comm"] == "syscall_loop")
        .collect();
    assert_eq!(ours.len(), 1700, "every call of both exec'd workloads");
    for event in ours {
        assert_eq!(event["container"]["id"], container.id.as_str(), "{event}");
    }
    // Each exec joined the container's cgroup from outside (runc's set-up, before the
    // workload's exec, ran untraced for a while): the session counts those late joins.
    let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200);
    assert!(
        stopped["counters"]["late_joins"].as_u64().unwrap() >= 2,
        "{stopped}"
    );
    assert!(daemon.log().contains("late_joins="), "{}", daemon.log());
    assert!(!instance_exists(&id));
}

#[test]
fn a_daemon_without_ebpf_runs_sessions_on_ftrace() {
    require_root();
    let before = loaded_tracerd_programs();
    let daemon = Daemon::start(&["--no-ebpf"]);
    assert_eq!(
        loaded_tracerd_programs(),
        before,
        "--no-ebpf loads no program"
    );
    let health = daemon.get("/healthz");
    assert_eq!(health["backend"], "ftrace", "{health}");
    assert_eq!(health["backends"]["ebpf"]["available"], false, "{health}");
    assert_eq!(health["backends"]["ftrace"]["available"], true, "{health}");

    let cgroup = TestCgroup::create("no-ebpf");
    // Asking for eBPF is refused, naming why.
    let (status, body) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"cgroup": cgroup.path()}, "backend": "ebpf"})),
        None,
    );
    assert_eq!(
        (status, &body["error"]),
        (422, &json!("backend_unavailable")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("--no-ebpf"),
        "{body}"
    );

    let child = workload::spawn_in(&cgroup, &["pause-stdin", "1", "getppid", "2500"]);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(100));
    let id = daemon
        .create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}));
    let session = daemon.get(&format!("/v1/sessions/{id}"));
    assert_eq!(session["backend_in_use"], "ftrace", "{session}");
    assert!(
        session["backend_reason"]
            .as_str()
            .unwrap()
            .contains("eBPF is unavailable"),
        "{session}"
    );
    assert!(workload::resume_and_wait(child).success());
    let session = daemon.wait_for_session(&id, None, "2500 events", |s| {
        s["counters"]["delivered"] == 2500
    });
    assert_eq!(session["counters"]["matched"], 2500, "{session}");
    assert!(daemon.events(&id).iter().all(|e| e["pid"] == pid));
}

#[test]
fn a_daemon_that_cannot_load_ebpf_falls_back_to_ftrace() {
    require_root();
    // Root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN: the kernel refuses the programs.
    let daemon = Daemon::start_without_capabilities(&[], &["bpf", "perfmon", "sys_admin"]);
    let health = daemon.get("/healthz");
    assert_eq!(health["backend"], "ftrace", "{health}");
    let reason = health["backends"]["ebpf"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("permission denied"), "{health}");
    assert!(
        daemon.log().contains("eBPF is unavailable"),
        "{}",
        daemon.log()
    );

    let cgroup = TestCgroup::create("fallback");
    let child = workload::spawn_in(&cgroup, &["pause-stdin", "1", "getppid", "1500"]);
    std::thread::sleep(Duration::from_millis(100));
    let id = daemon
        .create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}));
    let session = daemon.get(&format!("/v1/sessions/{id}"));
    assert_eq!(session["backend_in_use"], "ftrace", "{session}");
    assert_eq!(
        session["backend_reason"],
        format!("eBPF is unavailable: {reason}"),
        "{session}"
    );
    assert!(workload::resume_and_wait(child).success());
    let session = daemon.wait_for_session(&id, None, "1500 events", |s| {
        s["counters"]["delivered"] == 1500
    });
    assert_eq!(session["counters"]["matched"], 1500, "{session}");
}

#[test]
fn a_small_ftrace_buffer_counts_the_syscalls_it_drops_exactly() {
    require_root();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("ftrace-drops");
    let calls = 300_000u64;
    // In the cgroup before the session starts (a thread joining later is traced from when
    // tracerd sees the join: see the late-join test), waiting on stdin.
    let paused = workload::spawn_in(
        &cgroup,
        &["pause-stdin", "1", "getppid", &calls.to_string()],
    );
    let id = daemon.create_and_start(
        &json!({"target": {"cgroup": cgroup.path()}, "backend": "ftrace",
               "syscalls": ["getppid"], "limits": {"ftrace_buffer_kb": 64}}),
    );
    assert!(workload::resume_and_wait(paused).success());
    let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200, "{stopped}");
    let counters = &stopped["counters"];
    let (matched, delivered, dropped) = (
        counters["matched"].as_u64().unwrap(),
        counters["delivered"].as_u64().unwrap(),
        counters["dropped"].as_u64().unwrap(),
    );
    assert!(
        dropped > 0,
        "a 64 KiB buffer cannot hold a burst of {calls} calls: {stopped}"
    );
    assert_eq!(delivered + dropped, matched, "{stopped}");
    // Lost events are counted in syscalls (two events each), not one syscall per event.
    assert_eq!(matched, calls, "{stopped}");
    assert_eq!(counters["late_joins"], 0, "{stopped}");
    assert!(delivered < calls, "{stopped}");
    assert!(!instance_exists(&id), "stop removes the instance");
    // Out-of-range sizes are refused.
    let (status, body) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"cgroup": cgroup.path()}, "limits": {"ftrace_buffer_kb": 1}})),
        None,
    );
    assert_eq!(
        (status, &body["error"]),
        (422, &json!("invalid_field")),
        "{body}"
    );
}

/// `sh -c 'echo $$ > CG/cgroup.procs; exec syscall_loop getppid 100'`, `cycles` times, in a
/// getppid session on `backend`; the session when stopped.
fn short_lived_joiners(daemon: &Daemon, backend: &str, cycles: usize) -> Value {
    let cgroup = TestCgroup::create(&format!("joiners-{backend}"));
    let id = daemon.create_and_start(&json!({"target": {"cgroup": cgroup.path()},
        "backend": backend, "syscalls": ["getppid"]}));
    let script = format!(
        "echo $$ > {}/cgroup.procs; exec {} getppid 100",
        cgroup.path().display(),
        workload::path().display()
    );
    for _ in 0..cycles {
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200, "{stopped}");
    stopped
}

#[test]
fn threads_that_join_a_cgroup_late_are_counted_with_how_late_never_silently_missed() {
    require_root();
    let daemon = Daemon::start(&[]);
    let cycles = 20;
    // eBPF filters by cgroup in the kernel: every call of every joiner, no late join.
    let ebpf = short_lived_joiners(&daemon, "ebpf", cycles);
    let counters = &ebpf["counters"];
    assert_eq!(counters["matched"], 100 * cycles as u64, "{ebpf}");
    assert_eq!(counters["late_joins"], 0, "{ebpf}");
    // ftrace follows joins by thread, from when it sees them: each joiner is counted as a
    // late join, with how late, whether it was caught in time or exited first.
    let ftrace = short_lived_joiners(&daemon, "ftrace", cycles);
    let counters = &ftrace["counters"];
    assert_eq!(counters["late_joins"], cycles as u64, "{ftrace}");
    let max_delay = counters["late_join_max_delay_us"].as_u64().unwrap();
    let total_delay = counters["late_join_delay_us"].as_u64().unwrap();
    assert!(max_delay > 0 && total_delay >= max_delay, "{ftrace}");
    assert!(
        counters["matched"].as_u64().unwrap() <= 100 * cycles as u64,
        "{ftrace}"
    );
    assert_eq!(counters["matched"], counters["delivered"], "{ftrace}");
}

#[test]
fn ftrace_instances_are_removed_after_stop_delete_and_a_crash() {
    require_root();
    let mut daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("ftrace-cleanup");
    // Both workloads wait in the cgroup, so each run of the session finds them there.
    let first = workload::spawn_in(&cgroup, &["pause-stdin", "1", "getppid", "100"]);
    let second = workload::spawn_in(&cgroup, &["pause-stdin", "1", "getppid", "50"]);
    std::thread::sleep(Duration::from_millis(100));
    let id = daemon.create_and_start(
        &json!({"target": {"cgroup": cgroup.path()}, "backend": "ftrace", "syscalls": ["getppid"]}),
    );
    assert!(instance_exists(&id));
    assert!(workload::resume_and_wait(first).success());
    daemon.wait_for_session(&id, None, "100 events", |s| {
        s["counters"]["delivered"] == 100
    });
    // Counters are saved every 250 ms: let them be saved before the crash.
    std::thread::sleep(Duration::from_millis(600));

    // kill -9: the instance outlives the daemon; the next start removes it and the session
    // runs again in a new one.
    daemon.restart_after(libc::SIGKILL);
    assert!(
        daemon
            .log()
            .contains("removed a tracefs instance left by an earlier tracerd"),
        "{}",
        daemon.log()
    );
    let session = daemon.wait_for_session(&id, None, "the session running again", |s| {
        s["status"] == "running" && s["runs"] == 2
    });
    assert_eq!(session["backend_in_use"], "ftrace");
    assert!(instance_exists(&id));
    assert!(workload::resume_and_wait(second).success());
    daemon.wait_for_session(&id, None, "150 events", |s| {
        s["counters"]["delivered"] == 150
    });

    let (status, _) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200);
    assert!(!instance_exists(&id), "stop removes the instance");
    let (status, _) = daemon.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
    assert_eq!(status, 200);
    assert!(instance_exists(&id));
    let (status, _) = daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!(status, 204);
    assert!(!instance_exists(&id), "delete removes the instance");
    // No session needs the join watcher any more: nothing of tracerd's is left.
    assert_eq!(tracerd_instances(), Vec::<String>::new());

    // A clean shutdown with a running session removes its instance too.
    let id =
        daemon.create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "backend": "ftrace"}));
    assert!(instance_exists(&id));
    daemon.stop_with(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(tracerd_instances(), Vec::<String>::new());
}
