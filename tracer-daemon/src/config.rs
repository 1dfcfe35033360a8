//! The daemon's configuration: one clap struct, every field a flag and an environment variable.
use std::{net::SocketAddr, path::PathBuf};

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "tracerd",
    version,
    about = "Per-node syscall tracing daemon for containers"
)]
pub struct Config {
    /// Address and port the REST API listens on.
    #[arg(long, env = "TRACERD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the SQLite database and recorded events. Created if missing; one daemon
    /// at a time may use it.
    #[arg(long, env = "TRACERD_DATA_DIR", default_value = "/var/lib/tracerd")]
    pub data_dir: PathBuf,

    /// Size of each of the kernel's record ring buffers (one per CPU) in bytes: a power of
    /// two, at least a page. 8 MiB holds about 65,000 records.
    #[arg(long, env = "TRACERD_RING_BYTES", default_value_t = tracer_common::DEFAULT_RING_BYTES,
          value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,

    /// Records a CPU writes before it wakes the reader (default: an eighth of the ring's
    /// worth; 0 lets the kernel wake it up to once per record). Records in between wait at
    /// most 10 ms for the reader's periodic flush.
    #[arg(long, env = "TRACERD_RING_WAKEUP_EVERY")]
    pub ring_wakeup_every: Option<u64>,

    /// One ring buffer shared by all CPUs instead of one per CPU (each `--ring-bytes`).
    #[arg(long, env = "TRACERD_SHARED_RING")]
    pub shared_ring: bool,

    /// Trace this cgroup (an absolute path under the cgroup2 mount) from start-up; may be
    /// given more than once. Sessions, the API for this, come in a later release.
    #[arg(
        long = "trace-cgroup",
        env = "TRACERD_TRACE_CGROUPS",
        value_delimiter = ','
    )]
    pub trace_cgroups: Vec<PathBuf>,

    /// How often the per-cgroup record counts are logged, in seconds (0: never).
    #[arg(long, env = "TRACERD_TALLY_INTERVAL_SECS", default_value_t = 10)]
    pub tally_interval_secs: u64,
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
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/tracerd"));
    }

    #[test]
    fn rejects_a_ring_size_that_is_not_a_power_of_two() {
        let err = Config::try_parse_from(["tracerd", "--ring-bytes", "5000"]).unwrap_err();
        assert!(err.to_string().contains("power of two"), "{err}");
        let config = Config::try_parse_from(["tracerd", "--ring-bytes", "65536"]).unwrap();
        assert_eq!(config.ring_bytes, 65536);
    }
}
