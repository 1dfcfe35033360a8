//! `cargo xtask setup`: makes sure, idempotently, that this machine can build the eBPF
//! programs and run every test. One line of output per step; a second run only checks.
//!
//! What it ensures (see ../shared/TOOLCHAIN.md for why each step is done this way):
//! the nightly `rust-src`, `bpf-linker` linked against nightly's own libLLVM, tracefs and
//! bpffs mounted, the Debian packages the tests use, a running Docker engine, and the `rotel`
//! OpenTelemetry collector from PyPI.
use std::{
    fs,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, workspace_root};

/// bpf-linker built against the nightly toolchain's LLVM 22 (its default wants LLVM 23).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The OTLP collector the tests run, from PyPI (a pre-release, so pinned exactly).
const ROTEL_VERSION: &str = "0.0.1a15";
/// Validates the Kubernetes manifests offline against the API's schemas.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// Pinned: 4.53 wants a newer certifi than the package mirror here has; 4.40 installs.
const SELENIUM_VERSION: &str = "4.40.0";
/// Fuzzes the API against its OpenAPI document; in a virtualenv of its own, so its many
/// dependencies do not meet rotel's and kubernetes-validate's.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Debian packages: the Docker engine, and the test and benchmark tools.
const DEBIAN_PACKAGES: [&str; 14] = [
    "docker.io",
    "busybox-static",
    "strace",
    "bpftrace",
    "bpftool",
    "gcc",
    // tracerctl is tested through a real terminal.
    "tmux",
    // A client for the API's unix socket in the tests.
    "curl",
    // The shipped scrape config, rules and dashboard queries are tested against it.
    "prometheus",
    // The web page is tested in a real browser, driven through WebDriver.
    "chromium",
    "chromium-driver",
    // Cluster mode is tested against a real 3-member etcd cluster.
    "etcd-server",
    "etcd-client",
    // etcd-client's build script compiles etcd's protobuf definitions with protoc.
    "protobuf-compiler",
];
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

pub fn run() -> Result<()> {
    let started = Instant::now();
    require_root()?;
    step("nightly rust-src", ensure_rust_src)?;
    step("bpf-linker", ensure_bpf_linker)?;
    step("tracefs", || {
        ensure_mount("tracefs", "nodev", "/sys/kernel/tracing")
    })?;
    step("bpffs", || ensure_mount("bpf", "bpf", "/sys/fs/bpf"))?;
    step("Debian packages", ensure_debian_packages)?;
    step("Docker engine", ensure_docker)?;
    step("rotel collector", ensure_rotel)?;
    step("kubernetes-validate", ensure_kubernetes_validate)?;
    step("schemathesis", ensure_schemathesis)?;
    step("selenium", ensure_selenium)?;
    println!("setup: ready in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn step(name: &str, ensure: impl FnOnce() -> Result<String>) -> Result<()> {
    let started = Instant::now();
    let outcome = ensure().with_context(|| format!("setup step `{name}` failed"))?;
    println!(
        "setup: {name:<18} {outcome} ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn require_root() -> Result<()> {
    // /proc/self belongs to the effective uid of the process looking at it.
    let uid = fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid != 0 {
        bail!(
            "setup needs root (running as uid {uid}): it mounts tracefs and bpffs, installs \
             Debian packages (apt-get), starts dockerd and installs bpf-linker and rotel; the \
             tests load eBPF programs and create cgroups. Run it as root, e.g. \
             `sudo -E env PATH=$PATH cargo xtask setup`."
        );
    }
    Ok(())
}

fn ensure_rust_src() -> Result<String> {
    let sysroot = cmd::output("rustc", &["+nightly", "--print", "sysroot"]).context(
        "no nightly Rust toolchain (`rustc +nightly` failed); install one with \
         `rustup toolchain install nightly`",
    )?;
    let core_src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if core_src.exists() {
        return Ok("present".into());
    }
    cmd::status(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    Ok("installed".into())
}

fn ensure_bpf_linker() -> Result<String> {
    if let Some(version) = cmd::output("bpf-linker", &["--version"]) {
        return Ok(format!("present ({version})"));
    }
    let sysroot = cmd::output("rustc", &["+nightly", "--print", "sysroot"])
        .context("no nightly Rust toolchain")?;
    let nightly_lib = Path::new(&sysroot).join("lib");
    let llvm = fs::read_dir(&nightly_lib)?
        .filter_map(std::result::Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("libLLVM.so.")
                || (name.starts_with("libLLVM-") && name.ends_with(".so"))
        })
        .with_context(|| format!("no libLLVM shared library in {}", nightly_lib.display()))?;
    // bpf-linker links `-lLLVM`: point the linker at nightly's library under that name, and
    // record nightly's lib directory as the rpath so it is found at run time.
    let link_dir = workspace_root().join("target/xtask/llvm-link");
    fs::create_dir_all(&link_dir)?;
    let link = link_dir.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    let rustflags = format!(
        "-L {} -C link-arg=-Wl,-rpath,{}",
        link_dir.display(),
        nightly_lib.display()
    );
    let log = log_file("bpf-linker-install.log")?;
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("RUSTFLAGS", rustflags);
    run_logged(&mut install, &log)?;
    let version = cmd::output("bpf-linker", &["--version"])
        .context("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)")?;
    Ok(format!("built ({version})"))
}

fn ensure_mount(fstype: &str, source: &str, target: &str) -> Result<String> {
    if is_mounted(fstype, target)? {
        return Ok(format!("mounted at {target}"));
    }
    fs::create_dir_all(target)?;
    cmd::status(Command::new("mount").args(["-t", fstype, source, target]))?;
    Ok(format!("mounted now at {target}"))
}

fn is_mounted(fstype: &str, target: &str) -> Result<bool> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo.lines().any(|line| {
        let Some((before, after)) = line.split_once(" - ") else {
            return false;
        };
        before.split_whitespace().nth(4) == Some(target)
            && after.split_whitespace().next() == Some(fstype)
    }))
}

fn ensure_debian_packages() -> Result<String> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .into_iter()
        .filter(|package| !debian_package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(format!("present ({})", DEBIAN_PACKAGES.join(", ")));
    }
    let log = log_file("apt.log")?;
    run_logged(Command::new("apt-get").arg("update"), &log)?;
    run_logged(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &log,
    )?;
    Ok(format!("installed {}", missing.join(", ")))
}

fn debian_package_installed(package: &str) -> bool {
    cmd::output("dpkg-query", &["-W", "-f=${db:Status-Abbrev}", package])
        .is_some_and(|status| status.starts_with("ii"))
}

fn ensure_docker() -> Result<String> {
    if docker_answers() {
        return Ok(format!("running ({DOCKER_SOCKET})"));
    }
    let log = log_file("dockerd.log")?;
    let log_handle = fs::File::options().create(true).append(true).open(&log)?;
    // Its own process group: Ctrl-C in this terminal must not stop the engine.
    Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log_handle.try_clone()?)
        .stderr(log_handle)
        .process_group(0)
        .spawn()
        .context("starting dockerd")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if docker_answers() {
            return Ok(format!("started (log: {})", log.display()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "dockerd did not answer on {DOCKER_SOCKET} within 60s; see {}",
        log.display()
    )
}

/// Asks the engine's `/_ping` over its socket; true on `OK`.
fn docker_answers() -> bool {
    use std::{
        io::{Read as _, Write as _},
        os::unix::net::UnixStream,
    };
    let Ok(mut stream) = UnixStream::connect(DOCKER_SOCKET) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

fn ensure_rotel() -> Result<String> {
    if let Ok(agent) = rotel_agent() {
        return Ok(format!("present ({})", agent.display()));
    }
    pip_install(&format!("rotel=={ROTEL_VERSION}"))?;
    let agent = rotel_agent()?;
    Ok(format!("installed ({})", agent.display()))
}

/// Selenium drives the system Chromium through the system chromedriver (never downloading a
/// driver: the browser test sets `SE_OFFLINE`).
fn ensure_selenium() -> Result<String> {
    let version = || {
        cmd::output(
            "python3",
            &["-c", "import selenium; print(selenium.__version__)"],
        )
    };
    if version().as_deref() == Some(SELENIUM_VERSION) {
        return Ok(format!("present ({SELENIUM_VERSION})"));
    }
    pip_install(&format!("selenium=={SELENIUM_VERSION}"))?;
    match version() {
        Some(version) => Ok(format!("installed {version}")),
        None => bail!("selenium does not import after pip installed it"),
    }
}

fn ensure_kubernetes_validate() -> Result<String> {
    let version = || cmd::output("python3", &["-m", "kubernetes_validate", "--version"]);
    if version().as_deref() == Some(KUBERNETES_VALIDATE_VERSION) {
        return Ok("present".into());
    }
    pip_install(&format!(
        "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
    ))?;
    match version() {
        Some(version) => Ok(format!("installed {version}")),
        None => bail!("kubernetes-validate does not run after pip installed it"),
    }
}

/// The Python of schemathesis' virtualenv (`python -m schemathesis.cli`).
pub fn schemathesis_python() -> PathBuf {
    PathBuf::from(format!(
        "/var/cache/tracerd-dev/schemathesis-{SCHEMATHESIS_VERSION}/bin/python"
    ))
}

fn ensure_schemathesis() -> Result<String> {
    let python = schemathesis_python();
    let version = || {
        cmd::output(
            python.to_str()?,
            &["-c", "import schemathesis; print(schemathesis.__version__)"],
        )
    };
    if version().as_deref() == Some(SCHEMATHESIS_VERSION) {
        return Ok(format!("present ({})", python.display()));
    }
    let venv = python
        .parent()
        .and_then(Path::parent)
        .context("the virtualenv's directory")?;
    let log = log_file("pip.log")?;
    run_logged(Command::new("python3").args(["-m", "venv"]).arg(venv), &log)?;
    run_logged(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")),
        &log,
    )?;
    match version() {
        Some(version) => Ok(format!("installed {version} ({})", python.display())),
        None => bail!("schemathesis does not run after pip installed it"),
    }
}

fn pip_install(requirement: &str) -> Result<()> {
    let log = log_file("pip.log")?;
    run_logged(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
            ])
            .arg(requirement),
        &log,
    )
}

/// The `rotel-agent` binary shipped inside the `rotel` Python package.
pub fn rotel_agent() -> Result<PathBuf> {
    let dir = cmd::output(
        "python3",
        &[
            "-c",
            "import os, rotel; print(os.path.dirname(rotel.__file__))",
        ],
    )
    .context("the rotel Python package is not installed")?;
    let agent = Path::new(&dir).join("rotel-agent");
    if !agent.exists() {
        bail!(
            "the rotel package has no rotel-agent at {}",
            agent.display()
        );
    }
    Ok(agent)
}

fn log_file(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target/xtask");
    fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

/// Runs a long, chatty command with its output appended to `log`; on failure, shows the end
/// of the log.
fn run_logged(command: &mut Command, log: &Path) -> Result<()> {
    let handle = fs::File::options().create(true).append(true).open(log)?;
    let status = command
        .stdin(Stdio::null())
        .stdout(handle.try_clone()?)
        .stderr(handle)
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{command:?} failed ({status}); last lines of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}
