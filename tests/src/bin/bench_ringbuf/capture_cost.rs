//! What reading argument data in the kernel costs a traced call: the same loop untraced,
//! traced with capture off (registers only) and with the default capture, for a call with a
//! path (`openat` of a missing file) and a call with a buffer (`write` of one byte), and the
//! bytes each record takes in the ring.

use serde_json::{json, Value};
use tracer_common::SyscallRecord;
use tracer_daemon::{
    backend::{Engine, EngineOptions},
    record::{CaptureSettings, TraceFilter},
};
use tracer_tests::{bench::median, bench::timed, cgroup::TestCgroup, workload};

/// Calls per timed run.
const CALLS: u64 = 200_000;
/// Timed runs per configuration (the median is reported).
const RUNS: usize = 5;

/// The workload making `calls` of `op`, joining `cgroup` (if any) before exec.
fn command(op: &str, calls: u64, cgroup: Option<&TestCgroup>) -> std::process::Command {
    let mut command = std::process::Command::new(workload::path());
    command.args([op, &calls.to_string()]);
    if let Some(cgroup) = cgroup {
        workload::join_before_exec(&mut command, cgroup);
    }
    command
}

fn ns_per_call(op: &str, cgroup: Option<&TestCgroup>) -> f64 {
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| timed(command(op, CALLS, cgroup)) as f64 / CALLS as f64)
        .collect();
    median(&mut samples)
}

/// One traced configuration: ns per call, and the mean bytes of its records in the ring.
fn traced(
    runtime: &tokio::runtime::Runtime,
    engine: &Engine,
    op: &str,
    syscall: &str,
    capture: CaptureSettings,
) -> (f64, f64, u64) {
    let cgroup = TestCgroup::create("capture-cost");
    let nr = workload::nr(syscall);
    let (session, mut events) = engine
        .start_session(&TraceFilter {
            cgroups: vec![cgroup.id()],
            syscalls: Some(vec![nr]),
            capture,
            ..TraceFilter::default()
        })
        .expect("a session");
    let consumer = runtime.spawn(async move {
        let (mut records, mut bytes) = (0u64, 0u64);
        while let Some(batch) = events.recv().await {
            for (record, data) in batch.iter() {
                if record.nr == nr {
                    records += 1;
                    bytes += (SyscallRecord::SIZE + data.len()) as u64;
                }
            }
        }
        (records, bytes)
    });
    let ns = ns_per_call(op, Some(&cgroup));
    let counters = runtime
        .block_on(engine.stop_session(session))
        .expect("stopping");
    let (records, bytes) = runtime.block_on(consumer).expect("consumer");
    // Every loop call, and the few calls around the loop (the workload's own output).
    assert!(
        records >= RUNS as u64 * CALLS,
        "every traced call delivered"
    );
    assert_eq!(counters.dropped(), 0, "nothing dropped");
    (ns, bytes as f64 / records.max(1) as f64, counters.dropped())
}

pub fn measure(runtime: &tokio::runtime::Runtime) -> Value {
    let _guard = runtime.enter();
    let engine = Engine::start(&EngineOptions {
        session_queue: 1 << 20,
        ..EngineOptions::default()
    })
    .expect("loading the engine");
    let rows: Vec<Value> = [("openat-missing", "openat"), ("write-null", "write")]
        .into_iter()
        .map(|(op, syscall)| {
            let untraced = ns_per_call(op, None);
            let off = CaptureSettings {
                enabled: false,
                ..CaptureSettings::default()
            };
            let (off_ns, off_bytes, off_dropped) = traced(runtime, &engine, op, syscall, off);
            let (on_ns, on_bytes, on_dropped) =
                traced(runtime, &engine, op, syscall, CaptureSettings::default());
            let row = json!({
                "call": syscall,
                "untraced_ns_per_call": untraced,
                "capture_off_ns_per_call": off_ns,
                "capture_off_ratio": off_ns / untraced,
                "capture_off_record_bytes": off_bytes,
                "capture_on_ns_per_call": on_ns,
                "capture_on_ratio": on_ns / untraced,
                "capture_on_record_bytes": on_bytes,
                "capture_cost_ns_per_call": on_ns - off_ns,
                "dropped": off_dropped + on_dropped,
            });
            println!("capture cost, {syscall}: {row}");
            row
        })
        .collect();
    json!({"calls_per_run": CALLS, "runs": RUNS, "rows": rows})
}

pub fn markdown(capture: &Value) -> String {
    let mut out = format!(
        "\n### Argument capture\n\nThe same loop of {} calls, untraced, traced with `capture` off \
         (registers only) and with the default capture (the path read in the kernel; the first 32 \
         bytes of a buffer); medians of {} runs. Record bytes: the record and its captured data, \
         as the ring holds them.\n\n\
         | call | untraced | capture off | capture on | capture's cost | record bytes off / on | dropped |\n\
         |---|---|---|---|---|---|---|\n",
        capture["calls_per_run"], capture["runs"]
    );
    for row in capture["rows"].as_array().into_iter().flatten() {
        let number = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "| `{}` | {:.0} ns | {:.0} ns ({:.2}×) | {:.0} ns ({:.2}×) | {:+.0} ns/call | {:.0} / {:.0} | {} |\n",
            row["call"].as_str().unwrap_or("?"),
            number("untraced_ns_per_call"),
            number("capture_off_ns_per_call"),
            number("capture_off_ratio"),
            number("capture_on_ns_per_call"),
            number("capture_on_ratio"),
            number("capture_cost_ns_per_call"),
            number("capture_off_record_bytes"),
            number("capture_on_record_bytes"),
            row["dropped"],
        ));
    }
    out
}
