//! Finishing segments that were never finished: a daemon killed while writing, or a write
//! that failed when the disk was full, leaves a segment named without its number of events,
//! maybe ending in a torn frame. Readers read such a segment to its last whole frame; it is
//! cut there and renamed with its number of events. (A segment of the old format is a gzip
//! stream without its end, which `gzip -t` calls truncated: it is rewritten.)
use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::Path,
};

use flate2::{write::GzEncoder, Compression};

use super::{ndjson::read_lines, segment, segment_files, Format, SegmentFile};

/// Finishes every unfinished segment of the session log in `dir` (none may be being
/// written). Returns how many were finished; stops at the first that cannot be.
pub fn finish_unfinished(dir: &Path) -> io::Result<usize> {
    let mut finished = 0;
    for segment in segment_files(dir)? {
        if segment.events.is_none() {
            finish(dir, &segment)?;
            finished += 1;
        }
    }
    Ok(finished)
}

/// Finishes the unfinished segments of every session under `sessions_dir` (at start-up, before
/// any session writes). Best effort: what cannot be finished now (a full disk) stays readable.
pub fn finish_all(sessions_dir: &Path) {
    let Ok(sessions) = fs::read_dir(sessions_dir) else {
        return;
    };
    for session in sessions.flatten() {
        match finish_unfinished(&session.path()) {
            Ok(0) => {}
            Ok(finished) => tracing::info!(
                dir = %session.path().display(), finished,
                "finished event-log segments a previous run left unfinished"
            ),
            Err(err) => tracing::warn!(
                dir = %session.path().display(), %err,
                "an unfinished event-log segment could not be finished (it stays readable)"
            ),
        }
    }
}

fn finish(dir: &Path, segment: &SegmentFile) -> io::Result<()> {
    match segment.format {
        Format::Records => finish_records(dir, segment),
        Format::Ndjson => finish_ndjson(dir, segment),
    }
}

/// Cuts an unfinished segment after its last whole frame and names it with its number of
/// events (removed if it holds none).
fn finish_records(dir: &Path, unfinished: &SegmentFile) -> io::Result<()> {
    let (events, whole_len) = segment::whole_frames(&unfinished.path)?;
    if events == 0 {
        return fs::remove_file(&unfinished.path);
    }
    fs::OpenOptions::new()
        .write(true)
        .open(&unfinished.path)?
        .set_len(whole_len)?;
    let finished = SegmentFile::closed_name(unfinished.first_seq, events, Format::Records);
    fs::rename(&unfinished.path, dir.join(finished))
}

/// Rewrites one unfinished segment of the old format as `SEQ-EVENTS.ndjson.gz` (removed if
/// it holds no complete event). The original stays until the new one is complete.
fn finish_ndjson(dir: &Path, segment: &SegmentFile) -> io::Result<()> {
    let temporary = dir.join(format!("{:020}.repair", segment.first_seq));
    let written = write_finished(segment, &temporary);
    let events = match written {
        Ok(events) => events,
        Err(err) => {
            let _ = fs::remove_file(&temporary);
            return Err(err);
        }
    };
    if events > 0 {
        let finished = dir.join(SegmentFile::closed_name(
            segment.first_seq,
            events,
            Format::Ndjson,
        ));
        fs::rename(&temporary, finished)?;
    } else {
        fs::remove_file(&temporary)?;
    }
    fs::remove_file(&segment.path)
}

/// Copies the segment's complete lines into a finished gzip file; returns their number.
fn write_finished(segment: &SegmentFile, to: &Path) -> io::Result<u64> {
    let mut encoder = GzEncoder::new(File::create(to)?, Compression::fast());
    let mut events = 0u64;
    let mut failed = None;
    read_lines(&segment.path, |line| {
        let written = encoder
            .write_all(line)
            .and_then(|()| encoder.write_all(b"\n"));
        events += 1;
        match written {
            Ok(()) => true,
            Err(err) => {
                failed = Some(err);
                false
            }
        }
    })?;
    if let Some(err) = failed {
        return Err(err);
    }
    encoder.finish()?.sync_all()?;
    Ok(events)
}
