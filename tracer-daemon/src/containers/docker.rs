//! The Docker engine (bollard) as a [`ContainerRuntime`]: which containers are running, their
//! names, images and labels, and their cgroups (read from /proc, never guessed from a path
//! layout).
use std::path::{Path, PathBuf};

use futures_util::{stream::BoxStream, StreamExt as _};

use super::{
    Container, ContainerError, ContainerEvent, ContainerRuntime, LaunchRequest,
    LAUNCH_CGROUP_PARENT,
};
use crate::cgroup::Cgroup;

/// The Docker API version asked for first; the engine's own is used if it is older (Debian's
/// 20.10 engine speaks 1.41).
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

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

    fn unavailable(&self, err: impl std::fmt::Display) -> ContainerError {
        ContainerError::Unavailable {
            socket: self.socket.display().to_string(),
            message: err.to_string(),
        }
    }

    /// A failed call: the engine's refusal of a bad request is the caller's; anything else
    /// (no answer, a server error) means the engine is unavailable.
    fn failed(&self, err: bollard::errors::Error) -> ContainerError {
        match err {
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } if (400..500).contains(&status_code) => ContainerError::Rejected {
                status: status_code,
                message,
            },
            other => self.unavailable(other),
        }
    }

    async fn client(&self) -> Result<bollard::Docker, ContainerError> {
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
}

/// The cgroup of a container's init process, read from /proc on the blocking pool; `None`
/// if the process is gone.
async fn cgroup_of(pid: i64) -> Option<Cgroup> {
    let pid = u32::try_from(pid).ok().filter(|&pid| pid > 0)?;
    tokio::task::spawn_blocking(move || Cgroup::of_pid(pid).ok())
        .await
        .ok()
        .flatten()
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerClient {
    async fn running(&self) -> Result<Vec<Container>, ContainerError> {
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
            let Some(pid) = inspected.state.and_then(|state| state.pid) else {
                continue;
            };
            let Some(cgroup) = cgroup_of(pid).await else {
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

    async fn inspect(&self, id: &str) -> Result<Option<Container>, ContainerError> {
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
        let Some(pid) = inspected.state.as_ref().and_then(|state| state.pid) else {
            return Ok(None);
        };
        let Some(cgroup) = cgroup_of(pid).await else {
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

    async fn events(
        &self,
    ) -> Result<BoxStream<'static, Result<ContainerEvent, ContainerError>>, ContainerError> {
        let client = self.client().await?;
        let filters = std::collections::HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["start", "die", "destroy"]),
        ]);
        let options = bollard::query_parameters::EventsOptionsBuilder::new()
            .filters(&filters)
            .build();
        let socket = self.socket.display().to_string();
        let events = client.events(Some(options)).filter_map(move |message| {
            let event = match message {
                Err(err) => Some(Err(ContainerError::Unavailable {
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
        });
        Ok(events.boxed())
    }

    async fn uses_cgroupfs(&self) -> Result<bool, ContainerError> {
        let client = self.client().await?;
        let info = client.info().await.map_err(|err| self.failed(err))?;
        Ok(matches!(
            info.cgroup_driver,
            Some(bollard::models::SystemInfoCgroupDriverEnum::CGROUPFS)
        ))
    }

    async fn has_image(&self, image: &str) -> Result<bool, ContainerError> {
        let client = self.client().await?;
        match client.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(err) => Err(self.failed(err)),
        }
    }

    async fn create(&self, request: &LaunchRequest) -> Result<String, ContainerError> {
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
            .map_err(|err| self.failed(err))?;
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let client = self.client().await?;
        client
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|err| self.failed(err))
    }

    async fn kill(&self, id: &str) {
        if let Ok(client) = self.client().await {
            let _ = client
                .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
                .await;
        }
    }

    async fn remove(&self, id: &str) {
        if let Ok(client) = self.client().await {
            let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                .force(true)
                .build();
            let _ = client.remove_container(id, Some(options)).await;
        }
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<(), ContainerError> {
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

    async fn wait(&self, id: &str) -> Result<i64, ContainerError> {
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
