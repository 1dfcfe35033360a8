//! `GET /v1/sessions/{id}/stream`: a session's events over a WebSocket, the transport of the
//! web UI and of `tracerctl`'s live view.
//!
//! Server → client, JSON text frames:
//! - first `{"type": "state", "session": {…}}` (the session resource);
//! - `{"type": "events", "events": [ … ], "last_seq": N, "lag": n}` at most every 100 ms or
//!   1,000 events (`lag`: events recorded but not yet sent to this client);
//! - `{"type": "gap", "gap": n}` when events the client asked for were evicted;
//! - last `{"type": "end", "reason": "…"}`, then a close.
//!
//! Client → server: `{"type": "pause"}`, `{"type": "resume"}`, and `{"type": "filter",
//! "syscall": "openat,connect", "pid": 1234, "comm": "nginx", "failed": true}` (every field
//! optional; the new filters apply from the next event on). A paused client is not sent
//! anything; it only lags, like any slow follower.
use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::StreamExt as _;

use axum::{
    extract::{
        ws::{rejection::WebSocketUpgradeRejection, Message, WebSocket, WebSocketUpgrade},
        State,
    },
    http::header,
    response::Response,
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

use super::{
    cluster::{cluster_of, merged, ClusterEvents},
    error::{ApiError, ApiQuery, SessionId},
    event_query::{event_filter, EventParams},
    AppState,
};
use crate::{
    cluster::Cluster,
    session::Principal,
    sink::{event_filter::EventFilter, follow::Followed},
};

/// A frame holds at most this many events...
const FRAME_EVENTS: usize = 1000;
/// ...and waits at most this long for more.
const FRAME_INTERVAL: Duration = Duration::from_millis(100);

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/sessions/{id}/stream", axum::routing::get(stream))
}

/// Follow a session's events over a WebSocket (see the module docs for the frames). The
/// token is checked at the upgrade: an `Authorization` header, or `?token=` for browsers,
/// which cannot set headers on a WebSocket.
#[utoipa::path(get, path = "/v1/sessions/{id}/stream",
    params(("id" = Uuid, Path, description = "session id"), EventParams),
    tag = "sessions",
    responses((status = 101, description = "WebSocket of event frames"), (status = 400),
              (status = 401), (status = 404)))]
pub async fn stream(
    State(state): State<AppState>,
    SessionId(id): SessionId,
    ApiQuery(params): ApiQuery<EventParams>,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(
            "websocket_required",
            format!(
                "this is a WebSocket endpoint: {} (GET /v1/sessions/{{id}}/events downloads \
                 the same events over plain HTTP)",
                rejection.body_text()
            ),
        )
    })?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| params.token.as_ref().map(|token| format!("Bearer {token}")));
    let principal = state.auth.principal(authorization.as_deref())?;
    let filter = event_filter(&params)?;
    let node = params.node.clone();
    // Checked before the upgrade: a session the caller may not see is a plain 404.
    let cluster = cluster_of(&state, id).await?.cloned();
    if cluster.is_none() && node.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "node: only cluster sessions have parts on nodes",
        ));
    }
    let session = match &cluster {
        Some(cluster) => cluster.get(&principal, id).await?,
        None => state.manager.get(&principal, id).await?,
    };
    let first = json!({"type": "state", "session": session}).to_string();
    // A cluster session's other parts are read from their nodes with the caller's token.
    let mut forwarded = axum::http::HeaderMap::new();
    if let Some(value) = authorization.and_then(|text| text.parse().ok()) {
        forwarded.insert(header::AUTHORIZATION, value);
    }
    Ok(upgrade.on_upgrade(move |socket| async move {
        let mut connection = Connection {
            state,
            principal,
            id,
            filter,
            socket,
            cluster,
            forwarded,
            node,
        };
        connection.serve(first).await;
    }))
}

struct Connection {
    state: AppState,
    principal: Principal,
    id: Uuid,
    filter: EventFilter,
    socket: WebSocket,
    /// Set for a cluster session: its parts' events are merged from every node.
    cluster: Option<Arc<Cluster>>,
    /// What other nodes are sent: the caller's token.
    forwarded: axum::http::HeaderMap,
    /// A cluster session: only this node's part.
    node: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Pause,
    Resume,
    Filter {
        syscall: Option<String>,
        pid: Option<u32>,
        comm: Option<String>,
        failed: Option<bool>,
    },
}

/// What is waiting to go out in the next frame.
#[derive(Default)]
struct Frame {
    /// The events' JSON, comma-separated.
    events: Vec<u8>,
    count: usize,
    last_seq: u64,
    /// A cluster session's last `seq` per node (each part numbers its own events).
    last_by_node: HashMap<String, u64>,
    /// Events recorded after the last one taken, as the follower last said.
    lag: u64,
}

impl Frame {
    /// Adds `lines`; frames that reached [`FRAME_EVENTS`] go to `full`.
    fn add(&mut self, lines: &Bytes, full: &mut Vec<String>) {
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if self.count > 0 {
                self.events.push(b',');
            }
            self.events.extend_from_slice(line);
            self.count += 1;
            if let Some(Seq { seq, node }) = seq_of(line) {
                self.last_seq = seq;
                if let Some(node) = node {
                    self.last_by_node.insert(node, seq);
                }
            }
            if self.count == FRAME_EVENTS {
                full.extend(self.take());
            }
        }
    }

    fn take(&mut self) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        let events = String::from_utf8_lossy(&self.events);
        let text = format!(
            r#"{{"type":"events","last_seq":{},"lag":{},"events":[{events}]}}"#,
            self.last_seq, self.lag
        );
        self.events.clear();
        self.count = 0;
        Some(text)
    }
}

#[derive(Deserialize)]
struct Seq {
    seq: u64,
    /// A cluster session's events say which node's part they are.
    node: Option<String>,
}

fn seq_of(line: &[u8]) -> Option<Seq> {
    serde_json::from_slice::<Seq>(line).ok()
}

impl Connection {
    async fn serve(&mut self, first: String) {
        if self.socket.send(Message::Text(first.into())).await.is_err() {
            return;
        }
        let Some((mut follower, mut events)) = self.follow(None).await else {
            return;
        };
        let mut frame = Frame::default();
        let mut paused = false;
        let mut tick = tokio::time::interval(FRAME_INTERVAL);
        let reason = loop {
            tokio::select! {
                followed = events.recv(), if !paused => match followed {
                    Some(Followed::Lines(lines)) => {
                        let mut full = Vec::new();
                        frame.add(&lines, &mut full);
                        for text in full {
                            if self.socket.send(Message::Text(text.into())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Followed::Lag(lag)) => frame.lag = lag,
                    Some(Followed::Gap(gap)) => {
                        if !self.flush(&mut frame).await || !self.send(json!({"type": "gap", "gap": gap})).await {
                            break None;
                        }
                    }
                    Some(Followed::End) | None => break Some("the session is not running"),
                },
                _ = tick.tick() => {
                    if !self.flush(&mut frame).await {
                        break None;
                    }
                }
                message = self.socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::Pause) => paused = true,
                        Ok(ClientMessage::Resume) => paused = false,
                        Ok(ClientMessage::Filter { syscall, pid, comm, failed }) => {
                            // Events already taken go out under the old filters; the new
                            // follower starts after them.
                            if !self.flush(&mut frame).await {
                                break None;
                            }
                            follower.abort();
                            self.filter.syscalls = syscall.map(|names| split_names(&names));
                            self.filter.pid = pid;
                            self.filter.comm = comm;
                            self.filter.failed = failed.unwrap_or(false);
                            let Some(next) = self.follow(Some(&frame)).await else {
                                return;
                            };
                            (follower, events) = next;
                        }
                        Err(err) => {
                            let error = json!({"type": "error", "message": format!("unknown message: {err}")});
                            if !self.send(error).await {
                                break None;
                            }
                        }
                    },
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                    Some(Ok(_)) => {}
                },
            }
        };
        follower.abort();
        if let Some(reason) = reason {
            if self.flush(&mut frame).await {
                let _ = self.send(json!({"type": "end", "reason": reason})).await;
                let _ = self.socket.send(Message::Close(None)).await;
            }
        }
    }

    /// Starts a follower after what `sent` has taken (or from the request's `after_seq`).
    async fn follow(
        &mut self,
        sent: Option<&Frame>,
    ) -> Option<(JoinHandle<()>, mpsc::Receiver<Followed>)> {
        if let Some(cluster) = self.cluster.clone() {
            return self.follow_cluster(&cluster, sent).await;
        }
        let mut filter = self.filter.clone();
        if let Some(after) = sent.map(|frame| frame.last_seq).filter(|&seq| seq > 0) {
            filter.after_seq = Some(after);
        }
        let follower = match self
            .state
            .manager
            .follower(&self.principal, self.id, filter)
            .await
        {
            Ok(follower) => follower,
            Err(err) => {
                let _ = self
                    .send(json!({"type": "end", "reason": err.to_string()}))
                    .await;
                return None;
            }
        };
        let (out, events) = mpsc::channel(16);
        Some((tokio::spawn(follower.run(out)), events))
    }

    /// A cluster session's parts, merged from every node (each part resumed after its own
    /// last `seq` that `sent` has taken).
    async fn follow_cluster(
        &mut self,
        cluster: &Arc<Cluster>,
        sent: Option<&Frame>,
    ) -> Option<(JoinHandle<()>, mpsc::Receiver<Followed>)> {
        let asked = ClusterEvents {
            principal: &self.principal,
            id: self.id,
            filter: self.filter.clone(),
            follow: true,
            node: self.node.clone(),
            after: sent
                .map(|frame| frame.last_by_node.clone())
                .unwrap_or_default(),
            headers: &self.forwarded,
        };
        let mut lines = match merged(&self.state, cluster, asked).await {
            Ok(lines) => lines,
            Err(err) => {
                let reason = err.message().to_owned();
                let _ = self.send(json!({"type": "end", "reason": reason})).await;
                return None;
            }
        };
        let (out, events) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            while let Some(chunk) = lines.next().await {
                if out.send(Followed::Lines(chunk)).await.is_err() {
                    return;
                }
            }
            let _ = out.send(Followed::End).await;
        });
        Some((task, events))
    }

    async fn flush(&mut self, frame: &mut Frame) -> bool {
        match frame.take() {
            Some(text) => self.socket.send(Message::Text(text.into())).await.is_ok(),
            None => true,
        }
    }

    async fn send(&mut self, value: serde_json::Value) -> bool {
        self.socket
            .send(Message::Text(value.to_string().into()))
            .await
            .is_ok()
    }
}

fn split_names(names: &str) -> Vec<String> {
    names
        .split(',')
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}
