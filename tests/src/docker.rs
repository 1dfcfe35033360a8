//! Real containers for tests: an image built locally from busybox-static and the static
//! workload (`docker import`; no registry is needed), and containers removed when dropped.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::workload;

/// The test image, built once per test binary.
pub fn test_image() -> &'static str {
    static IMAGE: OnceLock<&'static str> = OnceLock::new();
    IMAGE.get_or_init(|| {
        import_test_image(&[]);
        TEST_IMAGE
    })
}

const TEST_IMAGE: &str = "tracerd-test:latest";

/// Imports the test image (busybox and the workload) into the engine `docker_args` reach.
fn import_test_image(docker_args: &[&str]) {
    let root = std::env::temp_dir().join(format!("tracerd-test-image-{}", std::process::id()));
    let bin = root.join("bin");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&bin).expect("image directory");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("busybox-static (cargo xtask setup installs it)");
    std::fs::copy(busybox, bin.join("busybox")).expect("copying busybox");
    for tool in ["sh", "sleep", "cat", "ls", "echo", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(tool)).expect("busybox link");
    }
    std::fs::copy(workload::path(), bin.join("syscall_loop")).expect("copying the workload");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker {} import - {TEST_IMAGE} > /dev/null",
            root.display(),
            docker_args.join(" ")
        ))
        .status()
        .expect("running docker import");
    assert!(status.success(), "docker import of the test image failed");
    let _ = std::fs::remove_dir_all(&root);
}

/// A second Docker engine of the test's own (so the main one is never restarted), with its
/// own data, socket and cgroup parent; stopped and cleaned up when dropped.
pub struct SecondEngine {
    pub dir: PathBuf,
    /// Its cgroup parent's name (`/sys/fs/cgroup/<hierarchy>/<it>/<container id>`).
    pub cgroup_parent: String,
    /// A bridge of its own: dockerd with `--bridge=none` deletes the host's `docker0`, which
    /// the main engine's containers need.
    bridge: String,
    dockerd: Option<Child>,
}

impl SecondEngine {
    pub fn start() -> Self {
        Self::numbered(0)
    }

    /// Engine `number` (0 to 9) of this test process: several can run at once, each with
    /// its own name, bridge and subnet.
    pub fn numbered(number: u8) -> Self {
        assert!(number < 10, "at most ten engines per test");
        let pid = std::process::id();
        let name = format!("tracerd-test-engine-{pid}-{number}");
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the engine's directory");
        let bridge = format!("trd{}x{number}", pid % 1_000_000);
        let address = format!("172.31.{}.1/24", 250 - number);
        for args in [
            vec!["link", "add", "name", &bridge, "type", "bridge"],
            vec!["addr", "add", &address, "dev", &bridge],
        ] {
            let output = Command::new("ip").args(&args).output().expect("running ip");
            assert!(output.status.success(), "ip {args:?}: {output:?}");
        }
        let mut engine = Self {
            dir,
            cgroup_parent: name,
            bridge,
            dockerd: None,
        };
        engine.launch();
        import_test_image(&["-H", &engine.host()]);
        engine
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Starts dockerd and waits until it answers.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("the engine's log");
        let dir = |sub: &str| self.dir.join(sub).display().to_string();
        let child = Command::new("dockerd")
            .args(["--data-root", &dir("root"), "--exec-root", &dir("exec")])
            .args(["-H", &self.host(), "--pidfile", &dir("pid")])
            .arg(format!("--bridge={}", self.bridge))
            .args(["--iptables=false", "--ip-forward=false", "--ip-masq=false"])
            .args(["--cgroup-parent", &format!("/{}", self.cgroup_parent)])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting a second dockerd");
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the second dockerd did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops dockerd (SIGTERM: it stops its containers, and `--restart always` ones come back
    /// at its next start) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            // SAFETY: kill on the pid of a child we have not reaped.
            unsafe { libc::kill(dockerd.id() as i32, libc::SIGTERM) };
            let _ = dockerd.wait();
        }
    }

    /// Stops dockerd and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// `docker -H <this engine> <args>`.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .args(["-H", &self.host()])
            .args(args)
            .output()
            .expect("running docker")
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        let all = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&all.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        self.stop();
        // dockerd bind-mounts its data root on itself.
        for mount in [self.dir.join("exec/netns/default"), self.dir.join("root")] {
            let _ = Command::new("umount").arg(&mount).output();
        }
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let _ = std::fs::remove_dir(hierarchy.path().join(&self.cgroup_parent));
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running container of the test image, removed (with `docker rm -f`) when dropped.
pub struct TestContainer {
    pub id: String,
    pub name: String,
}

impl TestContainer {
    /// Runs `sleep` in a new container named `tracerd-test-<purpose>-<pid>` with `labels`.
    pub fn run(purpose: &str, labels: &[(&str, &str)]) -> Self {
        Self::named(
            &format!("tracerd-test-{purpose}-{}", std::process::id()),
            labels,
        )
    }

    /// Runs `sleep` in a new container named `name` (replacing any of that name).
    pub fn named(name: &str, labels: &[(&str, &str)]) -> Self {
        let name = name.to_owned();
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let mut command = Command::new("docker");
        command.args(["run", "-d", "--name", &name]);
        for (key, value) in labels {
            command.args(["--label", &format!("{key}={value}")]);
        }
        let output = command
            .args([test_image(), "sleep", "600"])
            .output()
            .expect("running docker run");
        assert!(
            output.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Self { id, name }
    }

    /// Runs the workload inside the container with `docker exec` (so it is not a descendant
    /// of the container's init process: only its cgroup says where it belongs).
    pub fn exec_workload(&self, args: &[&str]) {
        let status = Command::new("docker")
            .args(["exec", &self.id, "/bin/syscall_loop"])
            .args(args)
            .status()
            .expect("running docker exec");
        assert!(status.success(), "docker exec of the workload failed");
    }
}

impl TestContainer {
    /// Runs `docker <verb> <this container>` (restart, kill, …) and checks it succeeded.
    pub fn docker(&self, verb: &str) {
        let output = Command::new("docker")
            .args([verb, &self.id])
            .output()
            .expect("running docker");
        assert!(
            output.status.success(),
            "docker {verb} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.id]).output();
    }
}
