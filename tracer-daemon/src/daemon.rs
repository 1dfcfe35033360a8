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
    ebpf::{EbpfOptions, KernelFilter},
    engine::{Engine, EngineOptions},
    http::{self, AppState},
    lock,
    tally::CgroupTally,
};

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let data_dir = DataDir::open(&config.data_dir)?;
    tracing::info!(data_dir = %data_dir.path().display(), "data directory ready");

    let engine = Arc::new(Engine::start(&EngineOptions {
        ebpf: EbpfOptions {
            ring_bytes: config.ring_bytes,
            wakeup_every: config.ring_wakeup_every,
            per_cpu_rings: !config.shared_ring,
        },
        ..EngineOptions::default()
    })?);
    tracing::info!(
        program_ids = ?engine.program_ids(),
        rings = engine.ring_count(),
        "eBPF programs attached to sys_enter and sys_exit"
    );

    let tally = Arc::new(Mutex::new(CgroupTally::default()));
    let startup_session = if config.trace_cgroups.is_empty() {
        None
    } else {
        let mut cgroups = Vec::new();
        for path in &config.trace_cgroups {
            let cgroup = Cgroup::from_path(path)
                .with_context(|| format!("--trace-cgroup {}", path.display()))?;
            tracing::info!(cgroup = %cgroup.path.display(), cgroup_id = cgroup.id, "tracing cgroup");
            cgroups.push(cgroup.id);
        }
        let (session, mut events) = engine.start_session(&KernelFilter {
            cgroups,
            ..KernelFilter::default()
        })?;
        let tally = tally.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                lock(&tally).add(&event.record);
            }
        });
        Some(Arc::new(session))
    };

    let state = AppState {
        engine: engine.clone(),
        tally: tally.clone(),
        startup_session: startup_session.clone(),
    };
    let logger = (config.tally_interval_secs > 0).then(|| {
        tokio::spawn(log_tally(
            tally.clone(),
            Duration::from_secs(config.tally_interval_secs),
        ))
    });

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the API to {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "tracerd is serving");
    // The router owns the state; once serving ends, the engine and session are ours alone.
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the API")?;

    if let Some(logger) = logger {
        logger.abort();
    }
    if let Some(session) = startup_session.and_then(Arc::into_inner) {
        let counters = engine.stop_session(session).await?;
        tracing::info!(?counters, "start-up session stopped");
    }
    log_counts(&lock(&tally));
    // The last reference to the engine goes here: its drop detaches both programs.
    let engine = Arc::into_inner(engine)
        .ok_or_else(|| anyhow::anyhow!("engine still shared at shutdown"))?;
    drop(engine);
    tracing::info!("tracerd stopped; eBPF programs detached");
    drop(data_dir);
    Ok(())
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
