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
    segments.sort_by_key(|segment| segment.first_seq);
    Ok(segments)
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
}

impl EventLogWriter {
    /// Opens the log in `dir` (created if missing); new events go to a new segment after any
    /// existing ones. The log is kept under about `cap_bytes` of compressed data.
    pub fn open(dir: &Path, cap_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let next_seq = match segment_files(dir)?.last() {
            Some(last) => last.first_seq + last.event_count()?,
            None => 1,
        };
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
                })
            }
        };
        segment.encoder.write_all(lines)?;
        // A sync flush: everything so far decompresses without the stream's end.
        segment.encoder.flush()?;
        segment.events += events;
        self.next_seq += events;
        if segment.encoder.get_ref().metadata()?.len() >= self.segment_bytes {
            self.close_current()?;
            return self.enforce_cap();
        }
        Ok(0)
    }

    /// Closes the open segment (the session stopped).
    pub fn finish(mut self) -> io::Result<()> {
        self.close_current()
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
fn read_lines(path: &Path, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        // Evicted between listing and opening: nothing left to read.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(err) => return Err(err),
    };
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
        // The writer may have closed (renamed) the segment since it was listed: find it again
        // by its first seq. Gone altogether, it was evicted.
        let segment = if listed.path.exists() {
            listed
        } else {
            match segment_files(dir)?
                .into_iter()
                .find(|again| again.first_seq == listed.first_seq)
            {
                Some(again) => again,
                None => continue,
            }
        };
        if segment.first_seq > position.next_seq {
            position.gap += segment.first_seq - position.next_seq;
        }
        let mut seq = segment.first_seq;
        let go_on = read_lines(&segment.path, |line| {
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
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tracerd-eventlog-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn line(ts: i128, syscall: &str) -> Vec<u8> {
        format!("{{\"ts_unix_ns\":{ts},\"syscall\":\"{syscall}\"}}\n").into_bytes()
    }

    fn all(dir: &Path, filter: &EventFilter) -> Vec<String> {
        let mut lines = Vec::new();
        read_events(dir, filter, |line| {
            lines.push(String::from_utf8(line.to_vec()).unwrap());
            true
        })
        .unwrap();
        lines
    }

    #[test]
    fn events_are_readable_while_the_segment_is_open_and_after_it_is_closed() {
        let dir = temp_dir("open");
        let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
        writer
            .append(&[line(1, "read"), line(2, "write")].concat(), 2)
            .unwrap();
        assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
        writer.append(&line(3, "read"), 1).unwrap();
        assert_eq!(all(&dir, &EventFilter::default()).len(), 3);
        writer.finish().unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["00000000000000000001-3.ndjson.gz"]);
        assert_eq!(all(&dir, &EventFilter::default()).len(), 3);
        // A new writer (a new run) continues in a new segment, after the old one.
        let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
        writer.append(&line(4, "openat"), 1).unwrap();
        let lines = all(&dir, &EventFilter::default());
        assert_eq!(lines.len(), 4);
        assert!(lines[3].contains("openat"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_segment_left_open_by_a_dead_daemon_is_read_to_its_last_flush() {
        let dir = temp_dir("crash");
        let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
        writer
            .append(&[line(1, "read"), line(2, "read")].concat(), 2)
            .unwrap();
        // The process dies: the encoder is never finished.
        std::mem::forget(writer);
        assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn filters_by_time_range_and_syscall() {
        let dir = temp_dir("filter");
        let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
        let batch: Vec<u8> = (0..10)
            .flat_map(|ts| line(ts, if ts % 2 == 0 { "read" } else { "write" }))
            .collect();
        writer.append(&batch, 10).unwrap();
        let filter = EventFilter {
            since_unix_ns: Some(3),
            until_unix_ns: Some(8),
            syscalls: Some(vec!["write".into()]),
            ..EventFilter::default()
        };
        let lines = all(&dir, &filter);
        assert_eq!(
            lines,
            [3, 5, 7].map(|ts| format!("{{\"ts_unix_ns\":{ts},\"syscall\":\"write\"}}"))
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cap_evicts_the_oldest_segments_and_counts_their_events() {
        let dir = temp_dir("cap");
        // A 256 KiB cap makes 64 KiB segments; write ~3.5 MiB of poorly compressible lines.
        const CAP: u64 = 256 << 10;
        let mut writer = EventLogWriter::open(&dir, CAP).unwrap();
        let mut evicted = 0;
        let mut written = 0u64;
        let mut state = 1u64;
        for batch in 0..2000 {
            let lines: Vec<u8> = (0..20)
                .flat_map(|i| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    format!(
                        "{{\"ts_unix_ns\":{},\"syscall\":\"read\",\"noise\":\"{state:x}{:x}\"}}\n",
                        batch * 20 + i,
                        state.rotate_left(17)
                    )
                    .into_bytes()
                })
                .collect();
            evicted += writer.append(&lines, 20).unwrap();
            written += 20;
        }
        writer.finish().unwrap();
        let total: u64 = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        // Within the cap, give or take the segment being written when it was last checked.
        assert!(total <= CAP + (64 << 10) * 2, "{total} bytes on disk");
        assert!(evicted > 0);
        let remaining = all(&dir, &EventFilter::default());
        assert_eq!(remaining.len() as u64 + evicted, written);
        // What is left is the newest, in order.
        assert!(remaining
            .last()
            .unwrap()
            .contains(&format!("\"ts_unix_ns\":{}", written - 1)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_are_numbered_across_runs_and_read_from_a_seq_with_gaps_reported() {
        let dir = temp_dir("seq");
        let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
        assert_eq!(writer.next_seq(), 1);
        let batch: Vec<u8> = (0..5).flat_map(|ts| line(ts, "read")).collect();
        writer.append(&batch, 5).unwrap();
        writer.finish().unwrap();
        let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
        assert_eq!(writer.next_seq(), 6, "a new run goes on from the last");
        writer.append(&line(5, "write"), 1).unwrap();
        // The log is read from after seq 3: events 4, 5 and 6.
        let from = |after| {
            let mut lines = Vec::new();
            let filter = EventFilter {
                after_seq: Some(after),
                ..EventFilter::default()
            };
            let position = read_events(&dir, &filter, |line| {
                lines.push(String::from_utf8(line.to_vec()).unwrap());
                true
            })
            .unwrap();
            (lines.len(), position)
        };
        assert_eq!(
            from(3),
            (
                3,
                ReadPosition {
                    next_seq: 7,
                    gap: 0
                }
            )
        );
        // The first run's segment evicted: asking from the start reports 5 missing.
        fs::remove_file(dir.join("00000000000000000001-5.ndjson.gz")).unwrap();
        assert_eq!(
            from(0),
            (
                1,
                ReadPosition {
                    next_seq: 7,
                    gap: 5
                }
            )
        );
        assert_eq!(from(6).0, 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn filters_by_process_name_and_failure() {
        let filter = EventFilter {
            pid: Some(7),
            comm: Some("nginx".into()),
            failed: true,
            ..EventFilter::default()
        };
        let event = |pid: u32, comm: &str, ret: i64| {
            format!(
                r#"{{"ts_unix_ns":1,"syscall":"openat","pid":{pid},"comm":"{comm}","ret":{ret}}}"#
            )
        };
        assert!(filter.accepts(event(7, "nginx", -2).as_bytes()));
        assert!(!filter.accepts(event(8, "nginx", -2).as_bytes()));
        assert!(!filter.accepts(event(7, "bash", -2).as_bytes()));
        assert!(!filter.accepts(event(7, "nginx", 3).as_bytes()));
    }
}
