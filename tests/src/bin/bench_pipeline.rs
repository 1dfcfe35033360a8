//! `cargo xtask bench pipeline`: the whole daemon keeping up with one busy process, against
//! the release build of tracerd driven through its API — a static getppid loop in a cgroup,
//! untraced, then traced with the event log by sessions on each backend (one session, then
//! four on the same cgroup). For each: ns per call, matched / delivered / dropped (kernel and
//! userspace apart), events recorded per second, the daemon's CPU per event and its peak
//! memory. Medians of a few runs; ratios to the untraced loop.
use std::time::Instant;

use serde_json::{json, Value};
use tracer_tests::{
    bench::{getppid_loop, getppid_loop_in, machine, median, publish, timed},
    cgroup::TestCgroup,
    daemon::Daemon,
    require_root,
};

/// Calls per run (the burst is 3 M at full speed).
fn calls() -> u64 {
    std::env::var("BENCH_PIPELINE_CALLS")
        .ok()
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(3_000_000)
}

const RUNS: usize = 3;

/// The daemon's CPU seconds (user + system) and peak resident memory (MiB) so far: the
/// high-water mark over its life, so a row shows the most of it and the rows before.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (cpu, peak_kib / 1024.0)
}

/// The kernel's count of records its rings could not take, from `/metrics`.
fn ring_drops(daemon: &Daemon) -> u64 {
    daemon
        .get_text("/metrics")
        .lines()
        .find_map(|line| line.strip_prefix("tracerd_ring_dropped_full_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// One measured run: `sessions` sessions on `backend` over a fresh cgroup, the loop in it.
fn traced_run(daemon: &Daemon, backend: &str, sessions: usize) -> Value {
    let cgroup = TestCgroup::create("bench-pipeline");
    // Different syscall sets: the same target and filter twice would be refused.
    let filters = [
        json!(null),
        json!(["getppid"]),
        json!(["getppid", "getpid"]),
        json!(["getppid", "read"]),
    ];
    let ids: Vec<String> = filters[..sessions]
        .iter()
        .map(|syscalls| {
            daemon.create_and_start(&json!({"target": {"cgroup": cgroup.path()},
                "syscalls": syscalls, "backend": backend}))
        })
        .collect();
    let (cpu_before, _) = usage(daemon.pid());
    let ring_before = ring_drops(daemon);
    let started = Instant::now();
    let loop_ns = timed(getppid_loop_in(&cgroup, calls()));
    let mut totals = (0u64, 0u64, 0u64);
    for id in &ids {
        // Recording is over once every matched event is delivered or dropped.
        let session = daemon.wait_for_session(id, None, "the run recorded", |s| {
            let c = &s["counters"];
            c["delivered"].as_u64().unwrap_or(0) + c["dropped"].as_u64().unwrap_or(0)
                >= c["matched"].as_u64().unwrap_or(1)
        });
        let c = &session["counters"];
        totals.0 += c["matched"].as_u64().unwrap_or(0);
        totals.1 += c["delivered"].as_u64().unwrap_or(0);
        totals.2 += c["dropped"].as_u64().unwrap_or(0);
    }
    let recorded_in = started.elapsed().as_secs_f64();
    let (cpu_after, peak_mib) = usage(daemon.pid());
    let ring = ring_drops(daemon) - ring_before;
    for id in &ids {
        daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
    }
    let (matched, delivered, dropped) = totals;
    json!({
        "ns_per_call": loop_ns as f64 / calls() as f64,
        "matched": matched, "delivered": delivered, "dropped": dropped,
        "dropped_kernel": ring, "dropped_userspace": dropped.saturating_sub(ring),
        "events_per_s": delivered as f64 / recorded_in,
        "cpu_us_per_event": (cpu_after - cpu_before) * 1e6 / matched.max(1) as f64,
        "peak_rss_mib": peak_mib,
    })
}

/// The median run of `runs` by delivered events (all of the run's figures together).
fn median_run(mut runs: Vec<Value>) -> Value {
    runs.sort_by_key(|run| run["delivered"].as_u64().unwrap_or(0));
    runs[runs.len() / 2].clone()
}

fn main() {
    require_root();
    let calls = calls();
    let mut untraced: Vec<f64> = (0..RUNS)
        .map(|_| timed(getppid_loop(calls)) as f64 / calls as f64)
        .collect();
    let untraced = median(&mut untraced);
    let daemon = Daemon::start(&[]);
    let mut rows = Vec::new();
    for (backend, sessions) in [("ebpf", 1), ("ftrace", 1), ("ebpf", 4)] {
        let runs = (0..RUNS)
            .map(|_| traced_run(&daemon, backend, sessions))
            .collect();
        let mut row = median_run(runs);
        row["backend"] = json!(backend);
        row["sessions"] = json!(sessions);
        rows.push(row);
    }
    let mut table = format!(
        "Reproduce: `cargo xtask bench pipeline` (`BENCH_PIPELINE_CALLS`, default 3,000,000). \
         {}. The release daemon with default settings; a static getppid loop of {calls} calls \
         in a cgroup, traced with the event log by sessions recording all syscalls (four \
         sessions: four syscall sets on the same cgroup). Median of {RUNS} runs (by events \
         recorded).\n\n\
         | backend | sessions | ns/call | × untraced | matched | delivered | dropped (kernel / userspace) | recorded events/s | daemon CPU µs/event | peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | untraced | – | {untraced:.0} | 1.00 | – | – | – | – | – | – |\n",
        machine()
    );
    for row in &rows {
        let number = |key: &str| row[key].as_f64().unwrap_or(0.0);
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {} | {} | {} ({} / {}) | {:.0} | {:.2} | {:.0} |\n",
            row["backend"].as_str().unwrap_or(""),
            row["sessions"],
            number("ns_per_call"),
            number("ns_per_call") / untraced,
            row["matched"],
            row["delivered"],
            row["dropped"],
            row["dropped_kernel"],
            row["dropped_userspace"],
            number("events_per_s"),
            number("cpu_us_per_event"),
            number("peak_rss_mib"),
        ));
    }
    let results = json!({"machine": machine(), "calls": calls, "untraced_ns_per_call": untraced,
                         "rows": rows});
    publish("pipeline", &results, &table);
}
