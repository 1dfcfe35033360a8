//! A session's on-disk spool: spans waiting for a collector that is slow or away, in order.
//!
//! Segment files (`<16 hex digits>.spool`) hold length-prefixed frames, one per span input
//! (the syscall record, its path and its container). Segments are read in name order from a
//! cursor (`cursor`: segment and offset), so a batch can also be put back at the head (a
//! segment numbered below the cursor's). Fully read segments are deleted. The spool survives a
//! daemon restart: the session's next run sends what is left first.
use std::{
    fs::{self, File, OpenOptions},
    io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use tracer_common::SyscallRecord;

use super::input::SpanInput;
use crate::record::{ContainerMeta, Event, WallClock};

/// Segments are closed at this size and a new one started.
const SEGMENT_BYTES: u64 = 8 << 20;
/// Numbering starts in the middle, so batches can be put back below the first segment.
const FIRST_SEGMENT: u64 = 1 << 32;

/// Inputs read from the head, and where reading goes on once they are sent.
pub struct Peeked {
    pub inputs: Vec<SpanInput>,
    /// How many frames were read (the inputs may have been taken out since).
    count: u64,
    /// Of those, how many were corrupt and skipped: spans that will never be sent.
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
        let mut segments = segments(dir)?;
        segments.sort_unstable();
        let cursor = fs::read_to_string(dir.join("cursor"))
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
            while let Some(len) = frame_len(&data, at) {
                at += 4 + len;
                spool.spans += 1;
            }
            spool.bytes += (at - start.min(at)) as u64;
            if segment == last {
                spool.write_len = data.len() as u64;
            }
        }
        Ok(spool)
    }

    fn segment_path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:016x}.spool"))
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

    /// Appends inputs in order; returns how many fit under the size cap (the rest, from the
    /// first that did not fit, are refused).
    pub fn append(&mut self, inputs: &[SpanInput]) -> std::io::Result<usize> {
        let mut frame = Vec::with_capacity(512);
        for (index, input) in inputs.iter().enumerate() {
            frame.clear();
            encode(input, &mut frame);
            if self.bytes + frame.len() as u64 > self.cap_bytes {
                self.flush()?;
                return Ok(index);
            }
            if self.writer.is_none() || self.write_len >= SEGMENT_BYTES {
                self.start_segment()?;
            }
            let writer = self.writer.as_mut().expect("a segment is open");
            writer.write_all(&frame)?;
            self.write_len += frame.len() as u64;
            self.bytes += frame.len() as u64;
            self.spans += 1;
        }
        self.flush()?;
        Ok(inputs.len())
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

    /// Puts inputs back at the head, before everything unread (the oldest data: a batch that
    /// was taken out but not sent). Not bounded by the cap: they were already counted.
    pub fn prepend(&mut self, inputs: &[SpanInput]) -> std::io::Result<()> {
        if inputs.is_empty() {
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
        for input in inputs {
            encode(input, &mut data);
        }
        fs::write(self.segment_path(segment), &data)?;
        self.spans += inputs.len() as u64;
        self.bytes += data.len() as u64;
        self.set_read(Position { segment, offset: 0 })
    }

    /// Reads up to `max` inputs from the head without consuming them; commit what is
    /// returned once they are sent.
    pub fn peek(&mut self, max: usize) -> std::io::Result<Peeked> {
        self.flush()?;
        let mut inputs = Vec::new();
        let mut bytes = 0u64;
        // Frames read, the corrupt ones skipped included: all leave the count when committed.
        let mut frames = 0u64;
        let mut at = self.read;
        while inputs.len() < max && at.segment <= self.write_segment {
            let path = self.segment_path(at.segment);
            // About what the frames still wanted take (a frame is a few hundred bytes).
            let limit = (max - inputs.len()) as u64 * 1024 + 4096;
            let mut data = Vec::new();
            match File::open(&path) {
                Ok(mut file) => {
                    file.seek(SeekFrom::Start(at.offset))?;
                    file.take(limit).read_to_end(&mut data)?;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            let mut used = 0;
            while inputs.len() < max {
                let Some(len) = frame_len(&data, used) else {
                    break;
                };
                match decode(&data[used + 4..used + 4 + len]) {
                    Some(input) => inputs.push(input),
                    None => tracing::error!(
                        spool = %path.display(),
                        "a corrupt spool frame: its span is counted as export_failed"
                    ),
                }
                used += 4 + len;
                frames += 1;
            }
            at.offset += used as u64;
            bytes += used as u64;
            let at_end = (data.len() as u64) < limit;
            if inputs.len() < max && at_end {
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
            skipped: frames - inputs.len() as u64,
            count: frames,
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
        let cursor = self.dir.join("cursor");
        let temporary = self.dir.join("cursor.new");
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
            let hex = name.to_str()?.strip_suffix(".spool")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect())
}

/// The length of the frame at `at`, if a whole frame is there.
fn frame_len(data: &[u8], at: usize) -> Option<usize> {
    let len = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
    (data.len() >= at + 4 + len).then_some(len)
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Frame: length (u32) | record (its bytes) | the run's wall-clock offset (i128) | captured
/// argument data (u16 length) | container flag (u8) and id, name, image (u16 length each).
fn encode(input: &SpanInput, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // SAFETY: SyscallRecord is plain old data (repr(C), padding spelled out as fields).
    let record = unsafe {
        std::slice::from_raw_parts(
            (&input.event.record as *const SyscallRecord).cast::<u8>(),
            SyscallRecord::SIZE,
        )
    };
    out.extend_from_slice(record);
    out.extend_from_slice(&input.clock.offset_ns().to_le_bytes());
    let data = &input.event.data[..input.event.data.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data);
    match &input.container {
        Some(container) => {
            out.push(1);
            put_str(out, &container.id);
            put_str(out, &container.name);
            put_str(out, &container.image);
        }
        None => out.push(0),
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.data.get(..len)?, self.data.get(len..)?);
        self.data = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u16()? as usize;
        Some(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

fn decode(frame: &[u8]) -> Option<SpanInput> {
    let mut reader = Reader { data: frame };
    let bytes = reader.take(SyscallRecord::SIZE)?;
    // SAFETY: SIZE bytes of a record written by `encode`; every bit pattern is valid.
    let record: SyscallRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let clock = WallClock::from_offset_ns(i128::from_le_bytes(reader.take(16)?.try_into().ok()?));
    let data_len = reader.u16()? as usize;
    let data = reader.take(data_len)?;
    let container = match reader.take(1)?[0] {
        0 => None,
        _ => Some(Arc::new(ContainerMeta {
            id: reader.string()?,
            name: reader.string()?,
            image: reader.string()?,
        })),
    };
    Some(SpanInput {
        event: Arc::new(Event::new(&record, data)),
        container,
        clock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(nr: u32, container: bool) -> SpanInput {
        let mut record: SyscallRecord = unsafe { std::mem::zeroed() };
        record.nr = nr;
        record.ret = -2;
        let mut data = Vec::new();
        if nr.is_multiple_of(2) {
            let string = tracer_common::capture_kind::STRING;
            crate::record::captured::push_item(string, 1, 0, b"/etc/hosts", 0, &mut data);
        }
        SpanInput {
            event: Arc::new(Event::new(&record, &data)),
            container: container.then(|| {
                Arc::new(ContainerMeta {
                    id: "abc".into(),
                    name: "web".into(),
                    image: "nginx".into(),
                })
            }),
            clock: WallClock::from_offset_ns(42),
        }
    }

    fn nrs(inputs: &[SpanInput]) -> Vec<u32> {
        inputs.iter().map(|i| i.event.record.nr).collect()
    }

    #[test]
    fn keeps_order_across_segments_prepends_and_reopening() {
        let dir = std::env::temp_dir().join(format!("tracerd-spool-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        let batch: Vec<SpanInput> = (10..20).map(|nr| input(nr, nr.is_multiple_of(3))).collect();
        assert_eq!(spool.append(&batch).unwrap(), 10);
        let head = spool.peek(4).unwrap();
        assert_eq!(nrs(&head.inputs), [10, 11, 12, 13]);
        let captured = crate::record::captured::Captured::parse(&head.inputs[0].event.data);
        assert_eq!(captured.strings[1].unwrap().bytes, b"/etc/hosts");
        assert_eq!(head.inputs[2].container.as_ref().unwrap().image, "nginx");
        assert_eq!(head.inputs[1].clock.offset_ns(), 42);
        spool.commit(&head).unwrap();
        // An older batch goes back in front.
        spool.prepend(&[input(1, false), input(2, true)]).unwrap();
        assert_eq!(spool.spans(), 8);
        drop(spool);
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(spool.spans(), 8);
        let all = spool.peek(100).unwrap();
        assert_eq!(nrs(&all.inputs), [1, 2, 14, 15, 16, 17, 18, 19]);
        spool.commit(&all).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_frame_is_skipped_and_reported() {
        let dir = std::env::temp_dir().join(format!("tracerd-spool-bad-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        spool.append(&[input(1, false)]).unwrap();
        // A whole frame whose content does not decode (3 bytes: shorter than a record).
        let mut bogus = OpenOptions::new()
            .append(true)
            .open(spool.segment_path(spool.write_segment))
            .unwrap();
        bogus.write_all(&[3, 0, 0, 0, 9, 9, 9]).unwrap();
        spool.append(&[input(2, true)]).unwrap();
        let peeked = spool.peek(10).unwrap();
        assert_eq!(nrs(&peeked.inputs), [1, 2]);
        assert_eq!(peeked.skipped, 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_does_not_fit_under_the_cap() {
        let dir = std::env::temp_dir().join(format!("tracerd-spool-cap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 1000).unwrap();
        let batch: Vec<SpanInput> = (0..20).map(|nr| input(nr, false)).collect();
        let kept = spool.append(&batch).unwrap();
        assert!(kept > 0 && kept < 20, "{kept}");
        assert!(spool.bytes() <= 1000);
        fs::remove_dir_all(&dir).unwrap();
    }
}
