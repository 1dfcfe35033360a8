//! Following the container runtime: every start, exit and removal of a container goes to
//! every session's actor, which adds or drops it if its run follows containers.
use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;

use super::{actor::ContainerChange, lifecycle::SessionManager};
use crate::{containers::ContainerEvent, record::clock::now_rfc3339};

/// How long to wait before subscribing again after the runtime went away.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

/// Follows the runtime's container events for as long as the daemon runs, subscribing
/// again whenever the runtime goes away. Every (re)subscription is followed by a list of what
/// runs now, so what changed while the runtime was away (a restarted engine starts its
/// containers, in new cgroups, before it answers) is not missed; while it is away, container
/// sessions say so.
pub async fn follow_containers(manager: Arc<SessionManager>) {
    let mut away_since: Option<String> = None;
    loop {
        if let Ok(mut events) = manager.runtime().events().await {
            // Subscribed first: whatever happens after the list is in the stream.
            match manager.runtime().running().await {
                Ok(running) => {
                    if away_since.take().is_some() {
                        tracing::info!("the container runtime is back");
                    }
                    manager.broadcast(&ContainerChange::Resync(Arc::new(running)));
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
                Err(err) => tracing::debug!(%err, "the container runtime does not answer"),
            }
        }
        if away_since.is_none() {
            let since = now_rfc3339();
            tracing::warn!("the container runtime is away: trying again every 2 s");
            manager.broadcast(&ContainerChange::RuntimeLost(since.clone()));
            away_since = Some(since);
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
