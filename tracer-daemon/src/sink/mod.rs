//! Where a run's events go: its event log on disk ([`eventlog`]: records as the kernel wrote
//! them, shown as JSON lines ([`event_json`]) when read, [`render`], picked by
//! [`event_filter`]), span export
//! ([`export`]), and the writer that feeds both ([`writer`]), naming each event's container
//! ([`container_of`]); and the followers of a running session ([`follow`]), fed by the
//! writer once each batch is in the log.
pub mod container_of;
pub mod event_filter;
pub mod event_json;
pub mod eventlog;
pub mod export;
pub mod follow;
pub mod render;
pub mod writer;
