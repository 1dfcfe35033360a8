//! `tracerctl` against the real daemon: through a real terminal (tmux: start a trace, run a
//! workload, press Ctrl-C, read the summary off the screen) and through a pipe (`-o json`).
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{
    cgroup::TestCgroup,
    daemon::{tracerctl, Daemon},
    require_root, workload,
};

/// Waits (10 s at most) until the daemon has a running session, and returns it.
fn running_session(daemon: &Daemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = daemon.get("/v1/sessions?status=running");
        if let Some(session) = list["sessions"].as_array().and_then(|s| s.first()) {
            return session.clone();
        }
        assert!(Instant::now() < deadline, "tracerctl started no session");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tmux(args: &[&str]) -> String {
    let output = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn trace_c_in_a_terminal_prints_the_exact_counts_after_ctrl_c() {
    require_root();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("tracerctl-c");
    let name = format!("tracerctl-test-{}", std::process::id());
    let command = format!(
        "{} --server {} trace --cgroup {} -e getppid,getpid -c",
        tracerctl().display(),
        daemon.url(""),
        cgroup.path().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "160",
        "-y",
        "50",
        &command,
    ]);
    tmux(&["set-option", "-t", &name, "remain-on-exit", "on"]);
    let session = running_session(&daemon);
    let id = session["id"].as_str().unwrap().to_owned();
    assert!(
        workload::run_in(&cgroup, &["getppid", "3000", "getpid", "2000"])
            .1
            .success()
    );
    daemon.wait_for_session(&id, None, "5000 events", |s| {
        s["counters"]["delivered"].as_u64() >= Some(5000)
    });
    tmux(&["send-keys", "-t", &name, "C-c"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let screen = loop {
        let screen = tmux(&["capture-pane", "-p", "-S", "-100", "-t", &name]);
        if screen.contains(" total") {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "no summary on the screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    tmux(&["kill-session", "-t", &name]);
    let calls = |syscall: &str| -> u64 {
        let line = screen
            .lines()
            .find(|line| line.trim_end().ends_with(&format!(" {syscall}")))
            .unwrap_or_else(|| panic!("no {syscall} row:\n{screen}"));
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    assert_eq!(calls("getppid"), 3000, "{screen}");
    assert_eq!(calls("getpid"), 2000, "{screen}");
    assert!(
        screen.contains("% time     seconds  usecs/call     calls    errors syscall"),
        "{:?}",
        screen.lines().collect::<Vec<_>>()
    );
    // The session is gone with the trace.
    let left = daemon
        .call("GET", &format!("/v1/sessions/{id}"), None, None)
        .0;
    assert_eq!(left, 404);
}

#[test]
fn trace_through_a_pipe_prints_json_and_ctrl_c_ends_it_cleanly() {
    require_root();
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::create("tracerctl-json");
    let mut trace = Command::new(tracerctl())
        .args([
            "--server",
            &daemon.url(""),
            "-o",
            "json",
            "trace",
            "--keep",
            "-e",
            "getppid",
            "--cgroup",
        ])
        .arg(cgroup.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracerctl");
    let id = running_session(&daemon)["id"].as_str().unwrap().to_owned();
    let (pid, status) = workload::run_in(&cgroup, &["getppid", "250"]);
    assert!(status.success());
    daemon.wait_for_session(&id, None, "250 events", |s| {
        s["counters"]["delivered"].as_u64() >= Some(250)
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(trace.id() as i32, libc::SIGINT) };
    let stdout = BufReader::new(trace.stdout.take().unwrap());
    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect();
    let status = trace.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut trace.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(events.iter().filter(|e| e["pid"] == pid).count(), 250);
    assert!(events
        .iter()
        .all(|e| e["strace"].as_str().unwrap().starts_with("getppid() = ")));
    // --keep: the session stays, stopped.
    assert!(stderr.contains(&format!("session {id} kept")), "{stderr}");
    assert_eq!(
        daemon.get(&format!("/v1/sessions/{id}"))["status"],
        "stopped"
    );

    // The other commands, as a script would use them.
    let ctl = |args: &[&str]| {
        let output = Command::new(tracerctl())
            .args(["--server", &daemon.url("")])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, listed, _) = ctl(&["-o", "json", "sessions", "ls"]);
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["sessions"][0]["id"], id.as_str());
    let (code, printed, _) = ctl(&["events", &id]);
    assert_eq!(code, Some(0));
    assert!(
        printed
            .lines()
            .filter(|l| l.contains(" getppid() = "))
            .count()
            >= 250,
        "{printed}"
    );
    let (code, status_text, _) = ctl(&["status"]);
    assert_eq!(code, Some(0));
    assert!(status_text.contains("ebpf: available"), "{status_text}");
    let (code, _, error) = ctl(&["sessions", "get", "not-a-uuid"]);
    assert_eq!(code, Some(1));
    assert!(
        error.starts_with("tracerctl: tracerd refused (400)"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "one readable line: {error}");
    let (code, _, _) = ctl(&["sessions", "rm", &id]);
    assert_eq!(code, Some(0));
}

#[test]
fn trace_launch_ends_with_the_containers_exit_code() {
    require_root();
    let daemon = Daemon::start(&[]);
    let image = tracer_tests::docker::test_image();
    let output = Command::new(tracerctl())
        .args([
            "--server",
            &daemon.url(""),
            "-o",
            "json",
            "trace",
            "-e",
            "getppid",
            "--launch",
            image,
        ])
        .args(["--", "/bin/syscall_loop", "getppid", "50", "bad-op", "1"])
        .output()
        .expect("tracerctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The workload makes its 50 calls, then refuses the unknown op with exit code 2.
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    // The workload's own calls (the container's start-up makes a few of its own).
    let workload_calls = stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["comm"] == "syscall_loop")
        .count();
    assert_eq!(workload_calls, 50, "{stdout}");
    assert!(stderr.contains("exited with code 2"), "{stderr}");
}
