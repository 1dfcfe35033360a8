//! `cargo xtask bench stream`: following a session live, against the release build of
//! tracerd — how many events per second one follower receives while the session records as
//! fast as it can, the latency from a syscall's exit to a follower at a low rate, and what
//! 100 followers of one session cost the daemon (CPU and memory), side by side with none.
use std::{
    io::{BufRead as _, BufReader},
    sync::{Arc, Barrier},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};
use tracer_tests::{
    bench::{machine, median, publish},
    cgroup::TestCgroup,
    daemon::Daemon,
    require_root, workload,
};

/// Calls of the full-rate phase.
const FULL_RATE_CALLS: u64 = 1_000_000;
/// Calls of the low-rate phase (one every 5 ms).
const LOW_RATE_CALLS: u64 = 400;
/// Calls per run of the many-followers phase.
const FANOUT_CALLS: u64 = 200_000;
const FOLLOWERS: usize = 100;

/// What one follower saw: arrival time of each event (Unix ns) and its syscall's exit time.
struct Received {
    events: u64,
    first_arrival: Option<Instant>,
    last_arrival: Option<Instant>,
    latencies_ms: Vec<f64>,
}

fn unix_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Follows session `id` of the daemon at `base` until its run ends, counting what arrives.
fn follow(base: &str, id: &str, ready: &Barrier) -> Received {
    let response = ureq::get(&format!("{base}/v1/sessions/{id}/events?follow=true"))
        .call()
        .expect("following");
    ready.wait();
    let mut received = Received {
        events: 0,
        first_arrival: None,
        last_arrival: None,
        latencies_ms: Vec::new(),
    };
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.expect("a line");
        let now = Instant::now();
        let event: Value = serde_json::from_str(&line).expect("an event");
        if let (Some(ts), Some(duration)) =
            (event["ts_unix_ns"].as_i64(), event["duration_ns"].as_i64())
        {
            let exit = i128::from(ts) + i128::from(duration);
            received.latencies_ms.push((unix_ns() - exit) as f64 / 1e6);
        }
        received.events += 1;
        received.first_arrival.get_or_insert(now);
        received.last_arrival = Some(now);
    }
    received
}

/// The daemon's CPU time (user + system) in seconds, and its resident memory in MiB.
fn daemon_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0))
        / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, rss_kib / 1024.0)
}

/// A session on a fresh cgroup recording getppid, followed by `followers` clients while
/// `args` runs in it; returns the session's counters, what each follower saw, the wall
/// time of the run, and the daemon's CPU seconds and peak RSS over it.
fn run(daemon: &Daemon, followers: usize, args: &[&str]) -> (Value, Vec<Received>, f64, f64, f64) {
    let cgroup = TestCgroup::create("bench-stream");
    let id = daemon
        .create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}));
    let ready = Arc::new(Barrier::new(followers + 1));
    let daemon_url = Arc::new(daemon.url(""));
    let handles: Vec<_> = (0..followers)
        .map(|_| {
            let (ready, id, url) = (ready.clone(), id.clone(), daemon_url.clone());
            std::thread::spawn(move || follow(&url, &id, &ready))
        })
        .collect();
    ready.wait();
    let (cpu_before, _) = daemon_usage(daemon.pid());
    let started = Instant::now();
    assert!(workload::run_in(&cgroup, args).1.success());
    // Recording is over once matched events are all delivered or dropped.
    daemon.wait_for_session(&id, None, "the run recorded", |s| {
        let c = &s["counters"];
        c["matched"].as_u64() >= Some(1)
            && c["delivered"].as_u64().unwrap_or(0) + c["dropped"].as_u64().unwrap_or(0)
                >= c["matched"].as_u64().unwrap_or(u64::MAX)
    });
    let recorded = started.elapsed().as_secs_f64();
    let (_, rss) = daemon_usage(daemon.pid());
    let (status, _) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200);
    let received: Vec<Received> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (cpu_after, _) = daemon_usage(daemon.pid());
    let final_session = daemon.get(&format!("/v1/sessions/{id}"));
    (
        final_session["counters"].clone(),
        received,
        recorded,
        cpu_after - cpu_before,
        rss,
    )
}

fn main() {
    require_root();
    println!("bench stream on {}", machine());
    let daemon = Daemon::start(&[]);

    // 1. One follower while the session records a full-speed loop.
    let (counters, received, recorded_s, _, _) =
        run(&daemon, 1, &["getppid", &FULL_RATE_CALLS.to_string()]);
    let follower = &received[0];
    let delivered = counters["delivered"].as_u64().unwrap();
    let receive_s = match (follower.first_arrival, follower.last_arrival) {
        (Some(first), Some(last)) => (last - first).as_secs_f64().max(1e-9),
        _ => f64::NAN,
    };
    let full_rate = json!({
        "calls": FULL_RATE_CALLS,
        "matched": counters["matched"],
        "delivered": delivered,
        "dropped": counters["dropped"],
        "recorded_events_per_sec": delivered as f64 / recorded_s,
        "follower_events": follower.events,
        "follower_events_per_sec": follower.events as f64 / receive_s,
        "follower_got_every_delivered_event": follower.events == delivered,
    });
    println!("full rate: {full_rate}");

    // 2. Latency at a low rate: one call every 5 ms.
    let (_, mut received, _, _, _) =
        run(&daemon, 1, &["slow-getppid", &LOW_RATE_CALLS.to_string()]);
    let events = received[0].events;
    let latencies = &mut received[0].latencies_ms;
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let low_rate = json!({
        "calls": LOW_RATE_CALLS,
        "received": events,
        "latency_p50_ms": median(latencies),
        "latency_p99_ms": p99,
        "latency_max_ms": latencies.last().copied().unwrap_or(f64::NAN),
    });
    println!("low rate: {low_rate}");

    // 3. No follower, then 100 followers: the daemon's CPU and memory for the same run.
    let fanout: Vec<Value> = [0, FOLLOWERS]
        .into_iter()
        .map(|followers| {
            let (counters, received, recorded_s, cpu_s, rss) =
                run(&daemon, followers, &["getppid", &FANOUT_CALLS.to_string()]);
            let delivered = counters["delivered"].as_u64().unwrap();
            let complete = received.iter().filter(|r| r.events == delivered).count();
            let row = json!({
                "followers": followers,
                "delivered": delivered,
                "dropped": counters["dropped"],
                "followers_with_every_event": complete,
                "daemon_cpu_s": cpu_s,
                "daemon_cpu_us_per_event": cpu_s * 1e6 / delivered.max(1) as f64,
                "daemon_rss_mib": rss,
                "recorded_s": recorded_s,
            });
            println!("{followers} followers: {row}");
            row
        })
        .collect();

    let results = json!({
        "machine": machine(),
        "full_rate": full_rate,
        "low_rate": low_rate,
        "fanout": fanout,
    });
    publish("stream", &results, &markdown(&results));
}

fn markdown(results: &Value) -> String {
    let full = &results["full_rate"];
    let low = &results["low_rate"];
    let number = |value: &Value| value.as_f64().unwrap_or(f64::NAN);
    let mut out = format!(
        "## Live stream: `cargo xtask bench stream`\n\n{}. The release daemon, one session \
         recording `getppid` in a cgroup, followed through `GET …/events?follow=true`.\n\n\
         | phase | result |\n|---|---|\n\
         | one follower, a {}-call loop at full speed | session delivered {} of {} matched ({} dropped, the pipeline's, see the pipeline issue) at {:.0} events/s; the follower received {} events at {:.0} events/s |\n\
         | latency, syscall exit → follower, one call every 5 ms ({} calls) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |\n",
        results["machine"].as_str().unwrap_or("?"),
        full["calls"],
        full["delivered"],
        full["matched"],
        full["dropped"],
        number(&full["recorded_events_per_sec"]),
        full["follower_events"],
        number(&full["follower_events_per_sec"]),
        low["calls"],
        number(&low["latency_p50_ms"]),
        number(&low["latency_p99_ms"]),
        number(&low["latency_max_ms"]),
    );
    out.push_str(
        "\n| followers | delivered | dropped | followers with every event | daemon CPU | CPU µs/event | daemon RSS |\n|---|---|---|---|---|---|---|\n",
    );
    for row in results["fanout"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} s | {:.2} | {:.0} MiB |\n",
            row["followers"],
            row["delivered"],
            row["dropped"],
            row["followers_with_every_event"],
            number(&row["daemon_cpu_s"]),
            number(&row["daemon_cpu_us_per_event"]),
            number(&row["daemon_rss_mib"]),
        ));
    }
    out.push_str(
        "\nReproduce with `cargo xtask bench stream` (root). Raw numbers: `target/bench/stream.json`.\n",
    );
    out
}
