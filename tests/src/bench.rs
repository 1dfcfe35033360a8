//! Shared pieces of the benchmarks: timing the workload, medians, and writing results.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{cgroup::TestCgroup, workload};

/// Runs `command` (which runs the workload with `SYSCALL_LOOP_TIMING=1`) and returns the
/// loop time the workload reported, in nanoseconds.
pub fn timed(mut command: Command) -> u64 {
    let output = command
        .env("SYSCALL_LOOP_TIMING", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("running the workload");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    loop_ns(&String::from_utf8_lossy(&output.stderr))
        .unwrap_or_else(|| panic!("no loop_ns from {command:?}"))
}

/// The `loop_ns=N` line of the workload's stderr.
pub fn loop_ns(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|line| line.strip_prefix("loop_ns=")?.trim().parse().ok())
}

/// The workload making `calls` getppid calls, as a command.
pub fn getppid_loop(calls: u64) -> Command {
    let mut command = Command::new(workload::path());
    command.args(["getppid", &calls.to_string()]);
    command
}

/// The same, joining `cgroup` before exec.
pub fn getppid_loop_in(cgroup: &TestCgroup, calls: u64) -> Command {
    let mut command = getppid_loop(calls);
    workload::join_before_exec(&mut command, cgroup);
    command
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// `target/bench/` of the workspace.
pub fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    dir
}

/// Writes a benchmark's results: `target/bench/<name>.json` and `.md`, its section of
/// docs/benchmarks.md, and the table on stdout.
pub fn publish(name: &str, results: &serde_json::Value, table: &str) {
    let dir = output_dir();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(results).expect("results as JSON"),
    )
    .expect("writing the JSON results");
    std::fs::write(dir.join(format!("{name}.md")), table).expect("writing the table");
    update_docs(name, table);
    println!("\n{table}");
    println!("wrote target/bench/{name}.json, target/bench/{name}.md and docs/benchmarks.md");
}

/// Replaces the part of docs/benchmarks.md between this benchmark's markers (appending it
/// the first time).
pub fn update_docs(name: &str, section: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let block = format!("{start}\n{section}\n{end}");
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(&path, updated).expect("writing docs/benchmarks.md");
}

/// One line about the machine: kernel and CPU model.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map_or_else(
            || "unknown CPU".into(),
            |rest| rest.trim_start_matches([' ', '\t', ':']).to_owned(),
        );
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("Linux {}, {cpus} × {model}", kernel.trim())
}
