//! A cluster session's `max_events` as one budget for all its parts: a counter in etcd
//! (`budget/<id>`, the events granted so far) that each part's writer takes from in chunks,
//! by compare-and-swap, and gives back what it did not use when its run ends. So the parts
//! together record at most `max_events`, on any number of nodes.
//!
//! While etcd cannot be reached a part keeps recording (parts go on during an outage) and
//! owes what it recorded; the debt is counted when etcd answers. Only then can the parts
//! together pass the limit: by what they recorded during the outage.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use uuid::Uuid;

use super::{error::ClusterError, shared::Shared};
use crate::sink::writer::{EventBudget, Grant};

pub struct EtcdBudget {
    shared: Arc<Shared>,
    path: String,
    max: u64,
    runtime: tokio::runtime::Handle,
    /// Events recorded while etcd was away, not yet counted in etcd.
    owed: AtomicU64,
}

impl EtcdBudget {
    /// The budget of `session`; made on the runtime (its writer calls from the blocking
    /// pool and waits for etcd there).
    pub fn new(shared: Arc<Shared>, session: Uuid, max: u64) -> Arc<Self> {
        Arc::new(Self {
            shared,
            path: format!("budget/{session}"),
            max,
            runtime: tokio::runtime::Handle::current(),
            owed: AtomicU64::new(0),
        })
    }

    /// Counts `owed`, then takes a chunk of at least `wanted` events (as many as are left);
    /// how many it took.
    async fn take(&self, wanted: u64, owed: u64) -> Result<u64, ClusterError> {
        let etcd = &self.shared.etcd;
        for _ in 0..32 {
            let current = etcd.get::<u64>(&self.path).await?;
            let used = current.as_ref().map_or(0, |used| used.value) + owed;
            let left = self.max.saturating_sub(used);
            // What it wants, or an eighth of what is left if more: few requests while much
            // is left, and near the end no part holds what another needs.
            let chunk = wanted.max(left / 8).min(left);
            if etcd.swap_counter(&self.path, current, used + chunk).await? {
                return Ok(chunk);
            }
        }
        Err(ClusterError::Conflict)
    }

    /// Adds `delta` to the counter (never below zero).
    async fn adjust(&self, delta: i64) -> Result<(), ClusterError> {
        let etcd = &self.shared.etcd;
        for _ in 0..32 {
            let current = etcd.get::<u64>(&self.path).await?;
            let used = current.as_ref().map_or(0, |used| used.value);
            let next = used.saturating_add_signed(delta);
            if etcd.swap_counter(&self.path, current, next).await? {
                return Ok(());
            }
        }
        Err(ClusterError::Conflict)
    }
}

impl EventBudget for EtcdBudget {
    fn grant(&self, wanted: u64) -> Grant {
        // With etcd known to be away, recording goes on at once, on credit: the writer must
        // not wait for it batch after batch.
        if !self.shared.is_reachable() {
            self.owed.fetch_add(wanted, Ordering::Relaxed);
            return Grant::Events(wanted);
        }
        let owed = self.owed.swap(0, Ordering::Relaxed);
        match self.runtime.block_on(self.take(wanted, owed)) {
            Ok(0) => Grant::Spent,
            Ok(events) => Grant::Events(events),
            Err(err) => {
                tracing::debug!(%err, "the event budget cannot be reached: recording on credit");
                self.owed.fetch_add(owed + wanted, Ordering::Relaxed);
                Grant::Events(wanted)
            }
        }
    }

    fn release(&self, unused: u64) {
        let owed = self.owed.swap(0, Ordering::Relaxed);
        let delta = owed as i64 - unused as i64;
        if delta == 0 {
            return;
        }
        if let Err(err) = self.runtime.block_on(self.adjust(delta)) {
            tracing::warn!(%err, path = %self.path, "could not settle the event budget");
        }
    }
}
