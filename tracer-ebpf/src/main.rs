//! Kernel side of tracerd: `raw_tracepoint` programs on `sys_enter` and `sys_exit`.
//!
//! Filtering is a handful of constant-time lookups, all before any ring-buffer write:
//!
//! * entry: `CGROUP_SESSIONS[cgroup id]` (the sessions tracing the task's cgroup or one of
//!   its ancestors, cached per cgroup; a cached zero ends it — all an untraced task pays)
//!   `& SYSCALL_SESSIONS[nr]` (the sessions wanting this syscall), then the tgid condition
//!   for the sessions that have one;
//! * exit: the failed-only condition, and the slots whose session started after the syscall
//!   entered are dropped (a slot reused by a new session must not inherit old syscalls).
//!
//! A matched syscall is kept on its thread (task storage) between entry and exit; its exit
//! writes one completed [`SyscallRecord`]. For a syscall with a capture plan (strings,
//! buffers, socket addresses, argv: see `capture`), the data is read from user memory into
//! the thread's [`CapturedRecord`] (at entry for what the caller passes in, at exit for what
//! the kernel hands back), and the record goes out followed by exactly the bytes captured.
//! Every session counts, per CPU in `SLOTS`, the records that matched it and those the
//! kernel lost.
#![no_std]
#![no_main]

mod capture;

use aya_ebpf::{
    bindings::{
        bpf_map_type, pt_regs, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE,
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    btf_maps::{ArrayOfMaps, RingBuf as BtfRingBuf},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_task_storage_get,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_comm as bpf_get_current_comm_raw,
            bpf_ringbuf_output,
        },
    },
    macros::{btf_map, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{
    cgroup_config, counter, mask, record_flags, ring_config, CapturedRecord, CgroupSessions,
    InflightSyscall, SessionMask, SlotState, SyscallRecord, COMM_LEN, DEFAULT_RING_BYTES,
    MAX_CACHED_CGROUPS, MAX_CGROUP_DEPTH, MAX_FILTERED_TGIDS, MAX_SESSIONS, MAX_SYSCALLS,
    MAX_TRACED_CGROUPS,
};

/// Target cgroup id → the sessions tracing that cgroup and its subtree (userspace writes it).
#[map]
static TRACED_CGROUPS: HashMap<u64, SessionMask> = HashMap::with_max_entries(MAX_TRACED_CGROUPS, 0);

/// Any cgroup id seen → the sessions tracing it through itself or an ancestor, computed by
/// the programs on its first syscall at each generation of `TRACED_CGROUPS`.
#[map]
static CGROUP_SESSIONS: LruHashMap<u64, CgroupSessions> =
    LruHashMap::with_max_entries(MAX_CACHED_CGROUPS, 0);

/// The targets' generation and the cache switch, indexed by `tracer_common::cgroup_config`.
#[map]
static CGROUP_CONFIG: Array<u64> = Array::with_max_entries(cgroup_config::COUNT, 0);

/// syscall number → the sessions that chose it (sessions tracing every syscall are in
/// `MASKS[ALL_SYSCALLS]` instead).
#[map]
static SYSCALL_SESSIONS: Array<SessionMask> = Array::with_max_entries(MAX_SYSCALLS, 0);

/// Masks that apply to every syscall, indexed by `tracer_common::mask`.
#[map]
static MASKS: Array<SessionMask> = Array::with_max_entries(mask::COUNT, 0);

/// tgid → the sessions with a tgid condition that admit it.
#[map]
static TGID_SESSIONS: HashMap<u32, SessionMask> = HashMap::with_max_entries(MAX_FILTERED_TGIDS, 0);

/// Per-session state and counters, per CPU.
#[map]
static SLOTS: PerCpuArray<SlotState> = PerCpuArray::with_max_entries(MAX_SESSIONS, 0);

/// The traced syscall a thread is inside of, stored on the thread itself.
#[btf_map]
static INFLIGHT: TaskStorage<InflightSyscall> = TaskStorage::new();

/// Task-local storage (`BPF_MAP_TYPE_TASK_STORAGE`, Linux 5.11+): a value that lives on the
/// `task_struct`, found without hashing or locking and freed with the task. It replaced a
/// hash map keyed by thread id, whose insert, lookup and delete were a quarter of the traced
/// path's cost. aya-ebpf 0.2 has no wrapper for it, so this is the BTF map definition the
/// loader reads (the same layout as aya-ebpf's own `btf_maps`), with `get` over the helpers.
#[repr(C)]
struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads from BTF; they are never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current task's value; with `create`, zero-initialised storage is made if the task
    /// has none (null if the kernel cannot allocate it).
    #[inline(always)]
    fn current(&self, create: bool) -> *mut T {
        let flags = if create {
            BPF_LOCAL_STORAGE_GET_F_CREATE as u64
        } else {
            0
        };
        // SAFETY: the map pointer is this map's definition; the task is the current one.
        unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                bpf_get_current_task_btf().cast(),
                core::ptr::null_mut(),
                flags,
            )
        }
        .cast()
    }
}

/// Completed syscalls for userspace, one ring shared by all CPUs.
#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// The per-CPU alternative: one ring per CPU, created and inserted by userspace.
#[btf_map]
static RECORDS_BY_CPU: ArrayOfMaps<BtfRingBuf<u8, { DEFAULT_RING_BYTES as usize }>, 1024> =
    ArrayOfMaps::new();

/// Wake-up policy and output selection, indexed by `tracer_common::ring_config`.
#[map]
static RING_CONFIG: Array<u64> = Array::with_max_entries(ring_config::COUNT, 0);

/// Totals, per CPU, indexed by `tracer_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

// Syscalls that never return, so they have no `sys_exit`: their record is written at entry.
#[cfg(bpf_target_arch = "x86_64")]
const NO_RETURN_SYSCALLS: [u64; 2] = [60 /* exit */, 231 /* exit_group */];
#[cfg(bpf_target_arch = "aarch64")]
const NO_RETURN_SYSCALLS: [u64; 2] = [93 /* exit */, 94 /* exit_group */];
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("tracer-ebpf supports x86_64 and aarch64 hosts");

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn tracerd_enter(ctx: RawTracePointContext) -> i32 {
    try_enter(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn tracerd_exit(ctx: RawTracePointContext) -> i32 {
    try_exit(&ctx);
    0
}

fn try_enter(ctx: &RawTracePointContext) {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let cgroup_sessions = sessions_of_cgroup(cgroup_id);
    if cgroup_sessions == 0 {
        return;
    }
    // raw_tracepoint sys_enter: args are (struct pt_regs *regs, long id).
    let nr: u64 = ctx.arg(1);
    let mut sessions = cgroup_sessions & syscall_sessions(nr);
    if sessions == 0 {
        return;
    }
    let tgid_filtered = mask_of(mask::TGID_FILTERED);
    if sessions & tgid_filtered != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let admitted = unsafe { TGID_SESSIONS.get(&tgid) }.copied().unwrap_or(0);
        sessions &= !tgid_filtered | admitted;
        if sessions == 0 {
            return;
        }
    }
    let regs: *const pt_regs = ctx.arg(0);
    let inflight = InflightSyscall {
        enter_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id,
        sessions,
        args: syscall_args(regs),
        nr: nr as u32,
        active: 1,
        capturing: 0,
        unreadable_args: 0,
        flags: 0,
        out_len: 0,
        _pad: 0,
    };
    if NO_RETURN_SYSCALLS.contains(&nr) {
        // Never fails (it never returns), so failed-only sessions do not want it.
        let sessions = sessions & !mask_of(mask::FAILED_ONLY);
        emit(&inflight, sessions, 0, inflight.enter_ns, None);
        return;
    }
    let slot = INFLIGHT.current(true);
    if slot.is_null() {
        bump(counter::DROPPED_INFLIGHT_FULL);
        count_dropped(count_matched(sessions, inflight.enter_ns));
        return;
    }
    // SAFETY: the current task's own storage; only this task's syscalls touch it.
    unsafe { *slot = inflight };
    if sessions & mask_of(mask::CAPTURE) != 0 {
        // SAFETY: as above.
        capture::at_entry(unsafe { &mut *slot }, sessions);
    }
}

/// Forgets a removed cgroup's cached sessions, so removed cgroups leave nothing behind.
/// (A tracepoint program: its context is the event's record, whose layout userspace checks
/// against the kernel's `format` file before attaching.)
#[tracepoint(category = "cgroup", name = "cgroup_rmdir")]
pub fn tracerd_rmdir(ctx: TracePointContext) -> i32 {
    // cgroup_rmdir: `int root` at 8 (the hierarchy; 0 is cgroup v2), `u64 id` at 16.
    // SAFETY: offsets within the event's record, checked by userspace.
    let root = unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1);
    if root == 0 {
        if let Ok(id) = unsafe { ctx.read_at::<u64>(16) } {
            let _ = CGROUP_SESSIONS.remove(&id);
        }
    }
    0
}

/// The sessions tracing the current task's cgroup `cgroup_id`: from the cache when it was
/// computed at the current generation of the targets, else from its ancestors (and cached).
#[inline(always)]
fn sessions_of_cgroup(cgroup_id: u64) -> SessionMask {
    let generation = CGROUP_CONFIG
        .get(cgroup_config::GENERATION)
        .copied()
        .unwrap_or(0);
    let cache = CGROUP_CONFIG
        .get(cgroup_config::NO_CACHE)
        .copied()
        .unwrap_or(0)
        == 0;
    if cache {
        // SAFETY: copied out at once; a concurrent update gives the old or the new value.
        if let Some(cached) = unsafe { CGROUP_SESSIONS.get(&cgroup_id) } {
            if cached.generation == generation {
                return cached.sessions;
            }
        }
    }
    // The generation was read before the targets: an answer computed from targets newer than
    // it is only recomputed once more, never kept past a change.
    let sessions = sessions_of_ancestry(cgroup_id);
    if cache {
        let entry = CgroupSessions {
            sessions,
            generation,
        };
        // A failed insert (no memory) only means computing it again next time.
        let _ = CGROUP_SESSIONS.insert(&cgroup_id, &entry, 0);
    }
    sessions
}

/// The sessions tracing `cgroup_id` (the current task's) or any of its ancestors.
#[inline(always)]
fn sessions_of_ancestry(cgroup_id: u64) -> SessionMask {
    let traced = |id: u64| unsafe { TRACED_CGROUPS.get(&id) }.copied().unwrap_or(0);
    let mut sessions = traced(cgroup_id);
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: a helper without pointer arguments. 0 past the task's own level.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if ancestor == 0 || ancestor == cgroup_id {
            break;
        }
        sessions |= traced(ancestor);
    }
    sessions
}

fn try_exit(ctx: &RawTracePointContext) {
    let slot = INFLIGHT.current(false);
    // SAFETY: the current task's own storage, checked for null.
    if slot.is_null() || unsafe { (*slot).active } == 0 {
        return;
    }
    // SAFETY: as above; copy it out, then mark the thread as out of its syscall.
    let inflight = unsafe { *slot };
    unsafe { (*slot).active = 0 };
    // raw_tracepoint sys_exit: args are (struct pt_regs *regs, long ret).
    let ret: i64 = ctx.arg(1);
    let mut sessions = inflight.sessions;
    if ret >= 0 {
        sessions &= !mask_of(mask::FAILED_ONLY);
    }
    let captured = if inflight.capturing != 0 {
        capture::at_exit(&inflight, sessions, ret)
    } else {
        None
    };
    emit(
        &inflight,
        sessions,
        ret,
        unsafe { bpf_ktime_get_ns() },
        captured,
    );
}

/// Writes one record for `sessions`, counting it as matched (and, if it cannot be written,
/// dropped) for each of them that is still current. `captured` is the thread's record with
/// the syscall's captured data, sent as it is (header filled in here) instead of a plain one.
#[inline(always)]
fn emit(
    inflight: &InflightSyscall,
    sessions: SessionMask,
    ret: i64,
    exit_ns: u64,
    captured: Option<*mut CapturedRecord>,
) {
    let sessions = count_matched(sessions, inflight.enter_ns);
    if sessions == 0 {
        return;
    }
    if inflight.flags & record_flags::CAPTURE_LOST as u8 != 0 {
        bump(counter::CAPTURES_LOST);
    }
    let written = match captured {
        None => {
            let flags = u16::from(inflight.flags);
            // Built in place in the ring: no copy through the stack.
            write_to_ring::<SyscallRecord>(|out| {
                fill_record(out, inflight, sessions, ret, exit_ns, flags, 0);
            })
        }
        Some(captured) => {
            // SAFETY: the current task's storage, valid for this program run.
            let data_len = unsafe { (*captured).record.data_len };
            let flags = u16::from(inflight.flags)
                | unsafe { (*captured).record.flags }
                | if data_len > 0 {
                    record_flags::HAS_DATA
                } else {
                    0
                };
            // SAFETY: as above; every header field is written.
            fill_record(
                unsafe { &raw mut (*captured).record },
                inflight,
                sessions,
                ret,
                exit_ns,
                flags,
                data_len,
            );
            output_to_ring(captured, data_len as usize)
        }
    };
    if written {
        bump(counter::WRITTEN);
    } else {
        bump(counter::DROPPED_RING_FULL);
        count_dropped(sessions);
    }
}

/// Writes every field of a record at `out`.
#[inline(always)]
fn fill_record(
    out: *mut SyscallRecord,
    inflight: &InflightSyscall,
    sessions: SessionMask,
    ret: i64,
    exit_ns: u64,
    flags: u16,
    data_len: u16,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `out` is a reserved ring slot for a SyscallRecord; every field is written.
    unsafe {
        (*out).enter_ns = inflight.enter_ns;
        (*out).duration_ns = exit_ns.saturating_sub(inflight.enter_ns);
        (*out).cgroup_id = inflight.cgroup_id;
        (*out).sessions = sessions;
        (*out).args = inflight.args;
        (*out).ret = ret;
        (*out).tgid = (pid_tgid >> 32) as u32;
        (*out).tid = pid_tgid as u32;
        (*out).nr = inflight.nr;
        (*out).data_len = data_len;
        (*out).flags = flags;
        // The helper writes the comm (NUL-padded) in place; on failure it zeroes it.
        bpf_get_current_comm_raw((&raw mut (*out).comm).cast(), COMM_LEN as u32);
    }
}

/// Reserves a `T` in the selected ring, lets `fill` write it, and submits it. False if the
/// ring was full.
#[inline(always)]
fn write_to_ring<T: 'static>(fill: impl FnOnce(*mut T)) -> bool {
    let flags = wakeup_flags();
    let entry = if per_cpu_output() {
        per_cpu_ring().and_then(|ring| ring.reserve_untyped::<T>(0))
    } else {
        RECORDS.reserve::<T>(0)
    };
    let Some(mut entry) = entry else {
        return false;
    };
    fill(entry.as_mut_ptr());
    entry.submit(flags);
    true
}

/// Batches wake-ups: every `WAKEUP_EVERY`-th record of a CPU wakes the reader, the others
/// are left for its periodic flush. With `WAKEUP_EVERY` at 0 the kernel decides (it wakes
/// the reader whenever the reader had caught up: up to once per record).
#[inline(always)]
fn wakeup_flags() -> u64 {
    let every = RING_CONFIG
        .get(ring_config::WAKEUP_EVERY)
        .copied()
        .unwrap_or(0);
    if every == 0 {
        return 0;
    }
    let Some(since) = COUNTERS.get_ptr_mut(counter::SINCE_WAKEUP) else {
        return 0;
    };
    // SAFETY: a per-CPU slot; raw tracepoint programs do not nest on one CPU.
    unsafe {
        *since += 1;
        if *since >= every {
            *since = 0;
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
    }
}

/// Copies a captured record and its first `data_len` bytes of data into the selected ring.
/// False if the ring was full.
#[inline(always)]
fn output_to_ring(captured: *mut CapturedRecord, data_len: usize) -> bool {
    // The verifier must see the size bounded by the storage the record lives in.
    let data_len = if data_len > tracer_common::CAPTURE_BYTES + tracer_common::MAX_CAPTURE_ITEM {
        tracer_common::CAPTURE_BYTES + tracer_common::MAX_CAPTURE_ITEM
    } else {
        data_len
    };
    let size = (SyscallRecord::SIZE + data_len) as u64;
    let flags = wakeup_flags();
    let ring: *mut core::ffi::c_void = if per_cpu_output() {
        match per_cpu_ring() {
            Some(ring) => core::ptr::from_ref(ring).cast_mut().cast(),
            None => return false,
        }
    } else {
        // A map definition is the static itself (the wrapper is transparent).
        core::ptr::from_ref(&RECORDS).cast_mut().cast()
    };
    // SAFETY: `ring` is a ring buffer map; `captured` is valid for `size` bytes.
    unsafe { bpf_ringbuf_output(ring, captured.cast(), size, flags) == 0 }
}

#[inline(always)]
fn per_cpu_output() -> bool {
    RING_CONFIG.get(ring_config::PER_CPU).copied().unwrap_or(0) != 0
}

#[inline(always)]
fn per_cpu_ring() -> Option<&'static BtfRingBuf<u8, { DEFAULT_RING_BYTES as usize }>> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    RECORDS_BY_CPU.get(cpu)
}

/// Counts a matched record for each session in `sessions` whose slot was started before
/// `enter_ns`, and returns those sessions. A slot started later belongs to a new session
/// that must not inherit syscalls of the slot's previous user.
#[inline(always)]
fn count_matched(sessions: SessionMask, enter_ns: u64) -> SessionMask {
    let mut current = sessions;
    let mut rest = sessions;
    for _ in 0..MAX_SESSIONS {
        if rest == 0 {
            break;
        }
        let slot = rest.trailing_zeros();
        rest &= rest - 1;
        match SLOTS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU value; raw tracepoint programs do not nest on one CPU.
            Some(state) if unsafe { (*state).start_ns } <= enter_ns => unsafe {
                (*state).matched += 1;
            },
            _ => current &= !(1u64 << slot),
        }
    }
    current
}

/// Counts a drop for each session in `sessions` (already counted as matched).
#[inline(always)]
fn count_dropped(sessions: SessionMask) {
    let mut rest = sessions;
    for _ in 0..MAX_SESSIONS {
        if rest == 0 {
            break;
        }
        let slot = rest.trailing_zeros();
        rest &= rest - 1;
        if let Some(state) = SLOTS.get_ptr_mut(slot) {
            // SAFETY: as in count_matched.
            unsafe { (*state).dropped += 1 };
        }
    }
}

/// The sessions that want syscall `nr`: those that chose it, and those that trace every
/// syscall (kept in one mask, so starting such a session is one map write, not one per
/// syscall number).
#[inline(always)]
fn syscall_sessions(nr: u64) -> SessionMask {
    let chosen = if nr < MAX_SYSCALLS as u64 {
        SYSCALL_SESSIONS.get(nr as u32).copied().unwrap_or(0)
    } else {
        0
    };
    chosen | mask_of(mask::ALL_SYSCALLS)
}

#[inline(always)]
fn mask_of(index: u32) -> SessionMask {
    MASKS.get(index).copied().unwrap_or(0)
}

/// The six syscall argument registers, in the syscall calling convention (which on x86_64
/// differs from the function one: the fourth argument is in r10, not rcx).
#[inline(always)]
fn syscall_args(regs: *const pt_regs) -> [u64; 6] {
    // Only the argument registers are copied, not the whole pt_regs: on x86_64 they sit
    // together from r10 to rdi (r10, r9, r8, ax, cx, dx, si, di).
    #[cfg(bpf_target_arch = "x86_64")]
    {
        let first = core::mem::offset_of!(pt_regs, r10);
        // SAFETY: 64 bytes within the kernel's pt_regs; a failed read yields zeros.
        let Ok(words) = (unsafe { bpf_probe_read_kernel(regs.byte_add(first).cast::<[u64; 8]>()) })
        else {
            return [0; 6];
        };
        [words[7], words[6], words[5], words[0], words[2], words[1]]
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        // SAFETY: x0..x5 are the first 48 bytes of the kernel's pt_regs.
        unsafe { bpf_probe_read_kernel(regs.cast::<[u64; 6]>()) }.unwrap_or([0; 6])
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, and raw tracepoint programs do not nest on one CPU.
        unsafe { *count += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
