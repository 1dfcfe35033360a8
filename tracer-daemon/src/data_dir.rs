//! The daemon's data directory: an exclusive lock, so two daemons never share one, and the
//! SQLite database with its schema migrations.
use std::{
    fs::{self, File},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rusqlite::Connection;

use crate::space::SpaceReserve;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
/// Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: every start of the daemon, so operators (and restart recovery) can see restarts.
    "CREATE TABLE daemon_starts (
        started_at TEXT NOT NULL,
        pid INTEGER NOT NULL,
        version TEXT NOT NULL
    );",
    // 2: sessions. `request` is the create request exactly as received; `duplicate_key` is
    // the canonical target and filter, to refuse a second running copy.
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        target_text TEXT NOT NULL,
        duplicate_key TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        stopped_at TEXT,
        runs INTEGER NOT NULL DEFAULT 0,
        backend_in_use TEXT,
        backend_reason TEXT,
        finished_reason TEXT,
        error TEXT,
        matched INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        exported INTEGER NOT NULL DEFAULT 0,
        evicted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sessions_by_tenant ON sessions (tenant, created_at, id);
    CREATE INDEX sessions_by_status ON sessions (status);",
    // 3: sessions created by a tenant see only the containers that tenant owns.
    "ALTER TABLE sessions ADD COLUMN restricted INTEGER NOT NULL DEFAULT 0;",
    // 4: span export: spans that went through the spool, and spans that never will be sent.
    "ALTER TABLE sessions ADD COLUMN spooled INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE sessions ADD COLUMN export_failed INTEGER NOT NULL DEFAULT 0;",
    // 5: ftrace sessions: threads that joined a target cgroup and were traced late.
    "ALTER TABLE sessions ADD COLUMN late_joins INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE sessions ADD COLUMN late_join_delay_us INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE sessions ADD COLUMN late_join_max_delay_us INTEGER NOT NULL DEFAULT 0;",
    // 6: runs in progress, so a daemon that starts after one died can settle their counters:
    // where the dead daemon pinned its kernel counters, the run's slot in them, and the
    // session's counters when the run began (JSON).
    "CREATE TABLE live_runs (
        session TEXT PRIMARY KEY,
        pinned_counters TEXT,
        slot INTEGER,
        base TEXT NOT NULL
    );",
];

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("creating data directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {path} is in use by another tracerd (it holds {path}/tracerd.lock)")]
    Locked { path: PathBuf },
    #[error("opening the database {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the disk of {path} is full, and its database's write-ahead log holds changes a \
         read-only start would not see: free some space on it and start again"
    )]
    FullWithWal { path: PathBuf },
    #[error(
        "the database {path} has schema version {found}, newer than this tracerd knows ({known}); \
         run a newer tracerd or use another --data-dir"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
}

/// An open, locked data directory.
pub struct DataDir {
    path: PathBuf,
    db: Option<Connection>,
    /// The database could only be opened read-only (the disk is full).
    read_only: bool,
    reserve: Arc<SpaceReserve>,
    // Held for the process's lifetime; the kernel releases the flock when the process dies,
    // so a crashed daemon never leaves a stale lock behind.
    _lock: File,
}

impl DataDir {
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        let create_error = |source| DataDirError::Create {
            path: path.to_owned(),
            source,
        };
        fs::create_dir_all(path).map_err(create_error)?;
        let lock = File::create(path.join("tracerd.lock")).map_err(create_error)?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(DataDirError::Locked {
                path: path.to_owned(),
            });
        }
        let db_path = path.join("tracerd.db");
        let database_error = |source| DataDirError::Database {
            path: db_path.clone(),
            source,
        };
        let reserve = Arc::new(SpaceReserve::open(path));
        let mut db = match open_writable(&db_path) {
            Ok(db) => db,
            // Not a byte free (SQLite cannot even make its shared-memory file): serve what is
            // recorded, read-only, until space returns (see `Store`). Only if the write-ahead
            // log holds nothing: a read-only open would not see what it holds.
            Err(err) if reserve.is_full() && db_path.exists() && !has_wal(&db_path) => {
                tracing::warn!(%err, "the disk is full: the database is opened read-only until space returns");
                let db = open_read_only(&db_path).map_err(database_error)?;
                return Ok(Self {
                    path: path.to_owned(),
                    db: Some(db),
                    read_only: true,
                    reserve,
                    _lock: lock,
                });
            }
            Err(_) if reserve.is_full() => {
                return Err(DataDirError::FullWithWal {
                    path: path.to_owned(),
                })
            }
            Err(err) => return Err(database_error(err)),
        };
        // On a full disk: with the reserve's room, or not at all.
        if let Err(err) = migrate(&mut db, &db_path) {
            if !reserve.release() {
                return Err(err);
            }
            migrate(&mut db, &db_path)?;
        }
        let record_start = |db: &Connection| {
            db.execute(
                "INSERT INTO daemon_starts (started_at, pid, version) \
                 VALUES (strftime('%Y-%m-%dT%H:%M:%fZ'), ?1, ?2)",
                (std::process::id(), env!("CARGO_PKG_VERSION")),
            )
        };
        if let Err(err) = record_start(&db) {
            // A record for operators only: a full disk must not keep the daemon down.
            tracing::warn!(%err, "the daemon's start could not be recorded in the database");
        }
        Ok(Self {
            path: path.to_owned(),
            db: Some(db),
            read_only: false,
            reserve,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the database is open read-only for now (the disk was full at start).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The database's file.
    pub fn db_path(&self) -> PathBuf {
        self.path.join("tracerd.db")
    }

    /// The room kept for the database on a full disk.
    pub fn reserve(&self) -> Arc<SpaceReserve> {
        self.reserve.clone()
    }

    /// The database connection, for the store to own (once).
    pub fn take_db(&mut self) -> Option<Connection> {
        self.db.take()
    }
}

/// Whether the database's write-ahead log holds changes not yet in the database file.
fn has_wal(db_path: &Path) -> bool {
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    fs::metadata(wal).is_ok_and(|wal| wal.len() > 0)
}

/// Opens the database for writing, as tracerd uses it (write-ahead log).
pub fn open_writable(db_path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(db_path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(db)
}

/// Opens the database read-only without the shared-memory file WAL mode needs (`immutable`:
/// nobody writes it meanwhile, which the data directory's lock makes true).
pub fn open_read_only(db_path: &Path) -> rusqlite::Result<Connection> {
    // A URI: `%`, `?` and `#` in the path would be read as its syntax.
    let path = db_path
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    let uri = format!("file:{path}?immutable=1");
    Connection::open_with_flags(
        uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
}

fn migrate(db: &mut Connection, db_path: &Path) -> Result<(), DataDirError> {
    let database_error = |source| DataDirError::Database {
        path: db_path.to_owned(),
        source,
    };
    let applied: usize = db
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(database_error)?;
    if applied > MIGRATIONS.len() {
        return Err(DataDirError::TooNew {
            path: db_path.to_owned(),
            found: applied,
            known: MIGRATIONS.len(),
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = db.transaction().map_err(database_error)?;
        tx.execute_batch(migration).map_err(database_error)?;
        tx.pragma_update(None, "user_version", index + 1)
            .map_err(database_error)?;
        tx.commit().map_err(database_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tracerd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn opens_migrates_and_records_the_start() {
        let dir = temp_dir("data-dir-open");
        let mut data = DataDir::open(&dir).unwrap();
        let db = data.take_db().unwrap();
        let version: usize = db
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let starts: i64 = db
            .query_row("SELECT count(*) FROM daemon_starts", [], |row| row.get(0))
            .unwrap();
        assert_eq!(starts, 1);
        drop((db, data));
        // Reopening migrates nothing and records a second start.
        let mut data = DataDir::open(&dir).unwrap();
        let starts: i64 = data
            .take_db()
            .unwrap()
            .query_row("SELECT count(*) FROM daemon_starts", [], |row| row.get(0))
            .unwrap();
        assert_eq!(starts, 2);
        drop(data);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_daemon_on_the_same_directory_is_refused() {
        let dir = temp_dir("data-dir-lock");
        let _first = DataDir::open(&dir).unwrap();
        let second = DataDir::open(&dir);
        assert!(matches!(second, Err(DataDirError::Locked { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_database_from_a_newer_tracerd_is_refused() {
        let dir = temp_dir("data-dir-newer");
        fs::create_dir_all(&dir).unwrap();
        let db = Connection::open(dir.join("tracerd.db")).unwrap();
        db.pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .unwrap();
        drop(db);
        assert!(matches!(
            DataDir::open(&dir),
            Err(DataDirError::TooNew { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
