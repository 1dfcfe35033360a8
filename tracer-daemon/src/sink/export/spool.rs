//! A session's on-disk spool: spans waiting for a collector that is slow or away, in order.
//!
//! Segment files (`<16 hex digits>.spans`) hold length-prefixed frames, one per batch of
//! span inputs: the records as the kernel wrote them (lz4), the containers of their cgroups
//! and their run's wall clock — written at the cost of a copy and a compression pass, so the
//! spool keeps up with the kernel when the collector does not. Segments are read in name
//! order from a cursor (`position`: segment and offset), so a batch can also be put back at
//! the head (a segment numbered below the cursor's). Fully read segments are deleted. The
//! spool survives a daemon restart: the session's next run sends what is left first. A
//! spool of the first format (a frame per span, `.spool` files) is converted when opened.
use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;

use super::input::SpanBatch;
use crate::record::{
    batch::{BatchBuilder, RecordBatch},
    ContainerMeta, WallClock,
};

mod first_format;

/// Segments are closed at this size and a new one started.
const SEGMENT_BYTES: u64 = 8 << 20;
/// Numbering starts in the middle, so batches can be put back below the first segment.
const FIRST_SEGMENT: u64 = 1 << 32;
const SUFFIX: &str = ".spans";
/// A frame's length, then its number of spans.
const FRAME_HEAD: usize = 8;

/// Batches read from the head, and where reading goes on once they are sent.
pub struct Peeked {
    pub inputs: Vec<SpanBatch>,
    /// How many spans the frames read hold (the inputs may have been taken out since).
    count: u64,
    /// Of those, how many were in corrupt frames and skipped: spans that will never be sent.
    pub skipped: u64,
    to: Position,
    bytes: u64,
}

/// Where reading is: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    segment: u64,
    offset: u64,
}

pub struct Spool {
    dir: PathBuf,
    cap_bytes: u64,
    read: Position,
    /// The segment being appended to, and its size.
    write_segment: u64,
    writer: Option<BufWriter<File>>,
    write_len: u64,
    /// Unread spans and bytes.
    spans: u64,
    bytes: u64,
}

impl Spool {
    /// Opens the spool in `dir` (created if missing), with what a previous run left unread.
    pub fn open(dir: &Path, cap_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let first_format = first_format::take(dir)?;
        let mut segments = segments(dir)?;
        segments.sort_unstable();
        let cursor = fs::read_to_string(dir.join("position"))
            .ok()
            .and_then(|text| {
                let (segment, offset) = text.trim().split_once(' ')?;
                Some(Position {
                    segment: segment.parse().ok()?,
                    offset: offset.parse().ok()?,
                })
            });
        let first = segments.first().copied().unwrap_or(FIRST_SEGMENT);
        let read = match cursor {
            Some(cursor) if segments.contains(&cursor.segment) => cursor,
            _ => Position {
                segment: first,
                offset: 0,
            },
        };
        let last = segments.last().copied().unwrap_or(FIRST_SEGMENT);
        let mut spool = Self {
            dir: dir.to_owned(),
            cap_bytes,
            read,
            write_segment: last,
            writer: None,
            write_len: 0,
            spans: 0,
            bytes: 0,
        };
        // Count what is unread (a restart's leftovers).
        for segment in segments.into_iter().filter(|&s| s >= read.segment) {
            let data = fs::read(spool.segment_path(segment))?;
            let start = if segment == read.segment {
                read.offset as usize
            } else {
                0
            };
            let mut at = start.min(data.len());
            while let Some((len, count)) = frame_at(&data, at) {
                at += 4 + len;
                spool.spans += u64::from(count);
            }
            spool.bytes += (at - start.min(at)) as u64;
            if segment == last {
                spool.write_len = data.len() as u64;
            }
        }
        if !first_format.is_empty() {
            // Older than anything written since (nothing was: it is converted at the first
            // open by a tracerd that writes this format).
            spool.prepend(&first_format)?;
        }
        Ok(spool)
    }

    fn segment_path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:016x}{SUFFIX}"))
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    pub fn spans(&self) -> u64 {
        self.spans
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends batches in order; returns how many spans fit under the size cap (whole
    /// batches: from the first that did not fit, the rest are refused).
    pub fn append(&mut self, batches: &[SpanBatch]) -> std::io::Result<usize> {
        let mut frame = Vec::new();
        let mut kept = 0;
        for batch in batches {
            frame.clear();
            encode(batch, &mut frame);
            if self.bytes + frame.len() as u64 > self.cap_bytes {
                break;
            }
            if self.writer.is_none() || self.write_len >= SEGMENT_BYTES {
                self.start_segment()?;
            }
            let writer = self.writer.as_mut().expect("a segment is open");
            writer.write_all(&frame)?;
            self.write_len += frame.len() as u64;
            self.bytes += frame.len() as u64;
            self.spans += batch.len() as u64;
            kept += batch.len();
        }
        self.flush()?;
        Ok(kept)
    }

    fn start_segment(&mut self) -> std::io::Result<()> {
        self.flush()?;
        // Continue the last segment after a restart if it has room, else a new one.
        if self.writer.is_some() || self.write_len >= SEGMENT_BYTES {
            self.write_segment += 1;
            self.write_len = 0;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.segment_path(self.write_segment))?;
        self.writer = Some(BufWriter::with_capacity(256 << 10, file));
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(writer) = &mut self.writer {
            writer.flush()?;
        }
        Ok(())
    }

    /// Puts batches back at the head, before everything unread (the oldest data: a batch
    /// that was taken out but not sent). Not bounded by the cap: they were already counted.
    pub fn prepend(&mut self, batches: &[SpanBatch]) -> std::io::Result<()> {
        if batches.is_empty() {
            return Ok(());
        }
        if self.read.offset > 0 {
            // Reading resumes at a segment's start after the prepended one: drop the read
            // part of the current segment first (rare: only when a run ends while the
            // collector is away; a segment is at most 8 MiB).
            self.flush()?;
            let path = self.segment_path(self.read.segment);
            let rest = fs::read(&path)?
                .split_off((self.read.offset as usize).min(fs::metadata(&path)?.len() as usize));
            let temporary = self.dir.join("segment.new");
            fs::write(&temporary, &rest)?;
            fs::rename(&temporary, &path)?;
            if self.read.segment == self.write_segment {
                // The open writer's file was replaced: reopen it at its new end.
                self.writer = None;
                self.write_len = rest.len() as u64;
                let file = OpenOptions::new().append(true).open(&path)?;
                self.writer = Some(BufWriter::with_capacity(256 << 10, file));
            }
            self.read.offset = 0;
        }
        let segment = self.read.segment - 1;
        let mut data = Vec::new();
        for batch in batches {
            encode(batch, &mut data);
        }
        fs::write(self.segment_path(segment), &data)?;
        self.spans += batches.iter().map(|batch| batch.len() as u64).sum::<u64>();
        self.bytes += data.len() as u64;
        self.set_read(Position { segment, offset: 0 })
    }

    /// Reads whole batches from the head, about `max` spans (at least one batch), without
    /// consuming them; commit what is returned once they are sent.
    pub fn peek(&mut self, max: usize) -> std::io::Result<Peeked> {
        self.flush()?;
        let mut inputs = Vec::new();
        let mut bytes = 0u64;
        // Spans of the frames read, the corrupt ones skipped included: all leave the count
        // when committed.
        let (mut spans, mut skipped) = (0u64, 0u64);
        let mut at = self.read;
        while spans < max as u64 && at.segment <= self.write_segment {
            let path = self.segment_path(at.segment);
            // The rest of the segment (8 MiB at most).
            let mut data = Vec::new();
            match File::open(&path) {
                Ok(mut file) => {
                    file.seek(SeekFrom::Start(at.offset))?;
                    file.read_to_end(&mut data)?;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            let mut used = 0;
            while spans < max as u64 {
                let Some((len, count)) = frame_at(&data, used) else {
                    break;
                };
                match decode(&data[used + 4..used + 4 + len]) {
                    Some(batch) => inputs.push(batch),
                    None => {
                        tracing::error!(
                            spool = %path.display(),
                            "a corrupt spool frame: its spans are counted as export_failed"
                        );
                        skipped += u64::from(count);
                    }
                }
                used += 4 + len;
                spans += u64::from(count);
            }
            at.offset += used as u64;
            bytes += used as u64;
            let at_end = used == data.len();
            if spans < max as u64 && at_end {
                // This segment is read to its end: on to the next, if there is one.
                if at.segment == self.write_segment {
                    break;
                }
                at = Position {
                    segment: at.segment + 1,
                    offset: 0,
                };
            } else if used == 0 {
                break;
            }
        }
        Ok(Peeked {
            skipped,
            count: spans,
            inputs,
            to: at,
            bytes,
        })
    }

    /// Gives up on unread data that cannot be decoded (counted, but no frame parses);
    /// returns how many spans that was.
    pub fn forget_unreadable(&mut self) -> u64 {
        self.bytes = 0;
        std::mem::take(&mut self.spans)
    }

    /// Marks a peeked batch as sent.
    pub fn commit(&mut self, peeked: &Peeked) -> std::io::Result<()> {
        self.spans = self.spans.saturating_sub(peeked.count);
        self.bytes = self.bytes.saturating_sub(peeked.bytes);
        self.set_read(peeked.to)
    }

    fn set_read(&mut self, to: Position) -> std::io::Result<()> {
        // Segments wholly before the cursor are done.
        for segment in segments(&self.dir)? {
            if segment < to.segment {
                fs::remove_file(self.segment_path(segment))?;
            }
        }
        self.read = to;
        if self.spans == 0 && to.segment == self.write_segment {
            // Nothing unread: start afresh (keeps segment numbers from creeping down).
            self.writer = None;
            let _ = fs::remove_file(self.segment_path(to.segment));
            self.write_len = 0;
            self.read = Position {
                segment: self.write_segment,
                offset: 0,
            };
            self.bytes = 0;
        }
        let cursor = self.dir.join("position");
        let temporary = self.dir.join("position.new");
        fs::write(
            &temporary,
            format!("{} {}\n", self.read.segment, self.read.offset),
        )?;
        fs::rename(temporary, cursor)
    }

    /// Deletes the spool (the session is deleted).
    pub fn remove(dir: &Path) -> std::io::Result<()> {
        match fs::remove_dir_all(dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    Ok(fs::read_dir(dir)?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let hex = name.to_str()?.strip_suffix(SUFFIX)?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect())
}

/// The length (after the length itself) and the spans of the frame at `at`, if a whole
/// frame is there.
fn frame_at(data: &[u8], at: usize) -> Option<(usize, u32)> {
    let word = |at: usize| Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?));
    let len = word(at)? as usize;
    let count = word(at + 4)?;
    (len >= FRAME_HEAD - 4 && data.len() >= at + 4 + len).then_some((len, count))
}

/// Frame: length (u32, of what follows) | spans (u32) | the run's wall-clock offset (i128)
/// | the containers of the batch's cgroups, JSON (u32 length) | the records, lz4 (with the
/// raw length in front).
fn encode(batch: &SpanBatch, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    out.extend_from_slice(&batch.clock.offset_ns().to_le_bytes());
    let mut cgroups: Vec<u64> = batch.records.cgroup_ids().collect();
    cgroups.sort_unstable();
    cgroups.dedup();
    let containers: Vec<(u64, &ContainerMeta)> = cgroups
        .into_iter()
        .filter_map(|id| Some((id, batch.containers.get(&id)?.as_ref())))
        .collect();
    let json = serde_json::to_vec(&containers).expect("containers as JSON");
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&lz4_flex::block::compress_prepend_size(
        batch.records.packed(),
    ));
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn decode(frame: &[u8]) -> Option<SpanBatch> {
    let count = u32::from_le_bytes(frame.get(..4)?.try_into().ok()?) as usize;
    let clock = WallClock::from_offset_ns(i128::from_le_bytes(frame.get(4..20)?.try_into().ok()?));
    let json_len = u32::from_le_bytes(frame.get(20..24)?.try_into().ok()?) as usize;
    let json = frame.get(24..24 + json_len)?;
    let containers: Vec<(u64, ContainerMeta)> = serde_json::from_slice(json).ok()?;
    let records = lz4_flex::block::decompress_size_prepended(frame.get(24 + json_len..)?).ok()?;
    let records = RecordBatch::from_packed(Bytes::from(records))?;
    (records.len() == count).then(|| SpanBatch {
        records,
        containers: Arc::new(
            containers
                .into_iter()
                .map(|(id, container)| (id, Arc::new(container)))
                .collect::<HashMap<_, _>>(),
        ),
        clock,
    })
}

#[cfg(test)]
mod tests {
    use super::super::input::nrs;
    use super::*;
    use crate::record::samples;

    /// Spans of syscalls `nrs`, even ones with a path, in cgroup 7 (the container `web`
    /// when `container`).
    fn batch(nrs: std::ops::Range<u32>, container: bool) -> SpanBatch {
        let mut builder = BatchBuilder::default();
        for nr in nrs {
            let mut data = Vec::new();
            if nr.is_multiple_of(2) {
                let string = tracer_common::capture_kind::STRING;
                crate::record::captured::push_item(string, 1, 0, b"/etc/hosts", 0, &mut data);
            }
            let mut record = samples::record(nr, 1, 1, 7);
            record.ret = -2;
            builder.push(&record, &data);
        }
        let mut containers = HashMap::new();
        if container {
            let web = ContainerMeta {
                id: "abc".into(),
                name: "web".into(),
                image: "nginx".into(),
            };
            containers.insert(7, Arc::new(web));
        }
        SpanBatch {
            records: builder.take(),
            containers: Arc::new(containers),
            clock: WallClock::from_offset_ns(42),
        }
    }

    fn container_of_first(batch: &SpanBatch) -> Arc<ContainerMeta> {
        let (record, _) = batch.records.iter().next().unwrap();
        batch.containers[&record.cgroup_id].clone()
    }

    #[test]
    fn keeps_order_across_segments_prepends_and_reopening() {
        let dir = std::env::temp_dir().join(format!("tracerd-spool-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        let batches = [batch(10..14, false), batch(14..20, true)];
        assert_eq!(spool.append(&batches).unwrap(), 10);
        let head = spool.peek(4).unwrap();
        assert_eq!(nrs(&head.inputs), [10, 11, 12, 13]);
        let (first, data) = head.inputs[0].records.iter().next().unwrap();
        let captured = crate::record::captured::Captured::parse(data);
        assert_eq!(captured.strings[1].unwrap().bytes, b"/etc/hosts");
        assert_eq!(head.inputs[0].clock.offset_ns(), 42);
        assert!(!head.inputs[0].containers.contains_key(&first.cgroup_id));
        spool.commit(&head).unwrap();
        // An older batch goes back in front.
        spool.prepend(&[batch(1..3, true)]).unwrap();
        assert_eq!(spool.spans(), 8);
        drop(spool);
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(spool.spans(), 8);
        let all = spool.peek(100).unwrap();
        assert_eq!(nrs(&all.inputs), [1, 2, 14, 15, 16, 17, 18, 19]);
        assert_eq!(container_of_first(&all.inputs[1]).image, "nginx");
        spool.commit(&all).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_frame_is_skipped_and_its_spans_reported() {
        let dir = std::env::temp_dir().join(format!("tracerd-spool-bad-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        spool.append(&[batch(1..2, false)]).unwrap();
        // A whole frame of 3 spans whose content does not decode.
        let mut bogus = OpenOptions::new()
            .append(true)
            .open(spool.segment_path(spool.write_segment))
            .unwrap();
        bogus.write_all(&[7, 0, 0, 0, 3, 0, 0, 0, 9, 9, 9]).unwrap();
        spool.append(&[batch(2..3, true)]).unwrap();
        let peeked = spool.peek(10).unwrap();
        assert_eq!(nrs(&peeked.inputs), [1, 2]);
        assert_eq!(peeked.skipped, 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_does_not_fit_under_the_cap() {
        let dir = std::env::temp_dir().join(format!("tracerd-spool-cap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 600).unwrap();
        let batches: Vec<SpanBatch> = (0..20).map(|nr| batch(nr * 2..nr * 2 + 2, false)).collect();
        let kept = spool.append(&batches).unwrap();
        assert!(kept > 0 && kept < 40, "{kept}");
        assert!(spool.bytes() <= 600);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A frame of the first format, as an older tracerd wrote it.
    fn first_format_frame(nr: u32, clock: i128, container: bool, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let record = samples::record(nr, 1, 1, 7);
        // SAFETY: a record is plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&record as *const tracer_common::SyscallRecord).cast::<u8>(),
                tracer_common::SyscallRecord::SIZE,
            )
        };
        out.extend_from_slice(bytes);
        out.extend_from_slice(&clock.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.push(u8::from(container));
        if container {
            for text in ["abc", "web", "nginx"] {
                out.extend_from_slice(&(text.len() as u16).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    #[test]
    fn a_spool_of_the_first_format_is_converted_with_its_read_position() {
        let dir = std::env::temp_dir().join(format!("tracerd-spool-old-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut data = Vec::new();
        first_format_frame(1, 5, false, &mut data);
        let read_to = data.len();
        first_format_frame(2, 5, true, &mut data);
        first_format_frame(3, 6, false, &mut data);
        fs::write(dir.join(format!("{:016x}.spool", FIRST_SEGMENT)), &data).unwrap();
        fs::write(dir.join("cursor"), format!("{FIRST_SEGMENT} {read_to}\n")).unwrap();
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(spool.spans(), 2);
        let all = spool.peek(10).unwrap();
        assert_eq!(nrs(&all.inputs), [2, 3]);
        let clocks: Vec<i128> = all.inputs.iter().map(|b| b.clock.offset_ns()).collect();
        assert_eq!(clocks, [5, 6], "a batch per run");
        assert_eq!(container_of_first(&all.inputs[0]).name, "web");
        assert!(!dir.join("cursor").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
