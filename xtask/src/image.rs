//! `cargo xtask image`: the tracerd container image, built on this machine without a
//! registry. The binaries are the workspace's own builds (the eBPF programs need a nightly
//! toolchain and bpf-linker built from source; a multi-stage Dockerfile would have to pull a
//! Rust image, which no registry here serves, and would build them again); the image holds
//! them and the few shared libraries they load, on `FROM scratch`
//! (`deploy/docker/Dockerfile`): no shell, no package manager.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, workspace_root};

/// The image's name.
pub const NAME: &str = "tracerd";

/// Builds the binaries (`release`, else the debug build the tests use) and the image, tagged
/// `tracerd:<tag>`; a release build is also `tracerd:<version>` and `tracerd:latest`.
pub fn build(release: bool, tag: &str) -> Result<()> {
    let tracerd = crate::build_tracerd(release)?;
    let mut args = vec!["build", "--package", "tracerctl"];
    if release {
        args.push("--release");
    }
    cmd::cargo(&args)?;
    let tracerctl = tracerd.with_file_name("tracerctl");
    let context = workspace_root().join("target").join("image");
    let rootfs = context.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(rootfs.join("usr/local/bin"))?;
    for binary in [&tracerd, &tracerctl] {
        let name = binary.file_name().context("a binary's name")?;
        let into = rootfs.join("usr/local/bin").join(name);
        // Symbols and debug information are not needed to run: they would triple the size.
        cmd::status(Command::new("strip").arg("-o").arg(&into).arg(binary))?;
    }
    for library in shared_libraries(&[&tracerd, &tracerctl])? {
        copy_into(&rootfs, &library)?;
    }
    // Host name lookups (an OTLP collector by name) and the system's CA roots (https).
    std::fs::create_dir_all(rootfs.join("etc/ssl/certs"))?;
    std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    let roots = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if roots.exists() {
        std::fs::copy(roots, rootfs.join("etc/ssl/certs/ca-certificates.crt"))?;
    }
    for dir in ["tmp", "var/lib/tracerd"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;

    let image = format!("{NAME}:{tag}");
    cmd::status(
        docker()
            .args(["build", "--quiet", "-t", &image, "-f"])
            .arg(workspace_root().join("deploy/docker/Dockerfile"))
            .arg(&context)
            // The legacy builder: it builds offline, and FROM scratch needs nothing else.
            .env("DOCKER_BUILDKIT", "0"),
    )?;
    if release {
        for alias in [env!("CARGO_PKG_VERSION"), "latest"] {
            cmd::status(docker().args(["tag", &image, &format!("{NAME}:{alias}")]))?;
        }
    }
    let size = cmd::output("docker", &["image", "inspect", "-f", "{{.Size}}", &image])
        .and_then(|size| size.parse::<u64>().ok())
        .unwrap_or(0);
    println!("image {image}: {:.1} MB", size as f64 / 1e6);
    Ok(())
}

/// Debian's docker client (it builds with the engine's own builder offline); the one first
/// on PATH here has no builder plugin.
fn docker() -> Command {
    let debian = Path::new("/usr/bin/docker");
    Command::new(if debian.exists() {
        debian
    } else {
        Path::new("docker")
    })
}

/// The shared libraries the binaries load (from `ldd`), and the name-service modules.
fn shared_libraries(binaries: &[&Path]) -> Result<BTreeSet<PathBuf>> {
    let mut libraries = BTreeSet::new();
    for binary in binaries {
        let output = Command::new("ldd")
            .arg(binary)
            .output()
            .context("running ldd")?;
        if !output.status.success() {
            bail!("ldd {} failed", binary.display());
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux… (0x…)`
            let path = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|path| path.starts_with('/'));
            if let Some(path) = path {
                libraries.insert(PathBuf::from(path));
            }
        }
    }
    let libc_dir = libraries
        .iter()
        .find(|path| path.file_name().is_some_and(|name| name == "libc.so.6"))
        .and_then(|libc| libc.parent().map(Path::to_owned))
        .context("the binaries do not load libc")?;
    // glibc loads these by name for `hosts: files dns` (older ones keep them apart).
    for module in ["libnss_files.so.2", "libnss_dns.so.2", "libresolv.so.2"] {
        let path = libc_dir.join(module);
        if path.exists() {
            libraries.insert(path);
        }
    }
    Ok(libraries)
}

/// Copies `path` (its target, if a link) into `rootfs` at the same path.
fn copy_into(rootfs: &Path, path: &Path) -> Result<()> {
    let into = rootfs.join(path.strip_prefix("/").unwrap_or(path));
    std::fs::create_dir_all(into.parent().context("a library's directory")?)?;
    std::fs::copy(path, &into).with_context(|| format!("copying {}", path.display()))?;
    Ok(())
}
