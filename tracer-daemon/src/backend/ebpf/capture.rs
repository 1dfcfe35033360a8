//! The capture maps: each syscall's plan (written once at load, from the kernel's
//! signatures), and per running session what it captures — the `CAPTURE` mask, the
//! syscalls whose buffers it wants (`DATA_SESSIONS`), and the sizes (`CAPTURE_CONFIG`, the
//! largest any running session asked for; each session's sink trims to its own).
use std::collections::HashMap as StdHashMap;

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use tracer_common::{capture_config, CapturePlan, SessionMask, MAX_SYSCALLS};

use super::{load::take_map, load_error::LoadError, map_error::MapUpdateError};
use crate::record::{decode::Limits, signatures::Signatures, CaptureSettings};

pub struct CaptureMaps {
    data_sessions: Array<MapData, SessionMask>,
    config: Array<MapData, u64>,
    /// Syscalls with a data buffer in their plan.
    data_syscalls: Vec<u32>,
    /// The running sessions' settings, by slot bit.
    running: StdHashMap<SessionMask, CaptureSettings>,
    /// Mirror of `DATA_SESSIONS`.
    data_mirror: Vec<SessionMask>,
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> MapUpdateError {
    move |source| MapUpdateError::Map { map, source }
}

impl CaptureMaps {
    /// Writes every syscall's plan and takes the maps sessions program.
    pub fn load(ebpf: &mut Ebpf, signatures: &Signatures) -> Result<Self, LoadError> {
        let mut plans: Array<MapData, CapturePlan> = take_map(ebpf, "CAPTURE_PLANS")?;
        let mut data_syscalls = Vec::new();
        for (nr, plan) in signatures.capture_plans() {
            plans.set(nr, plan, 0).map_err(|source| LoadError::Map {
                map: "CAPTURE_PLANS",
                source,
            })?;
            let has_data = plan.ops.iter().any(|op| {
                matches!(
                    op.kind,
                    tracer_common::capture_kind::DATA_IN | tracer_common::capture_kind::DATA_OUT
                )
            });
            if has_data {
                data_syscalls.push(nr);
            }
        }
        Ok(Self {
            data_sessions: take_map(ebpf, "DATA_SESSIONS")?,
            config: take_map(ebpf, "CAPTURE_CONFIG")?,
            data_syscalls,
            running: StdHashMap::new(),
            data_mirror: vec![0; MAX_SYSCALLS as usize],
        })
    }

    /// Starts capturing for the session in slot `bit` (if its settings capture at all).
    /// Returns whether it does, for the caller's `CAPTURE` mask.
    pub fn program(
        &mut self,
        bit: SessionMask,
        settings: &CaptureSettings,
    ) -> Result<bool, MapUpdateError> {
        if !settings.enabled {
            return Ok(false);
        }
        self.running.insert(bit, settings.clone());
        // Sizes first: the session's data must fit before it is matched.
        self.write_config()?;
        for index in 0..self.data_syscalls.len() {
            let nr = self.data_syscalls[index];
            if settings.captures_data_of(nr) {
                self.set_data_sessions(nr, self.data_mirror[nr as usize] | bit)?;
            }
        }
        Ok(true)
    }

    /// Stops capturing for slot `bit`.
    pub fn clear(&mut self, bit: SessionMask) -> Result<(), MapUpdateError> {
        if self.running.remove(&bit).is_none() {
            return Ok(());
        }
        for index in 0..self.data_syscalls.len() {
            let nr = self.data_syscalls[index];
            let sessions = self.data_mirror[nr as usize];
            if sessions & bit != 0 {
                self.set_data_sessions(nr, sessions & !bit)?;
            }
        }
        self.write_config()
    }

    fn set_data_sessions(&mut self, nr: u32, sessions: SessionMask) -> Result<(), MapUpdateError> {
        self.data_sessions
            .set(nr, sessions, 0)
            .map_err(map_error("DATA_SESSIONS"))?;
        self.data_mirror[nr as usize] = sessions;
        Ok(())
    }

    /// Writes the largest sizes any running session asked for (strings are always read
    /// whole, up to what the kernel keeps).
    fn write_config(&mut self) -> Result<(), MapUpdateError> {
        let largest = |limit: fn(&Limits) -> usize| {
            self.running
                .values()
                .map(|settings| limit(&settings.limits))
                .max()
                .unwrap_or(0)
        };
        let (data_bytes, argv) = (largest(|l| l.data_bytes), largest(|l| l.argv));
        for (index, value) in [
            (capture_config::DATA_BYTES, data_bytes),
            (capture_config::ARGV, argv),
        ] {
            self.config
                .set(index, value as u64, 0)
                .map_err(map_error("CAPTURE_CONFIG"))?;
        }
        Ok(())
    }
}
