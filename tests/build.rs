//! Compiles the static workloads the tests run inside cgroups and containers.
use std::{env, path::PathBuf, process::Command};

/// (source in workloads/, binary name, environment variable naming its path).
const WORKLOADS: &[(&str, &str, &str)] = &[
    ("syscall_loop.c", "syscall_loop", "SYSCALL_LOOP"),
    ("decoded_calls.c", "decoded_calls", "DECODED_CALLS"),
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for (source, binary, variable) in WORKLOADS {
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("workloads")
            .join(source);
        let output = out_dir.join(binary);
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
        println!("cargo:rustc-env={variable}={}", output.display());
    }
}
