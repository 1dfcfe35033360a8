//! The per-session counter map, pinned on bpffs so it outlives a daemon that dies: the next
//! daemon reads the kernel's final count of what each of its sessions matched and dropped
//! (the programs detach as the dead process's descriptors close, so the counts are final),
//! then removes the pin. Only this map is pinned; nothing keeps a program attached.
use std::path::Path;

use aya::{
    maps::{Map, MapData, PerCpuArray},
    Ebpf,
};
use tracer_common::SlotState;

use super::SlotCounters;

/// Pins the loaded `SLOTS` map at `path` (its directory made if missing). A failure is
/// logged, not fatal: only the accounting after a crash depends on it.
pub(super) fn pin_slots(ebpf: &Ebpf, path: &Path) {
    let pinned = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .map_err(|err| err.to_string())
        .and_then(|()| {
            let map = ebpf.map("SLOTS").ok_or("the object has no SLOTS map")?;
            map.pin(path).map_err(|err| err.to_string())
        });
    match pinned {
        Ok(()) => tracing::debug!(path = %path.display(), "session counters pinned"),
        Err(err) => tracing::warn!(path = %path.display(), %err,
            "the session counters cannot be pinned: after a crash, counts since the last save are estimated"),
    }
}

/// What a dead daemon's kernel counted for `slot`, from its pinned counter map at `path`.
pub fn read_slot(path: &Path, slot: u32) -> Result<SlotCounters, String> {
    let data = MapData::from_pin(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let map = Map::from_map_data(data).map_err(|err| err.to_string())?;
    let slots: PerCpuArray<MapData, SlotState> =
        PerCpuArray::try_from(map).map_err(|err| err.to_string())?;
    let values = slots.get(&slot, 0).map_err(|err| err.to_string())?;
    Ok(values
        .iter()
        .fold(SlotCounters::default(), |total, state| SlotCounters {
            matched: total.matched + state.matched,
            dropped: total.dropped + state.dropped,
        }))
}
