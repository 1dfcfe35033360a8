//! Running commands: echo what runs, fail with the command line when it fails.
use std::{
    ffi::OsStr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::workspace_root;

/// The cargo that runs xtask, so nested builds use the same toolchain.
fn cargo_command() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

pub fn cargo_with_env(args: &[&str], env: &[(&str, &OsStr)]) -> Result<()> {
    let mut command = cargo_command();
    command.args(args).envs(env.iter().copied());
    status(&mut command)
}

/// Runs cargo and returns its stdout; fails unless it exits 0.
pub fn cargo_output(args: &[&str]) -> Result<String> {
    let mut command = cargo_command();
    command.args(args).stderr(Stdio::inherit());
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command with inherited stdio and fails unless it exits 0.
pub fn status(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command quietly and returns its trimmed stdout if it exited 0.
pub fn output(program: impl AsRef<OsStr>, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Replaces this process with `program`, so signals (Ctrl-C) reach it directly.
pub fn exec(program: &Path, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("executing {}", program.display()))
}
