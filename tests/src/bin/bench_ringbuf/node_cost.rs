//! The node-cost rows of `bench ringbuf`: what tracerd costs the processes it does not trace
//! (the real daemon idle, and with a session on another cgroup), how long the first
//! session's start takes (it attaches the programs), and what a target's subtree costs —
//! the per-cgroup cache against walking a cgroup's ancestors on every syscall.
use std::time::Instant;

use serde_json::{json, Value};
use tracer_daemon::{
    backend::{ebpf::EbpfOptions, Engine, EngineOptions},
    record::TraceFilter,
};
use tracer_tests::{
    bench::{getppid_loop, getppid_loop_in, median, timed},
    cgroup::TestCgroup,
    daemon::Daemon,
    workload,
};

use super::{ns_per_call, CALLS, RUNS};

/// Session starts timed per configuration (the median is reported).
const STARTS: usize = 15;
/// How deep below the root the "deep" untraced cgroup is (Kubernetes containers sit at 4–5).
const DEEP_LEVELS: usize = 5;

pub fn measure(runtime: &tokio::runtime::Runtime) -> Value {
    let (no_daemon, idle, first_start_ms, next_start_ms, elsewhere) = through_the_daemon();
    let cached = subtree_costs(runtime, true);
    let walked = subtree_costs(runtime, false);
    json!({
        "no_daemon_ns_per_call": no_daemon,
        "daemon_idle_ns_per_call": idle,
        "first_start_ms": first_start_ms,
        "next_start_ms": next_start_ms,
        "session_elsewhere_ns_per_call": elsewhere,
        "cached": cached,
        "walked": walked,
    })
}

/// The release daemon: an untraced loop while it idles (next to the same loop just before
/// it started and just after it stopped, this machine drifting) and while it runs a session
/// on another cgroup, and its session starts (first: programs attached by it; next: while
/// another session runs).
fn through_the_daemon() -> (f64, f64, f64, f64, f64) {
    let loop_ns = || timed(getppid_loop(CALLS)) as f64 / CALLS as f64;
    let mut no_daemon: Vec<f64> = (0..RUNS).map(|_| loop_ns()).collect();
    let mut daemon = Daemon::start(&[]);
    // Its start-up done (the programs' load and check).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let idle = ns_per_call(RUNS, || getppid_loop(CALLS), CALLS);

    let elsewhere = TestCgroup::create("node-elsewhere");
    let body = json!({
        "target": {"cgroup": elsewhere.path()},
        "syscalls": ["openat"],
    });
    let start = |daemon: &Daemon, body: &Value| -> (String, f64) {
        let (status, session) = daemon.call("POST", "/v1/sessions", Some(body), None);
        assert_eq!(status, 201, "{session}");
        let id = session["id"].as_str().expect("an id").to_owned();
        let started = Instant::now();
        let (status, answer) = daemon.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, 200, "{answer}");
        (id, ms)
    };
    let delete = |daemon: &Daemon, id: &str| {
        let (status, answer) = daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
        assert_eq!(status, 204, "{answer}");
    };
    let mut first = Vec::new();
    for _ in 0..STARTS {
        let (id, ms) = start(&daemon, &body);
        first.push(ms);
        delete(&daemon, &id);
        assert_eq!(daemon.get("/healthz")["programs_attached"], false);
    }
    // The one that stays running differs from the timed ones (the same target and filter
    // twice would be a duplicate).
    let mut kept_body = body.clone();
    kept_body["syscalls"] = json!(["openat", "close"]);
    let (kept, _) = start(&daemon, &kept_body);
    assert_eq!(daemon.get("/healthz")["programs_attached"], true);
    let mut next = Vec::new();
    for _ in 0..STARTS {
        let (id, ms) = start(&daemon, &body);
        next.push(ms);
        delete(&daemon, &id);
    }
    let outside = TestCgroup::create("node-outside");
    let session_elsewhere = ns_per_call(RUNS, || getppid_loop_in(&outside, CALLS), CALLS);
    delete(&daemon, &kept);
    daemon.stop_with(libc::SIGTERM, std::time::Duration::from_secs(10));
    no_daemon.extend((0..RUNS).map(|_| loop_ns()));
    (
        median(&mut no_daemon),
        idle,
        median(&mut first),
        median(&mut next),
        session_elsewhere,
    )
}

/// With a session tracing `openat` in another cgroup: an untraced loop in a cgroup
/// `DEEP_LEVELS` deep; with a session tracing every syscall of a target: the loop in the
/// target and in a child of it. `cache` picks the kernel's per-cgroup cache, or a walk of
/// the ancestors on every syscall.
fn subtree_costs(runtime: &tokio::runtime::Runtime, cache: bool) -> Value {
    let _guard = runtime.enter();
    let engine = Engine::start(&EngineOptions {
        ebpf: EbpfOptions {
            cgroup_cache: cache,
            ..EbpfOptions::default()
        },
        session_queue: 1 << 20,
        ..EngineOptions::default()
    })
    .expect("loading the engine");

    let elsewhere = TestCgroup::create("subtree-elsewhere");
    let (session, _events) = engine
        .start_session(&TraceFilter {
            cgroups: vec![elsewhere.id()],
            syscalls: Some(vec![workload::nr("openat")]),
            ..TraceFilter::default()
        })
        .expect("a session");
    let mut chain = vec![TestCgroup::create("deep")];
    while chain.len() < DEEP_LEVELS {
        let next = chain
            .last()
            .expect("a level")
            .child(&format!("l{}", chain.len() + 1));
        chain.push(next);
    }
    let deep = ns_per_call(
        RUNS,
        || getppid_loop_in(chain.last().expect("a level"), CALLS),
        CALLS,
    );
    runtime
        .block_on(engine.stop_session(session))
        .expect("stopping");
    while chain.pop().is_some() {}

    let target = TestCgroup::create("subtree-target");
    let child = target.child("child");
    let (session, mut events) = engine
        .start_session(&TraceFilter {
            cgroups: vec![target.id()],
            ..TraceFilter::default()
        })
        .expect("a session");
    let consumer = runtime.spawn(async move {
        let mut received = 0u64;
        while let Some(batch) = events.recv().await {
            received += batch.len() as u64;
        }
        received
    });
    let in_target = ns_per_call(RUNS, || getppid_loop_in(&target, CALLS), CALLS);
    let in_child = ns_per_call(RUNS, || getppid_loop_in(&child, CALLS), CALLS);
    let counters = runtime
        .block_on(engine.stop_session(session))
        .expect("stopping");
    drop(engine);
    let received = runtime.block_on(consumer).expect("consumer");
    assert_eq!(received, counters.delivered);
    let calls = 2 * RUNS as u64 * CALLS;
    assert!(
        counters.matched >= calls,
        "every traced getppid matched: {counters:?}"
    );
    let result = json!({
        "cache": cache,
        "untraced_deep_ns_per_call": deep,
        "traced_in_target_ns_per_call": in_target,
        "traced_in_child_ns_per_call": in_child,
        "matched": counters.matched,
        "delivered": counters.delivered,
        "dropped": counters.dropped(),
    });
    println!("subtree (cache: {cache}): {result}");
    result
}

/// The node-cost table, with ratios to the untraced loop and to the floor.
pub fn markdown(node: &Value, untraced: f64, floor: f64) -> String {
    let ns = |value: &Value| value.as_f64().expect("a number");
    let row = |name: &str, value: f64| {
        format!(
            "| {name} | {value:.0} ns | {:.2}× | {:.2}× |\n",
            value / untraced,
            value / floor
        )
    };
    let mut out = String::from(
        "\n### What tracerd costs the node, and a target's subtree\n\n\
         | configuration | ns/call | × untraced | × floor |\n|---|---|---|---|\n",
    );
    let no_daemon = ns(&node["no_daemon_ns_per_call"]);
    let idle = ns(&node["daemon_idle_ns_per_call"]);
    out.push_str(&row(
        "no daemon (runs just before it started and just after it stopped)",
        no_daemon,
    ));
    out.push_str(&format!(
        "| tracerd running, no session (nothing attached) | {idle:.0} ns | {:.2}× (**{:.2}×** the row above) | {:.2}× |\n",
        idle / untraced,
        idle / no_daemon,
        idle / floor
    ));
    out.push_str(&row(
        "tracerd with a session tracing `openat` in another cgroup; the loop outside it",
        ns(&node["session_elsewhere_ns_per_call"]),
    ));
    for (key, design) in [
        ("cached", "cached per cgroup (default)"),
        ("walked", "ancestors walked on every syscall"),
    ] {
        let costs = &node[key];
        out.push_str(&row(
            &format!("untraced loop {DEEP_LEVELS} levels deep, session elsewhere: {design}"),
            ns(&costs["untraced_deep_ns_per_call"]),
        ));
        out.push_str(&row(
            &format!("traced loop in the target cgroup: {design}"),
            ns(&costs["traced_in_target_ns_per_call"]),
        ));
        out.push_str(&row(
            &format!("traced loop in a child of the target: {design}"),
            ns(&costs["traced_in_child_ns_per_call"]),
        ));
    }
    out.push_str(&format!(
        "\nStarting a session through the API (`POST /v1/sessions/{{id}}/start`, medians of \
         {STARTS}): **{:.1} ms** for the first one, which attaches the programs; {:.1} ms while \
         another session runs.\n",
        ns(&node["first_start_ms"]),
        ns(&node["next_start_ms"]),
    ));
    out
}
