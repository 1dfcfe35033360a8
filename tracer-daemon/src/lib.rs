//! tracerd: a per-node syscall tracing daemon for containers.
//!
//! The binary (`main.rs`) only parses its configuration and waits for a signal; everything
//! else lives here so the end-to-end tests and xtask can reach it.
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod data_dir;
pub mod ebpf;
pub mod http;
pub mod tally;
