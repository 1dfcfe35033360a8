//! Argument data read from user memory: strings, buffers, structures (socket addresses,
//! `open_how`) and `execve`'s argv and environment count, as each syscall's capture plan
//! (`CAPTURE_PLANS`, made by userspace from the syscall's signature in tracefs) says.
//!
//! Items are appended to the thread's [`CapturedRecord`], each 8-aligned: a
//! [`CaptureItem`] header, then its payload. What the caller passes in is read at entry (by
//! exit it may have changed, and after `execve` the caller's memory is gone); what the kernel
//! hands back (a buffer read, an address returned) is read at exit, only when the call
//! succeeded.
//!
//! Written for the verifier: the write offset lives in the map value (`data_len`), not in a
//! register carried across operations, so every path through an operation ends in the same
//! state and the verifier prunes them; every size handed to a helper is clamped right where
//! it is used.
use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_probe_read_user as bpf_probe_read_user_raw, bpf_probe_read_user_str},
    },
    macros::{btf_map, map},
    maps::Array,
};
use tracer_common::{
    capture_config, capture_kind, item_flags, record_flags, CaptureItem, CapturePlan,
    CapturedRecord, InflightSyscall, SessionMask, CAPTURE_BYTES, CAPTURE_OPS, MAX_ARGV,
    MAX_DATA_BYTES, MAX_ENVC, MAX_RAW_BYTES, MAX_STRING_CHARS, MAX_SYSCALLS,
};

use crate::TaskStorage;

/// syscall number → what to read for it (no entry, or a first op of `NONE`: nothing).
#[map]
static CAPTURE_PLANS: Array<CapturePlan> = Array::with_max_entries(MAX_SYSCALLS, 0);

/// syscall number → the sessions that capture its buffers (`DATA_IN`/`DATA_OUT`).
#[map]
static DATA_SESSIONS: Array<SessionMask> = Array::with_max_entries(MAX_SYSCALLS, 0);

/// Sizes to capture, indexed by `tracer_common::capture_config`.
#[map]
static CAPTURE_CONFIG: Array<u64> = Array::with_max_entries(capture_config::COUNT, 0);

/// The record being built for the traced syscall a thread is inside of, with the argument
/// data captured so far (only threads that made a syscall with a capture plan have one).
#[btf_map]
static CAPTURES: TaskStorage<CapturedRecord> = TaskStorage::new();

/// Characters of a string argument kept (the kernel reads one more, see `string`).
const STRING_CHARS: u64 = MAX_STRING_CHARS as u64 - 1;

// execve and execveat replace the caller's memory: nothing is read again at their exit.
#[cfg(bpf_target_arch = "x86_64")]
const EXEC_SYSCALLS: [u32; 2] = [59 /* execve */, 322 /* execveat */];
#[cfg(bpf_target_arch = "aarch64")]
const EXEC_SYSCALLS: [u32; 2] = [221 /* execve */, 281 /* execveat */];

/// Reads what syscall `inflight.nr` passes in, for `sessions`, into the thread's record.
#[inline(always)]
pub fn at_entry(inflight: &mut InflightSyscall, sessions: SessionMask) {
    let Some(plan) = plan_of(inflight.nr) else {
        return;
    };
    let out = CAPTURES.current(true);
    if out.is_null() {
        // Counted when the record goes out (it may not: a failed-only session's call that
        // succeeds).
        inflight.flags |= record_flags::CAPTURE_LOST as u8;
        return;
    }
    // SAFETY: the current task's own storage, checked for null.
    let out = unsafe { &mut *out };
    out.record.data_len = 0;
    out.record.flags = 0;
    inflight.capturing = 1;
    let data = wants_data(inflight.nr, sessions);
    let args = inflight.args;
    let mut unreadable = 0u8;
    for index in 0..CAPTURE_OPS {
        let op = plan.ops[index];
        let at = arg(&args, op.arg);
        match op.kind {
            capture_kind::STRING => {
                if !string(out, capture_kind::STRING, op.arg, at, STRING_CHARS) {
                    unreadable |= 1 << (op.arg & 7);
                }
            }
            capture_kind::RAW_OUT => {
                // The caller's buffer size: the kernel writes back the address's full
                // length, which may be more than the buffer holds.
                let len_at = arg(&args, op.len_arg) as *const i32;
                // SAFETY: a read of user memory that may fail.
                let len = unsafe { bpf_probe_read_user(len_at) }.unwrap_or(0);
                inflight.out_len = len.max(0) as u32;
            }
            capture_kind::DATA_IN if data => {
                let len = arg(&args, op.len_arg).min(config(capture_config::DATA_BYTES));
                bytes(out, capture_kind::DATA_IN, op.arg, at, len);
            }
            capture_kind::RAW_IN if at != 0 => {
                // The length is an `int` (`socklen_t`, `size_t` for open_how: both fit).
                let len = (arg(&args, op.len_arg) as i32).max(0) as u64;
                bytes(
                    out,
                    capture_kind::RAW_IN,
                    op.arg,
                    at,
                    len.min(u64::from(MAX_RAW_BYTES)),
                );
            }
            capture_kind::ARGV => argv(out, op.arg, at),
            capture_kind::ENVC => envc(out, op.arg, at),
            _ => {}
        }
    }
    inflight.unreadable_args = unreadable;
}

/// Reads what syscall `inflight.nr` hands back (when it succeeded), and strings that could
/// not be read at entry, and returns the thread's record to send. `None` if the thread has
/// no record (it then goes out plain, flagged by its entry).
#[inline(always)]
pub fn at_exit(
    inflight: &InflightSyscall,
    sessions: SessionMask,
    ret: i64,
) -> Option<*mut CapturedRecord> {
    let out = CAPTURES.current(false);
    if out.is_null() {
        return None;
    }
    let plan = plan_of(inflight.nr)?;
    // SAFETY: the current task's own storage, checked for null.
    let record = unsafe { &mut *out };
    let data = wants_data(inflight.nr, sessions);
    let args = inflight.args;
    let exec = EXEC_SYSCALLS.contains(&inflight.nr);
    for index in 0..CAPTURE_OPS {
        let op = plan.ops[index];
        let at = arg(&args, op.arg);
        match op.kind {
            capture_kind::DATA_OUT if data && ret > 0 => {
                let len = (ret as u64).min(config(capture_config::DATA_BYTES));
                bytes(record, capture_kind::DATA_OUT, op.arg, at, len);
            }
            capture_kind::RAW_OUT if ret >= 0 && at != 0 => {
                let len_at = arg(&args, op.len_arg) as *const i32;
                // SAFETY: a read of user memory that may fail.
                let len = unsafe { bpf_probe_read_user(len_at) }.unwrap_or(0);
                let len = (len.max(0) as u32).min(inflight.out_len).min(MAX_RAW_BYTES);
                bytes(record, capture_kind::RAW_OUT, op.arg, at, u64::from(len));
            }
            // A string in a page that was not resident could not be read at entry (a
            // tracepoint cannot take page faults); the syscall has faulted it in since. The
            // new item comes after the first, and the last one for an argument counts.
            capture_kind::STRING
                if !exec && inflight.unreadable_args & (1 << (op.arg & 7)) != 0 =>
            {
                string(record, capture_kind::STRING, op.arg, at, STRING_CHARS);
            }
            _ => {}
        }
    }
    Some(out)
}

/// The plan of syscall `nr`, if it has one.
#[inline(always)]
fn plan_of(nr: u32) -> Option<CapturePlan> {
    if nr >= MAX_SYSCALLS {
        return None;
    }
    let plan = CAPTURE_PLANS.get(nr).copied()?;
    (plan.ops[0].kind != capture_kind::NONE).then_some(plan)
}

/// Whether any of `sessions` captures the buffers of syscall `nr`.
#[inline(always)]
fn wants_data(nr: u32, sessions: SessionMask) -> bool {
    nr < MAX_SYSCALLS && DATA_SESSIONS.get(nr).copied().unwrap_or(0) & sessions != 0
}

#[inline(always)]
fn config(index: u32) -> u64 {
    CAPTURE_CONFIG.get(index).copied().unwrap_or(0)
}

/// Argument register `index` (0 for an index out of range).
#[inline(always)]
fn arg(args: &[u64; 6], index: u8) -> u64 {
    match index {
        0 => args[0],
        1 => args[1],
        2 => args[2],
        3 => args[3],
        4 => args[4],
        5 => args[5],
        _ => 0,
    }
}

/// The header of the next item, and its payload, if the capture area has room for an item
/// to start; else flags the record as full.
#[inline(always)]
fn next_item(out: &mut CapturedRecord) -> Option<(*mut CaptureItem, *mut u8, usize)> {
    let offset = out.record.data_len as usize;
    if offset >= CAPTURE_BYTES {
        out.record.flags |= record_flags::CAPTURE_FULL;
        return None;
    }
    // The mask repeats the check in a form the verifier cannot lose.
    let offset = offset & (CAPTURE_BYTES - 1);
    // SAFETY: `offset` < CAPTURE_BYTES, and `data` has MAX_CAPTURE_ITEM bytes more.
    let item = unsafe { out.data.as_mut_ptr().add(offset) };
    let payload = unsafe { item.add(size_of::<CaptureItem>()) };
    Some((item.cast(), payload, offset))
}

/// Writes an item's header and moves the write offset past its payload.
#[inline(always)]
fn finish_item(
    out: &mut CapturedRecord,
    item: *mut CaptureItem,
    offset: usize,
    header: CaptureItem,
) {
    // SAFETY: `item` is 8-aligned inside `data` (every item starts at a multiple of 8).
    unsafe { item.write(header) };
    out.record.data_len = (offset + CaptureItem::stride(header.len as usize)) as u16;
}

/// Appends a string item read from `user` (up to `chars` characters and one more, so a
/// longer string shows as such). False if the memory could not be read.
#[inline(always)]
fn string(out: &mut CapturedRecord, kind: u8, arg: u8, user: u64, chars: u64) -> bool {
    let Some((item, payload, offset)) = next_item(out) else {
        return true;
    };
    // One more character than asked for, and the NUL; the payload ends inside `data`.
    let size = chars + 2;
    let size = if size > u64::from(MAX_DATA_BYTES) + 2 {
        u64::from(MAX_DATA_BYTES) + 2
    } else {
        size
    };
    // SAFETY: `payload` has `size` bytes of room (next_item); the source is user memory,
    // which the helper reads or fails on.
    let got = unsafe { bpf_probe_read_user_str(payload.cast(), size as u32, user as *const _) };
    let (len, flags) = if got > 0 {
        ((got - 1) as u16, 0)
    } else {
        (0, item_flags::UNREADABLE)
    };
    finish_item(
        out,
        item,
        offset,
        CaptureItem::new(kind, arg, flags, len, 0),
    );
    got > 0
}

/// Appends `len` bytes read from `user` (at most [`MAX_DATA_BYTES`]).
#[inline(always)]
fn bytes(out: &mut CapturedRecord, kind: u8, arg: u8, user: u64, len: u64) {
    let Some((item, payload, offset)) = next_item(out) else {
        return;
    };
    let len = if len > u64::from(MAX_DATA_BYTES) {
        u64::from(MAX_DATA_BYTES)
    } else {
        len
    };
    // SAFETY: `payload` has `len` bytes of room (next_item); the source is user memory.
    let failed =
        unsafe { bpf_probe_read_user_raw(payload.cast(), len as u32, user as *const _) } != 0;
    let (len, flags) = if failed {
        (0, item_flags::UNREADABLE)
    } else {
        (len as u16, 0)
    };
    finish_item(
        out,
        item,
        offset,
        CaptureItem::new(kind, arg, flags, len, 0),
    );
}

/// Appends an item without payload.
#[inline(always)]
fn marker(out: &mut CapturedRecord, kind: u8, arg: u8, flags: u8, count: u16) {
    let Some((item, _, offset)) = next_item(out) else {
        return;
    };
    finish_item(
        out,
        item,
        offset,
        CaptureItem::new(kind, arg, flags, 0, count),
    );
}

/// Appends argv's elements (as many as configured, each up to the data size) and its end.
#[inline(always)]
fn argv(out: &mut CapturedRecord, arg: u8, user: u64) {
    let keep = config(capture_config::ARGV);
    let chars = config(capture_config::DATA_BYTES);
    let mut count = 0u16;
    let mut flags = 0u8;
    for index in 0..=MAX_ARGV as u64 {
        // SAFETY: a read of user memory that may fail.
        let element = match unsafe { bpf_probe_read_user((user + index * 8) as *const u64) } {
            Ok(element) => element,
            Err(_) => {
                flags |= item_flags::UNREADABLE;
                break;
            }
        };
        if element == 0 {
            break;
        }
        if index >= keep {
            flags |= item_flags::TRUNCATED;
            break;
        }
        string(out, capture_kind::ARGV_ITEM, arg, element, chars);
        count += 1;
    }
    marker(out, capture_kind::ARGV_END, arg, flags, count);
}

/// Appends the number of environment variables.
#[inline(always)]
fn envc(out: &mut CapturedRecord, arg: u8, user: u64) {
    let mut count = 0u16;
    let mut flags = item_flags::TRUNCATED;
    for index in 0..MAX_ENVC as u64 {
        // SAFETY: a read of user memory that may fail.
        match unsafe { bpf_probe_read_user((user + index * 8) as *const u64) } {
            Ok(0) => {
                flags = 0;
                break;
            }
            Ok(_) => count += 1,
            Err(_) => {
                flags = item_flags::UNREADABLE;
                break;
            }
        }
    }
    marker(out, capture_kind::ENVC, arg, flags, count);
}
