//! `cargo xtask bench otlp`: spans per second from delivered records to a real collector
//! (rotel, receiving and discarding), and nanoseconds per span of building and encoding, with
//! tracerd's process pinned to one core (the collector runs on the other).
//!
//! Two paths side by side:
//! - **tracerd's**: records → OTLP request encoded straight from them (batches of 2,048) →
//!   gRPC or HTTP, as a session's export does (its sink and sender, memory queue only);
//! - **the SDK's**: the same spans (name, times, status, attributes) as SDK spans
//!   (`Tracer::build`, `end_with_timestamp`) through the SDK's `BatchSpanProcessor` (queue
//!   65,536, batches of 2,048, 200 ms) and `opentelemetry-otlp`'s gRPC exporter.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use opentelemetry::{
    trace::{Span as _, SpanBuilder, Status, Tracer as _, TracerProvider as _},
    KeyValue,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value, trace::v1::Span,
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter},
    Resource,
};
use prost::Message as _;
use serde_json::{json, Value};
use tracer_common::{capture_kind, SyscallRecord};
use tracer_daemon::{
    record::{batch::BatchBuilder, captured::push_item, decode::Limits, ContainerMeta, WallClock},
    sink::export::{
        resource,
        span::{SessionInfo, SpanMaker},
        Export, ExportOptions, OtlpConfig, Protocol, SpanBatch,
    },
};
use tracer_tests::{
    bench::{machine, median, output_dir, publish},
    collector::Collector,
    require_root,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Spans per end-to-end run.
const SPANS: usize = 1_000_000;
/// Spans per encoding measurement.
const ENCODE_SPANS: usize = 200_000;
const RUNS: usize = 3;
const BATCH: usize = 2048;

fn main() {
    require_root();
    let machine = machine();
    pin_to_cpu(0);
    let collector = Collector::start_blackhole();
    // The collector works on the other core.
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &collector.pid().to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    println!(
        "bench otlp on {machine}; collector on {}",
        collector.grpc_endpoint()
    );
    // Arguments decode as in the daemon, with the kernel's signatures.
    let signatures = tracer_daemon::record::signatures::load_once(|| {
        tracer_daemon::backend::ftrace::tracefs_root().ok()
    });
    assert!(!signatures.is_empty(), "no syscall signatures from tracefs");
    let batches = batches(SPANS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let mut encode_ns: Vec<f64> = (0..RUNS)
        .map(|_| encode(&batches[..ENCODE_SPANS / 4096]))
        .collect();
    let encode_ns = median(&mut encode_ns);
    println!("encode the OTLP request from records: {encode_ns:.0} ns/span");

    let config = |protocol| OtlpConfig {
        endpoint: match protocol {
            Protocol::Grpc => collector.grpc_endpoint(),
            Protocol::HttpProtobuf => collector.http_endpoint(),
        },
        protocol,
        headers: Default::default(),
        gzip: false,
        timeout: Duration::from_secs(10),
        ca_file: None,
    };
    let mut ours = Vec::new();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let result =
                runtime.block_on(tracerd_path(&config(protocol), &batches, collector.pid()));
            println!("tracerd's path, {}: {result}", protocol.as_str());
            runs.push(result);
        }
        ours.push(json!({"protocol": protocol.as_str(), "runs": runs}));
    }
    let config = config(Protocol::Grpc);
    let spans = decoded_spans(&batches);
    let mut sdk = Vec::new();
    for _ in 0..RUNS {
        let result = sdk_path(&runtime, &config, &spans);
        println!("SDK batch processor: {result}");
        sdk.push(result);
    }
    let results = json!({
        "machine": machine,
        "spans_per_run": SPANS,
        "runs": RUNS,
        "encode_ns_per_span": encode_ns,
        "tracerd_path": ours,
        "sdk_path": sdk,
    });
    publish("otlp", &results, &markdown(&results));
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity read and write only
    // it. Threads started later (tokio's, the SDK's) inherit the mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to CPU {cpu}"
        );
    }
}

/// Records like a container's: four processes, a mix of syscalls, one in ten failing, paths
/// on openat; in batches of 4096, as a run's writer hands them over.
fn batches(count: usize) -> Vec<SpanBatch> {
    let container = Arc::new(ContainerMeta {
        id: "4f1c0a3b9d2e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a".into(),
        name: "shop-web-1".into(),
        image: "registry.example/shop/web:2.3.1".into(),
    });
    let calls = [(0u32, 3i64), (1, 1), (257, 5), (39, 1234)];
    let clock = WallClock::now();
    let containers = Arc::new(std::collections::HashMap::from([(12345u64, container)]));
    let mut builder = BatchBuilder::default();
    let mut batches = Vec::new();
    for index in 0..count {
        {
            // SAFETY: SyscallRecord is plain old data; all zeroes is a valid record.
            let mut record: SyscallRecord = unsafe { std::mem::zeroed() };
            let (nr, ret) = calls[index % calls.len()];
            record.nr = nr;
            record.ret = if index % 10 == 0 { -2 } else { ret };
            record.tgid = 4000 + (index % 4) as u32;
            record.tid = record.tgid;
            record.enter_ns = 1_000_000_000 + index as u64 * 1000;
            record.duration_ns = 700;
            record.cgroup_id = 12345;
            record.args = [3, 0x7fff_0000_1000, 4096, 0, 0, 0];
            record.comm[..9].copy_from_slice(b"php-fpm8\0");
            let mut data = Vec::new();
            if nr == 257 {
                let path = b"/var/www/shop/config/app.php";
                push_item(capture_kind::STRING, 1, 0, path, 0, &mut data);
            }
            builder.push(&record, &data);
        }
        if builder.len() == 4096 || index + 1 == count {
            batches.push(SpanBatch {
                records: builder.take(),
                containers: containers.clone(),
                clock,
            });
        }
    }
    batches
}

fn session() -> SessionInfo {
    SessionInfo {
        id: uuid::Uuid::new_v4(),
        name: "bench.otlp".into(),
        label: Some("bench".into()),
        run: 1,
        limits: Limits::default(),
    }
}

/// Cuts batches into requests of `BATCH` spans, as the sender takes them.
fn requests(batches: &[SpanBatch]) -> Vec<SpanBatch> {
    let mut requests = Vec::new();
    for batch in batches {
        let mut batch = batch.clone();
        while !batch.is_empty() {
            requests.push(batch.split_to(BATCH.min(batch.len())));
        }
    }
    requests
}

/// ns per span to encode records as OTLP requests of `BATCH` spans, as the sender does.
fn encode(batches: &[SpanBatch]) -> f64 {
    let mut maker = SpanMaker::new(&session(), &resource());
    let requests = requests(batches);
    let spans: usize = requests.iter().map(SpanBatch::len).sum();
    let started = Instant::now();
    let bytes: usize = requests
        .iter()
        .flat_map(|batch| maker.requests(std::slice::from_ref(batch)))
        .map(|request| request.bytes.len())
        .sum();
    let encode = started.elapsed().as_nanos() as f64 / spans as f64;
    assert!(bytes > spans * 100, "{bytes} bytes encoded");
    encode
}

/// The spans tracerd makes of the records, decoded: what the SDK's path is given.
fn decoded_spans(batches: &[SpanBatch]) -> Vec<Span> {
    let mut maker = SpanMaker::new(&session(), &resource());
    requests(batches)
        .iter()
        .flat_map(|batch| {
            let requests = maker.requests(std::slice::from_ref(batch));
            requests.into_iter().flat_map(|request| {
                let mut request =
                    ExportTraceServiceRequest::decode(request.bytes).expect("decodes");
                std::mem::take(&mut request.resource_spans[0].scope_spans[0].spans)
            })
        })
        .collect()
}

/// A session's export, fed as fast as it takes spans: spans/s until the collector acked all.
async fn tracerd_path(config: &OtlpConfig, batches: &[SpanBatch], collector: i32) -> Value {
    let spans: usize = batches.iter().map(SpanBatch::len).sum();
    let dir = output_dir().join("otlp-spool");
    let _ = std::fs::remove_dir_all(&dir);
    let export = Export::start(
        config,
        &resource(),
        &session(),
        &dir,
        ExportOptions {
            batch_spans: BATCH,
            memory_spans: spans,
            ..ExportOptions::default()
        },
    )
    .expect("starting the export");
    let sink = export.sink();
    let started = Instant::now();
    let cpu_before = cpu_time();
    let collector_before = process_cpu_time(collector);
    for batch in batches {
        sink.push(batch.clone());
    }
    while export.counters().exported.load(Ordering::Relaxed) < spans as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "export stalled"
        );
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let collector_cpu = process_cpu_time(collector) - collector_before;
    let spooled = export.counters().spooled.load(Ordering::Relaxed);
    export.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "spans": spans,
        "exported": spans,
        "spooled": spooled,
        "seconds": elapsed.as_secs_f64(),
        "spans_per_sec": spans as f64 / elapsed.as_secs_f64(),
        "cpu_ns_per_span": cpu.as_nanos() as f64 / spans as f64,
        "collector_cpu_ns_per_span": collector_cpu.as_nanos() as f64 / spans as f64,
    })
}

/// CPU time another process has used (all its threads), from `/proc/<pid>/stat`.
fn process_cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the collector's stat");
    // Fields after the command (which may hold spaces): state is the 3rd, utime the 14th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// CPU time this process has used (all threads; they share the one core it is pinned to).
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Counts what the wrapped exporter got through.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    exported: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let count = batch.len() as u64;
        let exported = self.exported.clone();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            if result.is_ok() {
                exported.fetch_add(count, Ordering::Relaxed);
            }
            result
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The same records as SDK spans through the SDK's batch processor.
fn sdk_path(runtime: &tokio::runtime::Runtime, config: &OtlpConfig, inputs: &[Span]) -> Value {
    let exported = Arc::new(AtomicU64::new(0));
    let provider = runtime.block_on(async {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .build()
            .expect("the exporter");
        let processor = BatchSpanProcessor::builder(Counting {
            inner: exporter,
            exported: exported.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(65_536)
                .with_max_export_batch_size(BATCH)
                .with_scheduled_delay(Duration::from_millis(200))
                .build(),
        )
        .build();
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource())
            .build()
    });
    let tracer = provider.tracer("tracerd");
    let started = Instant::now();
    let cpu_before = cpu_time();
    for input in inputs {
        // The same name, times, status and attributes as tracerd's spans, made from them
        // (the copies an instrumented program would make of its own values).
        let builder = SpanBuilder::from_name(input.name.clone())
            .with_start_time(unix_time(input.start_time_unix_nano))
            .with_attributes(input.attributes.iter().map(sdk_attribute));
        let mut span = tracer.build(builder);
        if let Some(status) = &input.status {
            span.set_status(Status::error(status.message.clone()));
        }
        span.end_with_timestamp(unix_time(input.end_time_unix_nano));
    }
    provider.force_flush().expect("flushing the SDK");
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let exported = exported.load(Ordering::Relaxed);
    let _ = provider.shutdown();
    json!({
        "spans": inputs.len(),
        "exported": exported,
        "dropped": inputs.len() as u64 - exported,
        "seconds": elapsed.as_secs_f64(),
        "spans_per_sec": exported as f64 / elapsed.as_secs_f64(),
        "cpu_ns_per_span": cpu.as_nanos() as f64 / inputs.len() as f64,
    })
}

fn unix_time(unix_ns: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(unix_ns)
}

/// An OTLP attribute as the SDK's.
fn sdk_attribute(attribute: &opentelemetry_proto::tonic::common::v1::KeyValue) -> KeyValue {
    use any_value::Value as Any;
    use opentelemetry::{Array, Value as Sdk};
    let value = match attribute
        .value
        .as_ref()
        .and_then(|value| value.value.as_ref())
    {
        Some(Any::IntValue(number)) => Sdk::I64(*number),
        Some(Any::StringValue(text)) => Sdk::String(text.clone().into()),
        Some(Any::ArrayValue(array)) => {
            let items = array.values.iter().filter_map(|item| item.value.as_ref());
            match array.values.first().and_then(|item| item.value.as_ref()) {
                Some(Any::IntValue(_)) => Sdk::Array(Array::I64(
                    items
                        .filter_map(|item| match item {
                            Any::IntValue(number) => Some(*number),
                            _ => None,
                        })
                        .collect(),
                )),
                _ => Sdk::Array(Array::String(
                    items
                        .filter_map(|item| match item {
                            Any::StringValue(text) => Some(text.clone().into()),
                            _ => None,
                        })
                        .collect(),
                )),
            }
        }
        other => panic!("tracerd makes no attribute like {other:?}"),
    };
    KeyValue::new(attribute.key.clone(), value)
}

fn median_of(results: &[Value], key: &str) -> f64 {
    let mut values: Vec<f64> = results.iter().map(|r| r[key].as_f64().unwrap()).collect();
    median(&mut values)
}

fn markdown(results: &Value) -> String {
    let sdk = results["sdk_path"].as_array().unwrap();
    let mut out = String::new();
    out.push_str(&format!(
        "## Span export: `cargo xtask bench otlp`\n\n{}. {} spans per run, medians of {} runs. \
         The benchmark process is pinned to one core and the collector (rotel, receiving on \
         loopback and discarding) to the other; *CPU per span* is the benchmark process's own \
         CPU time (all its threads, on its one core) per span, so 10⁹ / it is what that core can \
         export when the collector keeps up.\n\n",
        results["machine"].as_str().unwrap(),
        SPANS,
        RUNS
    ));
    out.push_str(&format!(
        "Per span, on one core: encoding it straight from its record into the OTLP protobuf \
         request (name, times, status, 16–20 attributes with the decoded arguments and the \
         strace line; requests of {BATCH}) **{:.0} ns**.\n\n",
        results["encode_ns_per_span"].as_f64().unwrap(),
    ));
    out.push_str(
        "| path | spans/s to the collector (ack) | CPU per span | spans/s one core can export | collector's CPU per span | exported of sent |\n\
         |---|---|---|---|---|---|\n",
    );
    for path in results["tracerd_path"].as_array().unwrap() {
        let runs = path["runs"].as_array().unwrap();
        let cpu = median_of(runs, "cpu_ns_per_span");
        out.push_str(&format!(
            "| tracerd's export, {} (records → request of {BATCH} encoded → transport) | **{:.0}** | {cpu:.0} ns | **{:.0}** | {:.0} ns | {} of {} |\n",
            path["protocol"].as_str().unwrap(),
            median_of(runs, "spans_per_sec"),
            1e9 / cpu,
            median_of(runs, "collector_cpu_ns_per_span"),
            runs[0]["exported"],
            runs[0]["spans"],
        ));
    }
    let dropped: u64 = sdk
        .iter()
        .map(|r| r["dropped"].as_u64().unwrap())
        .max()
        .unwrap_or(0);
    let cpu = median_of(sdk, "cpu_ns_per_span");
    out.push_str(&format!(
        "| SDK spans through `BatchSpanProcessor`, grpc (queue 65,536) | {:.0} | {cpu:.0} ns | — | — | {} of {} (up to {dropped} dropped when its queue was full) |\n",
        median_of(sdk, "spans_per_sec"),
        sdk[0]["exported"],
        sdk[0]["spans"],
    ));
    out.push_str(
        "\nThe collector is the slower side when its CPU per span (on its own core) is above \
         tracerd's: then *spans/s to the collector* is the collector's pace, not tracerd's.\n",
    );
    out.push_str(
        "\nReproduce with `cargo xtask bench otlp` (root, for the rotel collector from `cargo xtask setup`). \
         Raw numbers: `target/bench/otlp.json`.\n",
    );
    out
}
