//! The daemon's lifetime: open the data directory, load the kernel programs, resume the
//! sessions that were running, serve the API, and take everything down again on shutdown.
use std::{
    future::Future,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::{
    backend::{ebpf::EbpfOptions, Engine, EngineOptions, SessionHandle},
    cgroup::Cgroup,
    cluster::{etcd::EtcdTls, records::NodeRecord, Cluster, Membership},
    config::Config,
    containers::docker::DockerClient,
    data_dir::DataDir,
    http::{
        self,
        auth::Auth,
        serve::{self, ServeLimits, Transport},
        AppState,
    },
    listen::Listen,
    pins::CounterPins,
    record::TraceFilter,
    session::{
        follow_containers,
        spec::validate_node_name,
        store::{FullDisk, Store},
        ManagerOptions, SessionManager,
    },
    sink::{
        eventlog::finish_unfinished_segments,
        export::{self, DaemonExport, ExportOptions},
    },
    space::SpaceReserve,
    sync::lock,
    tally::CgroupTally,
};

/// How often running sessions' counters are saved: a crash loses at most this much of them.
const PERSIST_INTERVAL: Duration = Duration::from_millis(250);

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut data_dir = DataDir::open(&config.data_dir)?;
    let auth = authentication(&config, data_dir.path())?;
    let reserve = data_dir.reserve();
    let store = open_store(&mut data_dir).await?;
    let pins = CounterPins::for_data_dir(data_dir.path());
    let mut options = manager_options(&config, &data_dir)?;
    options.pinned_counters = pins
        .as_ref()
        .map(|pins| pins.counters().display().to_string());
    // Loading programs and cleaning up tracefs is blocking work: on the blocking pool (which
    // runs inside the runtime, so the drain tasks it spawns are the runtime's).
    let engine = {
        let (config, pin) = (config.clone(), pins.as_ref().map(CounterPins::counters));
        Arc::new(tokio::task::spawn_blocking(move || start_engine(&config, pin)).await??)
    };
    let docker = Arc::new(DockerClient::new(&config.docker_socket));
    let manager = SessionManager::new(engine.clone(), docker, store, options);
    settle_after_crash(&manager, pins.as_ref()).await?;

    let tally = Arc::new(Mutex::new(CgroupTally::default()));
    let startup_session = start_cgroup_tally(&engine, &config, &tally)?;
    let logger = (config.tally_interval_secs > 0).then(|| {
        tokio::spawn(log_tally(
            tally.clone(),
            Duration::from_secs(config.tally_interval_secs),
        ))
    });

    let cluster = join_cluster(&config, &engine, &manager).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        engine: engine.clone(),
        manager: manager.clone(),
        auth,
        ready: ready.clone(),
        tally: tally.clone(),
        startup_session: startup_session.clone(),
        reserve: reserve.clone(),
        cluster: cluster.clone(),
    };
    // When the signal comes, live followers end their streams first: the server's graceful
    // shutdown waits for responses in flight, and a followed stream would never end.
    let followers = manager.followers().clone();
    let shutdown = async move {
        shutdown.await;
        followers.close();
    };
    let servers = Servers::start(&config, state, shutdown).await?;

    // Serving already, so /readyz can say recovery is under way.
    if let Some(cluster) = &cluster {
        cluster.settle_parts_before_recovery().await;
    }
    resume_sessions(&manager, &ready).await?;
    if let Some(cluster) = &cluster {
        cluster.start_agent();
    }
    let follower = tokio::spawn(follow_containers(manager.clone()));
    let persister = tokio::spawn(persist_counters(manager.clone(), reserve));

    servers.wait().await?;

    for task in [Some(persister), Some(follower), logger]
        .into_iter()
        .flatten()
    {
        task.abort();
        let _ = task.await;
    }
    end_sessions(cluster, manager).await;
    // No session runs now: the launch parent cgroup is not needed until the next start.
    tokio::task::spawn_blocking(crate::session::remove_launch_parent_cgroups).await?;
    if let Some(session) = startup_session.and_then(Arc::into_inner) {
        let counters = engine.stop_session(session).await?;
        tracing::info!(?counters, "start-up session stopped");
    }
    log_counts(&lock(&tally));
    match Arc::into_inner(engine) {
        // The last reference: dropping it detaches both programs.
        Some(engine) => drop(engine),
        None => tracing::warn!(
            "the engine is still referenced at shutdown; its programs detach as the process exits"
        ),
    }
    if let Some(pins) = &pins {
        pins.remove_own();
    }
    tracing::info!("tracerd stopped; eBPF programs detached, tracefs instances removed");
    drop(data_dir);
    Ok(())
}

/// Resumes the sessions that were running when the daemon last stopped; then it is ready.
async fn resume_sessions(manager: &SessionManager, ready: &AtomicBool) -> anyhow::Result<()> {
    let (resumed, failed) = manager.recover().await?;
    ready.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        resumed,
        failed,
        "sessions that were running are resumed; ready"
    );
    Ok(())
}

/// Leaves the cluster (its agent stops first, so it starts nothing more) and ends every run;
/// running sessions stay `running` in the store: the next start resumes them.
async fn end_sessions(cluster: Option<Arc<Cluster>>, manager: Arc<SessionManager>) {
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    manager.shutdown().await;
}

/// With `--etcd`: this node in the cluster (registered in the background).
async fn join_cluster(
    config: &Config,
    engine: &Engine,
    manager: &Arc<SessionManager>,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    if config.etcd.is_empty() {
        return Ok(None);
    }
    let name = match &config.node {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_owned(),
    };
    validate_node_name("--node", &name)?;
    let api = config
        .node_address
        .clone()
        .or_else(|| match &config.listen {
            Listen::Tcp(address) if !address.ip().is_unspecified() => {
                let scheme = if config.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                Some(format!("{scheme}://{address}"))
            }
            _ => None,
        });
    if api.is_none() {
        tracing::warn!("no --node-address and --listen is not one address: other nodes cannot read this node's events");
    }
    let mut backends = Vec::new();
    if engine.ebpf_status().is_ok() {
        backends.push("ebpf".to_owned());
    }
    if engine.ftrace_status().is_ok() {
        backends.push("ftrace".to_owned());
    }
    let node = NodeRecord {
        name,
        labels: config.node_labels.iter().cloned().collect(),
        api,
        backends,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: crate::record::clock::now_rfc3339(),
    };
    let membership = Membership {
        endpoints: config.etcd.clone(),
        prefix: config.etcd_prefix.clone(),
        tls: EtcdTls {
            ca_file: config.etcd_ca_file.clone(),
            cert: config.etcd_cert.clone(),
            key: config.etcd_key.clone(),
        },
        node,
    };
    Ok(Some(Cluster::join(membership, manager.clone()).await?))
}

/// Bearer tokens from `--tokens`. Without them a loopback listener is open (every caller is
/// the admin), and any other listener takes the admin token kept in the data directory
/// (made on first start): an API reachable from the network never runs without a token.
fn authentication(config: &Config, data_dir: &std::path::Path) -> anyhow::Result<Auth> {
    let auth = match &config.tokens {
        Some(path) => Auth::load(path)?,
        None if config.listen.is_local() => Auth::Open,
        None => {
            let path = data_dir.join("admin-token");
            let (token, created) = crate::http::auth::admin_token(&path)?;
            if created {
                tracing::warn!(
                    "no --tokens and listening on {}: created an admin token in {} (mode 0600); \
                     callers send it as `Authorization: Bearer <token>`",
                    config.listen,
                    path.display()
                );
            } else {
                tracing::info!(
                    "no --tokens: callers need the admin token in {}",
                    path.display()
                );
            }
            Auth::admin(token)
        }
    };
    if !config.listen.is_local() && config.tls_cert.is_none() {
        tracing::warn!(
            "listening on {} without TLS: bearer tokens travel in clear text on the network",
            config.listen
        );
    }
    Ok(auth)
}

/// The API server, and the metrics one of `--metrics-listen`.
struct Servers {
    api: tokio::task::JoinHandle<std::io::Result<()>>,
    metrics: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Servers {
    /// Binds and serves; the API until `shutdown` completes.
    async fn start(
        config: &Config,
        state: AppState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Self> {
        let limits = ServeLimits {
            max_connections: serve::raise_fd_limit(config.max_connections),
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            idle_timeout: config.idle_timeout,
        };
        let metrics = match config.metrics_listen {
            Some(address) => {
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding the metrics listener to {address}"))?;
                tracing::info!(listen = %listener.local_addr()?, "serving /metrics without a token");
                let router = http::metrics_router(state.clone());
                // Prometheus needs a few connections; the API keeps the rest of the room.
                let metrics_limits = ServeLimits {
                    max_connections: limits.max_connections.min(64),
                    ..limits
                };
                let serving = serve::serve(
                    listener,
                    Transport::Plain,
                    router,
                    metrics_limits,
                    std::future::pending(),
                );
                Some(tokio::spawn(serving))
            }
            None => None,
        };
        // The routers own their state; once serving ends, the engine and manager are ours.
        let router = http::router(state);
        let api = match &config.listen {
            Listen::Tcp(address) => {
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding the API to {address}"))?;
                let local = listener.local_addr()?;
                let transport = match (&config.tls_cert, &config.tls_key) {
                    (Some(cert), Some(key)) => {
                        let tls =
                            http::tls::server_config(cert, key, config.tls_client_ca.as_deref())?;
                        let mutual = config.tls_client_ca.is_some();
                        tracing::info!(listen = %local, tls = true, mutual, "tracerd is serving");
                        Transport::Tls(tls.into())
                    }
                    _ => {
                        tracing::info!(listen = %local, "tracerd is serving");
                        Transport::Plain
                    }
                };
                tokio::spawn(serve::serve(listener, transport, router, limits, shutdown))
            }
            Listen::Unix(path) => {
                let listener = bind_unix(path, config.listen_mode, config.listen_group.as_deref())?;
                tracing::info!(listen = %config.listen, "tracerd is serving");
                let serving = serve::serve(listener, Transport::Plain, router, limits, shutdown);
                let path = path.clone();
                tokio::spawn(async move {
                    let served = serving.await;
                    let _ = std::fs::remove_file(&path);
                    served
                })
            }
        };
        Ok(Self { api, metrics })
    }

    /// Waits for the API to stop serving, then stops the metrics server (it holds a copy of
    /// the state, which must be gone before the engine is released).
    async fn wait(self) -> anyhow::Result<()> {
        self.api
            .await
            .context("the API server task")?
            .context("serving the API")?;
        if let Some(metrics) = self.metrics {
            metrics.abort();
            let _ = metrics.await;
        }
        Ok(())
    }
}

/// Binds the API's unix socket at `path` (replacing a stale one) with `mode` and `group`.
fn bind_unix(
    path: &std::path::Path,
    mode: u32,
    group: Option<&str>,
) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("making {}", parent.display()))?;
    }
    // A socket left by a daemon that died (nobody answers on it) is replaced; anything else
    // at the path is not ours to remove.
    if let Ok(existing) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !existing.file_type().is_socket() {
            anyhow::bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: another tracerd serves on it", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the API to unix:{}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    if let Some(name) = group {
        let group = nix::unistd::Group::from_name(name)
            .with_context(|| format!("looking up group {name}"))?
            .with_context(|| format!("no group named {name}"))?;
        nix::unistd::chown(path, None, Some(group.gid))
            .with_context(|| format!("giving {} to group {name}", path.display()))?;
    }
    Ok(listener)
}

/// Why PIDs read here are not the host's (a container without `--pid=host`), said once.
fn foreign_pids() -> Option<String> {
    let why = crate::host_view::own_pid_namespace();
    if let Some(why) = &why {
        tracing::warn!("{why}; until then only cgroup targets can be traced");
    }
    why
}

/// The sessions' store on the data directory's database, once what a dead daemon left
/// behind is tidied: the launch parent cgroup, and its sessions' unfinished event-log
/// segments.
async fn open_store(data_dir: &mut DataDir) -> anyhow::Result<Store> {
    let full_disk = FullDisk {
        reserve: data_dir.reserve(),
        reopen: data_dir.read_only().then(|| data_dir.db_path()),
    };
    let db = data_dir
        .take_db()
        .context("the data directory's database")?;
    let store = Store::new(db, Some(full_disk))?;
    tracing::info!(data_dir = %data_dir.path().display(), "data directory ready");
    tokio::task::spawn_blocking(crate::session::remove_launch_parent_cgroups).await?;
    let sessions_dir = data_dir.path().join("sessions");
    tokio::task::spawn_blocking(move || finish_unfinished_segments(&sessions_dir)).await?;
    Ok(store)
}

/// Where sessions keep their data and send their spans.
fn manager_options(config: &Config, data_dir: &DataDir) -> anyhow::Result<ManagerOptions> {
    let export_default = DaemonExport {
        endpoint: config.otlp_endpoint.clone(),
        protocol: config.otlp_protocol.clone(),
        headers: config.otlp_headers.clone(),
        compression: config.otlp_compression.clone(),
        timeout: config.otlp_timeout,
        ca_file: config.otlp_ca_file.clone(),
    }
    .resolve()?;
    match &export_default {
        Some(otlp) => {
            tracing::info!(endpoint = %otlp.endpoint, protocol = otlp.protocol.as_str(), "sessions export spans here unless they name their own collector");
        }
        None => tracing::info!("no default OTLP collector: sessions export only if they name one"),
    }
    Ok(ManagerOptions {
        sessions_dir: data_dir.path().join("sessions"),
        event_log_cap_bytes: config.event_log_cap_bytes,
        owner_label: config.owner_label.clone(),
        export_default,
        export_options: ExportOptions {
            batch_spans: config.export_batch_spans as usize,
            batch_delay: config.export_batch_delay,
            spool_cap_bytes: config.spool_cap_bytes,
            memory_spans: config.export_memory_spans as usize,
            ..ExportOptions::default()
        },
        export_resource: export::resource(),
        foreign_pids: foreign_pids(),
        reserve: Some(data_dir.reserve()),
        // Set once the engine's pins are known.
        pinned_counters: None,
    })
}

/// Loads the backends (start-up: before anything is served).
fn start_engine(config: &Config, pin_counters: Option<PathBuf>) -> anyhow::Result<Engine> {
    let engine = Engine::start(&EngineOptions {
        ebpf: EbpfOptions {
            ring_bytes: config
                .ring_bytes
                .unwrap_or_else(crate::backend::ebpf::auto_ring_bytes),
            wakeup_every: config.ring_wakeup_every,
            per_cpu_rings: !config.shared_ring,
            cgroup_cache: true,
            pin_counters,
        },
        use_ebpf: !config.no_ebpf,
        ftrace_buffer_kb: config.ftrace_buffer_kb,
        ..EngineOptions::default()
    })?;
    if engine.ebpf_status().is_ok() {
        tracing::info!(
            program_ids = ?engine.program_ids(),
            rings = engine.ring_count(),
            "eBPF programs attached to sys_enter and sys_exit"
        );
    }
    Ok(engine)
}

/// Settles the runs an earlier daemon died during (before anything is served, so no request
/// meets a session with unsettled counters), then removes what that daemon pinned.
async fn settle_after_crash(
    manager: &SessionManager,
    pins: Option<&CounterPins>,
) -> anyhow::Result<()> {
    let outcome = manager.settle_crashed_runs().await?;
    if outcome.settled > 0 {
        tracing::info!(
            settled = outcome.settled,
            "runs the previous daemon died during are settled"
        );
    }
    if let Some(pins) = pins {
        pins.remove_stale(&outcome.kept_pins);
    }
    Ok(())
}

/// Saves running sessions' counters every [`PERSIST_INTERVAL`], for as long as it runs.
async fn persist_counters(manager: Arc<SessionManager>, reserve: Arc<SpaceReserve>) {
    let mut every = tokio::time::interval(PERSIST_INTERVAL);
    // Said once per failure, not every tick.
    let mut failing = false;
    loop {
        every.tick().await;
        match manager.persist_counters().await {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::error!(%err, "saving session counters failed (said once until it works)");
            }
            Err(_) => {}
        }
        if reserve.is_released() {
            let reserve = reserve.clone();
            let _ = tokio::task::spawn_blocking(move || reserve.restore_if_room()).await;
        }
    }
}

/// The session for `--trace-cgroup`: counts per cgroup and syscall, in the tally.
fn start_cgroup_tally(
    engine: &Engine,
    config: &Config,
    tally: &Arc<Mutex<CgroupTally>>,
) -> anyhow::Result<Option<Arc<SessionHandle>>> {
    if config.trace_cgroups.is_empty() {
        return Ok(None);
    }
    let mut cgroups = Vec::new();
    for path in &config.trace_cgroups {
        let cgroup = Cgroup::from_path(path)
            .with_context(|| format!("--trace-cgroup {}", path.display()))?;
        tracing::info!(cgroup = %cgroup.path.display(), cgroup_id = cgroup.id, "tracing cgroup");
        cgroups.push(cgroup.id);
    }
    let (session, mut events) = engine.start_session(&TraceFilter {
        cgroups,
        ..TraceFilter::default()
    })?;
    let tally = tally.clone();
    tokio::spawn(async move {
        while let Some(batch) = events.recv().await {
            let mut tally = lock(&tally);
            for (record, _) in batch.iter() {
                tally.add(&record);
            }
        }
    });
    Ok(Some(Arc::new(session)))
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
