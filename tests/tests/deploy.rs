//! The Kubernetes manifests (`deploy/kubernetes/`) against the API's own schemas, offline
//! (`kubernetes-validate --strict`, which `cargo xtask setup` installs), for the oldest and
//! newest releases it knows that the manifests target.
use std::{path::PathBuf, process::Command};

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// `kubernetes-validate --strict` on `file` for Kubernetes `version`: its exit code and output.
fn validate(file: &std::path::Path, version: &str) -> (i32, String) {
    let output = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .arg(file)
        .output()
        .expect("kubernetes-validate (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn the_manifests_are_valid_kubernetes_objects_and_all_in_the_kustomization() {
    let kustomization = std::fs::read_to_string(manifests().join("kustomization.yaml")).unwrap();
    let listed: Vec<String> = kustomization
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- "))
        .map(str::to_owned)
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(manifests())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    files.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, files, "the kustomization lists every manifest");
    for file in &listed {
        for version in ["1.28.0", "1.37.0"] {
            let (code, output) = validate(&manifests().join(file), version);
            assert_eq!(code, 0, "{file} against {version}: {output}");
        }
    }
    let daemonset = std::fs::read_to_string(manifests().join("daemonset.yaml")).unwrap();
    for needed in [
        "hostPID: true",
        "path: /healthz",
        "path: /readyz",
        "prometheus.io/scrape",
    ] {
        assert!(daemonset.contains(needed), "the DaemonSet has {needed}");
    }
}

#[test]
fn the_validator_refuses_what_kubernetes_would() {
    // A field the DaemonSet's schema does not have: proof the check above can fail.
    let daemonset = std::fs::read_to_string(manifests().join("daemonset.yaml")).unwrap();
    let broken = daemonset.replace("hostPID: true", "hostPID: true\n      hostPIDS: true");
    let path = std::env::temp_dir().join(format!("tracerd-broken-{}.yaml", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let (code, output) = validate(&path, "1.37.0");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 1, "{output}");
}
