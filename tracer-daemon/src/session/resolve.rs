//! A session's target, resolved now: the filter the engine applies, the containers it covers,
//! and how to tell when it is gone. Resolved again at every start.
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use uuid::Uuid;

use super::{
    context::Context,
    error::{SessionError, TargetError},
    launch,
    model::{TracedContainer, TracedContainers},
    spec::{SessionSpec, TargetKind},
};
use crate::{
    cgroup::Cgroup,
    containers::{self, ContainerSelector, MatchedBy},
    record::{ContainerMeta, TraceFilter},
};

/// Whether a run's targets still exist.
pub enum Presence {
    /// A cgroup target's directory.
    Cgroups(Vec<PathBuf>),
    Pids(Vec<u32>),
    /// Containers: the runtime's events say when they are gone (a stopped container's
    /// cgroup vanishes, but it may start again).
    ContainerEvents,
    /// A launched container: its exit ends the run.
    Launched(String),
}

/// A container run following the runtime's events: containers that start and match are
/// added, those that exit are removed, and the session finishes when all it traced are gone.
pub struct Follow {
    pub selector: ContainerSelector,
    /// How the selector matched when the run started: containers that start later must
    /// match the same way.
    pub matched_by: MatchedBy,
    pub restricted: bool,
    /// Containers traced by this run (by id), until they are destroyed.
    pub traced: HashMap<String, TracedContainer>,
}

impl Follow {
    /// What the session shows of the containers it traces.
    pub fn view(&self) -> TracedContainers {
        let mut containers: Vec<TracedContainer> = self.traced.values().cloned().collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        TracedContainers {
            matched_by: self.matched_by,
            containers,
        }
    }
}

/// A target resolved now.
pub struct Resolved {
    pub filter: TraceFilter,
    /// cgroup id → the container it belongs to.
    pub containers: HashMap<u64, Arc<ContainerMeta>>,
    pub presence: Presence,
    /// For container targets: what following the runtime's events needs.
    pub follow: Option<Follow>,
    /// For launch targets: the created container, to start once the filter is in place.
    pub launched: Option<String>,
}

/// Who a resolution is for: `restricted` sessions (created by a tenant, not an admin) see
/// only containers whose owner label names their tenant; `session` and `run` name a
/// launched container.
pub struct Resolving<'a> {
    pub spec: &'a SessionSpec,
    pub tenant: &'a str,
    pub restricted: bool,
    pub session: Uuid,
    pub run: u32,
}

impl Resolving<'_> {
    fn filter(&self, cgroups: Vec<u64>, tgids: Option<Vec<u32>>) -> TraceFilter {
        TraceFilter {
            cgroups,
            syscalls: self.spec.syscalls.clone(),
            tgids,
            failed_only: self.spec.conditions.failed_only,
            capture: self.spec.capture.clone(),
        }
    }

    /// Resolves the target now (cgroup and /proc reads run on the blocking pool).
    pub async fn resolve(&self, ctx: &Context) -> Result<Resolved, SessionError> {
        check_host_pids(ctx, &self.spec.target)?;
        if let Some(local) = self.local() {
            return Ok(tokio::task::spawn_blocking(move || local.resolve()).await??);
        }
        match &self.spec.target {
            TargetKind::Containers(selector) => self.containers(ctx, selector).await,
            TargetKind::Launch(request) => {
                let (container, cgroup) =
                    launch::create(ctx, request, self.tenant, self.session, self.run).await?;
                let containers = HashMap::from([(cgroup.id, Arc::new(container.clone()))]);
                let tgids = self.spec.conditions.tgids.clone();
                Ok(Resolved {
                    filter: self.filter(vec![cgroup.id], tgids),
                    containers,
                    presence: Presence::Launched(container.id.clone()),
                    follow: None,
                    launched: Some(container.id),
                })
            }
            TargetKind::Cgroup(_) | TargetKind::Pids(_) => unreachable!("resolved locally"),
        }
    }

    /// A target resolved from this host's files alone (a cgroup, processes), to resolve on
    /// the blocking pool; `None` for targets the container runtime resolves.
    pub fn local(&self) -> Option<LocalTarget> {
        let tgids = self.spec.conditions.tgids.clone();
        match &self.spec.target {
            TargetKind::Cgroup(path) => Some(LocalTarget::Cgroup {
                path: PathBuf::from(path),
                filter: self.filter(Vec::new(), tgids),
            }),
            TargetKind::Pids(pids) => Some(LocalTarget::Pids {
                pids: pids.clone(),
                filter: self.filter(Vec::new(), Some(pids.clone())),
            }),
            TargetKind::Containers(_) | TargetKind::Launch(_) => None,
        }
    }

    async fn containers(
        &self,
        ctx: &Context,
        selector: &ContainerSelector,
    ) -> Result<Resolved, SessionError> {
        let visible = ctx.visible_containers(self.tenant, self.restricted).await?;
        let (matched_by, chosen) = containers::select(&visible, selector);
        if chosen.is_empty() {
            let close = selector
                .container
                .as_deref()
                .map(|text| containers::close_names(&visible, text))
                .unwrap_or_default();
            return Err(SessionError::NoMatchingContainer {
                selector: selector.to_string(),
                close,
            });
        }
        let mut cgroups = Vec::new();
        let mut metas = HashMap::new();
        let mut traced = HashMap::new();
        for container in chosen {
            traced.insert(container.id.clone(), TracedContainer::of(container));
            if !cgroups.contains(&container.cgroup_id) {
                cgroups.push(container.cgroup_id);
            }
            metas.insert(container.cgroup_id, Arc::new(container.meta()));
        }
        Ok(Resolved {
            filter: self.filter(cgroups, self.spec.conditions.tgids.clone()),
            containers: metas,
            presence: Presence::ContainerEvents,
            follow: Some(Follow {
                selector: selector.clone(),
                matched_by,
                restricted: self.restricted,
                traced,
            }),
            launched: None,
        })
    }
}

/// A cgroup or pid target with its filter (cgroups still to find).
pub enum LocalTarget {
    Cgroup { path: PathBuf, filter: TraceFilter },
    Pids { pids: Vec<u32>, filter: TraceFilter },
}

impl LocalTarget {
    /// Finds the cgroups. Blocking (cgroupfs and /proc reads).
    pub fn resolve(self) -> Result<Resolved, TargetError> {
        match self {
            LocalTarget::Cgroup { path, mut filter } => {
                let cgroup = Cgroup::from_path(&path)?;
                filter.cgroups = vec![cgroup.id];
                Ok(Resolved {
                    filter,
                    containers: HashMap::new(),
                    presence: Presence::Cgroups(vec![cgroup.path]),
                    follow: None,
                    launched: None,
                })
            }
            LocalTarget::Pids { pids, mut filter } => {
                for &pid in &pids {
                    let cgroup =
                        Cgroup::of_pid(pid).map_err(|_| TargetError::ProcessGone { pid })?;
                    if !filter.cgroups.contains(&cgroup.id) {
                        filter.cgroups.push(cgroup.id);
                    }
                }
                Ok(Resolved {
                    filter,
                    containers: HashMap::new(),
                    presence: Presence::Pids(pids),
                    follow: None,
                    launched: None,
                })
            }
        }
    }
}

impl Presence {
    /// Whether every target is gone for good (a stat per target, on the blocking pool).
    pub async fn all_gone(&self) -> bool {
        let paths: Vec<PathBuf> = match self {
            Presence::Cgroups(paths) => paths.clone(),
            Presence::Pids(pids) => pids
                .iter()
                .map(|pid| PathBuf::from(format!("/proc/{pid}")))
                .collect(),
            Presence::ContainerEvents | Presence::Launched(_) => return false,
        };
        for path in paths {
            if tokio::fs::try_exists(&path).await.unwrap_or(true) {
                return false;
            }
        }
        true
    }
}

/// Refuses a target that needs the host's PIDs when this process does not see them: only a
/// cgroup target is the same in any PID namespace.
pub fn check_host_pids(ctx: &Context, target: &TargetKind) -> Result<(), SessionError> {
    match &ctx.options.foreign_pids {
        Some(why) if !matches!(target, TargetKind::Cgroup(_)) => {
            Err(SessionError::ForeignPids(why.clone()))
        }
        _ => Ok(()),
    }
}
