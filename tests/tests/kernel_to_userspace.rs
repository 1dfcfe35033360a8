//! The first vertical slice: a syscall made in a traced cgroup travels from the kernel's
//! raw tracepoints through the ring buffer to the daemon, exactly once.
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::{cgroup::TestCgroup, daemon::Daemon, require_root, workload};

const CALLS: u64 = 1000;

/// The tally entry for `cgroup_id`, once its `exit_group` (the workload's last syscall) has
/// been delivered, so every earlier record of it has been too.
fn tally_after_exit(daemon: &Daemon, cgroup_id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tally = daemon.get("/v1/tally");
        let entry = tally["cgroups"]
            .as_array()
            .and_then(|cgroups| cgroups.iter().find(|c| c["cgroup_id"] == cgroup_id))
            .cloned();
        if let Some(entry) = entry {
            if entry["syscalls"]["exit_group"].as_u64() >= Some(1) {
                return tally;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no exit_group from cgroup {cgroup_id} within 10s; tally: {tally}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn getppid_calls_in_a_traced_cgroup_are_recorded_exactly_once() {
    require_root();
    let cgroup = TestCgroup::create("slice");
    let daemon = Daemon::start(&["--trace-cgroup", cgroup.path().to_str().unwrap()]);

    let (_, status) = workload::run(&["getppid", &CALLS.to_string()]);
    assert!(status.success());
    let (_, status) = workload::run_in(&cgroup, &["getppid", &CALLS.to_string()]);
    assert!(status.success());

    let tally = tally_after_exit(&daemon, cgroup.id());
    let cgroups = tally["cgroups"].as_array().unwrap();
    assert_eq!(
        cgroups.len(),
        1,
        "only the traced cgroup has records: {tally}"
    );
    let ours = &cgroups[0];
    assert_eq!(ours["cgroup_id"], cgroup.id());
    assert_eq!(ours["syscalls"]["getppid"], CALLS, "{tally}");
    assert_eq!(ours["syscalls"]["execve"], 1, "{tally}");
    assert_eq!(ours["syscalls"]["exit_group"], 1, "{tally}");
    // Nothing lost on the way: every matched syscall reached userspace.
    let counters = &tally["counters"];
    assert_eq!(counters["matched"], ours["total"], "{tally}");
    assert_eq!(counters["delivered"], ours["total"], "{tally}");
    assert_eq!(counters["dropped_kernel"], 0, "{tally}");
    assert_eq!(counters["dropped_userspace"], 0, "{tally}");
}

#[test]
fn the_same_workload_outside_every_traced_cgroup_produces_nothing() {
    require_root();
    let traced = TestCgroup::create("traced-idle");
    let untraced = TestCgroup::create("untraced");
    let daemon = Daemon::start(&["--trace-cgroup", traced.path().to_str().unwrap()]);

    let (_, status) = workload::run_in(&untraced, &["getppid", &CALLS.to_string()]);
    assert!(status.success());
    let (_, status) = workload::run(&["getppid", &CALLS.to_string()]);
    assert!(status.success());
    // A marker run in the traced cgroup: once its exit_group is in, the runs before it would
    // have been too, had they matched.
    let (_, status) = workload::run_in(&traced, &["getpid", "1"]);
    assert!(status.success());

    let tally = tally_after_exit(&daemon, traced.id());
    let cgroups = tally["cgroups"].as_array().unwrap();
    assert_eq!(cgroups.len(), 1, "{tally}");
    assert_eq!(cgroups[0]["cgroup_id"], traced.id());
    assert!(cgroups[0]["syscalls"].get("getppid").is_none(), "{tally}");
    assert_eq!(cgroups[0]["syscalls"]["getpid"], 1, "{tally}");
}
