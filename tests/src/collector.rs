//! A real OpenTelemetry collector for the tests: `rotel-agent` (from PyPI, installed by
//! `cargo xtask setup`, found through `ROTEL_AGENT`), on loopback, writing every span it
//! receives to a log file that [`Collector::spans`] parses.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::free_port;

/// One span as the collector logged it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub name: String,
    pub start_unix_ns: u128,
    pub end_unix_ns: u128,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_ERROR`, …
    pub status_code: String,
    pub status_message: String,
    /// Attribute values as logged: `Int(42)`, `Str(text)`, `Slice(...)`.
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// A `Str(…)` or `Int(…)` attribute's inner text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        let value = self.attributes.get(key)?;
        let inner = value.split_once('(')?.1;
        Some(inner.strip_suffix(')').unwrap_or(inner))
    }
}

pub struct Collector {
    pub grpc_port: u16,
    pub http_port: u16,
    dir: PathBuf,
    /// Log files of every start, in order.
    logs: Vec<PathBuf>,
    running: bool,
    /// Whether it logs every span (tests) or only receives them (benchmarks).
    log_spans: bool,
}

fn agent() -> PathBuf {
    std::env::var_os("ROTEL_AGENT")
        .map(PathBuf::from)
        .expect("ROTEL_AGENT (set by `cargo xtask test`) names the rotel-agent binary")
}

impl Collector {
    /// A collector that logs every span it receives (for [`Collector::spans`]).
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// A collector that receives spans and discards them without logging: what a benchmark
    /// sends to, so the collector's own logging is not measured.
    pub fn start_blackhole() -> Self {
        Self::start_with(false)
    }

    fn start_with(log_spans: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tracerd-test-collector-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut collector = Self {
            grpc_port: free_port(),
            http_port: free_port(),
            dir,
            logs: Vec::new(),
            running: false,
            log_spans,
        };
        collector.resume();
        collector
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("rotel.pid")
    }

    /// Starts (again) on the same ports, logging to a new file.
    pub fn resume(&mut self) {
        assert!(!self.running);
        let log = self.dir.join(format!("spans-{}.log", self.logs.len()));
        let mut command = Command::new(agent());
        command.args(["start", "--exporter", "blackhole"]);
        if self.log_spans {
            command.args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"]);
        }
        let status = command
            .args([
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{}", self.grpc_port),
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{}", self.http_port),
                "--daemon",
            ])
            .arg("--log-file")
            .arg(&log)
            .arg("--pid-file")
            .arg(self.pid_file())
            .status()
            .expect("starting rotel-agent");
        assert!(status.success(), "rotel-agent failed to start");
        self.logs.push(log);
        self.running = true;
        // Ready once it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.grpc_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rotel-agent did not listen in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the collector (its spans so far stay readable).
    /// The collector's process id.
    pub fn pid(&self) -> i32 {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .expect("rotel-agent's pid file")
    }

    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let pid = self.pid();
        // SAFETY: kill(2) on the collector's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "rotel-agent did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.running = false;
    }

    /// Every span received so far, over every start.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            parse(&text, &mut spans);
        }
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses rotel's `--debug-log-verbosity detailed` output.
fn parse(text: &str, spans: &mut Vec<ReceivedSpan>) {
    let mut resource = BTreeMap::new();
    let mut in_resource = false;
    let mut current: Option<ReceivedSpan> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceSpans #") {
            resource = BTreeMap::new();
            in_resource = false;
            continue;
        }
        if trimmed == "Resource attributes:" {
            in_resource = true;
            continue;
        }
        if trimmed.starts_with("ScopeSpans #") {
            in_resource = false;
            continue;
        }
        if trimmed.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(ReceivedSpan {
                resource: resource.clone(),
                ..ReceivedSpan::default()
            });
            continue;
        }
        if let Some(attribute) = trimmed.strip_prefix("-> ") {
            if let Some((key, value)) = attribute.split_once(": ") {
                if in_resource {
                    resource.insert(key.to_owned(), value.to_owned());
                } else if let Some(span) = &mut current {
                    span.attributes.insert(key.to_owned(), value.to_owned());
                }
            }
            continue;
        }
        let Some(span) = &mut current else { continue };
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "Trace ID" => span.trace_id = value,
            "ID" => span.span_id = value,
            "Name" => span.name = value,
            "Start time" => span.start_unix_ns = value.parse().unwrap_or(0),
            "End time" => span.end_unix_ns = value.parse().unwrap_or(0),
            "Status code" => span.status_code = value,
            "Status message" => span.status_message = value,
            _ => {}
        }
    }
    spans.extend(current);
}
