//! What export takes in: delivered records a batch at a time, as the run's writer wrote
//! them, with what they need to become spans. Taking a batch costs the writer nothing per
//! record; records become events only on the sender's side.
use std::sync::Arc;

use crate::{
    record::{batch::RecordBatch, WallClock},
    sink::render::Containers,
};

/// Delivered records on their way to becoming spans.
#[derive(Clone, Debug)]
pub struct SpanBatch {
    pub records: RecordBatch,
    /// The containers of the run's cgroups (those not here are in none).
    pub containers: Arc<Containers>,
    /// The wall clock of the run that recorded them (a batch sent by a later run, from the
    /// spool, keeps its times).
    pub clock: WallClock,
}

impl SpanBatch {
    /// How many spans it makes.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Takes the first `n` spans' records out of the batch.
    pub fn split_to(&mut self, n: usize) -> Self {
        Self {
            records: self.records.split_to(n),
            containers: self.containers.clone(),
            clock: self.clock,
        }
    }
}

/// The syscall numbers of batches' records, in order (for tests).
#[cfg(test)]
pub(crate) fn nrs(batches: &[SpanBatch]) -> Vec<u32> {
    batches
        .iter()
        .flat_map(|batch| batch.records.iter().map(|(record, _)| record.nr))
        .collect()
}
