//! One running session per tenant, target and filter: a second is refused and told which
//! session holds it.
use std::collections::HashMap;

use uuid::Uuid;

use super::{error::SessionError, model::SessionRow};
use crate::sync::lock;

/// (tenant, target and filter) of every running session → that session. Claimed and checked
/// in one step, so two starts of duplicates cannot both succeed.
#[derive(Debug, Default)]
pub struct RunningKeys {
    keys: std::sync::Mutex<HashMap<(String, String), (Uuid, String)>>,
}

impl RunningKeys {
    /// Claims the session's key as running, unless another session holds it.
    pub fn claim(&self, row: &SessionRow) -> Result<(), SessionError> {
        let mut keys = lock(&self.keys);
        let key = (row.tenant.clone(), row.duplicate_key.clone());
        match keys.get(&key) {
            Some((other, name)) if *other != row.id => Err(SessionError::Duplicate {
                id: *other,
                name: name.clone(),
            }),
            _ => {
                keys.insert(key, (row.id, row.name.clone()));
                Ok(())
            }
        }
    }

    /// Gives up whatever `id` holds.
    pub fn release(&self, id: Uuid) {
        lock(&self.keys).retain(|_, (holder, _)| *holder != id);
    }
}
