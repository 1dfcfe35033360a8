//! Developer and CI tasks: `cargo xtask setup | build-ebpf | run | test | bench | fuzz |
//! modules`.
//!
//! Every command that needs the machine prepared runs `setup` first, which is idempotent and
//! quick when there is nothing to do, so `cargo xtask test` works on a fresh machine.
mod bench;
mod cmd;
mod image;
mod modules;
mod setup;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and benchmark tracerd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install and start everything tracerd and its tests need (idempotent).
    Setup,
    /// Build the eBPF programs (through tracer-daemon's build script) and print the object's path.
    BuildEbpf,
    /// Build tracerd (release) and run it in the foreground; extra arguments go to tracerd.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a benchmark and write its table to docs/benchmarks.md.
    Bench {
        #[command(subcommand)]
        benchmark: bench::Benchmark,
    },
    /// Build and run every test, privileged ones included; extra arguments go to the test
    /// binaries (e.g. a test name filter).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the tracefs page and format parsers (cargo fuzz, nightly) for a while each,
    /// starting from fuzz/seeds/; inputs that grow coverage land in fuzz/corpus/ (minimised),
    /// which the tests replay.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Check tracer-daemon's module graph for cycles (at every depth) and print its size.
    Modules,
    /// Build the container image `tracerd:<version>` (and `tracerd:latest`) on this machine.
    Image,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => {
            setup::run()?;
            build_ebpf()
        }
        Command::Run { args } => {
            setup::run()?;
            run_daemon(&args)
        }
        Command::Test { args } => {
            setup::run()?;
            test(&args)
        }
        Command::Bench { benchmark } => {
            setup::run()?;
            bench::run(benchmark)
        }
        Command::Fuzz { seconds } => fuzz(seconds),
        Command::Modules => modules::check(&workspace_root().join("tracer-daemon").join("src")),
        Command::Image => {
            setup::run()?;
            image::build(true, env!("CARGO_PKG_VERSION"))
        }
    }
}

/// Runs each fuzz target of `fuzz/` for `seconds`, installing cargo-fuzz if it is missing.
fn fuzz(seconds: u32) -> Result<()> {
    if cmd::output("cargo", &["fuzz", "--version"]).is_none() {
        cmd::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    let fuzz = |args: &[&str]| {
        cmd::status(
            std::process::Command::new("cargo")
                .current_dir(workspace_root().join("fuzz"))
                .args(["+nightly", "fuzz"])
                .args(args),
        )
    };
    for target in ["page", "format"] {
        // New inputs go to the first directory; the captured seeds start it off.
        let (corpus, seeds) = (format!("corpus/{target}"), format!("seeds/{target}"));
        let time = format!("-max_total_time={seconds}");
        fuzz(&["run", target, &corpus, &seeds, "--", &time])?;
        // Keep the corpus small: only inputs that add coverage.
        fuzz(&["cmin", target, &corpus])?;
    }
    Ok(())
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Builds the eBPF object exactly as every daemon build does (aya-build, from build.rs).
fn build_ebpf() -> Result<()> {
    cmd::cargo(&["build", "--package", "tracer-daemon", "--lib"])?;
    let object = find_ebpf_object("debug")?;
    println!("eBPF object: {}", object.display());
    Ok(())
}

fn find_ebpf_object(profile: &str) -> Result<PathBuf> {
    let build_dir = workspace_root().join("target").join(profile).join("build");
    let newest = std::fs::read_dir(&build_dir)?
        .filter_map(std::result::Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("tracer-daemon-")
        })
        .map(|entry| entry.path().join("out").join("tracer"))
        .filter(|object| object.exists())
        .max_by_key(|object| object.metadata().and_then(|m| m.modified()).ok());
    newest.ok_or_else(|| anyhow::anyhow!("no eBPF object under {}", build_dir.display()))
}

/// Builds the `tracerd` binary (release or debug) and returns its path.
pub fn build_tracerd(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "--package", "tracer-daemon", "--bin", "tracerd"];
    if release {
        args.push("--release");
    }
    cmd::cargo(&args)?;
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("tracerd"))
}

fn run_daemon(args: &[String]) -> Result<()> {
    let tracerd = build_tracerd(true)?;
    // The CLI that talks to it, beside it.
    cmd::cargo(&["build", "--release", "--package", "tracerctl"])?;
    println!(
        "starting {} {} (Ctrl-C stops it)",
        tracerd.display(),
        args.join(" ")
    );
    cmd::exec(&tracerd, args)
}

fn test(args: &[String]) -> Result<()> {
    // The end-to-end tests drive the real binaries: build them first, then say where they are.
    let tracerd = build_tracerd(false)?;
    // What is measured against what users run (the pipeline test) runs the release build.
    let tracerd_release = build_tracerd(true)?;
    cmd::cargo(&["build", "--package", "tracerctl"])?;
    let tracerctl = workspace_root()
        .join("target")
        .join("debug")
        .join("tracerctl");
    // The image tests run the image made from these same (debug) binaries.
    image::build(false, "test")?;
    // Every member but tracer-ebpf, which only builds for the BPF target; the end-to-end
    // suite (`tests`) is not a default member, so it is named here.
    // Every test binary runs even after one fails, so one run shows every failure.
    let mut test_args = vec![
        "test",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ];
    test_args.extend(args.iter().map(String::as_str));
    cmd::cargo_with_env(
        &test_args,
        &[
            ("TRACERD_BIN", tracerd.as_os_str()),
            ("TRACERD_RELEASE_BIN", tracerd_release.as_os_str()),
            ("TRACERCTL_BIN", tracerctl.as_os_str()),
            ("TRACERD_IMAGE", std::ffi::OsStr::new("tracerd:test")),
            ("ROTEL_AGENT", setup::rotel_agent()?.as_os_str()),
            (
                "SCHEMATHESIS_PYTHON",
                setup::schemathesis_python().as_os_str(),
            ),
        ],
    )?;
    unit_tests_without_root()
}

/// The daemon's unit tests need no privilege: run them again as `nobody` (setup made sure
/// this is root) to keep it so.
fn unit_tests_without_root() -> Result<()> {
    let listing = cmd::cargo_output(&[
        "test",
        "--package",
        "tracer-daemon",
        "--lib",
        "--no-run",
        "--message-format=json",
    ])?;
    let binary = listing
        .lines()
        .filter(|line| line.contains("\"test\":true"))
        .find_map(|line| {
            let (_, rest) = line.split_once("\"executable\":\"")?;
            rest.split_once('"').map(|(path, _)| path.to_owned())
        })
        .ok_or_else(|| anyhow::anyhow!("cargo did not name the daemon's unit-test binary"))?;
    // A copy nobody can reach, wherever the checkout lives (/root is not theirs to enter).
    let scratch = std::env::temp_dir().join(format!("tracerd-unit-tests-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let copy = scratch.join("tracer-daemon-unit-tests");
    std::fs::copy(&binary, &copy)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755))?;
    println!(
        "unit tests of tracer-daemon as user nobody: {}",
        copy.display()
    );
    let ran = cmd::status(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&copy)
            .current_dir(std::env::temp_dir())
            .env("HOME", std::env::temp_dir()),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    ran
}
