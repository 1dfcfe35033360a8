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
