//! Prints a summary of a file of raw ring-buffer pages (as read from `trace_pipe_raw`):
//! events per type id, missed events, and any parse error.
//!
//! `cargo run -p tracefs-parse --example dump_pages -- /sys/kernel/tracing/events/header_page FILE`
use std::collections::BTreeMap;

use tracefs_parse::{Page, PageHeaderLayout};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(header_page), Some(file)) = (args.next(), args.next()) else {
        return Err("usage: dump_pages HEADER_PAGE FILE".into());
    };
    let layout = PageHeaderLayout::parse(&tracefs_parse::read_description(header_page)?)?;
    let bytes = std::fs::read(file)?;
    let mut per_type = BTreeMap::<u16, u64>::new();
    let (mut first, mut last) = (u64::MAX, 0);
    for (index, chunk) in bytes.chunks(layout.page_size()).enumerate() {
        let page = Page::parse(&layout, chunk)?;
        println!(
            "page {index}: ts {} missed {:?}",
            page.timestamp, page.missed
        );
        for event in page.events() {
            let event = event?;
            let kind = u16::from_ne_bytes([event.record[0], event.record[1]]);
            *per_type.entry(kind).or_default() += 1;
            first = first.min(event.timestamp);
            last = last.max(event.timestamp);
        }
    }
    println!("events per type id: {per_type:?}; timestamps {first}..{last}");
    Ok(())
}
