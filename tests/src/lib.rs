//! The harness for tracerd's end-to-end tests: test cgroups, the deterministic workload, the
//! real daemon binary, a real OpenTelemetry collector, and a look at what the kernel has
//! loaded.
//!
//! Every test here is privileged (root: eBPF, cgroups, tracefs, Docker). A test that cannot
//! get what it needs fails with the reason; it never skips.
pub mod bench;
pub mod cgroup;
pub mod cluster;
pub mod collector;
pub mod daemon;
pub mod docker;
pub mod etcd;
pub mod prometheus;
pub mod workload;

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A CA (`ca.pem`), a server certificate for 127.0.0.1 (`server.pem`, `server.key`; also good
/// for client authentication, as etcd members use theirs to call themselves) and a
/// client certificate (`client.pem`, `client.key`) it signed, made with `openssl` in `dir`.
pub fn certificates(dir: &std::path::Path) {
    let script = r#"
set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 \
  -subj /CN=tracerd-test-ca -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null
done
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' > server.ext
printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > client.ext
for who in server client; do
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem \
    -days 1 -extfile $who.ext 2>/dev/null
done
"#;
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .expect("openssl");
    assert!(status.success(), "making the test certificates");
}

/// Fails the calling test unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "tracerd's end-to-end tests need root (eBPF, cgroups, tracefs, Docker); run `cargo xtask test` as root"
    );
}

/// Kernel ids of the tracerd programs loaded right now, from the kernel's own list.
pub fn loaded_tracerd_programs() -> Vec<u32> {
    let names = tracer_daemon::backend::ebpf::PROGRAM_NAMES;
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| info.name_as_str().is_some_and(|name| names.contains(&name)))
        .map(|info| info.id())
        .collect()
}

/// Which of the programs `ids` are attached now, as `bpftool link show` lists the kernel's
/// links (raw tracepoint and perf-event links alike name their program).
pub fn attached_programs(ids: &[u32]) -> Vec<u32> {
    let output = std::process::Command::new("bpftool")
        .args(["link", "show", "--json"])
        .output()
        .expect("running bpftool (installed by `cargo xtask setup`)");
    assert!(
        output.status.success(),
        "bpftool link show: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let links: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("bpftool's JSON");
    links
        .iter()
        .filter_map(|link| link["prog_id"].as_u64())
        .map(|id| id as u32)
        .filter(|id| ids.contains(id))
        .collect()
}

/// Waits (up to 2 s) until none of `ids` is loaded, and fails the test otherwise. The kernel
/// frees a program after its last link and file descriptor close, on a workqueue: the
/// process being gone does not mean the id is gone yet.
pub fn assert_programs_unloaded(ids: &[u32]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let loaded = loaded_tracerd_programs();
        let lingering: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| loaded.contains(id))
            .collect();
        if lingering.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tracerd programs {lingering:?} are still loaded 2s after the daemon stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
