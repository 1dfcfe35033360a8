//! Kernel side of tracerd: `raw_tracepoint` programs on `sys_enter` and `sys_exit`.
//!
//! A task is traced when its cgroup id is a key of `TRACED_CGROUPS`; every other task pays
//! that one lookup on entry (and one miss in `INFLIGHT` on exit) and returns. A traced
//! syscall is kept per thread between entry and exit, and its exit writes one completed
//! [`SyscallRecord`] to the `RECORDS` ring buffer. Records the kernel could not keep or write
//! are counted in `COUNTERS`, so userspace can account for every matched syscall.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use tracer_common::{
    counter, InflightSyscall, SessionMask, SyscallRecord, COMM_LEN, DEFAULT_RING_BYTES,
    MAX_INFLIGHT_SYSCALLS, MAX_TRACED_CGROUPS,
};

/// cgroup id → the sessions tracing that cgroup. Userspace owns it.
#[map]
static TRACED_CGROUPS: HashMap<u64, SessionMask> = HashMap::with_max_entries(MAX_TRACED_CGROUPS, 0);

/// thread id → the traced syscall it is inside of.
#[map]
static INFLIGHT: HashMap<u32, InflightSyscall> =
    HashMap::with_max_entries(MAX_INFLIGHT_SYSCALLS, 0);

/// Completed syscalls for userspace. Userspace may resize it at load time.
#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU event counters, indexed by the constants in `tracer_common::counter`.
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
    // SAFETY: the value is copied out at once; userspace may change it concurrently, and
    // either the old or the new mask is a correct answer for this syscall.
    let Some(&sessions) = (unsafe { TRACED_CGROUPS.get(&cgroup_id) }) else {
        return;
    };
    // raw_tracepoint sys_enter: args are (struct pt_regs *regs, long id).
    let regs: *const pt_regs = ctx.arg(0);
    let nr: u64 = ctx.arg(1);
    let inflight = InflightSyscall {
        enter_ns: unsafe { bpf_ktime_get_ns() },
        sessions,
        args: syscall_args(regs),
        nr: nr as u32,
        _pad: 0,
    };
    bump(counter::MATCHED);
    if NO_RETURN_SYSCALLS.contains(&nr) {
        emit(&inflight, cgroup_id, 0, inflight.enter_ns);
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if INFLIGHT.insert(&tid, &inflight, 0).is_err() {
        bump(counter::DROPPED_INFLIGHT_FULL);
    }
}

fn try_exit(ctx: &RawTracePointContext) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(inflight) = INFLIGHT.get_ptr(&tid) else {
        return;
    };
    // SAFETY: the pointer came from a successful lookup; copy before removing the entry.
    let inflight = unsafe { *inflight };
    let _ = INFLIGHT.remove(&tid);
    // raw_tracepoint sys_exit: args are (struct pt_regs *regs, long ret).
    let ret: i64 = ctx.arg(1);
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    emit(&inflight, cgroup_id, ret, unsafe { bpf_ktime_get_ns() });
}

fn emit(inflight: &InflightSyscall, cgroup_id: u64, ret: i64, exit_ns: u64) {
    let Some(mut entry) = RECORDS.reserve::<SyscallRecord>(0) else {
        bump(counter::DROPPED_RING_FULL);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(SyscallRecord {
        enter_ns: inflight.enter_ns,
        duration_ns: exit_ns.saturating_sub(inflight.enter_ns),
        cgroup_id,
        sessions: inflight.sessions,
        args: inflight.args,
        ret,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        nr: inflight.nr,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
    entry.submit(0);
}

/// The six syscall argument registers, in the syscall calling convention (which on x86_64
/// differs from the function one: the fourth argument is in r10, not rcx).
fn syscall_args(regs: *const pt_regs) -> [u64; 6] {
    // SAFETY: `regs` is the kernel's pt_regs for this syscall; a failed read yields zeros.
    let Ok(regs) = (unsafe { bpf_probe_read_kernel(regs) }) else {
        return [0; 6];
    };
    #[cfg(bpf_target_arch = "x86_64")]
    {
        [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9]
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        [
            regs.regs[0],
            regs.regs[1],
            regs.regs[2],
            regs.regs[3],
            regs.regs[4],
            regs.regs[5],
        ]
    }
}

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
