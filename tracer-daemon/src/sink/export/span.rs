//! Syscall records as OpenTelemetry spans.
//!
//! - Name: the syscall's name. Start and end: the kernel's entry and exit times (CLOCK_MONOTONIC)
//!   moved to wall-clock time with the offset of the run that recorded them (the one its event
//!   log uses, so a span starts at its event's `ts` exactly), keeping the kernel's order and
//!   durations.
//! - Status: error, described by the errno name (`ENOENT`), when the call returned an error.
//! - Attributes: OpenTelemetry semantic conventions where they exist (`process.pid`,
//!   `thread.id`, `process.executable.name`, `container.id`, `container.name`,
//!   `container.image.name`; `host.name` and `service.name` on the resource), `tracer.*`
//!   for the rest (see docs/api.md).
//! - Traces: one per session run and process, cut every [`SPANS_PER_TRACE`] spans, so a
//!   trace stays small enough for Jaeger or Tempo to show; spans in it are siblings.
use std::{
    borrow::Cow,
    collections::{hash_map::DefaultHasher, HashMap},
    hash::{Hash as _, Hasher as _},
    sync::Arc,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    Array, InstrumentationScope, Key, KeyValue, StringValue, Value,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use uuid::Uuid;

use super::input::SpanInput;
use crate::record::{
    decode::{self, Limits},
    syscalls::syscall_name,
    WallClock,
};

/// Spans per trace before a process's next spans start a new trace.
pub const SPANS_PER_TRACE: u64 = 1000;

/// The session a run's spans belong to.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: Uuid,
    pub name: String,
    pub label: Option<String>,
    /// The run (1, 2, …): traces do not span runs.
    pub run: u32,
    /// How much of each argument's data the session shows.
    pub limits: Limits,
}

/// A span's place: its trace and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace: TraceId,
    pub span: SpanId,
}

/// Makes the spans of one run.
pub struct SpanMaker {
    scope: InstrumentationScope,
    /// Half of every trace id: the session and run.
    run_hash: u64,
    session_id: StringValue,
    session_name: StringValue,
    label: Option<StringValue>,
    /// Spans made so far per process (tgid), for cutting traces.
    per_process: HashMap<u32, u64>,
    /// Span ids: unique within the run.
    next_span: u64,
    /// Interned container strings, by container id.
    containers: HashMap<String, [StringValue; 3]>,
    limits: Limits,
    /// `tracer.param.<name>` keys, by argument name.
    param_keys: HashMap<&'static str, Key>,
}

/// Attribute keys (static: no allocation per span).
mod key {
    pub const PID: &str = "process.pid";
    pub const TID: &str = "thread.id";
    pub const EXECUTABLE: &str = "process.executable.name";
    pub const CONTAINER_ID: &str = "container.id";
    pub const CONTAINER_NAME: &str = "container.name";
    pub const CONTAINER_IMAGE: &str = "container.image.name";
    pub const NR: &str = "tracer.syscall.nr";
    pub const ARGS: &str = "tracer.syscall.args";
    pub const RET: &str = "tracer.syscall.ret";
    pub const PATH: &str = "tracer.syscall.path";
    pub const STRACE: &str = "tracer.syscall.strace";
    /// Prefix of the decoded arguments' keys (`tracer.param.filename`).
    pub const PARAM_PREFIX: &str = "tracer.param.";
    pub const CGROUP: &str = "tracer.cgroup.id";
    pub const SESSION_ID: &str = "tracer.session.id";
    pub const SESSION_NAME: &str = "tracer.session.name";
    pub const LABEL: &str = "tracer.session.label";
}

impl SpanMaker {
    pub fn new(session: &SessionInfo) -> Self {
        let mut hasher = DefaultHasher::new();
        (session.id, session.run).hash(&mut hasher);
        Self {
            scope: InstrumentationScope::builder("tracerd")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            run_hash: hasher.finish(),
            session_id: StringValue::from(session.id.to_string()),
            session_name: StringValue::from(session.name.clone()),
            label: session.label.clone().map(StringValue::from),
            per_process: HashMap::new(),
            next_span: 0,
            containers: HashMap::new(),
            limits: session.limits,
            param_keys: HashMap::new(),
        }
    }

    /// Makes an input's span (ids assigned now).
    pub fn span(&mut self, input: &SpanInput) -> SpanData {
        let ids = self.assign(input);
        self.build(input, &ids)
    }

    /// Gives an input its trace and span ids (once: a retried batch keeps them).
    pub fn assign(&mut self, input: &SpanInput) -> SpanIds {
        let tgid = input.event.record.tgid;
        let count = self.per_process.entry(tgid).or_insert(0);
        let chunk = *count / SPANS_PER_TRACE;
        *count += 1;
        // Trace id: the run (high half), then the process and its chunk (low half).
        let trace_id = ((self.run_hash as u128) << 64)
            | ((tgid as u128) << 32)
            | (chunk as u128 & 0xffff_ffff);
        self.next_span += 1;
        SpanIds {
            trace: TraceId::from(trace_id),
            span: SpanId::from(self.next_span),
        }
    }

    /// Makes an input's span with the ids it was given.
    pub fn build(&mut self, input: &SpanInput, ids: &SpanIds) -> SpanData {
        let record = &input.event.record;
        let start = wall(&input.clock, record.enter_ns);
        let end = start + Duration::from_nanos(record.duration_ns);
        let name: Cow<'static, str> = match syscall_name(record.nr) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!("syscall_{}", record.nr)),
        };
        let status = if record.ret < 0 {
            Status::error(errno_name(record.ret))
        } else {
            Status::Unset
        };
        let attributes = self.attributes(input);
        SpanData {
            span_context: SpanContext::new(
                ids.trace,
                ids.span,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name,
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// The span's attributes: process, syscall, session, path and container.
    fn attributes(&mut self, input: &SpanInput) -> Vec<KeyValue> {
        let record = &input.event.record;
        let mut attributes = Vec::with_capacity(16);
        attributes.extend([
            KeyValue::new(Key::from_static_str(key::PID), record.tgid as i64),
            KeyValue::new(Key::from_static_str(key::TID), record.tid as i64),
            KeyValue::new(
                Key::from_static_str(key::EXECUTABLE),
                String::from_utf8_lossy(record.comm_bytes()).into_owned(),
            ),
            KeyValue::new(Key::from_static_str(key::NR), record.nr as i64),
            KeyValue::new(Key::from_static_str(key::RET), record.ret),
            KeyValue::new(
                Key::from_static_str(key::ARGS),
                Value::Array(Array::I64(record.args.iter().map(|&a| a as i64).collect())),
            ),
            KeyValue::new(Key::from_static_str(key::CGROUP), record.cgroup_id as i64),
            KeyValue::new(
                Key::from_static_str(key::SESSION_ID),
                self.session_id.clone(),
            ),
            KeyValue::new(
                Key::from_static_str(key::SESSION_NAME),
                self.session_name.clone(),
            ),
        ]);
        if let Some(label) = &self.label {
            attributes.push(KeyValue::new(
                Key::from_static_str(key::LABEL),
                label.clone(),
            ));
        }
        if let Some(path) = &input.event.path {
            attributes.push(KeyValue::new(
                Key::from_static_str(key::PATH),
                path.to_string(),
            ));
        }
        self.decoded_attributes(input, &mut attributes);
        if let Some(container) = &input.container {
            let [id, name, image] = self
                .containers
                .entry(container.id.clone())
                .or_insert_with(|| {
                    [
                        StringValue::from(Arc::<str>::from(container.id.as_str())),
                        StringValue::from(Arc::<str>::from(container.name.as_str())),
                        StringValue::from(Arc::<str>::from(container.image.as_str())),
                    ]
                })
                .clone();
            attributes.extend([
                KeyValue::new(Key::from_static_str(key::CONTAINER_ID), id),
                KeyValue::new(Key::from_static_str(key::CONTAINER_NAME), name),
                KeyValue::new(Key::from_static_str(key::CONTAINER_IMAGE), image),
            ]);
        }
        attributes
    }
}

impl SpanMaker {
    /// The decoded arguments (`tracer.param.<name>`) and the strace line.
    fn decoded_attributes(&mut self, input: &SpanInput, attributes: &mut Vec<KeyValue>) {
        let decoded = decode::decode(&input.event, &self.limits);
        for (name, value) in decoded.params {
            let key = self
                .param_keys
                .entry(name)
                .or_insert_with(|| Key::from(format!("{}{name}", key::PARAM_PREFIX)))
                .clone();
            let value = match value {
                decode::Value::Int(number) => Value::I64(number),
                decode::Value::UInt(number) => match i64::try_from(number) {
                    Ok(number) => Value::I64(number),
                    Err(_) => Value::String(number.to_string().into()),
                },
                decode::Value::Text(text) => Value::String(text.into()),
                decode::Value::List(items) => {
                    Value::Array(Array::String(items.into_iter().map(Into::into).collect()))
                }
            };
            attributes.push(KeyValue::new(key, value));
        }
        attributes.push(KeyValue::new(
            Key::from_static_str(key::STRACE),
            decoded.strace,
        ));
    }
}

/// A CLOCK_MONOTONIC reading as wall-clock time, by the run's clock.
fn wall(clock: &WallClock, monotonic_ns: u64) -> SystemTime {
    let unix_ns = clock.unix_ns(monotonic_ns).max(0) as u128;
    SystemTime::UNIX_EPOCH
        + Duration::new(
            (unix_ns / 1_000_000_000) as u64,
            (unix_ns % 1_000_000_000) as u32,
        )
}

/// `ENOENT` for -2, the errno's number if it has no name here.
pub fn errno_name(ret: i64) -> String {
    let errno = nix::errno::Errno::from_raw((-ret) as i32);
    match errno {
        nix::errno::Errno::UnknownErrno => format!("errno {}", -ret),
        known => format!("{known:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ContainerMeta, Event};
    use tracer_common::SyscallRecord;

    fn path_data() -> Vec<u8> {
        let mut data = Vec::new();
        let string = tracer_common::capture_kind::STRING;
        crate::record::captured::push_item(string, 1, 0, b"/etc/hosts", 0, &mut data);
        data
    }

    fn input(tgid: u32, ret: i64) -> SpanInput {
        let mut record: SyscallRecord = unsafe { std::mem::zeroed() };
        record.nr = 257;
        record.tgid = tgid;
        record.tid = tgid + 1;
        record.ret = ret;
        record.enter_ns = 1_000;
        record.duration_ns = 2_500;
        record.comm[..4].copy_from_slice(b"cat\0");
        SpanInput {
            event: Event::new(&record, &path_data()),
            container: Some(Arc::new(ContainerMeta {
                id: "abc123".into(),
                name: "web".into(),
                image: "nginx:1".into(),
            })),
            clock: WallClock::now(),
        }
    }

    fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_failed_openat_becomes_an_error_span_with_its_attributes() {
        let mut maker = SpanMaker::new(&SessionInfo {
            id: Uuid::nil(),
            name: "s".into(),
            label: Some("ci-42".into()),
            run: 1,
            limits: Limits::default(),
        });
        let span = maker.span(&input(100, -2));
        assert_eq!(span.name, "openat");
        assert_eq!(
            span.status,
            Status::Error {
                description: "ENOENT".into()
            }
        );
        assert_eq!(
            span.end_time.duration_since(span.start_time).unwrap(),
            Duration::from_nanos(2_500)
        );
        assert_eq!(attribute(&span, "process.pid"), Some(&Value::I64(100)));
        assert_eq!(attribute(&span, "thread.id"), Some(&Value::I64(101)));
        assert_eq!(
            attribute(&span, "process.executable.name").map(Value::as_str),
            Some("cat".into())
        );
        assert_eq!(
            attribute(&span, "tracer.session.label").map(Value::as_str),
            Some("ci-42".into())
        );
        assert_eq!(
            attribute(&span, "container.image.name").map(Value::as_str),
            Some("nginx:1".into())
        );
        assert_eq!(
            attribute(&span, "tracer.syscall.ret"),
            Some(&Value::I64(-2))
        );
    }

    #[test]
    fn traces_group_a_process_and_are_cut_at_the_bound() {
        let mut maker = SpanMaker::new(&SessionInfo {
            id: Uuid::nil(),
            name: "s".into(),
            label: None,
            run: 1,
            limits: Limits::default(),
        });
        let first = maker.span(&input(7, 0)).span_context.trace_id();
        for _ in 1..SPANS_PER_TRACE {
            assert_eq!(maker.span(&input(7, 0)).span_context.trace_id(), first);
        }
        assert_ne!(maker.span(&input(7, 0)).span_context.trace_id(), first);
        assert_ne!(maker.span(&input(8, 0)).span_context.trace_id(), first);
        assert_eq!(maker.span(&input(8, 0)).status, Status::Unset);
    }
}
