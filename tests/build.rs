//! Compiles the static syscall workload the tests run inside cgroups and containers.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workloads/syscall_loop.c");
    let output = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("syscall_loop");
    println!("cargo:rerun-if-changed={}", source.display());
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&output)
        .arg(&source)
        .status()
        .expect("running gcc (cargo xtask setup installs it)");
    assert!(
        status.success(),
        "gcc -static failed for {}",
        source.display()
    );
    println!("cargo:rustc-env=SYSCALL_LOOP={}", output.display());
}
