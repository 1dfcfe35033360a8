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
    /// Following a session live: events/s to one follower at full rate, latency at a low
    /// rate, and the daemon's cost of 100 followers.
    Stream,
    /// The whole daemon keeping up with one busy process: drops, events/s and CPU per event
    /// with the event log on, per backend and number of sessions, next to the untraced loop.
    Pipeline,
    /// Span export: spans per second to a real collector and ns per span of encoding, on one
    /// core, tracerd's path next to the SDK's batch span processor.
    Otlp,
    /// Cluster mode on two nodes and a 3-member etcd: start to first event, reads with
    /// 1,000 cluster sessions, etcd writes per session lifecycle, next to one node.
    Cluster,
}

pub fn run(benchmark: Benchmark) -> Result<()> {
    match benchmark {
        // The node-cost rows run the release daemon.
        Benchmark::Ringbuf => against_release_daemon("bench_ringbuf"),
        Benchmark::Otlp => cmd::cargo_with_env(
            &[
                "run",
                "--release",
                "--package",
                "tracer-tests",
                "--bin",
                "bench_otlp",
            ],
            &[("ROTEL_AGENT", crate::setup::rotel_agent()?.as_os_str())],
        ),
        Benchmark::Stream => against_release_daemon("bench_stream"),
        Benchmark::Api => against_release_daemon("bench_api"),
        Benchmark::Pipeline => against_release_daemon("bench_pipeline"),
        Benchmark::Cluster => against_release_daemon("bench_cluster"),
    }
}

/// Runs benchmark binary `bench` (release) against the release build of tracerd.
fn against_release_daemon(bench: &str) -> Result<()> {
    let tracerd = build_tracerd(true)?;
    cmd::cargo_with_env(
        &[
            "run",
            "--release",
            "--package",
            "tracer-tests",
            "--bin",
            bench,
        ],
        &[
            ("TRACERD_BIN", tracerd.as_os_str()),
            // For benchmarks that export to a real collector.
            ("ROTEL_AGENT", crate::setup::rotel_agent()?.as_os_str()),
        ],
    )
}
