//! A real Prometheus for the tests (Debian's `prometheus`, installed by `cargo xtask setup`):
//! started on loopback with the project's own scrape config (deploy/prometheus) pointed at the
//! daemons under test, queried through its HTTP API.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::free_port;

/// The project's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The shipped scrape config with its example targets replaced by `targets` and its
/// intervals by one second (so a test sees data in seconds, not minutes).
fn config_for(shipped: &str, targets: &[String]) -> String {
    let example = r#"["node-1.example:9090", "node-2.example:9090"]"#;
    assert!(
        shipped.contains(example),
        "the shipped config's targets changed"
    );
    assert!(
        shipped.contains("scrape_interval: 15s") && shipped.contains("evaluation_interval: 15s")
    );
    let quoted: Vec<String> = targets
        .iter()
        .map(|target| format!("\"{target}\""))
        .collect();
    shipped
        .replace(example, &format!("[{}]", quoted.join(", ")))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port` of `--metrics-listen`) with the
    /// shipped rules.
    pub fn start(targets: &[String]) -> Self {
        let deploy = deploy_dir().join("prometheus");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tracerd-test-prometheus-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = std::fs::read_to_string(deploy.join("prometheus.yml")).unwrap();
        std::fs::write(dir.join("prometheus.yml"), config_for(&shipped, targets)).unwrap();
        std::fs::copy(
            deploy.join("tracerd-rules.yml"),
            dir.join("tracerd-rules.yml"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (cargo xtask setup installs it)");
        let prometheus = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&prometheus.url("/-/ready")).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str, query: Option<&str>) -> Value {
        let mut request = ureq::get(&self.url(path));
        if let Some(query) = query {
            request = request.query("query", query);
        }
        let body: Value = request
            .call()
            .unwrap_or_else(|err| panic!("GET {path} {query:?}: {err}"))
            .into_body()
            .read_json()
            .unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// An instant query's result (its series).
    pub fn query(&self, query: &str) -> Vec<Value> {
        self.api("/api/v1/query", Some(query))["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `query` until it returns a series, for at most `limit`.
    pub fn wait_for_data(&self, query: &str, limit: Duration) -> Result<Vec<Value>, String> {
        let deadline = Instant::now() + limit;
        loop {
            let result = self.query(query);
            if !result.is_empty() {
                return Ok(result);
            }
            if Instant::now() >= deadline {
                return Err(format!("no data in {limit:?} for {query}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every rule Prometheus loaded, as its API lists them (name, query, state…).
    pub fn rules(&self) -> Vec<Value> {
        self.api("/api/v1/rules", None)["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_is_pointed_at_the_given_targets() {
        let shipped =
            std::fs::read_to_string(deploy_dir().join("prometheus/prometheus.yml")).unwrap();
        let config = config_for(&shipped, &["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        assert!(
            config.contains(r#"targets: ["127.0.0.1:1", "127.0.0.1:2"]"#),
            "{config}"
        );
        assert!(config.contains("scrape_interval: 1s"), "{config}");
        assert!(config.contains("- tracerd-rules.yml"), "{config}");
    }
}
