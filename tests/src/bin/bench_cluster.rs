//! `cargo xtask bench cluster`: cluster mode's costs, with the release tracerd on two nodes
//! (each with its own Docker engine) and a 3-member etcd on loopback, next to the same work
//! on one node without etcd:
//! - time from `POST start` (on node A) to the first event recorded on node B, and to that
//!   event being readable through node A; a local session started on B as the peer;
//! - `GET /v1/sessions/{id}` and a 1,000-session list with 1,000 cluster sessions stored,
//!   next to 1,000 local ones on a single node;
//! - etcd writes (puts, transactions, deletes) and reads per cluster session lifecycle;
//! - the idle agent's CPU with 1,000 cluster sessions stored.
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracer_tests::{
    bench::{machine, median, publish},
    cluster::Node,
    daemon::Daemon,
    etcd::EtcdCluster,
    require_root,
};

const ROUNDS: usize = 15;
const STORED: usize = 1000;
const READS: usize = 500;

fn main() {
    require_root();
    println!("bench cluster on {}", machine());
    let etcd = EtcdCluster::start(3);
    let a = Node::start_with("a", 1, &etcd, &["--tally-interval-secs", "0"]);
    let b = Node::start_with("b", 2, &etcd, &["--tally-interval-secs", "0"]);
    a.wait_ready(2);
    // A container on B that calls getppid a few hundred times a second, for ever.
    let busy = format!("tracerd-bench-cluster-{}", std::process::id());
    let run = b.engine.docker(&[
        "run",
        "-d",
        "--name",
        &busy,
        "tracerd-test:latest",
        "sh",
        "-c",
        "while true; do /bin/syscall_loop getppid 1; sleep 0.002; done",
    ]);
    assert!(run.status.success(), "{run:?}");

    let first_event = start_to_first_event(&a.daemon, &busy, true);
    let local_first_event = start_to_first_event(&b.daemon, &busy, false);
    println!("start → first event: cluster {first_event:?}, local {local_first_event:?}");

    let writes = lifecycle_writes(&etcd, &a, &busy);
    println!("etcd per lifecycle: {writes}");

    let cluster_reads = reads_with_stored(&a.daemon, true);
    let idle_cpu = idle_cpu_ms_per_s(&a.daemon);
    println!("cluster reads: {cluster_reads}, idle agent {idle_cpu:.1} ms CPU/s");
    drop((a, b));
    let single = Daemon::start(&["--tally-interval-secs", "0"]);
    let local_reads = reads_with_stored(&single, false);
    println!("local reads: {local_reads}");

    let results = json!({
        "machine": machine(),
        "rounds": ROUNDS,
        "start_to_first_event": {"cluster": first_event, "local": local_first_event},
        "etcd_per_lifecycle": writes,
        "reads": {"cluster": cluster_reads, "local": local_reads},
        "idle_agent_cpu_ms_per_s": idle_cpu,
    });
    publish("cluster", &results, &markdown(&results));
}

/// Medians over [`ROUNDS`] sessions on container `busy` (on node B), created and started
/// through `through`: ms from `POST start` to the first event's timestamp, and to
/// that event being readable through `through`.
fn start_to_first_event(through: &Daemon, busy: &str, cluster: bool) -> Value {
    let (mut recorded, mut readable, mut start_calls) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut body = json!({"target": {"container": busy}, "syscalls": ["getppid"]});
        if cluster {
            body["scope"] = json!("cluster");
        }
        let (status, created) = through.call("POST", "/v1/sessions", Some(&body), None);
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let asked = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let started = Instant::now();
        let (status, session) =
            through.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
        assert_eq!(status, 200, "{session}");
        start_calls.push(ms(started.elapsed()));
        let first = loop {
            let text = through.get_text(&format!("/v1/sessions/{id}/events"));
            if let Some(line) = text.lines().next() {
                break serde_json::from_str::<Value>(line).unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no event in 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        readable.push(ms(started.elapsed()));
        let ts = first["ts_unix_ns"].as_i64().unwrap() as i128;
        recorded.push((ts - asked) as f64 / 1e6);
        through.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
        through.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
    }
    json!({
        "start_call_ms": median(&mut start_calls),
        "first_event_recorded_ms": median(&mut recorded),
        "first_event_readable_ms": median(&mut readable),
    })
}

/// etcd's writes and reads for one cluster session's whole life on two nodes (create,
/// start, 2 s running, stop, delete), less what the same time idle costs; medians of 5.
fn lifecycle_writes(etcd: &EtcdCluster, a: &Node, busy: &str) -> Value {
    const COUNTERS: [&str; 4] = [
        "etcd_mvcc_put_total",
        "etcd_mvcc_txn_total",
        "etcd_mvcc_delete_total",
        "etcd_mvcc_range_total",
    ];
    let counts = || COUNTERS.map(|name| etcd.metric(0, name));
    let delta = |before: [f64; 4], after: [f64; 4]| {
        std::array::from_fn::<f64, 4, _>(|i| after[i] - before[i])
    };
    let mut samples: Vec<[f64; 4]> = Vec::new();
    for _ in 0..5 {
        let (before, started) = (counts(), Instant::now());
        let body =
            json!({"scope": "cluster", "target": {"container": busy}, "syscalls": ["getppid"]});
        let (_, created) = a.daemon.call("POST", "/v1/sessions", Some(&body), None);
        let id = created["id"].as_str().unwrap().to_owned();
        a.daemon
            .call("POST", &format!("/v1/sessions/{id}/start"), None, None);
        std::thread::sleep(Duration::from_secs(2));
        a.daemon
            .call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
        a.daemon
            .call("DELETE", &format!("/v1/sessions/{id}"), None, None);
        let lifecycle = delta(before, counts());
        let (before, took) = (counts(), started.elapsed());
        std::thread::sleep(took);
        let idle = delta(before, counts());
        samples.push(std::array::from_fn(|i| lifecycle[i] - idle[i]));
    }
    let median_of = |i: usize| median(&mut samples.iter().map(|s| s[i]).collect::<Vec<_>>());
    json!({
        "puts": median_of(0), "txns": median_of(1), "deletes": median_of(2), "ranges": median_of(3),
        "running_seconds": 2,
    })
}

/// Latencies of single reads and of 1,000-session lists with [`STORED`] sessions stored.
fn reads_with_stored(daemon: &Daemon, cluster: bool) -> Value {
    let cgroup = tracer_tests::cgroup::TestCgroup::create("bench-cluster-stored");
    let mut ids = Vec::new();
    for n in 0..STORED {
        let mut body = json!({"name": format!("stored-{n}"), "target": {"cgroup": cgroup.path()}});
        if cluster {
            body["scope"] = json!("cluster");
        }
        let (status, created) = daemon.call("POST", "/v1/sessions", Some(&body), None);
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let mut gets: Vec<f64> = (0..READS)
        .map(|n| {
            let started = Instant::now();
            let (status, _) = daemon.call(
                "GET",
                &format!("/v1/sessions/{}", ids[(n * 7919) % ids.len()]),
                None,
                None,
            );
            assert_eq!(status, 200);
            ms(started.elapsed())
        })
        .collect();
    let mut lists: Vec<f64> = (0..10)
        .map(|_| {
            let started = Instant::now();
            let list = daemon.get("/v1/sessions?limit=1000");
            assert_eq!(list["sessions"].as_array().map(Vec::len), Some(STORED));
            ms(started.elapsed())
        })
        .collect();
    gets.sort_by(f64::total_cmp);
    let p99 = gets[(gets.len() - 1) * 99 / 100];
    json!({"get_p50_ms": median(&mut gets), "get_p99_ms": p99, "list_1000_median_ms": median(&mut lists)})
}

/// The daemon's CPU while nothing happens but its agent's passes, in ms per second.
fn idle_cpu_ms_per_s(daemon: &Daemon) -> f64 {
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()
    };
    let (before, started) = (ticks(), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    // Clock ticks are 10 ms.
    (ticks() - before) * 10.0 / started.elapsed().as_secs_f64()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn markdown(results: &Value) -> String {
    let first = &results["start_to_first_event"];
    let writes = &results["etcd_per_lifecycle"];
    let reads = &results["reads"];
    format!(
        "## Cluster mode (`cargo xtask bench cluster`)\n\n\
         {machine}. Release tracerd on two nodes, each with its own Docker engine, and a \
         3-member etcd on loopback; medians of {rounds} rounds. Reproduce: `cargo xtask bench cluster`.\n\n\
         | start → first event (container on node B) | `POST start` answered | first event recorded | readable through the API |\n\
         |---|---|---|---|\n\
         | cluster session, started through node A | {c_call:.1} ms | {c_rec:.1} ms | {c_read:.1} ms |\n\
         | local session on node B (the peer) | {l_call:.1} ms | {l_rec:.1} ms | {l_read:.1} ms |\n\n\
         | with {stored} sessions stored | `GET /v1/sessions/{{id}}` p50 | p99 | list of 1,000 |\n\
         |---|---|---|---|\n\
         | cluster sessions (etcd) | {cg50:.2} ms | {cg99:.2} ms | {cl:.1} ms |\n\
         | local sessions, single node (SQLite) | {lg50:.2} ms | {lg99:.2} ms | {ll:.1} ms |\n\n\
         etcd per cluster session lifecycle (create, start, 2 s running on 2 nodes, stop, delete; \
         less the same time idle; etcd's own `etcd_mvcc_*_total` counters): {puts:.0} puts \
         (those in transactions included), {deletes:.0} deletes, {ranges:.0} reads. The idle \
         daemon with {stored} cluster sessions stored: {idle:.1} ms of CPU per second.\n",
        machine = results["machine"].as_str().unwrap_or_default(),
        rounds = results["rounds"],
        c_call = first["cluster"]["start_call_ms"].as_f64().unwrap_or(0.0),
        c_rec = first["cluster"]["first_event_recorded_ms"].as_f64().unwrap_or(0.0),
        c_read = first["cluster"]["first_event_readable_ms"].as_f64().unwrap_or(0.0),
        l_call = first["local"]["start_call_ms"].as_f64().unwrap_or(0.0),
        l_rec = first["local"]["first_event_recorded_ms"].as_f64().unwrap_or(0.0),
        l_read = first["local"]["first_event_readable_ms"].as_f64().unwrap_or(0.0),
        stored = STORED,
        cg50 = reads["cluster"]["get_p50_ms"].as_f64().unwrap_or(0.0),
        cg99 = reads["cluster"]["get_p99_ms"].as_f64().unwrap_or(0.0),
        cl = reads["cluster"]["list_1000_median_ms"].as_f64().unwrap_or(0.0),
        lg50 = reads["local"]["get_p50_ms"].as_f64().unwrap_or(0.0),
        lg99 = reads["local"]["get_p99_ms"].as_f64().unwrap_or(0.0),
        ll = reads["local"]["list_1000_median_ms"].as_f64().unwrap_or(0.0),
        puts = writes["puts"].as_f64().unwrap_or(0.0),
        deletes = writes["deletes"].as_f64().unwrap_or(0.0),
        ranges = writes["ranges"].as_f64().unwrap_or(0.0),
        idle = results["idle_agent_cpu_ms_per_s"].as_f64().unwrap_or(0.0),
    )
}
