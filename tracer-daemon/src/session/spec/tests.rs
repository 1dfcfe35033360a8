//! Validation of create requests.
use super::*;

fn request(json: serde_json::Value) -> Result<CreateSession, serde_json::Error> {
    serde_json::from_value(json)
}

#[test]
fn a_minimal_request_is_valid() {
    let spec = request(serde_json::json!({"target": {"cgroup": "/sys/fs/cgroup/x"}}))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(spec.target, TargetKind::Cgroup("/sys/fs/cgroup/x".into()));
    assert_eq!(spec.syscalls, None);
    assert_eq!(spec.backend, BackendChoice::Auto);
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    assert!(request(serde_json::json!({"target": {"cgroup": "/x"}, "colour": 1})).is_err());
    assert!(
        request(serde_json::json!({"target": {"cgroup": "/x"}, "conditions": {"x": 1}})).is_err()
    );
    assert!(request(serde_json::json!({"target": {"container": "web", "image": "x"}})).is_err());
}

#[test]
fn syscall_names_resolve_sorted_and_deduplicated() {
    let spec = request(
        serde_json::json!({"target": {"pids": [1]}, "syscalls": ["write", "openat", "write"]}),
    )
    .unwrap()
    .validate()
    .unwrap();
    let mut expected = vec![
        syscalls::Sysno::write.id() as u32,
        syscalls::Sysno::openat.id() as u32,
    ];
    expected.sort_unstable();
    assert_eq!(spec.syscalls, Some(expected));
}

#[test]
fn each_bad_field_is_named() {
    let cases = [
        (
            serde_json::json!({"target": {"pids": [1]}, "syscalls": ["nosuchcall"]}),
            "syscalls",
        ),
        (serde_json::json!({"target": {"pids": []}}), "target.pids"),
        (
            serde_json::json!({"target": {"cgroup": "relative/path"}}),
            "target.cgroup",
        ),
        (
            serde_json::json!({"target": {"cgroup": "/a/../b"}}),
            "target.cgroup",
        ),
        (
            serde_json::json!({"target": {"pids": [1]}, "name": "has space"}),
            "name",
        ),
        (
            serde_json::json!({"target": {"pids": [1]}, "limits": {"ttl": "soon"}}),
            "limits.ttl",
        ),
        (
            serde_json::json!({"target": {"pids": [1]}, "limits": {"max_events": 0}}),
            "limits.max_events",
        ),
        (
            serde_json::json!({"target": {"pids": [1]}, "conditions": {"tgids": [2]}}),
            "conditions.tgids",
        ),
        (
            serde_json::json!({"target": {"pids": [1]}, "label": "a\u{7}b"}),
            "label",
        ),
        (
            serde_json::json!({"target": {"pids": [1]}, "tenant": "no spaces"}),
            "tenant",
        ),
    ];
    for (json, field) in cases {
        let err = request(json.clone()).unwrap().validate().unwrap_err();
        assert_eq!(err.field, field, "{json}: {err}");
    }
}

#[test]
fn duplicates_ignore_order_of_pids_and_tgids() {
    let a = request(serde_json::json!({"target": {"pids": [2, 1]}}))
        .unwrap()
        .validate()
        .unwrap();
    let b = request(serde_json::json!({"target": {"pids": [1, 2, 2]}, "label": "other"}))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(a.duplicate_key(), b.duplicate_key());
    let c = request(
        serde_json::json!({"target": {"pids": [1, 2]}, "conditions": {"failed_only": true}}),
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_ne!(a.duplicate_key(), c.duplicate_key());
}

#[test]
fn container_selectors_combine_a_name_and_labels() {
    let spec =
        request(serde_json::json!({"target": {"container": "web", "labels": {"app": "shop"}}}))
            .unwrap()
            .validate()
            .unwrap();
    let TargetKind::Containers(selector) = spec.target else {
        panic!("a container target");
    };
    assert_eq!(selector.container.as_deref(), Some("web"));
    assert_eq!(selector.labels["app"], "shop");
    assert_eq!(selector.to_string(), "container `web` with labels app=shop");
}

#[test]
fn default_names_come_from_the_target() {
    let target = |json| serde_json::from_value::<Target>(json).unwrap().short_name();
    assert_eq!(
        target(serde_json::json!({"cgroup": "/sys/fs/cgroup/web/"})),
        "web"
    );
    assert_eq!(target(serde_json::json!({"pids": [42, 7]})), "pids-42");
    assert_eq!(
        target(serde_json::json!({"container": "shop/web"})),
        "shop-web"
    );
    assert_eq!(
        target(serde_json::json!({"labels": {"app": "shop"}})),
        "shop"
    );
}
