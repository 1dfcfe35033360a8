//! Session rows and their SQL: reading a row, inserting and saving one, and the runs in
//! progress.
use rusqlite::{params, Connection, Row};
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

pub(super) const COLUMNS: &str =
    "id, tenant, name, status, request, duplicate_key, created_at, updated_at, \
    started_at, stopped_at, runs, backend_in_use, backend_reason, finished_reason, error, \
    matched, delivered, dropped, exported, evicted, restricted, spooled, export_failed, \
    late_joins, late_join_delay_us, late_join_max_delay_us";

fn conversion_error(
    column: usize,
    err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, err.into())
}

pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
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

pub(super) fn insert(db: &Connection, session: &SessionRow) -> rusqlite::Result<()> {
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

pub(super) fn save(db: &Connection, session: &SessionRow) -> rusqlite::Result<()> {
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

pub(super) fn save_counters(
    db: &Connection,
    counters: &[(Uuid, Counters)],
) -> rusqlite::Result<()> {
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
