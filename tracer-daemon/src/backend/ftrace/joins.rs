//! Which threads an ftrace session traces, kept in step with its target cgroups (each with
//! its whole subtree).
//!
//! ftrace's syscall events have no cgroup field, so an instance filters by thread
//! (`set_event_pid`, with `options/event-fork` adding children as they are forked). Threads
//! that *join* a target cgroup or one below it from outside (`docker exec`, a write to
//! `cgroup.procs`) are no one's children: a daemon-wide watcher instance records
//! `cgroup/cgroup_attach_task` and adds each joiner to the sessions tracing that cgroup or an
//! ancestor of it. Between the join and that write the joiner is not traced; every join's
//! delay is measured and logged per session (`joins_followed`, `slowest_join_us`) rather
//! than hidden. A re-read of the target subtrees every second backs the watcher up.
use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{
        fd::AsRawFd,
        unix::{fs::OpenOptionsExt as _, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, Weak,
    },
    thread::JoinHandle,
    time::Duration,
};

use tracefs_parse::PageHeaderLayout;

use super::{
    decode::{decode_page, Decoder, Raw, CGROUP_ATTACH},
    tracefs::{Instance, TracefsError, INSTANCE_PREFIX},
    tracker::TaskInfo,
};
use crate::{backend::delivery::LateJoins, cgroup::Subtree, record::monotonic_ns, sync::lock};

/// The threads one session's instance traces.
pub struct PidSync {
    instance: Arc<Instance>,
    /// Target cgroups (id → directory), when the session traces cgroups.
    cgroups: Mutex<HashMap<u64, PathBuf>>,
    /// Target processes, when the session traces processes: their threads, not whole cgroups.
    tgids: Option<Vec<u32>>,
    /// Threads added so far (so a re-read adds only new ones).
    added: Mutex<HashSet<u32>>,
    /// What was known of each thread when it was added (read from /proc while it surely
    /// lived), until the reader first needs it: a short-lived thread may be gone by then.
    introduced: Mutex<HashMap<u32, TaskInfo>>,
    late: Mutex<LateJoins>,
}

impl PidSync {
    pub fn new(instance: Arc<Instance>, tgids: Option<Vec<u32>>) -> Self {
        Self {
            instance,
            cgroups: Mutex::new(HashMap::new()),
            tgids,
            added: Mutex::new(HashSet::new()),
            introduced: Mutex::new(HashMap::new()),
            late: Mutex::new(LateJoins::default()),
        }
    }

    /// What was known of `tid` when it was added, once.
    pub fn take_introduced(&self, tid: u32) -> Option<TaskInfo> {
        lock(&self.introduced).remove(&tid)
    }

    /// Adds threads (of `cgroup_id`, if known) to the instance's `set_event_pid`, noting
    /// what /proc says of each.
    fn introduce(&self, tids: &[(u32, Option<u64>)]) -> Result<(), TracefsError> {
        // The cgroup is known now, and a short-lived thread may be gone before the reader
        // looks it up: note it first (the tgid is a guess until /proc is read below).
        {
            let mut introduced = lock(&self.introduced);
            for &(tid, cgroup_id) in tids {
                if let Some(cgroup_id) = cgroup_id {
                    introduced.entry(tid).or_insert(TaskInfo {
                        tgid: tid,
                        comm: [0; 16],
                        cgroup_id,
                    });
                }
            }
        }
        // Then traced: every moment before this write is a syscall the session misses.
        let just_tids: Vec<u32> = tids.iter().map(|(tid, _)| *tid).collect();
        let added = self.add(&just_tids);
        lock(&self.added).extend(&just_tids);
        let mut found = Vec::with_capacity(tids.len());
        for &(tid, cgroup_id) in tids {
            if let Some(mut info) = TaskInfo::from_proc(tid) {
                if let Some(cgroup_id) = cgroup_id {
                    info.cgroup_id = cgroup_id;
                }
                found.push((tid, info));
            }
        }
        let mut introduced = lock(&self.introduced);
        for (tid, info) in found {
            // Only if the reader has not taken the first guess already.
            if let Some(known) = introduced.get_mut(&tid) {
                *known = info;
            } else if tids
                .iter()
                .any(|&(t, cgroup_id)| t == tid && cgroup_id.is_none())
            {
                introduced.insert(tid, info);
            }
        }
        added
    }

    /// Adds threads to the instance's `set_event_pid` (already present ones are harmless).
    fn add(&self, tids: &[u32]) -> Result<(), TracefsError> {
        if tids.is_empty() {
            return Ok(());
        }
        let mut line = tids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        line.push('\n');
        match self.instance.append("set_event_pid", &line) {
            // A thread that exited meanwhile makes the kernel refuse the write: add one by
            // one, skipping the gone.
            Err(_) if tids.len() > 1 => {
                for tid in tids {
                    let _ = self.instance.append("set_event_pid", &format!("{tid}\n"));
                }
                Ok(())
            }
            other => other,
        }
    }

    pub fn set_cgroup(&self, id: u64, path: PathBuf) {
        lock(&self.cgroups).insert(id, path);
    }

    pub fn remove_cgroup(&self, id: u64) {
        lock(&self.cgroups).remove(&id);
    }

    pub fn traces_cgroups(&self) -> bool {
        self.tgids.is_none()
    }

    /// Re-reads the target threads and adds any that are new.
    pub fn resync(&self) {
        // (threads, their cgroup if known)
        let mut groups: Vec<(Vec<u32>, Option<u64>)> = Vec::new();
        match &self.tgids {
            Some(tgids) => {
                for tgid in tgids {
                    if let Ok(entries) = fs::read_dir(format!("/proc/{tgid}/task")) {
                        let tids = entries
                            .flatten()
                            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
                        groups.push((tids.collect(), None));
                    }
                }
            }
            None => {
                let cgroups: Vec<(u64, PathBuf)> = lock(&self.cgroups)
                    .iter()
                    .map(|(id, path)| (*id, path.clone()))
                    .collect();
                for cgroup in cgroups.iter().flat_map(|(_, path)| Subtree::new(path)) {
                    // Every thread of the cgroup (cgroup.procs lists only processes).
                    if let Ok(text) = fs::read_to_string(cgroup.path.join("cgroup.threads")) {
                        let tids = text
                            .lines()
                            .filter_map(|line| line.trim().parse::<u32>().ok());
                        groups.push((tids.collect(), Some(cgroup.id)));
                    }
                }
            }
        }
        let current: HashSet<u32> = groups.iter().flat_map(|(tids, _)| tids).copied().collect();
        for (tids, cgroup_id) in groups {
            let added = lock(&self.added);
            let new: Vec<u32> = tids
                .into_iter()
                .filter(|tid| !added.contains(tid))
                .collect();
            drop(added);
            let new: Vec<(u32, Option<u64>)> =
                new.into_iter().map(|tid| (tid, cgroup_id)).collect();
            if let Err(err) = self.introduce(&new) {
                tracing::warn!(%err, "adding threads to an ftrace instance failed");
            }
        }
        // Forget threads that are gone (their ids may come back as new threads).
        lock(&self.added).retain(|tid| current.contains(tid));
        let mut introduced = lock(&self.introduced);
        if introduced.len() > 4 * current.len() + 1024 {
            introduced.retain(|tid, _| current.contains(tid));
        }
    }

    /// Traces threads that joined target cgroups.
    fn joined(&self, joins: &[Join]) {
        // Every joiner is (re)added (harmless if present: a reused thread id may be stale in
        // `added`), but one traced already (moving between the targets' cgroups) missed
        // nothing and is not a late join.
        let late: Vec<&Join> = {
            let added = lock(&self.added);
            joins
                .iter()
                .filter(|join| !added.contains(&join.tid))
                .collect()
        };
        let tids: Vec<(u32, Option<u64>)> = joins
            .iter()
            .map(|join| (join.tid, Some(join.cgroup_id)))
            .collect();
        if let Err(err) = self.introduce(&tids) {
            // Counted all the same: they ran untraced from their join until they exited.
            tracing::debug!(%err, "joining threads were gone before they were traced");
        }
        let now = monotonic_ns();
        let mut counted = lock(&self.late);
        for join in late {
            let delay = now.saturating_sub(join.joined_ns);
            counted.count += 1;
            counted.delay_ns += delay;
            counted.max_delay_ns = counted.max_delay_ns.max(delay);
            tracing::debug!(
                tid = join.tid,
                delay_us = delay / 1000,
                "traced a thread that joined a target cgroup"
            );
        }
    }

    /// Threads that joined a target cgroup from outside, and how late they were traced.
    pub fn late_joins(&self) -> LateJoins {
        *lock(&self.late)
    }
}

/// Target cgroup id → the sessions tracing it (and its subtree).
type Registry = Mutex<Targets>;

#[derive(Default)]
struct Targets {
    sessions: HashMap<u64, Vec<Weak<PidSync>>>,
    /// Changes with every registration, so answers about the tree made before are redone.
    generation: u64,
}

impl Targets {
    /// A registered target's directory (as one of its sessions knows it).
    fn path(&self, target: u64) -> Option<PathBuf> {
        self.sessions.get(&target)?.iter().find_map(|sync| {
            let sync = sync.upgrade()?;
            let path = lock(&sync.cgroups).get(&target).cloned();
            path
        })
    }
}

/// Which targets each cgroup seen joining lies under (itself included), found by walking
/// the targets' subtrees. A cgroup's place in the tree never changes and its id is never
/// reused, so a cgroup under no target stays so until a target is registered.
#[derive(Default)]
struct Ancestry {
    generation: u64,
    under: HashMap<u64, Vec<u64>>,
}

impl Ancestry {
    /// Bounds the memory of cgroups seen, on a node that makes many.
    const MAX_KNOWN: usize = 65536;

    fn targets_of(&mut self, cgroup_id: u64, targets: &Targets) -> &[u64] {
        if self.generation != targets.generation || self.under.len() > Self::MAX_KNOWN {
            self.under.clear();
            self.generation = targets.generation;
        }
        if !self.under.contains_key(&cgroup_id) {
            // New: walk every target's subtree again (a child may have been made since).
            self.under.retain(|_, found| found.is_empty());
            for &target in targets.sessions.keys() {
                let Some(path) = targets.path(target) else {
                    continue;
                };
                for cgroup in Subtree::new(&path) {
                    self.under.entry(cgroup.id).or_default().push(target);
                }
            }
        }
        self.under.entry(cgroup_id).or_default()
    }
}

/// A thread that joined a target cgroup.
#[derive(Clone, Copy, Debug)]
struct Join {
    tid: u32,
    cgroup_id: u64,
    /// When it joined (trace clock: CLOCK_MONOTONIC).
    joined_ns: u64,
}

/// The sessions tracing each cgroup, and the watcher that reports joins.
#[derive(Default)]
pub struct Joins {
    sessions: Arc<Registry>,
    watcher: Mutex<Option<Watcher>>,
}

impl Joins {
    /// Starts reporting joins of cgroup `id` to `sync` (starting the watcher on first use).
    pub fn register(
        &self,
        root: &Path,
        layout: &PageHeaderLayout,
        decoder: &Arc<Decoder>,
        id: u64,
        sync: &Arc<PidSync>,
    ) -> Result<(), TracefsError> {
        // The watcher lock is held over the registration, so a concurrent last unregister
        // cannot stop the watcher between the two.
        let mut watcher = lock(&self.watcher);
        if watcher.is_none() {
            *watcher = Some(Watcher::start(
                root,
                *layout,
                decoder.clone(),
                self.sessions.clone(),
            )?);
        }
        let mut targets = lock(&self.sessions);
        targets
            .sessions
            .entry(id)
            .or_default()
            .push(Arc::downgrade(sync));
        targets.generation += 1;
        Ok(())
    }

    pub fn unregister(&self, id: u64, sync: &Arc<PidSync>) {
        let mut targets = lock(&self.sessions);
        if let Some(syncs) = targets.sessions.get_mut(&id) {
            syncs.retain(|weak| {
                weak.strong_count() > 0 && !Weak::ptr_eq(weak, &Arc::downgrade(sync))
            });
            if syncs.is_empty() {
                targets.sessions.remove(&id);
                targets.generation += 1;
            }
        }
    }

    /// Waits until the watcher has handled every join made before now (each then traced, and
    /// counted as a late join): a session stopping right after a join still counts it.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        {
            let watcher = lock(&self.watcher);
            let Some(watcher) = watcher.as_ref() else {
                return;
            };
            lock(&watcher.flushes).push(ack);
            let _ = (&watcher.wake).write(&[1]);
        }
        // Bounded: a watcher busy adding a large batch of threads must not hold a stop.
        if done.recv_timeout(FLUSH_WAIT).is_err() {
            tracing::warn!("the cgroup join watcher did not catch up in time");
        }
    }

    /// Unregisters a stopping session; the watcher stops too once no session needs it.
    pub fn unregister_all(&self, sync: &Arc<PidSync>) {
        let ids: Vec<u64> = lock(&sync.cgroups).keys().copied().collect();
        for id in ids {
            self.unregister(id, sync);
        }
        let mut watcher = lock(&self.watcher);
        let idle = {
            let mut targets = lock(&self.sessions);
            targets
                .sessions
                .retain(|_, syncs| syncs.iter().any(|weak| weak.strong_count() > 0));
            targets.generation += 1;
            targets.sessions.is_empty()
        };
        // Dropping the watcher waits for its thread (one poll period at most).
        if idle {
            *watcher = None;
        }
    }
}

/// The daemon-wide instance that records cgroup v2 joins, and its thread.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Wakes the thread (a byte written here) for a flush.
    wake: UnixStream,
    /// Flushes asked for: each is answered after the pass that follows.
    flushes: Arc<Mutex<Vec<mpsc::Sender<()>>>>,
}

/// The longest a flush waits for the watcher.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The watcher's instance (named with the prefix, so a crashed daemon's is cleaned up too).
const WATCHER_INSTANCE: &str = "cgroup-joins";

impl Watcher {
    fn start(
        root: &Path,
        layout: PageHeaderLayout,
        decoder: Arc<Decoder>,
        sessions: Arc<Registry>,
    ) -> Result<Self, TracefsError> {
        if !decoder.has_cgroup_attach() {
            return Err(TracefsError::Format {
                path: root.join("events").join(CGROUP_ATTACH),
                message: "this kernel has no cgroup_attach_task event to follow joins with".into(),
            });
        }
        let instance = Instance::create(root, &format!("{INSTANCE_PREFIX}{WATCHER_INSTANCE}"))?;
        instance.write("trace_clock", "mono")?;
        // Wake the reader on any data: a join must be followed at once.
        instance.write("buffer_percent", "0")?;
        instance.write("buffer_size_kb", "256")?;
        let event = format!("events/{CGROUP_ATTACH}");
        // Hierarchy 0 is cgroup v2, the one the targets are in.
        instance.write(&format!("{event}/filter"), "dst_root == 0")?;
        instance.write(&format!("{event}/enable"), "1")?;
        let cpus = open_cpu_buffers(&instance)?;
        let (wake, woken) = UnixStream::pair()
            .and_then(|(wake, woken)| woken.set_nonblocking(true).map(|()| (wake, woken)))
            .map_err(|err| TracefsError::io("making the join watcher's wake-up for", root, err))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flushes = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::Builder::new()
            .name("tracerd-joins".into())
            .spawn({
                let stop = stop.clone();
                let watching = Watching {
                    cpus,
                    woken,
                    flushes: flushes.clone(),
                    stop: stop.clone(),
                };
                move || watch(instance, watching, layout, decoder, sessions)
            })
            .map_err(|err| TracefsError::io("starting the join watcher for", root, err))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            wake,
            flushes,
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens every CPU's `trace_pipe_raw` of an instance, non-blocking.
pub fn open_cpu_buffers(instance: &Instance) -> Result<Vec<File>, TracefsError> {
    let dir = instance.path().join("per_cpu");
    let mut cpus: Vec<(u32, PathBuf)> = fs::read_dir(&dir)
        .map_err(|err| TracefsError::io("listing", &dir, err))?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let cpu = name.to_str()?.strip_prefix("cpu")?.parse().ok()?;
            Some((cpu, entry.path().join("trace_pipe_raw")))
        })
        .collect();
    cpus.sort();
    cpus.into_iter()
        .map(|(_, path)| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .map_err(|err| TracefsError::io("opening", &path, err))
        })
        .collect()
}

/// What the watcher's thread reads and answers.
struct Watching {
    cpus: Vec<File>,
    /// The read end of [`Watcher::wake`].
    woken: UnixStream,
    flushes: Arc<Mutex<Vec<mpsc::Sender<()>>>>,
    stop: Arc<AtomicBool>,
}

fn watch(
    instance: Instance,
    mut watching: Watching,
    layout: PageHeaderLayout,
    decoder: Arc<Decoder>,
    sessions: Arc<Registry>,
) {
    use std::io::Read as _;
    let mut page = vec![0u8; layout.page_size()];
    let mut batch = Vec::new();
    let mut ancestry = Ancestry::default();
    while !watching.stop.load(Ordering::Relaxed) {
        // Asked before this pass: answered after it.
        let flushes = std::mem::take(&mut *lock(&watching.flushes));
        let mut fds: Vec<libc::pollfd> = watching
            .cpus
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain([watching.woken.as_raw_fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = if flushes.is_empty() { 100 } else { 0 };
        // SAFETY: `fds` is a valid array of pollfd for the call's duration. The timeout
        // bounds how long a stop waits.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        while let Ok(1..) = watching.woken.read(&mut page) {}
        for cpu in &mut watching.cpus {
            while let Ok(len @ 1..) = cpu.read(&mut page) {
                decode_page(&layout, &decoder, &page[..len], &mut batch);
            }
        }
        // One write per session for everything this pass saw: each write to set_event_pid
        // waits for an RCU grace period in the kernel.
        let mut joins: Vec<(Arc<PidSync>, Vec<Join>)> = Vec::new();
        for (ts, raw) in batch.drain(..) {
            let Raw::Attach { cgroup_id, pid, .. } = raw else {
                continue;
            };
            let targets = lock(&sessions);
            let syncs = ancestry
                .targets_of(cgroup_id, &targets)
                .iter()
                .filter_map(|target| targets.sessions.get(target))
                .flatten();
            for sync in syncs {
                let Some(sync) = sync.upgrade() else { continue };
                let join = Join {
                    tid: pid,
                    cgroup_id,
                    joined_ns: ts,
                };
                match joins
                    .iter_mut()
                    .find(|(known, _)| Arc::ptr_eq(known, &sync))
                {
                    Some((_, list)) => list.push(join),
                    None => joins.push((sync, vec![join])),
                }
            }
        }
        for (sync, list) in joins {
            sync.joined(&list);
        }
        for flush in flushes {
            let _ = flush.send(());
        }
    }
    drop(watching);
    drop(instance);
}
