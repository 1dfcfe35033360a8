//! The web page in a real browser: headless Chromium driven through the system chromedriver
//! by Selenium (tests/browser/ui_test.py), against the real daemon with tokens. The script
//! signs in, creates a session from the form, runs the workload, sees its live rows and exact
//! per-syscall count arrive, stops and deletes it, checks a narrow window and the console.
use std::process::Command;

use tracer_tests::{cgroup::TestCgroup, daemon::Daemon, require_root, workload};

const CALLS: u32 = 300;

#[test]
fn the_web_page_creates_watches_stops_and_deletes_a_session_in_a_real_browser() {
    require_root();
    let tokens = std::env::temp_dir().join(format!("tracerd-browser-{}.toml", std::process::id()));
    let token = "browser-test-admin-token";
    std::fs::write(
        &tokens,
        format!("[[token]]\ntoken = \"{token}\"\ntenant = \"ops\"\nadmin = true\n"),
    )
    .unwrap();
    let daemon = Daemon::start(&["--tokens", tokens.to_str().unwrap()]);
    let cgroup = TestCgroup::create("browser");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/ui_test.py");
    let shots = std::env::var("TRACERD_SCREENSHOTS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/screenshots").to_owned()
    });
    let output = Command::new("python3")
        .arg(script)
        .arg(daemon.url("/"))
        .arg(token)
        .arg(cgroup.path())
        .arg(workload::path())
        .arg(CALLS.to_string())
        .arg(&shots)
        .env("SE_OFFLINE", "true")
        .output()
        .expect("running the browser test (cargo xtask setup installs Chromium and Selenium)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed (screenshot in {shots}/failure.png):\n{stdout}\n{stderr}\n\
         daemon log:\n{}",
        daemon.log()
    );
    assert!(
        stdout.contains(&format!("{CALLS} calls seen live")),
        "{stdout}"
    );
    std::fs::remove_file(&tokens).unwrap();
}
