//! Where a run's events go: its event log on disk ([`eventlog`], each event as one JSON line,
//! [`event_json`]), span export ([`export`]), and the writer that feeds both ([`writer`]).
pub mod event_json;
pub mod eventlog;
pub mod export;
pub mod writer;
