//! The event log's segment format: records as the kernel wrote them, in lz4-compressed
//! frames, after what it takes to show them — written once per segment, never per event.
//! Events become JSON when they are read (downloads, followers), not when they are written:
//! writing costs a copy of each record and its share of one lz4 pass over its batch.
//!
//! A segment (`SEQ.tlog` while open, `SEQ-EVENTS.tlog` once closed) is the magic
//! `tracerd\x01`, then frames. A frame is a header — kind (u8), count (u32), raw length
//! (u32), stored length (u32), CRC-32 of the stored bytes (u32), little-endian — and the
//! stored bytes. Kinds:
//! - 1, the run's context: JSON ([`RunContext`], the record size and byte order); first.
//! - 2, containers: JSON `[[cgroup_id, container], …]`: events of these cgroups, from here
//!   on, come from these containers. A segment repeats every container the run knows, so
//!   each segment reads alone (older ones may be evicted).
//! - 3, records: `count` records packed as in [`RecordBatch`], an lz4 block.
//!
//! Records are in the writing host's layout and byte order; the context says which, and a
//! segment from another kind of host is refused, not misread. A frame that is not whole
//! (a crash or a failed write in the middle of it) ends the segment: readers stop before it,
//! and finishing the segment cuts it off.
use std::{
    fs::File,
    io::{self, BufReader, Read, Write},
    path::Path,
    sync::Arc,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracer_common::SyscallRecord;

use crate::{
    record::{batch::RecordBatch, ContainerMeta},
    sink::render::{Containers, LineRenderer, RunContext},
};

/// The file name suffix of segments in this format.
pub const SUFFIX: &str = ".tlog";

const MAGIC: &[u8; 8] = b"tracerd\x01";
const FRAME_HEADER: usize = 17;
/// Frames larger than this are corruption, not data (a batch is a few hundred KiB).
const MAX_FRAME: u32 = 256 << 20;

const CONTEXT: u8 = 1;
const CONTAINERS: u8 = 2;
const RECORDS: u8 = 3;

/// The context frame: the run's context and the records' layout.
#[derive(Serialize, Deserialize)]
struct StoredContext {
    run: RunContext,
    record_size: usize,
    little_endian: bool,
}

impl StoredContext {
    fn of_this_host(run: RunContext) -> Self {
        Self {
            run,
            record_size: SyscallRecord::SIZE,
            little_endian: cfg!(target_endian = "little"),
        }
    }
}

/// Writes one segment. Every append writes whole frames with one `write`, so readers see
/// each batch whole as soon as it returns.
pub struct SegmentWriter {
    file: File,
    /// The frames of the append being written (reused).
    frames: Vec<u8>,
    /// Where lz4 writes a batch: only ever grown, so it is zeroed once, not per batch.
    compressed: Vec<u8>,
    /// The file's length after the last whole append.
    len: u64,
}

impl SegmentWriter {
    /// Creates the segment at `path` with the run's context and the containers known now.
    pub fn create(path: &Path, context: &RunContext, containers: &Containers) -> io::Result<Self> {
        let mut writer = Self {
            file: File::create(path)?,
            frames: Vec::with_capacity(64 << 10),
            compressed: Vec::new(),
            len: 0,
        };
        writer.frames.extend_from_slice(MAGIC);
        let context = serde_json::to_vec(&StoredContext::of_this_host(context.clone()))?;
        push_frame(&mut writer.frames, CONTEXT, 0, context.len(), &context);
        let known: Vec<(u64, &ContainerMeta)> = containers
            .iter()
            .map(|(id, meta)| (*id, meta.as_ref()))
            .collect();
        writer.push_containers(&known)?;
        if let Err(err) = writer.write_frames() {
            // Not even its context is in it: nothing to finish later.
            let _ = std::fs::remove_file(path);
            return Err(err);
        }
        Ok(writer)
    }

    /// Appends containers that joined (if any) and a batch of records.
    pub fn append(
        &mut self,
        joined: &[(u64, &ContainerMeta)],
        batch: &RecordBatch,
    ) -> io::Result<()> {
        self.push_containers(joined)?;
        if !batch.is_empty() {
            let raw = batch.packed();
            let bound = lz4_flex::block::get_maximum_output_size(raw.len());
            if self.compressed.len() < bound {
                self.compressed.resize(bound, 0);
            }
            let stored = lz4_flex::block::compress_into(raw, &mut self.compressed)
                .map_err(io::Error::other)?;
            let stored = &self.compressed[..stored];
            push_frame(
                &mut self.frames,
                RECORDS,
                batch.len() as u32,
                raw.len(),
                stored,
            );
        }
        self.write_frames()
    }

    /// The file's length after the last whole append.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn push_containers(&mut self, containers: &[(u64, &ContainerMeta)]) -> io::Result<()> {
        if containers.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_vec(containers)?;
        push_frame(
            &mut self.frames,
            CONTAINERS,
            containers.len() as u32,
            json.len(),
            &json,
        );
        Ok(())
    }

    /// Writes the frames pushed; on an error the file is cut back to its last whole append
    /// (a failed write may have written part of them).
    fn write_frames(&mut self) -> io::Result<()> {
        let written = self.file.write_all(&self.frames);
        let frames = self.frames.len() as u64;
        self.frames.clear();
        match written {
            Ok(()) => {
                self.len += frames;
                Ok(())
            }
            Err(err) => {
                if let Err(cut) = self.file.set_len(self.len) {
                    tracing::warn!(err = %cut, "cutting back a segment after a failed write");
                }
                Err(err)
            }
        }
    }
}

fn frame_header(kind: u8, count: u32, raw_len: usize, stored: &[u8]) -> [u8; FRAME_HEADER] {
    let mut header = [0u8; FRAME_HEADER];
    header[0] = kind;
    header[1..5].copy_from_slice(&count.to_le_bytes());
    header[5..9].copy_from_slice(&(raw_len as u32).to_le_bytes());
    header[9..13].copy_from_slice(&(stored.len() as u32).to_le_bytes());
    header[13..17].copy_from_slice(&crc32fast::hash(stored).to_le_bytes());
    header
}

fn push_frame(out: &mut Vec<u8>, kind: u8, count: u32, raw_len: usize, stored: &[u8]) {
    out.extend_from_slice(&frame_header(kind, count, raw_len, stored));
    out.extend_from_slice(stored);
}

/// One whole frame, read.
struct Frame {
    kind: u8,
    count: u32,
    raw_len: usize,
    /// The stored bytes (`None` when the caller skipped the frame).
    stored: Option<Vec<u8>>,
    /// Header and stored bytes.
    len: u64,
}

/// Reads the frames of a segment.
struct Frames {
    input: BufReader<File>,
}

impl Frames {
    /// The next whole frame; `None` at the segment's end, or at a frame that is not whole
    /// (its torn end). Records frames are skipped (not read) when `skip` says so.
    fn next(&mut self, skip: impl FnOnce(u8, u32) -> bool) -> io::Result<Option<Frame>> {
        let mut header = [0u8; FRAME_HEADER];
        if !read_whole(&mut self.input, &mut header)? {
            return Ok(None);
        }
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let (kind, count, raw_len, stored_len, crc) =
            (header[0], word(1), word(5), word(9), word(13));
        if !(CONTEXT..=RECORDS).contains(&kind) || stored_len > MAX_FRAME || raw_len > MAX_FRAME {
            return Ok(None);
        }
        let len = (FRAME_HEADER + stored_len as usize) as u64;
        let mut stored = vec![0u8; stored_len as usize];
        if !read_whole(&mut self.input, &mut stored)? || crc32fast::hash(&stored) != crc {
            return Ok(None);
        }
        let stored = (!skip(kind, count)).then_some(stored);
        Ok(Some(Frame {
            kind,
            count,
            raw_len: raw_len as usize,
            stored,
            len,
        }))
    }
}

/// Fills `buf`; false if the input ends first.
fn read_whole(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match input.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(err) => Err(err),
    }
}

/// Reads a segment's records, with what it takes to render them.
pub struct SegmentReader {
    frames: Frames,
    renderer: LineRenderer,
}

impl SegmentReader {
    /// Opens a segment; `None` if it holds no whole context yet (just created, or torn).
    pub fn open(file: File) -> io::Result<Option<Self>> {
        let mut input = BufReader::with_capacity(256 << 10, file);
        let mut magic = [0u8; MAGIC.len()];
        if !read_whole(&mut input, &mut magic)? {
            return Ok(None);
        }
        if &magic != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an event-log segment of this version",
            ));
        }
        let mut frames = Frames { input };
        let Some(Frame {
            kind: CONTEXT,
            stored: Some(context),
            ..
        }) = frames.next(|_, _| false)?
        else {
            return Ok(None);
        };
        let context: StoredContext = serde_json::from_slice(&context)?;
        if context.record_size != SyscallRecord::SIZE
            || context.little_endian != cfg!(target_endian = "little")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the segment was written by a host with another record layout",
            ));
        }
        Ok(Some(Self {
            frames,
            renderer: LineRenderer::new(Arc::new(context.run), Arc::default()),
        }))
    }

    /// How the records read so far are rendered (their containers as of the last batch).
    pub fn renderer(&self) -> &LineRenderer {
        &self.renderer
    }

    /// The next batch of records, taking in the containers met on the way; `None` at the
    /// segment's end. A batch whose `count` records `skip` refuses is not decompressed
    /// (the `RecordBatch` is then empty).
    pub fn next_batch(
        &mut self,
        skip: impl Fn(u32) -> bool,
    ) -> io::Result<Option<(u32, RecordBatch)>> {
        loop {
            let Some(frame) = self
                .frames
                .next(|kind, count| kind == RECORDS && skip(count))?
            else {
                return Ok(None);
            };
            match (frame.kind, frame.stored) {
                (CONTAINERS, Some(json)) => {
                    let joined: Vec<(u64, ContainerMeta)> = serde_json::from_slice(&json)?;
                    let containers = Arc::make_mut(&mut self.renderer.containers);
                    for (cgroup_id, container) in joined {
                        containers.insert(cgroup_id, Arc::new(container));
                    }
                }
                (RECORDS, None) => return Ok(Some((frame.count, RecordBatch::default()))),
                (RECORDS, Some(stored)) => {
                    let raw = lz4_flex::block::decompress(&stored, frame.raw_len)
                        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
                    let batch = RecordBatch::from_packed(Bytes::from(raw))
                        .filter(|batch| batch.len() == frame.count as usize)
                        .ok_or_else(|| {
                            io::Error::new(io::ErrorKind::InvalidData, "a torn records frame")
                        })?;
                    return Ok(Some((frame.count, batch)));
                }
                _ => {}
            }
        }
    }
}

/// A segment's events and the length of its whole frames (for finishing one a crash left
/// open: what follows is a torn frame).
pub fn whole_frames(path: &Path) -> io::Result<(u64, u64)> {
    let mut input = BufReader::new(File::open(path)?);
    let mut magic = [0u8; MAGIC.len()];
    if !read_whole(&mut input, &mut magic)? || &magic != MAGIC {
        return Ok((0, 0));
    }
    let mut frames = Frames { input };
    let (mut events, mut len) = (0u64, MAGIC.len() as u64);
    while let Some(frame) = frames.next(|_, _| true)? {
        if frame.kind == RECORDS {
            events += u64::from(frame.count);
        }
        len += frame.len;
    }
    Ok((events, len))
}
