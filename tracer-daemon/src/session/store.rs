//! SQLite storage of sessions. One connection behind a mutex, used from tokio through
//! `spawn_blocking` so a query never blocks the async runtime's threads.
//!
//! Every session row is also kept in memory, written through: this daemon is the only user
//! of its data directory (it holds the directory's lock), so reads of one session (the
//! hottest request) never leave the async worker or touch SQLite. Writes go to SQLite first
//! and to the cache only once committed.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use rusqlite::{params, Connection, Row};
use uuid::Uuid;

use super::{
    model::{Counters, SessionRow, Status},
    spec::Target,
};
use crate::{
    data_dir::{open_read_only, open_writable},
    space::SpaceReserve,
    sync::lock,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("writing to the database: {0}")]
    Write(#[source] Arc<rusqlite::Error>),
    #[error("starting the store's writer thread: {0}")]
    WriterThread(#[source] std::io::Error),
    #[error("the store's writer has stopped")]
    WriterStopped,
}

/// The text `GET /v1/sessions?target=` matches against: the cgroup path or the pids.
fn target_text(target: &Target) -> String {
    if let Some(path) = &target.cgroup {
        return path.clone();
    }
    if let Some(pids) = &target.pids {
        return pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
    }
    target.container.clone().unwrap_or_default()
}

const COLUMNS: &str = "id, tenant, name, status, request, duplicate_key, created_at, updated_at, \
    started_at, stopped_at, runs, backend_in_use, backend_reason, finished_reason, error, \
    matched, delivered, dropped, exported, evicted, restricted, spooled, export_failed, \
    late_joins, late_join_delay_us, late_join_max_delay_us";

fn conversion_error(
    column: usize,
    err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, err.into())
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    let id: String = row.get(0)?;
    let status: String = row.get(3)?;
    let request: String = row.get(4)?;
    Ok(SessionRow {
        id: Uuid::parse_str(&id).map_err(|err| conversion_error(0, err))?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        status: Status::parse(&status)
            .ok_or_else(|| conversion_error(3, format!("unknown status {status}")))?,
        request: serde_json::from_str(&request).map_err(|err| conversion_error(4, err))?,
        request_text: request,
        duplicate_key: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
        started_at: row.get(8)?,
        stopped_at: row.get(9)?,
        runs: row.get(10)?,
        backend_in_use: row.get(11)?,
        backend_reason: row.get(12)?,
        finished_reason: row.get(13)?,
        error: row.get(14)?,
        counters: Counters {
            matched: row.get::<_, i64>(15)? as u64,
            delivered: row.get::<_, i64>(16)? as u64,
            dropped: row.get::<_, i64>(17)? as u64,
            exported: row.get::<_, i64>(18)? as u64,
            evicted: row.get::<_, i64>(19)? as u64,
            spooled: row.get::<_, i64>(21)? as u64,
            export_failed: row.get::<_, i64>(22)? as u64,
            late_joins: row.get::<_, i64>(23)? as u64,
            late_join_delay_us: row.get::<_, i64>(24)? as u64,
            late_join_max_delay_us: row.get::<_, i64>(25)? as u64,
        },
        restricted: row.get(20)?,
    })
}

/// What `GET /v1/sessions` asks for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only this tenant's sessions; `None` for all (admin).
    pub tenant: Option<String>,
    pub status: Option<Status>,
    pub name: Option<String>,
    /// Matches a cgroup path or a pid within the target.
    pub target: Option<String>,
    pub limit: u32,
    /// Continue after this session (a page token).
    pub after: Option<Uuid>,
}

/// A change to the sessions table.
enum Write {
    Insert(Box<SessionRow>),
    Save(Box<SessionRow>),
    SaveCounters(Vec<(Uuid, Counters)>),
    Delete(Uuid),
}

struct WriteRequest {
    write: Write,
    done: tokio::sync::oneshot::Sender<Result<(), Arc<rusqlite::Error>>>,
}

#[derive(Clone)]
pub struct Store {
    /// For listing and recovery; the writer thread owns the other connection.
    reader: Arc<Mutex<Connection>>,
    writes: tokio::sync::mpsc::UnboundedSender<WriteRequest>,
    cache: Arc<RwLock<HashMap<Uuid, SessionRow>>>,
}

impl Store {
    /// Opens the store on `db` (the writer's connection; a second one is opened for reads),
    /// loading every session into memory.
    /// On a full disk its writer releases the reserve and tries again (see [`FullDisk`]).
    pub fn new(db: Connection, full_disk: Option<FullDisk>) -> Result<Self, StoreError> {
        let rows = db
            .prepare(&format!("SELECT {COLUMNS} FROM sessions"))?
            .query_map([], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let cache: Arc<RwLock<HashMap<Uuid, SessionRow>>> = Arc::new(RwLock::new(
            rows.into_iter().map(|row| (row.id, row)).collect(),
        ));
        let read_only = full_disk.as_ref().and_then(|full| full.reopen.clone());
        let reader = match (db.path(), &read_only) {
            (_, Some(path)) => open_read_only(path)?,
            (Some(path), None) if !path.is_empty() => Connection::open(path)?,
            // An in-memory database has one connection only.
            _ => Connection::open_in_memory()?,
        };
        let reader = Arc::new(Mutex::new(reader));
        let (writes, requests) = tokio::sync::mpsc::unbounded_channel();
        let writer = Writer {
            db,
            read_only,
            reader: reader.clone(),
            cache: cache.clone(),
            reserve: full_disk.map(|full| full.reserve),
        };
        std::thread::Builder::new()
            .name("tracerd-store".into())
            .spawn(move || writer.run(requests))
            .map_err(StoreError::WriterThread)?;
        Ok(Self {
            reader,
            writes,
            cache,
        })
    }

    fn cached(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, SessionRow>> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a read on the reader connection on a blocking thread.
    async fn with_db<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.reader.clone();
        tokio::task::spawn_blocking(move || query(&lock(&db))).await?
    }

    /// Hands a change to the writer thread and waits until it is committed.
    async fn write(&self, write: Write) -> Result<(), StoreError> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.writes
            .send(WriteRequest { write, done })
            .map_err(|_| StoreError::WriterStopped)?;
        committed
            .await
            .map_err(|_| StoreError::WriterStopped)?
            .map_err(StoreError::Write)
    }

    pub async fn insert(&self, session: SessionRow) -> Result<(), StoreError> {
        self.write(Write::Insert(Box::new(session))).await
    }

    /// Writes every field that changes over a session's life.
    pub async fn save(&self, session: SessionRow) -> Result<(), StoreError> {
        self.write(Write::Save(Box::new(session))).await
    }

    /// Saves the counters of several running sessions.
    pub async fn save_counters(&self, counters: Vec<(Uuid, Counters)>) -> Result<(), StoreError> {
        if counters.is_empty() {
            return Ok(());
        }
        self.write(Write::SaveCounters(counters)).await
    }

    /// The session, from memory.
    pub async fn get(&self, id: Uuid) -> Result<Option<SessionRow>, StoreError> {
        Ok(self.cached().get(&id).cloned())
    }

    pub async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        self.write(Write::Delete(id)).await
    }

    /// A page of sessions in creation order, and whether more follow.
    pub async fn list(&self, query: ListQuery) -> Result<(Vec<SessionRow>, bool), StoreError> {
        self.with_db(move |db| {
            let mut sql = format!("SELECT {COLUMNS} FROM sessions WHERE 1 = 1");
            let mut values: Vec<String> = Vec::new();
            let mut bind = |sql: &mut String, clause: &str, value: String| {
                values.push(value);
                sql.push_str(&clause.replace('?', &format!("?{}", values.len())));
            };
            if let Some(tenant) = query.tenant {
                bind(&mut sql, " AND tenant = ?", tenant);
            }
            if let Some(status) = query.status {
                bind(&mut sql, " AND status = ?", status.as_str().to_owned());
            }
            if let Some(name) = query.name {
                bind(&mut sql, " AND name = ?", name);
            }
            if let Some(target) = query.target {
                // The whole cgroup path, or one pid of the comma-separated list (both `?` are
                // the same bound value).
                bind(
                    &mut sql,
                    " AND (target_text = ? OR ',' || target_text || ',' LIKE '%,' || ? || ',%')",
                    target,
                );
            }
            if let Some(after) = query.after {
                let key = after.to_string();
                values.push(key);
                let n = values.len();
                sql.push_str(&format!(
                    " AND (created_at, id) > (SELECT created_at, id FROM sessions WHERE id = ?{n})"
                ));
            }
            sql.push_str(&format!(
                " ORDER BY created_at, id LIMIT {}",
                query.limit + 1
            ));
            let mut statement = db.prepare_cached(&sql)?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(values.iter()), from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let mut sessions = rows;
            let more = sessions.len() > query.limit as usize;
            sessions.truncate(query.limit as usize);
            Ok((sessions, more))
        })
        .await
    }

    /// Every session with `status`.
    pub async fn with_status(&self, status: Status) -> Result<Vec<SessionRow>, StoreError> {
        self.with_db(move |db| {
            Ok(db
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM sessions WHERE status = ?1 ORDER BY created_at"
                ))?
                .query_map([status.as_str()], from_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// How many sessions there are in each status.
    pub async fn count_by_status(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let mut counts: HashMap<Status, u64> = HashMap::new();
        for row in self.cached().values() {
            *counts.entry(row.status).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }
}

impl StoreError {
    /// Whether the database could not be written for want of disk space.
    pub fn is_disk_full(&self) -> bool {
        let code = match self {
            StoreError::Sqlite(err) => err.sqlite_error_code(),
            StoreError::Write(err) => err.sqlite_error_code(),
            _ => None,
        };
        code == Some(rusqlite::ErrorCode::DiskFull)
    }
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
struct Writer {
    db: Connection,
    /// The database's path while it is open read-only.
    read_only: Option<PathBuf>,
    /// The readers' connection, replaced when the database becomes writable.
    reader: Arc<Mutex<Connection>>,
    cache: Arc<RwLock<HashMap<Uuid, SessionRow>>>,
    reserve: Option<Arc<SpaceReserve>>,
}

impl Writer {
    /// Applies every change queued at that moment in one transaction (group commit), each in
    /// its own savepoint so one failure does not undo the others, then updates the cache and
    /// answers each caller.
    fn run(mut self, mut requests: tokio::sync::mpsc::UnboundedReceiver<WriteRequest>) {
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
            Ok(())
        }
    }
}

fn insert(db: &Connection, session: &SessionRow) -> rusqlite::Result<()> {
    db.prepare_cached(&format!(
        "INSERT INTO sessions ({COLUMNS}, target_text) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?23, ?24, ?25, ?26, ?27, ?22)"
    ))?
    .execute(params![
        session.id.to_string(),
        session.tenant,
        session.name,
        session.status.as_str(),
        session.request_text,
        session.duplicate_key,
        session.created_at,
        session.updated_at,
        session.started_at,
        session.stopped_at,
        session.runs,
        session.backend_in_use,
        session.backend_reason,
        session.finished_reason,
        session.error,
        session.counters.matched as i64,
        session.counters.delivered as i64,
        session.counters.dropped as i64,
        session.counters.exported as i64,
        session.counters.evicted as i64,
        session.restricted,
        target_text(&session.request.target),
        session.counters.spooled as i64,
        session.counters.export_failed as i64,
        session.counters.late_joins as i64,
        session.counters.late_join_delay_us as i64,
        session.counters.late_join_max_delay_us as i64,
    ])?;
    Ok(())
}

fn save(db: &Connection, session: &SessionRow) -> rusqlite::Result<()> {
    db.prepare_cached(
        "UPDATE sessions SET status = ?2, updated_at = ?3, started_at = ?4, stopped_at = ?5, runs = ?6, \
         backend_in_use = ?7, backend_reason = ?8, finished_reason = ?9, error = ?10, \
         matched = ?11, delivered = ?12, dropped = ?13, exported = ?14, evicted = ?15, \
         spooled = ?16, export_failed = ?17, late_joins = ?18, late_join_delay_us = ?19, \
         late_join_max_delay_us = ?20 WHERE id = ?1",
    )?
    .execute(params![
        session.id.to_string(),
        session.status.as_str(),
        session.updated_at,
        session.started_at,
        session.stopped_at,
        session.runs,
        session.backend_in_use,
        session.backend_reason,
        session.finished_reason,
        session.error,
        session.counters.matched as i64,
        session.counters.delivered as i64,
        session.counters.dropped as i64,
        session.counters.exported as i64,
        session.counters.evicted as i64,
        session.counters.spooled as i64,
        session.counters.export_failed as i64,
        session.counters.late_joins as i64,
        session.counters.late_join_delay_us as i64,
        session.counters.late_join_max_delay_us as i64,
    ])?;
    Ok(())
}

fn save_counters(db: &Connection, counters: &[(Uuid, Counters)]) -> rusqlite::Result<()> {
    let mut update = db.prepare_cached(
        "UPDATE sessions SET matched = ?2, delivered = ?3, dropped = ?4, exported = ?5, evicted = ?6, \
         spooled = ?7, export_failed = ?8, late_joins = ?9, late_join_delay_us = ?10, \
         late_join_max_delay_us = ?11 WHERE id = ?1 AND status = 'running'",
    )?;
    for (id, c) in counters {
        update.execute(params![
            id.to_string(),
            c.matched as i64,
            c.delivered as i64,
            c.dropped as i64,
            c.exported as i64,
            c.evicted as i64,
            c.spooled as i64,
            c.export_failed as i64,
            c.late_joins as i64,
            c.late_join_delay_us as i64,
            c.late_join_max_delay_us as i64,
        ])?;
    }
    Ok(())
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
    }
}
