//! Finishing segments that were never finished: a daemon killed while writing, or a write
//! that failed when the disk was full, leaves a gzip stream without its end. Readers read such
//! a segment to its last flush, but `gzip -t` and other tools call it truncated: it is
//! rewritten as a finished segment, named with its number of events.
use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::Path,
};

use flate2::{write::GzEncoder, Compression};

use super::{read_lines, segment_files, SegmentFile};

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

/// Rewrites one unfinished segment as `SEQ-EVENTS.ndjson.gz` (removed if it holds no
/// complete event). The original stays until the new one is complete.
fn finish(dir: &Path, segment: &SegmentFile) -> io::Result<()> {
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
        let finished = dir.join(format!("{:020}-{events}.ndjson.gz", segment.first_seq));
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
