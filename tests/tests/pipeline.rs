//! The whole daemon keeps up with the kernel: a full-speed syscall loop in a traced cgroup,
//! recorded by the release daemon (what users run) with default settings and the event log
//! on, loses nothing, and its download holds every call. How long it takes is the
//! benchmark's business (`cargo xtask bench pipeline`), not this test's.
use serde_json::json;
use tracer_tests::{bench::getppid_loop_in, cgroup::TestCgroup, daemon::Daemon, require_root};

const CALLS: u64 = 5_000_000;

#[test]
fn a_five_million_call_burst_is_recorded_whole_and_downloads_whole() {
    require_root();
    let cgroup = TestCgroup::create("pipeline-burst");
    let daemon = Daemon::start_release(&[]);
    let id = daemon.create_and_start(&json!({"target": {"cgroup": cgroup.path()}}));
    let looped = getppid_loop_in(&cgroup, CALLS)
        .status()
        .expect("running the loop");
    assert!(looped.success());
    let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200, "{stopped}");
    let counters = &stopped["counters"];
    // Where drops happened, should there be any: the kernel's rings or a session's queue.
    let drops = daemon
        .get_text("/metrics")
        .lines()
        .filter(|line| line.contains("dropped") && !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(counters["dropped"], 0, "{stopped}\n{drops}");
    let delivered = counters["delivered"].as_u64().expect("delivered");
    assert_eq!(counters["matched"], delivered, "{stopped}");
    // The loop's own start-up and exit make a few more calls than its getppid.
    assert!(delivered >= CALLS, "{stopped}");

    let mut getppid = 0u64;
    let lines = daemon.each_event_line(&id, "", |line| {
        if line.contains(r#""syscall":"getppid""#) {
            getppid += 1;
        }
    });
    assert_eq!(lines, delivered);
    assert_eq!(getppid, CALLS);
    // The same, filtered by the daemon: the filter sees every record too.
    let filtered = daemon.each_event_line(&id, "?syscall=getppid", |line| {
        assert!(line.contains(r#""syscall":"getppid""#), "{line}");
    });
    assert_eq!(filtered, CALLS);
}
