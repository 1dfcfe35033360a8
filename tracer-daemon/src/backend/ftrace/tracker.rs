//! Turns a session's stream of raw events into completed syscall records: pairs each
//! `sys_enter` with its thread's `sys_exit`, and keeps each thread's process, name and cgroup
//! current from the task events in the same stream.
//!
//! Per-CPU buffers are read one after another, so a thread that moved CPUs inside a syscall
//! can show its exit before its entry: both orders pair, by timestamp.
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tracer_common::{record_flags, SyscallRecord};

use super::decode::{comm_of, Comm, Raw};
use crate::cgroup::Cgroup;

/// What a record needs to know about its thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub tgid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
}

impl TaskInfo {
    /// Reads a thread's process, name and cgroup from /proc; `None` once it has exited.
    pub fn from_proc(tid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
        let tgid = status
            .lines()
            .find_map(|line| line.strip_prefix("Tgid:"))?
            .trim()
            .parse()
            .ok()?;
        let comm = std::fs::read(format!("/proc/{tid}/comm")).ok()?;
        let comm = comm_of(comm.strip_suffix(b"\n").unwrap_or(&comm));
        let cgroup_id = Cgroup::of_pid(tid).map_or(0, |cgroup| cgroup.id);
        Some(Self {
            tgid,
            comm,
            cgroup_id,
        })
    }
}

#[derive(Clone, Copy)]
struct Entered {
    ts: u64,
    nr: i64,
    args: [u64; 6],
}

#[derive(Clone, Copy)]
struct Exited {
    ts: u64,
    ret: i64,
    /// The thread's first event in the session.
    first: bool,
}

/// The session's conditions that are applied here rather than in the kernel.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    /// Only these processes.
    pub tgids: Option<HashSet<u32>>,
    pub failed_only: bool,
}

/// Threads by id, looked up once per event: hashed with rustc-hash (thread ids are not chosen
/// by an attacker who could flood one bucket; with SipHash, hash-map work was about a fifth
/// of the daemon's CPU samples on the ftrace path, by perf).
type ByThread<V> = rustc_hash::FxHashMap<u32, V>;

/// What the tracker knows of one thread, in one map entry (one lookup per event: four maps
/// by thread, looked up three to five times per syscall, were a sixth of the reader's time).
#[derive(Default)]
struct Thread {
    /// Its process, name and cgroup: from the stream's task events, else looked up once.
    info: Option<TaskInfo>,
    /// A syscall it entered whose exit was not read yet.
    entered: Option<Entered>,
    /// An exit read before its entry (the thread changed CPUs), or with no entry at all.
    exited: Option<Exited>,
    /// It had a syscall event in this session: a thread's first event may be the exit of a
    /// call it entered before the session (or of the fork that made it), which is not a
    /// loss; any later exit without its entry is.
    seen: bool,
}

impl Thread {
    fn info(&mut self, tid: u32, lookup: &Lookup) -> TaskInfo {
        // Gone already: a single-threaded process is its own tgid, the common case.
        *self.info.get_or_insert_with(|| {
            lookup(tid).unwrap_or(TaskInfo {
                tgid: tid,
                comm: [0; 16],
                cgroup_id: 0,
            })
        })
    }
}

/// Tells what is known of a thread the stream has not introduced (it predates the session,
/// or joined a target cgroup).
type Lookup = dyn Fn(u32) -> Option<TaskInfo> + Send;

pub struct Tracker {
    threads: ByThread<Thread>,
    rules: Rules,
}

/// What turns a thread's events into records, apart from the threads themselves.
struct Rules {
    filter: RecordFilter,
    /// Syscalls that take a path (ftrace records cannot carry the string), by number: a bit
    /// each, looked up for every record.
    data_syscalls: Vec<u64>,
    lookup: Box<Lookup>,
    /// Syscalls of which one event was read and the other lost (the ring buffer was full).
    halves: Arc<AtomicU64>,
}

/// Syscalls that never return, so they have no `sys_exit`: recorded at entry, as the eBPF
/// programs do.
#[cfg(target_arch = "x86_64")]
const NO_RETURN_SYSCALLS: [i64; 2] = [60 /* exit */, 231 /* exit_group */];
#[cfg(target_arch = "aarch64")]
const NO_RETURN_SYSCALLS: [i64; 2] = [93 /* exit */, 94 /* exit_group */];

impl Tracker {
    /// `lookup` tells what is known of a thread the stream has not introduced.
    pub fn new(
        filter: RecordFilter,
        data_syscalls: Arc<rustc_hash::FxHashSet<u32>>,
        lookup: Box<Lookup>,
    ) -> Self {
        let mut bits = vec![0u64; data_syscalls.iter().max().map_or(0, |&nr| nr / 64 + 1) as usize];
        for &nr in data_syscalls.iter() {
            bits[(nr / 64) as usize] |= 1 << (nr % 64);
        }
        Self {
            threads: ByThread::default(),
            rules: Rules {
                filter,
                data_syscalls: bits,
                lookup,
                halves: Arc::new(AtomicU64::new(0)),
            },
        }
    }

    /// Syscalls of which only the entry or only the exit was read: the other event was lost.
    /// Shared with the session, which turns lost events into lost syscalls with it.
    pub fn halves(&self) -> Arc<AtomicU64> {
        self.rules.halves.clone()
    }

    /// Introduces a thread (tests; the session looks threads up in /proc on first sight).
    #[cfg(test)]
    pub fn know(&mut self, tid: u32, info: TaskInfo) {
        self.threads.entry(tid).or_default().info = Some(info);
    }

    /// Handles one event (in timestamp order within what was read), emitting completed
    /// syscalls.
    pub fn handle(&mut self, ts: u64, raw: Raw, emit: &mut impl FnMut(SyscallRecord)) {
        let rules = &self.rules;
        match raw {
            Raw::Enter { tid, nr, args } => {
                let thread = self.threads.entry(tid).or_default();
                let entered = Entered { ts, nr, args };
                if NO_RETURN_SYSCALLS.contains(&nr) {
                    thread.exited = None;
                    if !rules.filter.failed_only {
                        rules.complete(thread, tid, entered, ts, 0, emit);
                    }
                    return;
                }
                thread.seen = true;
                match thread.exited.take() {
                    // The exit was read first (the thread changed CPUs).
                    Some(exited) if exited.ts >= ts => {
                        rules.complete(thread, tid, entered, exited.ts, exited.ret, emit);
                        return;
                    }
                    // An older exit whose entry never came: lost, unless it was the thread's
                    // first event (a call entered before the session).
                    Some(exited) if !exited.first => rules.lost_half(thread, tid),
                    _ => {}
                }
                // A thread is in one syscall at a time: an older entry whose exit never
                // came is replaced. Lost, unless failed-only sessions filter exits out.
                if thread.entered.replace(entered).is_some() && !rules.filter.failed_only {
                    rules.lost_half(thread, tid);
                }
            }
            Raw::Exit { tid, ret, .. } => {
                let thread = self.threads.entry(tid).or_default();
                let first = !std::mem::replace(&mut thread.seen, true);
                match thread.entered {
                    Some(entered) if entered.ts <= ts => {
                        thread.entered = None;
                        rules.complete(thread, tid, entered, ts, ret, emit);
                    }
                    // Its entry may still be unread on another CPU's buffer (or predates the
                    // session, and then a later entry of the thread replaces it).
                    _ => {
                        let older = thread.exited.replace(Exited { ts, ret, first });
                        if older.is_some_and(|older| !older.first) {
                            rules.lost_half(thread, tid);
                        }
                    }
                }
            }
            raw => self.handle_task_event(raw),
        }
    }

    /// Keeps threads' process and name current.
    fn handle_task_event(&mut self, raw: Raw) {
        let lookup = &self.rules.lookup;
        match raw {
            Raw::NewTask {
                tid,
                child,
                clone_flags,
            } => {
                let parent = self.threads.entry(tid).or_default().info(tid, lookup);
                let tgid = if Raw::is_thread(clone_flags) {
                    parent.tgid
                } else {
                    child
                };
                self.threads.entry(child).or_default().info = Some(TaskInfo { tgid, ..parent });
            }
            Raw::Exec { tid, old_tid, comm } => {
                let old = self
                    .threads
                    .get_mut(&old_tid)
                    .and_then(|thread| thread.info.take());
                let thread = self.threads.entry(tid).or_default();
                let mut info = match old {
                    Some(info) => info,
                    None => thread.info(tid, lookup),
                };
                // A non-leader thread that calls exec takes over the leader's tid.
                info.tgid = tid;
                info.comm = comm;
                thread.info = Some(info);
            }
            Raw::Rename { tid, comm } => {
                let thread = self.threads.entry(tid).or_default();
                let mut info = thread.info(tid, lookup);
                info.comm = comm;
                thread.info = Some(info);
            }
            Raw::ProcessExit { tid } => {
                self.threads.remove(&tid);
            }
            Raw::Enter { .. } | Raw::Exit { .. } | Raw::Attach { .. } => {}
        }
    }

    /// Threads with an entry and no exit yet, and exits waiting for their entry.
    #[cfg(test)]
    pub fn pending(&self) -> (usize, usize) {
        let threads = self.threads.values();
        let entered = threads.clone().filter(|thread| thread.entered.is_some());
        let exited = threads.filter(|thread| thread.exited.is_some());
        (entered.count(), exited.count())
    }
}

impl Rules {
    /// Counts a syscall half of which was lost, if it is the session's (its process passes
    /// the session's filter).
    fn lost_half(&self, thread: &mut Thread, tid: u32) {
        let tgid = thread.info(tid, &self.lookup).tgid;
        if self
            .filter
            .tgids
            .as_ref()
            .is_none_or(|tgids| tgids.contains(&tgid))
        {
            self.halves.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn complete(
        &self,
        thread: &mut Thread,
        tid: u32,
        entered: Entered,
        exit_ts: u64,
        ret: i64,
        emit: &mut impl FnMut(SyscallRecord),
    ) {
        if self.filter.failed_only && ret >= 0 {
            return;
        }
        let info = thread.info(tid, &self.lookup);
        if let Some(tgids) = &self.filter.tgids {
            if !tgids.contains(&info.tgid) {
                return;
            }
        }
        let nr = entered.nr as u32;
        // The kernel hands ftrace a pointer argument's address, not the data behind it.
        let takes_data = self
            .data_syscalls
            .get(nr as usize / 64)
            .is_some_and(|bits| bits >> (nr % 64) & 1 != 0);
        let flags = if takes_data {
            record_flags::DATA_UNAVAILABLE
        } else {
            0
        };
        emit(SyscallRecord {
            enter_ns: entered.ts,
            duration_ns: exit_ts - entered.ts,
            cgroup_id: info.cgroup_id,
            sessions: 0,
            args: entered.args,
            ret,
            tgid: info.tgid,
            tid,
            nr,
            data_len: 0,
            flags,
            comm: info.comm,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(filter: RecordFilter) -> Tracker {
        Tracker::new(
            filter,
            Arc::new(rustc_hash::FxHashSet::from_iter([257])),
            Box::new(|tid| {
                Some(TaskInfo {
                    tgid: tid,
                    comm: comm_of(b"looked-up"),
                    cgroup_id: 7,
                })
            }),
        )
    }

    fn run(tracker: &mut Tracker, events: &[(u64, Raw)]) -> Vec<SyscallRecord> {
        let mut out = Vec::new();
        for &(ts, raw) in events {
            tracker.handle(ts, raw, &mut |record| out.push(record));
        }
        out
    }

    fn enter(tid: u32, nr: i64) -> Raw {
        Raw::Enter {
            tid,
            nr,
            args: [1, 2, 3, 4, 5, 6],
        }
    }

    fn exit(tid: u32, nr: i64, ret: i64) -> Raw {
        Raw::Exit { tid, nr, ret }
    }

    #[test]
    fn pairs_in_either_order() {
        let mut tracker = tracker(RecordFilter::default());
        let records = run(
            &mut tracker,
            &[
                (10, enter(1, 39)),
                (15, exit(1, 39, 1)),
                // Exit read before its entry (another CPU's buffer read later).
                (30, exit(2, 110, 2)),
                (20, enter(2, 110)),
            ],
        );
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].nr, records[0].duration_ns, records[0].ret),
            (39, 5, 1)
        );
        assert_eq!(
            (records[1].nr, records[1].duration_ns, records[1].ret),
            (110, 10, 2)
        );
        assert_eq!(records[0].args, [1, 2, 3, 4, 5, 6]);
        assert_eq!(records[0].cgroup_id, 7);
        assert_eq!(tracker.pending(), (0, 0));
    }

    #[test]
    fn an_exit_without_its_entry_pairs_with_nothing_later() {
        let mut tracker = tracker(RecordFilter::default());
        // The session started inside the first syscall: its exit has no entry.
        let records = run(
            &mut tracker,
            &[(5, exit(1, 0, 0)), (10, enter(1, 39)), (12, exit(1, 39, 0))],
        );
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].duration_ns, 2);
        assert_eq!(tracker.halves().load(Ordering::Relaxed), 0, "not a loss");
    }

    #[test]
    fn calls_seen_in_half_count_as_lost_halves() {
        let mut tracker = tracker(RecordFilter::default());
        let records = run(
            &mut tracker,
            &[
                (1, enter(1, 39)),
                (2, exit(1, 39, 0)),
                // Its exit lost.
                (3, enter(1, 39)),
                (5, enter(1, 39)),
                (6, exit(1, 39, 0)),
                // Its entry lost.
                (8, exit(1, 39, 0)),
                (9, enter(1, 39)),
                (10, exit(1, 39, 0)),
            ],
        );
        assert_eq!(records.len(), 3);
        assert_eq!(tracker.halves().load(Ordering::Relaxed), 2);
    }

    #[test]
    fn exit_group_is_recorded_at_entry_and_failed_only_filters() {
        let mut all = tracker(RecordFilter::default());
        assert_eq!(run(&mut all, &[(1, enter(1, 231))]).len(), 1);
        let mut failed = tracker(RecordFilter {
            failed_only: true,
            ..RecordFilter::default()
        });
        let records = run(
            &mut failed,
            &[
                (1, enter(1, 231)),
                (2, enter(2, 257)),
                (3, exit(2, 257, -2)),
                (4, enter(2, 39)),
                (5, exit(2, 39, 2)),
            ],
        );
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].ret, -2);
        assert_eq!(records[0].flags, record_flags::DATA_UNAVAILABLE);
    }

    #[test]
    fn task_events_keep_process_and_name_current() {
        let mut tracker = tracker(RecordFilter {
            tgids: Some(HashSet::from([100])),
            ..RecordFilter::default()
        });
        tracker.know(
            100,
            TaskInfo {
                tgid: 100,
                comm: comm_of(b"parent"),
                cgroup_id: 9,
            },
        );
        let records = run(
            &mut tracker,
            &[
                // A thread of 100 and a child process.
                (
                    1,
                    Raw::NewTask {
                        tid: 100,
                        child: 101,
                        clone_flags: 0x0001_0000,
                    },
                ),
                (
                    2,
                    Raw::NewTask {
                        tid: 100,
                        child: 200,
                        clone_flags: 0,
                    },
                ),
                (3, enter(101, 39)),
                (4, exit(101, 39, 0)),
                (5, enter(200, 39)),
                (6, exit(200, 39, 0)),
                (
                    7,
                    Raw::Rename {
                        tid: 101,
                        comm: comm_of(b"worker"),
                    },
                ),
                (8, enter(101, 39)),
                (9, exit(101, 39, 0)),
            ],
        );
        // The child process is another tgid: filtered out.
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].tgid, records[0].cgroup_id), (100, 9));
        assert_eq!(records[0].comm_bytes(), b"parent");
        assert_eq!(records[1].comm_bytes(), b"worker");
    }
}
