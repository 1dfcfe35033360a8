//! The REST API: shared state and the router.
use std::sync::{Arc, Mutex};

use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};

use crate::{
    engine::{Engine, SessionHandle},
    lock,
    tally::CgroupTally,
};

/// State every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub tally: Arc<Mutex<CgroupTally>>,
    /// The session tracing the `--trace-cgroup` cgroups, if any.
    pub startup_session: Option<Arc<SessionHandle>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/tally", get(tally))
        .with_state(state)
}

/// Liveness: the daemon answers and its kernel programs are attached.
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "backend": "ebpf",
        "program_ids": state.engine.program_ids(),
    }))
}

/// What the start-up session has received, per cgroup and syscall, with its counters and
/// the kernel's totals: a diagnostic view until sessions have their own API.
async fn tally(State(state): State<AppState>) -> Json<Value> {
    let counters = state
        .startup_session
        .as_ref()
        .and_then(|session| state.engine.counters(session).ok());
    let kernel = state.engine.kernel_counters().ok();
    let cgroups = lock(&state.tally).snapshot();
    Json(json!({ "cgroups": cgroups, "counters": counters, "kernel": kernel }))
}
