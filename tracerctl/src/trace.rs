//! `tracerctl trace`: create and start a session, print its events as they happen, and on
//! Ctrl-C (or when the session ends by itself) stop it, print the summary, and delete it.
use std::{io::Write as _, sync::mpsc, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Map, Value};

use crate::{client::Client, render, summary::Summary, Output};

/// What to trace and how to show it.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Containers by exact name, ID prefix or part of a name.
    #[arg(long, group = "target")]
    pub container: Option<String>,
    /// Containers carrying all these labels: `app=shop,tier=web`.
    #[arg(long, group = "target", value_name = "K=V,...")]
    pub labels: Option<String>,
    /// A cgroup v2 directory (absolute path) and everything below it.
    #[arg(long, group = "target")]
    pub cgroup: Option<String>,
    /// Processes by pid (repeat or comma-separate).
    #[arg(long = "pid", group = "target", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Launch a container from this local image and trace it from its first syscall; the
    /// command follows `--`. Ends when the container exits, with its exit code.
    #[arg(long, group = "target", value_name = "IMAGE")]
    pub launch: Option<String>,
    /// Only these syscalls: `-e openat,connect` (like strace's `-e trace=`).
    #[arg(short = 'e', long = "syscalls", value_name = "NAMES")]
    pub syscalls: Option<String>,
    /// Only calls that fail.
    #[arg(long)]
    pub failed: bool,
    /// Only this process (with a container, label or cgroup target).
    #[arg(short = 'p', long = "only-pid", value_name = "PID")]
    pub only_pid: Option<u32>,
    /// Count time, calls and errors per syscall and print the table at the end instead of
    /// the events (like strace's `-c`).
    #[arg(short = 'c', long)]
    pub summary: bool,
    /// Keep the session (and its recorded events) when the trace ends.
    #[arg(long)]
    pub keep: bool,
    /// The session's name (default: the target and the time).
    #[arg(long)]
    pub name: Option<String>,
    /// The launched container's command.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl TraceArgs {
    fn target(&self) -> Result<Value> {
        if let Some(name) = &self.container {
            return Ok(json!({"container": name}));
        }
        if let Some(labels) = &self.labels {
            let mut map = Map::new();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--labels: `{pair}` is not key=value"))?;
                map.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            return Ok(json!({"labels": map}));
        }
        if let Some(cgroup) = &self.cgroup {
            return Ok(json!({"cgroup": cgroup}));
        }
        if !self.pids.is_empty() {
            return Ok(json!({"pids": self.pids}));
        }
        if let Some(image) = &self.launch {
            return Ok(json!({"launch": {"image": image, "command": self.command}}));
        }
        bail!("say what to trace: --container, --labels, --cgroup, --pid or --launch")
    }

    fn request(&self) -> Result<Value> {
        if !self.command.is_empty() && self.launch.is_none() {
            bail!("a command after `--` is for --launch");
        }
        let mut body = json!({"target": self.target()?});
        if let Some(names) = &self.syscalls {
            let names: Vec<&str> = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect();
            body["syscalls"] = json!(names);
        }
        if self.failed {
            body["conditions"]["failed_only"] = json!(true);
        }
        if let Some(pid) = self.only_pid {
            body["conditions"]["tgids"] = json!([pid]);
        }
        if let Some(name) = &self.name {
            body["name"] = json!(name);
        }
        Ok(body)
    }
}

enum Happened {
    Interrupted,
    /// The stream ended (the session stopped by itself, or after an interrupt), with what
    /// it counted.
    Ended(Result<Summary>),
}

/// Runs a trace; returns the exit code (a launched container's own).
pub fn run(client: &Client, args: &TraceArgs, output: Output) -> Result<i32> {
    // Ctrl-C is handled before there is a session to leave behind.
    let (happened, events) = mpsc::channel();
    let interrupted = happened.clone();
    ctrlc::set_handler(move || {
        let _ = interrupted.send(Happened::Interrupted);
    })
    .context("handling Ctrl-C")?;
    let session = client.call("POST", "/v1/sessions", Some(&args.request()?))?;
    let id = session["id"]
        .as_str()
        .context("tracerd gave the session no id")?
        .to_owned();
    let result = trace(client, &id, args, output, (happened, events));
    // However the trace ended (Ctrl-C, a closed pipe, an error), the session stops recording.
    let _ = client.call("POST", &format!("/v1/sessions/{id}/stop"), None);
    if args.keep {
        eprintln!("tracerctl: session {id} kept");
    } else if let Err(err) = client.call("DELETE", &format!("/v1/sessions/{id}"), None) {
        eprintln!("tracerctl: deleting session {id}: {err:#}");
    }
    result
}

fn trace(
    client: &Client,
    id: &str,
    args: &TraceArgs,
    output: Output,
    (happened, events): (mpsc::Sender<Happened>, mpsc::Receiver<Happened>),
) -> Result<i32> {
    client.call("POST", &format!("/v1/sessions/{id}/start"), None)?;
    let follower = {
        let client = client.clone();
        let path = format!("/v1/sessions/{id}/events?follow=true");
        let summary_only = args.summary;
        std::thread::spawn(move || {
            let result = follow(&client, &path, summary_only, output);
            let _ = happened.send(Happened::Ended(result));
        })
    };
    let summary = match events.recv().context("the trace ended unexpectedly")? {
        Happened::Ended(summary) => summary?,
        Happened::Interrupted => {
            // Stopping ends the run: every event recorded reaches the stream, then it ends.
            if let Err(err) = client.call("POST", &format!("/v1/sessions/{id}/stop"), None) {
                eprintln!("tracerctl: stopping session {id}: {err:#}");
            }
            loop {
                match events.recv_timeout(Duration::from_secs(30)) {
                    Ok(Happened::Ended(summary)) => break summary?,
                    Ok(Happened::Interrupted) => {}
                    Err(_) => bail!("the event stream did not end within 30 s of stopping"),
                }
            }
        }
    };
    let _ = follower.join();
    if args.summary {
        print!("{}", summary.table());
    }
    let session = client.get(&format!("/v1/sessions/{id}"))?;
    let dropped = session["counters"]["dropped"].as_u64().unwrap_or(0);
    if dropped > 0 {
        eprintln!("tracerctl: tracerd dropped {dropped} events (counted, not shown)");
    }
    Ok(exit_code(&session, args.launch.is_some()))
}

/// Prints (or counts) every event of the stream until it ends.
fn follow(client: &Client, path: &str, summary_only: bool, output: Output) -> Result<Summary> {
    let mut summary = Summary::default();
    let colour = render::is_terminal();
    let stdout = std::io::stdout();
    client.lines(path, |event| {
        if let Some(gap) = event.get("gap") {
            eprintln!("tracerctl: {gap} events were evicted from the session's log before they could be shown");
            return true;
        }
        if let Some(why) = event.get("unavailable") {
            eprintln!("tracerctl: node {}'s events are unavailable: {why}", event["node"]);
            return true;
        }
        summary.add(&event);
        if summary_only {
            return true;
        }
        let line = match output {
            Output::Json => event.to_string(),
            Output::Strace | Output::Table => render::event_line(&event, colour),
        };
        // A closed pipe (`| head`) ends the trace like Ctrl-C would.
        writeln!(stdout.lock(), "{line}").is_ok()
    })?;
    Ok(summary)
}

/// 0, or a launched container's exit code, or 1 when the session failed.
fn exit_code(session: &Value, launched: bool) -> i32 {
    if session["status"] != "failed" {
        return 0;
    }
    let error = session["error"].as_str().unwrap_or_default();
    eprintln!("tracerctl: the session failed: {error}");
    if launched {
        if let Some(code) = error
            .rsplit("exited with code ")
            .next()
            .and_then(|code| code.trim().parse().ok())
        {
            return code;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> TraceArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            trace: TraceArgs,
        }
        let mut all = vec!["trace"];
        all.extend_from_slice(line);
        <Cli as clap::Parser>::try_parse_from(all).unwrap().trace
    }

    #[test]
    fn requests_say_what_the_flags_say() {
        let body = args(&[
            "--container",
            "web",
            "-e",
            "openat,connect",
            "--failed",
            "-p",
            "42",
        ])
        .request()
        .unwrap();
        assert_eq!(
            body,
            json!({"target": {"container": "web"}, "syscalls": ["openat", "connect"],
                   "conditions": {"failed_only": true, "tgids": [42]}})
        );
        let launch = args(&["--launch", "debian", "--", "cat", "/etc/os-release"])
            .request()
            .unwrap();
        assert_eq!(
            launch["target"],
            json!({"launch": {"image": "debian", "command": ["cat", "/etc/os-release"]}})
        );
        let labels = args(&["--labels", "app=shop,tier=web"]).request().unwrap();
        assert_eq!(
            labels["target"],
            json!({"labels": {"app": "shop", "tier": "web"}})
        );
        assert!(args(&[]).request().is_err());
        assert!(args(&["--cgroup", "/x", "--", "ls"]).request().is_err());
    }

    #[test]
    fn a_launched_container_exit_code_is_the_exit_code() {
        let failed =
            json!({"status": "failed", "error": "the launched container exited with code 3"});
        assert_eq!(exit_code(&failed, true), 3);
        assert_eq!(exit_code(&json!({"status": "finished"}), true), 0);
        assert_eq!(
            exit_code(&json!({"status": "failed", "error": "boom"}), false),
            1
        );
    }
}
