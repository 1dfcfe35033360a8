//! Cluster mode against real parts: a 3-member etcd cluster on loopback, and two tracerd
//! nodes, each with its own Docker engine (its own socket, data root and cgroup parent), its
//! own data directory and port. Sessions are created and read through one node and run
//! where their containers are; counts are exact.
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracer_tests::{cluster::Node, daemon::Daemon, etcd::EtcdCluster, require_root};

/// Polls `check` until it gives a value, for up to `within`.
fn wait_until<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn part<'a>(session: &'a Value, node: &str) -> &'a Value {
    session["parts"]
        .as_array()
        .and_then(|parts| parts.iter().find(|part| part["node"] == node))
        .unwrap_or_else(|| panic!("no part on node {node}: {session}"))
}

fn create(daemon: &Daemon, body: &Value) -> String {
    let (status, created) = daemon.call("POST", "/v1/sessions", Some(body), None);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["scope"], "cluster", "{created}");
    created["id"].as_str().expect("an id").to_owned()
}

fn act(daemon: &Daemon, id: &str, action: &str) -> Value {
    let (status, session) = daemon.call("POST", &format!("/v1/sessions/{id}/{action}"), None, None);
    assert_eq!(status, 200, "{action}: {session}");
    session
}

/// Every event line of the session through `daemon`, as (node, seq) pairs; each line must be
/// a getppid event.
fn event_nodes(daemon: &Daemon, id: &str) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    daemon.each_event_line(id, "", |line| {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{line}: {err}"));
        assert_eq!(event["syscall"], "getppid", "{line}");
        let node = event["node"]
            .as_str()
            .unwrap_or_else(|| panic!("no node: {line}"));
        seen.push((node.to_owned(), event["seq"].as_u64().expect("a seq")));
    });
    seen
}

fn count(events: &[(String, u64)], node: &str) -> usize {
    events.iter().filter(|(name, _)| name == node).count()
}

/// Waits (15 s at most) until the session is `finished` and none of its parts runs.
fn wait_finished(daemon: &Daemon, id: &str, what: &str) -> Value {
    wait_until(what, Duration::from_secs(15), || {
        let session = daemon.get(&format!("/v1/sessions/{id}"));
        let parts = session["parts"].as_array()?;
        let running = parts.iter().any(|part| part["status"] == "running");
        (session["status"] == "finished" && !running).then_some(session)
    })
}

fn wait_delivered(daemon: &Daemon, id: &str, delivered: u64) -> Value {
    wait_until(
        &format!("{delivered} events delivered"),
        Duration::from_secs(15),
        || {
            let session = daemon.get(&format!("/v1/sessions/{id}"));
            (session["counters"]["delivered"] == delivered).then_some(session)
        },
    )
}

#[test]
fn cluster_sessions_run_where_their_containers_are_and_add_up_exactly() {
    require_root();
    let etcd = EtcdCluster::start(3);
    let a = Node::start("a", 1, &etcd);
    let mut b = Node::start("b", 2, &etcd);
    let nodes = wait_until("both nodes ready", Duration::from_secs(15), || {
        let nodes = a.daemon.get("/v1/nodes");
        let ready = nodes["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count();
        (ready == 2).then_some(nodes)
    });
    assert_eq!(nodes["node"], "a");
    assert_eq!(nodes["nodes"][1]["name"], "b");
    assert_eq!(nodes["nodes"][1]["labels"]["role"], "b");
    assert_eq!(
        nodes["nodes"][1]["api"],
        format!("http://{}", b.daemon.address())
    );

    // A container only node B has: node A runs nothing, B traces it; counted through A.
    let pid = std::process::id();
    let only_b = format!("tracerd-cluster-only-b-{pid}");
    b.run_container(&only_b);
    let id = create(
        &a.daemon,
        &json!({"scope": "cluster", "target": {"container": only_b}, "syscalls": ["getppid"]}),
    );
    let started = act(&a.daemon, &id, "start");
    assert_eq!(started["status"], "running", "{started}");
    assert_eq!(part(&started, "a")["status"], "waiting", "{started}");
    assert_eq!(part(&started, "b")["status"], "running", "{started}");
    b.exec_getppid(&only_b, 2000);
    let session = wait_delivered(&a.daemon, &id, 2000);
    assert_eq!(session["counters"]["matched"], 2000, "{session}");
    assert_eq!(session["counters"]["dropped"], 0, "{session}");
    assert_eq!(part(&session, "a")["counters"]["delivered"], 0, "{session}");
    let events = event_nodes(&a.daemon, &id);
    assert_eq!((events.len(), count(&events, "b")), (2000, 2000));

    // The same name on both nodes: both parts, exact sums, events from both through B.
    let both = format!("tracerd-cluster-both-{pid}");
    a.run_container(&both);
    b.run_container(&both);
    let id2 = create(
        &b.daemon,
        &json!({"scope": "cluster", "target": {"container": both}, "syscalls": ["getppid"]}),
    );
    act(&b.daemon, &id2, "start");
    a.exec_getppid(&both, 1000);
    b.exec_getppid(&both, 3000);
    wait_delivered(&b.daemon, &id2, 4000);
    let stopped = act(&a.daemon, &id2, "stop");
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert_eq!(stopped["counters"]["matched"], 4000, "{stopped}");
    assert_eq!(stopped["counters"]["delivered"], 4000, "{stopped}");
    assert_eq!(
        part(&stopped, "a")["counters"]["delivered"],
        1000,
        "{stopped}"
    );
    assert_eq!(
        part(&stopped, "b")["counters"]["delivered"],
        3000,
        "{stopped}"
    );
    assert_eq!(part(&stopped, "a")["status"], "stopped", "{stopped}");
    let events = event_nodes(&b.daemon, &id2);
    assert_eq!((count(&events, "a"), count(&events, "b")), (1000, 3000));

    // Each part stops at max_events_per_node exactly; the session finishes when all have.
    let id3 = create(
        &a.daemon,
        &json!({"scope": "cluster", "target": {"container": both}, "syscalls": ["getppid"],
                "limits": {"max_events_per_node": 150}}),
    );
    act(&a.daemon, &id3, "start");
    a.exec_getppid(&both, 200);
    b.exec_getppid(&both, 200);
    let finished = wait_finished(&b.daemon, &id3, "both parts at their limit");
    assert_eq!(finished["finished_reason"], "max_events", "{finished}");
    assert_eq!(finished["counters"]["delivered"], 300, "{finished}");
    assert_eq!(finished["counters"]["matched"], 400, "{finished}");
    assert_eq!(finished["counters"]["dropped"], 100, "{finished}");
    assert_eq!(
        part(&finished, "a")["counters"]["delivered"],
        150,
        "{finished}"
    );

    // max_events is one budget for the whole session: the parts together record exactly it.
    let budgeted = create(
        &a.daemon,
        &json!({"scope": "cluster", "target": {"container": both}, "syscalls": ["getppid"],
                "limits": {"max_events": 250}}),
    );
    act(&a.daemon, &budgeted, "start");
    a.exec_getppid(&both, 200);
    wait_delivered(&b.daemon, &budgeted, 200);
    b.exec_getppid(&both, 200);
    let finished = wait_finished(&b.daemon, &budgeted, "the session's budget spent");
    assert_eq!(finished["finished_reason"], "max_events", "{finished}");
    assert_eq!(finished["counters"]["delivered"], 250, "{finished}");
    assert_eq!(finished["counters"]["matched"], 400, "{finished}");
    assert_eq!(
        part(&finished, "b")["counters"]["delivered"],
        50,
        "{finished}"
    );

    // Node B dies: its part is lost within 15 s on A's view. Meanwhile a session is stopped
    // (through PUT) and another deleted; back, B reconciles: its part of the first stops,
    // of the second goes, and the running one resumes with no event lost or counted twice.
    let id4 = create(
        &a.daemon,
        &json!({"scope": "cluster", "target": {"container": both}, "syscalls": ["getppid"]}),
    );
    act(&a.daemon, &id4, "start");
    let killed = Instant::now();
    b.daemon.stop_with(libc::SIGKILL, Duration::from_secs(10));
    let lost = wait_until("node b's part lost", Duration::from_secs(15), || {
        let session = a.daemon.get(&format!("/v1/sessions/{id}"));
        (part(&session, "b")["status"] == "lost").then_some(session)
    });
    let lost_after = killed.elapsed();
    assert!(lost_after <= Duration::from_secs(15), "{lost_after:?}");
    println!("node b lost {lost_after:?} after kill -9");
    assert_eq!(
        lost["counters"]["delivered"], 2000,
        "the last counts stay: {lost}"
    );
    let nodes = a.daemon.get("/v1/nodes");
    assert_eq!(nodes["nodes"][1]["status"], "lost", "{nodes}");
    let (status, body) = a.daemon.call(
        "PUT",
        &format!("/v1/sessions/{id4}"),
        Some(&json!({"status": "stopped"})),
        None,
    );
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("stopped")),
        "{body}"
    );
    let (status, body) = a
        .daemon
        .call("DELETE", &format!("/v1/sessions/{id3}"), None, None);
    assert_eq!(status, 204, "{body}");
    b.daemon.restart_after(libc::SIGKILL);
    wait_until("node b reconciled", Duration::from_secs(15), || {
        let running = a.daemon.get(&format!("/v1/sessions/{id}"));
        let stopped = a.daemon.get(&format!("/v1/sessions/{id4}"));
        (part(&running, "b")["status"] == "running" && part(&stopped, "b")["status"] == "stopped")
            .then_some(())
    });
    wait_until(
        "node b's part of a deleted session gone",
        Duration::from_secs(15),
        || (!b.daemon.data_dir().join("sessions").join(&id3).exists()).then_some(()),
    );
    b.exec_getppid(&only_b, 500);
    wait_delivered(&a.daemon, &id, 2500);

    // A container of the same name that starts on node A later: A's part joins.
    a.run_container(&only_b);
    wait_until("node a's part to join", Duration::from_secs(15), || {
        let session = b.daemon.get(&format!("/v1/sessions/{id}"));
        (part(&session, "a")["status"] == "running").then_some(())
    });
    a.exec_getppid(&only_b, 300);
    wait_delivered(&a.daemon, &id, 2800);
    let stopped = act(&a.daemon, &id, "stop");
    assert_eq!(stopped["counters"]["matched"], 2800, "{stopped}");
    let events = event_nodes(&a.daemon, &id);
    let mut unique = events.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!((events.len(), unique.len()), (2800, 2800), "no event twice");
    assert_eq!((count(&events, "a"), count(&events, "b")), (300, 2500));

    // One deadline for every part: each ends by it (on its own TTL, or stopped by the agent
    // that finished the session, whichever is first).
    let timed = create(
        &b.daemon,
        &json!({"scope": "cluster", "target": {"container": both}, "syscalls": ["getppid"],
                "limits": {"ttl": "2s"}}),
    );
    let started = Instant::now();
    act(&b.daemon, &timed, "start");
    let ended = wait_finished(&a.daemon, &timed, "the TTL");
    assert_eq!(ended["finished_reason"], "ttl", "{ended}");
    assert!(started.elapsed() >= Duration::from_secs(2), "{ended}");

    // A launch lands on one node and finishes there.
    let launch = create(
        &a.daemon,
        &json!({"scope": "cluster", "syscalls": ["getppid"], "target": {"launch": {
            "image": "tracerd-test:latest", "command": ["/bin/syscall_loop", "getppid", "300"]}}}),
    );
    let started = act(&a.daemon, &launch, "start");
    let placed = started["placement"]
        .as_str()
        .expect("a placement")
        .to_owned();
    assert!(placed == "a" || placed == "b", "{started}");
    let finished = wait_until("the launch to finish", Duration::from_secs(20), || {
        let session = b.daemon.get(&format!("/v1/sessions/{launch}"));
        (session["status"] == "finished").then_some(session)
    });
    assert_eq!(finished["finished_reason"], "exited", "{finished}");
    assert_eq!(
        finished["parts"].as_array().map(Vec::len),
        Some(1),
        "{finished}"
    );
    assert_eq!(part(&finished, &placed)["status"], "finished", "{finished}");
    // The container's runtime makes a getppid call or two before the command starts.
    let mut from_loop = 0;
    let lines = b.daemon.each_event_line(&launch, "", |line| {
        from_loop += u64::from(line.contains("\"comm\":\"syscall_loop\""));
    });
    assert_eq!(from_loop, 300);
    assert_eq!(finished["counters"]["delivered"], lines, "{finished}");

    // Deleting through one node removes every part, on every node.
    for session in [&id, &id2, &id4, &budgeted, &timed, &launch] {
        let (status, body) =
            b.daemon
                .call("DELETE", &format!("/v1/sessions/{session}"), None, None);
        assert_eq!(status, 204, "{body}");
    }
    for node in [&a, &b] {
        let list = node.daemon.get("/v1/sessions");
        assert_eq!(list["sessions"], json!([]), "{}: {list}", node.name);
        let parts =
            std::fs::read_dir(node.daemon.data_dir().join("sessions")).map_or(0, Iterator::count);
        assert_eq!(parts, 0, "{}'s event logs are gone", node.name);
    }
}

#[test]
fn nodes_record_through_etcd_outages_and_converge_when_it_returns() {
    require_root();
    let mut etcd = EtcdCluster::start(3);
    let a = Node::start("a", 3, &etcd);
    let b = Node::start("b", 4, &etcd);
    let name = format!("tracerd-cluster-outage-{}", std::process::id());
    b.run_container(&name);
    wait_until("both nodes ready", Duration::from_secs(15), || {
        let nodes = a.daemon.get("/v1/nodes");
        (nodes["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count()
            == 2)
            .then_some(())
    });

    // One member down: the cluster has a quorum and everything works.
    etcd.kill(0);
    let id = create(
        &a.daemon,
        &json!({"scope": "cluster", "target": {"container": name}, "syscalls": ["getppid"]}),
    );
    act(&a.daemon, &id, "start");
    b.exec_getppid(&name, 1000);
    wait_delivered(&a.daemon, &id, 1000);
    etcd.restart(0);
    etcd.wait_healthy(0);

    // All members down: cluster operations answer 503 at once (never hang); node B goes on
    // recording; a local session on node A is untouched.
    for member in 0..3 {
        etcd.kill(member);
    }
    let asked = Instant::now();
    let (status, body) = a
        .daemon
        .call("GET", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "etcd_unavailable", "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let (status, body) = a
        .daemon
        .call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 503, "{body}");
    let list = a.daemon.get("/v1/sessions");
    assert!(list["cluster_unavailable"].is_string(), "{list}");
    let (status, local) = a.daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": {"pids": [std::process::id()]}})),
        None,
    );
    assert_eq!(status, 201, "a local session without etcd: {local}");
    b.exec_getppid(&name, 700);

    // etcd back: the parts' counts converge, nothing recorded meanwhile is lost.
    for member in 0..3 {
        etcd.restart(member);
    }
    for member in 0..3 {
        etcd.wait_healthy(member);
    }
    wait_until("etcd to answer node a", Duration::from_secs(20), || {
        let (status, _) = a
            .daemon
            .call("GET", &format!("/v1/sessions/{id}"), None, None);
        (status == 200).then_some(())
    });
    wait_delivered(&a.daemon, &id, 1700);
    let stopped = act(&a.daemon, &id, "stop");
    assert_eq!(stopped["counters"]["matched"], 1700, "{stopped}");
    assert_eq!(stopped["counters"]["dropped"], 0, "{stopped}");
    assert_eq!(part(&stopped, "b")["status"], "stopped", "{stopped}");
    let events = event_nodes(&a.daemon, &id);
    assert_eq!(count(&events, "b"), 1700);
}

#[test]
fn tenants_the_websocket_and_the_cli_see_a_cluster_session_from_any_node() {
    require_root();
    let etcd = EtcdCluster::start(3);
    // The same tokens on every node.
    let tokens = tracer_tests::daemon::tokens_file("cluster");
    let tokens = tokens.display().to_string();
    let a = Node::start_with("a", 5, &etcd, &["--tokens", &tokens]);
    let b = Node::start_with("b", 6, &etcd, &["--tokens", &tokens]);
    let (team_a, team_b) = (Some("team-a-secret-token"), Some("team-b-secret-token"));
    let name = format!("tracerd-cluster-tenant-{}", std::process::id());
    a.run_labelled(&name, "team-a");
    b.run_labelled(&name, "team-a");
    wait_until("both nodes ready", Duration::from_secs(15), || {
        let (_, nodes) = a.daemon.call("GET", "/v1/nodes", None, team_a);
        (nodes["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count()
            == 2)
            .then_some(())
    });
    let body = json!({"scope": "cluster", "target": {"container": name}, "syscalls": ["getppid"]});
    let (status, created) = a.daemon.call("POST", "/v1/sessions", Some(&body), team_a);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{id}");
    let (status, started) = b
        .daemon
        .call("POST", &format!("{path}/start"), None, team_a);
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["tenant"], "team-a", "{started}");

    // Another tenant sees nothing of it, on either node.
    for node in [&a, &b] {
        let (status, _) = node.daemon.call("GET", &path, None, team_b);
        assert_eq!(
            status, 404,
            "team-b reads team-a's session on {}",
            node.name
        );
        let (status, _) = node
            .daemon
            .call("POST", &format!("{path}/stop"), None, team_b);
        assert_eq!(status, 404);
        let (_, list) = node.daemon.call("GET", "/v1/sessions", None, team_b);
        assert_eq!(list["sessions"], json!([]), "{list}");
        let (_, list) = node.daemon.call("GET", "/v1/sessions", None, team_a);
        assert_eq!(list["sessions"][0]["id"], id.as_str(), "{list}");
    }

    // The WebSocket on node B merges both parts, each event with its node.
    let url = b
        .daemon
        .url(&format!("{path}/stream?token=team-a-secret-token"))
        .replace("http://", "ws://");
    let (mut socket, _) = tungstenite::connect(url).expect("a WebSocket");
    let first = match socket.read().expect("the state frame") {
        tungstenite::Message::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
        other => panic!("expected the state frame, got {other:?}"),
    };
    assert_eq!(first["session"]["scope"], "cluster", "{first}");
    a.exec_getppid(&name, 100);
    b.exec_getppid(&name, 200);
    let mut per_node = std::collections::BTreeMap::new();
    while per_node.values().sum::<u64>() < 300 {
        let frame = match socket.read().expect("a frame") {
            tungstenite::Message::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        };
        for event in frame["events"].as_array().into_iter().flatten() {
            *per_node
                .entry(event["node"].as_str().unwrap().to_owned())
                .or_insert(0u64) += 1;
        }
    }
    assert_eq!(
        per_node,
        [("a".to_owned(), 100), ("b".to_owned(), 200)].into()
    );
    drop(socket);

    // The CLI, pointed at node A, lists both nodes' events.
    let output = std::process::Command::new(tracer_tests::daemon::tracerctl())
        .args([
            "--server",
            &a.daemon.url(""),
            "--token",
            "team-a-secret-token",
        ])
        .args(["events", &id])
        .output()
        .expect("running tracerctl");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let from = |node: &str| {
        text.lines()
            .filter(|line| line.contains(&format!(" {node}/{name} ")))
            .count()
    };
    assert_eq!((from("a"), from("b")), (100, 200), "{text}");
    let (status, stopped) = a.daemon.call("POST", &format!("{path}/stop"), None, team_a);
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["counters"]["delivered"], 300, "{stopped}");
}

/// Creates and starts a cluster launch of the test image running `command` through `node`.
fn start_launch(node: &Node, command: &[&str]) -> (String, Value) {
    let id = create(
        &node.daemon,
        &json!({"scope": "cluster", "syscalls": ["getppid"],
                "target": {"launch": {"image": "tracerd-test:latest", "command": command}}}),
    );
    let started = act(&node.daemon, &id, "start");
    (id, started)
}

#[test]
fn a_cluster_launch_moves_off_a_lost_node_before_it_starts_and_fails_after() {
    require_root();
    let etcd = EtcdCluster::start(3);
    let a = Node::start("a", 7, &etcd);
    let b = Node::start("b", 8, &etcd);
    wait_until("both nodes ready", Duration::from_secs(15), || {
        let nodes = a.daemon.get("/v1/nodes");
        (nodes["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count()
            == 2)
            .then_some(())
    });

    // Node B freezes (its lease still alive): launches are placed in turn until one lands
    // on B, which cannot start it; once B is lost, node A's agent places it again, on A.
    // SAFETY: kill(2) on the pid of a child the harness started.
    unsafe { libc::kill(b.daemon.pid() as i32, libc::SIGSTOP) };
    let command = ["/bin/syscall_loop", "getppid", "100"];
    let mut on_b = None;
    for _ in 0..3 {
        let (id, started) = start_launch(&a, &command);
        if started["placement"] == "b" {
            on_b = Some(id);
            break;
        }
    }
    let id = on_b.expect("a launch placed on b within three turns");
    let finished = wait_until("the launch to run on a", Duration::from_secs(30), || {
        let session = a.daemon.get(&format!("/v1/sessions/{id}"));
        (session["status"] == "finished").then_some(session)
    });
    assert_eq!(finished["placement"], "a", "{finished}");
    assert_eq!(finished["finished_reason"], "exited", "{finished}");
    let mut from_loop = 0;
    a.daemon.each_event_line(&id, "", |line| {
        from_loop += u64::from(line.contains("\"comm\":\"syscall_loop\""));
    });
    assert_eq!(from_loop, 100);
    // SAFETY: as above.
    unsafe { libc::kill(b.daemon.pid() as i32, libc::SIGCONT) };
    wait_until("node b ready again", Duration::from_secs(15), || {
        let nodes = a.daemon.get("/v1/nodes");
        (nodes["nodes"][1]["status"] == "ready").then_some(())
    });

    // An image only node A has: a launch placed on B is handed on to A, which runs it.
    let tag = a
        .engine
        .docker(&["tag", "tracerd-test:latest", "tracerd-only-a:latest"]);
    assert!(tag.status.success(), "{tag:?}");
    for _ in 0..2 {
        let id = create(
            &a.daemon,
            &json!({"scope": "cluster", "syscalls": ["getppid"], "target": {"launch": {
                "image": "tracerd-only-a:latest", "command": ["/bin/syscall_loop", "getppid", "50"]}}}),
        );
        act(&a.daemon, &id, "start");
        let finished = wait_until("the launch on a", Duration::from_secs(20), || {
            let session = b.daemon.get(&format!("/v1/sessions/{id}"));
            (session["status"] == "finished").then_some(session)
        });
        assert_eq!(finished["placement"], "a", "{finished}");
        assert_eq!(part(&finished, "a")["status"], "finished", "{finished}");
    }

    // A launch whose container started is not run twice: its node lost, it fails.
    let (id, started) = start_launch(&a, &["/bin/sleep", "600"]);
    let placed = started["placement"]
        .as_str()
        .expect("a placement")
        .to_owned();
    let (mut lost, other) = if placed == "a" { (a, b) } else { (b, a) };
    wait_until("the launch to run", Duration::from_secs(15), || {
        let session = other.daemon.get(&format!("/v1/sessions/{id}"));
        (part(&session, &placed)["status"] == "running").then_some(())
    });
    lost.daemon
        .stop_with(libc::SIGKILL, Duration::from_secs(10));
    let failed = wait_until("the launch to fail", Duration::from_secs(15), || {
        let session = other.daemon.get(&format!("/v1/sessions/{id}"));
        (session["status"] == "failed").then_some(session)
    });
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("node_lost"), "{failed}");
    assert_eq!(failed["placement"], placed.as_str(), "{failed}");
}

#[test]
fn nodes_reach_etcd_over_tls_with_a_client_certificate() {
    require_root();
    let etcd = EtcdCluster::start_tls(3);
    let file = |name: &str| etcd.file(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let a = Node::start_with(
        "a",
        9,
        &etcd,
        &[
            "--etcd-ca-file",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
        ],
    );
    a.wait_ready(1);
    let cgroup = tracer_tests::cgroup::TestCgroup::create("cluster-tls");
    let id = create(
        &a.daemon,
        &json!({"scope": "cluster", "target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}),
    );
    act(&a.daemon, &id, "start");
    let (_, status) = tracer_tests::workload::run_in(&cgroup, &["getppid", "250"]);
    assert!(status.success());
    wait_delivered(&a.daemon, &id, 250);

    // Without the client certificate etcd refuses the node: the API says so, never hangs.
    let refused =
        tracer_tests::daemon::Daemon::start(&["--etcd", &etcd.endpoints(), "--etcd-ca-file", &ca]);
    let (status, body) = refused.call("GET", "/v1/nodes", None, None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "etcd_unavailable", "{body}");
}
