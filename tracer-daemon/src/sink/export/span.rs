//! Syscall records as OpenTelemetry spans, encoded straight into the OTLP request.
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
//!
//! A batch's records become one `ExportTraceServiceRequest` without a message struct in
//! between (see [`super::wire`] for why): the resource and the instrumentation scope are
//! encoded once per run with opentelemetry-proto's types, each span field by field.
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use opentelemetry_proto::{
    tonic::{common::v1::InstrumentationScope, resource::v1::Resource as ProtoResource},
    transform::common::tonic::ResourceAttributesWithSchema,
};
use opentelemetry_sdk::Resource;
use prost::Message as _;
use rustc_hash::FxHashMap;
use uuid::Uuid;

use super::{
    input::SpanBatch,
    wire::{self, AnyValue},
};
use crate::record::{
    decode::{self, Limits},
    syscalls::syscall_name,
    ContainerMeta, Event, WallClock,
};
use crate::sync::lock;

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
    pub trace: u128,
    pub span: u64,
}

/// Gives spans their ids: unique within the run, a trace per process and chunk.
struct IdAssigner {
    /// Half of every trace id: the session and run.
    run_hash: u64,
    /// Spans made so far per process (tgid), for cutting traces.
    per_process: FxHashMap<u32, u64>,
    next_span: u64,
}

impl IdAssigner {
    fn assign(&mut self, tgid: u32) -> SpanIds {
        let count = self.per_process.entry(tgid).or_insert(0);
        let chunk = *count / SPANS_PER_TRACE;
        *count += 1;
        self.next_span += 1;
        SpanIds {
            // The run (high half), then the process and its chunk (low half).
            trace: ((self.run_hash as u128) << 64)
                | ((tgid as u128) << 32)
                | (chunk as u128 & 0xffff_ffff),
            span: self.next_span,
        }
    }
}

/// Field numbers of the OTLP messages written here (opentelemetry-proto's `trace.v1`).
mod field {
    /// `ExportTraceServiceRequest.resource_spans`.
    pub const RESOURCE_SPANS: u32 = 1;
    /// `ResourceSpans.resource`, `.scope_spans`.
    pub const RESOURCE: u32 = 1;
    pub const SCOPE_SPANS: u32 = 2;
    /// `ScopeSpans.scope`, `.spans`.
    pub const SCOPE: u32 = 1;
    pub const SPANS: u32 = 2;
    /// `Span`'s.
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START: u32 = 7;
    pub const END: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const STATUS: u32 = 15;
    pub const FLAGS: u32 = 16;
    /// `Status.message`, `.code`.
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
}

/// `SPAN_KIND_INTERNAL`.
const KIND_INTERNAL: u64 = 1;
/// `STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;
/// Sampled, and the parent's remoteness is known (there is none), as the SDK's spans say.
const FLAGS: u32 = 0x01 | 0x100;

/// Attribute keys.
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

/// One encoded `ExportTraceServiceRequest`.
#[derive(Clone, Debug)]
pub struct Request {
    pub bytes: Bytes,
    /// The spans in it (the first of the batch's records not in an earlier request).
    pub spans: u64,
}

/// Makes the spans of one run, a request at a time.
pub struct SpanMaker {
    ids: IdAssigner,
    session_id: String,
    session_name: String,
    label: Option<String>,
    limits: Limits,
    /// `Resource` and `InstrumentationScope`, encoded.
    resource: Vec<u8>,
    scope: Vec<u8>,
    /// The request being made: room for its envelope, then its spans as `ScopeSpans.spans`
    /// fields. Taken from `recycled` when the last request was let go of.
    request: Vec<u8>,
    recycled: Arc<Mutex<Vec<u8>>>,
    /// The span being made (its length goes before it).
    span: Vec<u8>,
}

impl SpanMaker {
    pub fn new(session: &SessionInfo, resource: &Resource) -> Self {
        let mut hasher = DefaultHasher::new();
        (session.id, session.run).hash(&mut hasher);
        let resource = ProtoResource {
            attributes: ResourceAttributesWithSchema::from(resource).attributes.0,
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "tracerd".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        Self {
            ids: IdAssigner {
                run_hash: hasher.finish(),
                per_process: FxHashMap::default(),
                next_span: 0,
            },
            session_id: session.id.to_string(),
            session_name: session.name.clone(),
            label: session.label.clone(),
            limits: session.limits,
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
            request: Vec::new(),
            recycled: Arc::default(),
            span: Vec::new(),
        }
    }

    /// The OTLP requests (`ExportTraceServiceRequest`s, encoded) of these batches' spans,
    /// with their ids assigned now (a retry sends the same bytes): one request, or more when
    /// the spans take over [`MAX_REQUEST_BYTES`].
    pub fn requests(&mut self, batches: &[SpanBatch]) -> Vec<Request> {
        let mut requests = Vec::new();
        let mut spans = 0;
        self.start_request();
        for batch in batches {
            for (record, data) in batch.records.iter() {
                if self.request.len() >= MAX_REQUEST_BYTES {
                    requests.push(Request {
                        bytes: self.finish_request(),
                        spans: std::mem::take(&mut spans),
                    });
                    self.start_request();
                }
                let container = batch.containers.get(&record.cgroup_id).map(Arc::as_ref);
                self.push_span(&Event::new(&record, data), container, &batch.clock);
                spans += 1;
            }
        }
        requests.push(Request {
            bytes: self.finish_request(),
            spans,
        });
        requests
    }

    /// The room the envelope takes at most, before the spans.
    fn envelope_room(&self) -> usize {
        2 * (1 + MAX_VARINT_32)
            + wire::len_field_len(field::RESOURCE, self.resource.len())
            + wire::len_field_len(field::SCOPE, self.scope.len())
    }

    fn start_request(&mut self) {
        // The envelope's lengths are known once the spans are written: room for its
        // longest form first, filled in at the end, so the spans are not copied again.
        let mut request = std::mem::take(&mut *lock(&self.recycled));
        request.clear();
        request.resize(self.envelope_room(), 0);
        self.request = request;
    }

    fn finish_request(&mut self) -> Bytes {
        let room = self.envelope_room();
        let spans = self.request.len() - room;
        let scope_spans = wire::len_field_len(field::SCOPE, self.scope.len()) + spans;
        let resource_spans = wire::len_field_len(field::RESOURCE, self.resource.len())
            + wire::len_field_len(field::SCOPE_SPANS, scope_spans);
        let mut envelope = Vec::with_capacity(room);
        wire::len_prefix(&mut envelope, field::RESOURCE_SPANS, resource_spans);
        wire::bytes(&mut envelope, field::RESOURCE, &self.resource);
        wire::len_prefix(&mut envelope, field::SCOPE_SPANS, scope_spans);
        wire::bytes(&mut envelope, field::SCOPE, &self.scope);
        let start = room - envelope.len();
        self.request[start..room].copy_from_slice(&envelope);
        let request = Recycled {
            buffer: std::mem::take(&mut self.request),
            home: self.recycled.clone(),
        };
        Bytes::from_owner(request).slice(start..)
    }

    /// Appends an event's span to the request being made.
    fn push_span(&mut self, event: &Event, container: Option<&ContainerMeta>, clock: &WallClock) {
        let record = &event.record;
        let ids = self.ids.assign(record.tgid);
        let mut span = std::mem::take(&mut self.span);
        span.clear();
        wire::bytes(&mut span, field::TRACE_ID, &ids.trace.to_be_bytes());
        wire::bytes(&mut span, field::SPAN_ID, &ids.span.to_be_bytes());
        match syscall_name(record.nr) {
            Some(name) => wire::bytes(&mut span, field::NAME, name.as_bytes()),
            None => {
                let name = format!("syscall_{}", record.nr);
                wire::bytes(&mut span, field::NAME, name.as_bytes());
            }
        }
        wire::uint(&mut span, field::KIND, KIND_INTERNAL);
        let start = clock.unix_ns(record.enter_ns).max(0) as u64;
        wire::fixed64(&mut span, field::START, start);
        wire::fixed64(&mut span, field::END, start + record.duration_ns);
        self.attributes(&mut span, event, container);
        if record.ret < 0 {
            let message = errno_name(record.ret);
            // The code takes two bytes: its key and the value 2.
            wire::len_prefix(
                &mut span,
                field::STATUS,
                wire::len_field_len(field::STATUS_MESSAGE, message.len()) + 2,
            );
            wire::bytes(&mut span, field::STATUS_MESSAGE, message.as_bytes());
            wire::uint(&mut span, field::STATUS_CODE, STATUS_ERROR);
        }
        wire::fixed32(&mut span, field::FLAGS, FLAGS);
        wire::bytes(&mut self.request, field::SPANS, &span);
        self.span = span;
    }

    /// The span's attributes: process, syscall, session, path, decoded arguments, strace line
    /// and container.
    fn attributes(&self, span: &mut Vec<u8>, event: &Event, container: Option<&ContainerMeta>) {
        let record = &event.record;
        let mut attribute =
            |key: &str, value| wire::key_value(span, field::ATTRIBUTES, ("", key), value);
        attribute(key::PID, AnyValue::Int(record.tgid.into()));
        attribute(key::TID, AnyValue::Int(record.tid.into()));
        let comm = String::from_utf8_lossy(record.comm_bytes());
        attribute(key::EXECUTABLE, AnyValue::Str(&comm));
        attribute(key::NR, AnyValue::Int(record.nr.into()));
        attribute(key::RET, AnyValue::Int(record.ret));
        let args = record.args.map(|arg| arg as i64);
        attribute(key::ARGS, AnyValue::Ints(&args));
        attribute(key::CGROUP, AnyValue::Int(record.cgroup_id as i64));
        attribute(key::SESSION_ID, AnyValue::Str(&self.session_id));
        attribute(key::SESSION_NAME, AnyValue::Str(&self.session_name));
        if let Some(label) = &self.label {
            attribute(key::LABEL, AnyValue::Str(label));
        }
        if let Some(path) = &event.path {
            attribute(key::PATH, AnyValue::Str(path));
        }
        let decoded = decode::decode(event, &self.limits);
        for (name, value) in &decoded.params {
            let too_big;
            let value = match value {
                decode::Value::Int(number) => AnyValue::Int(*number),
                decode::Value::UInt(number) => match i64::try_from(*number) {
                    Ok(number) => AnyValue::Int(number),
                    Err(_) => {
                        too_big = number.to_string();
                        AnyValue::Str(&too_big)
                    }
                },
                decode::Value::Text(text) => AnyValue::Str(text),
                decode::Value::List(items) => AnyValue::Strs(items),
            };
            wire::key_value(span, field::ATTRIBUTES, (key::PARAM_PREFIX, name), value);
        }
        let mut attribute =
            |key: &str, value| wire::key_value(span, field::ATTRIBUTES, ("", key), value);
        attribute(key::STRACE, AnyValue::Str(&decoded.strace));
        if let Some(container) = container {
            attribute(key::CONTAINER_ID, AnyValue::Str(&container.id));
            attribute(key::CONTAINER_NAME, AnyValue::Str(&container.name));
            attribute(key::CONTAINER_IMAGE, AnyValue::Str(&container.image));
        }
    }
}

/// A request's size, about, at most: a span more goes into the next request. gRPC servers
/// refuse messages over 4 MiB unless told otherwise (the OpenTelemetry Collector's
/// `max_recv_msg_size_mib` defaults to 4), and a refused request would be retried forever.
pub const MAX_REQUEST_BYTES: usize = 3 << 20;

/// The most bytes a length below 4 GiB takes as a varint.
const MAX_VARINT_32: usize = 5;

/// A request's buffer, back to its maker when the transport lets go of the request. Why
/// reused: a request is a MiB or more, memory the kernel would zero again for every new one
/// (as record batches' buffers are reused, see `record::batch`).
struct Recycled {
    buffer: Vec<u8>,
    home: Arc<Mutex<Vec<u8>>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let mut home = lock(&self.home);
        if home.capacity() < self.buffer.capacity() {
            *home = std::mem::take(&mut self.buffer);
        }
    }
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
    use std::collections::HashMap;

    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::any_value::Value,
        trace::v1::{status::StatusCode, Span},
    };
    use tracer_common::SyscallRecord;

    use super::*;
    use crate::record::batch::BatchBuilder;

    fn path_data() -> Vec<u8> {
        let mut data = Vec::new();
        let string = tracer_common::capture_kind::STRING;
        crate::record::captured::push_item(string, 1, 0, b"/etc/hosts", 0, &mut data);
        data
    }

    /// A batch of `openat` calls, one per (tgid, ret), in a container's cgroup.
    fn batch(calls: &[(u32, i64)]) -> SpanBatch {
        let mut builder = BatchBuilder::default();
        for &(tgid, ret) in calls {
            // SAFETY: SyscallRecord is plain old data; all zeroes is a valid record.
            let mut record: SyscallRecord = unsafe { std::mem::zeroed() };
            record.nr = 257;
            record.tgid = tgid;
            record.tid = tgid + 1;
            record.ret = ret;
            record.enter_ns = 1_000;
            record.duration_ns = 2_500;
            record.cgroup_id = 9;
            record.args = [u64::MAX - 99, 0x7fff_0000, 0, 0, 0, 0];
            record.comm[..4].copy_from_slice(b"cat\0");
            builder.push(&record, &path_data());
        }
        let container = Arc::new(ContainerMeta {
            id: "abc123".into(),
            name: "web".into(),
            image: "nginx:1".into(),
        });
        SpanBatch {
            records: builder.take(),
            containers: Arc::new(HashMap::from([(9, container)])),
            clock: WallClock::from_offset_ns(1_700_000_000_000_000_000),
        }
    }

    fn maker(label: Option<&str>) -> SpanMaker {
        let session = SessionInfo {
            id: Uuid::nil(),
            name: "s".into(),
            label: label.map(Into::into),
            run: 1,
            limits: Limits::default(),
        };
        SpanMaker::new(&session, &super::super::resource())
    }

    /// The request decoded by opentelemetry-proto: its spans.
    fn spans(request: Bytes) -> Vec<Span> {
        let request = ExportTraceServiceRequest::decode(request).expect("a valid request");
        let [resource_spans] = &request.resource_spans[..] else {
            panic!("one resource")
        };
        let resource = resource_spans.resource.as_ref().expect("a resource");
        assert!(resource
            .attributes
            .iter()
            .any(|kv| kv.key == "service.name"));
        let [scope_spans] = &resource_spans.scope_spans[..] else {
            panic!("one scope")
        };
        assert_eq!(scope_spans.scope.as_ref().unwrap().name, "tracerd");
        scope_spans.spans.clone()
    }

    fn attribute(span: &Span, key: &str) -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    fn text(text: &str) -> Option<Value> {
        Some(Value::StringValue(text.into()))
    }

    #[test]
    fn a_failed_openat_becomes_an_error_span_with_its_attributes() {
        let [request] = &maker(Some("ci-42")).requests(&[batch(&[(100, -2)])])[..] else {
            panic!("one request")
        };
        assert_eq!(request.spans, 1);
        let [span] = &spans(request.bytes.clone())[..] else {
            panic!("one span")
        };
        assert_eq!(span.name, "openat");
        let status = span.status.as_ref().expect("a status");
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "ENOENT");
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_000_001_000);
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 2_500);
        assert_eq!(span.kind, 1, "internal");
        assert_eq!(span.flags, 0x101);
        assert_eq!(span.span_id, 1u64.to_be_bytes());
        assert_eq!(attribute(span, "process.pid"), Some(Value::IntValue(100)));
        assert_eq!(attribute(span, "thread.id"), Some(Value::IntValue(101)));
        assert_eq!(attribute(span, "process.executable.name"), text("cat"));
        assert_eq!(attribute(span, "tracer.session.label"), text("ci-42"));
        assert_eq!(attribute(span, "tracer.session.name"), text("s"));
        assert_eq!(attribute(span, "container.image.name"), text("nginx:1"));
        assert_eq!(
            attribute(span, "tracer.syscall.ret"),
            Some(Value::IntValue(-2))
        );
        assert_eq!(attribute(span, "tracer.syscall.path"), text("/etc/hosts"));
        // Decoded arguments (`tracer.param.*`) need the kernel's signatures: checked at a
        // real collector by the export tests.
        let Some(Value::ArrayValue(args)) = attribute(span, "tracer.syscall.args") else {
            panic!("args as an array")
        };
        assert_eq!(args.values[0].value, Some(Value::IntValue(-100)));
        let Some(Value::StringValue(strace)) = attribute(span, "tracer.syscall.strace") else {
            panic!("a strace line")
        };
        assert!(
            strace.starts_with("openat(")
                && strace.ends_with("= -1 ENOENT (No such file or directory)"),
            "{strace}"
        );
    }

    #[test]
    fn traces_group_a_process_and_are_cut_at_the_bound() {
        let mut maker = maker(None);
        let calls = vec![(7, 0); SPANS_PER_TRACE as usize + 1];
        let sevens = spans(maker.requests(&[batch(&calls)]).remove(0).bytes);
        let first = &sevens[0].trace_id;
        assert_eq!(first.len(), 16);
        assert!(sevens[..SPANS_PER_TRACE as usize]
            .iter()
            .all(|span| &span.trace_id == first));
        assert_ne!(&sevens[SPANS_PER_TRACE as usize].trace_id, first);
        let eight = spans(maker.requests(&[batch(&[(8, 0)])]).remove(0).bytes);
        assert_ne!(&eight[0].trace_id, first);
        assert_eq!(eight[0].status, None);
        assert_eq!(attribute(&eight[0], "tracer.session.label"), None);
        // Span ids go on across requests of the run.
        assert_eq!(eight[0].span_id, (SPANS_PER_TRACE + 2).to_be_bytes());
    }

    #[test]
    fn spans_over_the_size_cap_go_in_several_requests_in_order() {
        let mut maker = maker(None);
        // Each span takes about 450 bytes: 10,000 take more than one request.
        let calls: Vec<(u32, i64)> = (0..10_000).map(|index| (index, 0)).collect();
        let requests = maker.requests(&[batch(&calls)]);
        assert!(requests.len() > 1, "{} request", requests.len());
        assert!(requests
            .iter()
            .all(|request| request.bytes.len() < MAX_REQUEST_BYTES + 4096));
        let counted: u64 = requests.iter().map(|request| request.spans).sum();
        assert_eq!(counted, 10_000);
        let pids: Vec<Option<Value>> = requests
            .into_iter()
            .flat_map(|request| {
                let decoded = spans(request.bytes);
                assert_eq!(decoded.len() as u64, request.spans);
                decoded
            })
            .map(|span| attribute(&span, "process.pid"))
            .collect();
        let expected: Vec<_> = (0..10_000).map(|pid| Some(Value::IntValue(pid))).collect();
        assert_eq!(pids, expected);
    }
}
