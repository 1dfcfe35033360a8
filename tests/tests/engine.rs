//! The tracing engine against the real kernel: per-session filters evaluated in the kernel,
//! exact counts, path arguments, drop accounting, and slot reuse.
//!
//! Each test loads its own copy of the programs. Workloads run to completion before the
//! engine is flushed, so every record of theirs is in a ring by then: counts are exact.
use std::{collections::BTreeMap, sync::Arc};

use tracer_daemon::{
    backend::{ebpf::EbpfOptions, Engine, EngineOptions, EventReceiver},
    record::{Event, TraceFilter},
};
use tracer_tests::{cgroup::TestCgroup, require_root, workload};

const MISSING: &str = "/nonexistent/tracerd-workload";

fn engine(options: EngineOptions) -> Engine {
    Engine::start(&options).expect("loading the engine")
}

fn only_cgroup(cgroup: &TestCgroup) -> TraceFilter {
    TraceFilter {
        cgroups: vec![cgroup.id()],
        ..TraceFilter::default()
    }
}

fn syscalls(names: &[&str]) -> Option<Vec<u32>> {
    Some(names.iter().map(|name| workload::nr(name)).collect())
}

/// Everything queued for a session now.
fn received(events: &mut EventReceiver) -> Vec<Arc<Event>> {
    let mut all = Vec::new();
    while let Some(batch) = events.try_recv() {
        all.extend(batch.events().map(Arc::new));
    }
    all
}

/// Events counted by syscall name.
fn by_name(events: &[Arc<Event>]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for event in events {
        let name = tracer_daemon::record::syscalls::syscall_name(event.record.nr)
            .map_or_else(|| format!("nr:{}", event.record.nr), str::to_owned);
        *counts.entry(name).or_default() += 1;
    }
    counts
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|&(name, n)| (name.to_owned(), n))
        .collect()
}

#[tokio::test]
async fn two_sessions_on_one_cgroup_each_get_exactly_their_own_syscalls() {
    require_root();
    let engine = engine(EngineOptions::default());
    let cgroup = TestCgroup::create("two-sessions");
    let (a, mut a_events) = engine
        .start_session(&TraceFilter {
            syscalls: syscalls(&["getppid"]),
            ..only_cgroup(&cgroup)
        })
        .unwrap();
    let (b, mut b_events) = engine
        .start_session(&TraceFilter {
            syscalls: syscalls(&["getpid", "openat"]),
            ..only_cgroup(&cgroup)
        })
        .unwrap();

    let (pid, status) = workload::run_in(
        &cgroup,
        &["getppid", "500", "getpid", "300", "openat-missing", "200"],
    );
    assert!(status.success());
    engine.flush().await;

    let a_received = received(&mut a_events);
    let b_received = received(&mut b_events);
    assert_eq!(by_name(&a_received), counts(&[("getppid", 500)]));
    assert_eq!(
        by_name(&b_received),
        counts(&[("getpid", 300), ("openat", 200)])
    );
    for event in a_received.iter().chain(&b_received) {
        assert_eq!(event.record.tgid, pid);
        assert_eq!(event.record.comm_bytes(), b"syscall_loop");
        assert_eq!(event.record.cgroup_id, cgroup.id());
    }
    for event in b_received
        .iter()
        .filter(|e| e.record.nr == workload::nr("openat"))
    {
        assert_eq!(event.record.ret, -i64::from(libc::ENOENT));
        assert_eq!(event.path.as_deref(), Some(MISSING));
        // openat(AT_FDCWD, path, O_RDONLY, 0644): the flags and the mode (the fourth argument,
        // in r10 on x86_64) come from the right registers.
        assert_eq!(event.record.args[0] as i32, libc::AT_FDCWD);
        assert_eq!(event.record.args[2], libc::O_RDONLY as u64);
        assert_eq!(event.record.args[3], 0o644);
    }
    let a_counters = engine.stop_session(a).await.unwrap();
    let b_counters = engine.stop_session(b).await.unwrap();
    assert_eq!(
        (
            a_counters.matched,
            a_counters.delivered,
            a_counters.dropped()
        ),
        (500, 500, 0)
    );
    assert_eq!(
        (
            b_counters.matched,
            b_counters.delivered,
            b_counters.dropped()
        ),
        (500, 500, 0)
    );
}

#[tokio::test]
async fn a_tgid_condition_admits_only_the_named_process() {
    require_root();
    let engine = engine(EngineOptions::default());
    let cgroup = TestCgroup::create("tgid");
    // Both wait on stdin, so their pids are known before they make the measured calls.
    let chosen = workload::spawn_in(&cgroup, &["pause-stdin", "1", "getppid", "400"]);
    let other = workload::spawn_in(&cgroup, &["pause-stdin", "1", "getppid", "400"]);
    let chosen_pid = chosen.id();
    let (session, mut events) = engine
        .start_session(&TraceFilter {
            syscalls: syscalls(&["getppid"]),
            tgids: Some(vec![chosen_pid]),
            ..only_cgroup(&cgroup)
        })
        .unwrap();

    assert!(workload::resume_and_wait(chosen).success());
    assert!(workload::resume_and_wait(other).success());
    engine.flush().await;

    let events = received(&mut events);
    assert_eq!(events.len(), 400);
    assert!(events.iter().all(|event| event.record.tgid == chosen_pid));
    let counters = engine.stop_session(session).await.unwrap();
    assert_eq!((counters.matched, counters.delivered), (400, 400));
}

#[tokio::test]
async fn failed_only_records_only_calls_that_fail() {
    require_root();
    let engine = engine(EngineOptions::default());
    let cgroup = TestCgroup::create("failed-only");
    let (session, mut events) = engine
        .start_session(&TraceFilter {
            failed_only: true,
            ..only_cgroup(&cgroup)
        })
        .unwrap();

    let (_, status) = workload::run_in(
        &cgroup,
        &[
            "getppid",
            "300",
            "openat-missing",
            "250",
            "write-null",
            "100",
        ],
    );
    assert!(status.success());
    engine.flush().await;

    let events = received(&mut events);
    // The workload's only failing calls are the 250 openat of a missing path.
    assert_eq!(by_name(&events), counts(&[("openat", 250)]));
    assert!(events
        .iter()
        .all(|event| event.record.ret == -i64::from(libc::ENOENT)));
    let counters = engine.stop_session(session).await.unwrap();
    assert_eq!((counters.matched, counters.delivered), (250, 250));
}

#[tokio::test]
async fn a_process_outside_every_traced_cgroup_produces_nothing() {
    require_root();
    let engine = engine(EngineOptions::default());
    let traced = TestCgroup::create("traced");
    let untraced = TestCgroup::create("untraced");
    let (session, mut events) = engine.start_session(&only_cgroup(&traced)).unwrap();

    assert!(workload::run_in(&untraced, &["getppid", "1000"])
        .1
        .success());
    assert!(workload::run(&["getppid", "1000"]).1.success());
    engine.flush().await;

    assert!(received(&mut events).is_empty());
    let counters = engine.stop_session(session).await.unwrap();
    assert_eq!(counters.matched, 0);
}

#[tokio::test]
async fn path_arguments_are_read_in_the_kernel_and_long_ones_flagged_truncated() {
    require_root();
    let engine = engine(EngineOptions::default());
    let cgroup = TestCgroup::create("paths");
    let (session, mut events) = engine
        .start_session(&TraceFilter {
            syscalls: syscalls(&["execve", "openat"]),
            ..only_cgroup(&cgroup)
        })
        .unwrap();

    assert!(workload::run_in(
        &cgroup,
        &[
            "openat-missing",
            "3",
            "openat-long",
            "2",
            "openat-null",
            "1"
        ]
    )
    .1
    .success());
    engine.flush().await;

    let events = received(&mut events);
    assert_eq!(by_name(&events), counts(&[("execve", 1), ("openat", 6)]));
    let execve = events
        .iter()
        .find(|e| e.record.nr == workload::nr("execve"))
        .unwrap();
    assert_eq!(
        execve.path.as_deref(),
        Some(workload::path().to_str().unwrap())
    );
    assert_eq!(execve.record.ret, 0);
    let openat: Vec<&Arc<Event>> = events
        .iter()
        .filter(|e| e.record.nr == workload::nr("openat"))
        .collect();
    for short in &openat[..3] {
        assert_eq!(short.path.as_deref(), Some(MISSING));
        assert!(!short.path_truncated());
    }
    // A NULL path pointer: no path, flagged unreadable, not counted as a lost capture.
    let null = openat[5];
    assert_eq!(null.path, None);
    assert!(null.path_unavailable());
    let captured = tracer_daemon::record::captured::Captured::parse(&null.data);
    assert!(captured.strings[1].unwrap().unreadable);
    assert_eq!(null.record.ret, -i64::from(libc::EFAULT));
    assert_eq!(engine.kernel_counters().unwrap().captures_lost, 0);
    for long in &openat[3..5] {
        let path = long.path.as_deref().unwrap();
        assert!(long.path_truncated(), "{path}");
        assert_eq!(path.len(), tracer_common::PATH_MAX_LEN - 1);
        assert!(path.starts_with("/nonexistent/aaaa"));
    }
    engine.stop_session(session).await.unwrap();
}

#[tokio::test]
async fn a_tiny_ring_and_a_blocked_consumer_count_every_drop() {
    require_root();
    const QUEUE: usize = 16;
    let engine = engine(EngineOptions {
        ebpf: EbpfOptions {
            // One page holds about 30 records: the kernel must drop most of a tight loop.
            ring_bytes: 4096,
            ..EbpfOptions::default()
        },
        session_queue: QUEUE,
        ..EngineOptions::default()
    });
    let cgroup = TestCgroup::create("drops");
    // The consumer never reads: everything past its queue is a userspace drop.
    let (session, _blocked_consumer) = engine.start_session(&only_cgroup(&cgroup)).unwrap();

    assert!(workload::run_in(&cgroup, &["getppid", "100000"])
        .1
        .success());
    engine.flush().await;

    let counters = engine.stop_session(session).await.unwrap();
    assert!(counters.matched > 100_000, "{counters:?}");
    assert_eq!(counters.delivered, QUEUE as u64, "{counters:?}");
    assert!(counters.dropped_kernel > 0, "{counters:?}");
    assert!(counters.dropped_userspace > 0, "{counters:?}");
    assert_eq!(
        counters.delivered + counters.dropped_kernel + counters.dropped_userspace,
        counters.matched,
        "{counters:?}"
    );
}

#[tokio::test]
async fn a_stopped_session_frees_its_slot_and_the_next_user_sees_none_of_its_filters() {
    require_root();
    let engine = engine(EngineOptions::default());
    let old_cgroup = TestCgroup::create("slot-old");
    let new_cgroup = TestCgroup::create("slot-new");
    let (old, _old_events) = engine
        .start_session(&TraceFilter {
            cgroups: vec![old_cgroup.id()],
            syscalls: syscalls(&["getpid"]),
            tgids: Some(vec![1]),
            failed_only: true,
            ..TraceFilter::default()
        })
        .unwrap();
    let old_slot = old.slot().expect("an eBPF session");
    engine.stop_session(old).await.unwrap();

    let (new, mut events) = engine.start_session(&only_cgroup(&new_cgroup)).unwrap();
    assert_eq!(new.slot(), Some(old_slot), "the freed slot is reused");

    // The old session's cgroup is no longer traced by anybody.
    assert!(workload::run_in(&old_cgroup, &["getpid", "100"])
        .1
        .success());
    // The new session has no syscall set, tgid or failed-only condition left over.
    let (pid, status) = workload::run_in(&new_cgroup, &["getppid", "700", "getpid", "100"]);
    assert!(status.success());
    engine.flush().await;

    let events = received(&mut events);
    assert!(events
        .iter()
        .all(|e| e.record.tgid == pid && e.record.cgroup_id == new_cgroup.id()));
    let names = by_name(&events);
    assert_eq!(names["getppid"], 700);
    assert_eq!(names["getpid"], 100);
    assert_eq!(names["execve"], 1);
    assert_eq!(names["exit_group"], 1);
    let counters = engine.stop_session(new).await.unwrap();
    assert_eq!(counters.matched, events.len() as u64);
    assert_eq!(counters.delivered, events.len() as u64);
}

/// Both ring layouts deliver the same exact counts, with records from both CPUs.
async fn exact_counts_with_rings(per_cpu_rings: bool) {
    require_root();
    let engine = engine(EngineOptions {
        ebpf: EbpfOptions {
            per_cpu_rings,
            ..EbpfOptions::default()
        },
        ..EngineOptions::default()
    });
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(engine.ring_count(), if per_cpu_rings { cpus } else { 1 });
    let cgroup = TestCgroup::create("rings");
    let (session, mut events) = engine
        .start_session(&TraceFilter {
            syscalls: syscalls(&["getppid", "openat"]),
            ..only_cgroup(&cgroup)
        })
        .unwrap();
    // Two processes at once, so both CPUs write records.
    let first = workload::spawn_in(
        &cgroup,
        &[
            "pause-stdin",
            "1",
            "getppid",
            "5000",
            "openat-missing",
            "10",
        ],
    );
    let second = workload::spawn_in(
        &cgroup,
        &[
            "pause-stdin",
            "1",
            "getppid",
            "5000",
            "openat-missing",
            "10",
        ],
    );
    assert!(workload::resume_and_wait(first).success());
    assert!(workload::resume_and_wait(second).success());
    engine.flush().await;

    let events = received(&mut events);
    assert_eq!(
        by_name(&events),
        counts(&[("getppid", 10_000), ("openat", 20)])
    );
    assert!(events
        .iter()
        .filter(|e| e.record.nr == workload::nr("openat"))
        .all(|e| e.path.as_deref() == Some(MISSING)));
    let counters = engine.stop_session(session).await.unwrap();
    assert_eq!(
        (counters.matched, counters.delivered, counters.dropped()),
        (10_020, 10_020, 0)
    );
}

#[tokio::test]
async fn per_cpu_rings_give_exact_counts() {
    exact_counts_with_rings(true).await;
}

#[tokio::test]
async fn a_shared_ring_gives_the_same_exact_counts() {
    exact_counts_with_rings(false).await;
}

// Multi-threaded, so the drain task keeps the kernel ring moving while the workload runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_consumer_costs_only_its_own_session() {
    require_root();
    // Fewer records than one ring holds: even a starved drain task cannot cause kernel drops.
    const CALLS: u64 = 50_000;
    const BLOCKED_QUEUE: usize = 16;
    let engine = engine(EngineOptions::default());
    let cgroup = Arc::new(TestCgroup::create("blocked"));
    let getppid_only = TraceFilter {
        syscalls: syscalls(&["getppid"]),
        ..only_cgroup(&cgroup)
    };
    // One consumer never reads; the other has room for everything, so whatever it misses
    // could only be the blocked session's doing.
    let (blocked, _never_read) = engine
        .start_session_with_queue(&getppid_only, BLOCKED_QUEUE)
        .unwrap();
    let (healthy, mut events) = engine
        .start_session_with_queue(&getppid_only, CALLS as usize)
        .unwrap();

    let workload_cgroup = cgroup.clone();
    let status = tokio::task::spawn_blocking(move || {
        workload::run_in(&workload_cgroup, &["getppid", &CALLS.to_string()]).1
    })
    .await
    .unwrap();
    assert!(status.success());
    engine.flush().await;

    let blocked = engine.stop_session(blocked).await.unwrap();
    let healthy = engine.stop_session(healthy).await.unwrap();
    // The blocked session filled its queue and counted every record after that as its drop...
    assert_eq!(
        (blocked.matched, blocked.delivered),
        (CALLS, BLOCKED_QUEUE as u64),
        "{blocked:?}"
    );
    assert_eq!(
        blocked.dropped_userspace,
        CALLS - BLOCKED_QUEUE as u64,
        "{blocked:?}"
    );
    // ...and the other session on the same cgroup got every record.
    assert_eq!(
        (healthy.matched, healthy.delivered, healthy.dropped()),
        (CALLS, CALLS, 0),
        "{healthy:?}"
    );
    assert_eq!(received(&mut events).len() as u64, CALLS);
}
