//! tracerd: a per-node syscall tracing daemon for containers.
//!
//! The binary (`main.rs`) only parses its configuration and waits for a signal; everything
//! else lives here so the end-to-end tests and xtask can reach it.
//!
//! A record's path: [`backend`] (kernel → ring or tracefs → [`record::Event`]) → a
//! session's run ([`session`]) → [`sink`] (event log, span export). A session's life:
//! [`http`] → [`session::SessionManager`] → the session's actor → its run. [`containers`]
//! resolves container targets; [`record`] holds the types all of them share.

// Functions stay short enough to read at once (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod backend;
pub mod cgroup;
pub mod cluster;
pub mod config;
pub mod containers;
pub mod daemon;
pub mod data_dir;
pub mod host_view;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod pins;
pub mod record;
pub mod session;
pub mod sink;
pub mod space;
pub mod sync;
pub mod tally;
