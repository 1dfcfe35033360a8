//! The REST API: shared state and the router.
use std::sync::{Arc, Mutex};

use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};

use crate::{ebpf::EbpfBackend, tally::CgroupTally};

/// State every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<Mutex<EbpfBackend>>,
    pub tally: Arc<Mutex<CgroupTally>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/tally", get(tally))
        .with_state(state)
}

/// Liveness: the daemon answers and its kernel programs are attached.
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    let program_ids = lock(&state.backend).program_ids();
    Json(json!({
        "status": "ok",
        "backend": "ebpf",
        "program_ids": program_ids,
    }))
}

/// What the kernel has sent so far, per traced cgroup and syscall, with the kernel's own
/// counters: a diagnostic view until sessions carry their own counters.
async fn tally(State(state): State<AppState>) -> Json<Value> {
    let kernel = lock(&state.backend).counters().ok();
    let cgroups = lock(&state.tally).snapshot();
    Json(json!({ "kernel": kernel, "cgroups": cgroups }))
}

/// Locks a mutex, recovering from poisoning: a panicking holder cannot leave these values
/// half-updated in a way that matters more than keeping the API up.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
