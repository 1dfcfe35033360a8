//! `cargo xtask bench api`: latency of the sessions API under 100 concurrent clients with
//! 10,000 stored sessions — `GET /v1/sessions/{id}`, and a whole lifecycle
//! (create, start, stop, delete) — against the release build of tracerd.
use std::{
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tracer_tests::{
    bench::{machine, publish},
    cgroup::TestCgroup,
    daemon::Daemon,
    require_root,
};

const STORED_SESSIONS: usize = 10_000;
const CLIENTS: usize = 100;
const PHASE: Duration = Duration::from_secs(5);

fn main() {
    require_root();
    println!("bench api on {}", machine());
    let daemon = Arc::new(Daemon::start(&["--tally-interval-secs", "0"]));
    let stored_target = TestCgroup::create("bench-api-stored");

    let started = Instant::now();
    let ids = seed(&daemon, &stored_target);
    let seeding = started.elapsed();
    println!("stored {} sessions in {seeding:.1?}", ids.len());

    let ids = Arc::new(ids);
    let stored = ids.clone();
    let reads = run_clients(&daemon, move |daemon, client, round| {
        let ids = &stored;
        let id = &ids[(client * 7919 + round * 104_729) % ids.len()];
        let started = Instant::now();
        let (status, _) = daemon.call("GET", &format!("/v1/sessions/{id}"), None, None);
        (started.elapsed(), status)
    });
    println!("GET /v1/sessions/{{id}}: {}", reads.summary());

    // One cgroup per client, so no two clients' sessions are duplicates of each other.
    let cgroups: Vec<TestCgroup> = (0..CLIENTS)
        .map(|_| TestCgroup::create("bench-api-client"))
        .collect();
    let paths: Arc<Vec<String>> = Arc::new(
        cgroups
            .iter()
            .map(|c| c.path().to_str().unwrap().to_owned())
            .collect(),
    );
    let lifecycles = run_clients(&daemon, move |daemon, client, _| {
        let started = Instant::now();
        let body = json!({"target": {"cgroup": paths[client]}, "syscalls": ["getppid"]});
        let (status, created) = daemon.call("POST", "/v1/sessions", Some(&body), None);
        if status != 201 {
            return (started.elapsed(), status);
        }
        let id = created["id"].as_str().unwrap().to_owned();
        let (start_status, _) =
            daemon.call("POST", &format!("/v1/sessions/{id}/start"), None, None);
        let stop_status = if start_status == 200 {
            daemon
                .call("POST", &format!("/v1/sessions/{id}/stop"), None, None)
                .0
        } else {
            200
        };
        let (delete_status, _) = daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
        let worst = [start_status, stop_status, delete_status]
            .into_iter()
            .find(|status| !(200..300).contains(status))
            .unwrap_or(200);
        (started.elapsed(), worst)
    });
    println!("create+start+stop+delete: {}", lifecycles.summary());

    let results = json!({
        "machine": machine(),
        "stored_sessions": ids.len(),
        "clients": CLIENTS,
        "phase_seconds": PHASE.as_secs(),
        "get": reads.to_json(),
        "lifecycle": lifecycles.to_json(),
    });
    publish("api", &results, &markdown(&results));
}

/// Creates the stored sessions, 16 requests at a time.
fn seed(daemon: &Arc<Daemon>, target: &TestCgroup) -> Vec<String> {
    let path = target.path().to_str().unwrap().to_owned();
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let daemon = daemon.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                (thread..STORED_SESSIONS)
                    .step_by(16)
                    .map(|n| {
                        let body = json!({"target": {"cgroup": path}, "name": format!("stored-{n}"), "label": "bench"});
                        let (status, session) = daemon.call("POST", "/v1/sessions", Some(&body), None);
                        assert_eq!(status, 201, "{session}");
                        session["id"].as_str().unwrap().to_owned()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// Latencies of one phase, and the statuses that were not successes.
struct Samples {
    latencies: Vec<Duration>,
    failures: std::collections::BTreeMap<u16, u64>,
    wall: Duration,
}

impl Samples {
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }

    fn summary(&self) -> String {
        format!(
            "{} requests, p50 {:.2?}, p99 {:.2?}, max {:.2?}, failures {:?}",
            self.latencies.len(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.latencies.last().unwrap(),
            self.failures
        )
    }

    fn to_json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "count": self.latencies.len(),
            "per_second": self.latencies.len() as f64 / self.wall.as_secs_f64(),
            "p50_ms": ms(self.percentile(0.5)),
            "p99_ms": ms(self.percentile(0.99)),
            "max_ms": ms(*self.latencies.last().unwrap()),
            "failures_by_status": self.failures,
        })
    }
}

/// Runs `request` from CLIENTS threads at once for PHASE; each returns its latency and status.
fn run_clients(
    daemon: &Arc<Daemon>,
    request: impl Fn(&Daemon, usize, usize) -> (Duration, u16) + Send + Sync + 'static + Clone,
) -> Samples {
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let daemon = daemon.clone();
            let barrier = barrier.clone();
            let request = request.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let until = Instant::now() + PHASE;
                let mut samples = Vec::new();
                let mut round = 0;
                while Instant::now() < until {
                    samples.push(request(&daemon, client, round));
                    round += 1;
                }
                samples
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = std::collections::BTreeMap::new();
    for thread in threads {
        for (latency, status) in thread.join().unwrap() {
            latencies.push(latency);
            if !(200..300).contains(&status) {
                *failures.entry(status).or_insert(0) += 1;
            }
        }
    }
    latencies.sort();
    Samples {
        latencies,
        failures,
        wall: started.elapsed(),
    }
}

fn markdown(results: &Value) -> String {
    let row = |name: &str, goal: &str, r: &Value| {
        format!(
            "| {name} | {} | {:.0}/s | {:.2} ms | {:.2} ms | {:.2} ms | {goal} | {} |\n",
            r["count"],
            r["per_second"].as_f64().unwrap(),
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["max_ms"].as_f64().unwrap(),
            if r["failures_by_status"].as_object().unwrap().is_empty() {
                "none".to_owned()
            } else {
                r["failures_by_status"].to_string()
            },
        )
    };
    let mut out = format!(
        "## Sessions API: `cargo xtask bench api`\n\n{}. The release build of tracerd with {} stored \
         sessions; {} client threads at once for {} s per row, each waiting for its answer before \
         the next request.\n\n| request | count | rate | p50 | p99 | max | goal (p99) | failures by status |\n\
         |---|---|---|---|---|---|---|---|\n",
        results["machine"].as_str().unwrap(),
        results["stored_sessions"],
        results["clients"],
        results["phase_seconds"],
    );
    out.push_str(&row("`GET /v1/sessions/{id}`", "< 5 ms", &results["get"]));
    out.push_str(&row(
        "create + start + stop + delete",
        "< 20 ms",
        &results["lifecycle"],
    ));
    out.push_str(
        "\nReproduce with `cargo xtask bench api` (root). Raw numbers: `target/bench/api.json`.\n",
    );
    out
}
