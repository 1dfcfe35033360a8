//! `/v1/sessions`: create, list, read, start, stop, delete, and download events.
use std::convert::Infallible;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt as _;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    cluster::{cluster_of, ClusterEvents},
    error::{ApiError, ApiJson, ApiJsonVerbatim, ApiQuery, SessionId},
    event_query::{event_filter, EventParams},
    AppState,
};
use crate::{
    cluster::ClusterError,
    session::{
        model::{Session, Status},
        spec::{CreateSession, Scope},
        store::ListQuery,
        Principal,
    },
    sink::follow::Followed,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route(
            "/v1/sessions/{id}",
            get(read).put(put_status).delete(delete),
        )
        .route("/v1/sessions/{id}/start", post(start))
        .route("/v1/sessions/{id}/stop", post(stop))
        .route("/v1/sessions/{id}/events", get(events))
}

/// Create a session. Creating never starts tracing.
#[utoipa::path(post, path = "/v1/sessions", request_body = CreateSession, tag = "sessions",
    responses((status = 201, body = Session), (status = 400), (status = 403), (status = 409), (status = 422), (status = 503)))]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    request: ApiJsonVerbatim<CreateSession>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    let session = if request.value.scope == Scope::Cluster {
        let cluster = state.cluster.as_ref().ok_or(ClusterError::Disabled)?;
        cluster
            .create(&principal, request.value, request.text)
            .await?
    } else {
        state
            .manager
            .create(&principal, request.value, request.text)
            .await?
    };
    Ok((StatusCode::CREATED, Json(session)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only sessions in this status.
    status: Option<Status>,
    /// Only sessions with this name.
    name: Option<String>,
    /// Only sessions whose target is this cgroup path or includes this pid.
    target: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// The `next_page_token` of the previous page.
    page_token: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
struct SessionList {
    sessions: Vec<Session>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<Uuid>,
    /// Cluster mode: why cluster sessions are missing from the list (etcd is unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_unavailable: Option<String>,
}

/// List sessions (the caller's own; an admin sees all), oldest first: this node's, then (in
/// cluster mode) the cluster's.
#[utoipa::path(get, path = "/v1/sessions", params(ListParams), tag = "sessions",
    responses((status = 200, body = SessionList), (status = 400)))]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<SessionList>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be from 1 to 1000",
        ));
    }
    let mut list = SessionList {
        sessions: Vec::new(),
        next_page_token: None,
        cluster_unavailable: None,
    };
    let cluster_sessions = match &state.cluster {
        Some(cluster) => match cluster.list(&principal).await {
            Ok(sessions) => sessions,
            Err(err) => {
                list.cluster_unavailable = Some(err.to_string());
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    // A token naming a cluster session continues the cluster part of the list.
    let in_cluster = params
        .page_token
        .and_then(|token| cluster_sessions.iter().position(|s| s.id == token));
    if in_cluster.is_none() {
        let query = ListQuery {
            tenant: None,
            status: params.status,
            name: params.name.clone(),
            target: params.target.clone(),
            limit,
            after: params.page_token,
            parts: false,
        };
        let (sessions, more) = state.manager.list(&principal, query).await?;
        list.sessions = sessions;
        if more {
            list.next_page_token = list.sessions.last().map(|s| s.id);
            return Ok(Json(list));
        }
    }
    let first = in_cluster.map_or(0, |at| at + 1);
    let mut matching = cluster_sessions
        .into_iter()
        .skip(first)
        .filter(|session| lists(session, &params));
    let room = limit as usize - list.sessions.len();
    list.sessions.extend(matching.by_ref().take(room));
    if matching.next().is_some() {
        list.next_page_token = list.sessions.last().map(|s| s.id);
    }
    Ok(Json(list))
}

/// Whether a cluster session passes the list's filters.
fn lists(session: &Session, params: &ListParams) -> bool {
    let target = &session.target;
    params.status.is_none_or(|status| session.status == status)
        && params
            .name
            .as_ref()
            .is_none_or(|name| session.name == *name)
        && params.target.as_ref().is_none_or(|wanted| {
            target.cgroup.as_ref() == Some(wanted)
                || target.container.as_ref() == Some(wanted)
                || target
                    .pids
                    .iter()
                    .flatten()
                    .any(|pid| pid.to_string() == *wanted)
        })
}

/// A session with its live counters.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = Uuid, Path, description = "session id")),
    responses((status = 200, body = Session), (status = 400), (status = 404), (status = 503)))]
async fn read(
    State(state): State<AppState>,
    principal: Principal,
    SessionId(id): SessionId,
) -> Result<Json<Session>, ApiError> {
    if let Some(cluster) = cluster_of(&state, id).await? {
        return Ok(Json(cluster.get(&principal, id).await?));
    }
    Ok(Json(state.manager.get(&principal, id).await?))
}

/// Start a run: `created` or `stopped` → `running`.
#[utoipa::path(post, path = "/v1/sessions/{id}/start", tag = "sessions",
    params(("id" = Uuid, Path, description = "session id")),
    responses((status = 200, body = Session), (status = 404), (status = 409), (status = 422), (status = 503)))]
async fn start(
    State(state): State<AppState>,
    principal: Principal,
    SessionId(id): SessionId,
) -> Result<Json<Session>, ApiError> {
    if let Some(cluster) = cluster_of(&state, id).await? {
        return Ok(Json(cluster.start(&principal, id).await?));
    }
    Ok(Json(state.manager.start(&principal, id).await?))
}

/// Stop the run: `running` → `stopped`.
#[utoipa::path(post, path = "/v1/sessions/{id}/stop", tag = "sessions",
    params(("id" = Uuid, Path, description = "session id")),
    responses((status = 200, body = Session), (status = 404), (status = 409), (status = 503)))]
async fn stop(
    State(state): State<AppState>,
    principal: Principal,
    SessionId(id): SessionId,
) -> Result<Json<Session>, ApiError> {
    if let Some(cluster) = cluster_of(&state, id).await? {
        return Ok(Json(cluster.stop(&principal, id).await?));
    }
    Ok(Json(state.manager.stop(&principal, id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StatusChange {
    /// `running` or `stopped`.
    status: Status,
}

/// Start or stop, spelled as a status change.
#[utoipa::path(put, path = "/v1/sessions/{id}", request_body = StatusChange, tag = "sessions",
    params(("id" = Uuid, Path, description = "session id")),
    responses((status = 200, body = Session), (status = 404), (status = 409), (status = 422), (status = 503)))]
async fn put_status(
    State(state): State<AppState>,
    principal: Principal,
    SessionId(id): SessionId,
    ApiJson(change): ApiJson<StatusChange>,
) -> Result<Json<Session>, ApiError> {
    let cluster = cluster_of(&state, id).await?;
    let session = match (change.status, cluster) {
        (Status::Running, Some(cluster)) => cluster.start(&principal, id).await?,
        (Status::Stopped, Some(cluster)) => cluster.stop(&principal, id).await?,
        (Status::Running, None) => state.manager.start(&principal, id).await?,
        (Status::Stopped, None) => state.manager.stop(&principal, id).await?,
        (other, _) => {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!(
                    "status can be set to `running` or `stopped`, not `{}`",
                    other.as_str()
                ),
            ))
        }
    };
    Ok(Json(session))
}

/// Delete a session: stops it if it runs, releases its kernel objects, removes it and its
/// recorded events.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = Uuid, Path, description = "session id")),
    responses((status = 204), (status = 404), (status = 503)))]
async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    SessionId(id): SessionId,
) -> Result<StatusCode, ApiError> {
    match cluster_of(&state, id).await? {
        Some(cluster) => cluster.delete(&principal, id).await?,
        None => state.manager.delete(&principal, id).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The recorded events as NDJSON, oldest first, streamed; works while the session runs.
/// With `follow=true` the response stays open and sends each new event as it is recorded
/// until the session stops; `{"gap": n}` lines say how many events asked for were evicted.
#[utoipa::path(get, path = "/v1/sessions/{id}/events", params(("id" = Uuid, Path, description = "session id"), EventParams),
    tag = "sessions",
    responses((status = 200, content_type = "application/x-ndjson", description = "one JSON event per line"),
              (status = 400), (status = 404), (status = 503)))]
async fn events(
    State(state): State<AppState>,
    principal: Principal,
    SessionId(id): SessionId,
    ApiQuery(params): ApiQuery<EventParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if params.token.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "token: give the token in the Authorization header (only /stream takes it in the query)",
        ));
    }
    let filter = event_filter(&params)?;
    let follow = params.follow.unwrap_or(false);
    if let Some(cluster) = cluster_of(&state, id).await? {
        let asked = ClusterEvents {
            principal: &principal,
            id,
            filter,
            follow,
            node: params.node.clone(),
            after: std::collections::HashMap::new(),
            headers: &headers,
        };
        return super::cluster::events(&state, cluster, asked).await;
    }
    if params.node.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "node: only cluster sessions have parts on nodes",
        ));
    }
    let resuming = filter.after_seq.is_some();
    let mut follower = state.manager.follower(&principal, id, filter).await?;
    if !follow {
        // A download: what is recorded now, and no more.
        follower.live = None;
    }
    let (out, followed) = tokio::sync::mpsc::channel(8);
    tokio::spawn(follower.run(out));
    let body = tokio_stream::wrappers::ReceiverStream::new(followed).filter_map(move |item| {
        let bytes = match item {
            Followed::Lines(lines) => Some(lines),
            // Gaps are reported to clients that follow or resume; a plain download of an
            // evicted log is what it always was, its first events gone (and counted).
            Followed::Gap(gap) if follow || resuming => {
                Some(Bytes::from(format!("{{\"gap\":{gap}}}\n")))
            }
            Followed::Gap(_) | Followed::Lag(_) | Followed::End => None,
        };
        bytes.map(Ok::<_, Infallible>)
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}
