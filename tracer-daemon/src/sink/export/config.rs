//! Where spans go: the daemon's OTLP settings (flags, `TRACERD_OTLP_*`, then the standard
//! `OTEL_EXPORTER_OTLP_*` variables) and a session's override.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// OTLP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Protocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" | "http" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Everything needed to reach one collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `http://host:port` or `https://host:port` (for HTTP, `/v1/traces` is added when the
    /// URL has no path).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Sent with every request (gRPC metadata or HTTP headers).
    pub headers: BTreeMap<String, String>,
    pub gzip: bool,
    pub timeout: Duration,
    /// A PEM file of CA certificates to trust for an `https` endpoint, beside the system's.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: &'static str,
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

/// Checks an endpoint: an absolute `http` or `https` URL with a host.
pub fn check_endpoint(field: &'static str, endpoint: &str) -> Result<(), ConfigError> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|err| error(field, format!("{endpoint:?} is not a URL: {err}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(error(
                field,
                format!("{endpoint:?} must start with http:// or https://"),
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(error(field, format!("{endpoint:?} has no host")));
    }
    Ok(())
}

/// What [`check_endpoint`] takes, as a pattern for the OpenAPI document.
pub const ENDPOINT_PATTERN: &str = "^https?://[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\
    (:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?\
    (/[A-Za-z0-9._~/-]*)?$";

/// Whether `endpoint` matches [`ENDPOINT_PATTERN`] (written out: no regex engine for one
/// check).
fn has_endpoint_shape(endpoint: &str) -> bool {
    let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    else {
        return false;
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let host_ok = (1..=253).contains(&host.len())
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && alphanumeric(host.chars().next())
        && alphanumeric(host.chars().last());
    let port_ok = port.is_none_or(|port| {
        (1..=5).contains(&port.len())
            && !port.starts_with('0')
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|port| port <= 65_535)
    });
    let path_ok = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._~/-".contains(c));
    host_ok && port_ok && path_ok
}

/// `key=value,key2=value2` (the `OTEL_EXPORTER_OTLP_HEADERS` form; values may be
/// percent-encoded).
pub fn parse_headers(
    field: &'static str,
    text: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut headers = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| error(field, format!("{pair:?} is not key=value")))?;
        let key = key.trim().to_ascii_lowercase();
        check_header(field, &key)?;
        headers.insert(key, percent_decode(value.trim()));
    }
    Ok(headers)
}

/// Header names: what both gRPC metadata and HTTP accept.
pub fn check_header(field: &'static str, key: &str) -> Result<(), ConfigError> {
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(error(
            field,
            format!("{key:?} is not a valid header name (lowercase letters, digits, -, _, .)"),
        ))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let decoded = (bytes[index] == b'%')
            .then(|| text.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The daemon's export settings as given (flags or `TRACERD_*`); unset ones fall back to
/// the standard `OTEL_EXPORTER_OTLP_*` variables in [`DaemonExport::resolve`].
#[derive(Clone, Debug, Default)]
pub struct DaemonExport {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<String>,
    pub compression: Option<String>,
    pub timeout: Option<Duration>,
    pub ca_file: Option<PathBuf>,
}

/// Reads the first of `names` that is set and not empty.
fn env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    })
}

impl DaemonExport {
    /// The daemon's default collector, or `None` when no endpoint is configured anywhere
    /// (spans are then exported only for sessions that name one).
    pub fn resolve(&self) -> Result<Option<OtlpConfig>, ConfigError> {
        let Some(endpoint) = self.endpoint.clone().or_else(|| {
            env(&[
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ])
        }) else {
            return Ok(None);
        };
        check_endpoint("--otlp-endpoint", &endpoint)?;
        let protocol = match self.protocol.clone().or_else(|| {
            env(&[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ])
        }) {
            None => Protocol::Grpc,
            Some(text) => Protocol::parse(&text).ok_or_else(|| {
                error(
                    "--otlp-protocol",
                    format!("{text:?}: use grpc or http/protobuf"),
                )
            })?,
        };
        let headers = match self.headers.clone().or_else(|| {
            env(&[
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ])
        }) {
            None => BTreeMap::new(),
            Some(text) => parse_headers("--otlp-headers", &text)?,
        };
        let gzip = match self.compression.clone().or_else(|| {
            env(&[
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ])
        }) {
            None => false,
            Some(text) => parse_compression("--otlp-compression", &text)?,
        };
        let timeout = match self.timeout {
            Some(timeout) => timeout,
            None => match env(&[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ]) {
                // The standard variables are in milliseconds.
                Some(text) => Duration::from_millis(text.trim().parse().map_err(|_| {
                    error(
                        "OTEL_EXPORTER_OTLP_TIMEOUT",
                        format!("{text:?} is not milliseconds"),
                    )
                })?),
                None => DEFAULT_TIMEOUT,
            },
        };
        let ca_file = self.ca_file.clone().or_else(|| {
            env(&[
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ])
            .map(PathBuf::from)
        });
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            headers,
            gzip,
            timeout,
            ca_file,
        }))
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn parse_compression(field: &'static str, text: &str) -> Result<bool, ConfigError> {
    match text.trim() {
        "gzip" => Ok(true),
        "none" | "" => Ok(false),
        other => Err(error(field, format!("{other:?}: use gzip or none"))),
    }
}

/// A session's `export` request: `{"otlp": {...}}` for its own collector, `{"otlp": null}`
/// for none; absent, the daemon's default.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The session's collector; `null` turns export off for the session.
    #[serde(default, deserialize_with = "present_or_null")]
    #[schema(value_type = Option<OtlpRequest>)]
    pub otlp: Option<Option<OtlpRequest>>,
}

/// Tells `"otlp": null` (`Some(None)`) from a missing `otlp` (`None`); reads it from an
/// object only (serde would take an array of its fields too).
fn present_or_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<OtlpRequest>>, D::Error> {
    match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)? {
        Some(object) => OtlpRequest::deserialize(serde_json::Value::Object(object))
            .map(|otlp| Some(Some(otlp)))
            .map_err(serde::de::Error::custom),
        None => Ok(Some(None)),
    }
}

/// A session's own collector.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpRequest {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// `gzip` or `none` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

impl OtlpRequest {
    /// Checks the request and makes it a config (TLS and timeout from the daemon's).
    pub fn to_config(&self, daemon: Option<&OtlpConfig>) -> Result<OtlpConfig, ConfigError> {
        // Narrower than the daemon's own `--otlp-endpoint` (which may be IPv6): what the
        // OpenAPI document can state exactly.
        if !has_endpoint_shape(&self.endpoint) {
            return Err(error(
                "export.otlp.endpoint",
                format!(
                    "{:?} must be http:// or https://, then HOST[:PORT][/PATH] (a host name or \
                     IPv4 address, a port from 1 to 65535, a path of letters, digits and . _ ~ / -)",
                    self.endpoint
                ),
            ));
        }
        check_endpoint("export.otlp.endpoint", &self.endpoint)?;
        let protocol = match &self.protocol {
            None => Protocol::Grpc,
            Some(text) => Protocol::parse(text).ok_or_else(|| {
                error(
                    "export.otlp.protocol",
                    format!("{text:?}: use grpc or http/protobuf"),
                )
            })?,
        };
        let mut headers = BTreeMap::new();
        for (key, value) in self.headers.iter().flatten() {
            let key = key.to_ascii_lowercase();
            check_header("export.otlp.headers", &key)?;
            if value.chars().any(char::is_control) {
                return Err(error(
                    "export.otlp.headers",
                    format!("the value of {key:?} has control characters"),
                ));
            }
            headers.insert(key, value.clone());
        }
        let gzip = match &self.compression {
            None => false,
            Some(text) => parse_compression("export.otlp.compression", text)?,
        };
        Ok(OtlpConfig {
            endpoint: self.endpoint.clone(),
            protocol,
            headers,
            gzip,
            timeout: daemon.map_or(DEFAULT_TIMEOUT, |d| d.timeout),
            ca_file: daemon.and_then(|d| d.ca_file.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_like_the_standard_variable() {
        let headers = parse_headers("h", "api-key=a%20b, X-Team = blue").unwrap();
        assert_eq!(headers["api-key"], "a b");
        assert_eq!(headers["x-team"], "blue");
        assert!(parse_headers("h", "novalue").is_err());
        assert!(parse_headers("h", "bad key=1").is_err());
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(check_endpoint("e", "http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("e", "https://collector.example:4318/v1/traces").is_ok());
        assert!(check_endpoint("e", "127.0.0.1:4317").is_err());
        assert!(check_endpoint("e", "ftp://x:1").is_err());
    }

    #[test]
    fn a_session_can_turn_export_off_or_name_its_own_collector() {
        let off: ExportRequest = serde_json::from_str(r#"{"otlp": null}"#).unwrap();
        assert_eq!(off.otlp, Some(None));
        let absent: ExportRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.otlp, None);
        let own: ExportRequest = serde_json::from_str(
            r#"{"otlp": {"endpoint": "http://h:4318", "protocol": "http/protobuf"}}"#,
        )
        .unwrap();
        let config = own.otlp.unwrap().unwrap().to_config(None).unwrap();
        assert_eq!(config.protocol, Protocol::HttpProtobuf);
        assert!(
            serde_json::from_str::<ExportRequest>(r#"{"otlp": {"endpoint": "x", "port": 1}}"#)
                .is_err()
        );
    }
}
