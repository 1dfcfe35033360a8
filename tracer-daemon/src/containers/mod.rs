//! Containers: what a session's selector picks, what is known of each (its cgroup above
//! all), and the runtime behind them, reached through [`ContainerRuntime`] (the Docker
//! engine in [`docker`]; a fake in unit tests).
pub mod docker;
mod select;

use std::{collections::BTreeMap, path::PathBuf};

use futures_util::stream::BoxStream;
use serde::Serialize;

pub use self::select::{close_names, select, MatchedBy};
use crate::record::ContainerMeta;

/// The cgroup parent of containers tracerd launches. Under the cgroupfs driver a container's
/// cgroup is `<parent>/<container id>`, which lets tracerd make it, and trace it, before the
/// container starts.
pub const LAUNCH_CGROUP_PARENT: &str = "/tracerd";

/// A running container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Its init process.
    pub pid: u32,
    pub cgroup_id: u64,
    pub cgroup_path: PathBuf,
}

impl Container {
    /// What its events say about it.
    pub fn meta(&self) -> ContainerMeta {
        ContainerMeta {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
        }
    }
}

/// Which running containers a session traces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerSelector {
    /// Exact name, else ID prefix, else part of a name.
    pub container: Option<String>,
    /// Labels a container must all carry.
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Display for ContainerSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(container) = &self.container {
            parts.push(format!("container `{container}`"));
        }
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!("labels {}", labels.join(",")));
        }
        f.write_str(&parts.join(" with "))
    }
}

/// A change in a container's life, from the runtime's event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerEvent {
    Started(String),
    Died(String),
    Destroyed(String),
}

/// A container to launch.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The engine cannot be reached, or failed on its side: try again later.
    #[error(
        "the Docker engine at {socket} cannot be reached: {message} (in a container, add \
         -v /var/run/docker.sock:/var/run/docker.sock)"
    )]
    Unavailable { socket: String, message: String },
    /// The engine refused the request as given (a bad image reference, say): the caller's
    /// to fix.
    #[error("the Docker engine refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
}

/// What sessions need of a container runtime.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Every running container with its cgroup.
    async fn running(&self) -> Result<Vec<Container>, ContainerError>;

    /// One running container (`None` if it is not running, or no longer exists).
    async fn inspect(&self, id: &str) -> Result<Option<Container>, ContainerError>;

    /// Container events from now on. The stream ends (with an error) when the engine goes
    /// away; the caller subscribes again.
    async fn events(
        &self,
    ) -> Result<BoxStream<'static, Result<ContainerEvent, ContainerError>>, ContainerError>;

    /// Whether the engine lays out cgroups as `<parent>/<id>` (the cgroupfs driver), which
    /// launching needs.
    async fn uses_cgroupfs(&self) -> Result<bool, ContainerError>;

    /// Whether an image exists locally.
    async fn has_image(&self, image: &str) -> Result<bool, ContainerError>;

    /// Creates (does not start) a container under [`LAUNCH_CGROUP_PARENT`]; returns its id.
    async fn create(&self, request: &LaunchRequest) -> Result<String, ContainerError>;

    async fn start(&self, id: &str) -> Result<(), ContainerError>;

    /// Kills a container; one that is not running is not an error.
    async fn kill(&self, id: &str);

    /// Removes a container, running or not; one that does not exist is not an error.
    async fn remove(&self, id: &str);

    /// Removes every container (running or not) carrying `key=value`.
    async fn remove_labelled(&self, key: &str, value: &str) -> Result<(), ContainerError>;

    /// Waits until a container exits; its exit code.
    async fn wait(&self, id: &str) -> Result<i64, ContainerError>;
}
