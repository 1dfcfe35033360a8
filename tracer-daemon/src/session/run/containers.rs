//! A container run following the runtime: containers that start and match are added,
//! those that die are taken out of the kernel filter, and after the runtime was away the run
//! is brought back in step with what runs now (it says meanwhile that it may be missing
//! containers).
use std::sync::Arc;

use uuid::Uuid;

use super::Run;
use crate::{
    containers::Container,
    session::{access::owns, context::Context, model::TracedContainer},
};

impl Run {
    /// Traces `container` if the run follows containers, it matches, and its tenant may see
    /// it (and it is not traced already).
    pub async fn container_started(&mut self, id: Uuid, container: &Container, owner_label: &str) {
        let Some(follow) = &self.follow else {
            return;
        };
        let owned = !follow.restricted || owns(container, owner_label, &self.tenant);
        let selected = follow.matched_by.admits(&follow.selector, container);
        let known = follow.traced.get(&container.id).map(|c| c.cgroup_id);
        if !owned || !selected || known == Some(container.cgroup_id) {
            return;
        }
        // The writer learns the container before its first event can exist.
        let _ = self
            .joins
            .send((container.cgroup_id, Arc::new(container.meta())));
        let trace = self.trace.clone();
        let cgroup_id = container.cgroup_id;
        match tokio::task::spawn_blocking(move || trace.add_cgroup(cgroup_id)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(session = %id, %err, "adding a container to the session failed");
                return;
            }
            Err(err) => {
                tracing::error!(session = %id, %err, "adding a container to the session failed");
                return;
            }
        }
        if let Some(follow) = &mut self.follow {
            follow
                .traced
                .insert(container.id.clone(), TracedContainer::of(container));
        }
        self.cgroups.push(cgroup_id);
        tracing::info!(session = %id, container = %container.name, "tracing a container that started");
    }

    /// Stops tracing a traced container that exited (it may start again).
    pub async fn container_died(&mut self, id: Uuid, container: &str) {
        let Some(cgroup_id) = self
            .follow
            .as_ref()
            .and_then(|follow| follow.traced.get(container))
            .map(|traced| traced.cgroup_id)
        else {
            return;
        };
        self.untrace_cgroup(id, cgroup_id).await;
    }

    /// Takes a cgroup out of the kernel filter, once (a container that died while the
    /// runtime was away is found gone twice).
    async fn untrace_cgroup(&mut self, id: Uuid, cgroup_id: u64) {
        if !self.cgroups.contains(&cgroup_id) {
            return;
        }
        let trace = self.trace.clone();
        let removed = tokio::task::spawn_blocking(move || trace.remove_cgroup(cgroup_id)).await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::error!(session = %id, ?removed, "removing an exited container failed");
        }
        self.cgroups.retain(|&cgroup| cgroup != cgroup_id);
    }

    /// Forgets a destroyed container; whether the run now traces no container at all.
    pub fn container_destroyed(&mut self, container: &str) -> bool {
        let Some(follow) = &mut self.follow else {
            return false;
        };
        follow.traced.remove(container).is_some() && follow.traced.is_empty()
    }

    /// Whether any running container the run may see still matches its selector.
    pub async fn still_matched(&self, ctx: &Context) -> bool {
        let Some(follow) = &self.follow else {
            return false;
        };
        match ctx
            .visible_containers(&self.tenant, follow.restricted)
            .await
        {
            Ok(visible) => visible
                .iter()
                .any(|container| follow.matched_by.admits(&follow.selector, container)),
            Err(_) => false,
        }
    }

    /// Adds the matching containers that started between the run's resolution and now,
    /// which no container event may have told it about.
    pub async fn catch_up(&mut self, ctx: &Context, id: Uuid) {
        let Some(follow) = &self.follow else {
            return;
        };
        let Ok(visible) = ctx
            .visible_containers(&self.tenant, follow.restricted)
            .await
        else {
            return;
        };
        for container in &visible {
            self.container_started(id, container, &ctx.options.owner_label)
                .await;
        }
    }

    /// The runtime went away (its event stream ended): containers that start or restart
    /// now are not seen until it is back.
    pub fn runtime_lost(&mut self, since: &str) {
        if self.follow.is_some() && self.runtime_outage.is_none() {
            self.runtime_outage = Some(since.to_owned());
        }
    }

    /// The runtime is back (or followed from the start), and `running` is every container
    /// running now: containers whose cgroup changed meanwhile (restarted in a new one) or
    /// that are gone leave the kernel filter, and every one that matches is traced.
    pub async fn resync(&mut self, id: Uuid, running: &[Container], owner_label: &str) {
        let Some(follow) = &self.follow else {
            return;
        };
        let stale: Vec<u64> = follow
            .traced
            .iter()
            .filter(|(container, traced)| {
                !running
                    .iter()
                    .any(|now| &now.id == *container && now.cgroup_id == traced.cgroup_id)
            })
            .map(|(_, traced)| traced.cgroup_id)
            .collect();
        for cgroup_id in stale {
            self.untrace_cgroup(id, cgroup_id).await;
        }
        for container in running {
            self.container_started(id, container, owner_label).await;
        }
        if let Some(since) = self.runtime_outage.take() {
            tracing::info!(session = %id, %since, "the container runtime is back: containers re-read");
        }
    }
}
