//! What an idle daemon costs and what a cgroup target covers, against the real kernel:
//! programs attached only while a session runs (checked with `bpftool`), a cgroup target
//! covering its whole subtree (on both backends), removed cgroups leaving nothing in the
//! kernel's cache, and exact counts while sessions come and go under load.
use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tracer_daemon::{
    backend::{Backend, Engine, EngineOptions, SessionOptions},
    record::{Event, TraceFilter},
};
use tracer_tests::{attached_programs, cgroup::TestCgroup, require_root, workload};

fn engine() -> Engine {
    Engine::start(&EngineOptions::default()).expect("loading the engine")
}

fn getppid_in(cgroup: &TestCgroup) -> TraceFilter {
    TraceFilter {
        cgroups: vec![cgroup.id()],
        syscalls: Some(vec![workload::nr("getppid")]),
        ..TraceFilter::default()
    }
}

fn drain(events: &mut tracer_daemon::backend::EventReceiver) -> Vec<Arc<Event>> {
    let mut all = Vec::new();
    while let Some(batch) = events.try_recv() {
        all.extend(batch.events().map(Arc::new));
    }
    all
}

fn by_cgroup(events: &[Arc<Event>]) -> BTreeMap<u64, u64> {
    let mut counts = BTreeMap::new();
    for event in events {
        *counts.entry(event.record.cgroup_id).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn programs_are_attached_only_while_an_ebpf_session_runs() {
    require_root();
    let engine = engine();
    let ids = engine.program_ids();
    assert_eq!(ids.len(), 3, "enter, exit and rmdir programs loaded");
    assert_eq!(
        attached_programs(&ids),
        Vec::<u32>::new(),
        "idle: nothing attached"
    );
    assert!(!engine.programs_attached());

    let cgroup = TestCgroup::create("attach");
    let (a, _a_events) = engine.start_session(&getppid_in(&cgroup)).unwrap();
    let mut attached = attached_programs(&ids);
    attached.sort_unstable();
    let mut all = ids.clone();
    all.sort_unstable();
    assert_eq!(attached, all, "a session runs: every program attached");
    let (b, _b_events) = engine.start_session(&getppid_in(&cgroup)).unwrap();
    engine.stop_session(a).await.unwrap();
    assert_eq!(attached_programs(&ids).len(), 3, "one session still runs");

    // An ftrace session needs no eBPF program.
    let (f, _f_events) = engine
        .start_session_with(
            &getppid_in(&cgroup),
            &SessionOptions {
                backend: Some(Backend::Ftrace),
                name: format!("attach-test-{}", std::process::id()),
                ..SessionOptions::default()
            },
        )
        .unwrap();
    engine.stop_session(b).await.unwrap();
    assert_eq!(
        attached_programs(&ids),
        Vec::<u32>::new(),
        "the last eBPF session stopped: nothing attached"
    );
    assert!(!engine.programs_attached());
    assert!(engine.cached_cgroups().is_empty(), "the cache is emptied");
    engine.stop_session(f).await.unwrap();

    // Again: the next first session attaches them again.
    let (c, mut c_events) = engine.start_session(&getppid_in(&cgroup)).unwrap();
    assert_eq!(attached_programs(&ids).len(), 3);
    assert!(workload::run_in(&cgroup, &["getppid", "250"]).1.success());
    engine.flush().await;
    assert_eq!(drain(&mut c_events).len(), 250);
    let counters = engine.stop_session(c).await.unwrap();
    assert_eq!((counters.matched, counters.delivered), (250, 250));
    assert_eq!(attached_programs(&ids), Vec::<u32>::new());
}

/// A cgroup target covers its descendants: a grandchild made before the start, a child made
/// after it; a sibling outside the target is not traced.
async fn subtree_counts(backend: Backend) {
    let engine = engine();
    let target = TestCgroup::create("subtree");
    let child = target.child("a");
    let grandchild = child.child("b");
    let sibling = TestCgroup::create("subtree-sibling");
    let (session, mut events) = engine
        .start_session_with(
            &getppid_in(&target),
            &SessionOptions {
                backend: Some(backend),
                name: format!("subtree-{}", std::process::id()),
                ..SessionOptions::default()
            },
        )
        .unwrap();
    let late = target.child("late");
    for (cgroup, calls) in [
        (&grandchild, 1000),
        (&late, 700),
        (&sibling, 300),
        (&target, 200),
    ] {
        let child =
            workload::spawn_in(cgroup, &["pause-stdin", "1", "getppid", &calls.to_string()]);
        // Let the ftrace backend see the join before the measured calls (eBPF needs no wait).
        if backend == Backend::Ftrace {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(workload::resume_and_wait(child).success());
    }
    engine.flush_session(&session).await;
    let events = drain(&mut events);
    let counts = by_cgroup(&events);
    assert_eq!(
        counts,
        BTreeMap::from([
            (target.id(), 200),
            (grandchild.id(), 1000),
            (late.id(), 700),
        ]),
        "{backend:?}: per-cgroup getppid counts (the sibling {} has none)",
        sibling.id()
    );
    let counters = engine.stop_session(session).await.unwrap();
    assert_eq!(
        (counters.matched, counters.delivered, counters.dropped()),
        (1900, 1900, 0),
        "{backend:?}"
    );
}

#[tokio::test]
async fn an_ebpf_cgroup_target_covers_its_whole_subtree() {
    require_root();
    subtree_counts(Backend::Ebpf).await;
}

#[tokio::test]
async fn an_ftrace_cgroup_target_covers_its_whole_subtree() {
    require_root();
    subtree_counts(Backend::Ftrace).await;
}

#[tokio::test]
async fn removed_child_cgroups_leave_nothing_in_the_kernel_cache() {
    require_root();
    const HOPS: u64 = 10_000;
    let engine = engine();
    let target = TestCgroup::create("stale");
    let (session, mut events) = engine.start_session(&getppid_in(&target)).unwrap();
    assert!(workload::run_in(&target, &["getppid", "1"]).1.success());
    let before: HashSet<u64> = engine.cached_cgroups().into_iter().collect();
    assert!(
        before.contains(&target.id()),
        "the target's own cgroup is cached once its process made a syscall"
    );

    let mut command = std::process::Command::new(workload::path());
    command
        .args(["cgroup-hop", &HOPS.to_string()])
        .env("SYSCALL_LOOP_CGROUP", target.path());
    workload::join_before_exec(&mut command, &target);
    assert!(command.status().expect("running cgroup-hop").success());
    engine.flush().await;

    let events = drain(&mut events);
    let hop_cgroups: HashSet<u64> = events
        .iter()
        .map(|event| event.record.cgroup_id)
        .filter(|&id| id != target.id())
        .collect();
    assert_eq!(
        events.len() as u64,
        HOPS + 1,
        "every getppid, one per child"
    );
    assert_eq!(
        hop_cgroups.len() as u64,
        HOPS,
        "each in its own child cgroup"
    );
    let after: HashSet<u64> = engine.cached_cgroups().into_iter().collect();
    let left: Vec<&u64> = after.intersection(&hop_cgroups).collect();
    assert!(
        left.is_empty(),
        "{} of {HOPS} removed cgroups are still cached",
        left.len()
    );
    assert!(
        after.len() <= before.len() + 16,
        "the cache grew from {} to {} entries",
        before.len(),
        after.len()
    );
    eprintln!(
        "cache entries: {} before, {} after {HOPS} child cgroups made and removed",
        before.len(),
        after.len()
    );
    let counters = engine.stop_session(session).await.unwrap();
    assert_eq!(counters.matched, HOPS + 1);
    assert!(engine.cached_cgroups().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_started_and_stopped_under_load_keep_exact_counts() {
    require_root();
    let engine = engine();
    let ids = engine.program_ids();
    let target = TestCgroup::create("churn");
    // A workload that runs for the whole test (killed at the end).
    let mut load = workload::spawn_in(&target, &["getppid", "1000000000"]);
    let mut sessions_with_events = 0;
    for round in 0..20 {
        let (session, mut events) = engine.start_session(&getppid_in(&target)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let counters = engine.stop_session(session).await.unwrap();
        let received = drain(&mut events).len() as u64;
        assert_eq!(
            counters.delivered + counters.dropped(),
            counters.matched,
            "round {round}: {counters:?}"
        );
        assert_eq!(received, counters.delivered, "round {round}: {counters:?}");
        if counters.matched > 0 {
            sessions_with_events += 1;
        }
        assert_eq!(
            attached_programs(&ids),
            Vec::<u32>::new(),
            "round {round}: detached after the last stop"
        );
    }
    load.kill().expect("stopping the load");
    let _ = load.wait();
    assert!(
        sessions_with_events >= 15,
        "the load was traced in {sessions_with_events} of 20 sessions"
    );
}
