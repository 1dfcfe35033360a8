//! Any text as an event `format` file or a `header_page`: parsing never panics, and reading
//! any parsed field from any record never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracefs_parse::{EventFormat, PageHeaderLayout};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(layout) = PageHeaderLayout::parse(text) {
        assert!(layout.page_size() > layout.data_offset);
    }
    if let Ok(format) = EventFormat::parse(text) {
        for field in &format.fields {
            // The format's own bytes stand in for a record.
            let _ = field.read_u64(bytes);
            let _ = field.read_str(bytes);
            let _ = field.read_element(bytes, 1, 8);
        }
    }
});
