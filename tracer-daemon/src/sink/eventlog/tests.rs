//! The event log against real files: reading while writing, crashes, caps, filters.
use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracerd-eventlog-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn line(ts: i128, syscall: &str) -> Vec<u8> {
    format!("{{\"ts_unix_ns\":{ts},\"syscall\":\"{syscall}\"}}\n").into_bytes()
}

fn all(dir: &Path, filter: &EventFilter) -> Vec<String> {
    let mut lines = Vec::new();
    read_events(dir, filter, |line| {
        lines.push(String::from_utf8(line.to_vec()).unwrap());
        true
    })
    .unwrap();
    lines
}

#[test]
fn events_are_readable_while_the_segment_is_open_and_after_it_is_closed() {
    let dir = temp_dir("open");
    let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    writer
        .append(&[line(1, "read"), line(2, "write")].concat(), 2)
        .unwrap();
    assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
    writer.append(&line(3, "read"), 1).unwrap();
    assert_eq!(all(&dir, &EventFilter::default()).len(), 3);
    writer.finish().unwrap();
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["00000000000000000001-3.ndjson.gz"]);
    assert_eq!(all(&dir, &EventFilter::default()).len(), 3);
    // A new writer (a new run) continues in a new segment, after the old one.
    let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    writer.append(&line(4, "openat"), 1).unwrap();
    let lines = all(&dir, &EventFilter::default());
    assert_eq!(lines.len(), 4);
    assert!(lines[3].contains("openat"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_segment_left_open_by_a_dead_daemon_is_read_to_its_last_flush() {
    let dir = temp_dir("crash");
    let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    writer
        .append(&[line(1, "read"), line(2, "read")].concat(), 2)
        .unwrap();
    // The process dies: the encoder is never finished.
    std::mem::forget(writer);
    assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn filters_by_time_range_and_syscall() {
    let dir = temp_dir("filter");
    let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    let batch: Vec<u8> = (0..10)
        .flat_map(|ts| line(ts, if ts % 2 == 0 { "read" } else { "write" }))
        .collect();
    writer.append(&batch, 10).unwrap();
    let filter = EventFilter {
        since_unix_ns: Some(3),
        until_unix_ns: Some(8),
        syscalls: Some(vec!["write".into()]),
        ..EventFilter::default()
    };
    let lines = all(&dir, &filter);
    assert_eq!(
        lines,
        [3, 5, 7].map(|ts| format!("{{\"ts_unix_ns\":{ts},\"syscall\":\"write\"}}"))
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cap_evicts_the_oldest_segments_and_counts_their_events() {
    let dir = temp_dir("cap");
    // A 256 KiB cap makes 64 KiB segments; write ~3.5 MiB of poorly compressible lines.
    const CAP: u64 = 256 << 10;
    let mut writer = EventLogWriter::open(&dir, CAP).unwrap();
    let mut evicted = 0;
    let mut written = 0u64;
    let mut state = 1u64;
    for batch in 0..2000 {
        let lines: Vec<u8> = (0..20)
            .flat_map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                format!(
                    "{{\"ts_unix_ns\":{},\"syscall\":\"read\",\"noise\":\"{state:x}{:x}\"}}\n",
                    batch * 20 + i,
                    state.rotate_left(17)
                )
                .into_bytes()
            })
            .collect();
        evicted += writer.append(&lines, 20).unwrap();
        written += 20;
    }
    writer.finish().unwrap();
    let total: u64 = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // Within the cap, give or take the segment being written when it was last checked.
    assert!(total <= CAP + (64 << 10) * 2, "{total} bytes on disk");
    assert!(evicted > 0);
    let remaining = all(&dir, &EventFilter::default());
    assert_eq!(remaining.len() as u64 + evicted, written);
    // What is left is the newest, in order.
    assert!(remaining
        .last()
        .unwrap()
        .contains(&format!("\"ts_unix_ns\":{}", written - 1)));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn events_are_numbered_across_runs_and_read_from_a_seq_with_gaps_reported() {
    let dir = temp_dir("seq");
    let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    assert_eq!(writer.next_seq(), 1);
    let batch: Vec<u8> = (0..5).flat_map(|ts| line(ts, "read")).collect();
    writer.append(&batch, 5).unwrap();
    writer.finish().unwrap();
    let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    assert_eq!(writer.next_seq(), 6, "a new run goes on from the last");
    writer.append(&line(5, "write"), 1).unwrap();
    // The log is read from after seq 3: events 4, 5 and 6.
    let from = |after| {
        let mut lines = Vec::new();
        let filter = EventFilter {
            after_seq: Some(after),
            ..EventFilter::default()
        };
        let position = read_events(&dir, &filter, |line| {
            lines.push(String::from_utf8(line.to_vec()).unwrap());
            true
        })
        .unwrap();
        (lines.len(), position)
    };
    assert_eq!(
        from(3),
        (
            3,
            ReadPosition {
                next_seq: 7,
                gap: 0
            }
        )
    );
    // The first run's segment evicted: asking from the start reports 5 missing.
    fs::remove_file(dir.join("00000000000000000001-5.ndjson.gz")).unwrap();
    assert_eq!(
        from(0),
        (
            1,
            ReadPosition {
                next_seq: 7,
                gap: 5
            }
        )
    );
    assert_eq!(from(6).0, 0);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn filters_by_process_name_and_failure() {
    let filter = EventFilter {
        pid: Some(7),
        comm: Some("nginx".into()),
        failed: true,
        ..EventFilter::default()
    };
    let event = |pid: u32, comm: &str, ret: i64| {
        format!(r#"{{"ts_unix_ns":1,"syscall":"openat","pid":{pid},"comm":"{comm}","ret":{ret}}}"#)
    };
    assert!(filter.accepts(event(7, "nginx", -2).as_bytes()));
    assert!(!filter.accepts(event(8, "nginx", -2).as_bytes()));
    assert!(!filter.accepts(event(7, "bash", -2).as_bytes()));
    assert!(!filter.accepts(event(7, "nginx", 3).as_bytes()));
}

/// Whether a file is a complete gzip stream (what `gzip -t` checks).
fn is_complete_gzip(path: &Path) -> bool {
    let mut decoder = flate2::read::MultiGzDecoder::new(File::open(path).unwrap());
    io::copy(&mut decoder, &mut io::sink()).is_ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_failed_write_leaves_what_was_flushed_and_the_next_goes_to_a_new_segment() {
    let dir = temp_dir("abandon");
    let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    writer
        .append(&[line(1, "read"), line(2, "read")].concat(), 2)
        .unwrap();
    // What a write failing half-way (the disk full) does to the open segment.
    writer.abandon_current();
    assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
    writer.append(&line(3, "write"), 1).unwrap();
    assert_eq!(
        names(&dir),
        [
            "00000000000000000001.ndjson.gz",
            "00000000000000000003.ndjson.gz"
        ]
    );
    writer.finish().unwrap();
    assert_eq!(
        names(&dir),
        [
            "00000000000000000001-2.ndjson.gz",
            "00000000000000000003-1.ndjson.gz"
        ]
    );
    for name in names(&dir) {
        assert!(is_complete_gzip(&dir.join(name)));
    }
    assert_eq!(all(&dir, &EventFilter::default()).len(), 3);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_segment_a_dead_daemon_left_is_finished_when_the_log_is_next_opened() {
    let dir = temp_dir("finish-after-crash");
    let mut writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    writer
        .append(&[line(1, "read"), line(2, "read")].concat(), 2)
        .unwrap();
    std::mem::forget(writer);
    let left = dir.join("00000000000000000001.ndjson.gz");
    assert!(!is_complete_gzip(&left), "truncated, as gzip -t says");
    let writer = EventLogWriter::open(&dir, 1 << 30).unwrap();
    assert_eq!(writer.next_seq(), 3);
    assert_eq!(names(&dir), ["00000000000000000001-2.ndjson.gz"]);
    assert!(is_complete_gzip(
        &dir.join("00000000000000000001-2.ndjson.gz")
    ));
    assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
    fs::remove_dir_all(&dir).unwrap();
}
