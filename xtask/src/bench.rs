//! `cargo xtask bench NAME`: builds a benchmark in release mode and runs it. Each benchmark
//! prints its table, writes JSON and markdown under target/bench/, and updates its section of
//! docs/benchmarks.md.
use anyhow::Result;

use crate::{build_tracerd, cmd};

#[derive(Clone, Copy, Debug, clap::Subcommand)]
pub enum Benchmark {
    /// Syscall tracing cost and throughput per ring-buffer design, next to strace, bpftrace
    /// and ftrace.
    Ringbuf,
    /// Latency of the sessions API under 100 concurrent clients with 10,000 stored sessions.
    Api,
}

pub fn run(benchmark: Benchmark) -> Result<()> {
    match benchmark {
        Benchmark::Ringbuf => cmd::cargo(&[
            "run",
            "--release",
            "--package",
            "tracer-tests",
            "--bin",
            "bench_ringbuf",
        ]),
        Benchmark::Api => {
            // The daemon under test is the release build.
            let tracerd = build_tracerd(true)?;
            cmd::cargo_with_env(
                &[
                    "run",
                    "--release",
                    "--package",
                    "tracer-tests",
                    "--bin",
                    "bench_api",
                ],
                &[("TRACERD_BIN", tracerd.as_os_str())],
            )
        }
    }
}
