//! `cargo xtask bench ringbuf`: the cost of tracing a deterministic getppid loop, side by side
//! in one run — untraced; beside the idle daemon and beside a session on another cgroup
//! ([`node_cost`]); untraced while tracerd's programs are attached; traced through each
//! ring-buffer design and through tracerd's ftrace backend; all cores at once; strace,
//! bpftrace and an ftrace instance read as text; and what capturing argument data costs
//! ([`capture_cost`]).
//!
//! Every time is the loop time the workload measures itself (vDSO clock, no syscalls), so no
//! tracer's start-up is counted. Medians over several runs; ratios to the untraced loop.
mod capture_cost;
mod node_cost;

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tracer_daemon::{
    backend::{
        ebpf::{auto_wakeup_every, EbpfOptions},
        Engine, EngineOptions,
    },
    record::{monotonic_ns, TraceFilter},
};
use tracer_tests::{
    bench::{getppid_loop, getppid_loop_in, loop_ns, machine, median, output_dir, publish, timed},
    cgroup::TestCgroup,
    require_root, workload,
};

/// Calls per timed run of the loop.
const CALLS: u64 = 1_000_000;
/// Timed runs per configuration (the median is reported).
const RUNS: usize = 5;
/// Calls per process in the all-cores run.
const CALLS_PER_CORE: u64 = 2_000_000;
/// strace is ~200× slower: fewer calls keep its run short.
const STRACE_CALLS: u64 = 20_000;
/// Calls of the low-rate phase (one every 5 ms).
const LOW_RATE_CALLS: u64 = 100;

/// The pid of the low-rate workload, for the consumer to pick its events out.
static LOW_RATE_TGID: AtomicU32 = AtomicU32::new(0);

struct Design {
    name: String,
    options: EbpfOptions,
    /// `false`: the session runs on the ftrace backend.
    use_ebpf: bool,
}

fn main() {
    require_root();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!("bench ringbuf on {}", machine());

    let untraced = ns_per_call(RUNS, || getppid_loop(CALLS), CALLS);
    println!("untraced: {untraced:.1} ns/call");
    let node = node_cost::measure(&runtime);
    println!("node cost: {node}");
    let capture = capture_cost::measure(&runtime);

    let ring_bytes = EbpfOptions::default().ring_bytes;
    let auto = auto_wakeup_every(ring_bytes);
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
    let shared_bytes = (ring_bytes * cpus).next_power_of_two();
    let designs = [
        Design {
            name: "shared ring, kernel wake-ups".into(),
            options: EbpfOptions {
                wakeup_every: Some(0),
                per_cpu_rings: false,
                ..EbpfOptions::default()
            },
            use_ebpf: true,
        },
        Design {
            name: "shared ring, wake-up every 64 records".into(),
            options: EbpfOptions {
                wakeup_every: Some(64),
                per_cpu_rings: false,
                ..EbpfOptions::default()
            },
            use_ebpf: true,
        },
        // The same total capacity as the per-CPU rings, so the two differ only in layout.
        Design {
            name: format!(
                "shared ring of {} MiB, wake-up every {auto} records",
                shared_bytes >> 20
            ),
            options: EbpfOptions {
                ring_bytes: shared_bytes,
                wakeup_every: Some(auto),
                per_cpu_rings: false,
                ..EbpfOptions::default()
            },
            use_ebpf: true,
        },
        Design {
            name: format!(
                "per-CPU rings of {} MiB, wake-up every {auto} records (default)",
                ring_bytes >> 20
            ),
            options: EbpfOptions {
                wakeup_every: None,
                per_cpu_rings: true,
                ..EbpfOptions::default()
            },
            use_ebpf: true,
        },
        Design {
            name: format!(
                "ftrace backend: a tracefs instance of {} MiB per CPU, binary pages",
                tracer_daemon::backend::ftrace::DEFAULT_BUFFER_KB >> 10
            ),
            options: EbpfOptions::default(),
            use_ebpf: false,
        },
    ];
    let ebpf: Vec<Value> = designs
        .iter()
        .map(|design| measure_design(&runtime, design, untraced))
        .collect();
    let peers = vec![
        tracepoint_floor(untraced),
        strace(untraced),
        bpftrace(untraced),
        ftrace(untraced),
    ];

    let results = json!({
        "machine": machine(),
        "calls_per_run": CALLS,
        "runs": RUNS,
        "untraced_ns_per_call": untraced,
        "node": node,
        "capture": capture,
        "ebpf": ebpf,
        "peers": peers,
    });
    publish("ringbuf", &results, &markdown(&results));
}

fn ns_per_call(runs: usize, command: impl Fn() -> Command, calls: u64) -> f64 {
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| timed(command()) as f64 / calls as f64)
        .collect();
    median(&mut samples)
}

fn measure_design(runtime: &tokio::runtime::Runtime, design: &Design, untraced: f64) -> Value {
    let _guard = runtime.enter();
    let engine = Engine::start(&EngineOptions {
        ebpf: design.options.clone(),
        use_ebpf: design.use_ebpf,
        // Deep enough that the consumer below never makes a userspace drop.
        session_queue: 1 << 20,
        ..EngineOptions::default()
    })
    .expect("loading the engine");
    let flush = |session: &tracer_daemon::backend::SessionHandle| {
        runtime.block_on(engine.flush_session(session));
    };
    let cgroup = TestCgroup::create("bench");
    let (session, mut events) = engine
        .start_session(&TraceFilter {
            cgroups: vec![cgroup.id()],
            ..TraceFilter::default()
        })
        .expect("a session");
    let getppid = workload::nr("getppid");
    let consumer = runtime.spawn(async move {
        let mut received = 0u64;
        // Delivery latency of the low-rate phase's getppid calls: from the syscall's exit
        // to the consumer having it.
        let mut latencies_ms = Vec::new();
        while let Some(batch) = events.recv().await {
            received += batch.len() as u64;
            for (record, _) in batch.iter() {
                if record.nr == getppid && record.tgid == LOW_RATE_TGID.load(Ordering::Relaxed) {
                    let exit_ns = record.enter_ns + record.duration_ns;
                    latencies_ms.push(monotonic_ns().saturating_sub(exit_ns) as f64 / 1e6);
                }
            }
        }
        (received, latencies_ms)
    });

    // 0. Delivery latency at a low rate (one call every 5 ms), bounded by the periodic flush.
    let mut low_rate = workload::spawn_in(
        &cgroup,
        &[
            "pause-stdin",
            "1",
            "slow-getppid",
            &LOW_RATE_CALLS.to_string(),
        ],
    );
    LOW_RATE_TGID.store(low_rate.id(), Ordering::Relaxed);
    // The ftrace backend traces a process that joined the cgroup from when it has seen the
    // join: let it, before the measured calls.
    std::thread::sleep(Duration::from_millis(100));
    {
        use std::io::Write as _;
        low_rate.stdin.take().unwrap().write_all(b"x").unwrap();
    }
    assert!(low_rate.wait().unwrap().success());
    flush(&session);

    // 1. A process outside the traced cgroup while the programs are attached.
    let attached = ns_per_call(RUNS, || getppid_loop(CALLS), CALLS);
    // 2. A traced process: every call becomes a record delivered to the consumer.
    let before = snapshot(&engine);
    let delivered_before = engine.counters(&session).expect("counters").delivered;
    let traced = ns_per_call(RUNS, || getppid_loop_in(&cgroup, CALLS), CALLS);
    flush(&session);
    let after = snapshot(&engine);
    let counters = engine.counters(&session).expect("counters");
    // Each run's process joins the cgroup just before its exec: on ftrace, the calls it makes
    // before the daemon has seen the join are not traced (nor counted).
    let traced_delivered = counters.delivered - delivered_before;
    let traced_records = after.records - before.records;
    let userspace_ns = (after.busy_ns - before.busy_ns) as f64 / traced_records.max(1) as f64;

    // 3. Every core at once.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let matched_before = counters.matched;
    let dropped_before = counters.dropped();
    let started = Instant::now();
    let children: Vec<_> = (0..cores)
        .map(|_| {
            getppid_loop_in(&cgroup, CALLS_PER_CORE)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("a workload")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let wall = started.elapsed();
    flush(&session);
    let counters = engine.counters(&session).expect("counters");
    let burst_matched = counters.matched - matched_before;
    let burst_dropped = counters.dropped() - dropped_before;

    let final_counters = runtime
        .block_on(engine.stop_session(session))
        .expect("stopping");
    drop(engine);
    let (received, mut latencies_ms) = runtime.block_on(consumer).expect("consumer");
    assert_eq!(
        received, final_counters.delivered,
        "the consumer got what was delivered"
    );
    assert_eq!(
        latencies_ms.len() as u64,
        LOW_RATE_CALLS,
        "every low-rate call was delivered"
    );
    let latency_max_ms = latencies_ms.iter().copied().fold(0.0, f64::max);
    let latency_p50_ms = median(&mut latencies_ms);

    let result = json!({
        "design": design.name,
        "attached_untraced_ns_per_call": attached,
        "attached_ratio": attached / untraced,
        "traced_ns_per_call": traced,
        "traced_ratio": traced / untraced,
        "traced_dropped": dropped_before,
        "traced_calls": RUNS as u64 * CALLS,
        "traced_delivered": traced_delivered,
        "low_rate_latency_p50_ms": latency_p50_ms,
        "low_rate_latency_max_ms": latency_max_ms,
        "userspace_ns_per_event": userspace_ns,
        "all_cores": cores,
        "all_cores_events_per_sec": burst_matched as f64 / wall.as_secs_f64(),
        "all_cores_delivered_per_sec": (burst_matched - burst_dropped) as f64 / wall.as_secs_f64(),
        "all_cores_dropped": burst_dropped,
        "matched": final_counters.matched,
        "delivered": final_counters.delivered,
        "dropped": final_counters.dropped(),
    });
    println!("{}: {result}", design.name);
    result
}

struct DrainSnapshot {
    records: u64,
    busy_ns: u64,
}

fn snapshot(engine: &Engine) -> DrainSnapshot {
    let stats = engine.drain_stats();
    DrainSnapshot {
        records: stats.records.load(Ordering::Relaxed),
        busy_ns: stats.busy_ns.load(Ordering::Relaxed),
    }
}

fn peer(
    name: &str,
    ns_per_call: f64,
    untraced: f64,
    expected: u64,
    observed: u64,
    note: &str,
) -> Value {
    let result = json!({
        "peer": name,
        "ns_per_call": ns_per_call,
        "ratio": ns_per_call / untraced,
        "expected_events": expected,
        "observed_events": observed,
        "lost_events": expected.saturating_sub(observed),
        "note": note,
    });
    println!("{name}: {result}");
    result
}

/// What any tracer on `sys_enter` and `sys_exit` costs a process it does not trace: bpftrace
/// programs on both tracepoints whose filter is never true, and an untraced loop beside them.
/// Attaching sets the syscall-tracepoint work flag on every task, which sends every syscall
/// through the slow entry and exit paths, whatever the program does.
fn tracepoint_floor(untraced: f64) -> Value {
    let mut bpftrace = Command::new("bpftrace")
        .args([
            "-e",
            "tracepoint:raw_syscalls:sys_enter /pid == 0/ {} tracepoint:raw_syscalls:sys_exit /pid == 0/ {}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running bpftrace");
    // bpftrace prints "Attaching 2 probes..." once it is attached.
    {
        use std::io::BufRead as _;
        let stdout = bpftrace.stdout.take().expect("bpftrace stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        assert!(
            lines
                .next()
                .is_some_and(|line| line.is_ok_and(|l| l.contains("Attaching"))),
            "bpftrace did not attach"
        );
        // Keep the pipe open (and drained) while measuring.
        std::thread::spawn(move || for _ in lines {});
    }
    std::thread::sleep(Duration::from_millis(500));
    let floor = ns_per_call(RUNS, || getppid_loop(CALLS), CALLS);
    let _ = bpftrace.kill();
    let _ = bpftrace.wait();
    peer(
        "floor: empty programs on sys_enter + sys_exit, untraced process",
        floor,
        untraced,
        0,
        0,
        "the kernel's cost of syscall tracepoints, paid by every process",
    )
}

/// strace -f, writing every call to a file: synchronous, so it never loses one.
fn strace(untraced: f64) -> Value {
    let log = output_dir().join("strace.out");
    let mut samples = Vec::new();
    let mut observed = 0;
    for _ in 0..3 {
        let mut command = Command::new("strace");
        command
            .args(["-f", "-qq", "-o"])
            .arg(&log)
            .arg("--")
            .arg(workload::path())
            .args(["getppid", &STRACE_CALLS.to_string()]);
        samples.push(timed(command) as f64 / STRACE_CALLS as f64);
        observed = count_lines(&log, |line| line.contains("getppid("));
    }
    peer(
        "strace -f",
        median(&mut samples),
        untraced,
        STRACE_CALLS,
        observed,
        "one ptrace stop per syscall",
    )
}

/// bpftrace printing one line per syscall exit from a perf buffer.
fn bpftrace(untraced: f64) -> Value {
    let out = output_dir().join("bpftrace.out");
    let getppid = workload::nr("getppid");
    let program = format!(
        "tracepoint:raw_syscalls:sys_exit /comm == \"syscall_loop\" && args->id == {getppid}/ \
         {{ printf(\"%d %d %d\\n\", pid, args->id, args->ret); }}"
    );
    let output = Command::new("bpftrace")
        .args(["-e", &program, "-c"])
        .arg(format!("{} getppid {CALLS}", workload::path().display()))
        .env("SYSCALL_LOOP_TIMING", "1")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .output()
        .expect("running bpftrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let loop_time =
        loop_ns(&stderr).unwrap_or_else(|| panic!("bpftrace run gave no loop_ns: {stderr}"));
    let observed = count_lines(&out, |line| {
        line.split_whitespace().nth(1) == Some(&getppid.to_string())
    });
    let lost_note = stderr
        .lines()
        .find(|line| line.contains("Lost"))
        .map_or_else(
            || "no loss reported".to_owned(),
            |line| format!("it reported: {}", line.trim()),
        );
    peer(
        "bpftrace (printf per event)",
        loop_time as f64 / CALLS as f64,
        untraced,
        CALLS,
        observed,
        &lost_note,
    )
}

/// An ftrace instance with raw_syscalls enter and exit for the workload's pid, read as text
/// through `trace_pipe`.
fn ftrace(untraced: f64) -> Value {
    let instance = std::path::Path::new("/sys/kernel/tracing/instances/tracerd-bench");
    let _ = std::fs::remove_dir(instance);
    std::fs::create_dir(instance).expect("creating an ftrace instance");
    let write = |file: &str, value: &str| {
        std::fs::write(instance.join(file), value)
            .unwrap_or_else(|err| panic!("writing {file}: {err}"));
    };
    // 4 MiB per CPU: the same order as tracerd's 8 MiB shared ring on two CPUs.
    write("buffer_size_kb", "4096");
    let mut child = Command::new(workload::path())
        .args(["pause-stdin", "1", "getppid", &CALLS.to_string()])
        .env("SYSCALL_LOOP_TIMING", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the workload");
    write("set_event_pid", &child.id().to_string());
    write("events/raw_syscalls/sys_enter/enable", "1");
    write("events/raw_syscalls/sys_exit/enable", "1");
    let out = output_dir().join("ftrace.out");
    let mut reader = Command::new("cat")
        .arg(instance.join("trace_pipe"))
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .expect("reading trace_pipe");
    {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(b"x").unwrap();
    }
    let output = child.wait_with_output().expect("the workload");
    let loop_time = loop_ns(&String::from_utf8_lossy(&output.stderr)).expect("loop_ns");
    // Let the reader catch up: stop once the output has not grown for half a second.
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let size = std::fs::metadata(&out).map_or(0, |m| m.len());
        if size == last {
            break;
        }
        last = size;
    }
    let _ = reader.kill();
    let _ = reader.wait();
    let overruns: u64 = (0..std::thread::available_parallelism().map_or(1, usize::from))
        .filter_map(|cpu| {
            std::fs::read_to_string(instance.join(format!("per_cpu/cpu{cpu}/stats"))).ok()
        })
        .filter_map(|stats| {
            stats.lines().find_map(|line| {
                line.strip_prefix("overrun:")
                    .map(|n| n.trim().parse::<u64>().unwrap_or(0))
            })
        })
        .sum();
    write("events/raw_syscalls/sys_enter/enable", "0");
    write("events/raw_syscalls/sys_exit/enable", "0");
    let _ = std::fs::remove_dir(instance);
    let getppid = format!("NR {} ", workload::nr("getppid"));
    // One enter and one exit line per call.
    let observed = count_lines(&out, |line| line.contains(&getppid)) / 2;
    peer(
        "ftrace instance, text trace_pipe",
        loop_time as f64 / CALLS as f64,
        untraced,
        CALLS,
        observed,
        &format!("{overruns} ring overruns"),
    )
}

fn count_lines(path: &std::path::Path, matches: impl Fn(&str) -> bool) -> u64 {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|line| matches(line))
        .count() as u64
}

fn markdown(results: &Value) -> String {
    let untraced = results["untraced_ns_per_call"].as_f64().unwrap();
    let floor = results["peers"][0]["ns_per_call"].as_f64().unwrap();
    let mut out = String::new();
    out.push_str(&format!(
        "## Ring buffer: `cargo xtask bench ringbuf`\n\n{}. A static loop of {} `getppid` calls, \
         timed by the loop itself; medians of {} runs. Untraced: **{untraced:.0} ns/call**.\n\n",
        results["machine"].as_str().unwrap(),
        CALLS,
        RUNS
    ));
    out.push_str(&format!(
        "Any program on `sys_enter` and `sys_exit` sends every syscall on the machine through the \
         kernel's slow syscall paths: with empty programs attached (the *floor* row below) an \
         untraced call takes **{floor:.0} ns**. Ratios are given to the untraced loop and to \
         that floor.\n\n"
    ));
    out.push_str(
        "| tracerd design | untraced, programs attached | traced | delivered of calls | dropped | userspace ns/event | latency at 200 calls/s (p50 / max) | all cores: events/s | all cores: dropped |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for design in results["ebpf"].as_array().unwrap() {
        let attached = design["attached_untraced_ns_per_call"].as_f64().unwrap();
        let traced = design["traced_ns_per_call"].as_f64().unwrap();
        out.push_str(&format!(
            "| {} | {attached:.0} ns ({:.2}× untraced, {:.2}× floor) | {traced:.0} ns ({:.2}× untraced, {:.2}× floor) | {} of {} | {} | {:.0} | {:.1} / {:.1} ms | {:.2} M | {} |\n",
            design["design"].as_str().unwrap(),
            attached / untraced,
            attached / floor,
            traced / untraced,
            traced / floor,
            design["traced_delivered"],
            design["traced_calls"],
            design["traced_dropped"],
            design["userspace_ns_per_event"].as_f64().unwrap(),
            design["low_rate_latency_p50_ms"].as_f64().unwrap(),
            design["low_rate_latency_max_ms"].as_f64().unwrap(),
            design["all_cores_events_per_sec"].as_f64().unwrap() / 1e6,
            design["all_cores_dropped"],
        ));
    }
    out.push_str("\n| peer | ns/call | × untraced | events lost | note |\n|---|---|---|---|---|\n");
    for peer in results["peers"].as_array().unwrap() {
        out.push_str(&format!(
            "| {} | {:.0} | {:.1}× | {} of {} | {} |\n",
            peer["peer"].as_str().unwrap(),
            peer["ns_per_call"].as_f64().unwrap(),
            peer["ratio"].as_f64().unwrap(),
            peer["lost_events"],
            peer["expected_events"],
            peer["note"].as_str().unwrap(),
        ));
    }
    out.push_str(&node_cost::markdown(&results["node"], untraced, floor));
    out.push_str(&capture_cost::markdown(&results["capture"]));
    out.push_str(
        "\nReproduce with `cargo xtask bench ringbuf` (root). Raw numbers: `target/bench/ringbuf.json`.\n",
    );
    out
}
