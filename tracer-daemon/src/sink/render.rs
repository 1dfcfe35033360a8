//! Turning a run's records into event lines, when they are read rather than when they are
//! written: what a run's records need to be shown (its session, wall clock and argument
//! limits, kept once per event-log segment) and the containers its cgroups belong to.
use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};
use tracer_common::SyscallRecord;
use uuid::Uuid;

use super::{event_filter::EventFilter, event_json::LineWriter};
use crate::record::{batch::RecordBatch, decode::Limits, ContainerMeta, Event, WallClock};

/// What every event of a run shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunContext {
    pub session: Uuid,
    /// The run's CLOCK_REALTIME − CLOCK_MONOTONIC (see [`WallClock`]).
    pub clock_offset_ns: i128,
    pub limits: Limits,
}

impl RunContext {
    pub fn new(session: Uuid, clock: WallClock, limits: Limits) -> Self {
        Self {
            session,
            clock_offset_ns: clock.offset_ns(),
            limits,
        }
    }

    pub fn clock(&self) -> WallClock {
        WallClock::from_offset_ns(self.clock_offset_ns)
    }
}

/// The containers of a run's cgroups (those not here are in none).
pub type Containers = HashMap<u64, Arc<ContainerMeta>>;

/// Renders a run's records as event lines. Cheap to clone: followers share it.
#[derive(Clone, Debug)]
pub struct LineRenderer {
    pub context: Arc<RunContext>,
    pub containers: Arc<Containers>,
    clock: WallClock,
}

impl LineRenderer {
    pub fn new(context: Arc<RunContext>, containers: Arc<Containers>) -> Self {
        let clock = context.clock();
        Self {
            context,
            containers,
            clock,
        }
    }

    /// What writes this run's lines (one per reader: it keeps what repeats).
    pub fn line_writer(&self) -> LineWriter {
        LineWriter::new(&self.context.session)
    }

    /// Appends the event of `record`, the session's `seq`-th, as one JSON line (with its
    /// newline) to `out`.
    pub fn write(
        &self,
        writer: &mut LineWriter,
        record: &SyscallRecord,
        data: &[u8],
        seq: u64,
        out: &mut Vec<u8>,
    ) {
        let event = Event::new(record, data);
        let container = self.containers.get(&record.cgroup_id);
        writer.write(
            &event,
            container.map(Arc::as_ref),
            &self.clock,
            &self.context.limits,
            seq,
            out,
        );
    }

    /// Whether the event of `record` passes `filter` (decided on the record, before any
    /// rendering).
    pub fn accepts(&self, filter: &EventFilter, record: &SyscallRecord) -> bool {
        filter.accepts_record(record, self.clock.unix_ns(record.enter_ns))
    }

    /// Appends the lines of `batch` (whose first record is the session's `first_seq`-th)
    /// from seq `from` on that pass `filter`.
    pub fn write_batch(
        &self,
        batch: &RecordBatch,
        first_seq: u64,
        from: u64,
        filter: &EventFilter,
        out: &mut Vec<u8>,
    ) {
        let mut writer = self.line_writer();
        for (seq, (record, data)) in (first_seq..).zip(batch.iter()) {
            if seq >= from && self.accepts(filter, &record) {
                self.write(&mut writer, &record, data, seq, out);
            }
        }
    }
}
