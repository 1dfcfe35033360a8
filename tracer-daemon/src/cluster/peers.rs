//! Other nodes' APIs, for their parts' events: a cluster session's events are each node's
//! part's own log (they are never copied into etcd), read from that node with the caller's
//! own token (every node has the same tokens file), each line carrying its `node`.
use std::{pin::Pin, time::Duration};

use crate::sink::event_filter::EventFilter;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use uuid::Uuid;

/// Marks a request one node makes of another, so a node named in `node=` that is not the
/// one answering is an error rather than another hop.
pub const HOP_HEADER: &str = "x-tracerd-peer";

pub type Lines = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

pub struct Peers {
    /// For downloads: a node silent for a minute is given up on.
    downloads: reqwest::Client,
    /// For follows, which are silent while their part records nothing: no read timeout;
    /// TCP keep-alives find a peer that went away.
    follows: reqwest::Client,
}

impl Peers {
    pub fn new() -> Self {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .tcp_keepalive(Duration::from_secs(15))
        };
        Self {
            downloads: builder()
                .read_timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            follows: builder().build().unwrap_or_default(),
        }
    }

    /// `node`'s part of session `id`, from its API at `api`, with the query `query` and
    /// the caller's `authorization`. What cannot be read ends the part with one line saying
    /// why.
    pub fn events(
        &self,
        api: &str,
        id: Uuid,
        node: &str,
        query: &[(&'static str, String)],
        authorization: Option<&str>,
        follow: bool,
    ) -> Lines {
        let client = if follow {
            &self.follows
        } else {
            &self.downloads
        };
        let url = format!("{}/v1/sessions/{id}/events", api.trim_end_matches('/'));
        let mut request = client
            .get(url)
            .query(&[("node", node)])
            .query(query)
            .header(HOP_HEADER, "1");
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let node = node.to_owned();
        let stream = async move {
            let response = match request.send().await {
                Ok(response) if response.status().is_success() => response,
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return unavailable(&node, &format!("{status}: {}", body.trim())).boxed();
                }
                Err(err) => return unavailable(&node, &err.to_string()).boxed(),
            };
            let node_for_error = node.clone();
            whole_lines(
                response.bytes_stream().map(move |chunk| {
                    chunk.map_err(|err| format!("reading node `{node_for_error}`'s events: {err}"))
                }),
                node,
            )
            .boxed()
        };
        futures_util::stream::once(stream).flatten().boxed()
    }
}

/// The query that asks a node for its part's events with `filter` (`after`: its own last
/// `seq` already seen, if any).
pub fn query(
    filter: &EventFilter,
    follow: bool,
    after: Option<u64>,
) -> Vec<(&'static str, String)> {
    let time = |ns: i128| {
        time::OffsetDateTime::from_unix_timestamp_nanos(ns)
            .ok()
            .and_then(|at| {
                at.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    };
    let mut query = Vec::new();
    if follow {
        query.push(("follow", "true".to_owned()));
    }
    if let Some(after) = after.or(filter.after_seq) {
        query.push(("after_seq", after.to_string()));
    }
    if let Some(since) = filter.since_unix_ns.and_then(time) {
        query.push(("since", since));
    }
    if let Some(until) = filter.until_unix_ns.and_then(time) {
        query.push(("until", until));
    }
    if let Some(syscalls) = &filter.syscalls {
        query.push(("syscall", syscalls.join(",")));
    }
    if let Some(pid) = filter.pid {
        query.push(("pid", pid.to_string()));
    }
    if let Some(comm) = &filter.comm {
        query.push(("comm", comm.clone()));
    }
    if filter.failed {
        query.push(("failed", "true".to_owned()));
    }
    query
}

impl Default for Peers {
    fn default() -> Self {
        Self::new()
    }
}

/// A line saying a node's events could not be read.
pub fn unavailable(node: &str, why: &str) -> impl Stream<Item = Bytes> + Send + 'static {
    let line = serde_json::json!({ "node": node, "unavailable": why }).to_string() + "\n";
    futures_util::stream::iter([Bytes::from(line)])
}

/// Re-chunks a byte stream at line ends, so lines of several nodes can be interleaved;
/// an error ends it with an `unavailable` line.
fn whole_lines(
    chunks: impl Stream<Item = Result<Bytes, String>> + Send + 'static,
    node: String,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let state = (Box::pin(chunks), BytesMut::new(), false);
    futures_util::stream::unfold(state, move |(mut chunks, mut pending, done)| {
        let node = node.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match chunks.next().await {
                    Some(Ok(chunk)) => {
                        pending.extend_from_slice(&chunk);
                        if let Some(end) = pending.iter().rposition(|byte| *byte == b'\n') {
                            let lines = pending.split_to(end + 1).freeze();
                            return Some((lines, (chunks, pending, false)));
                        }
                    }
                    Some(Err(why)) => {
                        let line = serde_json::json!({ "node": node, "unavailable": why })
                            .to_string()
                            + "\n";
                        return Some((Bytes::from(line), (chunks, pending, true)));
                    }
                    None => {
                        // A last line without its newline is still a line.
                        if pending.is_empty() {
                            return None;
                        }
                        pending.extend_from_slice(b"\n");
                        let lines = pending.split().freeze();
                        return Some((lines, (chunks, pending, true)));
                    }
                }
            }
        }
    })
}

/// Each line of `lines` (whole JSON objects, one per line) with `"node":"<node>"` first.
pub fn with_node(lines: &[u8], node: &str) -> Bytes {
    let field = format!("{{\"node\":{},", serde_json::Value::from(node));
    let mut out = BytesMut::with_capacity(lines.len() + lines.len() / 8);
    for line in lines.split_inclusive(|byte| *byte == b'\n') {
        match line.strip_prefix(b"{") {
            Some(rest) if rest.first() != Some(&b'}') => {
                out.extend_from_slice(field.as_bytes());
                out.extend_from_slice(rest);
            }
            _ => out.extend_from_slice(line),
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_line_gets_its_node_first() {
        let lines = b"{\"seq\":1,\"syscall\":\"getppid\"}\n{\"gap\":3}\n";
        let out = with_node(lines, "b");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\"node\":\"b\",\"seq\":1,\"syscall\":\"getppid\"}\n{\"node\":\"b\",\"gap\":3}\n"
        );
    }

    #[tokio::test]
    async fn chunks_split_mid_line_come_out_as_whole_lines() {
        let chunks = futures_util::stream::iter([
            Ok(Bytes::from_static(b"{\"a\":1}\n{\"a\"")),
            Ok(Bytes::from_static(b":2}\n{\"a\":3}")),
            Err("reset".to_owned()),
        ]);
        let out: Vec<Bytes> = whole_lines(chunks, "b".into()).collect().await;
        let text: Vec<&str> = out
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect();
        assert_eq!(
            text,
            [
                "{\"a\":1}\n",
                "{\"a\":2}\n",
                "{\"node\":\"b\",\"unavailable\":\"reset\"}\n"
            ]
        );
    }
}
