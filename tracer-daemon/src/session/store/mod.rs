//! SQLite storage of sessions. One connection behind a mutex, used from tokio through
//! `spawn_blocking` so a query never blocks the async runtime's threads.
//!
//! Every session row is also kept in memory, written through: this daemon is the only user
//! of its data directory (it holds the directory's lock), so reads of one session (the
//! hottest request) never leave the async worker or touch SQLite. Writes go to SQLite first
//! and to the cache only once committed ([`writer`]); rows and their SQL are in [`rows`].
mod rows;
mod writer;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use rusqlite::Connection;
use uuid::Uuid;

pub use self::{rows::LiveRun, writer::FullDisk};
use self::{
    rows::{columns, from_row},
    writer::{Write, WriteRequest, Writer},
};
use super::model::{Counters, SessionRow, Status};
use crate::{data_dir::open_read_only, sync::lock};

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
    /// Also this node's parts of cluster sessions (`GET /v1/sessions` shows the cluster
    /// sessions themselves instead).
    pub parts: bool,
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
            .prepare(&format!("SELECT {} FROM sessions", columns()))?
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

    /// Records a run that began (until [`Store::end_run`]).
    pub async fn begin_run(&self, run: LiveRun) -> Result<(), StoreError> {
        self.write(Write::BeginRun(Box::new(run))).await
    }

    pub async fn end_run(&self, session: Uuid) -> Result<(), StoreError> {
        self.write(Write::EndRun(session)).await
    }

    /// Runs that began and never ended: a daemon died during them.
    pub async fn live_runs(&self) -> Result<Vec<LiveRun>, StoreError> {
        self.with_db(|db| Ok(rows::live_runs(db)?)).await
    }

    /// A page of sessions in creation order, and whether more follow.
    pub async fn list(&self, query: ListQuery) -> Result<(Vec<SessionRow>, bool), StoreError> {
        self.with_db(move |db| {
            let mut sql = format!("SELECT {} FROM sessions WHERE 1 = 1", columns());
            let mut values: Vec<String> = Vec::new();
            let mut bind = |sql: &mut String, clause: &str, value: String| {
                values.push(value);
                sql.push_str(&clause.replace('?', &format!("?{}", values.len())));
            };
            if !query.parts {
                sql.push_str(" AND coalesce(json_extract(request, '$.scope'), 'local') = 'local'");
            }
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

    /// This node's parts of cluster sessions.
    pub fn cluster_parts(&self) -> Vec<SessionRow> {
        self.cached()
            .values()
            .filter(|row| row.request.scope == crate::session::spec::Scope::Cluster)
            .cloned()
            .collect()
    }

    /// Every session with `status`.
    pub async fn with_status(&self, status: Status) -> Result<Vec<SessionRow>, StoreError> {
        self.with_db(move |db| {
            Ok(db
                .prepare_cached(&format!(
                    "SELECT {} FROM sessions WHERE status = ?1 ORDER BY created_at",
                    columns()
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
