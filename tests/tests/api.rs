//! The sessions REST API, end to end: the real daemon, the real kernel, real workloads.
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracer_tests::{
    assert_programs_unloaded, cgroup::TestCgroup, daemon::Daemon, require_root, workload,
};

fn create(daemon: &Daemon, body: Value) -> Value {
    let (status, session) = daemon.call("POST", "/v1/sessions", Some(&body), None);
    assert_eq!(status, 201, "{session}");
    session
}

fn act(daemon: &Daemon, id: &str, action: &str) -> (u16, Value) {
    daemon.call("POST", &format!("/v1/sessions/{id}/{action}"), None, None)
}

fn session(daemon: &Daemon, id: &str) -> Value {
    let (status, session) = daemon.call("GET", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!(status, 200, "{session}");
    session
}

/// Polls the session until `done` holds (10 s at most).
fn wait_for(daemon: &Daemon, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    daemon.wait_for_session(id, None, what, done)
}

fn events(daemon: &Daemon, id: &str, query: &str) -> Vec<Value> {
    daemon
        .get_text(&format!("/v1/sessions/{id}/events{query}"))
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|err| panic!("bad NDJSON line {line}: {err}"))
        })
        .collect()
}

fn id_of(session: &Value) -> String {
    session["id"].as_str().expect("an id").to_owned()
}

#[test]
fn every_verb_and_every_invalid_transition() {
    require_root();
    let cgroup = TestCgroup::create("verbs");
    let daemon = Daemon::start(&[]);
    let created = create(
        &daemon,
        json!({"target": {"cgroup": cgroup.path()}, "label": "verbs"}),
    );
    let id = id_of(&created);
    assert_eq!(created["status"], "created");
    assert_eq!(created["runs"], 0);
    assert_eq!(created["tenant"], "default");
    let name = created["name"].as_str().unwrap();
    let prefix = format!("{}.", cgroup.path().file_name().unwrap().to_str().unwrap());
    assert!(
        name.starts_with(&prefix) && name.len() == prefix.len() + 12,
        "{name}"
    );

    // created: stop is refused.
    let (status, body) = act(&daemon, &id, "stop");
    assert_eq!(
        (status, &body["error"], &body["status"]),
        (409, &json!("invalid_transition"), &json!("created"))
    );

    let (status, body) = act(&daemon, &id, "start");
    assert_eq!(
        (status, &body["status"], &body["runs"]),
        (200, &json!("running"), &json!(1))
    );
    assert_eq!(body["backend_in_use"], "ebpf");
    let (status, body) = act(&daemon, &id, "start");
    assert_eq!((status, &body["status"]), (409, &json!("running")));

    let (status, body) = daemon.call(
        "PUT",
        &format!("/v1/sessions/{id}"),
        Some(&json!({"status": "stopped"})),
        None,
    );
    assert_eq!((status, &body["status"]), (200, &json!("stopped")));
    let (status, body) = act(&daemon, &id, "stop");
    assert_eq!((status, &body["status"]), (409, &json!("stopped")));

    // A stopped session starts again: a new run of the same session.
    let (status, body) = daemon.call(
        "PUT",
        &format!("/v1/sessions/{id}"),
        Some(&json!({"status": "running"})),
        None,
    );
    assert_eq!(
        (status, &body["status"], &body["runs"]),
        (200, &json!("running"), &json!(2))
    );

    let (status, list) = daemon.call("GET", "/v1/sessions?status=running", None, None);
    assert_eq!(status, 200);
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
    let (_, list) = daemon.call("GET", "/v1/sessions?status=created", None, None);
    assert!(list["sessions"].as_array().unwrap().is_empty());
    let (_, list) = daemon.call("GET", &format!("/v1/sessions?name={name}"), None, None);
    assert_eq!(list["sessions"][0]["id"], id);
    let (_, list) = daemon.call(
        "GET",
        &format!("/v1/sessions?target={}", cgroup.path().display()),
        None,
        None,
    );
    assert_eq!(list["sessions"][0]["id"], id);

    // Delete stops it, releases it and removes it.
    let (status, _) = daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!(status, 204);
    let (status, body) = daemon.call("GET", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!((status, &body["error"]), (404, &json!("not_found")));
    let (status, _) = daemon.call("GET", &format!("/v1/sessions/{id}/events"), None, None);
    assert_eq!(status, 404);
    let (status, _) = daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!(status, 404);
}

#[test]
fn a_traced_workload_is_counted_exactly_and_downloadable_as_ndjson() {
    require_root();
    let cgroup = TestCgroup::create("events");
    let daemon = Daemon::start(&[]);
    let id = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid", "openat"]}),
    ));
    assert_eq!(act(&daemon, &id, "start").0, 200);
    let (pid, status) = workload::run_in(&cgroup, &["getppid", "500", "openat-missing", "5"]);
    assert!(status.success());

    let running = wait_for(&daemon, &id, "505 delivered events", |s| {
        s["counters"]["delivered"] == 505
    });
    assert_eq!(running["counters"]["matched"], 505);
    assert_eq!(running["counters"]["dropped"], 0);

    // Downloadable while it runs.
    let all = events(&daemon, &id, "");
    assert_eq!(all.len(), 505);
    let openat: Vec<&Value> = all.iter().filter(|e| e["syscall"] == "openat").collect();
    assert_eq!(openat.len(), 5);
    for event in &openat {
        assert_eq!(event["path"], "/nonexistent/tracerd-workload");
        assert_eq!(event["ret"], -i64::from(libc::ENOENT));
        assert_eq!(event["pid"], pid);
        assert_eq!(event["tid"], pid);
        assert_eq!(event["comm"], "syscall_loop");
        assert_eq!(event["session"], id.as_str());
        // The registers openat takes (dfd, filename, flags, mode), decoded by name too.
        assert_eq!(event["args"].as_array().unwrap().len(), 4);
        assert_eq!(event["params"]["filename"], "/nonexistent/tracerd-workload");
        assert!(event["duration_ns"].as_u64().is_some());
        let ts = event["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == 30,
            "RFC 3339 with nanoseconds: {ts}"
        );
    }
    // Filters: by syscall, and by time.
    assert_eq!(events(&daemon, &id, "?syscall=openat").len(), 5);
    assert_eq!(events(&daemon, &id, "?syscall=getppid,openat").len(), 505);
    let first_ts = all[0]["ts"].as_str().unwrap();
    let last_ts = all[504]["ts"].as_str().unwrap();
    assert_eq!(events(&daemon, &id, &format!("?until={first_ts}")).len(), 0);
    assert_eq!(events(&daemon, &id, &format!("?since={last_ts}")).len(), 1);
    assert_eq!(events(&daemon, &id, "?since=2999-01-01T00:00:00Z").len(), 0);

    let (_, stopped) = act(&daemon, &id, "stop");
    assert_eq!(stopped["counters"]["delivered"], 505);
    assert_eq!(events(&daemon, &id, "").len(), 505);
}

#[test]
fn a_second_running_session_with_the_same_target_and_filter_is_refused() {
    require_root();
    let cgroup = TestCgroup::create("dup");
    let daemon = Daemon::start(&[]);
    let body = json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["read"]});
    let first = id_of(&create(&daemon, body.clone()));
    let second = id_of(&create(&daemon, body));
    let other_filter = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["write"]}),
    ));
    assert_eq!(act(&daemon, &first, "start").0, 200);
    let (status, body) = act(&daemon, &second, "start");
    assert_eq!(
        (status, &body["error"]),
        (409, &json!("duplicate_session")),
        "{body}"
    );
    assert_eq!(body["running"]["id"], first.as_str());
    assert_eq!(act(&daemon, &other_filter, "start").0, 200);
    // Once the first stops, the second may run.
    assert_eq!(act(&daemon, &first, "stop").0, 200);
    assert_eq!(act(&daemon, &second, "start").0, 200);
}

#[test]
fn max_events_ttl_and_vanished_targets_finish_a_session() {
    require_root();
    let daemon = Daemon::start(&[]);

    let limited = TestCgroup::create("max-events");
    let id = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": limited.path()}, "syscalls": ["getppid"], "limits": {"max_events": 100}}),
    ));
    act(&daemon, &id, "start");
    assert!(workload::run_in(&limited, &["getppid", "1000"]).1.success());
    let finished = wait_for(&daemon, &id, "max_events", |s| s["status"] == "finished");
    assert_eq!(finished["finished_reason"], "max_events");
    let counters = &finished["counters"];
    assert_eq!(counters["delivered"], 100);
    assert_eq!(
        counters["matched"].as_u64().unwrap(),
        counters["delivered"].as_u64().unwrap() + counters["dropped"].as_u64().unwrap()
    );
    assert_eq!(events(&daemon, &id, "").len(), 100);
    assert_eq!(act(&daemon, &id, "start").0, 409, "finished is final");

    let timed = TestCgroup::create("ttl");
    let id = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": timed.path()}, "limits": {"ttl": "1s"}}),
    ));
    act(&daemon, &id, "start");
    let finished = wait_for(&daemon, &id, "the TTL", |s| s["status"] == "finished");
    assert_eq!(finished["finished_reason"], "ttl");

    let vanishing = TestCgroup::create("vanishing");
    let id = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": vanishing.path()}}),
    ));
    act(&daemon, &id, "start");
    drop(vanishing);
    let finished = wait_for(&daemon, &id, "the target to be gone", |s| {
        s["status"] == "finished"
    });
    assert_eq!(finished["finished_reason"], "targets_gone");
}

/// (method, path, body, content type, status, error code, a word the message must contain)
type BadInput = (
    &'static str,
    String,
    Option<String>,
    Option<&'static str>,
    u16,
    &'static str,
    &'static str,
);

#[test]
fn bad_inputs_get_a_4xx_with_a_json_error_naming_the_problem() {
    require_root();
    let cgroup = TestCgroup::create("bad-inputs");
    let daemon = Daemon::start(&[]);
    let good = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": cgroup.path()}}),
    ));
    let path = cgroup.path().to_str().unwrap().to_owned();
    let huge = format!(
        "{{\"target\": {{\"cgroup\": \"{path}\"}}, \"label\": \"{}\"}}",
        "x".repeat(100 << 10)
    );
    // (method, path, body, content type, status, error code, a word the message must contain)
    let cases: Vec<BadInput> = vec![
        (
            "POST",
            "/v1/sessions".into(),
            Some("{not json".into()),
            Some("application/json"),
            400,
            "malformed_json",
            "key",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"pids": "x"}}).to_string()),
            Some("application/json"),
            422,
            "invalid_body",
            "target",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"cgroup": path}, "bogus": 1}).to_string()),
            Some("application/json"),
            422,
            "invalid_body",
            "bogus",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"cgroup": path}, "conditions": {"tgid": [1]}}).to_string()),
            Some("application/json"),
            422,
            "invalid_body",
            "tgid",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({}).to_string()),
            Some("application/json"),
            422,
            "invalid_body",
            "target",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"cgroup": path}, "syscalls": ["nosuchcall"]}).to_string()),
            Some("application/json"),
            422,
            "invalid_field",
            "nosuchcall",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"cgroup": path}, "limits": {"ttl": "soon"}}).to_string()),
            Some("application/json"),
            422,
            "invalid_field",
            "soon",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"cgroup": path}, "name": "no spaces please"}).to_string()),
            Some("application/json"),
            422,
            "invalid_field",
            "letters",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"cgroup": "/sys/fs/cgroup/no-such-cgroup"}}).to_string()),
            Some("application/json"),
            422,
            "target_unavailable",
            "no-such-cgroup",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"pids": [4_000_000]}}).to_string()),
            Some("application/json"),
            422,
            "target_unavailable",
            "4000000",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(
                json!({"target": {"cgroup": path}, "limits": {"ftrace_buffer_kb": 8}}).to_string(),
            ),
            Some("application/json"),
            422,
            "invalid_field",
            "64 to 1048576",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"cgroup": path}, "backend": "magic"}).to_string()),
            Some("application/json"),
            422,
            "invalid_body",
            "magic",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(json!({"target": {"cgroup": path}}).to_string()),
            Some("text/plain"),
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(huge),
            Some("application/json"),
            413,
            "body_too_large",
            "limit",
        ),
        (
            "GET",
            "/v1/sessions/not-a-uuid".into(),
            None,
            None,
            400,
            "invalid_id",
            "not-a-uuid",
        ),
        (
            "GET",
            "/v1/sessions/6f9619ff-8b86-d011-b42d-00cf4fc964ff".into(),
            None,
            None,
            404,
            "not_found",
            "6f9619ff",
        ),
        (
            "POST",
            "/v1/sessions/6f9619ff-8b86-d011-b42d-00cf4fc964ff/start".into(),
            None,
            None,
            404,
            "not_found",
            "6f9619ff",
        ),
        (
            "PUT",
            format!("/v1/sessions/{good}"),
            Some(json!({"status": "finished"}).to_string()),
            Some("application/json"),
            422,
            "invalid_field",
            "finished",
        ),
        (
            "PUT",
            format!("/v1/sessions/{good}"),
            Some(json!({"status": "paused"}).to_string()),
            Some("application/json"),
            422,
            "invalid_body",
            "paused",
        ),
        (
            "GET",
            "/v1/sessions?limit=0".into(),
            None,
            None,
            400,
            "invalid_query",
            "limit",
        ),
        (
            "GET",
            "/v1/sessions?status=sleeping".into(),
            None,
            None,
            400,
            "invalid_query",
            "sleeping",
        ),
        (
            "GET",
            "/v1/sessions?colour=red".into(),
            None,
            None,
            400,
            "invalid_query",
            "colour",
        ),
        (
            "GET",
            format!("/v1/sessions/{good}/events?since=yesterday"),
            None,
            None,
            400,
            "invalid_query",
            "yesterday",
        ),
        (
            "GET",
            "/v1/no-such-endpoint".into(),
            None,
            None,
            404,
            "not_found",
            "endpoint",
        ),
    ];
    for (method, path, body, content_type, status, code, word) in cases {
        let (got, response) = daemon.call_raw(method, &path, body.as_deref(), content_type, None);
        let message = response["message"].as_str().unwrap_or_default();
        assert_eq!(
            (got, response["error"].as_str().unwrap_or_default()),
            (status, code),
            "{method} {path}: {response}"
        );
        assert!(
            message.contains(word),
            "{method} {path}: message {message:?} should mention {word:?}"
        );
    }
    // Nothing above hurt the daemon.
    assert_eq!(daemon.get("/healthz")["status"], "ok");
}

#[test]
fn tenants_see_and_act_on_only_their_own_sessions() {
    require_root();
    let cgroup = TestCgroup::create("tenants");
    let tokens = tracer_tests::daemon::tokens_file("tenants");
    let daemon = Daemon::start(&["--tokens", tokens.to_str().unwrap()]);
    let (a, b, admin) = (
        Some("team-a-secret-token"),
        Some("team-b-secret-token"),
        Some("the-admin-secret-token"),
    );
    let target = json!({"cgroup": cgroup.path()});

    // Without a token, or with a wrong one: 401.
    let (status, body) = daemon.call("GET", "/v1/sessions", None, None);
    assert_eq!((status, &body["error"]), (401, &json!("unauthorized")));
    assert_eq!(
        daemon
            .call("GET", "/v1/sessions", None, Some("wrong-token"))
            .0,
        401
    );

    // Raw cgroup targets need the admin; an admin creates for tenants.
    let (status, body) = daemon.call("POST", "/v1/sessions", Some(&json!({"target": target})), a);
    assert_eq!((status, &body["error"]), (403, &json!("forbidden")));
    let (status, body) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": target, "tenant": "team-b"})),
        a,
    );
    assert_eq!(status, 403, "{body}");
    let (_, for_a) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": target, "tenant": "team-a"})),
        admin,
    );
    let (_, for_b) = daemon.call(
        "POST",
        "/v1/sessions",
        Some(&json!({"target": target, "tenant": "team-b", "syscalls": ["read"]})),
        admin,
    );
    let (a_id, b_id) = (id_of(&for_a), id_of(&for_b));
    assert_eq!(for_a["tenant"], "team-a");

    // Each tenant sees only its own; another tenant's session answers 404 to every verb.
    let (_, list) = daemon.call("GET", "/v1/sessions", None, a);
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a_id.as_str()]);
    for (method, path) in [
        ("GET", format!("/v1/sessions/{b_id}")),
        ("POST", format!("/v1/sessions/{b_id}/start")),
        ("POST", format!("/v1/sessions/{b_id}/stop")),
        ("GET", format!("/v1/sessions/{b_id}/events")),
        ("DELETE", format!("/v1/sessions/{b_id}")),
    ] {
        assert_eq!(
            daemon.call(method, &path, None, a).0,
            404,
            "{method} {path}"
        );
    }
    let (_, list) = daemon.call("GET", "/v1/sessions", None, b);
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b_id.as_str()]);
    assert_eq!(
        daemon
            .call("GET", &format!("/v1/sessions/{a_id}"), None, b)
            .0,
        404
    );
    // Its own: allowed.
    assert_eq!(
        daemon
            .call("POST", &format!("/v1/sessions/{a_id}/start"), None, a)
            .0,
        200
    );
    assert_eq!(
        daemon
            .call("GET", &format!("/v1/sessions/{a_id}"), None, a)
            .0,
        200
    );
    // The admin sees all.
    let (_, list) = daemon.call("GET", "/v1/sessions", None, admin);
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(
        daemon
            .call("GET", &format!("/v1/sessions/{b_id}"), None, admin)
            .0,
        200
    );
    // Metrics and the node's tally cover every tenant: the admin's only.
    for path in ["/metrics", "/v1/tally"] {
        let (status, body) = daemon.call("GET", path, None, a);
        assert_eq!(
            (status, &body["error"]),
            (403, &json!("forbidden")),
            "{path}: {body}"
        );
        assert_eq!(daemon.call("GET", path, None, admin).0, 200, "{path}");
        assert_eq!(daemon.call("GET", path, None, None).0, 401, "{path}");
    }
    std::fs::remove_file(tokens).unwrap();
}

#[test]
fn metrics_listen_serves_prometheus_without_a_token() {
    require_root();
    let daemon = Daemon::start_on_all_addresses(&["--metrics-listen", "127.0.0.1:0"]);
    let address = daemon.metrics_address();
    let text = ureq::get(&format!("http://{address}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(text.contains("tracerd_programs_attached"), "{text}");
    // The API itself wants the token for them.
    assert_eq!(daemon.call("GET", "/metrics", None, None).0, 401);
}

#[test]
fn without_tokens_a_listener_beyond_loopback_requires_the_admin_token_it_made() {
    require_root();
    let daemon = Daemon::start_on_all_addresses(&[]);
    let path = daemon.data_dir().join("admin-token");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only root may read it");
    let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64);
    assert_eq!(daemon.call("GET", "/v1/sessions", None, None).0, 401);
    assert_eq!(
        daemon.call("GET", "/v1/sessions", None, Some(&token)).0,
        200
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("created an admin token in {}", path.display())),
        "{log}"
    );
    assert!(log.contains("bearer tokens travel in clear text"), "{log}");
}

#[test]
fn a_kill_9_loses_no_session_counter_or_event_and_leaves_no_kernel_object() {
    require_root();
    let cgroup = TestCgroup::create("recovery");
    let mut daemon = Daemon::start(&[]);
    let id = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}),
    ));
    let idle = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getpid"]}),
    ));
    act(&daemon, &id, "start");
    assert!(workload::run_in(&cgroup, &["getppid", "300"]).1.success());
    wait_for(&daemon, &id, "300 events", |s| {
        s["counters"]["delivered"] == 300
    });
    // Counters are saved every 250 ms.
    std::thread::sleep(Duration::from_millis(600));
    let old_programs: Vec<u32> = daemon.get("/healthz")["program_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();

    let restarted = Instant::now();
    daemon.restart_after(libc::SIGKILL);
    assert_programs_unloaded(&old_programs);
    let resumed = wait_for(&daemon, &id, "the session to run again", |s| {
        s["status"] == "running" && s["runs"] == 2
    });
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(2), "resumed after {took:?}");
    assert_eq!(daemon.call("GET", "/readyz", None, None).0, 200);
    assert_eq!(resumed["counters"]["delivered"], 300, "{resumed}");
    assert_eq!(resumed["counters"]["matched"], 300, "{resumed}");
    assert_eq!(session(&daemon, &idle)["status"], "created");
    assert_eq!(events(&daemon, &id, "").len(), 300);

    // It traces again, and counts on from where it was.
    assert!(workload::run_in(&cgroup, &["getppid", "200"]).1.success());
    let after = wait_for(&daemon, &id, "500 events", |s| {
        s["counters"]["delivered"] == 500
    });
    assert_eq!(after["counters"]["matched"], 500);
    assert_eq!(events(&daemon, &id, "").len(), 500);
}

#[test]
fn a_session_whose_target_vanished_during_a_restart_is_failed_with_the_reason() {
    require_root();
    let cgroup = TestCgroup::create("gone");
    let mut daemon = Daemon::start(&[]);
    let id = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": cgroup.path()}}),
    ));
    act(&daemon, &id, "start");
    daemon.stop_with(libc::SIGKILL, Duration::from_secs(5));
    drop(cgroup);
    daemon.restart_after(libc::SIGKILL);
    let failed = wait_for(&daemon, &id, "the session to fail", |s| {
        s["status"] == "failed"
    });
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("tracerd-test-gone"),
        "{failed}"
    );
}

#[test]
fn openapi_and_metrics_describe_the_running_daemon() {
    require_root();
    let cgroup = TestCgroup::create("ops");
    let daemon = Daemon::start(&[]);
    let openapi = daemon.get("/openapi.json");
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/start",
        "/v1/sessions/{id}/stop",
        "/v1/sessions/{id}/events",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} missing from /openapi.json"
        );
    }
    assert!(openapi["components"]["schemas"]
        .get("CreateSession")
        .is_some());

    let id = id_of(&create(
        &daemon,
        json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}),
    ));
    act(&daemon, &id, "start");
    assert!(workload::run_in(&cgroup, &["getppid", "42"]).1.success());
    wait_for(&daemon, &id, "42 events", |s| {
        s["counters"]["delivered"] == 42
    });
    let metrics = daemon.get_text("/metrics");
    assert!(
        metrics.contains("tracerd_sessions{status=\"running\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tracerd_session_delivered_total{{session=\"{id}\"}} 42"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tracerd_session_matched_total{{session=\"{id}\"}} 42"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("tracerd_ring_records_written_total"),
        "{metrics}"
    );
    assert_eq!(
        daemon.call("GET", "/readyz", None, None),
        (200, json!({"status": "ready"}))
    );
}

#[test]
fn a_config_file_sets_what_flags_and_the_environment_leave_open() {
    require_root();
    let dir = std::env::temp_dir().join(format!("tracerd-test-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "shared-ring = true\ntally-interval-secs = 0\n").unwrap();
    let daemon = Daemon::start(&["--config", good.to_str().unwrap()]);
    assert!(daemon.get_text("/metrics").contains("tracerd_rings 1\n"));
    drop(daemon);

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "no-such-setting = 1\n").unwrap();
    let output = std::process::Command::new(tracer_tests::daemon::binary())
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown setting `no-such-setting`"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn lists_page_through_sessions_oldest_first() {
    require_root();
    let cgroup = TestCgroup::create("pages");
    let daemon = Daemon::start(&[]);
    let ids: Vec<String> = (0..5)
        .map(|n| {
            id_of(&create(
                &daemon,
                json!({"target": {"cgroup": cgroup.path()}, "name": format!("page-{n}")}),
            ))
        })
        .collect();
    let mut seen = Vec::new();
    let mut query = "/v1/sessions?limit=2".to_owned();
    loop {
        let (status, page) = daemon.call("GET", &query, None, None);
        assert_eq!(status, 200, "{page}");
        let sessions = page["sessions"].as_array().unwrap();
        assert!(sessions.len() <= 2);
        seen.extend(
            sessions
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_owned()),
        );
        match page["next_page_token"].as_str() {
            Some(token) => query = format!("/v1/sessions?limit=2&page_token={token}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every session once, in creation order");
}

#[test]
fn the_api_listens_on_a_unix_socket_with_its_mode_and_removes_it_at_exit() {
    require_root();
    let dir = std::env::temp_dir().join(format!("tracerd-test-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket = dir.join("run/tracerd.sock");
    let mut daemon = std::process::Command::new(tracer_tests::daemon::binary())
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args([
            "--listen-mode",
            "600",
            "--listen-group",
            "root",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let curl = |path: &str| {
        let output = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&socket)
            .arg(format!("http://tracerd{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while curl("/healthz") != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer on {}",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().gid(),
        0,
        "the group asked for"
    );
    // Local only: no token needed, as on loopback.
    assert_eq!(curl("/v1/sessions"), "200");
    // tracerctl speaks it too: a session's events, followed until it stops.
    let server = format!("unix:{}", socket.display());
    let ctl = |args: &[&str]| {
        let output = std::process::Command::new(tracer_tests::daemon::tracerctl())
            .args(["--server", &server])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tracerctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(ctl(&["status"]).contains("status: ok"));
    let cgroup = TestCgroup::create("unix-socket");
    let request = json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}).to_string();
    let created: Value =
        serde_json::from_str(&ctl(&["-o", "json", "sessions", "create", &request])).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    ctl(&["sessions", "start", &id]);
    let follower = {
        let (server, id) = (server.clone(), id.clone());
        std::thread::spawn(move || {
            std::process::Command::new(tracer_tests::daemon::tracerctl())
                .args(["--server", &server, "-o", "json", "events", &id, "-f"])
                .output()
                .unwrap()
        })
    };
    let (pid, status) = tracer_tests::workload::run_in(&cgroup, &["getppid", "200"]);
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    ctl(&["sessions", "stop", &id]);
    let followed = follower.join().unwrap();
    let events = String::from_utf8_lossy(&followed.stdout)
        .lines()
        .filter(|line| line.contains(&format!("\"pid\":{pid},")))
        .count();
    assert_eq!(events, 200, "{}", String::from_utf8_lossy(&followed.stderr));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    assert!(!socket.exists(), "the socket is removed at exit");
    std::fs::remove_dir_all(&dir).unwrap();
}
