//! Appending to a session's event log: one segment open at a time, closed (renamed with its
//! number of events) once it holds its share of the cap, and the oldest segments removed to
//! stay under the cap.
use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{recorded_events, repair, segment::SegmentWriter, segment_files, Format, SegmentFile};
use crate::{
    record::{batch::RecordBatch, ContainerMeta},
    sink::render::{Containers, LineRenderer, RunContext},
};

/// Appends a run's records to a session's log.
pub struct EventLogWriter {
    dir: PathBuf,
    cap_bytes: u64,
    segment_bytes: u64,
    /// The `seq` the next event appended gets.
    next_seq: u64,
    context: Arc<RunContext>,
    /// The run's containers by cgroup: each segment starts with all of them.
    containers: Arc<Containers>,
    /// Containers added since the last append, written before its records.
    added: Vec<u64>,
    current: Option<OpenSegment>,
}

struct OpenSegment {
    first_seq: u64,
    path: PathBuf,
    writer: SegmentWriter,
    events: u64,
}

impl EventLogWriter {
    /// Opens the log in `dir` (created if missing) for a run; its events go to a new segment
    /// after any existing ones. The log is kept under about `cap_bytes` of compressed data.
    pub fn open(dir: &Path, cap_bytes: u64, context: RunContext) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        // Left unfinished by a crash or a full disk: finished now, if there is room.
        if let Err(err) = repair::finish_unfinished(dir) {
            tracing::warn!(dir = %dir.display(), %err, "an unfinished segment stays as it is");
        }
        let next_seq = recorded_events(dir)? + 1;
        Ok(Self {
            dir: dir.to_owned(),
            cap_bytes,
            // Eviction removes whole segments: keep them a small fraction of the cap.
            segment_bytes: (cap_bytes / 16).clamp(64 << 10, 16 << 20),
            next_seq,
            context: Arc::new(context),
            containers: Arc::default(),
            added: Vec::new(),
            current: None,
        })
    }

    /// The `seq` the next event appended gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Events of cgroup `cgroup_id` come from `container`, from the next append on.
    pub fn add_container(&mut self, cgroup_id: u64, container: Arc<ContainerMeta>) {
        Arc::make_mut(&mut self.containers).insert(cgroup_id, container);
        self.added.push(cgroup_id);
    }

    /// How the records appended so far are shown.
    pub fn renderer(&self) -> LineRenderer {
        LineRenderer::new(self.context.clone(), self.containers.clone())
    }

    /// Appends `batch` (its events numbered from [`Self::next_seq`]) and makes it readable.
    /// Returns how many older events were evicted to stay under the cap.
    ///
    /// On an error (a full disk) nothing of `batch` is in the log: the open segment is cut
    /// back to its last whole append and left (to be finished later), and the next append
    /// starts a new one.
    pub fn append(&mut self, batch: &RecordBatch) -> io::Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        if self.current.is_none() {
            self.current = Some(self.create_segment()?);
        }
        let added: Vec<(u64, Arc<ContainerMeta>)> = std::mem::take(&mut self.added)
            .into_iter()
            .filter_map(|id| Some((id, self.containers.get(&id)?.clone())))
            .collect();
        let added: Vec<(u64, &ContainerMeta)> = added
            .iter()
            .map(|(id, container)| (*id, container.as_ref()))
            .collect();
        let segment = self.current.as_mut().expect("a segment is open");
        if let Err(err) = segment.writer.append(&added, batch) {
            // Left unfinished, to be finished later; the next append starts a new segment.
            self.current = None;
            return Err(err);
        }
        segment.events += batch.len() as u64;
        self.next_seq += batch.len() as u64;
        if segment.writer.len() >= self.segment_bytes {
            self.close_current()?;
            return self.enforce_cap();
        }
        Ok(0)
    }

    /// Closes the open segment (the run ended), and finishes any a failed write left.
    pub fn finish(mut self) -> io::Result<()> {
        self.close_current()?;
        repair::finish_unfinished(&self.dir).map(|_| ())
    }

    /// A new segment, starting with every container known (none are left to add).
    fn create_segment(&mut self) -> io::Result<OpenSegment> {
        let first_seq = self.next_seq;
        let path = self
            .dir
            .join(format!("{first_seq:020}{}", super::segment::SUFFIX));
        let writer = SegmentWriter::create(&path, &self.context, &self.containers)?;
        self.added.clear();
        Ok(OpenSegment {
            first_seq,
            path,
            writer,
            events: 0,
        })
    }

    fn close_current(&mut self) -> io::Result<()> {
        let Some(segment) = self.current.take() else {
            return Ok(());
        };
        let closed = SegmentFile::closed_name(segment.first_seq, segment.events, Format::Records);
        fs::rename(&segment.path, self.dir.join(closed))
    }

    /// Removes the oldest closed segments until the log fits its cap; returns their events.
    fn enforce_cap(&mut self) -> io::Result<u64> {
        let segments = segment_files(&self.dir)?;
        let mut sizes: Vec<u64> = segments
            .iter()
            .map(|segment| fs::metadata(&segment.path).map_or(0, |m| m.len()))
            .collect();
        let mut total: u64 = sizes.iter().sum();
        let mut evicted = 0;
        for (segment, size) in segments.iter().zip(sizes.iter_mut()) {
            if total <= self.cap_bytes {
                break;
            }
            // A segment left open by a daemon that died: its whole frames are counted.
            let events = segment.event_count()?;
            fs::remove_file(&segment.path)?;
            total -= *size;
            evicted += events;
        }
        Ok(evicted)
    }
}
