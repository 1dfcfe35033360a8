//! API errors: one enum, each variant with its HTTP status, every body
//! `{"error": "<code>", "message": "...", ...}`. Internal errors are logged once and answered
//! with a generic message.
use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        FromRequest, FromRequestParts, Request,
    },
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{cluster::ClusterError, session::SessionError};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    /// What went wrong, as the body's `message` says it.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    fn body_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is larger than the limit of {} bytes",
                super::MAX_BODY_BYTES
            ),
        )
    }

    fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error answering a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the daemon's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "message": self.message });
        if let (Some(Value::Object(extra)), Value::Object(body)) = (self.extra, &mut body) {
            body.extend(extra);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        let message = err.to_string();
        match err {
            SessionError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            SessionError::InvalidTransition { current, .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_transition", message)
                    .with(json!({ "status": current }))
            }
            SessionError::Duplicate { id, name } => {
                Self::new(StatusCode::CONFLICT, "duplicate_session", message)
                    .with(json!({ "running": { "id": id, "name": name } }))
            }
            SessionError::Invalid(invalid) => Self::unprocessable("invalid_field", invalid.message)
                .with(json!({ "field": invalid.field })),
            SessionError::ContainerRejected { field, message } => {
                Self::unprocessable("invalid_field", message).with(json!({ "field": field }))
            }
            SessionError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            SessionError::Target(_) => Self::unprocessable("target_unavailable", message),
            SessionError::NoMatchingContainer { close, .. } => {
                let message = if close.is_empty() {
                    message
                } else {
                    format!(
                        "{message}; running containers with close names: {}",
                        close.join(", ")
                    )
                };
                Self::unprocessable("no_matching_container", message)
                    .with(json!({ "close_names": close }))
            }
            SessionError::ContainersUnavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "docker_unavailable",
                message,
            ),
            SessionError::BackendUnavailable { .. } => {
                Self::unprocessable("backend_unavailable", message)
            }
            SessionError::ForeignPids(_) => Self::unprocessable("host_pids_unavailable", message),
            SessionError::NoCapacity => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", message)
            }
            SessionError::DiskFull => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", message)
            }
            SessionError::Store(store) if store.is_disk_full() => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                format!("{}: {store}", SessionError::DiskFull),
            ),
            SessionError::Store(_)
            | SessionError::Engine(_)
            | SessionError::EventLog { .. }
            | SessionError::Export(_)
            | SessionError::Task(_) => Self::internal(err),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(err: ClusterError) -> Self {
        let message = err.to_string();
        match err {
            ClusterError::Session(err) => err.into(),
            ClusterError::Unavailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "etcd_unavailable", message)
            }
            ClusterError::NoReadyNode => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_ready_node", message)
            }
            ClusterError::Disabled => {
                Self::unprocessable("cluster_disabled", message).with(json!({ "field": "scope" }))
            }
            ClusterError::NodeNotReady(_) => {
                Self::new(StatusCode::CONFLICT, "node_not_ready", message)
            }
            ClusterError::Conflict => Self::new(StatusCode::CONFLICT, "conflict", message),
            ClusterError::Corrupt(_) | ClusterError::Tls(_) => Self::internal(err),
        }
    }
}

/// A JSON body, with every rejection answered as an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = ApiJsonVerbatim::<T>::from_request(request, state).await?;
        Ok(Self(body.value))
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        // Valid JSON of the wrong shape: an unknown field, a wrong type, a missing field.
        JsonRejection::JsonDataError(err) => {
            ApiError::unprocessable("invalid_body", body_error(&err.body_text()))
        }
        JsonRejection::JsonSyntaxError(err) => {
            ApiError::bad_request("malformed_json", body_error(&err.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::body_too_large()
        }
        other => ApiError::bad_request("bad_body", other.body_text()),
    }
}

/// Whether reading a body failed because it did not arrive within `--body-timeout`.
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// axum's messages start with a generic sentence; keep the part that names the problem.
fn body_error(text: &str) -> String {
    text.split_once(": ")
        .map_or(text, |(_, detail)| detail)
        .to_owned()
}

/// A JSON body together with its text exactly as received (to store a request verbatim).
pub struct ApiJsonVerbatim<T> {
    pub value: T,
    pub text: String,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJsonVerbatim<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(json_rejection(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|err| {
                if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::body_too_large()
                } else if timed_out(&err) {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the body did not arrive in time (see --body-timeout)",
                    )
                } else {
                    ApiError::bad_request("bad_body", err.body_text())
                }
            })?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad_request("malformed_json", "the body is not UTF-8"))?;
        // Every body is an object (serde would also read a struct from an array).
        if text.trim_start().starts_with('[') {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "the body must be a JSON object",
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let message = err.to_string();
            if err.inner().is_data() {
                ApiError::unprocessable("invalid_body", message)
            } else {
                ApiError::bad_request("malformed_json", message)
            }
        })?;
        deserializer.end().map_err(|err| {
            ApiError::bad_request(
                "malformed_json",
                format!("trailing characters after the JSON body: {err}"),
            )
        })?;
        Ok(Self { value, text })
    }
}

/// Query parameters, with every rejection answered as an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => Err(ApiError::bad_request(
                "invalid_query",
                body_error(&err.body_text()),
            )),
            Err(other) => Err(ApiError::bad_request("invalid_query", other.body_text())),
        }
    }
}

/// A session id from the path; anything but a UUID is a 400.
pub struct SessionId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for SessionId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(text)) => Uuid::parse_str(&text).map(Self).map_err(|_| {
                ApiError::bad_request(
                    "invalid_id",
                    format!("`{text}` is not a session id (a UUID)"),
                )
            }),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                Err(ApiError::bad_request("invalid_id", err.body_text()))
            }
            Err(other) => Err(ApiError::bad_request("invalid_id", other.body_text())),
        }
    }
}
