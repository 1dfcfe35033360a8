//! Any bytes as a ring-buffer page: parsing and walking its events never panics, and every
//! event's record lies inside the page.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracefs_parse::{Page, PageHeaderLayout};

/// x86_64's layout (`events/header_page` on a 64-bit kernel).
const LAYOUT: PageHeaderLayout = PageHeaderLayout {
    timestamp_offset: 0,
    timestamp_size: 8,
    commit_offset: 8,
    commit_size: 8,
    data_offset: 16,
    data_size: 4080,
};

fuzz_target!(|bytes: &[u8]| {
    let Ok(page) = Page::parse(&LAYOUT, bytes) else {
        return;
    };
    let range = bytes.as_ptr_range();
    for event in page.events() {
        let Ok(event) = event else { break };
        let inside = event.record.as_ptr_range();
        assert!(range.start <= inside.start && inside.end <= range.end);
    }
});
