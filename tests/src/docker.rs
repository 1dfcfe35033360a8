//! Real containers for tests: an image built locally from busybox-static and the static
//! workload (`docker import`; no registry is needed), and containers removed when dropped.
use std::{process::Command, sync::OnceLock};

use crate::workload;

/// The test image, built once per test binary.
pub fn test_image() -> &'static str {
    static IMAGE: OnceLock<&'static str> = OnceLock::new();
    IMAGE.get_or_init(|| {
        const IMAGE: &str = "tracerd-test:latest";
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
                "tar -C {} -c . | docker import - {IMAGE} > /dev/null",
                root.display()
            ))
            .status()
            .expect("running docker import");
        assert!(status.success(), "docker import of the test image failed");
        let _ = std::fs::remove_dir_all(&root);
        IMAGE
    })
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
