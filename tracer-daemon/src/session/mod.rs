//! Sessions: what users create, start, stop and delete through the API.
//!
//! [`SessionManager`] ([`lifecycle`]) creates and finds sessions; each session's lifecycle
//! is owned by its actor ([`actor`]), which owns its [`run`]: the resolved target
//! ([`resolve`], [`launch`]), the engine session, the event-log writer and span export, and
//! the future that says when the run ends by itself ([`watch`]). [`follow`] tells actors
//! about containers that start and stop. Sessions persist in [`store`].
mod access;
mod actor;
mod context;
mod duplicates;
mod error;
mod follow;
mod launch;
mod lifecycle;
pub mod model;
mod resolve;
mod run;
mod settle;
pub mod spec;
pub mod store;
mod watch;

#[cfg(test)]
mod tests;

pub use self::{
    access::Principal,
    context::ManagerOptions,
    error::{Forbidden, SessionError, TargetError},
    follow::follow_containers,
    launch::remove_parent_cgroups as remove_launch_parent_cgroups,
    lifecycle::{ContainerView, NewSession, SessionManager},
};
