//! `cargo xtask bench pipeline`: the whole daemon keeping up with busy processes, against
//! the release build of tracerd driven through its API — a static getppid loop in a cgroup,
//! untraced, then traced by sessions on each backend with the event log only and with the
//! event log and OTLP export to a real collector (rotel); 1, 4 and 16 sessions on the same
//! cgroup; and one loop per CPU at once. For each: ns per call, matched / delivered /
//! dropped (kernel and userspace apart), events recorded per second, spans exported per
//! second, the daemon's CPU per event (user and system) and its peak memory; then how fast
//! the recorded log downloads. Medians of a few runs; ratios to the untraced loop.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tracer_tests::{
    bench::{getppid_loop, getppid_loop_in, machine, median, publish, timed},
    cgroup::TestCgroup,
    collector::Collector,
    daemon::Daemon,
    require_root,
};

/// Calls per loop (the burst is 3 M at full speed; `BENCH_PIPELINE_CALLS` for
/// longer bursts).
fn calls() -> u64 {
    std::env::var("BENCH_PIPELINE_CALLS")
        .ok()
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(3_000_000)
}

const RUNS: usize = 3;

/// How spans that are still on their way are waited for, at most.
const EXPORT_WAIT: Duration = Duration::from_secs(120);

/// One row of the table.
#[derive(Clone, Copy)]
struct Setup {
    backend: &'static str,
    sessions: usize,
    export: bool,
    /// Loops run at once, each in the cgroup (one per CPU for the all-cores row).
    loops: usize,
}

/// The daemon's CPU seconds (user, system) and peak resident memory (MiB) so far: the
/// high-water mark over its life, so a row shows the most of it and the rows before.
fn usage(pid: u32) -> (f64, f64, f64) {
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
    let user = fields.get(11).unwrap_or(&0.0) / ticks;
    let system = fields.get(12).unwrap_or(&0.0) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (user, system, peak_kib / 1024.0)
}

/// A daemon-wide counter from `/metrics` (0 if absent).
fn metric(daemon: &Daemon, name: &str) -> u64 {
    daemon
        .get_text("/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// The kernel's count of records its rings could not take.
fn ring_drops(daemon: &Daemon) -> u64 {
    metric(daemon, "tracerd_ring_dropped_full_total")
}

/// Records the drains (eBPF ring drains, ftrace readers) handed on, and the nanoseconds
/// they spent from reading each pass's first record to delivering its last.
fn drain_work(daemon: &Daemon) -> (u64, u64) {
    (
        metric(daemon, "tracerd_drain_records_total"),
        metric(daemon, "tracerd_drain_busy_nanoseconds_total"),
    )
}

/// `n` different syscall sets (the same target and filter twice would be refused): all
/// syscalls, then getppid alone and with one other.
fn syscall_sets(n: usize) -> Vec<Value> {
    let others = [
        "getpid", "read", "write", "openat", "close", "fstat", "mmap", "brk", "lseek", "pread64",
        "pwrite64", "dup", "pipe", "munmap",
    ];
    let mut sets = vec![json!(null), json!(["getppid"])];
    sets.extend(others.iter().map(|other| json!(["getppid", other])));
    sets.truncate(n);
    sets
}

/// Runs `loops` getppid loops in `cgroup` at once; the wall time per call of one loop.
fn loops_in(cgroup: &TestCgroup, loops: usize) -> f64 {
    if loops == 1 {
        return timed(getppid_loop_in(cgroup, calls())) as f64 / calls() as f64;
    }
    let started = Instant::now();
    let children: Vec<_> = (0..loops)
        .map(|_| {
            let mut command: Command = getppid_loop_in(cgroup, calls());
            command.stdout(Stdio::null()).spawn().expect("a loop")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("a loop").success());
    }
    started.elapsed().as_nanos() as f64 / calls() as f64
}

/// Waits until every session exported its delivered events (or gave some up); the seconds
/// that took from `since`, `None` if it did not finish within [`EXPORT_WAIT`].
fn exported_within(daemon: &Daemon, ids: &[String], since: Instant) -> Option<f64> {
    let deadline = Instant::now() + EXPORT_WAIT;
    loop {
        let done = ids.iter().all(|id| {
            let c = &daemon.get(&format!("/v1/sessions/{id}"))["counters"];
            let count = |name: &str| c[name].as_u64().unwrap_or(0);
            count("exported") + count("export_failed") >= count("delivered")
        });
        if done {
            return Some(since.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One measured run of `setup` over a fresh cgroup. The log of the first session is kept
/// (its id returned) for the download figures; the others are deleted.
fn traced_run(daemon: &Daemon, collector: &Collector, setup: Setup) -> (Value, String) {
    let cgroup = TestCgroup::create("bench-pipeline");
    let export = if setup.export {
        json!({"otlp": {"endpoint": collector.grpc_endpoint(), "protocol": "grpc"}})
    } else {
        json!({"otlp": null})
    };
    let ids: Vec<String> = syscall_sets(setup.sessions)
        .iter()
        .map(|syscalls| {
            daemon.create_and_start(&json!({"target": {"cgroup": cgroup.path()},
                "syscalls": syscalls, "backend": setup.backend, "export": export}))
        })
        .collect();
    let (user_before, system_before, _) = usage(daemon.pid());
    let ring_before = ring_drops(daemon);
    let drain_before = drain_work(daemon);
    let started = Instant::now();
    let ns_per_call = loops_in(&cgroup, setup.loops);
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
    let exported_in = setup
        .export
        .then(|| exported_within(daemon, &ids, started))
        .flatten();
    let (user_after, system_after, peak_mib) = usage(daemon.pid());
    let ring = ring_drops(daemon) - ring_before;
    let drain_after = drain_work(daemon);
    let drained = drain_after.0.saturating_sub(drain_before.0).max(1);
    let drain_ns = drain_after.1.saturating_sub(drain_before.1);
    for id in &ids {
        daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    }
    for id in &ids[1..] {
        daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
    }
    let (matched, delivered, dropped) = totals;
    let per_event = |seconds: f64| seconds * 1e9 / matched.max(1) as f64;
    let row = json!({
        "ns_per_call": ns_per_call,
        "matched": matched, "delivered": delivered, "dropped": dropped,
        "dropped_kernel": ring, "dropped_userspace": dropped.saturating_sub(ring),
        "events_per_s": delivered as f64 / recorded_in,
        "spans_per_s": exported_in.map(|seconds| delivered as f64 / seconds),
        "user_ns_per_event": per_event(user_after - user_before),
        "system_ns_per_event": per_event(system_after - system_before),
        "drain_ns_per_record": drain_ns as f64 / drained as f64,
        "peak_rss_mib": peak_mib,
    });
    (row, ids[0].clone())
}

/// The median run of `runs` by delivered events (all of the run's figures together), and
/// the logs of the others deleted.
fn median_run(daemon: &Daemon, mut runs: Vec<(Value, String)>) -> (Value, String) {
    runs.sort_by_key(|(run, _)| run["delivered"].as_u64().unwrap_or(0));
    let median = runs.remove(runs.len() / 2);
    for (_, id) in runs {
        daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
    }
    median
}

/// Downloads a session's log (`query`: `?…` or empty): lines and lines per second, best of
/// [`RUNS`].
fn download(daemon: &Daemon, id: &str, query: &str) -> (u64, f64) {
    let mut best = (0, 0.0f64);
    for _ in 0..RUNS {
        let started = Instant::now();
        let lines = daemon.each_event_line(id, query, |_| {});
        let rate = lines as f64 / started.elapsed().as_secs_f64();
        if rate > best.1 {
            best = (lines, rate);
        }
    }
    best
}

/// A session holding `id`'s events in the event log's first format (NDJSON in gzip, as
/// tracerd wrote it before it stored records), made by downloading them: the same events
/// read through the other path. Returns its id.
fn first_format_copy(daemon: &Daemon, id: &str) -> String {
    use std::io::Write as _;
    let cgroup = TestCgroup::create("bench-pipeline-copy");
    let (status, session) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]})),
        None,
    );
    assert_eq!(status, 201, "{session}");
    let copy = session["id"].as_str().expect("an id").to_owned();
    let dir = daemon.data_dir().join("sessions").join(&copy);
    std::fs::create_dir_all(&dir).expect("the copy's directory");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let lines = daemon.each_event_line(id, "", |line| {
        gzip.write_all(line.as_bytes()).expect("compressing");
        gzip.write_all(b"\n").expect("compressing");
    });
    let segment = dir.join(format!("{:020}-{lines}.ndjson.gz", 1));
    std::fs::write(segment, gzip.finish().expect("compressing")).expect("writing the copy");
    copy
}

const SETUPS: [Setup; 7] = [
    Setup {
        backend: "ebpf",
        sessions: 1,
        export: false,
        loops: 1,
    },
    Setup {
        backend: "ebpf",
        sessions: 1,
        export: true,
        loops: 1,
    },
    Setup {
        backend: "ftrace",
        sessions: 1,
        export: false,
        loops: 1,
    },
    Setup {
        backend: "ftrace",
        sessions: 1,
        export: true,
        loops: 1,
    },
    Setup {
        backend: "ebpf",
        sessions: 4,
        export: false,
        loops: 1,
    },
    Setup {
        backend: "ebpf",
        sessions: 16,
        export: false,
        loops: 1,
    },
    // One loop per CPU: the all-cores row (its loops count is set at run time).
    Setup {
        backend: "ebpf",
        sessions: 1,
        export: false,
        loops: 0,
    },
];

fn table_row(row: &Value, untraced: f64) -> String {
    let number = |key: &str| row[key].as_f64().unwrap_or(0.0);
    let spans = row["spans_per_s"]
        .as_f64()
        .map_or_else(|| "–".to_owned(), |rate| format!("{rate:.0}"));
    format!(
        "| {} | {} | {} | {} | {:.0} | {:.2} | {} | {} | {} ({} / {}) | {:.0} | {} | {:.0} + {:.0} | {:.0} | {:.0} |\n",
        row["backend"].as_str().unwrap_or(""),
        row["sessions"],
        if row["export"] == true { "log + OTLP" } else { "log" },
        row["loops"],
        number("ns_per_call"),
        number("ns_per_call") / untraced,
        row["matched"],
        row["delivered"],
        row["dropped"],
        row["dropped_kernel"],
        row["dropped_userspace"],
        number("events_per_s"),
        spans,
        number("user_ns_per_event"),
        number("system_ns_per_event"),
        number("drain_ns_per_record"),
        number("peak_rss_mib"),
    )
}

fn main() {
    require_root();
    let calls = calls();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut untraced: Vec<f64> = (0..RUNS)
        .map(|_| timed(getppid_loop(calls)) as f64 / calls as f64)
        .collect();
    let untraced = median(&mut untraced);
    let collector = Collector::start_blackhole();
    let daemon = Daemon::start(&[]);
    let mut rows = Vec::new();
    let mut kept_log = None;
    for mut setup in SETUPS {
        if setup.loops == 0 {
            setup.loops = cpus;
        }
        let runs = (0..RUNS)
            .map(|_| traced_run(&daemon, &collector, setup))
            .collect();
        let (mut row, id) = median_run(&daemon, runs);
        println!(
            "{} × {} sessions, export {}, {} loops: {row}",
            setup.backend, setup.sessions, setup.export, setup.loops
        );
        row["backend"] = json!(setup.backend);
        row["sessions"] = json!(setup.sessions);
        row["export"] = json!(setup.export);
        row["loops"] = json!(setup.loops);
        rows.push(row);
        match kept_log {
            None => kept_log = Some(id),
            Some(_) => {
                daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
            }
        }
    }
    let kept_log = kept_log.expect("the first row's log");
    let (all_lines, all_rate) = download(&daemon, &kept_log, "");
    let (filtered_lines, filtered_rate) = download(&daemon, &kept_log, "?syscall=getppid");
    let first_format = first_format_copy(&daemon, &kept_log);
    let (old_lines, old_rate) = download(&daemon, &first_format, "");
    let (old_filtered_lines, old_filtered_rate) =
        download(&daemon, &first_format, "?syscall=getppid");
    let mut table = format!(
        "Reproduce: `cargo xtask bench pipeline` (`BENCH_PIPELINE_CALLS`, default 3,000,000). \
         {}. The release daemon with default settings; a static getppid loop of {calls} calls \
         in a cgroup (the last row: {cpus} loops at once, one per CPU), traced by sessions \
         recording all syscalls (several sessions: different syscall sets on the same \
         cgroup), with the event log only or with it and OTLP export (gRPC) to a rotel \
         collector that discards what it receives. Spans/s: delivered events over the time \
         from the loop's start until every span was accepted. Daemon CPU: its user and \
         system time over the matched events. Drain: the ring drains' (eBPF) or the \
         reader's (ftrace) time per record, from reading a pass's first record to delivering \
         its last (its share of the daemon's CPU). Median of {RUNS} runs (by events \
         recorded).\n\n\
         | backend | sessions | sinks | loops | ns/call | × untraced | matched | delivered | dropped (kernel / userspace) | recorded events/s | spans exported/s | daemon CPU ns/event (user + system) | drain ns/record | peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n\
         | untraced | – | – | 1 | {untraced:.0} | 1.00 | – | – | – | – | – | – | – | – |\n",
        machine()
    );
    for row in &rows {
        table.push_str(&table_row(row, untraced));
    }
    table.push_str(&format!(
        "\nDownloading the first row's log (`GET /v1/sessions/{{id}}/events`, best of {RUNS}), \
         next to the same events stored in the log's first format (NDJSON in gzip, read back \
         as stored):\n\n\
         | log format | all events | events/s | `?syscall=getppid` | events/s |\n\
         |---|---|---|---|---|\n\
         | records, rendered when read | {all_lines} | {all_rate:.0} | {filtered_lines} | {filtered_rate:.0} |\n\
         | NDJSON in gzip (before) | {old_lines} | {old_rate:.0} | {old_filtered_lines} | {old_filtered_rate:.0} |\n"
    ));
    let results = json!({"machine": machine(), "calls": calls, "untraced_ns_per_call": untraced,
                         "rows": rows,
                         "download": {"events": all_lines, "events_per_s": all_rate,
                                      "filtered_events": filtered_lines,
                                      "filtered_events_per_s": filtered_rate,
                                      "first_format_events_per_s": old_rate,
                                      "first_format_filtered_events_per_s": old_filtered_rate}});
    publish("pipeline", &results, &table);
}
