//! The spool's first format, a frame per span (`<16 hex digits>.spool` segments read from
//! `cursor`): what an older tracerd left unsent is read once, as batches, and removed, so an
//! upgrade loses none of it.
use std::{collections::HashMap, fs, path::Path, sync::Arc};

use tracer_common::SyscallRecord;

use super::{BatchBuilder, ContainerMeta, SpanBatch, WallClock};

/// Takes the unsent spans of a first-format spool in `dir` (none if there is none), oldest
/// first, and removes its files.
pub fn take(dir: &Path) -> std::io::Result<Vec<SpanBatch>> {
    let mut segments: Vec<(u64, std::path::PathBuf)> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let hex = name.to_str()?.strip_suffix(".spool")?;
            Some((u64::from_str_radix(hex, 16).ok()?, entry.path()))
        })
        .collect();
    if segments.is_empty() {
        return Ok(Vec::new());
    }
    segments.sort_unstable();
    let cursor = fs::read_to_string(dir.join("cursor"))
        .ok()
        .and_then(|text| {
            let (segment, offset) = text.trim().split_once(' ')?;
            Some((segment.parse::<u64>().ok()?, offset.parse::<usize>().ok()?))
        });
    let mut batches = Batches::default();
    for (segment, path) in &segments {
        let skip = match cursor {
            Some((read, _)) if *segment < read => continue,
            Some((read, offset)) if *segment == read => offset,
            _ => 0,
        };
        let data = fs::read(path)?;
        let mut at = skip.min(data.len());
        while let Some(len) = frame_len(&data, at) {
            match decode(&data[at + 4..at + 4 + len]) {
                Some((record, clock, item, container)) => {
                    batches.push(&record, clock, &item, container);
                }
                None => {
                    tracing::warn!(spool = %path.display(), "a corrupt span in a spool of the first format is left out");
                }
            }
            at += 4 + len;
        }
    }
    let taken = batches.finish();
    for (_, path) in segments {
        fs::remove_file(path)?;
    }
    let _ = fs::remove_file(dir.join("cursor"));
    tracing::info!(dir = %dir.display(), spans = taken.iter().map(SpanBatch::len).sum::<usize>(), "converted a span spool of the first format");
    Ok(taken)
}

/// Groups consecutive spans of one run (one wall clock) into batches.
#[derive(Default)]
struct Batches {
    done: Vec<SpanBatch>,
    builder: BatchBuilder,
    clock: Option<WallClock>,
    containers: HashMap<u64, Arc<ContainerMeta>>,
}

impl Batches {
    fn push(
        &mut self,
        record: &SyscallRecord,
        clock: WallClock,
        data: &[u8],
        container: Option<ContainerMeta>,
    ) {
        if self.clock.is_some_and(|current| current != clock) {
            self.cut();
        }
        self.clock = Some(clock);
        if let Some(container) = container {
            self.containers
                .insert(record.cgroup_id, Arc::new(container));
        }
        self.builder.push(record, data);
    }

    fn cut(&mut self) {
        if let Some(clock) = self.clock.take() {
            self.done.push(SpanBatch {
                records: self.builder.take(),
                containers: Arc::new(std::mem::take(&mut self.containers)),
                clock,
            });
        }
    }

    fn finish(mut self) -> Vec<SpanBatch> {
        self.cut();
        self.done.retain(|batch| !batch.is_empty());
        self.done
    }
}

/// The length of the frame at `at`, if a whole frame is there.
fn frame_len(data: &[u8], at: usize) -> Option<usize> {
    let len = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
    (data.len() >= at + 4 + len).then_some(len)
}

/// A first-format frame: record (its bytes) | the run's wall-clock offset (i128) | captured
/// argument data (u16 length) | container flag (u8) and id, name, image (u16 length each).
fn decode(frame: &[u8]) -> Option<(SyscallRecord, WallClock, Vec<u8>, Option<ContainerMeta>)> {
    let mut rest = frame;
    let mut take = |len: usize| {
        let (head, tail) = (rest.get(..len)?, rest.get(len..)?);
        rest = tail;
        Some(head)
    };
    let bytes = take(SyscallRecord::SIZE)?;
    // SAFETY: SIZE bytes of a record; every bit pattern is valid, and the read needs no
    // alignment.
    let record: SyscallRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let clock = WallClock::from_offset_ns(i128::from_le_bytes(take(16)?.try_into().ok()?));
    let data_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let data = take(data_len)?.to_vec();
    let container = match take(1)?[0] {
        0 => None,
        _ => {
            let mut string = || {
                let len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
                Some(String::from_utf8_lossy(take(len)?).into_owned())
            };
            Some(ContainerMeta {
                id: string()?,
                name: string()?,
                image: string()?,
            })
        }
    };
    Some((record, clock, data, container))
}
