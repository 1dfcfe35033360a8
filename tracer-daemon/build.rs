//! Builds the kernel programs (`tracer-ebpf`) with the nightly toolchain and leaves the
//! object in OUT_DIR, where `ebpf.rs` embeds it.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let ebpf_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("tracer-daemon has no parent directory"))?
        .join("tracer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf_dir.display()))?;
    // tracer-common is shared by both sides: a change there must rebuild the programs too.
    println!("cargo:rerun-if-changed=../tracer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` first: it installs the nightly rust-src and bpf-linker they need)")
}
