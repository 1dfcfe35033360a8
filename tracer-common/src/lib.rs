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

/// Capacity of the cgroup-id → sessions map: distinct cgroups traced at once.
pub const MAX_TRACED_CGROUPS: u32 = 8192;

/// Capacity of the per-thread map that holds a syscall between its entry and its exit: how
/// many traced threads may be inside a syscall at the same moment.
pub const MAX_INFLIGHT_SYSCALLS: u32 = 32768;

/// Default size of the ring buffer the kernel writes records to, in bytes (a power of two
/// and a multiple of the page size, as the kernel requires). The daemon may override it.
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

/// Indexes of the kernel's per-CPU event counters (the `COUNTERS` map).
pub mod counter {
    /// Syscalls that entered from a traced cgroup.
    pub const MATCHED: u32 = 0;
    /// Matched syscalls lost because the in-flight map was full at entry.
    pub const DROPPED_INFLIGHT_FULL: u32 = 1;
    /// Completed syscalls lost because the ring buffer was full.
    pub const DROPPED_RING_FULL: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// One bit per session slot: bit `i` set means session slot `i` wants this record.
pub type SessionMask = u64;

/// A syscall between `sys_enter` and `sys_exit`, kept per thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InflightSyscall {
    /// `bpf_ktime_get_ns()` at entry (CLOCK_MONOTONIC).
    pub enter_ns: u64,
    /// The sessions that matched at entry.
    pub sessions: SessionMask,
    /// The six raw argument registers at entry.
    pub args: [u64; 6],
    /// The syscall number.
    pub nr: u32,
    pub _pad: u32,
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
    pub _pad: u32,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

impl SyscallRecord {
    /// Size of a record on the wire.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// Reads a record from the bytes of one ring-buffer item; `None` if the size is wrong
    /// (a kernel object from another version of this crate).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        // SAFETY: the length is checked and every bit pattern is a valid SyscallRecord.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_no_implicit_padding() {
        // 4 u64 + 6 u64 args + i64 ret + 4 u32 + 16 comm bytes.
        assert_eq!(SyscallRecord::SIZE, 4 * 8 + 6 * 8 + 8 + 4 * 4 + COMM_LEN);
        assert_eq!(
            core::mem::size_of::<InflightSyscall>(),
            2 * 8 + 6 * 8 + 2 * 4
        );
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
            _pad: 0,
            comm,
        };
        assert_eq!(record.comm_bytes(), b"loop");
    }
}
