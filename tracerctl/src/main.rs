//! `tracerctl`: tracerd from the command line. `tracerctl trace --container web` shows a
//! container's syscalls as strace would; the other commands manage sessions and read events.
mod client;
mod render;
mod summary;
mod trace;
mod unix;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use self::client::Client;

const EXAMPLES: &str = "\
Examples:
  tracerctl trace --container web                  every syscall of the container `web`
  tracerctl trace --container web -e openat,connect --failed
  tracerctl trace --cgroup /sys/fs/cgroup/unified/demo -c     counts, like strace -c
  tracerctl trace --launch debian:bookworm-slim -- cat /etc/os-release
  tracerctl sessions ls
  tracerctl events 3f0c… -f -o json | jq .strace
  tracerctl completions bash > /etc/bash_completion.d/tracerctl";

#[derive(Parser)]
#[command(name = "tracerctl", version, about = "Trace containers' syscalls through tracerd",
    after_help = EXAMPLES)]
struct Cli {
    /// tracerd's API.
    #[arg(
        long,
        env = "TRACERD_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// A bearer token, when tracerd has tokens.
    #[arg(long, env = "TRACERD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// For an https:// server: the CA that signed its certificate (PEM; else the public roots).
    #[arg(long, env = "TRACERD_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// A client certificate (PEM), for a server that asks for one (mutual TLS).
    #[arg(long, env = "TRACERD_CERT", global = true)]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "TRACERD_KEY", global = true)]
    key: Option<std::path::PathBuf>,
    /// How to print: `strace` lines and tables for people, `json` for tools.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and strace-like lines (the default).
    Table,
    /// strace-like event lines.
    Strace,
    /// JSON: one object, or one per line for events.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Trace a target now: events as they happen, until Ctrl-C (or the target is gone).
    Trace(trace::TraceArgs),
    /// Manage sessions.
    #[command(subcommand)]
    Sessions(Sessions),
    /// A session's recorded events; `-f` follows new ones.
    Events {
        id: String,
        /// Keep printing events as they are recorded, until the session stops.
        #[arg(short, long)]
        follow: bool,
        /// Only these syscalls.
        #[arg(short = 'e', long = "syscalls")]
        syscalls: Option<String>,
    },
    /// Running containers, and the sessions tracing each.
    Containers,
    /// tracerd's health: backends and programs.
    Status,
    /// Shell completions, to source or install.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum Sessions {
    /// List sessions.
    Ls,
    /// One session.
    Get {
        id: String,
    },
    /// Create a session from a JSON request (as `POST /v1/sessions` takes it).
    Create {
        request: String,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    /// Delete a session and its recorded events.
    Rm {
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            eprintln!("tracerctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<i32> {
    let tls = client::TlsFiles {
        ca: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    let client = Client::new(&cli.server, cli.token.clone(), &tls)?;
    match &cli.command {
        Command::Trace(args) => return trace::run(&client, args, cli.output),
        Command::Sessions(command) => sessions(&client, command, cli.output)?,
        Command::Events {
            id,
            follow,
            syscalls,
        } => events(&client, id, *follow, syscalls.as_deref(), cli.output)?,
        Command::Containers => containers(&client, cli.output)?,
        Command::Status => print_json(&client.get("/healthz")?, cli.output, status_text),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "tracerctl",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(0)
}

fn sessions(client: &Client, command: &Sessions, output: Output) -> Result<()> {
    let path = |id: &str, action: &str| format!("/v1/sessions/{id}{action}");
    let session = match command {
        Sessions::Ls => {
            let list = client.get("/v1/sessions?limit=1000")?;
            print_json(&list, output, sessions_table);
            return Ok(());
        }
        Sessions::Get { id } => client.get(&path(id, ""))?,
        Sessions::Create { request } => {
            let body: Value = serde_json::from_str(request)
                .map_err(|err| anyhow::anyhow!("the request is not JSON: {err}"))?;
            client.call("POST", "/v1/sessions", Some(&body))?
        }
        Sessions::Start { id } => client.call("POST", &path(id, "/start"), None)?,
        Sessions::Stop { id } => client.call("POST", &path(id, "/stop"), None)?,
        Sessions::Rm { id } => {
            client.call("DELETE", &path(id, ""), None)?;
            return Ok(());
        }
    };
    print_json(&session, output, |session| {
        serde_json::to_string_pretty(session).unwrap_or_default() + "\n"
    });
    Ok(())
}

fn events(
    client: &Client,
    id: &str,
    follow: bool,
    syscalls: Option<&str>,
    output: Output,
) -> Result<()> {
    let mut path = format!("/v1/sessions/{id}/events?follow={follow}");
    if let Some(syscalls) = syscalls {
        path.push_str(&format!("&syscall={syscalls}"));
    }
    let colour = render::is_terminal();
    client.lines(&path, |event| {
        let line = match output {
            Output::Json => event.to_string(),
            _ if event.get("gap").is_some() => format!("… {} events evicted", event["gap"]),
            // A cluster session's node whose events could not be read.
            _ if event.get("unavailable").is_some() => format!(
                "… node {}: events unavailable: {}",
                event["node"], event["unavailable"]
            ),
            _ => render::event_line(&event, colour),
        };
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), "{line}").is_ok()
    })
}

fn containers(client: &Client, output: Output) -> Result<()> {
    let list = client.get("/v1/containers")?;
    print_json(&list, output, |list| {
        let rows: Vec<Vec<String>> = list["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                vec![
                    c["id"].as_str().unwrap_or("").chars().take(12).collect(),
                    text(&c["name"]),
                    text(&c["image"]),
                    c["pid"].to_string(),
                    c["sessions"].as_array().map_or(0, Vec::len).to_string(),
                ]
            })
            .collect();
        render::table(
            &["ID", "NAME", "IMAGE", "PID", "SESSIONS"],
            &rows,
            render::terminal_width(),
        )
    });
    Ok(())
}

fn sessions_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let counters = &s["counters"];
            vec![
                text(&s["id"]),
                text(&s["name"]),
                text(&s["status"]),
                s["backend_in_use"].as_str().unwrap_or("-").to_owned(),
                format!(
                    "{}/{}/{}",
                    counters["matched"], counters["delivered"], counters["dropped"]
                ),
                s["target"].to_string(),
            ]
        })
        .collect();
    render::table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "BACKEND",
            "MATCHED/DELIVERED/DROPPED",
            "TARGET",
        ],
        &rows,
        render::terminal_width(),
    )
}

fn status_text(health: &Value) -> String {
    let backend = |name: &str| {
        let backend = &health["backends"][name];
        if backend["available"] == true {
            "available".to_owned()
        } else {
            format!("unavailable: {}", text(&backend["reason"]))
        }
    };
    format!(
        "status: {}\ndefault backend: {}\nebpf: {}\nftrace: {}\nprograms attached: {}\n",
        text(&health["status"]),
        text(&health["backend"]),
        backend("ebpf"),
        backend("ftrace"),
        health["programs_attached"],
    )
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// JSON for `-o json`, else the human form.
fn print_json(value: &Value, output: Output, human: impl Fn(&Value) -> String) {
    if output == Output::Json {
        println!("{value}");
    } else {
        print!("{}", human(value));
    }
}
