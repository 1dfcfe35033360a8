//! Which events a read returns (a download, a follower): the query's filters, decided on a
//! record before it is rendered (or, in event-log segments of the first format, on its line).
use tracer_common::SyscallRecord;

use crate::record::syscalls::syscall_name;

/// Which events to read back.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only events after this `seq`.
    pub after_seq: Option<u64>,
    /// Only events at or after this time (Unix nanoseconds).
    pub since_unix_ns: Option<i128>,
    /// Only events before this time (Unix nanoseconds).
    pub until_unix_ns: Option<i128>,
    /// Only these syscalls (names).
    pub syscalls: Option<Vec<String>>,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only threads of this name.
    pub comm: Option<String>,
    /// Only calls that failed.
    pub failed: bool,
}

#[derive(serde::Deserialize)]
struct LineKeys<'a> {
    ts_unix_ns: i128,
    #[serde(borrow)]
    syscall: &'a str,
    #[serde(default)]
    pid: u32,
    #[serde(default, borrow)]
    comm: std::borrow::Cow<'a, str>,
    #[serde(default)]
    ret: i64,
}

impl EventFilter {
    /// Whether every line passes whatever it holds (`after_seq` aside, which goes by
    /// position).
    pub fn accepts_all(&self) -> bool {
        self.since_unix_ns.is_none()
            && self.until_unix_ns.is_none()
            && self.syscalls.is_none()
            && self.pid.is_none()
            && self.comm.is_none()
            && !self.failed
    }

    /// Whether the event of `record`, at `unix_ns`, passes the filter's fields.
    pub fn accepts_record(&self, record: &SyscallRecord, unix_ns: i128) -> bool {
        if self.accepts_all() {
            return true;
        }
        self.since_unix_ns.is_none_or(|since| unix_ns >= since)
            && self.until_unix_ns.is_none_or(|until| unix_ns < until)
            && self.syscalls.as_ref().is_none_or(|names| {
                let name = syscall_name(record.nr);
                names.iter().any(|wanted| match name {
                    Some(name) => wanted == name,
                    None => wanted.strip_prefix("nr:") == Some(&record.nr.to_string()),
                })
            })
            && self.pid.is_none_or(|pid| record.tgid == pid)
            && self
                .comm
                .as_deref()
                .is_none_or(|comm| String::from_utf8_lossy(record.comm_bytes()) == comm)
            && (!self.failed || record.ret < 0)
    }

    /// Whether `line` (one event, without its newline) passes the filter's fields.
    pub fn accepts(&self, line: &[u8]) -> bool {
        if self.accepts_all() {
            return true;
        }
        let Ok(keys) = serde_json::from_slice::<LineKeys>(line) else {
            return false;
        };
        self.since_unix_ns
            .is_none_or(|since| keys.ts_unix_ns >= since)
            && self
                .until_unix_ns
                .is_none_or(|until| keys.ts_unix_ns < until)
            && self
                .syscalls
                .as_ref()
                .is_none_or(|names| names.iter().any(|name| name == keys.syscall))
            && self.pid.is_none_or(|pid| keys.pid == pid)
            && self.comm.as_deref().is_none_or(|comm| keys.comm == comm)
            && (!self.failed || keys.ret < 0)
    }
}
