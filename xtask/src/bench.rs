//! `cargo xtask bench NAME`: builds a benchmark in release mode and runs it. Each benchmark
//! prints its table, writes JSON and markdown under target/bench/, and updates its section of
//! docs/benchmarks.md.
use anyhow::Result;

use crate::cmd;

#[derive(Clone, Copy, Debug, clap::Subcommand)]
pub enum Benchmark {
    /// Syscall tracing cost and throughput per ring-buffer design, next to strace, bpftrace
    /// and ftrace.
    Ringbuf,
}

pub fn run(benchmark: Benchmark) -> Result<()> {
    let binary = match benchmark {
        Benchmark::Ringbuf => "bench_ringbuf",
    };
    cmd::cargo(&[
        "run",
        "--release",
        "--package",
        "tracer-tests",
        "--bin",
        binary,
    ])
}
