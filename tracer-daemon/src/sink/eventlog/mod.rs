//! A session's recorded events on disk: NDJSON in gzip segments under
//! `<data dir>/sessions/<id>/`, size-capped (oldest segments go first, and their events are
//! counted as evicted).
//!
//! The writer sync-flushes the open segment after every batch, so a reader sees every event
//! written so far while the session runs, and a crash of the daemon loses nothing that was
//! written: a reader stops at the end of the last complete flush of an unfinished segment.
//!
//! Every event has a sequence number (`seq`, from 1, increasing across the session's runs).
//! Segment files are named by their first event's: `SEQ.ndjson.gz` while open,
//! `SEQ-EVENTS.ndjson.gz` once closed (EVENTS is the number of events in it, so eviction and
//! reading from a given `seq` need no decompression of the segments before it). Events whose
//! segment was evicted are a gap in the numbers, which readers report.
use std::{
    fs::{self, File},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use flate2::{read::MultiGzDecoder, write::GzEncoder, Compression};

pub use self::repair::finish_all as finish_unfinished_segments;

mod repair;

/// A segment file in a session's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SegmentFile {
    /// The `seq` of its first event.
    first_seq: u64,
    /// Known for closed segments.
    events: Option<u64>,
    path: PathBuf,
}

impl SegmentFile {
    /// Its number of events (counted for a segment a dead daemon left open).
    fn event_count(&self) -> io::Result<u64> {
        match self.events {
            Some(events) => Ok(events),
            None => count_lines(&self.path),
        }
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
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".ndjson.gz")) else {
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

/// Appends events to a session's log.
pub struct EventLogWriter {
    dir: PathBuf,
    cap_bytes: u64,
    segment_bytes: u64,
    /// The `seq` the next event appended gets.
    next_seq: u64,
    current: Option<OpenSegment>,
}

struct OpenSegment {
    first_seq: u64,
    path: PathBuf,
    encoder: GzEncoder<File>,
    events: u64,
    /// The file's length after the last complete flush.
    flushed_len: u64,
}

impl EventLogWriter {
    /// Opens the log in `dir` (created if missing); new events go to a new segment after any
    /// existing ones. The log is kept under about `cap_bytes` of compressed data.
    pub fn open(dir: &Path, cap_bytes: u64) -> io::Result<Self> {
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
            current: None,
        })
    }

    /// The `seq` the next event appended gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends `lines` (complete NDJSON lines holding `events` events, numbered from
    /// [`Self::next_seq`]) and makes them readable. Returns how many older events were
    /// evicted to stay under the cap.
    ///
    /// On an error (a full disk) nothing of `lines` is in the log: the open segment is cut
    /// back to its last complete flush and left (to be finished later), and the next append
    /// starts a new one.
    pub fn append(&mut self, lines: &[u8], events: u64) -> io::Result<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let segment = match &mut self.current {
            Some(segment) => segment,
            None => {
                let first_seq = self.next_seq;
                let path = self.dir.join(format!("{first_seq:020}.ndjson.gz"));
                let file = File::create(&path)?;
                self.current.insert(OpenSegment {
                    first_seq,
                    path,
                    encoder: GzEncoder::new(file, Compression::fast()),
                    events: 0,
                    flushed_len: 0,
                })
            }
        };
        // A sync flush: everything so far decompresses without the stream's end.
        let flushed = segment
            .encoder
            .write_all(lines)
            .and_then(|()| segment.encoder.flush())
            .and_then(|()| segment.encoder.get_ref().metadata());
        match flushed {
            Ok(metadata) => segment.flushed_len = metadata.len(),
            Err(err) => {
                self.abandon_current();
                return Err(err);
            }
        }
        let segment = self.current.as_mut().expect("the segment just written");
        segment.events += events;
        self.next_seq += events;
        if segment.encoder.get_ref().metadata()?.len() >= self.segment_bytes {
            self.close_current()?;
            return self.enforce_cap();
        }
        Ok(0)
    }

    /// Closes the open segment (the session stopped), and finishes any a failed write left.
    pub fn finish(mut self) -> io::Result<()> {
        self.close_current()?;
        repair::finish_unfinished(&self.dir).map(|_| ())
    }

    /// Gives up the open segment after a failed write: cut back to its last complete flush
    /// (the failed batch may have written part of itself) and left unfinished.
    fn abandon_current(&mut self) {
        let Some(segment) = self.current.take() else {
            return;
        };
        let OpenSegment {
            path,
            encoder,
            flushed_len,
            ..
        } = segment;
        // Dropping the encoder tries to write the stream's end: cut it off afterwards.
        drop(encoder);
        let cut = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_len(flushed_len));
        if let Err(err) = cut {
            tracing::warn!(path = %path.display(), %err, "cutting back a segment after a failed write");
        }
    }

    fn close_current(&mut self) -> io::Result<()> {
        let Some(segment) = self.current.take() else {
            return Ok(());
        };
        segment.encoder.finish()?;
        let closed = self.dir.join(format!(
            "{:020}-{}.ndjson.gz",
            segment.first_seq, segment.events
        ));
        fs::rename(&segment.path, closed)
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
            // A segment left open by a daemon that died: its complete lines are counted.
            let events = segment.event_count()?;
            fs::remove_file(&segment.path)?;
            total -= *size;
            evicted += events;
        }
        Ok(evicted)
    }
}

fn count_lines(path: &Path) -> io::Result<u64> {
    let mut count = 0;
    read_lines(path, |_| {
        count += 1;
        true
    })?;
    Ok(count)
}

/// Calls `each` with every complete line of one segment (without its newline), stopping
/// early when `each` returns false. An unfinished segment ends at its last sync flush.
fn read_lines(path: &Path, each: impl FnMut(&[u8]) -> bool) -> io::Result<bool> {
    match File::open(path) {
        Ok(file) => read_file_lines(file, each),
        // Evicted between listing and opening: nothing left to read.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(err) => Err(err),
    }
}

/// [`read_lines`] of a segment already open.
fn read_file_lines(file: File, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<bool> {
    let mut reader = BufReader::with_capacity(64 << 10, MultiGzDecoder::new(file));
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(true),
            Ok(_) if line.last() == Some(&b'\n') => {
                if !each(&line[..line.len() - 1]) {
                    return Ok(false);
                }
            }
            // A line without its newline is the torn end of an unfinished segment.
            Ok(_) => return Ok(true),
            // An unfinished gzip stream ends with an unexpected EOF after its last flush.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
            Err(err) => return Err(err),
        }
    }
}

/// Which events to read back.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only events after this `seq`.
    pub after_seq: Option<u64>,
    /// Only events at or after this time (Unix nanoseconds).
    pub since_unix_ns: Option<i128>,
    /// Only events before this time (Unix nanoseconds).
    pub until_unix_ns: Option<i128>,
    /// Only these syscalls (names).
    pub syscalls: Option<Vec<String>>,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only threads of this name.
    pub comm: Option<String>,
    /// Only calls that failed.
    pub failed: bool,
}

#[derive(serde::Deserialize)]
struct LineKeys<'a> {
    ts_unix_ns: i128,
    #[serde(borrow)]
    syscall: &'a str,
    #[serde(default)]
    pid: u32,
    #[serde(default, borrow)]
    comm: std::borrow::Cow<'a, str>,
    #[serde(default)]
    ret: i64,
}

impl EventFilter {
    /// Whether every line passes whatever it holds (`after_seq` aside, which goes by
    /// position).
    pub fn accepts_all(&self) -> bool {
        self.since_unix_ns.is_none()
            && self.until_unix_ns.is_none()
            && self.syscalls.is_none()
            && self.pid.is_none()
            && self.comm.is_none()
            && !self.failed
    }

    /// Whether `line` (one event, without its newline) passes the filter's fields.
    pub fn accepts(&self, line: &[u8]) -> bool {
        if self.accepts_all() {
            return true;
        }
        let Ok(keys) = serde_json::from_slice::<LineKeys>(line) else {
            return false;
        };
        self.since_unix_ns
            .is_none_or(|since| keys.ts_unix_ns >= since)
            && self
                .until_unix_ns
                .is_none_or(|until| keys.ts_unix_ns < until)
            && self
                .syscalls
                .as_ref()
                .is_none_or(|names| names.iter().any(|name| name == keys.syscall))
            && self.pid.is_none_or(|pid| keys.pid == pid)
            && self.comm.as_deref().is_none_or(|comm| keys.comm == comm)
            && (!self.failed || keys.ret < 0)
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

/// Reads a session's events in order, calling `each` with every line (without its newline)
/// that passes `filter`, until `each` returns false.
pub fn read_events(
    dir: &Path,
    filter: &EventFilter,
    mut each: impl FnMut(&[u8]) -> bool,
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
        let mut seq = segment.first_seq;
        let go_on = read_file_lines(file, |line| {
            let wanted = seq > after;
            seq += 1;
            !wanted || !filter.accepts(line) || each(line)
        })?;
        position.next_seq = position.next_seq.max(seq);
        if !go_on {
            break;
        }
    }
    Ok(position)
}

#[cfg(test)]
mod tests;
