//! Events as JSON: the one shape every sink shows (event log, downloads, live streams).
use serde::Serialize;
use uuid::Uuid;

use crate::record::{
    clock::rfc3339,
    decode::{self, Limits, Value},
    syscalls::syscall_name,
    ContainerMeta, Event, WallClock,
};

/// One event as JSON (see docs/api.md for the fields).
#[derive(Serialize)]
struct EventJson<'a> {
    seq: u64,
    ts: String,
    ts_unix_ns: i128,
    syscall: &'a str,
    nr: u32,
    pid: u32,
    tid: u32,
    comm: std::borrow::Cow<'a, str>,
    args: &'a [u64],
    params: Params<'a>,
    strace: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    truncated: &'a [&'a str],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    unavailable: &'a [&'a str],
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

/// Decoded arguments as a JSON object, in the syscall's order.
struct Params<'a>(&'a [(&'a str, Value)]);

impl Serialize for Params<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Appends `event`, the session's `seq`-th, as one JSON line to `out`, its arguments decoded
/// within `limits`.
pub fn write_line(
    event: &Event,
    session: &Uuid,
    container: Option<&ContainerMeta>,
    clock: &WallClock,
    limits: &Limits,
    seq: u64,
    out: &mut Vec<u8>,
) {
    let decoded = decode::decode(event, limits);
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
        seq,
        ts,
        ts_unix_ns: unix_ns,
        syscall,
        nr: record.nr,
        pid: record.tgid,
        tid: record.tid,
        comm: String::from_utf8_lossy(record.comm_bytes()),
        args: &decoded.args,
        params: Params(&decoded.params),
        strace: &decoded.strace,
        truncated: &decoded.truncated,
        unavailable: &decoded.unavailable,
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
        write_line(
            &event,
            &session,
            Some(&container),
            &clock,
            &limits,
            42,
            &mut out,
        );
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
}
