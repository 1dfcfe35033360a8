//! A session's actor: the one owner of its run. Every lifecycle change of a session (start,
//! stop, delete, the run ending by itself, a container joining or leaving) is a command on
//! its channel, handled one at a time, so they never race; other sessions and reads of the
//! store never wait for it.
//!
//! ```text
//!  SessionManager ──Start/Stop/Delete/Snapshot/Subscribe/Shutdown──▶ actor ──owns──▶ Run
//!  container follower ──Container(started/died/destroyed)──┘   └─ polls the run's ending
//! ```
use std::{ops::ControlFlow, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    context::{Context, Snapshot},
    error::SessionError,
    launch,
    model::{SessionRow, Status},
    run::{self, Run},
    spec::TargetKind,
    watch::Ending,
};
use crate::{containers::Container, record::clock::now_rfc3339, sink::follow::Subscription};

/// How often a running session's actor reads its counters for the store.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// What an actor is asked to do.
pub enum Command {
    /// Start a run: from `created` or `stopped`, or, with `resume`, a session that was
    /// running when the daemon last stopped.
    Start {
        resume: bool,
        reply: oneshot::Sender<Result<SessionRow, SessionError>>,
    },
    Stop {
        reply: oneshot::Sender<Result<SessionRow, SessionError>>,
    },
    /// Stop if running, then remove the session, its launched containers and its events.
    /// The actor ends.
    Delete {
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// End the run leaving the session `running` (so the next daemon resumes it). The actor
    /// ends.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// The run's live view, if it runs.
    Snapshot {
        reply: oneshot::Sender<Option<Snapshot>>,
    },
    /// A subscription to what the run records from now on, if it runs.
    Subscribe {
        reply: oneshot::Sender<Option<Subscription>>,
    },
    Container(ContainerChange),
}

/// A change in a container's life, as the follower tells every actor.
#[derive(Clone, Debug)]
pub enum ContainerChange {
    Started(Container),
    Died(String),
    Destroyed(String),
    /// The runtime's event stream ended, at this time (RFC 3339).
    RuntimeLost(String),
    /// Following (again): every container running now.
    Resync(Arc<Vec<Container>>),
}

/// The way to a session's actor. Cheap to clone.
#[derive(Clone)]
pub struct ActorHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl ActorHandle {
    /// Starts the actor of session `id`.
    pub fn spawn(ctx: Arc<Context>, id: Uuid) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let actor = Actor { ctx, id, run: None };
        tokio::spawn(actor.serve(receiver));
        Self { commands }
    }

    /// Sends a command and waits for its answer; `None` if the actor has ended.
    pub async fn call<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).ok()?;
        answer.await.ok()
    }

    /// Sends a command that has no answer; `false` if the actor has ended.
    pub fn tell(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }
}

struct Actor {
    ctx: Arc<Context>,
    id: Uuid,
    run: Option<Run>,
}

enum Next {
    Command(Option<Command>),
    Ending(Ending),
    Report,
}

impl Actor {
    async fn serve(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut report = tokio::time::interval(REPORT_INTERVAL);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let running = self.run.is_some();
            let next = tokio::select! {
                command = commands.recv() => Next::Command(command),
                ending = ending(&mut self.run) => Next::Ending(ending),
                _ = report.tick(), if running => Next::Report,
            };
            match next {
                Next::Command(Some(command)) => {
                    if self.handle(command).await.is_break() {
                        return;
                    }
                    if !running && self.run.is_some() {
                        // A run started: its first report is one period away.
                        report.reset();
                    }
                }
                Next::Ending(ending) => self.finish(ending).await,
                Next::Report => self.report().await,
                // Nobody can reach this session any more: leave it to resume next time.
                Next::Command(None) => break,
            }
        }
        if self.run.is_some() {
            if let Err(err) = self.end_run(None).await {
                tracing::error!(session = %self.id, %err, "ending the run failed");
            }
        }
    }

    async fn handle(&mut self, command: Command) -> ControlFlow<()> {
        match command {
            Command::Start { resume, reply } => {
                let _ = reply.send(self.start(resume).await);
            }
            Command::Stop { reply } => {
                let _ = reply.send(self.stop().await);
            }
            Command::Delete { reply } => {
                let deleted = self.delete().await;
                let done = deleted.is_ok();
                let _ = reply.send(deleted);
                if done {
                    return ControlFlow::Break(());
                }
            }
            Command::Shutdown { reply } => {
                if self.run.is_some() {
                    if let Err(err) = self.end_run(None).await {
                        tracing::error!(session = %self.id, %err, "ending the run at shutdown failed");
                    }
                }
                let _ = reply.send(());
                return ControlFlow::Break(());
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(self.snapshot().await);
            }
            Command::Subscribe { reply } => {
                let _ = reply.send(self.run.as_ref().map(Run::subscribe));
            }
            Command::Container(change) => self.container_changed(change).await,
        }
        ControlFlow::Continue(())
    }

    async fn row(&self) -> Result<SessionRow, SessionError> {
        self.ctx
            .store
            .get(self.id)
            .await?
            .ok_or(SessionError::NotFound(self.id))
    }

    async fn start(&mut self, resume: bool) -> Result<SessionRow, SessionError> {
        let row = self.row().await?;
        let may_start = if resume {
            row.status == Status::Running && self.run.is_none()
        } else {
            row.status.can_start()
        };
        if !may_start {
            return Err(SessionError::InvalidTransition {
                current: row.status,
                action: "started",
            });
        }
        self.ctx.running.claim(&row)?;
        match run::begin(&self.ctx, row).await {
            Ok((mut run, row)) => {
                run.catch_up(&self.ctx, self.id).await;
                self.ctx.report(
                    self.id,
                    Snapshot {
                        counters: Some(row.counters),
                        export_status: run.export_status(),
                        traced: run.traced(),
                        not_recording: run.not_recording(),
                        tenant: run.tenant.clone(),
                        cgroups: run.cgroups.clone(),
                    },
                );
                self.run = Some(run);
                Ok(row)
            }
            Err(err) => {
                self.ctx.running.release(self.id);
                Err(err)
            }
        }
    }

    async fn stop(&mut self) -> Result<SessionRow, SessionError> {
        let row = self.row().await?;
        if !row.status.can_stop() {
            return Err(SessionError::InvalidTransition {
                current: row.status,
                action: "stopped",
            });
        }
        self.end_run(Some((Status::Stopped, None))).await
    }

    async fn delete(&mut self) -> Result<(), SessionError> {
        let row = self.row().await?;
        if row.status == Status::Running {
            // The run ends (its kernel objects are released) even when its final state
            // cannot be saved: the session goes anyway.
            if let Err(err) = self.end_run(Some((Status::Stopped, None))).await {
                tracing::warn!(session = %self.id, %err, "saving the stopped session failed; deleting it all the same");
            }
        }
        // The events go first: on a full disk, that frees the space the database needs.
        let dir = self.ctx.session_dir(self.id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SessionError::EventLog { path: dir, source }),
        }
        self.ctx.store.delete(self.id).await?;
        if matches!(
            row.request.validate().map(|spec| spec.target),
            Ok(TargetKind::Launch(_))
        ) {
            if let Err(err) = self
                .ctx
                .runtime
                .remove_labelled(launch::SESSION_LABEL, &self.id.to_string())
                .await
            {
                tracing::warn!(session = %self.id, %err, "removing the session's launched containers failed");
            }
        }
        tracing::info!(session = %self.id, "session deleted");
        Ok(())
    }

    /// Ends the run, if there is one, and records `outcome` (a status and a reason); with no
    /// outcome the status stays `running` (shutdown: it resumes at the next start).
    async fn end_run(
        &mut self,
        outcome: Option<(Status, Option<String>)>,
    ) -> Result<SessionRow, SessionError> {
        let mut ended = None;
        if let Some(run) = self.run.take() {
            self.ctx.forget(self.id);
            ended = Some(run.end(&self.ctx, self.id).await);
            self.ctx.running.release(self.id);
        }
        let mut row = self.row().await?;
        if row.status != Status::Running {
            return Ok(row);
        }
        let had_run = ended.is_some();
        match ended {
            Some(Ok(counters)) => row.counters = counters,
            // The session must not stay stuck: it ends, and says its last counters may be short.
            Some(Err(err)) => {
                tracing::error!(session = %self.id, %err, "stopping the engine session failed");
                row.error = Some(format!(
                    "stopping the engine session failed: {err}; counters are as last saved"
                ));
            }
            None => {}
        }
        let now = now_rfc3339();
        row.updated_at = now.clone();
        if let Some((status, reason)) = outcome {
            row.status = status;
            row.stopped_at = Some(now);
            match status {
                Status::Failed => row.error = reason,
                _ => row.finished_reason = reason,
            }
        }
        self.ctx.store.save(row.clone()).await?;
        if had_run {
            self.ctx.store.end_run(self.id).await?;
        }
        tracing::info!(session = %self.id, status = row.status.as_str(), counters = ?row.counters, "session run ended");
        Ok(row)
    }

    /// The run ended by itself (TTL, event limit, targets gone, launched container exited).
    async fn finish(&mut self, ending: Ending) {
        tracing::info!(session = %self.id, status = ending.status.as_str(), reason = %ending.reason, "session ended by itself");
        if let Err(err) = self
            .end_run(Some((ending.status, Some(ending.reason))))
            .await
        {
            tracing::error!(session = %self.id, %err, "ending the session failed");
        }
    }

    /// Publishes the run's view: what the store saves, and what readers see while the actor
    /// is busy.
    async fn report(&self) {
        if let Some(snapshot) = self.snapshot().await {
            self.ctx.report(self.id, snapshot);
        }
    }

    async fn snapshot(&self) -> Option<Snapshot> {
        let run = self.run.as_ref()?;
        let counters = match run.counters().await {
            Ok(counters) => Some(counters),
            Err(err) => {
                tracing::warn!(session = %self.id, %err, "reading the session's counters failed");
                None
            }
        };
        Some(Snapshot {
            counters,
            export_status: run.export_status(),
            traced: run.traced(),
            not_recording: run.not_recording(),
            tenant: run.tenant.clone(),
            cgroups: run.cgroups.clone(),
        })
    }

    async fn container_changed(&mut self, change: ContainerChange) {
        let Some(run) = &mut self.run else {
            return;
        };
        match change {
            ContainerChange::Started(container) => {
                run.container_started(self.id, &container, &self.ctx.options.owner_label)
                    .await;
            }
            ContainerChange::Died(container) => run.container_died(self.id, &container).await,
            ContainerChange::RuntimeLost(since) => {
                run.runtime_lost(&since);
                self.report().await;
            }
            ContainerChange::Resync(running) => {
                run.resync(self.id, &running, &self.ctx.options.owner_label)
                    .await;
                self.report().await;
            }
            ContainerChange::Destroyed(container) => {
                // Gone for good only if no running container matches either.
                if run.container_destroyed(&container) && !run.still_matched(&self.ctx).await {
                    self.finish(Ending {
                        status: Status::Finished,
                        reason: "targets_gone".into(),
                    })
                    .await;
                }
            }
        }
    }
}

/// Resolves when the run (if any) ends by itself.
async fn ending(run: &mut Option<Run>) -> Ending {
    match run {
        Some(run) => run.ending.get_mut().await,
        None => std::future::pending().await,
    }
}
