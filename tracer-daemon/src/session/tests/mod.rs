//! The session lifecycle without root: a fake engine and a fake container runtime (the
//! seams `backend::Tracer` and `containers::ContainerRuntime`), a real store in a
//! temporary data directory.
mod fakes;

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use self::fakes::{FakeRuntime, FakeTracer};
use super::{
    model::{Session, Status},
    spec::CreateSession,
    store::Store,
    ManagerOptions, Principal, SessionError, SessionManager,
};
use crate::{data_dir::DataDir, sink::export::ExportOptions};

/// A manager over fakes, with its data directory.
struct Harness {
    manager: Arc<SessionManager>,
    tracer: Arc<FakeTracer>,
    runtime: Arc<FakeRuntime>,
    _dir: tempfile::TempDir,
    data: DataDir,
}

impl Harness {
    fn new() -> Self {
        Self::with(FakeTracer::default(), FakeRuntime::default())
    }

    fn with(tracer: FakeTracer, runtime: FakeRuntime) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataDir::open(dir.path()).unwrap();
        let store = Store::new(data.take_db().unwrap(), None).unwrap();
        let (tracer, runtime) = (Arc::new(tracer), Arc::new(runtime));
        let manager = SessionManager::new(tracer.clone(), runtime.clone(), store, options(&data));
        Self {
            manager,
            tracer,
            runtime,
            _dir: dir,
            data,
        }
    }

    async fn create(
        &self,
        who: &Principal,
        json: serde_json::Value,
    ) -> Result<Session, SessionError> {
        let request: CreateSession = serde_json::from_value(json.clone()).unwrap();
        self.manager.create(who, request, json.to_string()).await
    }

    /// Waits until the session has recorded `events` (at most 5 s).
    async fn wait_delivered(&self, id: Uuid, events: u64) {
        for _ in 0..500 {
            if self
                .manager
                .get(&admin(), id)
                .await
                .unwrap()
                .counters
                .delivered
                == events
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("session {id} never recorded {events} events");
    }

    /// Waits until the session's status is `status` (at most 5 s).
    async fn wait_for(&self, id: Uuid, status: Status) -> Session {
        for _ in 0..500 {
            let session = self.manager.get(&admin(), id).await.unwrap();
            if session.status == status {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("session {id} never became {}", status.as_str());
    }
}

fn options(data: &DataDir) -> ManagerOptions {
    ManagerOptions {
        owner_label: "tracerd.tenant".into(),
        sessions_dir: data.path().join("sessions"),
        event_log_cap_bytes: 1 << 30,
        export_default: None,
        export_options: ExportOptions::default(),
        export_resource: crate::sink::export::resource(),
        foreign_pids: None,
        reserve: None,
        pinned_counters: None,
    }
}

fn admin() -> Principal {
    Principal {
        tenant: "ops".into(),
        admin: true,
    }
}

fn tenant(name: &str) -> Principal {
    Principal {
        tenant: name.into(),
        admin: false,
    }
}

fn container_target(name: &str) -> serde_json::Value {
    serde_json::json!({ "target": { "container": name } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_stops_and_runs_again_and_refuses_what_its_state_does_not_allow() {
    let h = Harness::new();
    h.runtime.add("web", 101, &[]);
    let who = admin();
    let created = h.create(&who, container_target("web")).await.unwrap();
    assert_eq!(created.status, Status::Created);
    assert_eq!(h.tracer.started(), 0, "creating never starts tracing");
    let id = created.id;

    let refused = h.manager.stop(&who, id).await.unwrap_err();
    assert!(matches!(
        refused,
        SessionError::InvalidTransition {
            current: Status::Created,
            ..
        }
    ));

    let running = h.manager.start(&who, id).await.unwrap();
    assert_eq!((running.status, running.runs), (Status::Running, 1));
    assert_eq!(running.backend_in_use.as_deref(), Some("ebpf"));
    assert_eq!(h.tracer.last_filter().cgroups, [101]);
    let refused = h.manager.start(&who, id).await.unwrap_err();
    assert!(matches!(
        refused,
        SessionError::InvalidTransition {
            current: Status::Running,
            ..
        }
    ));

    h.tracer.deliver(39, 101, 4);
    let stopped = h.manager.stop(&who, id).await.unwrap();
    assert_eq!(stopped.status, Status::Stopped);
    assert_eq!(
        (stopped.counters.matched, stopped.counters.delivered),
        (4, 4)
    );
    assert_eq!(
        h.tracer.running(),
        0,
        "the engine session is released at stop"
    );

    let again = h.manager.start(&who, id).await.unwrap();
    assert_eq!((again.status, again.runs), (Status::Running, 2));
    h.tracer.deliver(39, 101, 3);
    let stopped = h.manager.stop(&who, id).await.unwrap();
    // Counters add up over runs.
    assert_eq!(
        (stopped.counters.matched, stopped.counters.delivered),
        (7, 7)
    );

    h.manager.start(&who, id).await.unwrap();
    h.manager.delete(&who, id).await.unwrap();
    assert_eq!(h.tracer.running(), 0, "deleting a running session stops it");
    assert!(matches!(
        h.manager.get(&who, id).await,
        Err(SessionError::NotFound(_))
    ));
    assert!(!h.data.path().join("sessions").join(id.to_string()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_on_the_same_target_and_filter_waits_for_the_first() {
    let h = Harness::new();
    h.runtime.add("web", 101, &[("tracerd.tenant", "a")]);
    let (a, b) = (tenant("a"), tenant("b"));
    let first = h.create(&a, container_target("web")).await.unwrap();
    let second = h.create(&a, container_target("web")).await.unwrap();
    let other_filter = h
        .create(
            &a,
            serde_json::json!({"target": {"container": "web"}, "syscalls": ["openat"]}),
        )
        .await
        .unwrap();
    h.manager.start(&a, first.id).await.unwrap();
    match h.manager.start(&a, second.id).await.unwrap_err() {
        SessionError::Duplicate { id, name } => assert_eq!((id, name), (first.id, first.name)),
        other => panic!("expected a duplicate, got {other}"),
    }
    assert_eq!(
        h.manager.get(&a, second.id).await.unwrap().status,
        Status::Created
    );
    h.manager.start(&a, other_filter.id).await.unwrap();
    // Another tenant does not see the container, and so cannot trace it.
    assert!(matches!(
        h.create(&b, container_target("web")).await,
        Err(SessionError::NoMatchingContainer { .. })
    ));
    h.manager.stop(&a, first.id).await.unwrap();
    h.manager.start(&a, second.id).await.unwrap();
    // A tenant sees only its own sessions.
    assert!(matches!(
        h.manager.get(&b, second.id).await,
        Err(SessionError::NotFound(_))
    ));
    h.manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_were_running_resume_after_a_crash_and_those_that_cannot_fail_with_the_reason(
) {
    let h = Harness::new();
    h.runtime.add("web", 101, &[]);
    h.runtime.add("db", 102, &[]);
    let who = admin();
    let web = h.create(&who, container_target("web")).await.unwrap();
    let db = h.create(&who, container_target("db")).await.unwrap();
    let stopped = h.create(&who, container_target("web")).await.unwrap();
    for id in [web.id, db.id] {
        h.manager.start(&who, id).await.unwrap();
    }
    h.tracer.deliver(39, 101, 5);
    h.wait_delivered(web.id, 5).await;
    // The actor reports its counters every 250 ms; the persister saves the last report.
    for _ in 0..100 {
        h.manager.persist_counters().await.unwrap();
        let saved = h.manager.store().get(web.id).await.unwrap().unwrap();
        if saved.counters.delivered == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A crash: the store still says running; a new daemon (manager) starts on it.
    let store = h.manager.store().clone();
    let (tracer, runtime) = (Arc::new(FakeTracer::default()), h.runtime.clone());
    runtime.remove("db");
    let restarted = SessionManager::new(tracer.clone(), runtime.clone(), store, options(&h.data));
    assert_eq!(restarted.recover().await.unwrap(), (1, 1));
    assert_eq!(tracer.started(), 1);
    let web = restarted.get(&who, web.id).await.unwrap();
    assert_eq!((web.status, web.runs), (Status::Running, 2));
    assert_eq!(
        web.counters.delivered, 5,
        "the last saved counters carry over"
    );
    let db = restarted.get(&who, db.id).await.unwrap();
    assert_eq!(db.status, Status::Failed);
    assert!(db.error.unwrap().contains("no running container matches"));
    assert_eq!(
        restarted.get(&who, stopped.id).await.unwrap().status,
        Status::Created
    );
    restarted.shutdown().await;
    h.manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_that_was_running_during_a_crash_is_failed_and_its_containers_removed() {
    let h = Harness::new();
    let who = admin();
    let session = h
        .create(
            &who,
            serde_json::json!({"target": {"launch": {"image": "busybox"}}}),
        )
        .await
        .unwrap();
    let mut row = h.manager.store().get(session.id).await.unwrap().unwrap();
    row.status = Status::Running;
    h.manager.store().save(row).await.unwrap();
    assert_eq!(h.manager.recover().await.unwrap(), (0, 1));
    let failed = h.manager.get(&who, session.id).await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert!(failed.error.unwrap().contains("a launch is not run again"));
    assert_eq!(
        h.runtime.removed_labelled(),
        [("tracerd.session".to_owned(), session.id.to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_finishes_at_its_event_limit_counting_the_rest_as_dropped() {
    let h = Harness::new();
    h.runtime.add("web", 101, &[]);
    let who = admin();
    let json = serde_json::json!({"target": {"container": "web"}, "limits": {"max_events": 3}});
    let id = h.create(&who, json).await.unwrap().id;
    h.manager.start(&who, id).await.unwrap();
    h.tracer.deliver(39, 101, 5);
    let finished = h.wait_for(id, Status::Finished).await;
    assert_eq!(finished.finished_reason.as_deref(), Some("max_events"));
    let c = finished.counters;
    assert_eq!((c.matched, c.delivered, c.dropped), (5, 3, 2));
    assert_eq!(h.tracer.running(), 0);
    // Finished is final.
    assert!(matches!(
        h.manager.start(&who, id).await,
        Err(SessionError::InvalidTransition {
            current: Status::Finished,
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_finishes_when_its_ttl_passes() {
    let h = Harness::new();
    h.runtime.add("web", 101, &[]);
    let who = admin();
    let json = serde_json::json!({"target": {"container": "web"}, "limits": {"ttl": "300ms"}});
    let id = h.create(&who, json).await.unwrap().id;
    h.manager.start(&who, id).await.unwrap();
    let finished = h.wait_for(id, Status::Finished).await;
    assert_eq!(finished.finished_reason.as_deref(), Some("ttl"));
    assert_eq!(h.tracer.running(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_that_start_are_followed_and_the_last_one_destroyed_finishes_the_session() {
    let h = Harness::new();
    h.runtime.add("shop-web-1", 101, &[("app", "shop")]);
    let follower = tokio::spawn(super::follow_containers(h.manager.clone()));
    let who = admin();
    let json = serde_json::json!({"target": {"labels": {"app": "shop"}}});
    let id = h.create(&who, json).await.unwrap().id;
    h.manager.start(&who, id).await.unwrap();
    h.runtime.start("shop-web-2", 102, &[("app", "shop")]);
    h.runtime.start("blog", 103, &[("app", "blog")]);
    for _ in 0..500 {
        if h.tracer.cgroups() == [101, 102] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.tracer.cgroups(),
        [101, 102],
        "only the matching container is added"
    );
    let views = h.manager.containers(&who).await.unwrap();
    let traced: Vec<&str> = views
        .iter()
        .filter(|view| view.sessions == [id])
        .map(|view| view.container.name.as_str())
        .collect();
    assert_eq!(traced, ["shop-web-1", "shop-web-2"]);
    h.runtime.destroy("shop-web-1");
    h.runtime.destroy("shop-web-2");
    let finished = h.wait_for(id, Status::Finished).await;
    assert_eq!(finished.finished_reason.as_deref(), Some("targets_gone"));
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_session_not_resumed_yet_says_so() {
    let h = Harness::new();
    h.runtime.add("web", 101, &[]);
    let who = admin();
    let id = h.create(&who, container_target("web")).await.unwrap().id;
    h.manager.start(&who, id).await.unwrap();
    // What a daemon started on the same data sees before it has resumed the session.
    let db = rusqlite::Connection::open(h.data.path().join("tracerd.db")).unwrap();
    let next = SessionManager::new(
        h.tracer.clone(),
        h.runtime.clone(),
        Store::new(db, None).unwrap(),
        options(&h.data),
    );
    // Not resumed yet, or not to be resumed here: nothing said.
    assert!(next.get(&who, id).await.unwrap().not_recording.is_none());
    next.mark_resuming(id);
    let session = next.get(&who, id).await.unwrap();
    assert_eq!(session.status, Status::Running);
    let not_recording = session.not_recording.expect("a reason not to record");
    assert_eq!(not_recording.reason, "resuming");
    // The daemon that runs it records.
    assert!(h
        .manager
        .get(&who, id)
        .await
        .unwrap()
        .not_recording
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_name_keeps_containers_that_only_contain_it_out_when_they_start_later() {
    let h = Harness::new();
    h.runtime.add("pname", 101, &[]);
    let follower = tokio::spawn(super::follow_containers(h.manager.clone()));
    let who = admin();
    let id = h.create(&who, container_target("pname")).await.unwrap().id;
    h.manager.start(&who, id).await.unwrap();
    h.runtime.start("pname-x", 102, &[]);
    // The one that does match comes back in a new cgroup after the one that must not
    // started: once it is in, the other's event has been handled too.
    h.runtime.restart("pname", 103);
    for _ in 0..500 {
        if h.tracer.cgroups().contains(&103) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.tracer.cgroups(), [103], "pname-x is not traced");
    let traced = h.manager.get(&who, id).await.unwrap().traced.unwrap();
    assert_eq!(traced.matched_by, crate::containers::MatchedBy::Name);
    let names: Vec<&str> = traced.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pname"]);
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_unavailable_parts_are_the_callers_errors_with_their_cause() {
    let h = Harness::with(
        FakeTracer::without_ebpf("turned off (--no-ebpf)"),
        FakeRuntime::default(),
    );
    let who = admin();
    let json = serde_json::json!({"target": {"container": "web"}, "backend": "ebpf"});
    match h.create(&who, json).await.unwrap_err() {
        SessionError::BackendUnavailable { why, .. } => assert_eq!(why, "turned off (--no-ebpf)"),
        other => panic!("expected an unavailable backend, got {other}"),
    }
    h.runtime.reject_images("invalid reference format");
    let json = serde_json::json!({"target": {"launch": {"image": "Not A Reference"}}});
    match h.create(&who, json).await.unwrap_err() {
        SessionError::ContainerRejected { field, message } => {
            assert_eq!(
                (field, message.as_str()),
                ("target.launch.image", "invalid reference format")
            );
        }
        other => panic!("expected a rejected request, got {other}"),
    }
    h.runtime.go_away();
    assert!(matches!(
        h.create(&who, container_target("web")).await,
        Err(SessionError::ContainersUnavailable(_))
    ));
}

#[tokio::test]
async fn without_the_hosts_pids_only_cgroup_targets_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = DataDir::open(dir.path()).unwrap();
    let store = Store::new(data.take_db().unwrap(), None).unwrap();
    let options = ManagerOptions {
        foreign_pids: Some("run with --pid=host".into()),
        ..options(&data)
    };
    let manager = SessionManager::new(
        Arc::new(FakeTracer::default()),
        Arc::new(FakeRuntime::default()),
        store,
        options,
    );
    for target in [
        serde_json::json!({"pids": [1]}),
        serde_json::json!({"container": "web"}),
        serde_json::json!({"launch": {"image": "busybox"}}),
    ] {
        let json = serde_json::json!({"target": target});
        let request: CreateSession = serde_json::from_value(json.clone()).unwrap();
        match manager.create(&admin(), request, json.to_string()).await {
            Err(SessionError::ForeignPids(why)) => assert!(why.contains("--pid=host")),
            other => panic!(
                "{target}: expected a refusal, got {:?}",
                other.map(|s| s.id)
            ),
        }
    }
}
