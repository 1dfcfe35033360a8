//! Following the container runtime: every start, exit and removal of a container goes to
//! every session's actor, which adds or drops it if its run follows containers.
use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;

use super::{actor::ContainerChange, lifecycle::SessionManager};
use crate::containers::ContainerEvent;

/// How long to wait before subscribing again after the runtime went away.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

/// Follows the runtime's container events for as long as the daemon runs, subscribing
/// again whenever the runtime goes away.
pub async fn follow_containers(manager: Arc<SessionManager>) {
    loop {
        match manager.runtime().events().await {
            Ok(mut events) => {
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => on_event(&manager, event).await,
                        Err(err) => {
                            tracing::warn!(%err, "the container event stream ended");
                            break;
                        }
                    }
                }
            }
            Err(err) => tracing::debug!(%err, "not following container events"),
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

async fn on_event(manager: &SessionManager, event: ContainerEvent) {
    let change = match event {
        ContainerEvent::Started(id) => match manager.runtime().inspect(&id).await {
            Ok(Some(container)) => ContainerChange::Started(container),
            // Exited already, or the runtime went away: nothing to add.
            Ok(None) | Err(_) => return,
        },
        ContainerEvent::Died(id) => ContainerChange::Died(id),
        ContainerEvent::Destroyed(id) => ContainerChange::Destroyed(id),
    };
    manager.broadcast(&change);
}
