//! What can go wrong with a session, each with the context an API error needs.
use std::path::PathBuf;

use uuid::Uuid;

use super::{model::Status, spec::InvalidField, store::StoreError};
use crate::{
    backend::{Backend, EngineError},
    cgroup::CgroupError,
    containers::ContainerError,
    sink::export::ExportError,
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session {0}")]
    NotFound(Uuid),
    #[error("the session is {}: it cannot be {action}", current.as_str())]
    InvalidTransition {
        current: Status,
        action: &'static str,
    },
    #[error("session {name} ({id}) already traces the same target with the same filter")]
    Duplicate { id: Uuid, name: String },
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error("target: {0}")]
    Target(#[from] TargetError),
    #[error("no running container matches {selector}")]
    NoMatchingContainer {
        selector: String,
        close: Vec<String>,
    },
    /// The container runtime cannot be reached: try again later.
    #[error(transparent)]
    ContainersUnavailable(ContainerError),
    /// The container runtime refused what the request asked of it.
    #[error("{field}: {message}")]
    ContainerRejected {
        field: &'static str,
        message: String,
    },
    #[error("the {} backend is unavailable: {why}", backend.as_str())]
    BackendUnavailable { backend: Backend, why: String },
    #[error("all kernel session slots are in use: stop a session first")]
    NoCapacity,
    /// The target needs the host's PIDs, which this process does not see.
    #[error("target: {0}")]
    ForeignPids(String),
    /// The data directory's disk is full: nothing new is recorded until space returns.
    #[error(
        "the data directory's disk is full: new sessions and starts are refused until space \
         returns (running sessions, stops and deletes go on)"
    )]
    DiskFull,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the engine: {0}")]
    Engine(EngineError),
    #[error("the event log in {path}: {source}")]
    EventLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("span export: {0}")]
    Export(#[from] ExportError),
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl SessionError {
    /// A container runtime's error, where `field` is the part of the request it acted on.
    pub fn containers(field: &'static str, err: ContainerError) -> Self {
        match err {
            ContainerError::Rejected { message, .. } => Self::ContainerRejected { field, message },
            unavailable @ ContainerError::Unavailable { .. } => {
                Self::ContainersUnavailable(unavailable)
            }
        }
    }
}

impl From<ContainerError> for SessionError {
    fn from(err: ContainerError) -> Self {
        Self::containers("target", err)
    }
}

impl From<EngineError> for SessionError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::NoFreeSlot => SessionError::NoCapacity,
            EngineError::BackendUnavailable { backend, why } => {
                SessionError::BackendUnavailable { backend, why }
            }
            other => SessionError::Engine(other),
        }
    }
}

/// What a tenant may not do.
#[derive(Debug, thiserror::Error)]
pub enum Forbidden {
    #[error("only an admin may create sessions for another tenant ({tenant})")]
    OtherTenant { tenant: String },
    #[error(
        "cgroup and pid targets need the admin role: a tenant may trace only the containers it owns"
    )]
    NotAContainerTarget,
}

/// Why a target cannot be traced now.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("process {pid} does not exist")]
    ProcessGone { pid: u32 },
    #[error(
        "launching needs Docker's cgroupfs cgroup driver (the container's cgroup must be made, \
         and traced, before it starts)"
    )]
    LaunchNeedsCgroupfs,
    #[error("image {image} is not available locally")]
    ImageMissing { image: String },
    #[error("making the launched container's cgroup {path}: {message}")]
    LaunchCgroup { path: PathBuf, message: String },
    #[error("the launched container runs in {path} instead of the cgroup made for it")]
    LaunchedElsewhere { path: PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_container_request_names_the_field_and_an_unreachable_engine_does_not() {
        let rejected = ContainerError::Rejected {
            status: 400,
            message: "invalid reference format".into(),
        };
        let err = SessionError::containers("target.launch.image", rejected);
        assert!(matches!(
            err,
            SessionError::ContainerRejected {
                field: "target.launch.image",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "target.launch.image: invalid reference format"
        );
        let unavailable = ContainerError::Unavailable {
            socket: "/run/docker.sock".into(),
            message: "connection refused".into(),
        };
        assert!(matches!(
            SessionError::from(unavailable),
            SessionError::ContainersUnavailable(_)
        ));
    }

    #[test]
    fn engine_errors_keep_their_meaning() {
        assert!(matches!(
            SessionError::from(EngineError::NoFreeSlot),
            SessionError::NoCapacity
        ));
        let err = SessionError::from(EngineError::BackendUnavailable {
            backend: Backend::Ebpf,
            why: "turned off".into(),
        });
        assert_eq!(
            err.to_string(),
            "the ebpf backend is unavailable: turned off"
        );
    }
}
