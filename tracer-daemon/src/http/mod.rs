//! The REST API: shared state, the router, and the operational endpoints.
pub mod auth;
mod cluster;
pub mod error;
mod event_query;
mod openapi;
pub mod serve;
mod sessions;
mod stream;
pub mod tls;
mod ui;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use utoipa::OpenApi;

use self::{auth::Auth, error::ApiError};
use crate::{
    backend::{Engine, SessionHandle},
    metrics,
    session::{Principal, SessionManager},
    sync::lock,
    tally::CgroupTally,
};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// State every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub manager: Arc<SessionManager>,
    pub auth: Auth,
    /// Set once recovery of running sessions is done.
    pub ready: Arc<AtomicBool>,
    pub tally: Arc<Mutex<CgroupTally>>,
    /// The session tracing the `--trace-cgroup` cgroups, if any.
    pub startup_session: Option<Arc<SessionHandle>>,
    /// The data directory's space reserve (released: the disk is full).
    pub reserve: Arc<crate::space::SpaceReserve>,
    /// The cluster this node is part of (`--etcd`), if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl axum::extract::FromRef<AppState> for Auth {
    fn from_ref(state: &AppState) -> Auth {
        state.auth.clone()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "tracerd", description = "Per-node syscall tracing daemon for containers"),
    paths(
        sessions::create,
        sessions::list,
        sessions::read,
        sessions::start,
        sessions::stop,
        stream::stream,
        sessions::put_status,
        sessions::delete,
        sessions::events,
        cluster::nodes,
    ),
    tags((name = "sessions", description = "Tracing sessions"),
         (name = "cluster", description = "Nodes of a cluster (tracerd --etcd)"))
)]
struct ApiDoc;

/// The OpenAPI 3 document, generated from the handlers and types, with what the handlers
/// check besides (see [`openapi`]).
/// A single node's document says only what a single node accepts (no cluster sessions);
/// a cluster node's adds them.
pub fn openapi(cluster: bool) -> Value {
    static SINGLE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    static CLUSTER: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let document = if cluster { &CLUSTER } else { &SINGLE };
    document.get_or_init(|| openapi::document(cluster)).clone()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(sessions::router())
        .merge(stream::router())
        .merge(cluster::router())
        .merge(ui::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus_for_admin))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/tally", get(tally))
        .route("/v1/containers", get(containers))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Liveness: the daemon answers; which backends sessions can run on, and why not.
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    let status = |result: Result<(), &str>| match result {
        Ok(()) => json!({ "available": true }),
        Err(why) => json!({ "available": false, "reason": why }),
    };
    let engine = &state.engine;
    let default_backend = if engine.ebpf_status().is_ok() {
        "ebpf"
    } else {
        "ftrace"
    };
    // Alive either way (a liveness probe must not restart a daemon for a full disk), but
    // degraded when something does not record.
    let mut problems = Vec::new();
    if state.reserve.is_released() {
        problems.push(json!({
            "reason": "disk_full",
            "message": crate::session::SessionError::DiskFull.to_string(),
        }));
    }
    for (session, not_recording) in state.manager.not_recording() {
        problems.push(json!({
            "session": session,
            "reason": not_recording.reason,
            "message": not_recording.message,
        }));
    }
    Json(json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "problems": problems,
        "backend": default_backend,
        "backends": {
            "ebpf": status(engine.ebpf_status()),
            "ftrace": status(engine.ftrace_status()),
        },
        "program_ids": engine.program_ids(),
        "programs_attached": engine.programs_attached(),
        // Whether API calls need a bearer token (the web page asks for one up front).
        "auth": if state.auth.has_tokens() { "token" } else { "none" },
    }))
}

/// Readiness: sessions that were running before a restart run again.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting", "message": "resuming sessions that were running" })),
        )
    }
}

async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    Json(openapi(state.cluster.is_some()))
}

/// `/metrics` on the API: every tenant's session ids and counters, so for the admin only (or
/// on the `--metrics-listen` address, which [`metrics_router`] serves without a token).
async fn prometheus_for_admin(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(
        &principal,
        "metrics cover every tenant: they are for the admin (or scrape --metrics-listen)",
    )?;
    prometheus(State(state)).await
}

fn require_admin(principal: &Principal, why: &str) -> Result<(), ApiError> {
    if principal.admin {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why))
    }
}

/// What `--metrics-listen` serves: `/metrics` (and `/healthz`), without a token.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

async fn prometheus(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = metrics::render(&state.manager, &state.engine)
        .await
        .map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                err.to_string(),
            )
        })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

/// Running containers the caller may see, with their cgroup ids and the sessions tracing
/// each.
async fn containers(
    State(state): State<AppState>,
    principal: crate::session::Principal,
) -> Result<Json<Value>, ApiError> {
    let containers = state.manager.containers(&principal).await?;
    Ok(Json(json!({ "containers": containers })))
}

/// What the start-up session has received, per cgroup and syscall, with its counters and
/// the kernel's totals.
async fn tally(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    require_admin(
        &principal,
        "the node's tally covers every cgroup: it is for the admin",
    )?;
    // Kernel maps and tracefs files are read on the blocking pool.
    let (engine, session) = (state.engine.clone(), state.startup_session.clone());
    let (counters, kernel) = tokio::task::spawn_blocking(move || {
        let counters = session.and_then(|session| session.counters().ok());
        (counters, engine.kernel_counters().ok())
    })
    .await
    .unwrap_or_default();
    let cgroups = lock(&state.tally).snapshot();
    Ok(Json(
        json!({ "cgroups": cgroups, "counters": counters, "kernel": kernel }),
    ))
}
