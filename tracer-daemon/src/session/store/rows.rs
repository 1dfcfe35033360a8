//! Session rows and their SQL: reading a row, inserting and saving one, and the runs in
//! progress.
use rusqlite::{params, Connection, Row, ToSql};
use uuid::Uuid;

use crate::session::{
    model::{Counters, SessionRow, Status},
    spec::Target,
};

/// The text `GET /v1/sessions?target=` matches against: the cgroup path or the pids.
pub(super) fn target_text(target: &Target) -> String {
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

/// The counters' columns, in [`counter_values`]' order.
const COUNTER_COLUMNS: [&str; 10] = [
    "matched",
    "delivered",
    "dropped",
    "exported",
    "evicted",
    "spooled",
    "export_failed",
    "late_joins",
    "late_join_delay_us",
    "late_join_max_delay_us",
];

/// A session's counters as SQLite stores them.
fn counter_values(c: &Counters) -> [i64; 10] {
    [
        c.matched,
        c.delivered,
        c.dropped,
        c.exported,
        c.evicted,
        c.spooled,
        c.export_failed,
        c.late_joins,
        c.late_join_delay_us,
        c.late_join_max_delay_us,
    ]
    .map(|value| value as i64)
}

/// The counters from the row's columns `first..first + 10`.
fn counters_at(row: &Row<'_>, first: usize) -> rusqlite::Result<Counters> {
    let value = |i: usize| row.get::<_, i64>(first + i).map(|value| value as u64);
    Ok(Counters {
        matched: value(0)?,
        delivered: value(1)?,
        dropped: value(2)?,
        exported: value(3)?,
        evicted: value(4)?,
        spooled: value(5)?,
        export_failed: value(6)?,
        late_joins: value(7)?,
        late_join_delay_us: value(8)?,
        late_join_max_delay_us: value(9)?,
    })
}

/// `a = ?n, b = ?n+1, …` for the counters, from parameter `first`.
fn counter_assignments(first: usize) -> String {
    COUNTER_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = ?{}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns that change over a session's life, in [`changing_values`]' order.
const CHANGING_COLUMNS: [&str; 9] = [
    "status",
    "updated_at",
    "started_at",
    "stopped_at",
    "runs",
    "backend_in_use",
    "backend_reason",
    "finished_reason",
    "error",
];

impl ToSql for Status {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

fn changing_values(session: &SessionRow) -> [&dyn ToSql; 9] {
    [
        &session.status,
        &session.updated_at,
        &session.started_at,
        &session.stopped_at,
        &session.runs,
        &session.backend_in_use,
        &session.backend_reason,
        &session.finished_reason,
        &session.error,
    ]
}

/// Every column a session row is read from: what never changes, what does, the counters.
pub(super) fn columns() -> String {
    format!(
        "id, tenant, name, request, duplicate_key, created_at, restricted, {}, {}",
        CHANGING_COLUMNS.join(", "),
        COUNTER_COLUMNS.join(", ")
    )
}

fn conversion_error(
    column: usize,
    err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, err.into())
}

pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    let id: String = row.get(0)?;
    let request: String = row.get(3)?;
    let status: String = row.get(7)?;
    Ok(SessionRow {
        id: Uuid::parse_str(&id).map_err(|err| conversion_error(0, err))?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        request: serde_json::from_str(&request).map_err(|err| conversion_error(3, err))?,
        request_text: request,
        duplicate_key: row.get(4)?,
        created_at: row.get(5)?,
        restricted: row.get(6)?,
        status: Status::parse(&status)
            .ok_or_else(|| conversion_error(7, format!("unknown status {status}")))?,
        updated_at: row.get(8)?,
        started_at: row.get(9)?,
        stopped_at: row.get(10)?,
        runs: row.get(11)?,
        backend_in_use: row.get(12)?,
        backend_reason: row.get(13)?,
        finished_reason: row.get(14)?,
        error: row.get(15)?,
        counters: counters_at(row, 16)?,
    })
}

/// Runs `sql` with `values`, then the session's changing values and counters if given.
fn execute(
    db: &Connection,
    sql: &str,
    values: &[&dyn ToSql],
    session: Option<&SessionRow>,
    counters: &Counters,
) -> rusqlite::Result<()> {
    let changing = session.map(changing_values);
    let counters = counter_values(counters);
    let all: Vec<&dyn ToSql> = values
        .iter()
        .copied()
        .chain(changing.into_iter().flatten())
        .chain(counters.iter().map(|value| value as &dyn ToSql))
        .collect();
    db.prepare_cached(sql)?.execute(all.as_slice())?;
    Ok(())
}

pub(super) fn insert(db: &Connection, session: &SessionRow) -> rusqlite::Result<()> {
    let placeholders: Vec<String> = (1..=27).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO sessions (target_text, {}) VALUES ({})",
        columns(),
        placeholders.join(", ")
    );
    let id = session.id.to_string();
    let target = target_text(&session.request.target);
    let fixed: [&dyn ToSql; 8] = [
        &target,
        &id,
        &session.tenant,
        &session.name,
        &session.request_text,
        &session.duplicate_key,
        &session.created_at,
        &session.restricted,
    ];
    execute(db, &sql, &fixed, Some(session), &session.counters)
}

pub(super) fn save(db: &Connection, session: &SessionRow) -> rusqlite::Result<()> {
    let assignments: Vec<String> = CHANGING_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = ?{}", i + 2))
        .collect();
    let sql = format!(
        "UPDATE sessions SET {}, {} WHERE id = ?1",
        assignments.join(", "),
        counter_assignments(2 + CHANGING_COLUMNS.len())
    );
    execute(
        db,
        &sql,
        &[&session.id.to_string()],
        Some(session),
        &session.counters,
    )
}

pub(super) fn save_counters(
    db: &Connection,
    counters: &[(Uuid, Counters)],
) -> rusqlite::Result<()> {
    let sql = format!(
        "UPDATE sessions SET {} WHERE id = ?1 AND status = 'running'",
        counter_assignments(2)
    );
    for (id, c) in counters {
        execute(db, &sql, &[&id.to_string()], None, c)?;
    }
    Ok(())
}

/// A run in progress, as the store keeps it for the daemon that starts after one died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveRun {
    pub session: Uuid,
    /// Where the daemon pinned its kernel counters, if it did.
    pub pinned_counters: Option<String>,
    /// The run's slot in them (eBPF runs).
    pub slot: Option<u32>,
    /// The session's counters when the run began.
    pub base: Counters,
}

pub(super) fn begin_run(db: &Connection, run: &LiveRun) -> rusqlite::Result<()> {
    let base = serde_json::to_string(&run.base).map_err(|err| conversion_error(3, err))?;
    db.prepare_cached(
        "INSERT OR REPLACE INTO live_runs (session, pinned_counters, slot, base) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![run.session.to_string(), run.pinned_counters, run.slot, base])?;
    Ok(())
}

pub(super) fn end_run(db: &Connection, session: Uuid) -> rusqlite::Result<()> {
    db.prepare_cached("DELETE FROM live_runs WHERE session = ?1")?
        .execute([session.to_string()])?;
    Ok(())
}

pub(super) fn live_runs(db: &Connection) -> rusqlite::Result<Vec<LiveRun>> {
    db.prepare("SELECT session, pinned_counters, slot, base FROM live_runs")?
        .query_map([], |row| {
            let session: String = row.get(0)?;
            let base: String = row.get(3)?;
            Ok(LiveRun {
                session: Uuid::parse_str(&session).map_err(|err| conversion_error(0, err))?,
                pinned_counters: row.get(1)?,
                slot: row.get(2)?,
                base: serde_json::from_str(&base).map_err(|err| conversion_error(3, err))?,
            })
        })?
        .collect()
}
