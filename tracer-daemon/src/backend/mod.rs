//! Tracing backends: where records come from. Sessions run on the eBPF backend when it
//! loaded ([`ebpf`]: `raw_tracepoint` programs, per-CPU ring buffers, drain tasks), or on the
//! ftrace backend ([`ftrace`]: a tracefs instance each) when eBPF is unavailable or a session
//! asks for it; either way their records reach them the same way ([`delivery`]).
//!
//! ```text
//!  ring (shared, or one per CPU) ──drain task──▶ Arc<Event> ──try_send──▶ session channel
//!  tracefs instance ──reader thread──────────────────┘           full? count a userspace drop
//! ```
//!
//! A slow consumer fills only its own bounded channel: its session counts the records it
//! missed, and the producer never waits for it, so other sessions are not stalled. For every
//! session, `delivered + dropped_kernel + dropped_userspace == matched` once its records are
//! drained ([`Trace::stop`] waits for that).
//!
//! Sessions reach the engine through two traits, [`Tracer`] and [`Trace`], so their
//! lifecycle can be tested without a kernel; [`Engine`] and [`SessionHandle`] are the real
//! ones.
pub mod delivery;
pub mod ebpf;
mod engine;
pub mod ftrace;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tracer_common::MAX_SESSIONS;

pub use self::{
    delivery::{EventReceiver, SessionCounters},
    engine::{Engine, EngineOptions, NoBackend, SessionHandle},
};
use self::{ebpf::MapUpdateError, ftrace::TracefsError};
use crate::record::TraceFilter;

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
    #[error("a blocking engine task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the session is still in use elsewhere and cannot be stopped")]
    StillInUse,
}

/// The engine as sessions see it: which backends can run, and starting a session.
pub trait Tracer: Send + Sync + 'static {
    /// Whether sessions can run on `backend`; `Err` says why not.
    fn backend_status(&self, backend: Backend) -> Result<(), String>;

    /// Starts tracing for a session on the backend it asks for, or the best available.
    /// Blocking (it programs kernel maps or creates a tracefs instance): call it from the
    /// blocking pool.
    fn start(
        &self,
        filter: &TraceFilter,
        options: &SessionOptions,
    ) -> Result<(Arc<dyn Trace>, EventReceiver), EngineError>;
}

/// One running session in the engine. Every method but [`Trace::stop`] is blocking (kernel
/// map updates, tracefs files): call them from the blocking pool.
pub trait Trace: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Why the session runs on its backend.
    fn backend_reason(&self) -> &str;

    /// Its slot in the kernel's per-session counters, on the eBPF backend.
    fn slot(&self) -> Option<u32> {
        None
    }

    /// Adds a cgroup (a container that started).
    fn add_cgroup(&self, cgroup_id: u64) -> Result<(), EngineError>;

    /// Removes a cgroup (a container that exited).
    fn remove_cgroup(&self, cgroup_id: u64) -> Result<(), EngineError>;

    /// The session's counters now.
    fn counters(&self) -> Result<SessionCounters, EngineError>;

    /// Stops the session: no new syscall matches it, every record already written for it is
    /// delivered (or counted dropped), and its kernel objects are released. The caller must
    /// hold the only reference ([`EngineError::StillInUse`] otherwise). Returns the final
    /// counters.
    fn stop(self: Arc<Self>) -> BoxFuture<'static, Result<SessionCounters, EngineError>>;
}
