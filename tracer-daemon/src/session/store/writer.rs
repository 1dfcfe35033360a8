//! The store's writer thread: every change goes through it, in batches (group commit), with
//! the room kept for the database on a full disk, and a read-only start made writable again
//! once it can be.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use rusqlite::Connection;
use uuid::Uuid;

use super::rows::{begin_run, end_run, insert, save, save_counters, LiveRun};
use crate::{
    data_dir::open_writable,
    session::model::{Counters, SessionRow, Status},
    space::SpaceReserve,
    sync::lock,
};

/// A change to the sessions table.
pub(super) enum Write {
    Insert(Box<SessionRow>),
    Save(Box<SessionRow>),
    SaveCounters(Vec<(Uuid, Counters)>),
    Delete(Uuid),
    /// A run began: what settling its counters after a crash needs.
    BeginRun(Box<LiveRun>),
    /// A run ended (its counters are saved).
    EndRun(Uuid),
}

pub(super) struct WriteRequest {
    pub(super) write: Write,
    pub(super) done: tokio::sync::oneshot::Sender<Result<(), Arc<rusqlite::Error>>>,
}

/// How the store copes with a full disk.
pub struct FullDisk {
    /// Released (and the write tried again) when a write fails for want of space.
    pub reserve: Arc<SpaceReserve>,
    /// Set when the database could only be opened read-only: every write is refused (as a
    /// full disk) until it can be opened for writing again, which each write tries first.
    pub reopen: Option<PathBuf>,
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) db: Connection,
    /// The database's path while it is open read-only.
    pub(super) read_only: Option<PathBuf>,
    /// The readers' connection, replaced when the database becomes writable.
    pub(super) reader: Arc<Mutex<Connection>>,
    pub(super) cache: Arc<RwLock<HashMap<Uuid, SessionRow>>>,
    pub(super) reserve: Option<Arc<SpaceReserve>>,
}

impl Writer {
    /// Applies every change queued at that moment in one transaction (group commit), each in
    /// its own savepoint so one failure does not undo the others, then updates the cache and
    /// answers each caller.
    pub(super) fn run(mut self, mut requests: tokio::sync::mpsc::UnboundedReceiver<WriteRequest>) {
        const MAX_BATCH: usize = 256;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while requests
            .blocking_recv()
            .map(|first| batch.push(first))
            .is_some()
        {
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let results = self.apply(&batch);
            let committed = results.is_ok();
            let mut cache = self
                .cache
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let outcomes = results.unwrap_or_else(|err| vec![Err(err); batch.len()]);
            for (request, outcome) in batch.drain(..).zip(outcomes) {
                if committed && outcome.is_ok() {
                    update_cache(&mut cache, request.write);
                }
                let _ = request.done.send(outcome);
            }
        }
    }

    /// Applies a batch: with the reserve's room if the disk is full, not at all while the
    /// database cannot be written.
    fn apply(&mut self, batch: &[WriteRequest]) -> Outcome<Vec<Outcome<()>>> {
        if !self.writable() {
            return Err(Arc::new(disk_full_error()));
        }
        let writes: Vec<&Write> = batch.iter().map(|request| &request.write).collect();
        let results = apply_batch(&mut self.db, &writes);
        if out_of_space(&results) && self.reserve.as_deref().is_some_and(SpaceReserve::release) {
            return retry(&mut self.db, &writes, results);
        }
        results
    }

    /// Whether the database can be written, reopening it for writing if it was read-only.
    fn writable(&mut self) -> bool {
        let Some(path) = &self.read_only else {
            return true;
        };
        let (Ok(writable), Ok(reader)) = (open_writable(path), Connection::open(path)) else {
            return false;
        };
        self.db = writable;
        *lock(&self.reader) = reader;
        self.read_only = None;
        tracing::info!("the database is writable again");
        true
    }
}

/// What SQLite says when the disk is full.
fn disk_full_error() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
        Some("the database is read-only until the disk has room".into()),
    )
}

/// Whether a batch, or a change in it, failed because the disk is full.
fn out_of_space(results: &Outcome<Vec<Outcome<()>>>) -> bool {
    let full =
        |err: &rusqlite::Error| err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
    match results {
        Ok(outcomes) => outcomes.iter().any(|o| o.as_ref().is_err_and(|e| full(e))),
        Err(err) => full(err),
    }
}

/// The outcome of one change, or of a whole batch (shared by every change it lost).
type Outcome<T> = Result<T, Arc<rusqlite::Error>>;

/// One transaction for the batch; the outcome of each change, or the error that lost them
/// all (the commit failed).
fn apply_batch(db: &mut Connection, writes: &[&Write]) -> Outcome<Vec<Outcome<()>>> {
    let mut tx = db.transaction()?;
    let mut outcomes = Vec::with_capacity(writes.len());
    for write in writes {
        let mut savepoint = tx.savepoint()?;
        match apply(&savepoint, write) {
            Ok(()) => {
                savepoint.commit()?;
                outcomes.push(Ok(()));
            }
            Err(err) => {
                savepoint.rollback()?;
                outcomes.push(Err(Arc::new(err)));
            }
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Applies again what `first` did not commit (all of it if the commit failed, else the
/// changes that failed).
fn retry(
    db: &mut Connection,
    writes: &[&Write],
    first: Outcome<Vec<Outcome<()>>>,
) -> Outcome<Vec<Outcome<()>>> {
    let Ok(mut outcomes) = first else {
        return apply_batch(db, writes);
    };
    let failed: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].is_err())
        .collect();
    let again: Vec<&Write> = failed.iter().map(|&i| writes[i]).collect();
    if let Ok(retried) = apply_batch(db, &again) {
        for (i, outcome) in failed.into_iter().zip(retried) {
            outcomes[i] = outcome;
        }
    }
    Ok(outcomes)
}

fn apply(db: &Connection, write: &Write) -> rusqlite::Result<()> {
    match write {
        Write::Insert(session) => insert(db, session),
        Write::Save(session) => save(db, session),
        Write::SaveCounters(counters) => save_counters(db, counters),
        Write::Delete(id) => {
            db.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                .execute([id.to_string()])?;
            end_run(db, *id)
        }
        Write::BeginRun(run) => begin_run(db, run),
        Write::EndRun(id) => end_run(db, *id),
    }
}

fn update_cache(cache: &mut HashMap<Uuid, SessionRow>, write: Write) {
    match write {
        Write::Insert(session) | Write::Save(session) => {
            cache.insert(session.id, *session);
        }
        Write::SaveCounters(counters) => {
            for (id, counters) in counters {
                // Only a running session's: a run that ended has its final counters saved.
                if let Some(row) = cache
                    .get_mut(&id)
                    .filter(|row| row.status == Status::Running)
                {
                    row.counters = counters;
                }
            }
        }
        Write::Delete(id) => {
            cache.remove(&id);
        }
        Write::BeginRun(_) | Write::EndRun(_) => {}
    }
}
