//! The eBPF backend: loads and attaches the `raw_tracepoint` programs from `tracer-ebpf`,
//! owns the cgroup filter map, and hands out the record ring buffer.
//!
//! Every kernel object here is owned by this process's file descriptors and nothing is
//! pinned, so dropping the backend (stop, shutdown) or the process dying (crash, `kill -9`)
//! detaches the programs and frees the maps: nothing can linger in the kernel.
use std::io;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint},
    Ebpf, EbpfLoader,
};
use tokio::io::{unix::AsyncFd, Interest};
use tracer_common::{counter, SessionMask, SyscallRecord};

/// The kernel programs, built by build.rs from `tracer-ebpf`.
static TRACER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Program name in the object → the raw tracepoint it attaches to.
pub const PROGRAMS: [(&str, &str); 2] =
    [("tracerd_enter", "sys_enter"), ("tracerd_exit", "sys_exit")];

/// The oldest kernel with everything the programs use: BPF ring buffers arrived in 5.8
/// (raw tracepoints in 4.17, `bpf_get_current_cgroup_id` in 4.18).
const MIN_KERNEL: (u32, u32) = (5, 8);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "the kernel refused to load eBPF programs (permission denied){hint}: run tracerd as root, \
         or with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE"
    )]
    NotPermitted { hint: String },
    #[error("this kernel has no bpf() syscall (it was built without CONFIG_BPF_SYSCALL)")]
    BpfUnavailable,
    #[error(
        "kernel {release} is too old: the eBPF backend needs Linux {}.{} or newer",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    KernelTooOld { release: String },
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel rejected program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} to raw tracepoint {tracepoint} failed: {source}")]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the eBPF object has no {0}: tracer-ebpf and tracer-daemon are out of step")]
    Missing(&'static str),
    #[error("opening map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("updating the cgroup filter map: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// Options for loading the backend.
#[derive(Clone, Debug)]
pub struct EbpfOptions {
    /// Size of the record ring buffer in bytes: a power of two, a multiple of the page size.
    pub ring_bytes: u32,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        Self {
            ring_bytes: tracer_common::DEFAULT_RING_BYTES,
        }
    }
}

/// Totals of the kernel's per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub matched: u64,
    pub dropped_inflight_full: u64,
    pub dropped_ring_full: u64,
}

/// Loaded and attached programs plus the maps userspace drives.
pub struct EbpfBackend {
    // Dropping `ebpf` detaches both programs; keep it alive as long as tracing should run.
    ebpf: Ebpf,
    traced_cgroups: HashMap<MapData, u64, SessionMask>,
    counters: PerCpuArray<MapData, u64>,
    records: Option<RingBuf<MapData>>,
}

impl EbpfBackend {
    /// Loads the programs, attaches them to `sys_enter` and `sys_exit`, and opens the maps.
    pub fn load(options: &EbpfOptions) -> Result<Self, LoadError> {
        check_kernel_release()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("RECORDS", options.ring_bytes)
            .load(TRACER_OBJECT)
            .map_err(|err| classify(&err).unwrap_or(LoadError::Object(err)))?;
        for (program, tracepoint) in PROGRAMS {
            let raw_tracepoint: &mut RawTracePoint = ebpf
                .program_mut(program)
                .ok_or(LoadError::Missing(program))?
                .try_into()
                .map_err(|source| LoadError::Program { program, source })?;
            raw_tracepoint.load().map_err(|source| {
                classify(&source).unwrap_or(LoadError::Program { program, source })
            })?;
            raw_tracepoint.attach(tracepoint).map_err(|source| {
                classify(&source).unwrap_or(LoadError::Attach {
                    program,
                    tracepoint,
                    source,
                })
            })?;
        }
        let traced_cgroups = take_map(&mut ebpf, "TRACED_CGROUPS")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let records = take_map(&mut ebpf, "RECORDS")?;
        Ok(Self {
            ebpf,
            traced_cgroups,
            counters,
            records: Some(records),
        })
    }

    /// Starts (or changes) tracing of a cgroup for the sessions in `sessions`.
    pub fn trace_cgroup(
        &mut self,
        cgroup_id: u64,
        sessions: SessionMask,
    ) -> Result<(), FilterError> {
        self.traced_cgroups.insert(cgroup_id, sessions, 0)?;
        Ok(())
    }

    /// Stops tracing a cgroup. Untracing a cgroup that is not traced is not an error.
    pub fn untrace_cgroup(&mut self, cgroup_id: u64) -> Result<(), FilterError> {
        match self.traced_cgroups.remove(&cgroup_id) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// The record ring buffer, readable once. Must be called inside a tokio runtime.
    pub fn take_records(&mut self) -> io::Result<RecordRing> {
        let ring = self
            .records
            .take()
            .ok_or_else(|| io::Error::other("the record ring buffer was already taken"))?;
        // SAFETY: the RingBuf owns its map's file descriptor, which stays open and the same
        // for as long as the RingBuf lives, and the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
        Ok(RecordRing {
            ring: ring.map_err(io::Error::from)?,
        })
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, aya::maps::MapError> {
        let sum = |index: u32| -> Result<u64, aya::maps::MapError> {
            Ok(self.counters.get(&index, 0)?.iter().sum())
        };
        Ok(KernelCounters {
            matched: sum(counter::MATCHED)?,
            dropped_inflight_full: sum(counter::DROPPED_INFLIGHT_FULL)?,
            dropped_ring_full: sum(counter::DROPPED_RING_FULL)?,
        })
    }

    /// Kernel ids of the loaded programs (as `bpftool prog show` lists them).
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok().map(|info| info.id()))
            .collect()
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { map: name, source })
}

/// The record ring buffer, readable from tokio.
pub struct RecordRing {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl RecordRing {
    /// Waits until records are available, then hands every available record to `handle`.
    /// Returns how many were handled.
    pub async fn drain(&mut self, mut handle: impl FnMut(&SyscallRecord)) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut handled = 0;
        while let Some(item) = ring.next() {
            match SyscallRecord::decode(&item) {
                Some(record) => {
                    handle(&record);
                    handled += 1;
                }
                None => tracing::warn!(
                    len = item.len(),
                    "ignoring a ring buffer item of the wrong size"
                ),
            }
        }
        // tokio clears readiness only if no new edge arrived since it was observed, so a
        // record committed after the last `next()` still wakes the next `drain`.
        guard.clear_ready();
        Ok(handled)
    }
}

/// Fails early, with a message an operator can act on, on kernels older than `MIN_KERNEL`.
fn check_kernel_release() -> Result<(), LoadError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    match parse_release(&release) {
        Some(version) if version < MIN_KERNEL => Err(LoadError::KernelTooOld { release }),
        // An unparseable release is left to the loader to judge.
        _ => Ok(()),
    }
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Turns the errno at the bottom of an aya error into the operator-facing cause, when it is
/// one of the well-known ones.
fn classify(err: &(dyn std::error::Error + 'static)) -> Option<LoadError> {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(io_error) = err.downcast_ref::<io::Error>() {
            return match io_error.raw_os_error()? {
                libc::EPERM | libc::EACCES => Some(LoadError::NotPermitted {
                    hint: lockdown_hint(),
                }),
                libc::ENOSYS => Some(LoadError::BpfUnavailable),
                _ => None,
            };
        }
        source = err.source();
    }
    None
}

/// Kernel lockdown refuses some BPF helpers even to root; say so when it is on.
fn lockdown_hint() -> String {
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    match lockdown
        .split_whitespace()
        .find(|mode| mode.starts_with('['))
    {
        Some(mode) if mode != "[none]" => format!(" (kernel lockdown is {mode})"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        assert!(parse_release("5.4.0").unwrap() < MIN_KERNEL);
        assert!(parse_release("5.8.0").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn classifies_permission_and_missing_syscall_errors() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert!(matches!(
            classify(&eperm),
            Some(LoadError::NotPermitted { .. })
        ));
        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(matches!(classify(&enosys), Some(LoadError::BpfUnavailable)));
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(classify(&einval).is_none());
    }
}
