//! Segments of the first format (before the log stored records): NDJSON lines, rendered when written, in
//! gzip streams (`SEQ.ndjson.gz`, `SEQ-EVENTS.ndjson.gz`). Nothing writes them any more;
//! they stay readable, so nobody loses a recorded session by upgrading.
use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
};

use flate2::read::MultiGzDecoder;

/// The file name suffix of segments in this format.
pub const SUFFIX: &str = ".ndjson.gz";

pub fn count_lines(path: &Path) -> io::Result<u64> {
    let mut count = 0;
    read_lines(path, |_| {
        count += 1;
        true
    })?;
    Ok(count)
}

/// Calls `each` with every complete line of one segment (without its newline), stopping
/// early when `each` returns false. An unfinished segment ends at its last sync flush.
pub fn read_lines(path: &Path, each: impl FnMut(&[u8]) -> bool) -> io::Result<bool> {
    match File::open(path) {
        Ok(file) => read_file_lines(file, each),
        // Evicted between listing and opening: nothing left to read.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(err) => Err(err),
    }
}

/// [`read_lines`] of a segment already open.
pub fn read_file_lines(file: File, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<bool> {
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
