//! A full disk under the real daemon: its data directory on a small tmpfs, filled by a file
//! while a session records. The session says it is not recording and why, `/healthz` is
//! degraded, new sessions are refused with 507, the daemon restarts on the full disk,
//! recording resumes when space returns, stop and delete work and free space, and the
//! database stays intact.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tracer_tests::{cgroup::TestCgroup, daemon::Daemon, require_root, workload};

/// A tmpfs of `megabytes`, unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Self {
        let mount = std::env::temp_dir().join(format!("tracerd-test-disk-{}", std::process::id()));
        std::fs::create_dir_all(&mount).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&mount)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs");
        Self { mount }
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Writes to a file until the disk is full (whatever was freed since, too).
    fn fill(&self) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .unwrap();
        let block = vec![0u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        // The last partial block too.
        while file.write_all(&block[..4096]).is_ok() {}
    }

    fn make_room(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

fn session(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/v1/sessions/{id}"))
}

fn run_getppid(cgroup: &TestCgroup, calls: u64) {
    let (_, status) = workload::run_in(cgroup, &["getppid", &calls.to_string()]);
    assert!(status.success());
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create_status(daemon: &Daemon, cgroup: &TestCgroup) -> (u16, Value) {
    let body = json!({"target": {"cgroup": cgroup.path()}, "name": "on-a-full-disk"});
    daemon.call("POST", "/v1/sessions", Some(&body), None)
}

fn database_is_intact(data_dir: &Path) {
    let db = rusqlite::Connection::open(data_dir.join("tracerd.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_full_disk_is_visible_and_stop_delete_restart_and_recovery_all_work() {
    require_root();
    let disk = SmallDisk::mount(32);
    let data_dir = disk.mount.join("data");
    let mut daemon = Daemon::start_with_data_dir(&[], data_dir.clone());
    let cgroup = TestCgroup::create("disk-full");
    let id = daemon
        .create_and_start(&json!({"target": {"cgroup": cgroup.path()}, "syscalls": ["getppid"]}));
    run_getppid(&cgroup, 1000);
    wait_for("the first events", || {
        session(&daemon, &id)["counters"]["delivered"] == 1000
    });

    disk.fill();
    run_getppid(&cgroup, 50_000);
    // A failed write gives back the pages it took, and a retry may fit in them: the disk is
    // kept full.
    wait_for("the session to say it is not recording", || {
        disk.fill();
        session(&daemon, &id)["not_recording"]["reason"] == "disk_full"
    });
    // Every call is accounted for: recorded before the disk filled, or dropped.
    wait_for("every call delivered or dropped", || {
        let counters = &session(&daemon, &id)["counters"];
        counters["matched"] == 51_000
            && counters["delivered"].as_u64().unwrap() + counters["dropped"].as_u64().unwrap()
                == 51_000
    });
    disk.fill();
    let full = session(&daemon, &id);
    assert_eq!(full["status"], "running", "{full}");
    assert!(full["counters"]["dropped"].as_u64().unwrap() > 0, "{full}");
    // Health reads what sessions last reported (every 250 ms).
    wait_for("/healthz to say degraded", || {
        let health = daemon.get("/healthz");
        health["status"] == "degraded" && health["problems"][0]["reason"] == "disk_full"
    });
    let (status, refused) = create_status(&daemon, &cgroup);
    assert_eq!(
        (status, &refused["error"]),
        (507, &json!("disk_full")),
        "{refused}"
    );

    // A restart on the disk with not a byte free: it comes up, and the session runs again.
    disk.fill();
    daemon.restart_after(libc::SIGTERM);
    assert_eq!(session(&daemon, &id)["status"], "running");
    assert_eq!(create_status(&daemon, &cgroup).0, 507);

    // Space returns: recording resumes by itself, every call of a new burst is recorded.
    disk.make_room();
    wait_for("/healthz to be ok again", || {
        daemon.get("/healthz")["status"] == "ok"
    });
    let before = session(&daemon, &id)["counters"].clone();
    run_getppid(&cgroup, 2000);
    wait_for("the new burst", || {
        let now = session(&daemon, &id);
        now["counters"]["matched"].as_u64() == before["matched"].as_u64().map(|m| m + 2000)
            && now["counters"]["delivered"].as_u64()
                == before["delivered"].as_u64().map(|d| d + 2000)
    });
    assert!(session(&daemon, &id).get("not_recording").is_none());

    // Full again: stop and delete still work, and delete frees the session's space.
    disk.fill();
    let (status, stopped) = daemon.call("POST", &format!("/v1/sessions/{id}/stop"), None, None);
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    let (status, _) = daemon.call("DELETE", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!(status, 204);
    assert!(!data_dir.join("sessions").join(&id).exists());
    assert_eq!(daemon.get("/v1/sessions")["sessions"], json!([]));
    database_is_intact(&data_dir);
}
