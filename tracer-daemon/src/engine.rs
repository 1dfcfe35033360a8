//! The tracing engine: session slots in the kernel, drain tasks that read the ring buffers,
//! and the fan-out of every record to the sessions it belongs to. Sessions run on the eBPF
//! backend when it loaded, or on the ftrace backend (a tracefs instance each, see
//! [`crate::ftrace`]) when eBPF is unavailable or a session asks for it; either way their
//! records arrive the same way.
//!
//! ```text
//!  ring (shared, or one per CPU) ──drain task──▶ Arc<Event> ──try_send──▶ session channel
//!      │ wake-up every N records                          full? count a userspace drop
//!      └ or the periodic flush (FLUSH_INTERVAL)
//! ```
//!
//! A slow consumer fills only its own bounded channel: its session counts the records it
//! missed, and the drain task never waits for it, so other sessions are not stalled.
//! For every session, `delivered + dropped_kernel + dropped_userspace == matched` once its
//! records are drained ([`Engine::stop_session`] waits for that).
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracer_common::{record_flags, SyscallRecord, MAX_SESSIONS};

use crate::{
    ebpf::{
        EbpfBackend, EbpfOptions, KernelCounters, KernelFilter, LoadError, MapUpdateError,
        RecordRing,
    },
    ftrace::{FtraceBackend, FtraceSession, FtraceSessionOptions, TracefsError},
    lock,
};

/// How often drain tasks read their ring even without a wake-up: the bound on delivery
/// latency at low rates, when the kernel batches wake-ups.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// One syscall, as delivered to sessions: the kernel record plus its decoded path.
#[derive(Clone, Debug)]
pub struct Event {
    pub record: SyscallRecord,
    /// The path argument, for syscalls that take one (lossily decoded as UTF-8).
    pub path: Option<Box<str>>,
}

impl Event {
    pub(crate) fn new(record: &SyscallRecord, path: &[u8]) -> Self {
        let readable = record_flags::HAS_PATH | record_flags::PATH_UNREADABLE;
        let path = (record.flags & readable == record_flags::HAS_PATH)
            .then(|| String::from_utf8_lossy(path).into_owned().into_boxed_str());
        Self {
            record: *record,
            path,
        }
    }

    pub fn path_truncated(&self) -> bool {
        self.record.flags & record_flags::PATH_TRUNCATED != 0
    }

    /// The syscall takes a path, but it could be read neither at entry nor at exit (NULL, a
    /// bad pointer, or memory that was not resident), or could not be kept.
    pub fn path_unavailable(&self) -> bool {
        self.record.flags & (record_flags::PATH_UNREADABLE | record_flags::PATH_LOST) != 0
    }
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionCounters {
    /// Records that passed every filter of the session, counted in the kernel.
    pub matched: u64,
    /// Records handed to the session's consumer.
    pub delivered: u64,
    /// Matched records the kernel could not keep or write (full map or ring buffer).
    pub dropped_kernel: u64,
    /// Records the session's consumer was too slow to take (its channel was full).
    pub dropped_userspace: u64,
}

impl SessionCounters {
    pub fn dropped(&self) -> u64 {
        self.dropped_kernel + self.dropped_userspace
    }

    /// Whether every matched record is accounted for.
    pub fn balanced(&self) -> bool {
        self.delivered + self.dropped() == self.matched
    }
}

/// Userspace counters of a session, shared with the drain tasks.
#[derive(Debug, Default)]
pub(crate) struct DeliveryCounters {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl DeliveryCounters {
    /// The session's counters, given what the kernel side counted.
    fn with_kernel(&self, matched: u64, dropped_kernel: u64) -> SessionCounters {
        SessionCounters {
            matched,
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped_kernel,
            dropped_userspace: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// On ftrace every record made is delivered or dropped by the queue, and events the
    /// ring buffer lost never became records.
    fn with_ftrace(&self, produced: u64, lost: u64) -> SessionCounters {
        self.with_kernel(produced + lost, lost)
    }
}

/// Where a session's records go: its bounded channel, and its delivery counters.
#[derive(Clone)]
pub(crate) struct Route {
    sender: mpsc::Sender<Arc<Event>>,
    counters: Arc<DeliveryCounters>,
}

impl Route {
    /// Hands one event to the session; a full channel is the session's counted drop.
    pub(crate) fn deliver(&self, event: Arc<Event>) {
        match self.sender.try_send(event) {
            Ok(()) => self.counters.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A tracing backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Ebpf,
    Ftrace,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::Ftrace => "ftrace",
        }
    }
}

/// How to run one session.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// The backend asked for; `None` for the best available.
    pub backend: Option<Backend>,
    /// Names the session's ftrace instance (`tracerd-<name>`).
    pub name: String,
    /// Capacity of the session's channel, in records (the engine's default if `None`).
    pub queue: Option<usize>,
    /// Ring-buffer size per CPU of an ftrace instance (the engine's default if `None`).
    pub ftrace_buffer_kb: Option<u32>,
}

/// Drain work done, for the benchmark and `/metrics`.
#[derive(Debug, Default)]
pub struct DrainStats {
    pub records: AtomicU64,
    pub busy_ns: AtomicU64,
    pub passes: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("all {MAX_SESSIONS} kernel session slots are in use; stop a session first")]
    NoFreeSlot,
    #[error("the {} backend is unavailable: {why}", backend.as_str())]
    BackendUnavailable { backend: Backend, why: String },
    #[error("the ftrace backend: {0}")]
    Ftrace(#[from] TracefsError),
    #[error(transparent)]
    Map(#[from] MapUpdateError),
    #[error("reading kernel counters: {0}")]
    Counters(#[from] aya::maps::MapError),
}

/// A running session's handle: its kernel slot or its ftrace instance, and its counters.
pub struct SessionHandle {
    backend: SessionBackend,
    reason: String,
    counters: Arc<DeliveryCounters>,
}

enum SessionBackend {
    Ebpf { slot: u32 },
    Ftrace(FtraceSession),
}

impl SessionHandle {
    /// The eBPF slot, for a session on the eBPF backend.
    pub fn slot(&self) -> Option<u32> {
        match &self.backend {
            SessionBackend::Ebpf { slot } => Some(*slot),
            SessionBackend::Ftrace(_) => None,
        }
    }

    pub fn backend(&self) -> Backend {
        match &self.backend {
            SessionBackend::Ebpf { .. } => Backend::Ebpf,
            SessionBackend::Ftrace(_) => Backend::Ftrace,
        }
    }

    /// Why the session runs on its backend.
    pub fn backend_reason(&self) -> &str {
        &self.reason
    }

    /// The tracefs instance of a session on the ftrace backend.
    pub fn ftrace_instance(&self) -> Option<&std::path::Path> {
        match &self.backend {
            SessionBackend::Ftrace(session) => Some(session.instance_path()),
            SessionBackend::Ebpf { .. } => None,
        }
    }
}

/// Options for the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub ebpf: EbpfOptions,
    /// Whether to load the eBPF programs at all (`--no-ebpf` turns this off).
    pub use_ebpf: bool,
    /// Default ring-buffer size per CPU of an ftrace session's instance.
    pub ftrace_buffer_kb: u32,
    /// Default capacity of each session's channel, in records.
    pub session_queue: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            ebpf: EbpfOptions::default(),
            use_ebpf: true,
            ftrace_buffer_kb: crate::ftrace::DEFAULT_BUFFER_KB,
            session_queue: 65536,
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
    ebpf: Option<EbpfEngine>,
    /// Why there is no eBPF backend.
    ebpf_unavailable: Option<String>,
    ftrace: Result<FtraceBackend, String>,
    drain_stats: Arc<DrainStats>,
    session_queue: usize,
    ftrace_buffer_kb: u32,
}

/// The eBPF backend's programs, maps, slots and drain tasks.
struct EbpfEngine {
    backend: Mutex<EbpfBackend>,
    routes: Arc<RwLock<Vec<Option<Route>>>>,
    free_slots: Mutex<Vec<u32>>,
    flushers: Vec<mpsc::Sender<oneshot::Sender<()>>>,
    drains: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Opens the ftrace backend (removing instances a crashed daemon left) and, unless told
    /// not to, loads the eBPF programs and starts one drain task per ring. Runs with whichever
    /// backends work; fails only if neither does. Must be called inside a tokio runtime.
    pub fn start(options: &EngineOptions) -> Result<Self, NoBackend> {
        let drain_stats = Arc::new(DrainStats::default());
        let ftrace = FtraceBackend::open().map_err(|err| err.to_string());
        let (ebpf, ebpf_unavailable) = if options.use_ebpf {
            match EbpfEngine::start(&options.ebpf, &drain_stats) {
                Ok(ebpf) => (Some(ebpf), None),
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
                tracing::warn!(reason = %why, "eBPF is unavailable: sessions run on the ftrace backend")
            }
            (None, Err(why)) => {
                tracing::warn!(reason = %why, "the ftrace backend is unavailable")
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
}

impl EbpfEngine {
    fn start(options: &EbpfOptions, drain_stats: &Arc<DrainStats>) -> Result<Self, LoadError> {
        let mut backend = EbpfBackend::load(options)?;
        let rings = backend.take_rings().map_err(|err| {
            LoadError::Cpus(format!("registering ring buffers with tokio: {err}"))
        })?;
        let routes: Arc<RwLock<Vec<Option<Route>>>> =
            Arc::new(RwLock::new(vec![None; MAX_SESSIONS as usize]));
        let mut flushers = Vec::new();
        let mut drains = Vec::new();
        for ring in rings {
            let (flush_tx, flush_rx) = mpsc::channel(4);
            flushers.push(flush_tx);
            drains.push(tokio::spawn(drain_task(
                ring,
                routes.clone(),
                drain_stats.clone(),
                flush_rx,
            )));
        }
        Ok(Self {
            backend: Mutex::new(backend),
            routes,
            // Lowest slots first, so a lone session is in slot 0.
            free_slots: Mutex::new((0..MAX_SESSIONS).rev().collect()),
            flushers,
            drains,
        })
    }

    /// Programs a free slot for `filter`, routing its records to `route`.
    fn start_session(&self, filter: &KernelFilter, route: Route) -> Result<u32, EngineError> {
        let slot = lock(&self.free_slots)
            .pop()
            .ok_or(EngineError::NoFreeSlot)?;
        // Route first: a record of this slot must never find nobody to go to.
        self.routes.write().unwrap_or_else(|e| e.into_inner())[slot as usize] = Some(route);
        let programmed = lock(&self.backend).program_slot(slot, monotonic_ns(), filter);
        if let Err(err) = programmed {
            self.release_slot(slot);
            return Err(err.into());
        }
        Ok(slot)
    }

    fn release_slot(&self, slot: u32) {
        self.routes.write().unwrap_or_else(|e| e.into_inner())[slot as usize] = None;
        lock(&self.free_slots).push(slot);
    }

    /// Reads every ring once now and waits until that is done.
    async fn flush(&self) {
        let mut acks = Vec::new();
        for flusher in &self.flushers {
            let (ack, done) = oneshot::channel();
            if flusher.send(ack).await.is_ok() {
                acks.push(done);
            }
        }
        for done in acks {
            let _ = done.await;
        }
    }
}

impl Engine {
    /// Starts tracing for a new session on the best available backend; its records arrive on
    /// the returned receiver, which holds up to the engine's default `session_queue` records.
    pub fn start_session(
        &self,
        filter: &KernelFilter,
    ) -> Result<(SessionHandle, mpsc::Receiver<Arc<Event>>), EngineError> {
        self.start_session_with(filter, &SessionOptions::default())
    }

    /// [`Engine::start_session`] with a queue of `queue` records (at least 1) for this session.
    pub fn start_session_with_queue(
        &self,
        filter: &KernelFilter,
        queue: usize,
    ) -> Result<(SessionHandle, mpsc::Receiver<Arc<Event>>), EngineError> {
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
        filter: &KernelFilter,
        options: &SessionOptions,
    ) -> Result<(SessionHandle, mpsc::Receiver<Arc<Event>>), EngineError> {
        let (backend, reason) = self.choose_backend(options.backend)?;
        let queue = options.queue.unwrap_or(self.session_queue);
        let (sender, receiver) = mpsc::channel(queue.max(1));
        let counters = Arc::new(DeliveryCounters::default());
        let route = Route {
            sender,
            counters: counters.clone(),
        };
        let backend = match (backend, &self.ebpf, &self.ftrace) {
            (Backend::Ebpf, Some(ebpf), _) => SessionBackend::Ebpf {
                slot: ebpf.start_session(filter, route)?,
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
                SessionBackend::Ftrace(ftrace.start_session(
                    filter,
                    &ftrace_options,
                    route,
                    self.drain_stats.clone(),
                )?)
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

    fn ebpf(&self) -> &EbpfEngine {
        self.ebpf
            .as_ref()
            .expect("a session on the eBPF backend exists only when it loaded")
    }

    fn ftrace(&self) -> &FtraceBackend {
        self.ftrace
            .as_ref()
            .expect("a session on the ftrace backend exists only when it opened")
    }

    /// Adds a cgroup to a running session.
    pub fn add_cgroup(&self, session: &SessionHandle, cgroup_id: u64) -> Result<(), EngineError> {
        match &session.backend {
            SessionBackend::Ebpf { slot } => {
                Ok(lock(&self.ebpf().backend).add_cgroup(cgroup_id, 1 << slot)?)
            }
            SessionBackend::Ftrace(ftrace) => Ok(self.ftrace().add_cgroup(ftrace, cgroup_id)?),
        }
    }

    /// Removes a cgroup from a running session.
    pub fn remove_cgroup(
        &self,
        session: &SessionHandle,
        cgroup_id: u64,
    ) -> Result<(), EngineError> {
        match &session.backend {
            SessionBackend::Ebpf { slot } => {
                Ok(lock(&self.ebpf().backend).remove_cgroup(cgroup_id, 1 << slot)?)
            }
            SessionBackend::Ftrace(ftrace) => {
                ftrace.remove_cgroup(cgroup_id);
                Ok(())
            }
        }
    }

    /// The session's counters now.
    pub fn counters(&self, session: &SessionHandle) -> Result<SessionCounters, EngineError> {
        match &session.backend {
            SessionBackend::Ebpf { slot } => {
                let kernel = lock(&self.ebpf().backend).slot_counters(*slot)?;
                Ok(session.counters.with_kernel(kernel.matched, kernel.dropped))
            }
            SessionBackend::Ftrace(ftrace) => Ok(session
                .counters
                .with_ftrace(ftrace.produced(), ftrace.lost_events())),
        }
    }

    /// Stops a session: no new syscall matches it, every record already written for it is
    /// delivered (or counted dropped), and its slot or instance is released. Returns its
    /// final counters.
    pub async fn stop_session(
        &self,
        session: SessionHandle,
    ) -> Result<SessionCounters, EngineError> {
        let slot = match session.backend {
            SessionBackend::Ebpf { slot } => slot,
            SessionBackend::Ftrace(ftrace) => {
                // The reader's last pass and the instance's removal are blocking file work.
                let (produced, lost) = tokio::task::spawn_blocking(move || ftrace.stop())
                    .await
                    .map_err(|err| {
                        EngineError::Ftrace(TracefsError::io(
                            "stopping the reader of",
                            std::path::Path::new("an ftrace instance"),
                            std::io::Error::other(err.to_string()),
                        ))
                    })?;
                return Ok(session.counters.with_ftrace(produced, lost));
            }
        };
        let ebpf = self.ebpf();
        let session = SessionHandle {
            backend: SessionBackend::Ebpf { slot },
            ..session
        };
        lock(&ebpf.backend).clear_slot(slot)?;
        // A program that matched before the clear may still be writing: drain until every
        // matched record is accounted for (bounded; syscalls that entered before the clear and
        // have not returned yet are not matched until they return, and then count for nobody
        // once the route is gone).
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut counters = self.counters(&session)?;
        while !counters.balanced() && Instant::now() < deadline {
            ebpf.flush().await;
            counters = self.counters(&session)?;
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
        ebpf.release_slot(slot);
        Ok(counters)
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
        match &session.backend {
            SessionBackend::Ebpf { .. } => self.flush().await,
            SessionBackend::Ftrace(ftrace) => {
                if let Some(done) = ftrace.flush() {
                    let _ = tokio::task::spawn_blocking(move || done.recv()).await;
                }
            }
        }
    }

    pub fn kernel_counters(&self) -> Result<KernelCounters, aya::maps::MapError> {
        match &self.ebpf {
            Some(ebpf) => lock(&ebpf.backend).counters(),
            None => Ok(KernelCounters::default()),
        }
    }

    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .as_ref()
            .map(|ebpf| lock(&ebpf.backend).program_ids())
            .unwrap_or_default()
    }

    pub fn drain_stats(&self) -> &DrainStats {
        &self.drain_stats
    }

    /// How many eBPF rings (and drain tasks) there are.
    pub fn ring_count(&self) -> usize {
        self.ebpf.as_ref().map_or(0, |ebpf| ebpf.drains.len())
    }
}

impl Drop for EbpfEngine {
    fn drop(&mut self) {
        for drain in &self.drains {
            drain.abort();
        }
    }
}

/// Reads one ring: when the kernel wakes it, on every flush tick, and on request.
async fn drain_task(
    mut ring: RecordRing,
    routes: Arc<RwLock<Vec<Option<Route>>>>,
    stats: Arc<DrainStats>,
    mut flush_requests: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fan_out = FanOut::default();
    loop {
        let mut ack = None;
        tokio::select! {
            ready = ring.drain_when_ready(|record, path| fan_out.collect(record, path)) => {
                if let Err(err) = ready {
                    tracing::error!(%err, "waiting on a record ring buffer failed");
                    tokio::time::sleep(FLUSH_INTERVAL).await;
                }
            }
            _ = tick.tick() => {
                ring.drain_now(|record, path| fan_out.collect(record, path));
            }
            request = flush_requests.recv() => {
                ring.drain_now(|record, path| fan_out.collect(record, path));
                ack = request;
            }
        }
        let (handled, busy_ns) = fan_out.deliver(&routes);
        if handled > 0 {
            stats.records.fetch_add(handled as u64, Ordering::Relaxed);
            stats.passes.fetch_add(1, Ordering::Relaxed);
            stats.busy_ns.fetch_add(busy_ns, Ordering::Relaxed);
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

/// Collects one drain pass's events, then delivers them with one lock of the routes.
#[derive(Default)]
struct FanOut {
    batch: Vec<Arc<Event>>,
    /// When the pass's first record was read: the start of its userspace work.
    first_read: Option<Instant>,
}

impl FanOut {
    fn collect(&mut self, record: &SyscallRecord, path: &[u8]) {
        self.first_read.get_or_insert_with(Instant::now);
        self.batch.push(Arc::new(Event::new(record, path)));
    }

    /// Sends each event to every session it belongs to; a full channel is that session's
    /// counted drop. Returns how many events there were and the nanoseconds spent on them,
    /// from reading the first to delivering the last.
    fn deliver(&mut self, routes: &RwLock<Vec<Option<Route>>>) -> (usize, u64) {
        let count = self.batch.len();
        let Some(first_read) = self.first_read.take() else {
            return (0, 0);
        };
        let routes = routes.read().unwrap_or_else(|e| e.into_inner());
        for event in self.batch.drain(..) {
            let mut sessions = event.record.sessions;
            while sessions != 0 {
                let slot = sessions.trailing_zeros() as usize;
                sessions &= sessions - 1;
                // No route: the session stopped; its counters were final before the route went.
                let Some(Some(route)) = routes.get(slot) else {
                    continue;
                };
                route.deliver(event.clone());
            }
        }
        (count, first_read.elapsed().as_nanos() as u64)
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
