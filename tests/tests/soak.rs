//! Many session lifecycles (create, start, stop, delete) on the real daemon, on each
//! backend, and nothing left behind: no program attached, no file descriptor (maps, links,
//! tracefs files), no tracefs instance, no thread, and memory flat.
use std::time::{Duration, Instant};

use serde_json::json;
use tracer_tests::{attached_programs, cgroup::TestCgroup, daemon::Daemon, require_root};

/// What the daemon holds that a session could leak.
#[derive(Debug, PartialEq)]
struct Held {
    fds: usize,
    threads: usize,
    rss_kib: u64,
    instances: usize,
}

fn held(daemon: &Daemon) -> Held {
    let pid = daemon.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let instances = std::fs::read_dir("/sys/kernel/tracing/instances")
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("tracerd-"))
        .count();
    Held {
        fds,
        threads: field("Threads:") as usize,
        rss_kib: field("VmRSS:"),
        instances,
    }
}

fn lifecycles(daemon: &Daemon, cgroup: &TestCgroup, backend: &str, count: usize) {
    for _ in 0..count {
        let body = json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"],
                          "backend": backend});
        let id = daemon.create_and_start(&body);
        let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
        assert_eq!(status, 200, "{stopped}");
        let (status, _) = daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
        assert_eq!(status, 204);
    }
}

/// The daemon's holdings once idle again: the blocking pool's spare threads end after 10 s
/// idle, so wait (up to 20 s) for the thread count to come back to `threads`.
fn settled(daemon: &Daemon, threads: usize) -> Held {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = held(daemon);
        if now.threads <= threads || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn soak(backend: &str, count: usize) {
    require_root();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create(&format!("soak-{backend}"));
    // Warm up: the first sessions make what every later one reuses (the join watcher's
    // instance is made and removed with them; caches fill).
    lifecycles(&daemon, &cgroup, backend, 20);
    let before = settled(&daemon, usize::MAX);
    let started = Instant::now();
    lifecycles(&daemon, &cgroup, backend, count);
    let took = started.elapsed();
    let after = settled(&daemon, before.threads);
    eprintln!("{count} {backend} lifecycles in {took:?}: before {before:?}, after {after:?}");
    // Not more (an idle keep-alive connection, to the Docker engine say, may have closed).
    assert!(
        after.fds <= before.fds,
        "file descriptors left: {before:?} → {after:?}"
    );
    assert_eq!(after.instances, 0, "tracefs instances left");
    assert!(
        after.threads <= before.threads,
        "threads left: {before:?} → {after:?}"
    );
    // Flat: within 8 MiB (allocator slack), not growing with the sessions.
    assert!(
        after.rss_kib <= before.rss_kib + 8 * 1024,
        "memory grew: {before:?} → {after:?}"
    );
    let health = daemon.get("/healthz");
    assert_eq!(health["programs_attached"], false, "{health}");
    let ids: Vec<u32> = health["program_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect();
    assert!(
        attached_programs(&ids).is_empty(),
        "programs still attached"
    );
    assert_eq!(daemon.get("/v1/sessions")["sessions"], json!([]));
}

#[test]
fn a_thousand_ebpf_lifecycles_leave_nothing_behind() {
    soak("ebpf", 1000);
}

#[test]
fn two_hundred_ftrace_lifecycles_leave_nothing_behind() {
    soak("ftrace", 200);
}
