use std::io::IsTerminal as _;

use tokio::signal::unix::{signal, SignalKind};
use tracer_daemon::{config::Config, daemon};
use tracing_subscriber::EnvFilter;

/// mimalloc: span export allocates a few dozen small strings per span (opentelemetry's data
/// model), and `cargo xtask bench otlp` measured encoding a third cheaper with it than with
/// glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A log that cannot be written (stderr on a full disk) is lost, not a panic: the
        // subscriber would report it with `eprintln!`, which panics on the same stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // Before the runtime starts threads: a config file's settings become environment variables.
    let config = match Config::load() {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("starting the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = name, "shutting down");
}
