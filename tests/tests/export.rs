//! Span export end to end: the real daemon, the real kernel, and a real OpenTelemetry
//! collector (rotel) on loopback — one span per delivered event, a 10-second outage with
//! nothing lost or duplicated, and a collector that never comes back.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tracer_tests::{
    cgroup::TestCgroup,
    collector::{Collector, ReceivedSpan},
    daemon::Daemon,
    require_root, workload,
};

fn spans_of(collector: &Collector, id: &str) -> Vec<ReceivedSpan> {
    collector
        .spans()
        .into_iter()
        .filter(|span| span.attribute("tracer.session.id") == Some(id))
        .collect()
}

/// Waits until the collector has `count` spans of session `id`.
fn wait_for_spans(collector: &Collector, id: &str, count: usize) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = spans_of(collector, id);
        if spans.len() >= count || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the workload, started in `cgroup` before the session so every call is traced.
fn run_paused(cgroup: &TestCgroup, args: &[&str], start: impl FnOnce() -> String) -> (String, u32) {
    let mut all = vec!["pause-stdin", "1"];
    all.extend_from_slice(args);
    let child = workload::spawn_in(cgroup, &all);
    let pid = child.id();
    let id = start();
    assert!(workload::resume_and_wait(child).success());
    (id, pid)
}

/// Every delivered event has exactly one span, with the same time, thread and syscall.
fn assert_one_for_one(events: &[Value], spans: &[ReceivedSpan]) {
    let from_events: BTreeSet<(u128, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["ts_unix_ns"].as_u64().unwrap() as u128,
                e["tid"].to_string(),
                e["syscall"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let from_spans: BTreeSet<(u128, String, String)> = spans
        .iter()
        .map(|s| {
            (
                s.start_unix_ns,
                s.attribute("thread.id").unwrap().to_owned(),
                s.name.clone(),
            )
        })
        .collect();
    assert_eq!(from_events.len(), events.len(), "events are distinct");
    let ids: BTreeSet<(&str, &str)> = spans
        .iter()
        .map(|s| (s.trace_id.as_str(), s.span_id.as_str()))
        .collect();
    assert_eq!(ids.len(), spans.len(), "no span arrived twice");
    assert_eq!(spans.len(), events.len(), "one span per event");
    assert_eq!(
        from_spans, from_events,
        "spans and events match one for one"
    );
}

#[test]
fn spans_match_the_delivered_events_one_for_one() {
    require_root();
    let collector = Collector::start();
    let endpoint = collector.grpc_endpoint();
    let daemon = Daemon::start(&["--otlp-endpoint", &endpoint]);
    let cgroup = TestCgroup::create("export");
    let (id, pid) = run_paused(
        &cgroup,
        &["getppid", "300", "openat-missing", "200"],
        || {
            daemon.create_and_start(
                &json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid", "openat"],
                   "label": "build-1234"}),
            )
        },
    );
    let session = daemon.wait_for_session(&id, None, "every event exported", |s| {
        s["counters"]["delivered"] == 500 && s["counters"]["exported"] == 500
    });
    assert_eq!(session["export_status"]["state"], "ok", "{session}");
    assert_eq!(session["export_status"]["endpoint"], endpoint.as_str());
    assert_eq!(session["counters"]["spooled"], 0, "{session}");
    let events = daemon.events(&id);
    let spans = wait_for_spans(&collector, &id, 500);
    assert_one_for_one(&events, &spans);

    let mut names = BTreeMap::new();
    for span in &spans {
        *names.entry(span.name.as_str()).or_insert(0) += 1;
        assert_eq!(
            span.attribute("process.pid"),
            Some(pid.to_string().as_str())
        );
        assert_eq!(span.attribute("thread.id"), Some(pid.to_string().as_str()));
        assert_eq!(
            span.attribute("process.executable.name"),
            Some("syscall_loop")
        );
        assert_eq!(span.attribute("tracer.session.label"), Some("build-1234"));
        assert_eq!(
            span.attribute("tracer.session.name"),
            session["name"].as_str()
        );
        assert_eq!(span.resource["service.name"], "Str(tracerd)");
        assert!(span.resource.contains_key("host.name"), "{span:?}");
        assert!(span.end_unix_ns >= span.start_unix_ns);
        match span.name.as_str() {
            "openat" => {
                assert_eq!(span.status_code, "STATUS_CODE_ERROR", "{span:?}");
                assert_eq!(span.status_message, "ENOENT", "{span:?}");
                assert_eq!(span.attribute("tracer.syscall.ret"), Some("-2"));
                assert_eq!(
                    span.attribute("tracer.syscall.path"),
                    Some("/nonexistent/tracerd-workload")
                );
                // The decoded arguments, by the kernel's names for them.
                assert_eq!(span.attribute("tracer.param.dfd"), Some("AT_FDCWD"));
                assert_eq!(
                    span.attribute("tracer.param.filename"),
                    Some("/nonexistent/tracerd-workload")
                );
                assert_eq!(span.attribute("tracer.param.flags"), Some("O_RDONLY"));
                assert_eq!(
                    span.attribute("tracer.syscall.strace"),
                    Some(
                        "openat(AT_FDCWD, \"/nonexistent/tracerd-workload\", O_RDONLY) \
                         = -1 ENOENT (No such file or directory)"
                    )
                );
            }
            "getppid" => assert_eq!(
                span.attribute("tracer.syscall.strace"),
                Some(
                    format!(
                        "getppid() = {}",
                        span.attribute("tracer.syscall.ret").unwrap()
                    )
                    .as_str()
                )
            ),
            _ => assert_eq!(span.status_code, "STATUS_CODE_UNSET", "{span:?}"),
        }
    }
    assert_eq!(names, BTreeMap::from([("getppid", 300), ("openat", 200)]));
    // One trace per process and run: all 500 spans share it (fewer than the per-trace bound).
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "{traces:?}");

    let metrics = daemon.get_text("/metrics");
    assert!(
        metrics.contains(&format!(
            "tracerd_session_exported_total{{session=\"{id}\"}} 500"
        )),
        "{metrics}"
    );
}

#[test]
fn a_session_chooses_its_collector_or_none() {
    require_root();
    let collector = Collector::start();
    // No default collector: only sessions that name one export.
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("export-choice");
    let (id, _) = run_paused(&cgroup, &["getpid", "120"], || {
        daemon.create_and_start(
            &json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getpid"],
                   "export": {"otlp": {"endpoint": collector.http_endpoint(),
                                       "protocol": "http/protobuf", "compression": "gzip"}}}),
        )
    });
    let session = daemon.wait_for_session(&id, None, "120 spans over HTTP", |s| {
        s["counters"]["exported"] == 120
    });
    assert_eq!(session["export_status"]["protocol"], "http/protobuf");
    assert_eq!(session["export"]["otlp"]["protocol"], "http/protobuf");
    assert_eq!(wait_for_spans(&collector, &id, 120).len(), 120);
    let (status, _) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200);

    // gRPC with gzip and a header: the request encoded by tracerd, compressed by tonic.
    let (grpc, _) = run_paused(&cgroup, &["getpid", "50"], || {
        daemon.create_and_start(
            &json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getpid"],
                   "export": {"otlp": {"endpoint": collector.grpc_endpoint(),
                                       "compression": "gzip", "headers": {"x-team": "blue"}}}}),
        )
    });
    daemon.wait_for_session(&grpc, None, "50 spans over gRPC", |s| {
        s["counters"]["exported"] == 50
    });
    assert_eq!(wait_for_spans(&collector, &grpc, 50).len(), 50);
    let (status, _) = daemon.call("POST", &format!("/v1/sessions/{grpc}/stop"), None, None);
    assert_eq!(status, 200);

    // Export off: events are recorded, nothing is sent.
    let (off, _) = run_paused(&cgroup, &["getpid", "40"], || {
        daemon.create_and_start(
            &json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getpid"],
                   "export": {"otlp": null}}),
        )
    });
    let session = daemon.wait_for_session(&off, None, "40 events", |s| {
        s["counters"]["delivered"] == 40
    });
    assert_eq!(session["counters"]["exported"], 0);
    assert!(session.get("export_status").is_none(), "{session}");
    assert!(spans_of(&collector, &off).is_empty());

    // A bad endpoint or protocol is refused, naming the field.
    for (export, word) in [
        (json!({"otlp": {"endpoint": "localhost:4317"}}), "http://"),
        (
            json!({"otlp": {"endpoint": "http://h:1", "protocol": "thrift"}}),
            "grpc",
        ),
        (
            json!({"otlp": {"endpoint": "http://h:1", "headers": {"bad key": "v"}}}),
            "header",
        ),
    ] {
        let (status, body) = daemon.call(
            "POST",
            "/v1/sessions",
            Some(&json!({"target": {"cgroup": cgroup.path()}, "export": export})),
            None,
        );
        assert_eq!(
            (status, &body["error"]),
            (422, &json!("invalid_field")),
            "{body}"
        );
        assert!(
            body["field"].as_str().unwrap().starts_with("export.otlp"),
            "{body}"
        );
        assert!(body["message"].as_str().unwrap().contains(word), "{body}");
    }
}

#[test]
fn the_standard_otel_variables_choose_the_default_collector() {
    require_root();
    let collector = Collector::start();
    let endpoint = collector.http_endpoint();
    let daemon = Daemon::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=blue"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    let cgroup = TestCgroup::create("otel-env");
    let (id, _) = run_paused(&cgroup, &["getpid", "75"], || {
        daemon
            .create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getpid"]}))
    });
    let session =
        daemon.wait_for_session(&id, None, "75 spans", |s| s["counters"]["exported"] == 75);
    assert_eq!(session["export_status"]["endpoint"], endpoint.as_str());
    assert_eq!(session["export_status"]["protocol"], "http/protobuf");
    assert_eq!(wait_for_spans(&collector, &id, 75).len(), 75);
}

#[test]
fn a_ten_second_outage_loses_and_duplicates_nothing() {
    require_root();
    let mut collector = Collector::start();
    let endpoint = collector.grpc_endpoint();
    // A small memory queue, so the outage's spans go through the on-disk spool.
    let daemon = Daemon::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--export-memory-spans",
        "256",
        "--export-batch-delay",
        "50ms",
    ]);
    let cgroup = TestCgroup::create("outage");
    // About 200 calls a second for 16 s.
    let calls = 3200u64;
    let child = workload::spawn_in(
        &cgroup,
        &["pause-stdin", "1", "slow-getppid", &calls.to_string()],
    );
    let id = daemon
        .create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}));
    let workload = std::thread::spawn(move || workload::resume_and_wait(child));

    std::thread::sleep(Duration::from_secs(3));
    collector.stop();
    let outage = Instant::now();
    let during = daemon.wait_for_session(&id, None, "export retrying", |s| {
        s["export_status"]["state"] == "retrying"
    });
    assert!(
        during["export_status"]["last_error"].is_string(),
        "{during}"
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed()));
    let before_restart = daemon.get(&format!("/v1/sessions/{id}"));
    assert!(
        before_restart["counters"]["spooled"].as_u64().unwrap() > 0,
        "the outage's spans went to the spool: {before_restart}"
    );
    collector.resume();
    assert!(workload.join().unwrap().success());

    let session =
        daemon.wait_for_session(&id, None, "every event exported after the outage", |s| {
            s["counters"]["delivered"] == calls && s["counters"]["exported"] == calls
        });
    assert_eq!(session["counters"]["export_failed"], 0, "{session}");
    assert_eq!(session["export_status"]["state"], "ok", "{session}");
    assert_eq!(session["export_status"]["pending_spans"], 0, "{session}");
    let spans = wait_for_spans(&collector, &id, calls as usize);
    assert_one_for_one(&daemon.events(&id), &spans);
    // And in order: within the trace, span ids (assigned in event order) arrive ascending.
    let received: Vec<u64> = spans
        .iter()
        .map(|s| u64::from_str_radix(&s.span_id, 16).unwrap())
        .collect();
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "spans arrived in order"
    );
}

#[test]
fn spans_left_unsent_at_a_stop_go_first_in_the_next_run() {
    require_root();
    let mut collector = Collector::start();
    let endpoint = collector.grpc_endpoint();
    collector.stop();
    let daemon = Daemon::start(&["--otlp-endpoint", &endpoint]);
    let cgroup = TestCgroup::create("next-run");
    let (id, _) = run_paused(&cgroup, &["getppid", "300"], || {
        daemon.create_and_start(
            &json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}),
        )
    });
    daemon.wait_for_session(&id, None, "300 events", |s| {
        s["counters"]["delivered"] == 300
    });
    // The collector is away: the stop waits its grace period, then leaves the spans on disk.
    let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["counters"]["exported"], 0, "{stopped}");
    assert_eq!(stopped["counters"]["spooled"], 300, "{stopped}");
    collector.resume();
    // The next run has nothing new to send, only what the first left.
    let (status, _) = daemon.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
    assert_eq!(status, 200);
    let session = daemon.wait_for_session(&id, None, "the first run's spans exported", |s| {
        s["counters"]["exported"] == 300
    });
    assert_eq!(session["export_status"]["pending_spans"], 0, "{session}");
    let spans = wait_for_spans(&collector, &id, 300);
    assert_one_for_one(&daemon.events(&id), &spans);
}

#[test]
fn a_collector_that_never_comes_back_bounds_the_spool() {
    require_root();
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Spooled records are compressed: 5,000 getppid spans take about 40 KiB.
    let cap: u64 = 16 * 1024;
    let daemon = Daemon::start(&[
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--spool-cap-bytes",
        &cap.to_string(),
        "--export-memory-spans",
        "64",
    ]);
    let cgroup = TestCgroup::create("no-collector");
    let calls = 5000u64;
    let (id, _) = run_paused(&cgroup, &["getppid", &calls.to_string()], || {
        daemon.create_and_start(
            &json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}),
        )
    });
    let session = daemon.wait_for_session(&id, None, "the spool filling up", |s| {
        s["counters"]["delivered"] == calls && s["export_status"]["state"] == "spool_full"
    });
    let counters = &session["counters"];
    let (spooled, failed) = (
        counters["spooled"].as_u64().unwrap(),
        counters["export_failed"].as_u64().unwrap(),
    );
    assert_eq!(counters["exported"], 0, "{session}");
    assert!(spooled > 0 && failed > 0, "{session}");
    // Everything delivered is spooled, refused, or still in memory (at most 64 + a batch).
    assert!(
        spooled + failed <= calls && spooled + failed + 64 + 2048 >= calls,
        "{session}"
    );
    assert!(
        session["export_status"]["spool_bytes"].as_u64().unwrap() <= cap,
        "{session}"
    );
    // On disk too.
    let spool = daemon.data_dir().join("sessions").join(&id).join("spool");
    let on_disk: u64 = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    assert!(
        on_disk <= cap + 4096,
        "{on_disk} bytes in {}",
        spool.display()
    );
    // The daemon stays healthy, and the session stops (leaving the spool for a next run).
    assert_eq!(daemon.get("/healthz")["status"], "ok");
    let stopping = Instant::now();
    let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200, "{stopped}");
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        stopping.elapsed()
    );
}

/// A collector that answers every request with `400 Bad Request` (what OTLP/HTTP answers a
/// request it cannot take), on a loopback port; counts the requests it got.
fn refusing_collector() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut stream = stream;
            loop {
                // Headers, then the body they announce, then the answer (keep-alive).
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                if line != "\r\n" {
                    break;
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    break;
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let answer = "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\n\r\nbad request";
                if stream.write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    (port, requests)
}

#[test]
fn spans_a_collector_refuses_for_good_are_counted_failed_not_retried_forever() {
    require_root();
    let (port, requests) = refusing_collector();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("export-refused");
    let (id, _) = run_paused(&cgroup, &["getpid", "50"], || {
        daemon.create_and_start(
            &json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getpid"],
                   "export": {"otlp": {"endpoint": format!("http://127.0.0.1:{port}"),
                                       "protocol": "http/protobuf"}}}),
        )
    });
    let session = daemon.wait_for_session(&id, None, "50 spans refused", |s| {
        s["counters"]["export_failed"] == 50
    });
    assert_eq!(session["counters"]["exported"], 0, "{session}");
    let last_error = session["export_status"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(last_error.contains("400"), "{session}");
    // Refused once, not retried: the collector saw as many requests as batches were sent.
    let seen = requests.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::Relaxed),
        seen,
        "no retry"
    );
    let (status, _) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200);
}
