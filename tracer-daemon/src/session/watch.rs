//! When a run ends by itself: its TTL passes, its event limit is reached, its targets are
//! gone, or its launched container exits. One future per run, polled by its actor.
use std::{sync::Arc, time::Duration};

use futures_util::{future::BoxFuture, FutureExt as _};
use tokio::{sync::oneshot, time::Instant};

use super::{model::Status, resolve::Presence};
use crate::containers::ContainerRuntime;

/// How often a cgroup or pid target is checked for being gone.
const PRESENCE_CHECK: Duration = Duration::from_millis(500);

/// Why a run ended by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub status: Status,
    pub reason: String,
}

impl Ending {
    fn finished(reason: &str) -> Self {
        Self {
            status: Status::Finished,
            reason: reason.to_owned(),
        }
    }

    fn failed(reason: String) -> Self {
        Self {
            status: Status::Failed,
            reason,
        }
    }
}

/// Resolves when the run should end by itself; never, for a run that only ends when told.
pub fn run_ending(
    ttl: Option<Duration>,
    presence: Presence,
    limit_reached: oneshot::Receiver<()>,
    runtime: Arc<dyn ContainerRuntime>,
) -> BoxFuture<'static, Ending> {
    let deadline = ttl.map(|ttl| Instant::now() + ttl);
    async move {
        let limit = async {
            // A writer that ends without reaching the limit drops its sender: not an ending.
            match limit_reached.await {
                Ok(()) => Ending::finished("max_events"),
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            ending = limit => ending,
            ending = targets_ending(deadline, &presence, runtime.as_ref()) => ending,
        }
    }
    .boxed()
}

async fn targets_ending(
    deadline: Option<Instant>,
    presence: &Presence,
    runtime: &dyn ContainerRuntime,
) -> Ending {
    if let Presence::Launched(container) = presence {
        return tokio::select! {
            () = sleep_until(deadline) => {
                runtime.kill(container).await;
                Ending::finished("ttl")
            }
            exit = runtime.wait(container) => match exit {
                Ok(0) => Ending::finished("exited"),
                Ok(code) => Ending::failed(format!("the launched container exited with code {code}")),
                Err(err) => Ending::failed(format!("waiting for the launched container: {err}")),
            },
        };
    }
    // The target was resolved just now: the first check is one period away.
    let mut check = tokio::time::interval_at(Instant::now() + PRESENCE_CHECK, PRESENCE_CHECK);
    loop {
        tokio::select! {
            () = sleep_until(deadline) => return Ending::finished("ttl"),
            _ = check.tick() => {
                if presence.all_gone().await {
                    return Ending::finished("targets_gone");
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
