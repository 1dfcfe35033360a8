//! The query of `GET …/events` and `GET …/stream`: which events, from where.
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use crate::sink::event_filter::EventFilter;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events at or after this time (RFC 3339).
    since: Option<String>,
    /// Only events before this time (RFC 3339).
    until: Option<String>,
    /// Only these syscalls, comma-separated names.
    syscall: Option<String>,
    /// Only events after this sequence number (resume where a stream left off).
    after_seq: Option<u64>,
    /// Only this process.
    pid: Option<u32>,
    /// Only threads of this name.
    comm: Option<String>,
    /// Only calls that failed.
    failed: Option<bool>,
    /// Keep the response open and send new events as they are recorded, until the session
    /// stops (`/events` only).
    pub follow: Option<bool>,
    /// Cluster sessions: only this node's part (`/events` only).
    pub node: Option<String>,
    /// The bearer token, for clients that cannot set headers (`/stream` only: browsers'
    /// WebSockets).
    pub token: Option<String>,
}

/// The filter a request's query asks for.
pub fn event_filter(params: &EventParams) -> Result<EventFilter, ApiError> {
    Ok(EventFilter {
        after_seq: params.after_seq,
        since_unix_ns: params
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until_unix_ns: params
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
        syscalls: params.syscall.as_deref().map(|names| {
            names
                .split(',')
                .map(|name| name.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect()
        }),
        pid: params.pid,
        comm: params.comm.clone(),
        failed: params.failed.unwrap_or(false),
    })
}

fn parse_time(field: &'static str, text: &str) -> Result<i128, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(time::OffsetDateTime::unix_timestamp_nanos)
        .map_err(|err| {
            ApiError::bad_request(
                "invalid_query",
                format!("{field}: `{text}` is not an RFC 3339 time: {err}"),
            )
        })
}
