//! Sessions: what users create, start, stop and delete through the API.
pub mod event_json;
pub mod eventlog;
pub mod manager;
pub mod model;
pub mod spec;
