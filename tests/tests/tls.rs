//! The API over TLS with client certificates (mutual TLS), with `tracerctl` and `curl`, and
//! certificates made for the test with `openssl`.
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tracer_tests::{
    daemon::{binary, tracerctl},
    require_root,
};

struct TlsDaemon {
    child: std::process::Child,
    dir: PathBuf,
    url: String,
}

impl Drop for TlsDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> TlsDaemon {
    let dir = std::env::temp_dir().join(format!("tracerd-test-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    tracer_tests::certificates(&dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(dir.join("server.pem"))
        .arg("--tls-key")
        .arg(dir.join("server.key"))
        .arg("--tls-client-ca")
        .arg(dir.join("ca.pem"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tracerd.log")).unwrap())
        .spawn()
        .unwrap();
    TlsDaemon {
        child,
        url: format!("https://127.0.0.1:{port}"),
        dir,
    }
}

impl TlsDaemon {
    /// tracerctl against it, with the CA and, if `with_cert`, the client certificate.
    fn tracerctl(&self, with_cert: bool, args: &[&str]) -> (Option<i32>, String, String) {
        let mut command = Command::new(tracerctl());
        command
            .args(["--server", &self.url, "--cacert"])
            .arg(self.dir.join("ca.pem"));
        if with_cert {
            command
                .arg("--cert")
                .arg(self.dir.join("client.pem"))
                .arg("--key")
                .arg(self.dir.join("client.key"));
        }
        let output = command.args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

#[test]
fn the_api_over_mutual_tls_serves_only_clients_with_a_certificate() {
    require_root();
    let daemon = start();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let answer = daemon.tracerctl(true, &["status"]);
        if answer.0 == Some(0) {
            break answer.1;
        }
        let log = std::fs::read_to_string(daemon.dir.join("tracerd.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "no answer over TLS: {answer:?}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.contains("ebpf: available"), "{status}");
    let (code, listed, _) = daemon.tracerctl(true, &["-o", "json", "sessions", "ls"]);
    assert_eq!(code, Some(0));
    assert!(listed.contains("\"sessions\""), "{listed}");
    // No client certificate: the handshake is refused, and tracerctl says so in a line.
    let (code, _, error) = daemon.tracerctl(false, &["status"]);
    assert_eq!(code, Some(1));
    assert!(
        error.starts_with("tracerctl: cannot reach tracerd"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
    // Plain HTTP is not served.
    let plain = ureq::get(&daemon.url.replace("https://", "http://")).call();
    assert!(plain.is_err(), "plain HTTP answered");
    // The WebSocket stream over TLS is the same server (upgrades): curl with the client
    // certificate gets the health check.
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(daemon.dir.join("ca.pem"))
        .arg("--cert")
        .arg(daemon.dir.join("client.pem"))
        .arg("--key")
        .arg(daemon.dir.join("client.key"))
        .arg(format!("{}/healthz", daemon.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200");
}
