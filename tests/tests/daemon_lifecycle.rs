//! tracerd as an operator runs it: it serves, it stops cleanly on SIGINT and SIGTERM, and
//! it leaves nothing loaded in the kernel behind.
use std::time::Duration;

use tracer_tests::{
    assert_programs_unloaded, attached_programs, daemon::Daemon, loaded_tracerd_programs,
    require_root,
};

fn program_ids(health: &serde_json::Value) -> Vec<u32> {
    health["program_ids"]
        .as_array()
        .expect("program_ids in /healthz")
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect()
}

fn stops_cleanly_on(signal: i32) {
    require_root();
    let before = loaded_tracerd_programs();
    let mut daemon = Daemon::start(&[]);

    let health = daemon.get("/healthz");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["backend"], "ebpf");
    let ours = program_ids(&health);
    assert_eq!(ours.len(), 3, "{health}");
    // Idle: loaded, but nothing attached (the node's syscalls pay nothing).
    assert_eq!(health["programs_attached"], false, "{health}");
    assert_eq!(attached_programs(&ours), Vec::<u32>::new());
    let loaded = loaded_tracerd_programs();
    for id in &ours {
        assert!(
            loaded.contains(id),
            "program {id} is not loaded in the kernel: {loaded:?}"
        );
        assert!(!before.contains(id));
    }

    let status = daemon.stop_with(signal, Duration::from_secs(10));
    assert!(
        status.success(),
        "tracerd exited with {status}; log:\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("eBPF programs detached"),
        "{}",
        daemon.log()
    );
    assert_programs_unloaded(&ours);
}

#[test]
fn sigterm_stops_the_daemon_and_detaches_its_programs() {
    stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_stops_the_daemon_and_detaches_its_programs() {
    stops_cleanly_on(libc::SIGINT);
}

#[test]
fn kill_9_leaves_no_program_behind() {
    require_root();
    let mut daemon = Daemon::start(&[]);
    let health = daemon.get("/healthz");
    let ours = program_ids(&health);
    daemon.stop_with(libc::SIGKILL, Duration::from_secs(10));
    assert_programs_unloaded(&ours);
}

/// The pin directories of the daemon's data directory (see `tracer_daemon::pins`).
fn pinned_instances(daemon: &Daemon) -> Vec<std::path::PathBuf> {
    let dir = tracer_daemon::pins::node_dir(daemon.data_dir()).expect("a node id");
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default()
}

/// A session on `backend` killed (with the daemon) just after a burst of `calls` getppid the
/// pipeline is still working through, then resumed and stopped: its counters, and the
/// daemon (running again).
fn crash_under_load(backend: &str, calls: u64) -> (Daemon, serde_json::Value) {
    let cgroup = tracer_tests::cgroup::TestCgroup::create(&format!("crash-{backend}"));
    let mut daemon = Daemon::start(&[]);
    // In the cgroup before the session starts, waiting on stdin.
    let paused = tracer_tests::workload::spawn_in(
        &cgroup,
        &["pause-stdin", "1", "getppid", &calls.to_string()],
    );
    let id = daemon.create_and_start(&serde_json::json!({
        "target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"], "backend": backend
    }));
    assert!(tracer_tests::workload::resume_and_wait(paused).success());
    // What the kernel counted, what was written and what was saved all differ now.
    daemon.restart_after(libc::SIGKILL);
    daemon.wait_for_session(&id, None, "the session to run again", |s| s["runs"] == 2);
    let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200, "{stopped}");
    let counters = &stopped["counters"];
    let count = |name: &str| counters[name].as_u64().unwrap();
    assert_eq!(
        count("delivered") + count("dropped"),
        count("matched"),
        "{stopped}"
    );
    assert_eq!(
        daemon.each_event_line(&id, "", |_| {}),
        count("delivered"),
        "{stopped}"
    );
    // The crashed run's segment was finished when the daemon came back: every segment is
    // named with its number of events, and they add up to what was delivered.
    let segments = daemon.data_dir().join("sessions").join(&id);
    let mut in_segments = 0;
    for segment in std::fs::read_dir(&segments).unwrap().flatten() {
        let name = segment.file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".tlog") else {
            continue;
        };
        let (_, events) = stem
            .split_once('-')
            .unwrap_or_else(|| panic!("{name} was left unfinished"));
        in_segments += events.parse::<u64>().unwrap();
    }
    assert_eq!(in_segments, count("delivered"), "{stopped}");
    (daemon, stopped)
}

#[test]
fn a_crash_under_load_leaves_counters_that_reconcile_with_the_kernel_and_the_log() {
    require_root();
    let calls = 2_000_000u64;
    let (mut daemon, stopped) = crash_under_load("ebpf", calls);
    // Every call was made while the programs were attached: the kernel counted them all,
    // and the next daemon read its final count from the pinned counters.
    assert_eq!(stopped["counters"]["matched"], calls, "{stopped}");
    // The dead daemon's pins were removed once its run was settled; a clean stop removes
    // the new one's.
    assert_eq!(pinned_instances(&daemon).len(), 1);
    let status = daemon.stop_with(libc::SIGTERM, Duration::from_secs(20));
    assert!(status.success());
    assert!(
        pinned_instances(&daemon).is_empty(),
        "a clean stop removes its pins"
    );
}

#[test]
fn a_crash_under_load_on_ftrace_leaves_counters_that_reconcile_with_the_log() {
    require_root();
    // ftrace's counts live in the dead daemon's reader: matched is as last saved (never
    // below what the log holds, which may be nothing yet), and the rest reconciles exactly
    // (checked by `crash_under_load`).
    let (_daemon, stopped) = crash_under_load("ftrace", 300_000);
    let counters = &stopped["counters"];
    assert!(
        counters["matched"].as_u64() >= counters["delivered"].as_u64(),
        "{stopped}"
    );
}
