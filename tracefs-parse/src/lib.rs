//! Parsers for what the kernel's tracing filesystem (tracefs) hands a reader of raw events:
//!
//! - [`format`]: an event's `events/<system>/<event>/format` file (its id and field layout)
//!   and `events/header_page` (the layout of a ring-buffer page's header);
//! - [`page`]: the binary ring-buffer pages read from `per_cpu/cpuN/trace_pipe_raw`.
//!
//! Nothing is hard-coded: offsets and sizes come from the running kernel's own description
//! files, read at runtime. Every parser takes untrusted bytes and returns an error instead of
//! panicking (they are fuzzed: see `fuzz/` at the repository root).
//!
//! Why not a crate: `tracepoint_decode` parses format files but not ring-buffer pages, and
//! libtraceevent is C. The page format is small and stable (`kbuffer-parse.c` in
//! libtraceevent is the reference reader this follows).
pub mod format;
pub mod page;

pub use format::{EventFormat, Field, FormatError, PageHeaderLayout};
pub use page::{Page, PageError, PageEvent};

/// Reads a tracefs description file (`header_page`, an event's `format`) whole.
///
/// Use this rather than `std::fs::read_to_string`: the kernel serves `header_page` only to a
/// read whose buffer holds all of it (it caps what it offers at the first read's size), and
/// std starts with a 32-byte probe read.
pub fn read_description(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut text = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => text.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8(text).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
}
