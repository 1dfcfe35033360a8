//! Cluster mode on the API: `GET /v1/nodes`, and cluster sessions' events merged from every
//! node that has a part (the other session operations go through [`crate::cluster::Cluster`]
//! from the session handlers).
use std::{collections::HashMap, convert::Infallible, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use futures_util::{stream, StreamExt as _};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{error::ApiError, AppState};
use crate::{
    cluster::{
        peers::{self, Lines, HOP_HEADER},
        Cluster,
    },
    session::Principal,
    sink::{event_filter::EventFilter, follow::Followed},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/nodes", get(nodes))
}

/// The cluster's nodes: `ready` while their lease lives, `lost` after (cluster mode only).
#[utoipa::path(get, path = "/v1/nodes", tag = "cluster",
    responses((status = 200, description = "`{\"node\": this node, \"nodes\": [...]}`"), (status = 404), (status = 503)))]
pub(super) async fn nodes(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<Json<Value>, ApiError> {
    let cluster = state.cluster.as_ref().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "cluster_disabled",
            "this tracerd is a single node: start it with --etcd to join a cluster",
        )
    })?;
    let nodes = cluster.nodes().await?;
    Ok(Json(json!({ "node": cluster.node_name(), "nodes": nodes })))
}

/// The cluster if `id` is one of its sessions.
pub async fn cluster_of(state: &AppState, id: Uuid) -> Result<Option<&Arc<Cluster>>, ApiError> {
    match &state.cluster {
        Some(cluster) if cluster.is_cluster_session(id).await? => Ok(Some(cluster)),
        _ => Ok(None),
    }
}

/// What a cluster session's events request asks for.
pub struct ClusterEvents<'a> {
    pub principal: &'a Principal,
    pub id: Uuid,
    pub filter: EventFilter,
    pub follow: bool,
    /// Only this node's part.
    pub node: Option<String>,
    /// Per node, the last `seq` the caller has (a WebSocket that changes its filters).
    pub after: HashMap<String, u64>,
    pub headers: &'a HeaderMap,
}

/// A cluster session's events as NDJSON: this node's part from its own log, every other
/// node's from that node's API, each line with its `node`. A download gives the parts one
/// after the other (each in its own order, by node name); a follow interleaves them as they
/// come.
pub async fn events(
    state: &AppState,
    cluster: &Arc<Cluster>,
    asked: ClusterEvents<'_>,
) -> Result<Response, ApiError> {
    let merged = merged(state, cluster, asked).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(merged.map(Ok::<_, Infallible>)),
    )
        .into_response())
}

/// The parts' event lines, merged (see [`events`]).
pub async fn merged(
    state: &AppState,
    cluster: &Arc<Cluster>,
    asked: ClusterEvents<'_>,
) -> Result<Lines, ApiError> {
    let me = cluster.node_name().to_owned();
    if let Some(node) = &asked.node {
        if asked.headers.contains_key(HOP_HEADER) && *node != me {
            return Err(ApiError::bad_request(
                "wrong_node",
                format!("this is node `{me}`, not `{node}`: check that node's --node-address"),
            ));
        }
    }
    let mut sources = cluster.event_sources(asked.principal, asked.id).await?;
    if let Some(node) = &asked.node {
        sources.retain(|source| source.node == *node);
    }
    let authorization = asked
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut parts: Vec<Lines> = Vec::new();
    for source in sources {
        let node = source.node.as_str();
        let after = asked.after.get(node).copied();
        let part = if node == me {
            let mut filter = asked.filter.clone();
            filter.after_seq = after.or(filter.after_seq);
            local_part(state, asked.principal, asked.id, filter, asked.follow, &me).await?
        } else if !source.ready {
            peers::unavailable(node, "the node is lost (its lease expired)").boxed()
        } else if let Some(api) = &source.api {
            let query = peers::query(&asked.filter, asked.follow, after);
            let peers = cluster.peers();
            peers.events(
                api,
                asked.id,
                node,
                &query,
                authorization.as_deref(),
                asked.follow,
            )
        } else {
            peers::unavailable(node, "the node registered no API address (--node-address)").boxed()
        };
        parts.push(part);
    }
    Ok(if asked.follow {
        stream::select_all(parts).boxed()
    } else {
        stream::iter(parts).flatten().boxed()
    })
}

/// This node's part, from its event log, each line with `node`.
async fn local_part(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    filter: EventFilter,
    follow: bool,
    node: &str,
) -> Result<Lines, ApiError> {
    let resuming = filter.after_seq.is_some();
    let mut follower = state.manager.follower(principal, id, filter).await?;
    if !follow {
        follower.live = None;
    }
    let (out, followed) = tokio::sync::mpsc::channel(8);
    tokio::spawn(follower.run(out));
    let node = node.to_owned();
    Ok(tokio_stream::wrappers::ReceiverStream::new(followed)
        .filter_map(move |item| {
            let bytes = match item {
                Followed::Lines(lines) => Some(peers::with_node(&lines, &node)),
                Followed::Gap(gap) if follow || resuming => Some(Bytes::from(format!(
                    "{{\"node\":{},\"gap\":{gap}}}\n",
                    Value::from(node.as_str())
                ))),
                Followed::Gap(_) | Followed::Lag(_) | Followed::End => None,
            };
            std::future::ready(bytes)
        })
        .boxed())
}
