//! Events as JSON: the one shape every sink shows (event log, downloads, live streams).
use serde::Serialize;
use uuid::Uuid;

use crate::record::{clock::rfc3339, syscalls::syscall_name, ContainerMeta, Event, WallClock};

/// One event as JSON (see docs/api.md for the fields).
#[derive(Serialize)]
struct EventJson<'a> {
    ts: String,
    ts_unix_ns: i128,
    syscall: &'a str,
    nr: u32,
    pid: u32,
    tid: u32,
    comm: std::borrow::Cow<'a, str>,
    args: [u64; 6],
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    path_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    path_unavailable: bool,
    ret: i64,
    duration_ns: u64,
    session: &'a Uuid,
    cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a ContainerMeta>,
}

/// Appends `event` as one JSON line to `out`.
pub fn write_line(
    event: &Event,
    session: &Uuid,
    container: Option<&ContainerMeta>,
    clock: &WallClock,
    out: &mut Vec<u8>,
) {
    let record = &event.record;
    let unix_ns = clock.unix_ns(record.enter_ns);
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .map(rfc3339)
        .unwrap_or_default();
    let number;
    let syscall = match syscall_name(record.nr) {
        Some(name) => name,
        None => {
            number = format!("nr:{}", record.nr);
            &number
        }
    };
    let json = EventJson {
        ts,
        ts_unix_ns: unix_ns,
        syscall,
        nr: record.nr,
        pid: record.tgid,
        tid: record.tid,
        comm: String::from_utf8_lossy(record.comm_bytes()),
        args: record.args,
        path: event.path.as_deref(),
        path_truncated: event.path_truncated(),
        path_unavailable: event.path_unavailable(),
        ret: record.ret,
        duration_ns: record.duration_ns,
        session,
        cgroup_id: record.cgroup_id,
        container,
    };
    // Serialising plain fields into a Vec cannot fail.
    serde_json::to_writer(&mut *out, &json).expect("serialising an event");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use tracer_common::{SyscallRecord, COMM_LEN};

    use super::*;

    #[test]
    fn an_event_has_every_documented_field() {
        let mut comm = [0u8; COMM_LEN];
        comm[..3].copy_from_slice(b"cat");
        let event = Event {
            record: SyscallRecord {
                enter_ns: 1_000,
                duration_ns: 250,
                cgroup_id: 7,
                sessions: 1,
                args: [1, 2, 3, 4, 5, 6],
                ret: -2,
                tgid: 10,
                tid: 11,
                nr: syscalls::Sysno::openat.id() as u32,
                path_len: 4,
                flags: tracer_common::record_flags::HAS_PATH,
                comm,
            },
            path: Some("/etc".into()),
        };
        let session = Uuid::nil();
        let clock = WallClock::from_offset_ns(1_700_000_000_000_000_000);
        let mut out = Vec::new();
        let container = ContainerMeta {
            id: "c0ffee".into(),
            name: "web".into(),
            image: "shop:1".into(),
        };
        write_line(&event, &session, Some(&container), &clock, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["ts"], "2023-11-14T22:13:20.000001000Z");
        assert_eq!(json["ts_unix_ns"], 1_700_000_000_000_001_000i64);
        assert_eq!(json["syscall"], "openat");
        assert_eq!(json["pid"], 10);
        assert_eq!(json["tid"], 11);
        assert_eq!(json["comm"], "cat");
        assert_eq!(json["args"], serde_json::json!([1, 2, 3, 4, 5, 6]));
        assert_eq!(json["path"], "/etc");
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
}
