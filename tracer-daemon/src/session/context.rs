//! What every session's actor shares: the engine, the container runtime, the store, the
//! daemon's options, and the running sessions' duplicate keys.
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use uuid::Uuid;

use super::{
    access::owns,
    duplicates::RunningKeys,
    error::SessionError,
    model::{Counters, SessionRow},
    store::Store,
};
use crate::{
    backend::Tracer,
    containers::{Container, ContainerRuntime},
    record::clock::now_rfc3339,
    sink::export::{ExportOptions, ExportStatus, OtlpConfig},
    space::SpaceReserve,
    sync::lock,
};

#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// The container label that names a container's owning tenant.
    pub owner_label: String,
    /// Where sessions' event logs go (`<dir>/<id>/`).
    pub sessions_dir: PathBuf,
    /// Size cap of one session's event log, in compressed bytes.
    pub event_log_cap_bytes: u64,
    /// The collector sessions export to unless they name their own (or none).
    pub export_default: Option<OtlpConfig>,
    /// Batching and spooling of span export.
    pub export_options: ExportOptions,
    /// What every span's resource says (service, host).
    pub export_resource: opentelemetry_sdk::Resource,
    /// Why PIDs read in this process's `/proc` are not the host's, if they are not (see
    /// `host_view`): targets that need them are refused.
    pub foreign_pids: Option<String>,
    /// The data directory's space reserve: released, the disk is full and nothing new is
    /// started.
    pub reserve: Option<Arc<SpaceReserve>>,
    /// Where the engine pinned its per-session kernel counters (recorded with each run, for
    /// the daemon that starts after this one if it dies).
    pub pinned_counters: Option<String>,
}

/// A running session's live view.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Over all runs; `None` if the kernel's counters could not be read.
    pub counters: Option<Counters>,
    pub export_status: Option<ExportStatus>,
    pub traced: Option<super::model::TracedContainers>,
    pub not_recording: Option<super::model::NotRecording>,
    pub tenant: String,
    pub cgroups: Vec<u64>,
}

pub struct Context {
    pub tracer: Arc<dyn Tracer>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub store: Store,
    pub options: ManagerOptions,
    pub running: RunningKeys,
    /// Every running session's view, as its actor last published it (every
    /// [`super::actor::REPORT_INTERVAL`]): what the store saves, and what readers see while
    /// the actor is busy, without waiting for it.
    pub reported: std::sync::Mutex<HashMap<Uuid, Snapshot>>,
    /// Sessions that were running when the daemon last stopped and that `recover` has not
    /// resumed yet.
    pub resuming: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// Followers of the sessions' events (live streams).
    pub followers: Arc<crate::sink::follow::Followers>,
    /// Event budgets shared with other runs (a cluster session's parts), by session.
    pub budgets: std::sync::Mutex<HashMap<Uuid, Arc<dyn crate::sink::writer::EventBudget>>>,
}

impl Context {
    /// Where a session's event log and spool live.
    pub fn session_dir(&self, id: Uuid) -> PathBuf {
        self.options.sessions_dir.join(id.to_string())
    }

    /// Running containers a tenant may see: all of them for an unrestricted caller, else
    /// those whose owner label names the tenant.
    pub async fn visible_containers(
        &self,
        tenant: &str,
        restricted: bool,
    ) -> Result<Vec<Container>, SessionError> {
        let mut containers = self.runtime.running().await?;
        if restricted {
            containers.retain(|c| owns(c, &self.options.owner_label, tenant));
        }
        Ok(containers)
    }

    /// A running session's view now.
    pub fn report(&self, id: Uuid, snapshot: Snapshot) {
        lock(&self.reported).insert(id, snapshot);
    }

    /// A running session's last published view.
    pub fn last_report(&self, id: Uuid) -> Option<Snapshot> {
        lock(&self.reported).get(&id).cloned()
    }

    /// The session no longer runs.
    pub fn forget(&self, id: Uuid) {
        lock(&self.reported).remove(&id);
    }

    /// Refuses new recording while the data directory's disk is full.
    pub fn check_space(&self) -> Result<(), SessionError> {
        match &self.options.reserve {
            Some(reserve) if reserve.is_full() => Err(SessionError::DiskFull),
            _ => Ok(()),
        }
    }

    /// The last reported counters of every running session.
    pub fn reported(&self) -> Vec<(Uuid, Counters)> {
        lock(&self.reported)
            .iter()
            .filter_map(|(id, snapshot)| Some((*id, snapshot.counters?)))
            .collect()
    }

    /// Every running session's view, as last reported.
    pub fn snapshots(&self) -> Vec<(Uuid, Snapshot)> {
        lock(&self.reported)
            .iter()
            .map(|(id, snapshot)| (*id, snapshot.clone()))
            .collect()
    }

    /// Running sessions that are not recording, as last reported.
    pub fn not_recording(&self) -> Vec<(Uuid, super::model::NotRecording)> {
        lock(&self.reported)
            .iter()
            .filter_map(|(id, snapshot)| Some((*id, snapshot.not_recording.clone()?)))
            .collect()
    }

    /// The sessions that run now.
    pub fn running_ids(&self) -> Vec<Uuid> {
        lock(&self.reported).keys().copied().collect()
    }

    /// Records that a session failed, and why.
    pub async fn mark_failed(
        &self,
        row: &mut SessionRow,
        error: String,
    ) -> Result<(), SessionError> {
        row.status = super::model::Status::Failed;
        row.error = Some(error);
        row.updated_at = now_rfc3339();
        self.store.save(row.clone()).await?;
        Ok(())
    }
}
