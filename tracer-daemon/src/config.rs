//! The daemon's configuration: one clap struct, every field a flag and an environment variable.
use std::{net::SocketAddr, path::PathBuf};

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "tracerd",
    version,
    about = "Per-node syscall tracing daemon for containers"
)]
pub struct Config {
    /// Where the REST API listens: ADDRESS:PORT, or unix:/PATH for a unix socket (local
    /// clients; its mode and group say who may connect).
    #[arg(long, env = "TRACERD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: crate::listen::Listen,

    /// The unix socket's file mode (octal).
    #[arg(long, env = "TRACERD_LISTEN_MODE", default_value = "660",
          value_parser = crate::listen::parse_mode)]
    pub listen_mode: u32,

    /// The unix socket's group (a name): its members may use the API.
    #[arg(long, env = "TRACERD_LISTEN_GROUP")]
    pub listen_group: Option<String>,

    /// Serve the API over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "TRACERD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "TRACERD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Accept only TLS clients with a certificate this CA (PEM) signed (mutual TLS).
    #[arg(long, env = "TRACERD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Also serve `/metrics` (and `/healthz`) here without a token, for Prometheus: keep it
    /// on loopback or a cluster-internal address. On the API, `/metrics` is for the admin.
    #[arg(long, env = "TRACERD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// The most API connections served at once (fewer if the open-files limit, raised to its
    /// hard limit at start, leaves less room). At the cap a new connection closes the
    /// longest-idle one; with none idle it is refused with a 503.
    #[arg(long, env = "TRACERD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// How long a client may take to send a request's head (e.g. `10s`).
    #[arg(long, env = "TRACERD_HEADER_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub header_timeout: std::time::Duration,

    /// How long a client may take to send a request's body.
    #[arg(long, env = "TRACERD_BODY_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub body_timeout: std::time::Duration,

    /// A connection with no request for this long is closed.
    #[arg(long, env = "TRACERD_IDLE_TIMEOUT", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub idle_timeout: std::time::Duration,

    /// Directory for the SQLite database and recorded events. Created if missing; one daemon
    /// at a time may use it.
    #[arg(long, env = "TRACERD_DATA_DIR", default_value = "/var/lib/tracerd")]
    pub data_dir: PathBuf,

    /// Size of each of the kernel's record ring buffers (one per CPU) in bytes: a power of
    /// two, at least a page (8 MiB holds about 65,000 records). Default: 64 MiB shared out
    /// among the CPUs, from 8 to 32 MiB each.
    #[arg(long, env = "TRACERD_RING_BYTES", value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,

    /// Records a CPU writes before it wakes the reader (default: an eighth of the ring's
    /// worth; 0 lets the kernel wake it up to once per record). Records in between wait at
    /// most 10 ms for the reader's periodic flush.
    #[arg(long, env = "TRACERD_RING_WAKEUP_EVERY")]
    pub ring_wakeup_every: Option<u64>,

    /// One ring buffer shared by all CPUs instead of one per CPU (each `--ring-bytes`).
    #[arg(long, env = "TRACERD_SHARED_RING")]
    pub shared_ring: bool,

    /// Do not load the eBPF programs: every session runs on the ftrace backend (a tracefs
    /// instance per session).
    #[arg(long, env = "TRACERD_NO_EBPF")]
    pub no_ebpf: bool,

    /// Ring-buffer size per CPU, in KiB, of each ftrace session's tracefs instance (a session
    /// can set its own with `limits.ftrace_buffer_kb`).
    #[arg(long, env = "TRACERD_FTRACE_BUFFER_KB", default_value_t = crate::backend::ftrace::DEFAULT_BUFFER_KB,
          value_parser = clap::value_parser!(u32).range(64..=1 << 20))]
    pub ftrace_buffer_kb: u32,

    /// The OpenTelemetry collector sessions export spans to, unless they name their own
    /// (`http://host:4317`). Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; neither: no export by default.
    #[arg(long, env = "TRACERD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// `grpc` or `http/protobuf` (unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, else grpc).
    #[arg(long, env = "TRACERD_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Headers sent to the collector, `key=value,key2=value2` (unset:
    /// `OTEL_EXPORTER_OTLP_HEADERS`).
    #[arg(long, env = "TRACERD_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,

    /// `gzip` or `none` (unset: `OTEL_EXPORTER_OTLP_COMPRESSION`, else none).
    #[arg(long, env = "TRACERD_OTLP_COMPRESSION")]
    pub otlp_compression: Option<String>,

    /// How long one export may take (e.g. `10s`; unset: `OTEL_EXPORTER_OTLP_TIMEOUT` in
    /// milliseconds, else 10 s).
    #[arg(long, env = "TRACERD_OTLP_TIMEOUT", value_parser = humantime::parse_duration)]
    pub otlp_timeout: Option<std::time::Duration>,

    /// A PEM file of CA certificates to trust for an `https` collector, beside the system's
    /// (unset: `OTEL_EXPORTER_OTLP_CERTIFICATE`).
    #[arg(long, env = "TRACERD_OTLP_CA_FILE")]
    pub otlp_ca_file: Option<PathBuf>,

    /// Largest on-disk spool of one session, in bytes: spans wait there while the collector
    /// is slow or away; beyond it they count as `export_failed`.
    #[arg(long, env = "TRACERD_SPOOL_CAP_BYTES", default_value_t = 1 << 30)]
    pub spool_cap_bytes: u64,

    /// Spans a session keeps in memory while the collector is slow or away, before new ones
    /// go to its on-disk spool.
    #[arg(long, env = "TRACERD_EXPORT_MEMORY_SPANS", default_value_t = 65536,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub export_memory_spans: u64,

    /// Spans per export batch (a batch also goes when its first span has waited
    /// `--export-batch-delay`).
    #[arg(long, env = "TRACERD_EXPORT_BATCH_SPANS", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub export_batch_spans: u64,

    /// The longest a span waits for its batch to fill (e.g. `200ms`).
    #[arg(long, env = "TRACERD_EXPORT_BATCH_DELAY", default_value = "200ms",
          value_parser = humantime::parse_duration)]
    pub export_batch_delay: std::time::Duration,

    /// Trace this cgroup (an absolute path under the cgroup2 mount) from start-up; may be
    /// given more than once. Sessions, the API for this, come in a later release.
    #[arg(
        long = "trace-cgroup",
        env = "TRACERD_TRACE_CGROUPS",
        value_delimiter = ','
    )]
    pub trace_cgroups: Vec<PathBuf>,

    /// Bearer tokens and the tenants they stand for (a TOML file; see docs/api.md). Without
    /// it every caller is the admin, and tracerd listens on loopback addresses only.
    #[arg(long, env = "TRACERD_TOKENS")]
    pub tokens: Option<PathBuf>,

    /// Size cap of each session's recorded events on disk, in compressed bytes; past it
    /// the oldest events are removed (and counted as `evicted`).
    #[arg(long, env = "TRACERD_EVENT_LOG_CAP_BYTES", default_value_t = 256 << 20)]
    pub event_log_cap_bytes: u64,

    /// The Docker engine's API socket, for container targets.
    #[arg(
        long,
        env = "TRACERD_DOCKER_SOCKET",
        default_value = "/var/run/docker.sock"
    )]
    pub docker_socket: PathBuf,

    /// The container label that names the tenant owning a container: a tenant may trace
    /// only containers carrying it with its name.
    #[arg(long, env = "TRACERD_OWNER_LABEL", default_value = "tracerd.tenant")]
    pub owner_label: String,

    /// A TOML file of settings, keyed by the long flag names (`listen = "…"`,
    /// `data-dir = "…"`). Flags and environment variables take precedence over it.
    #[arg(long, env = "TRACERD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Join a cluster coordinated through these etcd endpoints (`http://10.0.0.1:2379,…`):
    /// the node registers itself, and sessions with `"scope": "cluster"` run on every node
    /// whose targets match. Without it the daemon is a single node.
    #[arg(long, env = "TRACERD_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// A PEM file of CA certificates to trust for `https://` etcd endpoints (default: the
    /// system's roots).
    #[arg(long, env = "TRACERD_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// A client certificate (PEM) for etcd's client-certificate authentication; needs
    /// --etcd-key.
    #[arg(long, env = "TRACERD_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "TRACERD_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,

    /// This node's name in the cluster (default: the hostname).
    #[arg(long, env = "TRACERD_NODE")]
    pub node: Option<String>,

    /// A label of this node, `key=value`, for sessions' `node_selector`; may be repeated.
    #[arg(long = "node-label", env = "TRACERD_NODE_LABELS", value_delimiter = ',',
          value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,

    /// The URL other nodes reach this node's API at (to merge its events). Default: `http://`
    /// and the `--listen` address, when that is an IP address other than 0.0.0.0 or ::.
    #[arg(long, env = "TRACERD_NODE_ADDRESS")]
    pub node_address: Option<String>,

    /// The etcd key prefix the cluster's state lives under (several clusters can share one
    /// etcd with different prefixes).
    #[arg(long, env = "TRACERD_ETCD_PREFIX", default_value = "/tracerd/")]
    pub etcd_prefix: String,

    /// How often the per-cgroup record counts are logged, in seconds (0: never).
    #[arg(long, env = "TRACERD_TALLY_INTERVAL_SECS", default_value_t = 10)]
    pub tally_interval_secs: u64,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not a label: give key=value")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{path}: unknown setting `{key}` (settings are the long flag names, e.g. `data-dir`)")]
    UnknownKey { path: String, key: String },
    #[error("{path}: `{key}` must be a string, number or boolean")]
    BadValue { path: String, key: String },
}

impl Config {
    /// Parses flags and environment variables, with the settings of `--config` (or
    /// `TRACERD_CONFIG`) beneath them. Call before starting any thread: a file's settings
    /// become environment variables of this process.
    pub fn load() -> Result<Self, ConfigFileError> {
        use clap::{CommandFactory as _, Parser as _};
        let first = Self::parse();
        let Some(path) = first.config.clone() else {
            return Ok(first);
        };
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
            path: name.clone(),
            source,
        })?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
                path: name.clone(),
                source,
            })?;
        let command = Self::command();
        for (key, value) in table {
            let argument = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(key.as_str()))
                .filter(|arg| arg.get_long() != Some("config"))
                .ok_or_else(|| ConfigFileError::UnknownKey {
                    path: name.clone(),
                    key: key.clone(),
                })?;
            let Some(env) = argument.get_env() else {
                return Err(ConfigFileError::UnknownKey {
                    path: name.clone(),
                    key,
                });
            };
            let value = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Boolean(flag) => flag.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map_or_else(|| item.to_string(), str::to_owned)
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                _ => {
                    return Err(ConfigFileError::BadValue {
                        path: name.clone(),
                        key,
                    })
                }
            };
            // Below flags and the environment: only fill what neither set.
            if std::env::var_os(env).is_none() {
                // SAFETY: called at start-up, before any other thread exists.
                unsafe { std::env::set_var(env, value) };
            }
        }
        Ok(Self::parse())
    }
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u32 = text.parse().map_err(|err| format!("{err}"))?;
    let page = 4096;
    if bytes < page || !bytes.is_power_of_two() {
        return Err(format!(
            "{bytes} is not a power of two of at least {page} bytes"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn defaults_listen_on_loopback_8080() {
        let config = Config::try_parse_from(["tracerd"]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/tracerd"));
    }

    #[test]
    fn rejects_a_ring_size_that_is_not_a_power_of_two() {
        let err = Config::try_parse_from(["tracerd", "--ring-bytes", "5000"]).unwrap_err();
        assert!(err.to_string().contains("power of two"), "{err}");
        let config = Config::try_parse_from(["tracerd", "--ring-bytes", "65536"]).unwrap();
        assert_eq!(config.ring_bytes, Some(65536));
    }
}
