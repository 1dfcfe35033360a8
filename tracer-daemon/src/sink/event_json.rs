//! Events as JSON: the one shape every sink shows (event log downloads, live streams). See
//! docs/api.md for the fields.
//!
//! Written by hand rather than through serde's derive: a download renders millions of
//! lines, and what repeats from one line to the next (the session, the current second of
//! the timestamps) is rendered once; strings that may need escaping (names, paths, the
//! strace line, decoded values) still go through serde_json.
use uuid::Uuid;

use crate::record::{
    clock::rfc3339,
    decode::{self, Limits},
    syscalls::syscall_name,
    ContainerMeta, Event, WallClock,
};

/// Writes the event lines of one run.
pub struct LineWriter {
    /// `,"session":"<id>"`.
    session: Vec<u8>,
    /// The Unix second last written and its `YYYY-MM-DDTHH:MM:SS`.
    second: Option<(i64, [u8; 19])>,
}

impl LineWriter {
    pub fn new(session: &Uuid) -> Self {
        Self {
            session: format!(",\"session\":\"{session}\"").into_bytes(),
            second: None,
        }
    }

    /// Appends `event`, the session's `seq`-th, as one JSON line (with its newline) to `out`,
    /// its arguments decoded within `limits`.
    pub fn write(
        &mut self,
        event: &Event,
        container: Option<&ContainerMeta>,
        clock: &WallClock,
        limits: &Limits,
        seq: u64,
        out: &mut Vec<u8>,
    ) {
        let decoded = decode::decode(event, limits);
        let record = &event.record;
        let unix_ns = clock.unix_ns(record.enter_ns);
        out.extend_from_slice(b"{\"seq\":");
        integer(out, seq);
        out.extend_from_slice(b",\"ts\":\"");
        self.timestamp(unix_ns, out);
        out.extend_from_slice(b"\",\"ts_unix_ns\":");
        integer(out, unix_ns);
        // Syscall names are letters, digits and underscores: nothing to escape.
        out.extend_from_slice(b",\"syscall\":\"");
        match syscall_name(record.nr) {
            Some(name) => out.extend_from_slice(name.as_bytes()),
            None => {
                out.extend_from_slice(b"nr:");
                integer(out, record.nr);
            }
        }
        out.extend_from_slice(b"\",\"nr\":");
        integer(out, record.nr);
        out.extend_from_slice(b",\"pid\":");
        integer(out, record.tgid);
        out.extend_from_slice(b",\"tid\":");
        integer(out, record.tid);
        out.extend_from_slice(b",\"comm\":");
        json(out, &String::from_utf8_lossy(record.comm_bytes()));
        out.extend_from_slice(b",\"args\":[");
        for (index, arg) in decoded.args.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            integer(out, *arg);
        }
        out.extend_from_slice(b"],\"params\":{");
        for (index, (name, value)) in decoded.params.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            json(out, name);
            out.push(b':');
            json(out, value);
        }
        out.extend_from_slice(b"},\"strace\":");
        json(out, &decoded.strace);
        names(out, b",\"truncated\":", &decoded.truncated);
        names(out, b",\"unavailable\":", &decoded.unavailable);
        if let Some(path) = &event.path {
            out.extend_from_slice(b",\"path\":");
            json(out, path);
        }
        if event.path_truncated() {
            out.extend_from_slice(b",\"path_truncated\":true");
        }
        if event.path_unavailable() {
            out.extend_from_slice(b",\"path_unavailable\":true");
        }
        out.extend_from_slice(b",\"ret\":");
        integer(out, record.ret);
        out.extend_from_slice(b",\"duration_ns\":");
        integer(out, record.duration_ns);
        out.extend_from_slice(&self.session);
        out.extend_from_slice(b",\"cgroup_id\":");
        integer(out, record.cgroup_id);
        if let Some(container) = container {
            out.extend_from_slice(b",\"container\":");
            json(out, container);
        }
        out.extend_from_slice(b"}\n");
    }

    /// RFC 3339 in UTC with nanoseconds (`2023-11-14T22:13:20.000001000Z`); empty when out
    /// of range.
    fn timestamp(&mut self, unix_ns: i128, out: &mut Vec<u8>) {
        let (second, nanos) = (
            unix_ns.div_euclid(1_000_000_000),
            unix_ns.rem_euclid(1_000_000_000) as u32,
        );
        let Ok(second) = i64::try_from(second) else {
            return;
        };
        let prefix = match self.second {
            Some((cached, prefix)) if cached == second => prefix,
            _ => {
                let Some(prefix) = date_time(second) else {
                    return;
                };
                self.second = Some((second, prefix));
                prefix
            }
        };
        out.extend_from_slice(&prefix);
        out.push(b'.');
        let mut digits = itoa::Buffer::new();
        let nanos = digits.format(nanos).as_bytes();
        out.extend(std::iter::repeat_n(b'0', 9 - nanos.len()));
        out.extend_from_slice(nanos);
        out.push(b'Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second (UTC): the front of its RFC 3339 form, made once
/// per second; `None` unless the year has four digits.
fn date_time(second: i64) -> Option<[u8; 19]> {
    let at = time::OffsetDateTime::from_unix_timestamp(second).ok()?;
    if !(0..=9999).contains(&at.year()) {
        return None;
    }
    rfc3339(at).as_bytes().get(..19)?.try_into().ok()
}

fn integer(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A value as JSON, escaped as need be.
fn json(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    // Serialising plain values into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("serialising a value");
}

/// `key[names…]`, if there are any.
fn names(out: &mut Vec<u8>, key: &[u8], names: &[&str]) {
    if !names.is_empty() {
        out.extend_from_slice(key);
        json(out, names);
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{SyscallRecord, COMM_LEN};

    use super::*;

    #[test]
    fn an_event_has_every_documented_field() {
        let mut comm = [0u8; COMM_LEN];
        comm[..3].copy_from_slice(b"cat");
        let mut data = Vec::new();
        let string = tracer_common::capture_kind::STRING;
        crate::record::captured::push_item(string, 1, 0, b"/etc", 0, &mut data);
        let event = Event::new(
            &SyscallRecord {
                enter_ns: 1_000,
                duration_ns: 250,
                cgroup_id: 7,
                sessions: 1,
                args: [1, 2, 3, 4, 5, 6],
                ret: -2,
                tgid: 10,
                tid: 11,
                nr: syscalls::Sysno::openat.id() as u32,
                data_len: data.len() as u16,
                flags: tracer_common::record_flags::HAS_DATA,
                comm,
            },
            &data,
        );
        let session = Uuid::nil();
        let clock = WallClock::from_offset_ns(1_700_000_000_000_000_000);
        let mut out = Vec::new();
        let container = ContainerMeta {
            id: "c0ffee".into(),
            name: "web".into(),
            image: "shop:1".into(),
        };
        let limits = Limits::default();
        LineWriter::new(&session).write(&event, Some(&container), &clock, &limits, 42, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["seq"], 42);
        assert_eq!(json["ts"], "2023-11-14T22:13:20.000001000Z");
        assert_eq!(json["ts_unix_ns"], 1_700_000_000_000_001_000i64);
        assert_eq!(json["syscall"], "openat");
        assert_eq!(json["pid"], 10);
        assert_eq!(json["tid"], 11);
        assert_eq!(json["comm"], "cat");
        assert_eq!(json["args"], serde_json::json!([1, 2, 3, 4, 5, 6]));
        assert_eq!(json["path"], "/etc");
        // Without the kernel's signatures (none read here), the registers show raw.
        assert_eq!(json["params"], serde_json::json!({}));
        assert!(json["strace"]
            .as_str()
            .unwrap()
            .starts_with("openat(0x1, 0x2,"));
        assert!(json.get("path_truncated").is_none());
        assert!(json.get("path_unavailable").is_none());
        assert_eq!(json["ret"], -2);
        assert_eq!(json["duration_ns"], 250);
        assert_eq!(json["session"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(json["cgroup_id"], 7);
        assert_eq!(
            json["container"],
            serde_json::json!({"id": "c0ffee", "name": "web", "image": "shop:1"})
        );
    }

    fn line(event: &Event, clock: &WallClock, writer: &mut LineWriter) -> serde_json::Value {
        let mut out = Vec::new();
        writer.write(event, None, clock, &Limits::default(), 1, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn names_are_escaped_and_timestamps_follow_the_clock_across_seconds() {
        let mut comm = [0u8; COMM_LEN];
        comm[..6].copy_from_slice(b"a\"b\\c\n");
        let mut record = crate::record::samples::record(999, 1, 1, 7);
        record.comm = comm;
        let mut writer = LineWriter::new(&Uuid::nil());
        let clock = WallClock::from_offset_ns(0);
        record.enter_ns = 1_999_999_999;
        let first = line(&Event::new(&record, &[]), &clock, &mut writer);
        record.enter_ns = 2_000_000_005;
        let second = line(&Event::new(&record, &[]), &clock, &mut writer);
        assert_eq!(first["comm"], "a\"b\\c\n");
        assert_eq!(first["syscall"], "nr:999");
        assert_eq!(first["ts"], "1970-01-01T00:00:01.999999999Z");
        assert_eq!(second["ts"], "1970-01-01T00:00:02.000000005Z");
        assert_eq!(second["ts_unix_ns"], 2_000_000_005);
        // Before 1970, and the same second again after another.
        let early = WallClock::from_offset_ns(-3_000_000_000);
        assert_eq!(
            line(&Event::new(&record, &[]), &early, &mut writer)["ts"],
            "1969-12-31T23:59:59.000000005Z"
        );
        assert_eq!(
            line(&Event::new(&record, &[]), &clock, &mut writer)["ts"],
            "1970-01-01T00:00:02.000000005Z"
        );
    }
}
