//! Decoded records against strace itself: the same program, run once under
//! `strace -f -s 32` and once traced by the real daemon, must give the same text for every
//! call of a known set (pointer values and the process id aside, which differ between
//! runs); and data longer than a session keeps is cut and flagged.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde_json::{json, Value};
use tracer_tests::{cgroup::TestCgroup, daemon::Daemon, require_root, workload};

/// The calls compared (the program's own and its C library's start-up).
const COMPARED: &[&str] = &[
    "openat", "read", "write", "socket", "connect", "bind", "execve", "mmap", "mprotect", "kill",
];

fn decoded_calls() -> &'static Path {
    Path::new(env!("DECODED_CALLS"))
}

/// A line as both sides are compared: alignment padding before `=` removed, hexadecimal
/// values (pointers, which differ between runs) and the process id masked.
fn normalise(line: &str, pid: u32) -> String {
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(line.len());
    let mut rest = line.as_str();
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        out.push_str("0x…");
        rest = rest[at + 2..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out.replace(&format!("kill({pid},"), "kill(PID,")
}

/// What strace prints for the program's calls of the compared set, in order.
fn strace_lines() -> Vec<String> {
    let output = std::env::temp_dir().join(format!("tracerd-strace-{}.txt", std::process::id()));
    let status = Command::new("strace")
        .args(["-f", "-s", "32", "-o"])
        .arg(&output)
        .arg(format!("-e trace={}", COMPARED.join(",")).replace(' ', ""))
        .arg(decoded_calls())
        .env_clear()
        .env("A", "1")
        .stdout(Stdio::null())
        .status()
        .expect("running strace (cargo xtask setup installs it)");
    assert!(status.success(), "strace or the workload failed");
    let text = std::fs::read_to_string(&output).unwrap();
    let _ = std::fs::remove_file(&output);
    text.lines()
        .filter_map(|line| {
            let (pid, call) = line.split_once(char::is_whitespace)?;
            let call = call.trim_start();
            (!call.starts_with("---") && !call.starts_with("+++"))
                .then(|| normalise(call, pid.parse().unwrap()))
        })
        .collect()
}

/// Runs `args` in a fresh cgroup traced by a session of `body` (its target added), and
/// returns the events of the run, in time order, once `expected` were delivered. With
/// `paused`, the program starts first and waits for the session (ftrace follows a process
/// that joins a cgroup only once it has seen the join).
fn traced(
    daemon: &Daemon,
    args: &[&str],
    mut body: Value,
    expected: u64,
    paused: bool,
) -> (Vec<Value>, u32) {
    let cgroup = TestCgroup::create("decoded");
    body["target"] = json!({"cgroup": cgroup.path()});
    let mut command = Command::new(decoded_calls());
    if paused {
        command.arg("wait-stdin");
    }
    command
        .args(args)
        .env_clear()
        .env("A", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    workload::join_before_exec(&mut command, &cgroup);
    let (id, mut child) = if paused {
        let child = command.spawn().expect("starting the workload");
        (daemon.create_and_start(&body), child)
    } else {
        let id = daemon.create_and_start(&body);
        (id, command.spawn().expect("starting the workload"))
    };
    let pid = child.id();
    if paused {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(b"x").unwrap();
    }
    assert!(child.wait().unwrap().success(), "the workload failed");
    let session = daemon.wait_for_session(&id, None, "every event delivered", |s| {
        s["counters"]["delivered"].as_u64() >= Some(expected)
    });
    assert_eq!(session["counters"]["dropped"], 0, "{session}");
    let mut events = daemon.events(&id);
    events.sort_by_key(|e| e["ts_unix_ns"].as_i64());
    (events, pid)
}

#[test]
fn the_strace_field_is_what_strace_prints() {
    require_root();
    let expected = strace_lines();
    assert!(expected.len() >= 20, "strace saw {expected:#?}");
    let daemon = Daemon::start(&[]);
    let mut syscalls = COMPARED.to_vec();
    syscalls.push("accept4");
    let (events, pid) = traced(
        &daemon,
        &[],
        json!({"syscalls": syscalls}),
        expected.len() as u64 + 1,
        false,
    );
    let ours: Vec<String> = events
        .iter()
        .filter(|e| e["syscall"] != "accept4")
        .map(|e| normalise(e["strace"].as_str().unwrap(), pid))
        .collect();
    assert_eq!(ours, expected);

    // An address the kernel hands back, read at exit.
    let accept = events.iter().find(|e| e["syscall"] == "accept4").unwrap();
    let peer = accept["params"]["upeer_sockaddr"].as_str().unwrap();
    assert!(
        peer.starts_with("{sa_family=AF_INET, sin_port=htons(")
            && peer.ends_with(r#"sin_addr=inet_addr("127.0.0.1")}"#),
        "{accept}"
    );
    assert_eq!(accept["params"]["flags"], "SOCK_CLOEXEC");

    // Named, decoded parameters; only the registers the call takes.
    let connect = events
        .iter()
        .find(|e| e["syscall"] == "connect" && e["ret"] == -111)
        .unwrap();
    assert_eq!(connect["params"]["fd"], 5);
    assert_eq!(
        connect["params"]["uservaddr"],
        r#"{sa_family=AF_INET, sin_port=htons(47312), sin_addr=inet_addr("127.0.0.1")}"#
    );
    assert_eq!(connect["params"]["addrlen"], 16);
    assert_eq!(connect["args"].as_array().unwrap().len(), 3);
    let exec = events.iter().rfind(|e| e["syscall"] == "execve").unwrap();
    assert_eq!(
        exec["params"]["argv"],
        json!(["decoded_calls", "child", "two words"])
    );
}

#[test]
fn data_longer_than_kept_is_cut_and_flagged() {
    require_root();
    let daemon = Daemon::start(&[]);
    let body = json!({"syscalls": ["openat", "write", "execve"]});
    let (events, _) = traced(&daemon, &["long-path"], body.clone(), 2, false);
    let open = events.iter().find(|e| e["syscall"] == "openat").unwrap();
    assert_eq!(open["truncated"], json!(["filename"]), "{open}");
    assert_eq!(open["path_truncated"], true);
    assert_eq!(open["params"]["filename"].as_str().unwrap().len(), 255);

    let (events, _) = traced(&daemon, &["big-write"], body.clone(), 3, false);
    let write = events.iter().find(|e| e["syscall"] == "write").unwrap();
    assert_eq!(write["truncated"], json!(["buf"]), "{write}");
    assert_eq!(write["params"]["count"], 1 << 20);
    assert!(
        write["strace"].as_str().unwrap().starts_with(&format!(
            "write(3, \"{}\"..., 1048576) = 1048576",
            "w".repeat(32)
        )),
        "{write}"
    );

    let (events, _) = traced(&daemon, &["many-args"], body, 2, false);
    let exec = events.iter().rfind(|e| e["syscall"] == "execve").unwrap();
    assert_eq!(exec["truncated"], json!(["argv"]), "{exec}");
    assert_eq!(exec["params"]["argv"].as_array().unwrap().len(), 32);
    assert!(
        exec["strace"]
            .as_str()
            .unwrap()
            .contains(r#""arg", ...], "#),
        "{exec}"
    );

    // A session with capture off: registers only, flagged unavailable, never guessed.
    let off = json!({"syscalls": ["openat"], "capture": {"enabled": false}});
    let (events, _) = traced(&daemon, &["long-path"], off, 1, false);
    let open = events.iter().find(|e| e["syscall"] == "openat").unwrap();
    assert_eq!(open["unavailable"], json!(["filename"]), "{open}");
    assert!(open.get("path").is_none(), "{open}");
}

#[test]
fn ftrace_decodes_registers_and_marks_user_memory_unavailable() {
    require_root();
    let daemon = Daemon::start(&[]);
    let body = json!({"syscalls": ["openat", "mmap"], "backend": "ftrace"});
    let (events, _) = traced(&daemon, &[], body, 4, true);
    let missing = events
        .iter()
        .find(|e| e["syscall"] == "openat" && e["ret"] == -2)
        .unwrap();
    assert_eq!(missing["params"]["dfd"], "AT_FDCWD");
    assert_eq!(missing["params"]["flags"], "O_RDONLY");
    assert_eq!(missing["unavailable"], json!(["filename"]), "{missing}");
    let mmap = events.iter().find(|e| e["syscall"] == "mmap").unwrap();
    assert_eq!(mmap["params"]["prot"], "PROT_READ|PROT_WRITE", "{mmap}");
    assert_eq!(mmap["params"]["flags"], "MAP_PRIVATE|MAP_ANONYMOUS");
}
