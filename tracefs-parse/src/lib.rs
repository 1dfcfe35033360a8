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
