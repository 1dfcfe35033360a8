//! A session's recorded events on disk, under `<data dir>/sessions/<id>/`: segments of
//! records as the kernel wrote them ([`segment`]: lz4 frames, rendered as NDJSON when they
//! are read), size-capped (oldest segments go first, and their events are counted as
//! evicted). Segments of the old format (NDJSON in gzip, [`ndjson`]) are still read.
//!
//! The writer writes each batch whole with one `write`, so a reader sees every event
//! written so far while the session runs, and a crash of the daemon loses nothing that was
//! written: a reader stops at the end of the last whole frame of an unfinished segment.
//!
//! Every event has a sequence number (`seq`, from 1, increasing across the session's runs).
//! Segment files are named by their first event's: `SEQ.tlog` while open, `SEQ-EVENTS.tlog`
//! once closed (EVENTS is the number of events in it, so eviction and reading from a given
//! `seq` need no reading of the segments before it). Events whose segment was evicted are a
//! gap in the numbers, which readers report.
use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use self::segment::SegmentReader;
pub use self::{append::EventLogWriter, repair::finish_all as finish_unfinished_segments};
use super::{event_filter::EventFilter, event_json::LineWriter, render::LineRenderer};
use crate::record::batch::RecordBatch;

mod append;
mod ndjson;
mod repair;
mod segment;

/// How a segment's events are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Records in lz4 frames ([`segment`]).
    Records,
    /// NDJSON in gzip, as tracerd first wrote its logs ([`ndjson`]).
    Ndjson,
}

/// A segment file in a session's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SegmentFile {
    /// The `seq` of its first event.
    first_seq: u64,
    /// Known for closed segments.
    events: Option<u64>,
    format: Format,
    path: PathBuf,
}

impl SegmentFile {
    /// Its number of events (counted for a segment a dead daemon left open).
    fn event_count(&self) -> io::Result<u64> {
        match (self.events, self.format) {
            (Some(events), _) => Ok(events),
            (None, Format::Records) => Ok(segment::whole_frames(&self.path)?.0),
            (None, Format::Ndjson) => ndjson::count_lines(&self.path),
        }
    }

    /// The name of the segment once closed, holding `events` events.
    fn closed_name(first_seq: u64, events: u64, format: Format) -> String {
        let suffix = match format {
            Format::Records => segment::SUFFIX,
            Format::Ndjson => ndjson::SUFFIX,
        };
        format!("{first_seq:020}-{events}{suffix}")
    }
}

fn segment_files(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut segments = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let (stem, format) = if let Some(stem) = name.strip_suffix(segment::SUFFIX) {
            (stem, Format::Records)
        } else if let Some(stem) = name.strip_suffix(ndjson::SUFFIX) {
            (stem, Format::Ndjson)
        } else {
            continue;
        };
        let (first_seq, events) = match stem.split_once('-') {
            Some((first, events)) => (first.parse().ok(), events.parse().ok()),
            None => (stem.parse().ok(), None),
        };
        if let Some(first_seq) = first_seq {
            segments.push(SegmentFile {
                first_seq,
                events,
                format,
                path: entry.path(),
            });
        }
    }
    // A segment being finished (see `repair`) is there twice for a moment: read the
    // finished one.
    segments.sort_by_key(|segment| (segment.first_seq, segment.events.is_none()));
    segments.dedup_by_key(|segment| segment.first_seq);
    Ok(segments)
}

/// How many events the session's log in `dir` has recorded, over all runs (evicted ones
/// included: `seq` numbers them all).
pub fn recorded_events(dir: &Path) -> io::Result<u64> {
    match segment_files(dir)?.last() {
        Some(last) => Ok(last.first_seq + last.event_count()? - 1),
        None => Ok(0),
    }
}

/// Where a read of the log ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadPosition {
    /// The `seq` after the last event in the log.
    pub next_seq: u64,
    /// Events after `after_seq` that the size cap evicted before they were read.
    pub gap: u64,
}

/// Opens a listed segment. The writer may have closed (renamed) it since it was listed, or a
/// repair finished it under a new name: it is found again by its first seq. `None`: gone
/// altogether (evicted).
fn open_segment(dir: &Path, listed: SegmentFile) -> io::Result<Option<(SegmentFile, File)>> {
    match File::open(&listed.path) {
        Ok(file) => return Ok(Some((listed, file))),
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        Err(_) => {}
    }
    let again = segment_files(dir)?
        .into_iter()
        .find(|again| again.first_seq == listed.first_seq);
    let Some(again) = again else {
        return Ok(None);
    };
    match File::open(&again.path) {
        Ok(file) => Ok(Some((again, file))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Where the events a read returns go, as JSON lines.
pub trait EventLines {
    /// One line (without its newline); false stops the read.
    fn line(&mut self, line: &[u8]) -> bool;
    /// Lines rendered together, each ending in a newline; false stops the read.
    fn lines(&mut self, lines: Vec<u8>) -> bool;
}

/// A closure takes each line.
impl<F: FnMut(&[u8]) -> bool> EventLines for F {
    fn line(&mut self, line: &[u8]) -> bool {
        self(line)
    }

    fn lines(&mut self, lines: Vec<u8>) -> bool {
        lines
            .split_inclusive(|&b| b == b'\n')
            .all(|line| self(&line[..line.len() - 1]))
    }
}

/// Reads a session's events in order, handing every line that passes `filter` to `each`
/// until it says stop.
pub fn read_events(
    dir: &Path,
    filter: &EventFilter,
    mut each: impl EventLines,
) -> io::Result<ReadPosition> {
    let after = filter.after_seq.unwrap_or(0);
    let mut position = ReadPosition {
        next_seq: after.saturating_add(1),
        gap: 0,
    };
    for listed in segment_files(dir)? {
        if let Some(events) = listed.events {
            if listed.first_seq + events <= position.next_seq {
                continue;
            }
        }
        let Some((segment, file)) = open_segment(dir, listed)? else {
            continue;
        };
        if segment.first_seq > position.next_seq {
            position.gap += segment.first_seq - position.next_seq;
        }
        let (go_on, seq) = match segment.format {
            Format::Records => read_records(file, segment.first_seq, filter, &mut each)?,
            Format::Ndjson => {
                let mut seq = segment.first_seq;
                let go_on = ndjson::read_file_lines(file, |line| {
                    let wanted = seq > after;
                    seq += 1;
                    !wanted || !filter.accepts(line) || each.line(line)
                })?;
                (go_on, seq)
            }
        };
        position.next_seq = position.next_seq.max(seq);
        if !go_on {
            break;
        }
    }
    Ok(position)
}

/// Reads the events of a records segment whose first is `first_seq`, rendering those after
/// `filter.after_seq` that pass it, a batch at a time. Returns whether to go on, and the seq
/// after the last event read.
fn read_records(
    file: File,
    first_seq: u64,
    filter: &EventFilter,
    each: &mut impl EventLines,
) -> io::Result<(bool, u64)> {
    let after = filter.after_seq.unwrap_or(0);
    let Some(mut reader) = SegmentReader::open(file)? else {
        return Ok((true, first_seq));
    };
    let mut writer = reader.renderer().line_writer();
    let mut seq = first_seq;
    // Batches wholly at or before `after` are not decompressed.
    while let Some((count, batch)) = reader.next_batch(|count| seq + u64::from(count) <= after)? {
        let first = seq;
        seq += u64::from(count);
        if batch.is_empty() {
            continue;
        }
        let rendered = render(reader.renderer(), &mut writer, &batch, first, after, filter);
        if let Some(stop) = emit(rendered, each) {
            return Ok((false, stop));
        }
    }
    Ok((true, seq))
}

/// Rendered lines (each ending in `\n`), and the seq of the last.
#[derive(Default)]
struct Rendered {
    lines: Vec<u8>,
    last_seq: u64,
}

/// Renders the events of `batch` (its first the session's `first`-th) after `after` that
/// pass `filter`.
fn render(
    renderer: &LineRenderer,
    writer: &mut LineWriter,
    batch: &RecordBatch,
    first: u64,
    after: u64,
    filter: &EventFilter,
) -> Rendered {
    let mut rendered = Rendered {
        lines: Vec::with_capacity(batch.len() * 400),
        last_seq: 0,
    };
    for (seq, (record, data)) in (first..).zip(batch.iter()) {
        if seq > after && renderer.accepts(filter, &record) {
            renderer.write(writer, &record, data, seq, &mut rendered.lines);
            rendered.last_seq = seq;
        }
    }
    rendered
}

/// Hands rendered lines to `each`; if it says stop, the seq after the last of them.
fn emit(rendered: Rendered, each: &mut impl EventLines) -> Option<u64> {
    if rendered.lines.is_empty() || each.lines(rendered.lines) {
        return None;
    }
    Some(rendered.last_seq + 1)
}

#[cfg(test)]
mod tests;
