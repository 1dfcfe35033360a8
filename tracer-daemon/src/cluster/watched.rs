//! The cluster sessions as etcd has them, kept in memory by a watch: listed once, then
//! changed by every event the watch reports, and listed again every 30 s and whenever the
//! watch breaks. The agent's passes read it instead of listing every session every second
//! (with 1,000 sessions stored that listing was the idle daemon's main cost).
use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use etcd_client::{EventType, WatchStream};
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    error::ClusterError,
    etcd::{decode_value, Etcd, Versioned},
    records::ClusterSessionRecord,
};

/// A full listing this often, even with the watch alive.
const RELIST_EVERY: Duration = Duration::from_secs(30);

pub struct WatchedSessions {
    sessions: BTreeMap<Uuid, Versioned<ClusterSessionRecord>>,
    watch: WatchStream,
    listed: Instant,
}

impl WatchedSessions {
    /// Lists the sessions and watches for changes from just after that listing.
    pub async fn load(etcd: &Etcd) -> Result<Self, ClusterError> {
        let (records, revision) = etcd.list_at::<ClusterSessionRecord>("sessions/").await?;
        let watch = etcd.watch_from("sessions/", revision + 1).await?;
        Ok(Self {
            sessions: records
                .into_iter()
                .map(|record| (record.value.id, record))
                .collect(),
            watch,
            listed: Instant::now(),
        })
    }

    /// Each session with the revision it was last changed at.
    pub fn sessions(&self) -> impl Iterator<Item = &Versioned<ClusterSessionRecord>> {
        self.sessions.values()
    }

    pub fn ids(&self) -> HashSet<Uuid> {
        self.sessions.keys().copied().collect()
    }

    /// Whether it is time to list everything again.
    pub fn stale(&self) -> bool {
        self.listed.elapsed() >= RELIST_EVERY
    }

    /// Waits for the watch's next report and applies it; false when the watch ended (etcd
    /// away, the watch cancelled or compacted past): list again.
    pub async fn changed(&mut self) -> bool {
        let response = match self.watch.message().await {
            Ok(Some(response)) if !response.canceled() => response,
            _ => return false,
        };
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let id = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|key| key.rsplit('/').next())
                .and_then(|id| id.parse::<Uuid>().ok());
            let Some(id) = id else { continue };
            match event.event_type() {
                EventType::Delete => {
                    self.sessions.remove(&id);
                }
                EventType::Put => {
                    match decode_value::<ClusterSessionRecord>(kv.key(), kv.value()) {
                        Ok(value) => {
                            let revision = kv.mod_revision();
                            self.sessions.insert(id, Versioned { value, revision });
                        }
                        Err(err) => {
                            tracing::warn!(%err, "a cluster session in etcd cannot be read");
                        }
                    }
                }
            }
        }
        true
    }
}
