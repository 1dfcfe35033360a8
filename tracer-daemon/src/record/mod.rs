//! What a record is, shared by every backend and every sink: the syscall event, the filter
//! that selects it, the container it came from, its clocks and its syscall's name. A leaf:
//! it depends on nothing else in the daemon.
pub mod batch;
pub mod captured;
pub mod clock;
pub mod decode;
pub mod signatures;
pub mod syscalls;

use serde::Serialize;
use tracer_common::{SyscallRecord, PATH_MAX_LEN};

pub use self::clock::{monotonic_ns, WallClock};

/// One syscall, as delivered to sessions: the kernel record, the argument data captured
/// with it, and its path argument.
#[derive(Clone, Debug)]
pub struct Event {
    pub record: SyscallRecord,
    /// Captured argument data, as the kernel wrote it (see [`captured`]); empty when none.
    pub data: Box<[u8]>,
    /// The path argument, for syscalls that take one (lossily decoded as UTF-8), cut at
    /// `PATH_MAX_LEN - 1` characters.
    pub path: Option<Box<str>>,
    /// The path was longer than what is kept.
    pub path_truncated: bool,
}

impl Event {
    pub fn new(record: &SyscallRecord, data: &[u8]) -> Self {
        let mut event = Self {
            record: *record,
            data: data.into(),
            path: None,
            path_truncated: false,
        };
        if let Some(index) = syscalls::path_index(record.nr) {
            let captured = captured::Captured::parse(data);
            if let Some(path) = captured.strings[index].filter(|path| !path.unreadable) {
                let limit = PATH_MAX_LEN - 1;
                let kept = &path.bytes[..path.bytes.len().min(limit)];
                event.path = Some(String::from_utf8_lossy(kept).into());
                event.path_truncated = path.bytes.len() > limit;
            }
        }
        event
    }

    pub fn path_truncated(&self) -> bool {
        self.path_truncated
    }

    /// The syscall takes a path, but it was not captured: NULL, a bad pointer, memory that
    /// was not resident at entry or exit, no storage for it, capture off, or a backend that
    /// cannot read user memory.
    pub fn path_unavailable(&self) -> bool {
        self.path.is_none() && syscalls::path_index(self.record.nr).is_some()
    }
}

/// What a session captures of its syscalls' argument data, and how much of it it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSettings {
    /// Read strings, socket addresses and argv in the kernel (off: registers only).
    pub enabled: bool,
    pub limits: decode::Limits,
    /// The syscalls whose buffers are captured (`read`, `write`…); `None` for all of them.
    pub data_syscalls: Option<Vec<u32>>,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            limits: decode::Limits::default(),
            data_syscalls: None,
        }
    }
}

impl CaptureSettings {
    /// Whether the session captures the buffers of syscall `nr`.
    pub fn captures_data_of(&self, nr: u32) -> bool {
        self.enabled
            && self.limits.data_bytes > 0
            && self
                .data_syscalls
                .as_ref()
                .is_none_or(|chosen| chosen.contains(&nr))
    }
}

/// What a session records, as every backend applies it in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// cgroup ids to trace.
    pub cgroups: Vec<u64>,
    /// Syscall numbers to record; `None` for all.
    pub syscalls: Option<Vec<u32>>,
    /// Only these processes (tgids); `None` for all.
    pub tgids: Option<Vec<u32>>,
    /// Only calls that fail (return value < 0).
    pub failed_only: bool,
    /// What argument data to capture.
    pub capture: CaptureSettings,
}

/// What events say about the container they come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ContainerMeta {
    pub id: String,
    pub name: String,
    pub image: String,
}

/// Records for unit tests.
#[cfg(test)]
pub(crate) mod samples {
    use tracer_common::{SyscallRecord, COMM_LEN};

    /// A completed `nr` call by thread `tid` of process `tgid` in cgroup `cgroup_id`,
    /// for session slot 0.
    pub fn record(nr: u32, tgid: u32, tid: u32, cgroup_id: u64) -> SyscallRecord {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"test");
        SyscallRecord {
            enter_ns: 1_000,
            duration_ns: 250,
            cgroup_id,
            sessions: 1,
            args: [0; 6],
            ret: 0,
            tgid,
            tid,
            nr,
            data_len: 0,
            flags: 0,
            comm,
        }
    }
}
