//! Replays the fuzz corpus (`fuzz/corpus/`) through the parsers: every input is handled
//! without a panic, and the real pages and format files captured from a kernel parse cleanly.
use std::{fs, path::PathBuf};

use tracefs_parse::{EventFormat, Page, PageHeaderLayout};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
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
    let header_page = corpus("format")
        .into_iter()
        .find(|(name, _)| name == "header_page")
        .expect("fuzz/corpus/format/header_page");
    PageHeaderLayout::parse(std::str::from_utf8(&header_page.1).unwrap()).unwrap()
}

#[test]
fn captured_format_files_parse() {
    let formats = corpus("format");
    assert!(formats.len() >= 5);
    for (name, bytes) in formats {
        // Fuzzer-found inputs may be anything; only the captured files must parse.
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if name == "header_page" {
            assert_eq!(PageHeaderLayout::parse(text).unwrap().page_size(), 4096);
        } else if !name.contains('-') && name.len() < 40 {
            let format = EventFormat::parse(text).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(format.name, name);
            assert!(format.field("common_pid").is_ok(), "{name}");
        } else {
            let _ = EventFormat::parse(text);
        }
    }
}

#[test]
fn captured_pages_parse_into_events() {
    let layout = layout();
    let mut total = 0;
    for (name, bytes) in corpus("page") {
        // Fuzzer-found inputs may be anything; captured pages are named `cpuN-pageM`.
        let captured = name.starts_with("cpu");
        match Page::parse(&layout, &bytes) {
            Ok(page) => {
                let mut last = page.timestamp;
                for event in page.events() {
                    match event {
                        Ok(event) => {
                            total += 1;
                            if captured {
                                assert!(event.timestamp >= last, "{name}: time went back");
                                assert!(event.record.len() >= 8, "{name}");
                            }
                            last = event.timestamp;
                        }
                        Err(err) => assert!(!captured, "{name}: {err}"),
                    }
                }
            }
            Err(err) => assert!(!captured, "{name}: {err}"),
        }
    }
    assert!(total > 100, "only {total} events in the captured pages");
}
