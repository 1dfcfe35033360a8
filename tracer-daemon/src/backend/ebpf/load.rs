//! Loading the kernel object: its programs (verified at start-up, attached later), the
//! options that shape its maps, and the helpers that take maps and programs out of it.
use aya::{
    maps::{Array, ArrayOfMaps, Map, MapData},
    programs::{raw_trace_point::RawTracePointLink, RawTracePoint, TracePoint},
    Ebpf,
};
use tracer_common::ring_config;

use super::load_error::{classify, LoadError};

/// The kernel programs, built by build.rs from `tracer-ebpf`.
pub(super) static TRACER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// The programs on the syscall tracepoints (name in the object, raw tracepoint).
pub(super) const ENTER: (&str, &str) = ("tracerd_enter", "sys_enter");
pub(super) const EXIT: (&str, &str) = ("tracerd_exit", "sys_exit");
/// The program that forgets removed cgroups (name in the object, tracepoint event).
pub(super) const RMDIR: (&str, &str) = ("tracerd_rmdir", "cgroup/cgroup_rmdir");
/// The programs' names, as the kernel lists them (`bpftool prog show`).
pub const PROGRAM_NAMES: [&str; 3] = [ENTER.0, EXIT.0, RMDIR.0];

/// Options for loading the backend.
#[derive(Clone, Debug)]
pub struct EbpfOptions {
    /// Size of each record ring buffer in bytes: a power of two, a multiple of the page size.
    pub ring_bytes: u32,
    /// Records a CPU writes between forced wake-ups of the reader; `Some(0)` leaves it to the
    /// kernel (a wake-up whenever the reader had caught up: up to one per record), `None`
    /// picks [`auto_wakeup_every`]. The reader's periodic flush bounds the latency of the
    /// records in between.
    pub wakeup_every: Option<u64>,
    /// One ring per CPU (the default), or one ring shared by all CPUs.
    pub per_cpu_rings: bool,
    /// Cache each cgroup's sessions in the kernel (the default), or walk its ancestors on
    /// every syscall: the alternative is kept for the benchmark that compares the two.
    pub cgroup_cache: bool,
    /// Pin the per-session counter map here (a path on bpffs), so a daemon that starts after
    /// this one died reads the kernel's final counts (see [`super::pinned`]). Only maps are
    /// pinned: programs still detach when this process ends.
    pub pin_counters: Option<std::path::PathBuf>,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        Self {
            ring_bytes: auto_ring_bytes(),
            wakeup_every: None,
            per_cpu_rings: true,
            cgroup_cache: true,
            pin_counters: None,
        }
    }
}

/// The default size of each CPU's ring: 64 MiB of kernel memory shared out among the rings,
/// from 8 to 32 MiB each (a power of two). A ring is what absorbs a drain that falls behind
/// for a moment: 8 MiB (about 65,000 records) is 20 ms of the fastest syscall loop, and on a
/// 2-core machine, where the drain shares a core with the writer, 3 of 7 runs of
/// `tests/tests/pipeline.rs` lost 3,664 to 44,534 records in the rings; larger machines have
/// more cores to drain with.
pub fn auto_ring_bytes() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |cpus| cpus.max(1));
    let share = ((64usize << 20) / cpus).max(1);
    // The largest power of two not above the share.
    let power = 1usize << (usize::BITS - 1 - share.leading_zeros());
    power.clamp(8 << 20, 32 << 20) as u32
}

/// The default wake-up batch for a ring of `ring_bytes`: an eighth of the ring's worth of the
/// largest common records (one with a path and its 8-byte ring header).
///
/// Why so rare: waking the reader raises an irq_work, an interrupt the producing CPU sends
/// itself; in a VM that is an APIC write trapping to the hypervisor, measured at ~8 µs, and
/// a wake-up every 64 records took 12% of a traced loop's time. Between wake-ups the reader's
/// 10 ms flush collects the records, so latency stays bounded at any rate.
pub fn auto_wakeup_every(ring_bytes: u32) -> u64 {
    let largest = (tracer_common::SyscallRecord::SIZE + tracer_common::PATH_MAX_LEN + 8) as u64;
    (u64::from(ring_bytes) / largest / 8).max(1)
}

/// Loads (verifies) every program; they are attached while sessions run. The syscall
/// programs are attached once here and detached at once, so a host that refuses attaching
/// them is found at start-up, not at the first session.
pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for (program, tracepoint) in [EXIT, ENTER] {
        let raw: &mut RawTracePoint = program_mut(ebpf, program)?;
        raw.load().map_err(|source| {
            classify(&source).unwrap_or(LoadError::Program { program, source })
        })?;
        let link = attach_raw(raw, program, tracepoint)?;
        drop(link);
    }
    let rmdir: &mut TracePoint = program_mut(ebpf, RMDIR.0)?;
    rmdir.load().map_err(|source| {
        classify(&source).unwrap_or(LoadError::Program {
            program: RMDIR.0,
            source,
        })
    })
}

/// Attaches a loaded raw tracepoint program; dropping the link detaches it.
pub(super) fn attach_raw(
    raw: &mut RawTracePoint,
    program: &'static str,
    tracepoint: &'static str,
) -> Result<RawTracePointLink, LoadError> {
    raw.attach(tracepoint)
        .and_then(|id| raw.take_link(id))
        .map_err(|source| {
            classify(&source).unwrap_or(LoadError::Attach {
                program,
                tracepoint,
                source,
            })
        })
}

/// A program of the object, as its type.
pub(super) fn program_mut<'a, P>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or(LoadError::Missing(program))?
        .try_into()
        .map_err(|source| LoadError::Program { program, source })
}

/// Whether this kernel's `cgroup_rmdir` event has the layout `tracerd_rmdir` reads
/// (`int root` at offset 8, `u64 id` at 16), from its `format` file in tracefs.
pub(super) fn rmdir_layout_matches() -> Result<(), String> {
    let root = crate::backend::ftrace::tracefs_root().map_err(|err| err.to_string())?;
    let path = root.join("events").join(RMDIR.1).join("format");
    let text = tracefs_parse::read_description(&path)
        .map_err(|err| format!("reading {}: {err}", path.display()))?;
    let format = tracefs_parse::EventFormat::parse(&text)
        .map_err(|err| format!("parsing {}: {err}", path.display()))?;
    for (name, offset, size) in [("root", 8, 4), ("id", 16, 8)] {
        let field = format
            .field(name)
            .map_err(|err| format!("{}: {err}", path.display()))?;
        if (field.offset, field.size) != (offset, size) {
            return Err(format!(
                "{}: field {name} is at offset {} size {}, the program reads offset {offset} size {size}",
                path.display(),
                field.offset,
                field.size
            ));
        }
    }
    Ok(())
}

/// Sets the wake-up policy and selects the rings records go to.
pub(super) fn configure_rings(ebpf: &mut Ebpf, options: &EbpfOptions) -> Result<(), LoadError> {
    let mut ring_config: Array<MapData, u64> = take_map(ebpf, "RING_CONFIG")?;
    let config_error = |source| LoadError::Map {
        map: "RING_CONFIG",
        source,
    };
    ring_config
        .set(
            ring_config::WAKEUP_EVERY,
            options
                .wakeup_every
                .unwrap_or_else(|| auto_wakeup_every(options.ring_bytes)),
            0,
        )
        .map_err(config_error)?;
    ring_config
        .set(ring_config::PER_CPU, u64::from(options.per_cpu_rings), 0)
        .map_err(config_error)
}

/// Creates one ring per possible CPU and installs them in `RECORDS_BY_CPU`.
pub(super) fn per_cpu_rings(
    ebpf: &mut Ebpf,
    cpu_count: usize,
    ring_bytes: u32,
) -> Result<Vec<MapData>, LoadError> {
    let mut outer: ArrayOfMaps<MapData> = take_map(ebpf, "RECORDS_BY_CPU")?;
    (0..cpu_count as u32)
        .map(|cpu| {
            let map_error = |source| LoadError::Map {
                map: "RECORDS_BY_CPU",
                source,
            };
            let definition = aya_obj::Map::new_from_params(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                0,
                0,
                ring_bytes,
                0,
            );
            let ring = MapData::create(definition, "tracerd_cpu_ring", None).map_err(map_error)?;
            outer.set(cpu, &ring, 0).map_err(map_error)?;
            Ok(ring)
        })
        .collect()
}

pub(super) fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as u32
}

/// The ring buffer map `name` (read by [`super::ring::RecordRing`], not aya's `RingBuf`).
pub(super) fn take_ring(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, LoadError> {
    match ebpf.take_map(name) {
        Some(Map::RingBuf(ring)) => Ok(ring),
        Some(_) => Err(LoadError::Map {
            map: name,
            source: aya::maps::MapError::InvalidMapType { map_type: 0 },
        }),
        None => Err(LoadError::Missing(name)),
    }
}

pub(super) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { map: name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_wakeups_leave_most_of_the_ring_free() {
        // 8 MiB of 384-byte slots (a path record and its header) is 21,845; an eighth of it.
        assert_eq!(auto_wakeup_every(8 << 20), 2730);
        // A one-page ring still wakes the reader, on every record.
        assert_eq!(auto_wakeup_every(4096), 1);
    }
}
