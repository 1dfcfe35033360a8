//! What a record is, shared by every backend and every sink: the syscall event, the filter
//! that selects it, the container it came from, its clocks and its syscall's name. A leaf:
//! it depends on nothing else in the daemon.
pub mod clock;
pub mod syscalls;

use serde::Serialize;
use tracer_common::{record_flags, SyscallRecord};

pub use self::clock::{monotonic_ns, WallClock};

/// One syscall, as delivered to sessions: the kernel record plus its decoded path.
#[derive(Clone, Debug)]
pub struct Event {
    pub record: SyscallRecord,
    /// The path argument, for syscalls that take one (lossily decoded as UTF-8).
    pub path: Option<Box<str>>,
}

impl Event {
    pub fn new(record: &SyscallRecord, path: &[u8]) -> Self {
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
}

/// What events say about the container they come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
            path_len: 0,
            flags: 0,
            comm,
        }
    }
}
