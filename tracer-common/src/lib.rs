//! Types shared by the kernel programs (`tracer-ebpf`) and the daemon (`tracer-daemon`).
//!
//! Everything here is `#[repr(C)]` with its padding written out as named fields, so every
//! byte that crosses a map or ring buffer is initialised and both sides agree on the layout.
#![no_std]

/// Length of a task's `comm`, including the NUL (the kernel's `TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// How many sessions the kernel side can serve at once. A session's slot is its bit in a
/// [`SessionMask`], so this is the width of that mask.
pub const MAX_SESSIONS: u32 = 64;

/// Capacity of the cgroup-id → sessions map: distinct cgroups traced at once (each with
/// its whole subtree).
pub const MAX_TRACED_CGROUPS: u32 = 8192;

/// Capacity of the kernel's cache of which sessions trace each cgroup (the `CGROUP_SESSIONS`
/// map): distinct cgroups whose processes make syscalls while a session runs. Past it the
/// least recently used entries are evicted, and recomputed if their cgroup comes back.
pub const MAX_CACHED_CGROUPS: u32 = 16384;

/// How many levels of a cgroup's ancestors the kernel checks for a traced one (the root is
/// level 0; Kubernetes containers sit at level 4 or 5). A target deeper than this below the
/// root covers only the cgroups down to this level.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Syscall numbers below this have their own entry in the per-syscall maps; larger ones
/// (none on x86_64 or aarch64 today) are traced only by sessions that trace every syscall.
pub const MAX_SYSCALLS: u32 = 1024;

/// Bytes of a path argument kept, including its NUL.
pub const PATH_MAX_LEN: usize = 256;

/// Capacity of the tgid → sessions map (the `tgids` condition).
pub const MAX_FILTERED_TGIDS: u32 = 16384;

/// Default size of the ring buffer the kernel writes records to, in bytes (a power of two
/// and a multiple of the page size, as the kernel requires). The daemon may override it.
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

/// Indexes of the kernel's per-CPU event counters (the `COUNTERS` map). Per-session
/// accounting lives in [`SlotState`]; these are totals over all sessions, per record.
pub mod counter {
    /// Records written to a ring buffer.
    pub const WRITTEN: u32 = 0;
    /// Syscalls lost because no in-flight storage could be had for the thread at entry
    /// (the kernel could not allocate it).
    pub const DROPPED_INFLIGHT_FULL: u32 = 1;
    /// Completed syscalls lost because the ring buffer was full.
    pub const DROPPED_RING_FULL: u32 = 2;
    /// Path arguments lost because no storage could be had for them (the record still goes
    /// out, flagged [`super::record_flags::PATH_LOST`]).
    pub const PATHS_LOST: u32 = 3;
    /// Not a total: records this CPU wrote since it last woke the reader.
    pub const SINCE_WAKEUP: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// Indexes of the `MASKS` map: session masks that apply to every syscall.
pub mod mask {
    /// Sessions tracing every syscall.
    pub const ALL_SYSCALLS: u32 = 0;
    /// Sessions that want failed calls only (return value < 0).
    pub const FAILED_ONLY: u32 = 1;
    /// Sessions restricted to a set of tgids (see the `TGID_SESSIONS` map).
    pub const TGID_FILTERED: u32 = 2;
    /// Number of masks.
    pub const COUNT: u32 = 3;
}

/// Bits of [`SyscallRecord::flags`].
pub mod record_flags {
    /// A path argument follows the record ([`PathRecord`](super::PathRecord)).
    pub const HAS_PATH: u16 = 1;
    /// The path was longer than the buffer and was cut.
    pub const PATH_TRUNCATED: u16 = 2;
    /// The syscall takes a path, but no storage could be had to keep it.
    pub const PATH_LOST: u16 = 4;
    /// The path pointer could not be read (NULL or bad: the syscall itself fails with EFAULT
    /// or takes no path then); the record carries an empty path.
    pub const PATH_UNREADABLE: u16 = 8;
}

/// Ring-buffer wake-up policy, in the `RING_CONFIG` map.
pub mod ring_config {
    /// Index of how many records a CPU writes between forced wake-ups of the reader (0: let
    /// the kernel wake it whenever it has caught up, up to once per record). Records between
    /// wake-ups wait for userspace's periodic flush, which bounds their latency.
    pub const WAKEUP_EVERY: u32 = 0;
    /// Index of the output selector: 0 writes to the shared `RECORDS` ring, 1 to this CPU's
    /// ring in `RECORDS_BY_CPU`.
    pub const PER_CPU: u32 = 1;
    /// Number of entries.
    pub const COUNT: u32 = 2;
}

/// How the kernel finds a cgroup's sessions, in the `CGROUP_CONFIG` map.
pub mod cgroup_config {
    /// Index of the targets' generation: userspace adds one after every change of
    /// `TRACED_CGROUPS`, which makes every cached [`CgroupSessions`](super::CgroupSessions)
    /// of an older generation stale.
    pub const GENERATION: u32 = 0;
    /// Index of a switch for comparisons (benchmarks): nonzero walks a cgroup's ancestors on
    /// every syscall instead of caching the answer per cgroup.
    pub const NO_CACHE: u32 = 1;
    /// Number of entries.
    pub const COUNT: u32 = 2;
}

/// Which sessions trace one cgroup, through itself or an ancestor: what the kernel computed
/// from `TRACED_CGROUPS` at some generation of it, cached per cgroup (`CGROUP_SESSIONS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupSessions {
    pub sessions: SessionMask,
    /// The [`cgroup_config::GENERATION`] it was computed at.
    pub generation: u64,
}

/// Per-CPU state of one session slot (the `SLOTS` map). Userspace writes it, on every CPU,
/// when a session takes the slot; the kernel only adds to the counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SlotState {
    /// CLOCK_MONOTONIC time the slot's session started. A syscall that entered earlier
    /// belongs to a previous user of the slot and is not counted or delivered for this one.
    pub start_ns: u64,
    /// Records that passed every filter of this session.
    pub matched: u64,
    /// Matched records the kernel could not keep or write.
    pub dropped: u64,
}
/// One bit per session slot: bit `i` set means session slot `i` wants this record.
pub type SessionMask = u64;

/// A syscall between `sys_enter` and `sys_exit`, kept per thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InflightSyscall {
    /// `bpf_ktime_get_ns()` at entry (CLOCK_MONOTONIC).
    pub enter_ns: u64,
    /// The task's cgroup id at entry.
    pub cgroup_id: u64,
    /// The sessions that matched at entry.
    pub sessions: SessionMask,
    /// The six raw argument registers at entry.
    pub args: [u64; 6],
    /// The syscall number.
    pub nr: u32,
    /// 1 between a traced entry and its exit. The storage stays with the thread for its next
    /// syscall, so this, not the storage's existence, says whether a syscall is in flight.
    pub active: u32,
}

/// One completed syscall, as written to the ring buffer by `sys_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallRecord {
    /// `bpf_ktime_get_ns()` at entry (CLOCK_MONOTONIC, nanoseconds).
    pub enter_ns: u64,
    /// Time from entry to exit, in nanoseconds.
    pub duration_ns: u64,
    /// The cgroup (v2) id of the task when it entered the syscall.
    pub cgroup_id: u64,
    /// The sessions this record belongs to.
    pub sessions: SessionMask,
    /// The six raw argument registers at entry.
    pub args: [u64; 6],
    /// The return value (negative errno on failure).
    pub ret: i64,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// The syscall number, in the host architecture's numbering.
    pub nr: u32,
    /// Length of the path that follows, without its NUL (0 when there is none).
    pub path_len: u16,
    /// [`record_flags`] bits.
    pub flags: u16,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// A path argument read at syscall entry, NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathArg {
    /// Length without the NUL.
    pub len: u16,
    /// [`record_flags::PATH_TRUNCATED`] or 0.
    pub flags: u16,
    /// The syscall number the path was read for (0 after it was used), so a path is only
    /// ever attached to the syscall it belongs to.
    pub nr: u32,
    pub bytes: [u8; PATH_MAX_LEN],
}

/// A record of a syscall with a path argument: the record, then the path.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathRecord {
    pub record: SyscallRecord,
    pub path: [u8; PATH_MAX_LEN],
}

impl SyscallRecord {
    /// Size of a record on the wire.
    pub const SIZE: usize = size_of::<Self>();

    /// Views the bytes of one ring-buffer item as a record and its path, without copying.
    /// `None` if the size is neither a plain nor a path record, or the bytes are misaligned
    /// (ring buffers align items to 8 bytes, so that means a bug, not bad luck).
    pub fn view(bytes: &[u8]) -> Option<(&Self, &[u8])> {
        let with_path = bytes.len() == size_of::<PathRecord>();
        if !(bytes.len() == Self::SIZE || with_path)
            || bytes.as_ptr().align_offset(align_of::<Self>()) != 0
        {
            return None;
        }
        // SAFETY: length and alignment are checked, and every bit pattern is a valid record.
        let record = unsafe { &*bytes.as_ptr().cast::<Self>() };
        let path = if with_path && record.flags & record_flags::HAS_PATH != 0 {
            let len = (record.path_len as usize).min(PATH_MAX_LEN);
            &bytes[Self::SIZE..Self::SIZE + len]
        } else {
            &[]
        };
        Some((record, path))
    }

    /// The `comm` up to its first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let len = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        &self.comm[..len]
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data: repr(C), no pointers, padding spelled out as fields.
    unsafe impl aya::Pod for super::InflightSyscall {}
    unsafe impl aya::Pod for super::SyscallRecord {}
    unsafe impl aya::Pod for super::SlotState {}
    unsafe impl aya::Pod for super::PathArg {}
    unsafe impl aya::Pod for super::CgroupSessions {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_no_implicit_padding() {
        // 4 u64 + 6 u64 args + i64 ret + 4 u32 + 16 comm bytes.
        assert_eq!(SyscallRecord::SIZE, 4 * 8 + 6 * 8 + 8 + 4 * 4 + COMM_LEN);
        assert_eq!(size_of::<InflightSyscall>(), 3 * 8 + 6 * 8 + 2 * 4);
    }

    #[test]
    fn views_plain_and_path_records_without_copying() {
        #[repr(C, align(8))]
        struct Aligned([u8; size_of::<PathRecord>()]);
        let mut buf = Aligned([0; size_of::<PathRecord>()]);
        let flags_at = 4 * 8 + 6 * 8 + 8 + 3 * 4;
        buf.0[flags_at..flags_at + 2].copy_from_slice(&4u16.to_ne_bytes()); // path_len
        buf.0[flags_at + 2..flags_at + 4].copy_from_slice(&record_flags::HAS_PATH.to_ne_bytes());
        buf.0[SyscallRecord::SIZE..SyscallRecord::SIZE + 5].copy_from_slice(b"/etc\0");
        let (record, path) = SyscallRecord::view(&buf.0).unwrap();
        assert_eq!(record.path_len, 4);
        assert_eq!(path, b"/etc");
        let (_, path) = SyscallRecord::view(&buf.0[..SyscallRecord::SIZE]).unwrap();
        assert!(path.is_empty());
        assert!(SyscallRecord::view(&buf.0[..SyscallRecord::SIZE - 8]).is_none());
        assert!(SyscallRecord::view(&buf.0[1..SyscallRecord::SIZE + 1]).is_none());
    }

    #[test]
    fn comm_stops_at_first_nul() {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"loop");
        let record = SyscallRecord {
            enter_ns: 0,
            duration_ns: 0,
            cgroup_id: 0,
            sessions: 0,
            args: [0; 6],
            ret: 0,
            tgid: 0,
            tid: 0,
            nr: 0,
            path_len: 0,
            flags: 0,
            comm,
        };
        assert_eq!(record.comm_bytes(), b"loop");
    }
}
