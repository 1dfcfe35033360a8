//! The event log against real files: reading while writing, crashes, torn frames, caps,
//! filters, containers, and segments of the old format.
use std::{io::Write as _, sync::Arc};

use syscalls::Sysno;
use uuid::Uuid;

use super::*;
use crate::{
    record::{
        batch::{BatchBuilder, RecordBatch},
        decode::Limits,
        samples, ContainerMeta, WallClock,
    },
    sink::render::RunContext,
};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracerd-eventlog-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Wall clock = monotonic clock: an event's `ts_unix_ns` is its record's `enter_ns`.
fn open(dir: &Path, cap: u64) -> EventLogWriter {
    let context = RunContext::new(Uuid::nil(), WallClock::from_offset_ns(0), Limits::default());
    EventLogWriter::open(dir, cap, context).unwrap()
}

/// Records of `(enter_ns, syscall)`, by process 1 in cgroup 7.
fn batch(events: &[(u64, Sysno)]) -> RecordBatch {
    let mut builder = BatchBuilder::default();
    for (ts, nr) in events {
        let mut record = samples::record(nr.id() as u32, 1, 1, 7);
        record.enter_ns = *ts;
        builder.push(&record, &[]);
    }
    builder.take()
}

fn all(dir: &Path, filter: &EventFilter) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    read_events(dir, filter, |line: &[u8]| {
        lines.push(serde_json::from_slice(line).unwrap());
        true
    })
    .unwrap();
    lines
}

fn field(lines: &[serde_json::Value], name: &str) -> Vec<serde_json::Value> {
    lines.iter().map(|line| line[name].clone()).collect()
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
fn events_are_readable_while_the_segment_is_open_and_after_it_is_closed() {
    let dir = temp_dir("open");
    let mut writer = open(&dir, 1 << 30);
    writer
        .append(&batch(&[(1, Sysno::read), (2, Sysno::write)]))
        .unwrap();
    assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
    writer.append(&batch(&[(3, Sysno::read)])).unwrap();
    let lines = all(&dir, &EventFilter::default());
    assert_eq!(field(&lines, "seq"), [1, 2, 3]);
    assert_eq!(field(&lines, "syscall"), ["read", "write", "read"]);
    assert_eq!(field(&lines, "ts_unix_ns"), [1, 2, 3]);
    writer.finish().unwrap();
    assert_eq!(names(&dir), ["00000000000000000001-3.tlog"]);
    assert_eq!(all(&dir, &EventFilter::default()).len(), 3);
    // A new writer (a new run) continues in a new segment, after the old one.
    let mut writer = open(&dir, 1 << 30);
    writer.append(&batch(&[(4, Sysno::openat)])).unwrap();
    let lines = all(&dir, &EventFilter::default());
    assert_eq!(field(&lines, "seq"), [1, 2, 3, 4]);
    assert_eq!(lines[3]["syscall"], "openat");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_segment_a_dead_daemon_left_is_read_to_its_last_whole_frame_then_finished() {
    let dir = temp_dir("crash");
    let mut writer = open(&dir, 1 << 30);
    writer
        .append(&batch(&[(1, Sysno::read), (2, Sysno::read)]))
        .unwrap();
    // The process dies in the middle of its next write: half a frame is in the file.
    std::mem::forget(writer);
    let left = dir.join("00000000000000000001.tlog");
    let whole = fs::metadata(&left).unwrap().len();
    let mut file = fs::OpenOptions::new().append(true).open(&left).unwrap();
    file.write_all(&[3, 9, 0, 0, 0, 200, 4, 0, 0, 80]).unwrap();
    drop(file);
    assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
    assert_eq!(recorded_events(&dir).unwrap(), 2);
    let writer = open(&dir, 1 << 30);
    assert_eq!(writer.next_seq(), 3);
    assert_eq!(names(&dir), ["00000000000000000001-2.tlog"]);
    let finished = dir.join("00000000000000000001-2.tlog");
    assert_eq!(
        fs::metadata(finished).unwrap().len(),
        whole,
        "the torn frame is cut"
    );
    assert_eq!(all(&dir, &EventFilter::default()).len(), 2);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_segment_with_no_whole_event_is_removed_when_finished() {
    let dir = temp_dir("empty");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("00000000000000000001.tlog"),
        b"tracerd\x01\x01\x00",
    )
    .unwrap();
    assert!(all(&dir, &EventFilter::default()).is_empty());
    let writer = open(&dir, 1 << 30);
    assert_eq!(writer.next_seq(), 1);
    assert!(names(&dir).is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn filters_by_time_range_syscall_process_name_and_failure() {
    let dir = temp_dir("filter");
    let mut writer = open(&dir, 1 << 30);
    let mut builder = BatchBuilder::default();
    for ts in 0..10u64 {
        let nr = if ts % 2 == 0 {
            Sysno::read
        } else {
            Sysno::write
        };
        let mut record = samples::record(nr.id() as u32, 1 + (ts % 3) as u32, 1, 7);
        record.enter_ns = ts;
        record.ret = if ts == 5 { -2 } else { 0 };
        builder.push(&record, &[]);
    }
    writer.append(&builder.take()).unwrap();
    let range = EventFilter {
        since_unix_ns: Some(3),
        until_unix_ns: Some(8),
        syscalls: Some(vec!["write".into()]),
        ..EventFilter::default()
    };
    assert_eq!(field(&all(&dir, &range), "ts_unix_ns"), [3, 5, 7]);
    let process = EventFilter {
        pid: Some(2),
        comm: Some("test".into()),
        ..EventFilter::default()
    };
    assert_eq!(field(&all(&dir, &process), "ts_unix_ns"), [1, 4, 7]);
    let failed = EventFilter {
        failed: true,
        ..EventFilter::default()
    };
    assert_eq!(field(&all(&dir, &failed), "seq"), [6]);
    let other_comm = EventFilter {
        comm: Some("bash".into()),
        ..EventFilter::default()
    };
    assert!(all(&dir, &other_comm).is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

/// A batch of `n` records whose arguments are noise (they compress poorly).
fn noisy_batch(first_ts: u64, n: u64, state: &mut u64) -> RecordBatch {
    let mut builder = BatchBuilder::default();
    for i in 0..n {
        let mut record = samples::record(0, 1, 1, 7);
        record.enter_ns = first_ts + i;
        for arg in &mut record.args {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *arg = *state;
        }
        builder.push(&record, &[]);
    }
    builder.take()
}

#[test]
fn the_cap_evicts_the_oldest_segments_and_counts_their_events() {
    let dir = temp_dir("cap");
    // A 256 KiB cap makes 64 KiB segments; write ~3 MiB of poorly compressible records.
    const CAP: u64 = 256 << 10;
    let mut writer = open(&dir, CAP);
    let (mut evicted, mut written, mut state) = (0, 0u64, 1u64);
    for _ in 0..500 {
        evicted += writer
            .append(&noisy_batch(written, 50, &mut state))
            .unwrap();
        written += 50;
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
    assert_eq!(remaining.last().unwrap()["seq"], written);
    assert_eq!(remaining.last().unwrap()["ts_unix_ns"], written - 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn events_are_numbered_across_runs_and_read_from_a_seq_with_gaps_reported() {
    let dir = temp_dir("seq");
    let mut writer = open(&dir, 1 << 30);
    assert_eq!(writer.next_seq(), 1);
    let five: Vec<(u64, Sysno)> = (0..5).map(|ts| (ts, Sysno::read)).collect();
    writer.append(&batch(&five)).unwrap();
    writer.finish().unwrap();
    let mut writer = open(&dir, 1 << 30);
    assert_eq!(writer.next_seq(), 6, "a new run goes on from the last");
    writer.append(&batch(&[(5, Sysno::write)])).unwrap();
    let from = |after| {
        let filter = EventFilter {
            after_seq: Some(after),
            ..EventFilter::default()
        };
        let mut seqs = Vec::new();
        let position = read_events(&dir, &filter, |line: &[u8]| {
            let line: serde_json::Value = serde_json::from_slice(line).unwrap();
            seqs.push(line["seq"].as_u64().unwrap());
            true
        })
        .unwrap();
        (seqs, position.next_seq, position.gap)
    };
    assert_eq!(from(3), (vec![4, 5, 6], 7, 0));
    // The first run's segment evicted: asking from the start reports 5 missing.
    fs::remove_file(dir.join("00000000000000000001-5.tlog")).unwrap();
    assert_eq!(from(0), (vec![6], 7, 5));
    assert_eq!(from(6), (vec![], 7, 0));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn events_name_their_container_in_every_segment_even_after_eviction() {
    let dir = temp_dir("containers");
    const CAP: u64 = 256 << 10;
    let mut writer = open(&dir, CAP);
    let web = ContainerMeta {
        id: "c0ffee".into(),
        name: "web".into(),
        image: "shop:1".into(),
    };
    writer.add_container(7, Arc::new(web));
    let (mut written, mut state) = (0u64, 1u64);
    for _ in 0..200 {
        writer
            .append(&noisy_batch(written, 50, &mut state))
            .unwrap();
        written += 50;
    }
    writer.finish().unwrap();
    assert!(names(&dir).len() > 1);
    let lines = all(&dir, &EventFilter::default());
    assert!(lines.iter().all(|line| line["container"]["name"] == "web"));
    fs::remove_dir_all(&dir).unwrap();
}

/// Writes a segment of the old format, as tracerd first did; `finished: false` leaves
/// its gzip stream without its end (a daemon that died).
fn old_segment(path: &Path, lines: &[String], finished: bool) {
    let mut encoder =
        flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
    for line in lines {
        encoder.write_all(line.as_bytes()).unwrap();
        encoder.write_all(b"\n").unwrap();
    }
    if finished {
        encoder.finish().unwrap();
    } else {
        encoder.flush().unwrap();
        std::mem::forget(encoder);
    }
}

fn old_line(seq: u64, syscall: &str) -> String {
    format!(
        r#"{{"seq":{seq},"ts_unix_ns":{seq},"syscall":"{syscall}","pid":1,"comm":"sh","ret":0}}"#
    )
}

/// Whether a file is a complete gzip stream (what `gzip -t` checks).
fn is_complete_gzip(path: &Path) -> bool {
    let mut decoder = flate2::read::MultiGzDecoder::new(File::open(path).unwrap());
    io::copy(&mut decoder, &mut io::sink()).is_ok()
}

#[test]
fn a_log_of_the_old_format_is_still_read_and_new_runs_continue_it() {
    let dir = temp_dir("old-format");
    fs::create_dir_all(&dir).unwrap();
    let first: Vec<String> = (1..=2).map(|seq| old_line(seq, "read")).collect();
    old_segment(&dir.join("00000000000000000001-2.ndjson.gz"), &first, true);
    // The old daemon died while writing its second run.
    let second = vec![old_line(3, "write")];
    old_segment(&dir.join("00000000000000000003.ndjson.gz"), &second, false);
    assert_eq!(recorded_events(&dir).unwrap(), 3);
    let reads = EventFilter {
        syscalls: Some(vec!["read".into()]),
        ..EventFilter::default()
    };
    assert_eq!(field(&all(&dir, &reads), "seq"), [1, 2]);
    // The new daemon finishes the old segment and goes on in its own format.
    let mut writer = open(&dir, 1 << 30);
    assert_eq!(writer.next_seq(), 4);
    writer.append(&batch(&[(9, Sysno::openat)])).unwrap();
    writer.finish().unwrap();
    assert_eq!(
        names(&dir),
        [
            "00000000000000000001-2.ndjson.gz",
            "00000000000000000003-1.ndjson.gz",
            "00000000000000000004-1.tlog"
        ]
    );
    assert!(is_complete_gzip(
        &dir.join("00000000000000000003-1.ndjson.gz")
    ));
    let lines = all(&dir, &EventFilter::default());
    assert_eq!(field(&lines, "seq"), [1, 2, 3, 4]);
    assert_eq!(
        field(&lines, "syscall"),
        ["read", "read", "write", "openat"]
    );
    let after_two = EventFilter {
        after_seq: Some(2),
        ..EventFilter::default()
    };
    assert_eq!(field(&all(&dir, &after_two), "seq"), [3, 4]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn old_lines_are_filtered_by_their_fields() {
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

#[test]
fn many_batches_read_back_in_order_filtered_resumed_and_stopped_early() {
    let dir = temp_dir("many");
    let mut writer = open(&dir, 1 << 30);
    // An odd number of batches: the last one is the helper's.
    for batch_index in 0..41u64 {
        let events: Vec<(u64, Sysno)> = (0..7)
            .map(|i| {
                let ts = batch_index * 7 + i;
                (
                    ts,
                    if ts % 3 == 0 {
                        Sysno::read
                    } else {
                        Sysno::write
                    },
                )
            })
            .collect();
        writer.append(&batch(&events)).unwrap();
    }
    let seqs = |filter: &EventFilter| -> Vec<u64> {
        all(&dir, filter)
            .iter()
            .map(|line| line["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&EventFilter::default()), (1..=287).collect::<Vec<_>>());
    let reads = EventFilter {
        syscalls: Some(vec!["read".into()]),
        ..EventFilter::default()
    };
    let expected: Vec<u64> = (1..=287).filter(|seq| (seq - 1) % 3 == 0).collect();
    assert_eq!(seqs(&reads), expected);
    let resumed = EventFilter {
        after_seq: Some(100),
        ..EventFilter::default()
    };
    assert_eq!(seqs(&resumed), (101..=287).collect::<Vec<_>>());
    // A reader that stops at its 50th line.
    let mut taken = 0;
    let position = read_events(&dir, &EventFilter::default(), |_: &[u8]| {
        taken += 1;
        taken < 50
    })
    .unwrap();
    // Reading stops there; where it says it got to is the end of the batch that line was in.
    assert_eq!(taken, 50);
    assert_eq!(position.next_seq, 57);
    fs::remove_dir_all(&dir).unwrap();
}
