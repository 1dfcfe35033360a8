//! Containers through the Docker engine (bollard): which are running, their names, images
//! and labels, and their cgroups (read from /proc, never guessed from a path layout).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{cgroup::Cgroup, session::spec::ContainerSelector};

/// The Docker API version asked for first; the engine's own is used if it is older (Debian's
/// 20.10 engine speaks 1.41).
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

#[derive(Debug, thiserror::Error)]
#[error("the Docker engine at {socket} cannot be reached: {message}")]
pub struct DockerUnavailable {
    pub socket: String,
    pub message: String,
}

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

/// A Docker client, connected on first use (tracerd starts, and serves cgroup and pid
/// targets, without a Docker engine).
pub struct DockerClient {
    socket: PathBuf,
    client: tokio::sync::Mutex<Option<bollard::Docker>>,
}

impl DockerClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    fn unavailable(&self, err: impl std::fmt::Display) -> DockerUnavailable {
        DockerUnavailable {
            socket: self.socket.display().to_string(),
            message: err.to_string(),
        }
    }

    async fn client(&self) -> Result<bollard::Docker, DockerUnavailable> {
        let mut cached = self.client.lock().await;
        if let Some(client) = cached.as_ref() {
            return Ok(client.clone());
        }
        let socket = self
            .socket
            .to_str()
            .ok_or_else(|| self.unavailable("the socket path is not UTF-8"))?;
        let client = bollard::Docker::connect_with_socket(socket, 10, &API_VERSION)
            .map_err(|err| self.unavailable(err))?
            .negotiate_version()
            .await
            .map_err(|err| self.unavailable(err))?;
        *cached = Some(client.clone());
        Ok(client)
    }

    /// Forgets the connection after an error, so the next call connects afresh.
    async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// Every running container with its cgroup.
    pub async fn running(&self) -> Result<Vec<Container>, DockerUnavailable> {
        let client = self.client().await?;
        let summaries = match client
            .list_containers(None::<bollard::query_parameters::ListContainersOptions>)
            .await
        {
            Ok(summaries) => summaries,
            Err(err) => {
                self.reset().await;
                return Err(self.unavailable(err));
            }
        };
        let mut containers = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            // The list has no pid: ask for it. A container that exited meanwhile is skipped.
            let Ok(inspected) = client
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            else {
                continue;
            };
            let Some(pid) = inspected
                .state
                .and_then(|state| state.pid)
                .filter(|&pid| pid > 0)
            else {
                continue;
            };
            let Ok(cgroup) = Cgroup::of_pid(pid as u32) else {
                continue;
            };
            containers.push(Container {
                name: inspected
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                image: summary.image.unwrap_or_default(),
                labels: summary.labels.unwrap_or_default().into_iter().collect(),
                pid: pid as u32,
                cgroup_id: cgroup.id,
                cgroup_path: cgroup.path,
                id,
            });
        }
        Ok(containers)
    }
}

/// A change in a container's life, from the engine's event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerEvent {
    Started(String),
    Died(String),
    Destroyed(String),
}

impl DockerClient {
    /// One running container (`None` if it is not running, or no longer exists).
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, DockerUnavailable> {
        let client = self.client().await?;
        let inspected = match client
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(inspected) => inspected,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(err) => {
                self.reset().await;
                return Err(self.unavailable(err));
            }
        };
        let Some(pid) = inspected
            .state
            .as_ref()
            .and_then(|state| state.pid)
            .filter(|&pid| pid > 0)
        else {
            return Ok(None);
        };
        let Ok(cgroup) = Cgroup::of_pid(pid as u32) else {
            return Ok(None);
        };
        let config = inspected.config.unwrap_or_default();
        Ok(Some(Container {
            id: inspected.id.unwrap_or_else(|| id.to_owned()),
            name: inspected
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            image: config.image.unwrap_or_default(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            pid: pid as u32,
            cgroup_id: cgroup.id,
            cgroup_path: cgroup.path,
        }))
    }

    /// The engine's container events from now on. The stream ends (with an error) when the
    /// engine goes away; the caller subscribes again.
    pub async fn events(
        &self,
    ) -> Result<
        impl futures_util::Stream<Item = Result<ContainerEvent, DockerUnavailable>> + use<>,
        DockerUnavailable,
    > {
        use futures_util::StreamExt as _;
        let client = self.client().await?;
        let filters = std::collections::HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["start", "die", "destroy"]),
        ]);
        let options = bollard::query_parameters::EventsOptionsBuilder::new()
            .filters(&filters)
            .build();
        let socket = self.socket.display().to_string();
        Ok(client.events(Some(options)).filter_map(move |message| {
            let event = match message {
                Err(err) => Some(Err(DockerUnavailable {
                    socket: socket.clone(),
                    message: err.to_string(),
                })),
                Ok(message) => {
                    let id = message.actor.and_then(|actor| actor.id);
                    match (message.action.as_deref(), id) {
                        (Some("start"), Some(id)) => Some(Ok(ContainerEvent::Started(id))),
                        (Some("die"), Some(id)) => Some(Ok(ContainerEvent::Died(id))),
                        (Some("destroy"), Some(id)) => Some(Ok(ContainerEvent::Destroyed(id))),
                        _ => None,
                    }
                }
            };
            std::future::ready(event)
        }))
    }
}

/// The cgroup parent of containers tracerd launches. Under the cgroupfs driver a container's
/// cgroup is `<parent>/<container id>`, which lets tracerd make it, and trace it, before the
/// container starts.
pub const LAUNCH_CGROUP_PARENT: &str = "/tracerd";

/// A container to launch.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

impl DockerClient {
    /// Whether the engine lays out cgroups as `<parent>/<id>` (the cgroupfs driver), which
    /// launching needs.
    pub async fn uses_cgroupfs(&self) -> Result<bool, DockerUnavailable> {
        let client = self.client().await?;
        let info = client.info().await.map_err(|err| self.unavailable(err))?;
        Ok(matches!(
            info.cgroup_driver,
            Some(bollard::models::SystemInfoCgroupDriverEnum::CGROUPFS)
        ))
    }

    /// Whether an image exists locally.
    pub async fn has_image(&self, image: &str) -> Result<bool, DockerUnavailable> {
        let client = self.client().await?;
        match client.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(err) => Err(self.unavailable(err)),
        }
    }

    /// Creates (does not start) a container under [`LAUNCH_CGROUP_PARENT`]; returns its id.
    pub async fn create(&self, request: &LaunchRequest) -> Result<String, DockerUnavailable> {
        let client = self.client().await?;
        let body = bollard::models::ContainerCreateBody {
            image: Some(request.image.clone()),
            cmd: (!request.command.is_empty()).then(|| request.command.clone()),
            env: Some(
                request
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            labels: Some(request.labels.clone().into_iter().collect()),
            host_config: Some(bollard::models::HostConfig {
                cgroup_parent: Some(LAUNCH_CGROUP_PARENT.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = bollard::query_parameters::CreateContainerOptionsBuilder::new()
            .name(&request.name)
            .build();
        let created = client
            .create_container(Some(options), body)
            .await
            .map_err(|err| self.unavailable(err))?;
        Ok(created.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerUnavailable> {
        let client = self.client().await?;
        client
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|err| self.unavailable(err))
    }

    /// Kills a container; one that is not running is not an error.
    pub async fn kill(&self, id: &str) {
        if let Ok(client) = self.client().await {
            let _ = client
                .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
                .await;
        }
    }

    /// Removes a container, running or not; one that does not exist is not an error.
    pub async fn remove(&self, id: &str) {
        if let Ok(client) = self.client().await {
            let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                .force(true)
                .build();
            let _ = client.remove_container(id, Some(options)).await;
        }
    }

    /// Removes every container (running or not) carrying `key=value`.
    pub async fn remove_labelled(&self, key: &str, value: &str) -> Result<(), DockerUnavailable> {
        let client = self.client().await?;
        let filters = std::collections::HashMap::from([("label", vec![format!("{key}={value}")])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = client
            .list_containers(Some(options))
            .await
            .map_err(|err| self.unavailable(err))?;
        for id in containers.into_iter().filter_map(|c| c.id) {
            self.remove(&id).await;
        }
        Ok(())
    }

    /// Waits until a container exits; its exit code.
    pub async fn wait(&self, id: &str) -> Result<i64, DockerUnavailable> {
        use futures_util::StreamExt as _;
        let client = self.client().await?;
        let mut waiting = std::pin::pin!(
            client.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>)
        );
        match waiting.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(err)) => Err(self.unavailable(err)),
            None => Err(self.unavailable("the wait for the container ended without an exit code")),
        }
    }
}

/// The containers `selector` picks: by exact name if any has it, else by ID prefix, else
/// by part of a name; and of those, the ones carrying every label.
pub fn select<'a>(containers: &'a [Container], selector: &ContainerSelector) -> Vec<&'a Container> {
    let labelled = |container: &&Container| {
        selector
            .labels
            .iter()
            .all(|(key, value)| container.labels.get(key) == Some(value))
    };
    let Some(text) = &selector.container else {
        return containers.iter().filter(labelled).collect();
    };
    let by = |matches: &dyn Fn(&Container) -> bool| -> Vec<&'a Container> {
        containers
            .iter()
            .filter(|c| matches(c))
            .filter(labelled)
            .collect()
    };
    let exact = by(&|c| c.name == *text);
    if !exact.is_empty() {
        return exact;
    }
    let by_id = by(&|c| c.id.starts_with(text.as_str()));
    if !by_id.is_empty() {
        return by_id;
    }
    by(&|c| c.name.contains(text.as_str()))
}

/// Up to five running containers' names closest to `text`, closest first.
pub fn close_names(containers: &[Container], text: &str) -> Vec<String> {
    let mut names: Vec<(usize, &str)> = containers
        .iter()
        .map(|c| (strsim::levenshtein(&c.name, text), c.name.as_str()))
        .collect();
    names.sort();
    names
        .into_iter()
        .take(5)
        .map(|(_, name)| name.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, name: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            image: "img".into(),
            labels: labels.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
            pid: 1,
            cgroup_id: 1,
            cgroup_path: PathBuf::new(),
        }
    }

    fn selector(container: Option<&str>, labels: &[(&str, &str)]) -> ContainerSelector {
        ContainerSelector {
            container: container.map(str::to_owned),
            labels: labels.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
        }
    }

    fn names(found: Vec<&Container>) -> Vec<&str> {
        found.into_iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn an_exact_name_wins_over_an_id_prefix_and_a_part_of_a_name() {
        let all = [
            container("abc123", "web", &[]),
            container("def456", "web-2", &[]),
            container("web999", "db", &[]),
        ];
        assert_eq!(names(select(&all, &selector(Some("web"), &[]))), ["web"]);
        assert_eq!(names(select(&all, &selector(Some("def"), &[]))), ["web-2"]);
        assert_eq!(names(select(&all, &selector(Some("eb-"), &[]))), ["web-2"]);
        assert!(select(&all, &selector(Some("cache"), &[])).is_empty());
    }

    #[test]
    fn labels_narrow_any_selection() {
        let all = [
            container("a1", "shop-web", &[("app", "shop"), ("tier", "web")]),
            container("a2", "shop-db", &[("app", "shop"), ("tier", "db")]),
            container("a3", "blog-web", &[("app", "blog"), ("tier", "web")]),
        ];
        assert_eq!(
            names(select(&all, &selector(None, &[("app", "shop")]))),
            ["shop-web", "shop-db"]
        );
        assert_eq!(
            names(select(&all, &selector(Some("web"), &[("app", "shop")]))),
            ["shop-web"]
        );
        assert!(select(&all, &selector(None, &[("app", "none")])).is_empty());
    }

    #[test]
    fn close_names_come_closest_first() {
        let all = [
            container("1", "payments", &[]),
            container("2", "web", &[]),
            container("3", "webs", &[]),
        ];
        assert_eq!(close_names(&all, "wbe"), ["web", "webs", "payments"]);
    }
}
