//! tracerd: a per-node syscall tracing daemon for containers.
//!
//! The binary (`main.rs`) only parses its configuration and waits for a signal; everything
//! else lives here so the end-to-end tests and xtask can reach it.
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod data_dir;
pub mod docker;
pub mod ebpf;
pub mod engine;
pub mod export;
pub mod ftrace;
pub mod http;
pub mod metrics;
pub mod session;
pub mod store;
pub mod tally;

/// Locks a mutex, recovering from poisoning: the values behind tracerd's mutexes stay
/// consistent between statements, so a panicking holder does not justify taking the
/// daemon down with it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
