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

/// Bytes of a path argument kept, including its NUL: paths of up to `PATH_MAX_LEN - 1`
/// characters are whole, longer ones are cut there and flagged.
pub const PATH_MAX_LEN: usize = 256;

/// Longest string the kernel reads for one argument, in characters: one more than the
/// longest a session can keep ([`PATH_MAX_LEN`]` - 1`), so userspace can tell a string of
/// exactly the limit from a longer one.
pub const MAX_STRING_CHARS: u32 = PATH_MAX_LEN as u32;

/// Largest buffer prefix (`read`/`write` data and the like) a session can ask for, in bytes.
pub const MAX_DATA_BYTES: u32 = 1024;

/// Largest raw structure read for an argument (a `sockaddr`, an `open_how`), in bytes:
/// `sizeof(struct sockaddr_storage)`.
pub const MAX_RAW_BYTES: u32 = 128;

/// Most `execve` arguments a session can keep.
pub const MAX_ARGV: u32 = 64;

/// Most environment variables the kernel counts for an `execve` (more are flagged).
pub const MAX_ENVC: u32 = 512;

/// Bytes of captured data after a record's header the kernel starts items in; an item that
/// starts below it may end above it (by at most [`MAX_CAPTURE_ITEM`]).
pub const CAPTURE_BYTES: usize = 4096;

/// Size of one captured item at most: its header and the largest payload, rounded to 8.
pub const MAX_CAPTURE_ITEM: usize = size_of::<CaptureItem>() + MAX_DATA_BYTES as usize + 8;

/// Operations of a syscall's capture plan.
pub const CAPTURE_OPS: usize = 4;

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
    /// Records whose captured arguments were lost because no storage could be had for them
    /// (the record still goes out, flagged [`super::record_flags::CAPTURE_LOST`]).
    pub const CAPTURES_LOST: u32 = 3;
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
    /// Sessions that capture argument data (strings, socket addresses, argv).
    pub const CAPTURE: u32 = 3;
    /// Number of masks.
    pub const COUNT: u32 = 4;
}

/// Bits of [`SyscallRecord::flags`].
pub mod record_flags {
    /// Captured argument data ([`CaptureItem`](super::CaptureItem)s) follows the record.
    pub const HAS_DATA: u16 = 1;
    /// The syscall has arguments to capture, but no storage could be had to keep them.
    pub const CAPTURE_LOST: u16 = 4;
    /// The capture area filled up: items past it were not captured.
    pub const CAPTURE_FULL: u16 = 16;
    /// Argument data that lives in user memory is not available from this backend (ftrace):
    /// only the registers are.
    pub const DATA_UNAVAILABLE: u16 = 32;
}

/// What a capture operation reads, and (on the wire) what an item holds.
pub mod capture_kind {
    /// No operation.
    pub const NONE: u8 = 0;
    /// A NUL-terminated string at the argument, at entry.
    pub const STRING: u8 = 1;
    /// Bytes at the argument, at entry, as many as argument `len_arg` says (a buffer written).
    pub const DATA_IN: u8 = 2;
    /// Bytes at the argument, at exit, as many as the return value says (a buffer read).
    pub const DATA_OUT: u8 = 3;
    /// A structure at the argument, at entry, of the size argument `len_arg` says (a
    /// `sockaddr` given, an `open_how`), up to [`MAX_RAW_BYTES`](super::MAX_RAW_BYTES).
    pub const RAW_IN: u8 = 4;
    /// A structure at the argument, at exit, of the size in the `int` that argument
    /// `len_arg` points to (a `sockaddr` returned).
    pub const RAW_OUT: u8 = 5;
    /// An argv array at the argument, at entry: one [`ARGV_ITEM`] per element kept, then
    /// one [`ARGV_END`].
    pub const ARGV: u8 = 6;
    /// An environment array at the argument, at entry: one [`ENVC`] item with the count.
    pub const ENVC: u8 = 7;
    /// On the wire: one element of an argv array.
    pub const ARGV_ITEM: u8 = 8;
    /// On the wire: the end of an argv array; `count` elements were in it (flagged
    /// truncated when more followed).
    pub const ARGV_END: u8 = 9;
}

/// Bits of [`CaptureItem::flags`].
pub mod item_flags {
    /// The data was longer than what was kept (a string with no NUL in reach, an array with
    /// more elements).
    pub const TRUNCATED: u8 = 1;
    /// The memory could not be read (NULL, a bad pointer, or a page not resident).
    pub const UNREADABLE: u8 = 2;
}

/// Sizes the kernel captures, in the `CAPTURE_CONFIG` map: the largest any running session
/// asked for (each session trims to its own). String arguments are always read up to
/// [`MAX_STRING_CHARS`](super::MAX_STRING_CHARS): a read stops at the NUL, so a shorter limit
/// would save little, and every session sees whole paths.
pub mod capture_config {
    /// Bytes of a buffer, and characters of an argv element (at most
    /// [`MAX_DATA_BYTES`](super::MAX_DATA_BYTES)).
    pub const DATA_BYTES: u32 = 0;
    /// argv elements (at most [`MAX_ARGV`](super::MAX_ARGV)).
    pub const ARGV: u32 = 1;
    /// Number of entries.
    pub const COUNT: u32 = 2;
}

/// One operation of a syscall's capture plan.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureOp {
    /// A [`capture_kind`] (`NONE` ends the plan).
    pub kind: u8,
    /// The argument (register index) the data is at.
    pub arg: u8,
    /// The argument holding the data's length (`DATA_IN`, `RAW_IN`) or a pointer to it
    /// (`RAW_OUT`).
    pub len_arg: u8,
    pub _pad: u8,
}

/// What the kernel reads for one syscall (the `CAPTURE_PLANS` map), made by userspace from
/// the syscall's signature.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapturePlan {
    pub ops: [CaptureOp; CAPTURE_OPS],
}

/// The header of one captured item; its payload (`len` bytes) follows, and the next item
/// starts at the next multiple of 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureItem {
    /// A [`capture_kind`].
    pub kind: u8,
    /// The argument the data was read from.
    pub arg: u8,
    /// [`item_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
    /// Payload bytes.
    pub len: u16,
    /// Elements, for `ARGV_END` and `ENVC`.
    pub count: u16,
}

impl CaptureItem {
    pub const fn new(kind: u8, arg: u8, flags: u8, len: u16, count: u16) -> Self {
        Self {
            kind,
            arg,
            flags,
            _pad: 0,
            len,
            count,
        }
    }

    /// Bytes an item with a payload of `len` takes, padding included.
    pub const fn stride(len: usize) -> usize {
        (size_of::<Self>() + len + 7) & !7
    }
}

/// A record with its captured data, as the kernel builds it in the thread's storage: the
/// ring gets the record and the first `data_len` bytes of `data`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CapturedRecord {
    pub record: SyscallRecord,
    pub data: [u8; CAPTURE_BYTES + MAX_CAPTURE_ITEM],
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
    pub active: u8,
    /// 1 when the thread's `CapturedRecord` holds this syscall's entry captures.
    pub capturing: u8,
    /// Arguments whose string could not be read at entry (bit per argument): read again at
    /// exit, when the syscall has faulted their pages in.
    pub unreadable_args: u8,
    /// [`record_flags`] gathered at entry.
    pub flags: u8,
    /// The size the caller gave for a structure the kernel returns (`*addrlen` at entry):
    /// no more than this is read at exit.
    pub out_len: u32,
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
    /// Bytes of captured data that follow the record (0 when there is none).
    pub data_len: u16,
    /// [`record_flags`] bits.
    pub flags: u16,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

impl SyscallRecord {
    /// Size of a record on the wire.
    pub const SIZE: usize = size_of::<Self>();

    /// Views the bytes of one ring-buffer item as a record and its captured data, without
    /// copying. `None` if the item is shorter than the record and the data it announces, or
    /// misaligned (ring buffers align items to 8 bytes, so that means a bug, not bad luck).
    pub fn view(bytes: &[u8]) -> Option<(&Self, &[u8])> {
        if bytes.len() < Self::SIZE || bytes.as_ptr().align_offset(align_of::<Self>()) != 0 {
            return None;
        }
        // SAFETY: length and alignment are checked, and every bit pattern is a valid record.
        let record = unsafe { &*bytes.as_ptr().cast::<Self>() };
        let data = if record.flags & record_flags::HAS_DATA != 0 {
            bytes.get(Self::SIZE..Self::SIZE + record.data_len as usize)?
        } else {
            &[]
        };
        Some((record, data))
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
    unsafe impl aya::Pod for super::CapturePlan {}
    unsafe impl aya::Pod for super::CgroupSessions {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_no_implicit_padding() {
        // 4 u64 + 6 u64 args + i64 ret + 4 u32 + 16 comm bytes.
        assert_eq!(SyscallRecord::SIZE, 4 * 8 + 6 * 8 + 8 + 4 * 4 + COMM_LEN);
        assert_eq!(size_of::<InflightSyscall>(), 3 * 8 + 6 * 8 + 4 * 4);
        assert_eq!(size_of::<CaptureItem>(), 8);
        assert_eq!(size_of::<CapturePlan>(), 4 * CAPTURE_OPS);
        assert_eq!(CaptureItem::stride(0), 8);
        assert_eq!(CaptureItem::stride(1), 16);
        assert_eq!(CaptureItem::stride(8), 16);
    }

    #[test]
    fn views_plain_records_and_records_with_data_without_copying() {
        #[repr(C, align(8))]
        struct Aligned([u8; SyscallRecord::SIZE + 16]);
        let mut buf = Aligned([0; SyscallRecord::SIZE + 16]);
        let flags_at = 4 * 8 + 6 * 8 + 8 + 3 * 4;
        buf.0[flags_at..flags_at + 2].copy_from_slice(&16u16.to_ne_bytes()); // data_len
        buf.0[flags_at + 2..flags_at + 4].copy_from_slice(&record_flags::HAS_DATA.to_ne_bytes());
        buf.0[SyscallRecord::SIZE] = capture_kind::STRING;
        let (record, data) = SyscallRecord::view(&buf.0).unwrap();
        assert_eq!(record.data_len, 16);
        assert_eq!(data.len(), 16);
        assert_eq!(data[0], capture_kind::STRING);
        // Data announced but missing: refused.
        assert!(SyscallRecord::view(&buf.0[..SyscallRecord::SIZE + 8]).is_none());
        buf.0[flags_at + 2..flags_at + 4].copy_from_slice(&0u16.to_ne_bytes());
        let (_, data) = SyscallRecord::view(&buf.0[..SyscallRecord::SIZE]).unwrap();
        assert!(data.is_empty());
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
            data_len: 0,
            flags: 0,
            comm,
        };
        assert_eq!(record.comm_bytes(), b"loop");
    }
}
