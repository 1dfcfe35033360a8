//! Who may see and do what: admins everything; a tenant only its own sessions, and only
//! containers carrying its owner label.
use super::{
    error::{Forbidden, SessionError},
    model::SessionRow,
    spec::{CreateSession, TargetKind},
};
use crate::containers::Container;

/// Who is asking: a tenant, and whether it is an admin (sees and does everything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub admin: bool,
}

impl Principal {
    /// The cluster agent acting on this node's parts of cluster sessions (which callers
    /// asked for, through any node, with their own rights).
    pub fn cluster_agent() -> Self {
        Principal {
            tenant: "cluster".into(),
            admin: true,
        }
    }

    /// Whether this caller may see (and act on) a session.
    pub fn may_see(&self, row: &SessionRow) -> bool {
        self.admin || row.tenant == self.tenant
    }

    /// The tenant a new session belongs to: the one it names, if this caller may name it,
    /// else the caller's; and whether it is restricted to its tenant's containers.
    pub fn owner_of(
        &self,
        request: &CreateSession,
        target: &TargetKind,
    ) -> Result<(String, bool), SessionError> {
        let tenant = match &request.tenant {
            Some(tenant) if !self.admin && *tenant != self.tenant => {
                return Err(Forbidden::OtherTenant {
                    tenant: tenant.clone(),
                }
                .into())
            }
            Some(tenant) => tenant.clone(),
            None => self.tenant.clone(),
        };
        let restricted = !self.admin;
        if restricted && !matches!(target, TargetKind::Containers(_)) {
            return Err(Forbidden::NotAContainerTarget.into());
        }
        Ok((tenant, restricted))
    }
}

/// Whether a restricted session of `tenant` may see `container` (by its owner label).
pub fn owns(container: &Container, owner_label: &str, tenant: &str) -> bool {
    container.labels.get(owner_label).map(String::as_str) == Some(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> CreateSession {
        serde_json::from_value(json).unwrap()
    }

    fn tenant(name: &str) -> Principal {
        Principal {
            tenant: name.into(),
            admin: false,
        }
    }

    #[test]
    fn a_tenant_creates_only_its_own_container_sessions() {
        let containers = request(serde_json::json!({"target": {"container": "web"}}));
        let target = containers.validate().unwrap().target;
        assert_eq!(
            tenant("a").owner_of(&containers, &target).unwrap(),
            ("a".to_owned(), true)
        );
        let for_b = request(serde_json::json!({"target": {"container": "web"}, "tenant": "b"}));
        assert!(matches!(
            tenant("a").owner_of(&for_b, &target),
            Err(SessionError::Forbidden(Forbidden::OtherTenant { .. }))
        ));
        let cgroup = request(serde_json::json!({"target": {"cgroup": "/sys/fs/cgroup/x"}}));
        let cgroup_target = cgroup.validate().unwrap().target;
        assert!(matches!(
            tenant("a").owner_of(&cgroup, &cgroup_target),
            Err(SessionError::Forbidden(Forbidden::NotAContainerTarget))
        ));
        let admin = Principal {
            tenant: "ops".into(),
            admin: true,
        };
        assert_eq!(
            admin.owner_of(&for_b, &target).unwrap(),
            ("b".to_owned(), false)
        );
        assert_eq!(
            admin.owner_of(&cgroup, &cgroup_target).unwrap(),
            ("ops".to_owned(), false)
        );
    }
}
