//! `cargo xtask bench otlp`: spans per second from delivered records to a real collector
//! (rotel, receiving and discarding), and nanoseconds per span of building and encoding, with
//! tracerd's process pinned to one core (the collector runs on the other).
//!
//! Two paths side by side, through the same `opentelemetry-otlp` gRPC exporter:
//! - **tracerd's**: records → `SpanData` (built directly) → batches of 2,048 → exporter, as
//!   a session's export does (its sink and sender, memory queue only);
//! - **the SDK's**: the same records as SDK spans (`Tracer::build`, `end_with_timestamp`)
//!   through the SDK's `BatchSpanProcessor` (queue 65,536, batches of 2,048, 200 ms).
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use opentelemetry::trace::{Span as _, SpanBuilder, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
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
        Export, ExportOptions, OtlpConfig, Protocol, SpanBatch, SpanInput,
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
    let batches = batches(SPANS);
    let inputs = inputs(&batches);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let mut build_ns = Vec::new();
    let mut encode_ns = Vec::new();
    for _ in 0..RUNS {
        let (build, encode) = build_and_encode(&inputs[..ENCODE_SPANS]);
        build_ns.push(build);
        encode_ns.push(encode);
    }
    let build_ns = median(&mut build_ns);
    let encode_ns = median(&mut encode_ns);
    println!("build SpanData: {build_ns:.0} ns/span; encode OTLP protobuf: {encode_ns:.0} ns/span");

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
            let result = runtime.block_on(tracerd_path(&config(protocol), &batches));
            println!("tracerd's path, {}: {result}", protocol.as_str());
            runs.push(result);
        }
        ours.push(json!({"protocol": protocol.as_str(), "runs": runs}));
    }
    let config = config(Protocol::Grpc);
    let mut sdk = Vec::new();
    for _ in 0..RUNS {
        let result = sdk_path(&runtime, &config, &inputs);
        println!("SDK batch processor: {result}");
        sdk.push(result);
    }
    let results = json!({
        "machine": machine,
        "spans_per_run": SPANS,
        "runs": RUNS,
        "build_ns_per_span": build_ns,
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

/// The same records, one span input each.
fn inputs(batches: &[SpanBatch]) -> Vec<SpanInput> {
    batches.iter().flat_map(SpanBatch::inputs).collect()
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

/// ns per span to build `SpanData`, and to encode batches of it as the OTLP request.
fn build_and_encode(inputs: &[SpanInput]) -> (f64, f64) {
    let mut maker = SpanMaker::new(&session());
    let started = Instant::now();
    let spans: Vec<SpanData> = inputs.iter().map(|input| maker.span(input)).collect();
    let build = started.elapsed().as_nanos() as f64 / inputs.len() as f64;
    let resource = ResourceAttributesWithSchema::from(&resource());
    let mut bytes = 0usize;
    let started = Instant::now();
    let mut spans = spans.into_iter();
    loop {
        let batch: Vec<SpanData> = spans.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &resource),
        };
        bytes += request.encode_to_vec().len();
    }
    let encode = started.elapsed().as_nanos() as f64 / inputs.len() as f64;
    assert!(bytes > inputs.len() * 100, "{bytes} bytes encoded");
    (build, encode)
}

/// A session's export, fed as fast as it takes spans: spans/s until the collector acked all.
async fn tracerd_path(config: &OtlpConfig, batches: &[SpanBatch]) -> Value {
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
    })
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
fn sdk_path(runtime: &tokio::runtime::Runtime, config: &OtlpConfig, inputs: &[SpanInput]) -> Value {
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
    let mut maker = SpanMaker::new(&session());
    let started = Instant::now();
    let cpu_before = cpu_time();
    for input in inputs {
        // The same attributes and times, made by the same code.
        let data = maker.span(input);
        let builder = SpanBuilder::from_name(data.name)
            .with_kind(data.span_kind)
            .with_start_time(data.start_time)
            .with_attributes(data.attributes);
        let mut span = tracer.build(builder);
        span.set_status(data.status);
        span.end_with_timestamp(data.end_time);
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
        "Per span, on one core: building its `SpanData` (name, times, status, 13–16 attributes) \
         **{:.0} ns**; encoding it into the OTLP protobuf request (opentelemetry-proto's \
         conversion and prost, batches of {BATCH}) **{:.0} ns**.\n\n",
        results["build_ns_per_span"].as_f64().unwrap(),
        results["encode_ns_per_span"].as_f64().unwrap(),
    ));
    out.push_str(
        "| path | spans/s to the collector (ack) | CPU per span | spans/s one core can export | exported of sent |\n\
         |---|---|---|---|---|\n",
    );
    for path in results["tracerd_path"].as_array().unwrap() {
        let runs = path["runs"].as_array().unwrap();
        let cpu = median_of(runs, "cpu_ns_per_span");
        out.push_str(&format!(
            "| tracerd's export, {} (SpanData → batches of {BATCH} → exporter) | **{:.0}** | {cpu:.0} ns | {:.0} | {} of {} |\n",
            path["protocol"].as_str().unwrap(),
            median_of(runs, "spans_per_sec"),
            1e9 / cpu,
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
        "| SDK spans through `BatchSpanProcessor`, grpc (queue 65,536) | {:.0} | {cpu:.0} ns | — | {} of {} (up to {dropped} dropped when its queue was full) |\n",
        median_of(sdk, "spans_per_sec"),
        sdk[0]["exported"],
        sdk[0]["spans"],
    ));
    out.push_str(
        "\nReproduce with `cargo xtask bench otlp` (root, for the rotel collector from `cargo xtask setup`). \
         Raw numbers: `target/bench/otlp.json`.\n",
    );
    out
}
