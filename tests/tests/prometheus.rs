//! The Prometheus scrape config, alerting rules and Grafana dashboard in deploy/, against a real
//! Prometheus scraping real daemons: every dashboard query and every alert's expression must
//! return data while sessions run (each alert under the condition it is about), and
//! `promtool` must accept the files.
use std::{
    io::{BufRead as _, BufReader},
    process::Command,
    time::Duration,
};

use serde_json::{json, Value};
use tracer_tests::{
    cgroup::TestCgroup,
    daemon::Daemon,
    prometheus::{deploy_dir, Prometheus},
    require_root, workload,
};

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .expect("running promtool (cargo xtask setup installs prometheus)");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_config_and_the_rules() {
    let deploy = deploy_dir().join("prometheus");
    promtool(&[
        "check",
        "rules",
        deploy.join("tracerd-rules.yml").to_str().unwrap(),
    ]);
    promtool(&[
        "check",
        "config",
        deploy.join("prometheus.yml").to_str().unwrap(),
    ]);
}

/// The dashboard's queries with its variables set to "all" and its rate window to 15 s.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = deploy_dir().join("grafana/dashboards/tracerd.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let queries: Vec<(String, String)> = panels
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap().to_owned();
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            targets.into_iter().map(move |target| {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "15s")
                    .replace("$instance", ".*")
                    .replace("$session", ".*");
                (title.clone(), expr)
            })
        })
        .collect();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    queries
}

/// Daemon A records on eBPF with rings too small for a full-speed loop (drops) and exports
/// to a collector that is not there with no room to spool (spool full); daemon B cannot use
/// eBPF.
fn daemons() -> (Daemon, Daemon) {
    let a = Daemon::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--ring-bytes",
        "65536",
        "--otlp-endpoint",
        "http://127.0.0.1:9",
        "--export-memory-spans",
        "1",
        "--spool-cap-bytes",
        "1",
    ]);
    let b = Daemon::start(&["--no-ebpf", "--metrics-listen", "127.0.0.1:0"]);
    (a, b)
}

/// The rules Prometheus loaded, in the file's order.
const ALERTS: [&str; 6] = [
    "TracerdDown",
    "TracerdSessionDroppingEvents",
    "TracerdRingBuffersFull",
    "TracerdExportSpoolFull",
    "TracerdSpansNotExported",
    "TracerdEbpfUnavailable",
];

/// Every dashboard query and every rule that returned no data within 30 s.
fn queries_without_data(prometheus: &Prometheus, rules: &[Value]) -> Vec<String> {
    let mut missing = Vec::new();
    for (title, query) in dashboard_queries() {
        if let Err(err) = prometheus.wait_for_data(&query, Duration::from_secs(30)) {
            missing.push(format!("panel {title:?}: {err}"));
        }
    }
    for rule in rules {
        let query = rule["query"].as_str().unwrap();
        if let Err(err) = prometheus.wait_for_data(query, Duration::from_secs(30)) {
            missing.push(format!("alert {}: {err}", rule["name"]));
        }
    }
    missing
}

#[test]
fn every_dashboard_query_and_alert_has_data_from_a_real_prometheus() {
    require_root();
    let (a, b) = daemons();
    // And a node that answers no scrape at all.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let cgroup = TestCgroup::create("prometheus");
    let mut load = workload::spawn_in(&cgroup, &["getppid", "2000000000"]);
    let id = a.create_and_start(
        &json!({"name": "prom-a", "target": {"cgroup": cgroup.path()},
                                        "syscalls": ["getppid"]}),
    );
    // A live follower, reading and discarding.
    let follow = ureq::get(&a.url(&format!("/v1/sessions/{id}/events?follow=true")))
        .call()
        .unwrap();
    let follower = std::thread::spawn(move || {
        let reader = BufReader::new(follow.into_body().into_reader());
        reader.lines().take_while(Result::is_ok).count()
    });

    let prometheus = Prometheus::start(&[a.metrics_address(), b.metrics_address(), down.clone()]);
    let up = prometheus
        .wait_for_data(r#"count(up{job="tracerd"}) == 3"#, Duration::from_secs(30))
        .unwrap_or_else(|err| panic!("{err}\n{}", prometheus.log()));
    assert_eq!(up.len(), 1);

    let rules = prometheus.rules();
    let names: Vec<&str> = rules
        .iter()
        .filter_map(|rule| rule["name"].as_str())
        .collect();
    assert_eq!(names, ALERTS, "the rules Prometheus loaded");
    let missing = queries_without_data(&prometheus, &rules);
    // Each alert fires for the node it is about.
    let firing = |name: &str| -> Vec<Value> {
        let rule = rules.iter().find(|rule| rule["name"] == name).unwrap();
        prometheus.query(rule["query"].as_str().unwrap())
    };
    assert_eq!(
        firing("TracerdDown")[0]["metric"]["instance"],
        down.as_str()
    );
    assert_eq!(
        firing("TracerdEbpfUnavailable")[0]["metric"]["instance"],
        b.metrics_address().as_str()
    );
    assert_eq!(
        firing("TracerdExportSpoolFull")[0]["metric"]["session"],
        id.as_str()
    );

    let _ = load.kill();
    let _ = load.wait();
    let (status, _) = a.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200);
    follower.join().unwrap();
    assert!(
        missing.is_empty(),
        "queries without data:\n{}",
        missing.join("\n")
    );
}
