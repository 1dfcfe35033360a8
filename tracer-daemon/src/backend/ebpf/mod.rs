//! The eBPF backend: loads the programs from `tracer-ebpf`, attaches them while any session
//! runs, programs the kernel's filter maps for session slots, reads the per-slot counters,
//! and hands out the record ring buffers ([`slots`] runs sessions on them).
//!
//! **Attached on demand.** Any program on `sys_enter`/`sys_exit` sends every syscall of every
//! process on the node through the kernel's slow syscall paths, so the programs are attached
//! when the first slot is programmed and detached when the last one is cleared: an idle
//! daemon costs the node nothing. The programs and maps stay loaded, so attaching is two
//! `bpf()` calls. The exit program is attached before the entry one and detached after it,
//! so no syscall is half-seen; a syscall that entered while the programs were attached and
//! returns after a detach is excluded from later sessions by their slots' start times.
//!
//! Every kernel object here is owned by this process's file descriptors and nothing is
//! pinned, so dropping the backend (stop, shutdown) or the process dying (crash, `kill -9`)
//! detaches the programs and frees the maps: nothing can linger in the kernel.
mod capture;
mod load;
mod load_error;
mod map_error;
pub mod pinned;
mod ring;
mod slots;

use std::{collections::HashMap as StdHashMap, io};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{
        raw_trace_point::RawTracePointLink, trace_point::TracePointLink, RawTracePoint, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    cgroup_config, counter, mask, CgroupSessions, SessionMask, SlotState, MAX_SESSIONS,
    MAX_SYSCALLS,
};

use self::capture::CaptureMaps;
use self::{
    load::{
        attach_raw, configure_rings, load_programs, page_size, per_cpu_rings, program_mut,
        rmdir_layout_matches, take_map, take_ring, ENTER, EXIT, RMDIR, TRACER_OBJECT,
    },
    load_error::{check_kernel_release, classify},
};
pub use self::{
    load::{auto_ring_bytes, auto_wakeup_every, EbpfOptions, PROGRAM_NAMES},
    load_error::LoadError,
    map_error::MapUpdateError,
    ring::RecordRing,
    slots::EbpfSessions,
};
use crate::record::TraceFilter;

/// Totals of the kernel's per-CPU counters, over all sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub written: u64,
    pub dropped_inflight_full: u64,
    pub dropped_ring_full: u64,
    pub captures_lost: u64,
}

/// What the kernel counted for one session slot, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    pub matched: u64,
    pub dropped: u64,
}

/// The programs' attachments; dropping them detaches the programs, in field order: the
/// entry program first, so every syscall it saw still meets the exit program.
struct Attached {
    _enter: RawTracePointLink,
    _exit: RawTracePointLink,
    _rmdir: Option<TracePointLink>,
}

/// Loaded programs (attached while a slot is programmed) plus the maps userspace drives.
///
/// The backend keeps a userspace mirror of every filter map, so programming a slot is a
/// read-modify-write of local state followed by map writes, never a read of kernel maps.
pub struct EbpfBackend {
    /// `Some` while any slot is programmed.
    attached: Option<Attached>,
    /// Whether the rmdir program can run here (its event's layout is the one it reads).
    rmdir_usable: bool,
    ebpf: Ebpf,
    traced_cgroups: HashMap<MapData, u64, SessionMask>,
    cgroup_sessions: HashMap<MapData, u64, CgroupSessions>,
    cgroup_config: Array<MapData, u64>,
    /// The targets' generation last written to `CGROUP_CONFIG`.
    generation: u64,
    /// The slots programmed now.
    programmed: SessionMask,
    syscall_sessions: Array<MapData, SessionMask>,
    masks: Array<MapData, SessionMask>,
    tgid_sessions: HashMap<MapData, u32, SessionMask>,
    slots: PerCpuArray<MapData, SlotState>,
    counters: PerCpuArray<MapData, u64>,
    capture: CaptureMaps,
    /// The record rings and their size in bytes, until the drains take them.
    rings: Vec<(MapData, u32)>,
    cpu_count: usize,
    mirror: FilterMirror,
}

/// Userspace copy of the filter maps' contents.
#[derive(Default)]
struct FilterMirror {
    cgroups: StdHashMap<u64, SessionMask>,
    syscalls: Vec<SessionMask>,
    masks: [SessionMask; mask::COUNT as usize],
    tgids: StdHashMap<u32, SessionMask>,
}

impl EbpfBackend {
    /// Loads the programs (attached later, while sessions run) and configures their maps.
    pub fn load(options: &EbpfOptions) -> Result<Self, LoadError> {
        check_kernel_release()?;
        let cpu_count = aya::util::nr_cpus()
            .map_err(|(what, err)| LoadError::Cpus(format!("{what}: {err}")))?;
        let shared_ring_bytes = if options.per_cpu_rings {
            // The shared ring is unused then; keep it at one page.
            page_size()
        } else {
            options.ring_bytes
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("RECORDS", shared_ring_bytes)
            // INFLIGHT and INFLIGHT_PATHS are task storage, which aya 0.14 creates but has no
            // userspace type for; only the kernel programs use them.
            .allow_unsupported_maps()
            .load(TRACER_OBJECT)
            .map_err(|err| classify(&err).unwrap_or(LoadError::Object(err)))?;

        // Load while the object still owns every map: the programs refer to them by file
        // descriptor.
        load_programs(&mut ebpf)?;
        let rmdir_usable = match rmdir_layout_matches() {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    "removed cgroups are not forgotten at once by the kernel cache ({why}); \
                     they age out of it instead"
                );
                false
            }
        };
        let signatures =
            crate::record::signatures::load_once(|| crate::backend::ftrace::tracefs_root().ok());
        let capture = CaptureMaps::load(&mut ebpf, signatures)?;
        if let Some(path) = &options.pin_counters {
            pinned::pin_slots(&ebpf, path);
        }
        let rings = if options.per_cpu_rings {
            per_cpu_rings(&mut ebpf, cpu_count, options.ring_bytes)?
                .into_iter()
                .map(|ring| (ring, options.ring_bytes))
                .collect()
        } else {
            vec![(take_ring(&mut ebpf, "RECORDS")?, shared_ring_bytes)]
        };

        // The output is switched only once the rings it selects exist.
        configure_rings(&mut ebpf, options)?;

        let mut cgroup_config: Array<MapData, u64> = take_map(&mut ebpf, "CGROUP_CONFIG")?;
        cgroup_config
            .set(cgroup_config::NO_CACHE, u64::from(!options.cgroup_cache), 0)
            .map_err(|source| LoadError::Map {
                map: "CGROUP_CONFIG",
                source,
            })?;

        Ok(Self {
            attached: None,
            rmdir_usable,
            traced_cgroups: take_map(&mut ebpf, "TRACED_CGROUPS")?,
            cgroup_sessions: take_map(&mut ebpf, "CGROUP_SESSIONS")?,
            cgroup_config,
            generation: 0,
            programmed: 0,
            syscall_sessions: take_map(&mut ebpf, "SYSCALL_SESSIONS")?,
            masks: take_map(&mut ebpf, "MASKS")?,
            tgid_sessions: take_map(&mut ebpf, "TGID_SESSIONS")?,
            slots: take_map(&mut ebpf, "SLOTS")?,
            counters: take_map(&mut ebpf, "COUNTERS")?,
            capture,
            ebpf,
            rings,
            cpu_count,
            mirror: FilterMirror {
                syscalls: vec![0; MAX_SYSCALLS as usize],
                ..FilterMirror::default()
            },
        })
    }

    /// Gives `slot` to a new session: resets its counters, sets its start time to `start_ns`
    /// (CLOCK_MONOTONIC), and installs its filter. The slot must be clear.
    pub fn program_slot(
        &mut self,
        slot: u32,
        start_ns: u64,
        filter: &TraceFilter,
    ) -> Result<(), MapUpdateError> {
        assert!(slot < MAX_SESSIONS, "slot {slot} out of range");
        let bit: SessionMask = 1 << slot;
        let state = SlotState {
            start_ns,
            matched: 0,
            dropped: 0,
        };
        // One value per possible CPU, which is what `cpu_count` counts: cannot fail.
        let values = PerCpuValues::try_from(vec![state; self.cpu_count])
            .expect("one SlotState per possible CPU");
        self.slots
            .set(slot, values, 0)
            .map_err(|source| MapUpdateError::Map {
                map: "SLOTS",
                source,
            })?;

        // Conditions first, the cgroups last: the slot starts matching only once complete.
        if filter.failed_only {
            self.set_mask(
                mask::FAILED_ONLY,
                self.mirror.masks[mask::FAILED_ONLY as usize] | bit,
            )?;
        }
        if let Some(tgids) = &filter.tgids {
            for &tgid in tgids {
                let sessions = self.mirror.tgids.get(&tgid).copied().unwrap_or(0) | bit;
                set_sessions(
                    &mut self.tgid_sessions,
                    &mut self.mirror.tgids,
                    tgid,
                    sessions,
                    "TGID_SESSIONS",
                )?;
            }
            self.set_mask(
                mask::TGID_FILTERED,
                self.mirror.masks[mask::TGID_FILTERED as usize] | bit,
            )?;
        }
        if self.capture.program(bit, &filter.capture)? {
            self.set_mask(
                mask::CAPTURE,
                self.mirror.masks[mask::CAPTURE as usize] | bit,
            )?;
        }
        match &filter.syscalls {
            None => {
                self.set_mask(
                    mask::ALL_SYSCALLS,
                    self.mirror.masks[mask::ALL_SYSCALLS as usize] | bit,
                )?;
            }
            Some(numbers) => {
                for &nr in numbers.iter().filter(|&&nr| nr < MAX_SYSCALLS) {
                    self.set_syscall(nr, self.mirror.syscalls[nr as usize] | bit)?;
                }
            }
        }
        for &cgroup_id in &filter.cgroups {
            self.set_traced(cgroup_id, self.traced(cgroup_id) | bit)?;
        }
        self.next_generation()?;
        self.programmed |= bit;
        self.attach()
    }

    /// Whether the programs are attached (while any slot is programmed).
    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// Attaches the programs if they are not: the exit program first, so no syscall is seen
    /// entering without its exit being seen too.
    fn attach(&mut self) -> Result<(), MapUpdateError> {
        if self.attached.is_some() {
            return Ok(());
        }
        let rmdir = if self.rmdir_usable {
            let (category, name) = RMDIR.1.split_once('/').unwrap_or(("cgroup", RMDIR.1));
            let program: &mut TracePoint =
                program_mut(&mut self.ebpf, RMDIR.0).map_err(MapUpdateError::attach)?;
            let link = program
                .attach(category, name)
                .and_then(|id| program.take_link(id))
                .map_err(|source| {
                    MapUpdateError::attach(LoadError::Attach {
                        program: RMDIR.0,
                        tracepoint: RMDIR.1,
                        source,
                    })
                })?;
            Some(link)
        } else {
            None
        };
        let mut attach = |(program, tracepoint)| {
            let raw: &mut RawTracePoint = program_mut(&mut self.ebpf, program)?;
            attach_raw(raw, program, tracepoint)
        };
        let exit = attach(EXIT).map_err(MapUpdateError::attach)?;
        let enter = attach(ENTER).map_err(MapUpdateError::attach)?;
        self.attached = Some(Attached {
            _enter: enter,
            _exit: exit,
            _rmdir: rmdir,
        });
        tracing::debug!("programs attached");
        Ok(())
    }

    /// Detaches the programs once no slot is programmed, and empties the cgroup cache
    /// (nothing forgets removed cgroups while the programs are detached).
    fn detach_if_idle(&mut self) -> Result<(), MapUpdateError> {
        if self.programmed != 0 || self.attached.is_none() {
            return Ok(());
        }
        self.attached = None;
        tracing::debug!("programs detached: no session runs");
        let cached: Vec<u64> = self.cgroup_sessions.keys().filter_map(Result::ok).collect();
        for cgroup_id in cached {
            match self.cgroup_sessions.remove(&cgroup_id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(MapUpdateError::Map {
                        map: "CGROUP_SESSIONS",
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// The cgroups the kernel's cache holds now (a `bpf()` call per entry).
    pub fn cached_cgroups(&self) -> Vec<u64> {
        self.cgroup_sessions.keys().filter_map(Result::ok).collect()
    }

    fn traced(&self, cgroup_id: u64) -> SessionMask {
        self.mirror.cgroups.get(&cgroup_id).copied().unwrap_or(0)
    }

    fn set_traced(&mut self, cgroup_id: u64, sessions: SessionMask) -> Result<(), MapUpdateError> {
        set_sessions(
            &mut self.traced_cgroups,
            &mut self.mirror.cgroups,
            cgroup_id,
            sessions,
            "TRACED_CGROUPS",
        )
    }

    /// Makes every cached cgroup answer stale: called after each change of the targets.
    fn next_generation(&mut self) -> Result<(), MapUpdateError> {
        let generation = self.generation + 1;
        self.cgroup_config
            .set(cgroup_config::GENERATION, generation, 0)
            .map_err(|source| MapUpdateError::Map {
                map: "CGROUP_CONFIG",
                source,
            })?;
        self.generation = generation;
        Ok(())
    }

    /// Adds a cgroup (and its subtree) to a running slot (a container that appeared).
    pub fn add_cgroup(
        &mut self,
        cgroup_id: u64,
        slot_bit: SessionMask,
    ) -> Result<(), MapUpdateError> {
        self.set_traced(cgroup_id, self.traced(cgroup_id) | slot_bit)?;
        self.next_generation()
    }

    /// Removes a cgroup from a running slot (a container that exited).
    pub fn remove_cgroup(
        &mut self,
        cgroup_id: u64,
        slot_bit: SessionMask,
    ) -> Result<(), MapUpdateError> {
        self.set_traced(cgroup_id, self.traced(cgroup_id) & !slot_bit)?;
        self.next_generation()
    }

    /// Removes every trace of `slot` from the filter maps: after this, no new syscall matches
    /// it. (Syscalls that entered before are excluded from the slot's next user by its start
    /// time.) The last slot cleared detaches the programs.
    pub fn clear_slot(&mut self, slot: u32) -> Result<(), MapUpdateError> {
        let bit: SessionMask = 1 << slot;
        // The cgroups first, so the slot stops matching before its conditions go.
        clear_bit(
            &mut self.traced_cgroups,
            &mut self.mirror.cgroups,
            bit,
            "TRACED_CGROUPS",
        )?;
        self.next_generation()?;
        for nr in 0..MAX_SYSCALLS {
            let sessions = self.mirror.syscalls[nr as usize];
            if sessions & bit != 0 {
                self.set_syscall(nr, sessions & !bit)?;
            }
        }
        for index in 0..mask::COUNT {
            let sessions = self.mirror.masks[index as usize];
            if sessions & bit != 0 {
                self.set_mask(index, sessions & !bit)?;
            }
        }
        clear_bit(
            &mut self.tgid_sessions,
            &mut self.mirror.tgids,
            bit,
            "TGID_SESSIONS",
        )?;
        self.capture.clear(bit)?;
        self.programmed &= !bit;
        self.detach_if_idle()
    }

    fn set_syscall(&mut self, nr: u32, sessions: SessionMask) -> Result<(), MapUpdateError> {
        set_entry(
            &mut self.syscall_sessions,
            &mut self.mirror.syscalls[nr as usize],
            nr,
            sessions,
            "SYSCALL_SESSIONS",
        )
    }

    fn set_mask(&mut self, index: u32, sessions: SessionMask) -> Result<(), MapUpdateError> {
        set_entry(
            &mut self.masks,
            &mut self.mirror.masks[index as usize],
            index,
            sessions,
            "MASKS",
        )
    }

    /// What the kernel counted for `slot`, summed over CPUs.
    pub fn slot_counters(&self, slot: u32) -> Result<SlotCounters, aya::maps::MapError> {
        let values = self.slots.get(&slot, 0)?;
        Ok(values
            .iter()
            .fold(SlotCounters::default(), |total, state| SlotCounters {
                matched: total.matched + state.matched,
                dropped: total.dropped + state.dropped,
            }))
    }

    /// The kernel's totals, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, aya::maps::MapError> {
        let sum = |index: u32| -> Result<u64, aya::maps::MapError> {
            Ok(self.counters.get(&index, 0)?.iter().sum())
        };
        Ok(KernelCounters {
            written: sum(counter::WRITTEN)?,
            dropped_inflight_full: sum(counter::DROPPED_INFLIGHT_FULL)?,
            dropped_ring_full: sum(counter::DROPPED_RING_FULL)?,
            captures_lost: sum(counter::CAPTURES_LOST)?,
        })
    }

    /// The record ring buffers (one, or one per CPU), readable once. Must be called inside a
    /// tokio runtime.
    pub fn take_rings(&mut self) -> io::Result<Vec<RecordRing>> {
        std::mem::take(&mut self.rings)
            .into_iter()
            .map(|(ring, bytes)| RecordRing::new(ring, bytes, page_size() as usize))
            .collect()
    }

    /// Kernel ids of the loaded programs (as `bpftool prog show` lists them).
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok().map(|info| info.id()))
            .collect()
    }
}

/// Sets entry `index` of a kernel array map and its mirror.
fn set_entry(
    map: &mut Array<MapData, SessionMask>,
    mirror: &mut SessionMask,
    index: u32,
    sessions: SessionMask,
    name: &'static str,
) -> Result<(), MapUpdateError> {
    map.set(index, sessions, 0)
        .map_err(|source| MapUpdateError::Map { map: name, source })?;
    *mirror = sessions;
    Ok(())
}

/// Sets `key`'s sessions in a kernel hash map and its mirror; no sessions removes the key.
fn set_sessions<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut HashMap<MapData, K, SessionMask>,
    mirror: &mut StdHashMap<K, SessionMask>,
    key: K,
    sessions: SessionMask,
    name: &'static str,
) -> Result<(), MapUpdateError> {
    if sessions == 0 {
        match map.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(MapUpdateError::Map { map: name, source }),
        }
        mirror.remove(&key);
    } else {
        map.insert(key, sessions, 0)
            .map_err(|source| MapUpdateError::Map { map: name, source })?;
        mirror.insert(key, sessions);
    }
    Ok(())
}

/// Removes one session bit from every key of a kernel hash map and its mirror.
fn clear_bit<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut HashMap<MapData, K, SessionMask>,
    mirror: &mut StdHashMap<K, SessionMask>,
    bit: SessionMask,
    name: &'static str,
) -> Result<(), MapUpdateError> {
    let holders: Vec<(K, SessionMask)> = mirror
        .iter()
        .filter(|(_, &sessions)| sessions & bit != 0)
        .map(|(&key, &sessions)| (key, sessions & !bit))
        .collect();
    for (key, sessions) in holders {
        set_sessions(map, mirror, key, sessions, name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_syscalls_resolve_on_this_architecture() {
        let paths = crate::record::syscalls::path_syscalls();
        let openat = syscalls::Sysno::openat.id() as u32;
        let execve = syscalls::Sysno::execve.id() as u32;
        assert!(paths.contains(&openat) && paths.contains(&execve));
        assert!(!paths.contains(&(syscalls::Sysno::getppid.id() as u32)));
        assert_eq!(crate::record::syscalls::path_index(openat), Some(1));
    }
}
