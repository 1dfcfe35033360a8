//! Following a session live, against the real daemon and kernel: `events?follow=true` and
//! the WebSocket stream get exactly the recorded events, in order, resumable by `seq`; a
//! follower that reads nothing costs the session nothing; followers that vanish leave
//! nothing behind.
use std::{
    io::{BufRead as _, BufReader},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tracer_tests::{cgroup::TestCgroup, daemon::Daemon, require_root, workload};

/// Opens `GET path` and returns its body as a line reader (the response stays open).
fn open_lines(daemon: &Daemon, path: &str) -> impl Iterator<Item = Value> {
    let response = ureq::get(&daemon.url(path))
        .call()
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    assert_eq!(response.status(), 200);
    let reader = BufReader::new(response.into_body().into_reader());
    reader.lines().map(|line| {
        let line = line.expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad NDJSON {line}: {err}"))
    })
}

fn session_on(daemon: &Daemon, cgroup: &TestCgroup) -> String {
    daemon.create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}))
}

fn stop(daemon: &Daemon, id: &str) {
    let (status, body) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200, "{body}");
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[test]
fn a_follower_gets_exactly_the_events_in_order_and_resumes_after_a_seq() {
    require_root();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("follow");
    let id = session_on(&daemon, &cgroup);
    let follower = {
        let lines = open_lines(&daemon, &format!("/v1/sessions/{id}/events?follow=true"));
        std::thread::spawn(move || lines.collect::<Vec<Value>>())
    };
    let (pid, status) = workload::run_in(&cgroup, &["getppid", "1000"]);
    assert!(status.success());
    daemon.wait_for_session(&id, None, "1000 events", |s| {
        s["counters"]["delivered"].as_u64() >= Some(1000)
    });
    stop(&daemon, &id);
    // The stream ends with the run.
    let events = follower.join().unwrap();
    let from_workload = events.iter().filter(|e| e["pid"] == pid).count();
    assert_eq!(from_workload, 1000);
    assert_eq!(seqs(&events), (1..=events.len() as u64).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.get("gap").is_none()));

    // A client that left after seq 400 resumes with exactly the rest.
    let rest: Vec<Value> =
        open_lines(&daemon, &format!("/v1/sessions/{id}/events?after_seq=400")).collect();
    assert_eq!(seqs(&rest), (401..=events.len() as u64).collect::<Vec<_>>());
    // Filters: a process, failed calls (getppid never fails).
    let only =
        |query: &str| open_lines(&daemon, &format!("/v1/sessions/{id}/events?{query}")).count();
    assert_eq!(only(&format!("pid={pid}")), 1000);
    assert_eq!(only("comm=syscall_loop"), events.len());
    assert_eq!(only("failed=true"), 0);
    // A second run goes on numbering where the first stopped.
    let (status, _) = daemon.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
    assert_eq!(status, 200);
    assert!(workload::run_in(&cgroup, &["getppid", "10"]).1.success());
    daemon.wait_for_session(&id, None, "10 more", |s| {
        s["counters"]["delivered"].as_u64() >= Some(events.len() as u64 + 10)
    });
    stop(&daemon, &id);
    let second: Vec<Value> = open_lines(
        &daemon,
        &format!("/v1/sessions/{id}/events?after_seq={}", events.len()),
    )
    .collect();
    assert_eq!(second[0]["seq"], events.len() as u64 + 1, "{:?}", second[0]);
}

#[test]
fn a_follower_that_reads_nothing_costs_the_session_nothing_and_catches_up() {
    require_root();
    const BURSTS: u64 = 50;
    const PER_BURST: u64 = 20_000;
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("idle-follower");
    let id = session_on(&daemon, &cgroup);
    // Connected, but read only once recording is done.
    let mut idle = open_lines(&daemon, &format!("/v1/sessions/{id}/events?follow=true"));
    let started = Instant::now();
    for burst in 1..=BURSTS {
        assert!(
            workload::run_in(&cgroup, &["getppid", &PER_BURST.to_string()])
                .1
                .success()
        );
        // Each burst fits the session's queue: whatever drops would be the follower's doing.
        daemon.wait_for_session(&id, None, "the burst recorded", |s| {
            s["counters"]["delivered"].as_u64() >= Some(burst * PER_BURST)
        });
    }
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let session = daemon.get(&format!("/v1/sessions/{id}"));
    assert_eq!(session["counters"]["dropped"], 0, "{session}");
    let delivered = session["counters"]["delivered"].as_u64().unwrap();
    assert!(delivered >= BURSTS * PER_BURST);
    let metrics = daemon.get_text("/metrics");
    let lag_line = metrics
        .lines()
        .find(|line| line.starts_with("tracerd_stream_lag_events{") && line.contains(&id))
        .unwrap_or_else(|| panic!("no lag for {id} in:\n{metrics}"));
    assert!(
        !lag_line.ends_with(" 0"),
        "the idle follower lags: {lag_line}"
    );
    stop(&daemon, &id);
    let mut expected = 1;
    for event in idle.by_ref() {
        assert_eq!(event["seq"], expected, "{event}");
        expected += 1;
    }
    assert_eq!(
        expected - 1,
        delivered,
        "the follower caught up with everything"
    );
}

#[test]
fn followers_that_vanish_leave_nothing_behind() {
    require_root();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("vanish");
    let id = session_on(&daemon, &cgroup);
    let pid = daemon.pid();
    // The daemon's files (sockets aside: its Docker client opens and closes its own), and its
    // TCP connections on the API's port.
    let fds = || {
        let mut files: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .map(|target| target.display().to_string())
            .filter(|target| !target.starts_with("socket:"))
            .collect();
        files.sort();
        let port = daemon.address().rsplit(':').next().unwrap().to_owned();
        let listing = std::process::Command::new("ss")
            .args([
                "-Htn",
                "state",
                "established",
                "sport",
                "=",
                &format!(":{port}"),
            ])
            .output()
            .expect("ss");
        (
            files,
            String::from_utf8_lossy(&listing.stdout).lines().count(),
        )
    };
    let followers = |daemon: &Daemon| {
        daemon
            .get_text("/metrics")
            .lines()
            .filter(|line| line.starts_with("tracerd_stream_followers{"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert!(workload::run_in(&cgroup, &["getppid", "100"]).1.success());
    // Measured once the run's log is open, and after a call of the test's own (its pooled
    // connection counts on both sides).
    daemon.wait_for_session(&id, None, "the first events written", |s| {
        s["counters"]["delivered"].as_u64() >= Some(100)
    });
    assert_eq!(followers(&daemon), 0);
    let before = fds();
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let mut stream = TcpStream::connect(daemon.address()).unwrap();
            let path = if i % 2 == 0 {
                format!("/v1/sessions/{id}/events?follow=true")
            } else {
                format!("/v1/sessions/{id}/stream")
            };
            let upgrade = if i % 2 == 0 {
                String::new()
            } else {
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_owned()
            };
            use std::io::Write as _;
            write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{upgrade}\r\n").unwrap();
            stream
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while followers(&daemon) < 50 {
        assert!(
            Instant::now() < deadline,
            "50 followers never registered: {}",
            followers(&daemon)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Gone without a goodbye, while the session records nothing.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    while followers(&daemon) > 0 || fds() != before {
        assert!(
            Instant::now() < deadline,
            "after 10 s: {} followers, (files, connections) {:?}, before {before:?}",
            followers(&daemon),
            fds()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&daemon, &id);
}

#[test]
fn the_websocket_sends_state_batches_and_the_end_and_obeys_filters() {
    require_root();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("websocket");
    let id = daemon.create_and_start(
        &json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid", "getpid"]}),
    );
    let url = daemon
        .url(&format!("/v1/sessions/{id}/stream"))
        .replace("http://", "ws://");
    let (mut socket, response) = tungstenite::connect(url).expect("a WebSocket");
    assert_eq!(response.status(), 101);
    let first = match socket.read().expect("a frame") {
        tungstenite::Message::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
        other => panic!("expected the state frame, got {other:?}"),
    };
    assert_eq!(first["type"], "state");
    assert_eq!(first["session"]["id"], id.as_str());
    assert_eq!(first["session"]["status"], "running");
    // Only getpid from now on.
    socket
        .send(tungstenite::Message::Text(
            json!({"type": "filter", "syscall": "getpid"})
                .to_string()
                .into(),
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (pid, status) = workload::run_in(&cgroup, &["getppid", "1500", "getpid", "2500"]);
    assert!(status.success());
    daemon.wait_for_session(&id, None, "4000 events", |s| {
        s["counters"]["delivered"].as_u64() >= Some(4000)
    });
    stop(&daemon, &id);
    let mut getpid = 0;
    let mut frames = 0;
    let end = loop {
        let frame = match socket.read().expect("a frame") {
            tungstenite::Message::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
            tungstenite::Message::Close(_) => panic!("closed before the end frame"),
            _ => continue,
        };
        match frame["type"].as_str().unwrap() {
            "events" => {
                frames += 1;
                let events = frame["events"].as_array().unwrap();
                assert!(events.len() <= 1000, "{} events in a frame", events.len());
                assert!(frame["lag"].is_u64(), "{frame}");
                for event in events {
                    assert_eq!(event["syscall"], "getpid", "{event}");
                    if event["pid"] == pid {
                        getpid += 1;
                    }
                }
            }
            "end" => break frame,
            other => panic!("unexpected frame {other}: {frame}"),
        }
    };
    assert_eq!(getpid, 2500);
    assert!(
        frames >= 3,
        "2,500 events come in frames of at most 1,000: {frames}"
    );
    assert_eq!(end["reason"], "the session is not running");

    // The token is checked at the upgrade, and a tenant follows only its own sessions.
    let tokens = tracer_tests::daemon::tokens_file("stream");
    let secured = Daemon::start(&["--tokens", tokens.to_str().unwrap()]);
    let own = TestCgroup::create("websocket-tenant");
    // Made by the admin for team-a (tenants themselves may only target their containers).
    let (status, created) = secured.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"cgroup": own.path()}, "tenant": "team-a"})),
        Some("the-admin-secret-token"),
    );
    assert_eq!(status, 201, "{created}");
    let path = format!("/v1/sessions/{}/stream", created["id"].as_str().unwrap());
    let ws = |query: &str| {
        let url = secured
            .url(&format!("{path}{query}"))
            .replace("http://", "ws://");
        match tungstenite::connect(url) {
            Ok((_, response)) => response.status().as_u16(),
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(ws(""), 401);
    assert_eq!(ws("?token=team-b-secret-token"), 404);
    assert_eq!(ws("?token=team-a-secret-token"), 101);
    let events = format!("{}?follow=true", path.replace("/stream", "/events"));
    let (status, _) = secured.call("GET", &events, None, Some("team-b-secret-token"));
    assert_eq!(status, 404);
}

#[test]
fn a_daemon_with_followers_connected_still_stops_promptly() {
    require_root();
    let mut daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("shutdown-followers");
    let id = session_on(&daemon, &cgroup);
    let follower = {
        let lines = open_lines(&daemon, &format!("/v1/sessions/{id}/events?follow=true"));
        std::thread::spawn(move || lines.count())
    };
    let url = daemon
        .url(&format!("/v1/sessions/{id}/stream"))
        .replace("http://", "ws://");
    let (mut socket, _) = tungstenite::connect(url).expect("a WebSocket");
    assert!(workload::run_in(&cgroup, &["getppid", "100"]).1.success());
    daemon.wait_for_session(&id, None, "100 events", |s| {
        s["counters"]["delivered"].as_u64() >= Some(100)
    });
    // SIGTERM: both streams end, and the daemon exits well within its 10 s.
    let status = daemon.stop_with(libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(follower.join().unwrap() >= 100);
    let end = loop {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "end" {
                    break frame;
                }
            }
            Ok(_) => {}
            Err(err) => panic!("the WebSocket ended without its end frame: {err}"),
        }
    };
    assert_eq!(end["reason"], "the session is not running");
}
