//! The real engine: whichever backends load here, and a handle per running session.
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{future::BoxFuture, FutureExt as _};

use super::{
    delivery::{DeliveryCounters, DrainStats, EventReceiver, Route, SessionCounters},
    ebpf::{EbpfOptions, EbpfSessions, KernelCounters},
    ftrace::{self, FtraceBackend, FtraceSession, FtraceSessionOptions},
    Backend, EngineError, SessionOptions, Trace, Tracer,
};
use crate::record::TraceFilter;

/// Options for the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub ebpf: EbpfOptions,
    /// Whether to load the eBPF programs at all (`--no-ebpf` turns this off).
    pub use_ebpf: bool,
    /// Default ring-buffer size per CPU of an ftrace session's instance.
    pub ftrace_buffer_kb: u32,
    /// Default capacity of each session's channel, in records (it holds at most
    /// [`delivery::QUEUE_BYTES`] as well).
    pub session_queue: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            ebpf: EbpfOptions::default(),
            use_ebpf: true,
            ftrace_buffer_kb: ftrace::DEFAULT_BUFFER_KB,
            session_queue: 1 << 20,
        }
    }
}

/// Neither backend can run here.
#[derive(Debug, thiserror::Error)]
#[error("no tracing backend can run: eBPF: {ebpf}; ftrace: {ftrace}")]
pub struct NoBackend {
    pub ebpf: String,
    pub ftrace: String,
}

pub struct Engine {
    ebpf: Option<Arc<EbpfSessions>>,
    /// Why there is no eBPF backend.
    ebpf_unavailable: Option<String>,
    ftrace: Result<Arc<FtraceBackend>, String>,
    drain_stats: Arc<DrainStats>,
    session_queue: usize,
    ftrace_buffer_kb: u32,
}

impl Engine {
    /// Opens the ftrace backend (removing instances a crashed daemon left) and, unless told
    /// not to, loads the eBPF programs and starts one drain task per ring. Runs with whichever
    /// backends work; fails only if neither does. Must be called inside a tokio runtime.
    pub fn start(options: &EngineOptions) -> Result<Self, NoBackend> {
        let drain_stats = Arc::new(DrainStats::default());
        let ftrace = FtraceBackend::open()
            .map(Arc::new)
            .map_err(|err| err.to_string());
        let (ebpf, ebpf_unavailable) = if options.use_ebpf {
            match EbpfSessions::start(&options.ebpf, &drain_stats) {
                Ok(ebpf) => (Some(Arc::new(ebpf)), None),
                Err(err) => (None, Some(err.to_string())),
            }
        } else {
            (None, Some("turned off (--no-ebpf)".to_owned()))
        };
        match (&ebpf_unavailable, &ftrace) {
            (Some(ebpf), Err(ftrace)) => {
                return Err(NoBackend {
                    ebpf: ebpf.clone(),
                    ftrace: ftrace.clone(),
                })
            }
            (Some(why), Ok(_)) => {
                tracing::warn!(reason = %why, "eBPF is unavailable: sessions run on the ftrace backend");
            }
            (None, Err(why)) => {
                tracing::warn!(reason = %why, "the ftrace backend is unavailable");
            }
            (None, Ok(_)) => {}
        }
        Ok(Self {
            ebpf,
            ebpf_unavailable,
            ftrace,
            drain_stats,
            session_queue: options.session_queue,
            ftrace_buffer_kb: options.ftrace_buffer_kb,
        })
    }

    /// Whether sessions can run on the eBPF backend; `Err` says why not.
    pub fn ebpf_status(&self) -> Result<(), &str> {
        match &self.ebpf_unavailable {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }

    /// Whether sessions can run on the ftrace backend; `Err` says why not.
    pub fn ftrace_status(&self) -> Result<(), &str> {
        self.ftrace.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Starts tracing for a new session on the best available backend; its records arrive on
    /// the returned receiver, which holds up to the engine's default `session_queue` records.
    /// Blocking (map updates, tracefs files).
    pub fn start_session(
        &self,
        filter: &TraceFilter,
    ) -> Result<(SessionHandle, EventReceiver), EngineError> {
        self.start_session_with(filter, &SessionOptions::default())
    }

    /// [`Engine::start_session`] with a queue of `queue` records (at least 1) for this session.
    pub fn start_session_with_queue(
        &self,
        filter: &TraceFilter,
        queue: usize,
    ) -> Result<(SessionHandle, EventReceiver), EngineError> {
        self.start_session_with(
            filter,
            &SessionOptions {
                queue: Some(queue),
                ..SessionOptions::default()
            },
        )
    }

    /// Starts a session with `options`: on the backend it asks for, or the best available
    /// (eBPF, else ftrace).
    pub fn start_session_with(
        &self,
        filter: &TraceFilter,
        options: &SessionOptions,
    ) -> Result<(SessionHandle, EventReceiver), EngineError> {
        let (backend, reason) = self.choose_backend(options.backend)?;
        let counters = Arc::new(DeliveryCounters::default());
        let (route, receiver) = Route::new(
            options.queue.unwrap_or(self.session_queue),
            counters.clone(),
        );
        let backend = match (backend, &self.ebpf, &self.ftrace) {
            (Backend::Ebpf, Some(ebpf), _) => SessionBackend::Ebpf {
                slot: ebpf
                    .start_session(filter, route)?
                    .ok_or(EngineError::NoFreeSlot)?,
                ebpf: ebpf.clone(),
            },
            (Backend::Ftrace, _, Ok(ftrace)) => {
                let name = if options.name.is_empty() {
                    format!("session-{}", uuid::Uuid::new_v4())
                } else {
                    options.name.clone()
                };
                let ftrace_options = FtraceSessionOptions {
                    name,
                    buffer_kb: options.ftrace_buffer_kb.unwrap_or(self.ftrace_buffer_kb),
                };
                let session = ftrace.start_session(
                    filter,
                    &ftrace_options,
                    route,
                    self.drain_stats.clone(),
                )?;
                SessionBackend::Ftrace {
                    session,
                    ftrace: ftrace.clone(),
                }
            }
            _ => unreachable!("choose_backend picks an available backend"),
        };
        let handle = SessionHandle {
            backend,
            reason,
            counters,
        };
        Ok((handle, receiver))
    }

    /// The backend for a session that asks for `wanted`, and why.
    fn choose_backend(&self, wanted: Option<Backend>) -> Result<(Backend, String), EngineError> {
        let unavailable = |backend, why: &str| EngineError::BackendUnavailable {
            backend,
            why: why.to_owned(),
        };
        match wanted {
            Some(Backend::Ebpf) => match &self.ebpf_unavailable {
                None => Ok((Backend::Ebpf, "requested".into())),
                Some(why) => Err(unavailable(Backend::Ebpf, why)),
            },
            Some(Backend::Ftrace) => match &self.ftrace {
                Ok(_) => Ok((Backend::Ftrace, "requested".into())),
                Err(why) => Err(unavailable(Backend::Ftrace, why)),
            },
            None => match &self.ebpf_unavailable {
                None => Ok((
                    Backend::Ebpf,
                    "eBPF programs are loaded and attached".into(),
                )),
                Some(why) => Ok((Backend::Ftrace, format!("eBPF is unavailable: {why}"))),
            },
        }
    }

    /// The session's counters now. Blocking (kernel maps or tracefs files).
    pub fn counters(&self, session: &SessionHandle) -> Result<SessionCounters, EngineError> {
        session.counters()
    }

    /// Stops a session: see [`SessionHandle::stop`].
    pub async fn stop_session(
        &self,
        session: SessionHandle,
    ) -> Result<SessionCounters, EngineError> {
        session.stop().await
    }

    /// Reads every eBPF ring once now and waits until that is done (ftrace sessions have
    /// their own readers: [`Engine::flush_session`]).
    pub async fn flush(&self) {
        if let Some(ebpf) = &self.ebpf {
            ebpf.flush().await;
        }
    }

    /// Reads a session's buffers once now and waits until that is done.
    pub async fn flush_session(&self, session: &SessionHandle) {
        session.flush().await;
    }

    /// The kernel's totals over all eBPF sessions. Blocking (map reads).
    pub fn kernel_counters(&self) -> Result<KernelCounters, aya::maps::MapError> {
        match &self.ebpf {
            Some(ebpf) => ebpf.kernel_counters(),
            None => Ok(KernelCounters::default()),
        }
    }

    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .as_ref()
            .map(|ebpf| ebpf.program_ids().to_vec())
            .unwrap_or_default()
    }

    /// Whether the eBPF programs are attached: only while an eBPF session runs.
    pub fn programs_attached(&self) -> bool {
        self.ebpf
            .as_ref()
            .is_some_and(|ebpf| ebpf.programs_attached())
    }

    /// The cgroups the kernel's cache of cgroup sessions holds. Blocking.
    pub fn cached_cgroups(&self) -> Vec<u64> {
        self.ebpf
            .as_ref()
            .map(|ebpf| ebpf.cached_cgroups())
            .unwrap_or_default()
    }

    pub fn drain_stats(&self) -> &DrainStats {
        &self.drain_stats
    }

    /// How many eBPF rings (and drain tasks) there are.
    pub fn ring_count(&self) -> usize {
        self.ebpf.as_ref().map_or(0, |ebpf| ebpf.ring_count())
    }
}

impl Tracer for Engine {
    fn backend_status(&self, backend: Backend) -> Result<(), String> {
        match backend {
            Backend::Ebpf => self.ebpf_status(),
            Backend::Ftrace => self.ftrace_status(),
        }
        .map_err(str::to_owned)
    }

    fn start(
        &self,
        filter: &TraceFilter,
        options: &SessionOptions,
    ) -> Result<(Arc<dyn Trace>, EventReceiver), EngineError> {
        let (handle, events) = self.start_session_with(filter, options)?;
        Ok((Arc::new(handle), events))
    }
}

/// A running session's handle: its kernel slot or its ftrace instance, and its counters.
pub struct SessionHandle {
    backend: SessionBackend,
    reason: String,
    counters: Arc<DeliveryCounters>,
}

enum SessionBackend {
    Ebpf {
        slot: u32,
        ebpf: Arc<EbpfSessions>,
    },
    Ftrace {
        session: FtraceSession,
        ftrace: Arc<FtraceBackend>,
    },
}

impl SessionHandle {
    /// The eBPF slot, for a session on the eBPF backend.
    pub fn slot(&self) -> Option<u32> {
        match &self.backend {
            SessionBackend::Ebpf { slot, .. } => Some(*slot),
            SessionBackend::Ftrace { .. } => None,
        }
    }

    pub fn backend(&self) -> Backend {
        match &self.backend {
            SessionBackend::Ebpf { .. } => Backend::Ebpf,
            SessionBackend::Ftrace { .. } => Backend::Ftrace,
        }
    }

    /// Why the session runs on its backend.
    pub fn backend_reason(&self) -> &str {
        &self.reason
    }

    /// The tracefs instance of a session on the ftrace backend.
    pub fn ftrace_instance(&self) -> Option<&Path> {
        match &self.backend {
            SessionBackend::Ftrace { session, .. } => Some(session.instance_path()),
            SessionBackend::Ebpf { .. } => None,
        }
    }

    /// Adds a cgroup. Blocking (a map update, or cgroup and tracefs files).
    pub fn add_cgroup(&self, cgroup_id: u64) -> Result<(), EngineError> {
        match &self.backend {
            SessionBackend::Ebpf { slot, ebpf } => Ok(ebpf.add_cgroup(*slot, cgroup_id)?),
            SessionBackend::Ftrace { session, ftrace } => {
                Ok(ftrace.add_cgroup(session, cgroup_id)?)
            }
        }
    }

    /// Removes a cgroup. Blocking.
    pub fn remove_cgroup(&self, cgroup_id: u64) -> Result<(), EngineError> {
        match &self.backend {
            SessionBackend::Ebpf { slot, ebpf } => Ok(ebpf.remove_cgroup(*slot, cgroup_id)?),
            SessionBackend::Ftrace { session, .. } => {
                session.remove_cgroup(cgroup_id);
                Ok(())
            }
        }
    }

    /// The counters now. Blocking (a map read, or tracefs `stats` files).
    pub fn counters(&self) -> Result<SessionCounters, EngineError> {
        match &self.backend {
            SessionBackend::Ebpf { slot, ebpf } => {
                let kernel = ebpf.slot_counters(*slot)?;
                Ok(self.counters.with_kernel(kernel.matched, kernel.dropped))
            }
            SessionBackend::Ftrace { session, .. } => Ok(self.counters.with_ftrace(
                session.produced(),
                session.lost_syscalls(),
                session.late_joins(),
            )),
        }
    }

    /// Reads the session's buffers once now and waits until that is done.
    pub async fn flush(&self) {
        match &self.backend {
            SessionBackend::Ebpf { ebpf, .. } => ebpf.flush().await,
            SessionBackend::Ftrace { session, .. } => {
                if let Some(done) = session.flush() {
                    let _ = tokio::task::spawn_blocking(move || done.recv()).await;
                }
            }
        }
    }

    /// Stops the session: no new syscall matches it, every record already written for it is
    /// delivered (or counted dropped), and its slot or instance is released. Returns its
    /// final counters. The ftrace reader's last pass and the instance's removal run on the
    /// blocking pool; an eBPF slot's clear and counter reads are quick `bpf()` calls, made
    /// here (see [`stop_slot`]).
    pub async fn stop(self) -> Result<SessionCounters, EngineError> {
        match self.backend {
            SessionBackend::Ebpf { slot, ebpf } => stop_slot(slot, ebpf, self.counters).await,
            SessionBackend::Ftrace { session, .. } => {
                // The reader's last pass and the instance's removal are blocking file work.
                let (produced, lost, late) =
                    tokio::task::spawn_blocking(move || session.stop()).await?;
                Ok(self.counters.with_ftrace(produced, lost, late))
            }
        }
    }
}

/// Clears an eBPF slot, drains until every record it matched is accounted for, and frees it.
///
/// The clear and the counter reads are `bpf()` updates and lookups of array and hash maps:
/// they never sleep or wait on a device (microseconds each), so they run here, on the
/// caller's worker. Sending them to the blocking pool was measured to lengthen the API's
/// stop latency tail under load (and with it how long a slot stays taken): see
/// docs/benchmarks.md, the API numbers.
async fn stop_slot(
    slot: u32,
    ebpf: Arc<EbpfSessions>,
    delivery: Arc<DeliveryCounters>,
) -> Result<SessionCounters, EngineError> {
    let read = || -> Result<SessionCounters, EngineError> {
        let kernel = ebpf.slot_counters(slot)?;
        Ok(delivery.with_kernel(kernel.matched, kernel.dropped))
    };
    let drained = drain_cleared_slot(slot, &ebpf, read).await;
    // Whatever happened, the slot's route goes: its consumer sees the end of its records.
    ebpf.release_slot(slot);
    drained
}

/// Clears a slot and drains until its records are accounted for; the final counters.
async fn drain_cleared_slot(
    slot: u32,
    ebpf: &EbpfSessions,
    read: impl Fn() -> Result<SessionCounters, EngineError>,
) -> Result<SessionCounters, EngineError> {
    ebpf.clear_slot(slot)?;
    let mut counters = read()?;
    // A program that matched before the clear may still be writing: drain until every
    // matched record is accounted for (bounded; syscalls that entered before the clear and
    // have not returned yet are not matched until they return, and then count for nobody
    // once the route is gone).
    let deadline = Instant::now() + Duration::from_secs(2);
    while !counters.balanced() && Instant::now() < deadline {
        ebpf.flush().await;
        counters = read()?;
        if !counters.balanced() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    if !counters.balanced() {
        tracing::warn!(
            slot,
            ?counters,
            "session stopped with records unaccounted for"
        );
    }
    Ok(counters)
}

impl Trace for SessionHandle {
    fn backend(&self) -> Backend {
        SessionHandle::backend(self)
    }

    fn backend_reason(&self) -> &str {
        SessionHandle::backend_reason(self)
    }

    fn slot(&self) -> Option<u32> {
        SessionHandle::slot(self)
    }

    fn add_cgroup(&self, cgroup_id: u64) -> Result<(), EngineError> {
        SessionHandle::add_cgroup(self, cgroup_id)
    }

    fn remove_cgroup(&self, cgroup_id: u64) -> Result<(), EngineError> {
        SessionHandle::remove_cgroup(self, cgroup_id)
    }

    fn counters(&self) -> Result<SessionCounters, EngineError> {
        SessionHandle::counters(self)
    }

    fn stop(self: Arc<Self>) -> BoxFuture<'static, Result<SessionCounters, EngineError>> {
        match Arc::into_inner(self) {
            Some(handle) => handle.stop().boxed(),
            None => {
                tracing::error!("a session handle is still shared at its stop: its slot or instance stays until the daemon exits");
                std::future::ready(Err(EngineError::StillInUse)).boxed()
            }
        }
    }
}
