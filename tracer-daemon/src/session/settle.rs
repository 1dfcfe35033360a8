//! Runs a daemon died during, settled before their sessions resume: `matched` from what the
//! kernel counted to the end (the dead daemon's pinned counters, read here), `delivered`
//! from what the event log holds, and `dropped` the rest (lost in the kernel, behind the
//! consumer, or read from the ring but never written). So `delivered + dropped == matched`
//! holds exactly after a crash, and `delivered` agrees with the log.
use crate::{backend::ebpf::pinned, sink::eventlog};

use super::{
    context::Context,
    error::SessionError,
    model::{Counters, Status},
    store::LiveRun,
};

/// What settling found.
#[derive(Debug, Default)]
pub struct Settled {
    pub settled: usize,
    /// Pinned counters of runs that could not be settled now (a full disk): kept for a later
    /// start.
    pub kept_pins: Vec<String>,
}

/// Settles every run left live by a daemon that died. One that cannot be settled now (its
/// log unreadable, the database not writable) is logged and kept for the next start: the
/// daemon starts all the same.
pub async fn settle_crashed_runs(ctx: &Context) -> Result<Settled, SessionError> {
    let mut outcome = Settled::default();
    for run in ctx.store.live_runs().await? {
        match settle(ctx, &run).await {
            Ok(()) => outcome.settled += 1,
            Err(err) => {
                tracing::warn!(session = %run.session, %err, "a run the previous daemon died during cannot be settled now; trying again at the next start");
                outcome.kept_pins.extend(run.pinned_counters);
            }
        }
    }
    Ok(outcome)
}

async fn settle(ctx: &Context, run: &LiveRun) -> Result<(), SessionError> {
    let row = ctx.store.get(run.session).await?;
    // Gone, or ended with its final counters saved (the daemon died between saving them and
    // forgetting the run): nothing to settle.
    let Some(mut row) = row.filter(|row| row.status == Status::Running) else {
        ctx.store.end_run(run.session).await?;
        return Ok(());
    };
    let dir = ctx.session_dir(run.session);
    let recorded = tokio::task::spawn_blocking(move || eventlog::recorded_events(&dir))
        .await?
        .map_err(|source| SessionError::EventLog {
            path: ctx.session_dir(run.session),
            source,
        })?;
    let kernel = match (&run.pinned_counters, run.slot) {
        (Some(path), Some(slot)) => match pinned::read_slot(std::path::Path::new(path), slot) {
            Ok(counts) => Some(counts.matched),
            Err(err) => {
                tracing::warn!(session = %run.session, %err, "the dead daemon's kernel counters are gone (a reboot?): matched is as last saved");
                None
            }
        },
        // ftrace, or no bpffs: matched is as last saved (up to a quarter second short).
        _ => None,
    };
    row.counters = settled(row.counters, run.base, recorded, kernel);
    tracing::info!(session = %run.session, counters = ?row.counters, from_kernel = kernel.is_some(),
        "counters of a run the previous daemon died during are settled");
    ctx.store.save(row).await?;
    ctx.store.end_run(run.session).await?;
    Ok(())
}

/// The session's counters after a run that died: `saved` (as last saved while it ran),
/// `base` (when it began), `recorded` (events in its log over all runs), and `kernel_matched`
/// (what the kernel matched for the run, to the end, if known).
fn settled(
    saved: Counters,
    base: Counters,
    recorded: u64,
    kernel_matched: Option<u64>,
) -> Counters {
    let delivered = recorded.max(base.delivered);
    let matched = kernel_matched
        .map_or(saved.matched, |matched| base.matched + matched)
        .max(delivered);
    Counters {
        matched,
        delivered,
        dropped: matched - delivered,
        ..saved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(matched: u64, delivered: u64, dropped: u64) -> Counters {
        Counters {
            matched,
            delivered,
            dropped,
            ..Counters::default()
        }
    }

    #[test]
    fn the_kernel_count_and_the_log_settle_a_run_exactly() {
        // Before the run: 100 matched, 90 delivered. Saved last while it ran: 1,100 / 900.
        // The kernel matched 5,000 in the run; the log holds 3,090 events in all.
        let after = settled(
            counters(1_100, 900, 200),
            counters(100, 90, 10),
            3_090,
            Some(5_000),
        );
        assert_eq!(after, counters(5_100, 3_090, 2_010));
        // Without the kernel's count (ftrace): matched as saved, never below the log.
        let after = settled(
            counters(1_100, 900, 200),
            counters(100, 90, 10),
            3_090,
            None,
        );
        assert_eq!(after, counters(3_090, 3_090, 0));
        let after = settled(
            counters(5_000, 900, 200),
            counters(100, 90, 10),
            3_090,
            None,
        );
        assert_eq!(after, counters(5_000, 3_090, 1_910));
    }
}
