//! Replays the fuzz inputs through the parsers: the pages and format files captured from a
//! kernel (`fuzz/seeds/`) parse cleanly, and everything fuzzing kept (`fuzz/corpus/`) is
//! handled without a panic.
use std::{fs, path::PathBuf};

use tracefs_parse::{EventFormat, Page, PageHeaderLayout};

/// The files of `fuzz/<set>/<target>/`.
fn inputs(set: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(set)
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn layout() -> PageHeaderLayout {
    let header_page = inputs("seeds", "format")
        .into_iter()
        .find(|(name, _)| name == "header_page")
        .expect("fuzz/seeds/format/header_page");
    PageHeaderLayout::parse(std::str::from_utf8(&header_page.1).unwrap()).unwrap()
}

#[test]
fn captured_format_files_parse() {
    let formats = inputs("seeds", "format");
    assert!(formats.len() >= 5);
    for (name, bytes) in formats {
        let text = std::str::from_utf8(&bytes).unwrap();
        if name == "header_page" {
            assert_eq!(PageHeaderLayout::parse(text).unwrap().page_size(), 4096);
        } else {
            let format = EventFormat::parse(text).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(format.name, name);
            assert!(format.field("common_pid").is_ok(), "{name}");
        }
    }
}

#[test]
fn captured_pages_parse_into_events() {
    let layout = layout();
    let mut total = 0;
    for (name, bytes) in inputs("seeds", "page") {
        let page = Page::parse(&layout, &bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        let mut last = page.timestamp;
        for event in page.events() {
            let event = event.unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(event.timestamp >= last, "{name}: time went back");
            assert!(event.record.len() >= 8, "{name}");
            last = event.timestamp;
            total += 1;
        }
    }
    assert!(total > 100, "only {total} events in the captured pages");
}

#[test]
fn the_fuzz_corpus_is_handled_without_panics() {
    let layout = layout();
    let pages = inputs("corpus", "page");
    let formats = inputs("corpus", "format");
    assert!(!pages.is_empty() && !formats.is_empty());
    for (_, bytes) in pages {
        if let Ok(page) = Page::parse(&layout, &bytes) {
            for event in page.events() {
                if event.is_err() {
                    break;
                }
            }
        }
    }
    for (_, bytes) in formats {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let _ = PageHeaderLayout::parse(text);
        if let Ok(format) = EventFormat::parse(text) {
            for field in &format.fields {
                let _ = (field.read_u64(&bytes), field.read_str(&bytes));
            }
        }
    }
}
