//! The API against its own OpenAPI document, fuzzed by schemathesis (installed by `cargo
//! xtask setup`, found through `SCHEMATHESIS_PYTHON`): every phase (examples, coverage,
//! fuzzing, and the stateful phase that follows the document's links from a created session
//! to starting, stopping, reading and deleting it), every check, a fixed seed. Any request the
//! document allows must be accepted, any it does not must be refused, every answer must be
//! documented and match its schema.
use std::{path::PathBuf, process::Command};

use serde_json::{json, Value};
use tracer_tests::{daemon::Daemon, require_root};

fn schemathesis_python() -> PathBuf {
    std::env::var_os("SCHEMATHESIS_PYTHON")
        .map(PathBuf::from)
        .expect("SCHEMATHESIS_PYTHON (set by `cargo xtask test`) names schemathesis' Python")
}

/// The served document, with the one thing a fuzzer cannot know fixed: which process exists
/// to be traced. Targets become `{"pids": [<a sleeping process of this test>]}` (a cgroup,
/// a container or an image the fuzzer made up would not exist: refused, rightly).
fn fuzzable(mut doc: Value, pid: u32) -> Value {
    let schemas = &mut doc["components"]["schemas"];
    let variants = schemas["Target"]["oneOf"].as_array().unwrap().clone();
    let mut pids = variants
        .into_iter()
        .find(|variant| variant["required"] == json!(["pids"]))
        .expect("the document's pids target");
    pids["properties"]["pids"]["items"] = json!({"type": "integer", "enum": [pid]});
    schemas["Target"] = pids;
    // A pids target takes no tgids condition (it names its processes already).
    schemas["Conditions"]["properties"]["tgids"] = json!({"type": "null"});
    doc
}

#[test]
fn the_api_does_what_its_openapi_document_says_under_schemathesis() {
    require_root();
    let daemon = Daemon::start(&[]);
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let doc = fuzzable(daemon.get("/openapi.json"), sleeper.id());
    let dir = std::env::temp_dir().join(format!("tracerd-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("openapi.json");
    std::fs::write(&schema, doc.to_string()).unwrap();
    let output = Command::new(schemathesis_python())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(&schema)
        .args(["--url", &daemon.url("")])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--checks", "all", "--seed", "1", "--max-examples", "100"])
        .args([
            "--workers",
            "1",
            "--continue-on-failure",
            "--request-timeout",
            "10",
        ])
        .args([
            "--no-color",
            "--output-sanitize",
            "false",
            "--generation-database",
            "none",
        ])
        // A WebSocket: no HTTP fuzzer can open one (its plain-HTTP twin, /events, is fuzzed).
        .args(["--exclude-operation-id", "stream"])
        .current_dir(&dir)
        .output()
        .expect("running schemathesis");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let report = String::from_utf8_lossy(&output.stdout);
    let cases: u64 = report
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_suffix(" passed")?
                .split(" generated, ")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(cases >= 1000, "only {cases} cases ran:\n{report}");
    assert!(report.contains("Stateful"), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
