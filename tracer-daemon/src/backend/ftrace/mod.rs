//! The ftrace backend: where eBPF cannot be used, or when a session asks for it.
//!
//! Each session gets its own tracefs instance, `instances/tracerd-<session id>`, with
//! `raw_syscalls/sys_enter` and `sys_exit` enabled, in-kernel filters for its syscall set
//! and conditions, and `set_event_pid` + `options/event-fork` for its threads (kept in step
//! with its cgroups by [`joins`]). A reader thread per session reads the binary per-CPU
//! pages (`trace_pipe_raw`), whose layouts come from the kernel's own `header_page` and
//! `format` files, and pairs entries with exits into the same [`SyscallRecord`] the eBPF
//! programs write, so every consumer works unchanged.
//!
//! Differences from eBPF, by the nature of ftrace: path arguments are addresses only (no
//! string: such records say `path_unavailable`), and a thread that joins a cgroup from
//! outside is traced from the moment the daemon has seen the join (measured, see [`joins`]).
//! Events the ring buffer could not keep (`per_cpu/cpuN/stats`: overrun and dropped events)
//! become the session's dropped records, counted in syscalls: a call is two events, and the
//! reader counts the calls of which it saw only one (see [`lost_syscalls`]).
//!
//! [`SyscallRecord`]: tracer_common::SyscallRecord
mod decode;
mod joins;
mod order;
mod pages;
mod reader;
mod tracefs;
mod tracker;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

use rustc_hash::FxHashSet;
use tracefs_parse::PageHeaderLayout;

pub use self::tracefs::{root as tracefs_root, TracefsError, INSTANCE_PREFIX};
use self::{
    decode::{Decoder, SYSCALL_ENTER, SYSCALL_EXIT, TASK_EVENTS},
    joins::{Joins, PidSync},
    reader::{Control, Reader},
    tracefs::Instance,
    tracker::{RecordFilter, TaskInfo, Tracker},
};
use crate::{
    backend::delivery::{DrainStats, LateJoins, Route},
    cgroup,
    record::{signatures, syscalls::path_syscalls, TraceFilter},
};

/// Default ring-buffer size of a session's instance, per CPU.
pub const DEFAULT_BUFFER_KB: u32 = 4096;

/// The daemon-wide part: tracefs, the kernel's layouts, and the join watcher.
pub struct FtraceBackend {
    root: PathBuf,
    layout: PageHeaderLayout,
    decoder: Arc<Decoder>,
    /// Syscalls with argument data in user memory (which ftrace cannot read).
    data_syscalls: Arc<FxHashSet<u32>>,
    joins: Arc<Joins>,
}

/// How one session's instance is set up.
#[derive(Clone, Debug)]
pub struct FtraceSessionOptions {
    /// Instance name, after the `tracerd-` prefix.
    pub name: String,
    /// Ring-buffer size per CPU.
    pub buffer_kb: u32,
}

impl FtraceBackend {
    /// Finds tracefs, removes instances a crashed daemon left behind, and reads the layouts.
    pub fn open() -> Result<Self, TracefsError> {
        let root = tracefs::root()?;
        for name in tracefs::remove_stale_instances(&root)? {
            tracing::warn!(instance = %name, "removed a tracefs instance left by an earlier tracerd");
        }
        let header_page = root.join("events/header_page");
        let layout = tracefs_parse::read_description(&header_page)
            .map_err(|err| TracefsError::io("reading", &header_page, err))
            .and_then(|text| {
                PageHeaderLayout::parse(&text).map_err(|err| TracefsError::Format {
                    path: header_page.clone(),
                    message: err.to_string(),
                })
            })?;
        Ok(Self {
            decoder: Arc::new(Decoder::load(&root)?),
            data_syscalls: Arc::new(data_syscalls(&root)),
            root,
            layout,
            joins: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates and starts a session's instance; its records go to `route`.
    pub(crate) fn start_session(
        &self,
        filter: &TraceFilter,
        options: &FtraceSessionOptions,
        route: Route,
        stats: Arc<DrainStats>,
    ) -> Result<FtraceSession, TracefsError> {
        let name = format!("{INSTANCE_PREFIX}{}", options.name);
        let instance = Arc::new(Instance::create(&self.root, &name)?);
        instance.write("buffer_size_kb", &options.buffer_kb.to_string())?;
        instance.write("trace_clock", "mono")?;
        // When full, keep what is there and count what is dropped (as the eBPF rings do).
        instance.write("options/overwrite", "0")?;
        instance.write("options/event-fork", "1")?;
        // Thread 0 (the idle task) makes no syscalls: a filter that admits nobody yet, since
        // an empty set_event_pid would admit everybody.
        instance.write("set_event_pid", "0")?;
        let (enter_filter, exit_filter) = kernel_filters(filter);
        instance.write(&format!("events/{SYSCALL_ENTER}/filter"), &enter_filter)?;
        instance.write(&format!("events/{SYSCALL_EXIT}/filter"), &exit_filter)?;

        let pids = Arc::new(PidSync::new(instance.clone(), filter.tgids.clone()));
        let session = FtraceSession {
            instance: instance.clone(),
            pids: pids.clone(),
            joins: self.joins.clone(),
            reader: None,
            control: None,
            produced: Arc::new(AtomicU64::new(0)),
            halves: Arc::new(AtomicU64::new(0)),
        };
        let armed = self.arm(&session, filter);
        let cpus = match armed {
            Ok(cpus) => cpus,
            Err(err) => {
                // The join watcher must not keep reporting to a session that never started.
                self.joins.unregister_all(&session.pids);
                return Err(err);
            }
        };
        let introduced = pids.clone();
        let tracker = Tracker::new(
            RecordFilter {
                tgids: filter.tgids.as_ref().map(|t| t.iter().copied().collect()),
                failed_only: filter.failed_only,
            },
            self.data_syscalls.clone(),
            Box::new(move |tid| {
                introduced
                    .take_introduced(tid)
                    .or_else(|| TaskInfo::from_proc(tid))
            }),
        );
        let halves = tracker.halves();
        let reader = Reader {
            instance: instance.clone(),
            cpus,
            layout: self.layout,
            decoder: self.decoder.clone(),
            tracker,
            route,
            produced: session.produced.clone(),
            pids,
            stats,
            records: Default::default(),
            ring_pages: (options.buffer_kb as usize * 1024 / self.layout.page_size()).max(1),
        };
        let (control, requests) = mpsc::channel();
        let short: String = options.name.chars().take(8).collect();
        let spawned = std::thread::Builder::new()
            .name(format!("tracerd-ftrace-{short}"))
            .spawn(move || reader.run(requests));
        let thread = match spawned {
            Ok(thread) => thread,
            Err(err) => {
                self.joins.unregister_all(&session.pids);
                return Err(TracefsError::io(
                    "starting the reader of",
                    instance.path(),
                    err,
                ));
            }
        };
        Ok(FtraceSession {
            reader: Some(thread),
            control: Some(control),
            halves,
            ..session
        })
    }

    /// Registers the session's cgroups for joins, reads who is in them, enables the events and
    /// opens the per-CPU buffers.
    fn arm(
        &self,
        session: &FtraceSession,
        filter: &TraceFilter,
    ) -> Result<Vec<std::fs::File>, TracefsError> {
        if session.pids.traces_cgroups() {
            for &id in &filter.cgroups {
                self.add_cgroup(session, id)?;
            }
        }
        // Joins are reported from here on; now read who is already in.
        session.pids.resync();
        let instance = &session.instance;
        for event in [SYSCALL_ENTER, SYSCALL_EXIT] {
            instance.write(&format!("events/{event}/enable"), "1")?;
        }
        if self.decoder.has_task_events() {
            for event in TASK_EVENTS {
                instance.write(&format!("events/{event}/enable"), "1")?;
            }
        }
        joins::open_cpu_buffers(instance)
    }

    /// Adds a cgroup to a running session: its threads now, and its joiners from now on.
    pub fn add_cgroup(&self, session: &FtraceSession, id: u64) -> Result<(), TracefsError> {
        let mount = cgroup::cgroup2_mount().map_err(|err| TracefsError::Format {
            path: PathBuf::from("/proc/self/mountinfo"),
            message: err.to_string(),
        })?;
        let Some(path) = cgroup::find_by_id(&mount, id) else {
            return Err(TracefsError::io(
                "finding cgroup",
                &mount.join(format!("<id {id}>")),
                std::io::ErrorKind::NotFound.into(),
            ));
        };
        session.pids.set_cgroup(id, path);
        self.joins
            .register(&self.root, &self.layout, &self.decoder, id, &session.pids)?;
        session.pids.resync();
        Ok(())
    }
}

/// A running session's instance and reader.
pub struct FtraceSession {
    instance: Arc<Instance>,
    pids: Arc<PidSync>,
    joins: Arc<Joins>,
    reader: Option<JoinHandle<()>>,
    control: Option<mpsc::Sender<Control>>,
    produced: Arc<AtomicU64>,
    /// Syscalls the reader saw only half of (see [`tracker::Tracker::halves`]).
    halves: Arc<AtomicU64>,
}

impl FtraceSession {
    pub fn remove_cgroup(&self, id: u64) {
        self.joins.unregister(id, &self.pids);
        self.pids.remove_cgroup(id);
    }

    /// Stops the session: no more events are recorded, everything recorded is read, the
    /// instance is removed. Returns (records made, syscalls lost, late joins). Blocks on the
    /// reader.
    pub fn stop(mut self) -> (u64, u64, LateJoins) {
        // Threads that joined before the stop are traced (and counted) first.
        self.joins.flush();
        let _ = self.instance.write("tracing_on", "0");
        if let Some(control) = self.control.take() {
            let _ = control.send(Control::Stop);
        }
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                tracing::error!("an ftrace reader thread panicked");
            }
        }
        self.joins.unregister_all(&self.pids);
        let late = self.late_joins();
        if late.count > 0 {
            tracing::info!(
                instance = %self.instance.path().display(),
                late_joins = late.count,
                slowest_join_us = late.max_delay_ns / 1000,
                "threads that joined a target cgroup were traced from when their join was seen"
            );
        }
        let (lost_events, halves) = (self.lost_events(), self.halves.load(Ordering::Relaxed));
        if lost_events > 0 {
            tracing::info!(
                instance = %self.instance.path().display(),
                lost_events,
                halves,
                records = self.produced(),
                "the instance's ring buffer was full: events were lost"
            );
        }
        (self.produced(), lost_syscalls(lost_events, halves), late)
    }

    /// Threads that joined a target cgroup and were traced late (or never).
    pub fn late_joins(&self) -> LateJoins {
        self.pids.late_joins()
    }

    /// Records made so far.
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// Syscalls of the session the instance's ring buffer lost, wholly or in half.
    pub fn lost_syscalls(&self) -> u64 {
        lost_syscalls(self.lost_events(), self.halves.load(Ordering::Relaxed))
    }

    /// Events the instance's ring buffer could not keep, over all CPUs.
    fn lost_events(&self) -> u64 {
        let dir = self.instance.path().join("per_cpu");
        let Ok(cpus) = std::fs::read_dir(&dir) else {
            return 0;
        };
        cpus.flatten()
            .filter_map(|cpu| std::fs::read_to_string(cpu.path().join("stats")).ok())
            .map(|stats| lost_in_stats(&stats))
            .sum()
    }

    /// Asks the reader to read everything there is now; the receiver answers when done.
    pub fn flush(&self) -> Option<mpsc::Receiver<()>> {
        let (ack, done) = mpsc::channel();
        self.control.as_ref()?.send(Control::Flush(ack)).ok()?;
        Some(done)
    }

    pub fn instance_path(&self) -> &Path {
        self.instance.path()
    }
}

/// Syscalls lost, from the events lost and the syscalls the reader saw only half of: each of
/// those lost one event, every other lost syscall two. Exact when every lost event is a
/// syscall event; the task events (fork, exec, exit: a few per process) that were lost with
/// them are rounded away when odd and add one per pair otherwise. Nothing is lost when no
/// event was.
fn lost_syscalls(lost_events: u64, halves: u64) -> u64 {
    if lost_events == 0 {
        return 0;
    }
    let halves = halves.min(lost_events);
    halves + (lost_events - halves) / 2
}

/// `overrun` (overwritten events) plus `dropped events` (refused when full) from a
/// `per_cpu/cpuN/stats` file.
fn lost_in_stats(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            matches!(key.trim(), "overrun" | "dropped events")
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

/// The longest filter tracerd writes; longer syscall sets are filtered in userspace only (the
/// kernel takes at most a page).
const MAX_FILTER_LEN: usize = 3500;

/// (sys_enter filter, sys_exit filter) for the session's syscall set and conditions; "0"
/// clears a filter.
fn kernel_filters(filter: &TraceFilter) -> (String, String) {
    let syscalls = filter
        .syscalls
        .as_ref()
        .map(|set| id_ranges(set))
        .filter(|expression| expression.len() <= MAX_FILTER_LEN);
    let enter = syscalls.clone().unwrap_or_else(|| "0".into());
    let exit = match (syscalls, filter.failed_only) {
        (Some(ids), true) => format!("({ids}) && ret < 0"),
        (Some(ids), false) => ids,
        (None, true) => "ret < 0".into(),
        (None, false) => "0".into(),
    };
    (enter, exit)
}

/// `id == 1 || (id >= 3 && id <= 5)`: a syscall set as ranges.
fn id_ranges(set: &[u32]) -> String {
    let mut ids = set.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut terms = Vec::new();
    let mut index = 0;
    while index < ids.len() {
        let start = ids[index];
        let mut end = start;
        while index + 1 < ids.len() && ids[index + 1] == end + 1 {
            index += 1;
            end = ids[index];
        }
        terms.push(if start == end {
            format!("id == {start}")
        } else {
            format!("(id >= {start} && id <= {end})")
        });
        index += 1;
    }
    if terms.is_empty() {
        // An empty set matches nothing.
        return "id == -1".into();
    }
    terms.join(" || ")
}

/// Syscalls whose arguments point at data in user memory: those that take a path, and
/// those the eBPF backend captures data for (from the kernel's signatures).
fn data_syscalls(root: &std::path::Path) -> FxHashSet<u32> {
    let signatures = signatures::load_once(|| Some(root.to_owned()));
    let mut syscalls: FxHashSet<u32> = path_syscalls().into_iter().collect();
    syscalls.extend(signatures.capture_plans().map(|(nr, _)| nr));
    syscalls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_sets_become_range_filters() {
        assert_eq!(
            id_ranges(&[39, 1, 2, 3, 110]),
            "(id >= 1 && id <= 3) || id == 39 || id == 110"
        );
        let (enter, exit) = kernel_filters(&TraceFilter {
            syscalls: Some(vec![257]),
            failed_only: true,
            ..TraceFilter::default()
        });
        assert_eq!(enter, "id == 257");
        assert_eq!(exit, "(id == 257) && ret < 0");
        let (enter, exit) = kernel_filters(&TraceFilter::default());
        assert_eq!((enter.as_str(), exit.as_str()), ("0", "0"));
    }

    #[test]
    fn lost_events_come_from_overruns_and_drops() {
        let stats = "entries: 5\noverrun: 3\ncommit overrun: 0\nbytes: 100\n\
                     oldest event ts: 1.0\nnow ts: 2.0\ndropped events: 4\nread events: 9\n";
        assert_eq!(lost_in_stats(stats), 7);
    }

    #[test]
    fn lost_events_are_counted_in_syscalls() {
        // 3 calls lost whole (6 events) and 2 halves.
        assert_eq!(lost_syscalls(8, 2), 5);
        // One lost task event beside them.
        assert_eq!(lost_syscalls(9, 2), 5);
        assert_eq!(
            lost_syscalls(0, 3),
            0,
            "nothing lost: halves were not losses"
        );
        assert_eq!(lost_syscalls(1, 4), 1);
    }
}
