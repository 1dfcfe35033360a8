//! Containers tracerd launches itself: created (not started) with a cgroup made for them, so
//! their cgroup is traced before their first syscall; started once the filter is in place.
use std::collections::BTreeMap;

use uuid::Uuid;

use super::{
    context::Context,
    error::{SessionError, TargetError},
    spec::Launch,
};
use crate::{
    cgroup::{self, Cgroup},
    containers::{LaunchRequest, LAUNCH_CGROUP_PARENT},
    record::ContainerMeta,
};

/// The label on containers tracerd launches, naming their session.
pub const SESSION_LABEL: &str = "tracerd.session";

/// Whether a container can be launched now: the engine answers, lays out cgroups as
/// `<parent>/<id>` (so tracerd can make the cgroup before the container starts), and has
/// the image.
pub async fn check(ctx: &Context, launch: &Launch) -> Result<(), SessionError> {
    if !ctx.runtime.uses_cgroupfs().await? {
        return Err(TargetError::LaunchNeedsCgroupfs.into());
    }
    let has_image = ctx
        .runtime
        .has_image(&launch.image)
        .await
        .map_err(|err| SessionError::containers("target.launch.image", err))?;
    if !has_image {
        return Err(TargetError::ImageMissing {
            image: launch.image.clone(),
        }
        .into());
    }
    Ok(())
}

/// Creates the container (not started) and its cgroup.
pub async fn create(
    ctx: &Context,
    launch: &Launch,
    tenant: &str,
    session: Uuid,
    run: u32,
) -> Result<(ContainerMeta, Cgroup), SessionError> {
    check(ctx, launch).await?;
    // One container per run: `tracerd-<session>-<run>`.
    let name = format!("tracerd-{}-{}", &session.simple().to_string()[..12], run);
    let request = LaunchRequest {
        name: name.clone(),
        image: launch.image.clone(),
        command: launch.command.clone(),
        env: launch.env.clone(),
        labels: BTreeMap::from([
            (SESSION_LABEL.to_owned(), session.to_string()),
            (ctx.options.owner_label.clone(), tenant.to_owned()),
        ]),
    };
    let id = ctx
        .runtime
        .create(&request)
        .await
        .map_err(|err| SessionError::containers("target.launch", err))?;
    let made = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || make_cgroup(&id)).await?
    };
    match made {
        Ok(cgroup) => Ok((
            ContainerMeta {
                id,
                name,
                image: launch.image.clone(),
            },
            cgroup,
        )),
        Err(err) => {
            ctx.runtime.remove(&id).await;
            Err(err.into())
        }
    }
}

/// Makes `<cgroup2 mount>/<launch parent>/<id>`, where the cgroupfs driver will put the
/// container. Blocking.
fn make_cgroup(id: &str) -> Result<Cgroup, TargetError> {
    let mount = cgroup::cgroup2_mount()?;
    let path = mount
        .join(LAUNCH_CGROUP_PARENT.trim_start_matches('/'))
        .join(id);
    std::fs::create_dir_all(&path)
        .map_err(|err| err.to_string())
        .and_then(|()| Cgroup::from_path(&path).map_err(|err| err.to_string()))
        .map_err(|message| TargetError::LaunchCgroup { path, message })
}

/// Removes a launched container once its run has ended (its events are recorded by then),
/// and the cgroup made for it if the engine left it.
pub async fn release(ctx: &Context, id: &str) {
    ctx.runtime.remove(id).await;
    let id = id.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        for mount in cgroup::hierarchy_mounts() {
            let parent = mount.join(LAUNCH_CGROUP_PARENT.trim_start_matches('/'));
            // Gone already (the engine removes what it made) or never made: fine.
            let _ = std::fs::remove_dir(parent.join(&id));
        }
    })
    .await;
}

/// Removes the launch parent cgroup (`/tracerd`) from every hierarchy where it is empty: at
/// shutdown, once no session runs, so it does not outlive the daemon's need. Blocking.
pub fn remove_parent_cgroups() {
    for mount in cgroup::hierarchy_mounts() {
        let parent = mount.join(LAUNCH_CGROUP_PARENT.trim_start_matches('/'));
        match std::fs::remove_dir(&parent) {
            Ok(()) => tracing::debug!(path = %parent.display(), "launch parent cgroup removed"),
            // Absent, or still holding a container of a session that outlives us (EBUSY).
            Err(err) => {
                tracing::trace!(path = %parent.display(), %err, "launch parent cgroup kept");
            }
        }
    }
}

/// Starts a launched container and checks it runs in the cgroup made for it.
pub async fn start(ctx: &Context, id: &str, cgroups: &[u64]) -> Result<(), SessionError> {
    ctx.runtime
        .start(id)
        .await
        .map_err(|err| SessionError::containers("target.launch", err))?;
    match ctx.runtime.inspect(id).await? {
        Some(container) if cgroups.contains(&container.cgroup_id) => Ok(()),
        // It ran and exited already: its syscalls were traced; the run's watch sees the exit.
        None => Ok(()),
        Some(container) => Err(TargetError::LaunchedElsewhere {
            path: container.cgroup_path,
        }
        .into()),
    }
}
