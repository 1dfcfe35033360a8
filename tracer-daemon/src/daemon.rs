//! The daemon's lifetime: open the data directory, load the kernel programs, drain records,
//! serve the API, and take everything down again on shutdown.
use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::{
    cgroup::Cgroup,
    config::Config,
    data_dir::DataDir,
    ebpf::{EbpfBackend, EbpfOptions, RecordRing},
    http::{self, lock, AppState},
    tally::CgroupTally,
};

/// The session slot used for cgroups given with `--trace-cgroup`.
const STARTUP_SESSIONS: tracer_common::SessionMask = 1;

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let data_dir = DataDir::open(&config.data_dir)?;
    tracing::info!(data_dir = %data_dir.path().display(), "data directory ready");

    let mut backend = EbpfBackend::load(&EbpfOptions {
        ring_bytes: config.ring_bytes,
    })?;
    tracing::info!(program_ids = ?backend.program_ids(), "eBPF programs attached to sys_enter and sys_exit");
    for path in &config.trace_cgroups {
        let cgroup = Cgroup::from_path(path)
            .with_context(|| format!("--trace-cgroup {}", path.display()))?;
        backend.trace_cgroup(cgroup.id, STARTUP_SESSIONS)?;
        tracing::info!(cgroup = %cgroup.path.display(), cgroup_id = cgroup.id, "tracing cgroup");
    }
    let records = backend.take_records()?;

    let state = AppState {
        backend: Arc::new(Mutex::new(backend)),
        tally: Arc::new(Mutex::new(CgroupTally::default())),
    };
    let drain = tokio::spawn(drain_records(records, state.tally.clone()));
    let logger = (config.tally_interval_secs > 0).then(|| {
        tokio::spawn(log_tally(
            state.tally.clone(),
            Duration::from_secs(config.tally_interval_secs),
        ))
    });

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the API to {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "tracerd is serving");
    axum::serve(listener, http::router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the API")?;

    drain.abort();
    if let Some(logger) = logger {
        logger.abort();
    }
    log_counts(&lock(&state.tally));
    // The last reference to the backend goes here: its drop detaches both programs.
    let backend = Arc::try_unwrap(state.backend)
        .map_err(|_| anyhow::anyhow!("backend still shared at shutdown"))?;
    drop(backend);
    tracing::info!("tracerd stopped; eBPF programs detached");
    drop(data_dir);
    Ok(())
}

/// Moves records from the kernel ring buffer into the tally, one lock per drained batch.
async fn drain_records(mut ring: RecordRing, tally: Arc<Mutex<CgroupTally>>) {
    let mut batch = Vec::with_capacity(4096);
    loop {
        if let Err(err) = ring.drain(|record| batch.push(*record)).await {
            tracing::error!(%err, "reading the record ring buffer failed; retrying");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut tally = lock(&tally);
        for record in batch.drain(..) {
            tally.add(&record);
        }
    }
}

async fn log_tally(tally: Arc<Mutex<CgroupTally>>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        interval.tick().await;
        log_counts(&lock(&tally));
    }
}

fn log_counts(tally: &CgroupTally) {
    for counts in tally.snapshot() {
        tracing::info!(cgroup_id = counts.cgroup_id, total = counts.total, syscalls = ?counts.syscalls, "records per cgroup");
    }
}
