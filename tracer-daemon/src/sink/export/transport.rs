//! Sending encoded OTLP requests to a collector: gRPC (tonic's client over our own channel)
//! or HTTP/protobuf (reqwest), with the configured headers, gzip, TLS and timeout.
//!
//! Requests arrive already encoded (see [`super::span`]), so this is only the transport that
//! `opentelemetry-otlp`'s exporters wrap around their own encoding: the same service path,
//! content types and compression, without taking spans as structs.
use std::{io::Write as _, time::Duration};

use bytes::{Buf as _, BufMut as _, Bytes};
use flate2::{write::GzEncoder, Compression};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::{
    codec::{BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::Channel,
};

use super::config::{OtlpConfig, Protocol};

/// The gRPC method OTLP traces go to.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where requests go.
pub(super) enum Transport {
    Grpc {
        client: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    },
}

/// Why a request did not go. `permanent` when the collector answered that sending it again
/// would not help (OTLP's non-retryable answers: a malformed request, a refused credential…):
/// its spans are then lost to export, counted and said, instead of blocking the queue.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SendError {
    pub message: String,
    pub permanent: bool,
}

impl SendError {
    /// A failure worth retrying: no answer, a timeout, a collector busy or away.
    fn transient(message: String) -> Self {
        Self {
            message,
            permanent: false,
        }
    }
}

/// What the collector said of a request it took.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Accepted {
    /// Spans it refused for good (OTLP's partial success): sending them again would not help.
    pub rejected_spans: u64,
    pub message: String,
}

impl Transport {
    /// The transport for `config`. The error is a message; the caller names the endpoint.
    pub fn new(config: &OtlpConfig) -> Result<Self, String> {
        match config.protocol {
            Protocol::Grpc => grpc(config),
            Protocol::HttpProtobuf => http(config),
        }
    }

    /// Sends one encoded `ExportTraceServiceRequest`.
    pub async fn send(&self, request: Bytes) -> Result<Accepted, SendError> {
        let response = match self {
            Transport::Grpc {
                client,
                metadata,
                timeout,
            } => {
                let mut client = client.clone();
                client
                    .ready()
                    .await
                    .map_err(|err| SendError::transient(err.to_string()))?;
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(*timeout);
                let path = axum::http::uri::PathAndQuery::from_static(GRPC_PATH);
                let codec = RequestCodec {
                    size: request.get_ref().len(),
                };
                client
                    .unary(request, path, codec)
                    .await
                    .map_err(|status| SendError {
                        message: format!("{:?}: {}", status.code(), status.message()),
                        permanent: !grpc_retryable(status.code()),
                    })?
                    .into_inner()
            }
            Transport::Http {
                client,
                url,
                headers,
                gzip,
            } => send_http(client, url, headers, *gzip, request).await?,
        };
        let partial = response.partial_success.unwrap_or_default();
        Ok(Accepted {
            rejected_spans: partial.rejected_spans.max(0) as u64,
            message: partial.error_message,
        })
    }
}

fn grpc(config: &OtlpConfig) -> Result<Transport, String> {
    let mut metadata = MetadataMap::new();
    for (key, value) in &config.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes())
            .map_err(|err| format!("header {key:?}: {err}"))?;
        let value = value
            .parse()
            .map_err(|err| format!("header value for {key:?}: {err}"))?;
        metadata.insert(key, value);
    }
    // With HTTP/2's default 64 KiB windows a request of spans (hundreds of KiB) waits for
    // window updates on the way; larger windows let it go at once.
    let mut endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
        .map_err(|err| err.to_string())?
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20);
    if config.endpoint.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca_file) = &config.ca_file {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read_ca(ca_file)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| format!("TLS: {err}"))?;
    }
    let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
    if config.gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    Ok(Transport::Grpc {
        client,
        metadata,
        timeout: config.timeout,
    })
}

fn http(config: &OtlpConfig) -> Result<Transport, String> {
    // The endpoint is used as given: add the traces path to a bare host:port.
    let url = match config.endpoint.trim_end_matches('/') {
        bare if bare.matches('/').count() == 2 => format!("{bare}/v1/traces"),
        full => full.to_owned(),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (key, value) in &config.headers {
        let name = reqwest::header::HeaderName::from_bytes(key.as_bytes())
            .map_err(|err| format!("header {key:?}: {err}"))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|err| format!("header value for {key:?}: {err}"))?;
        headers.insert(name, value);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .tcp_nodelay(true);
    if let Some(ca_file) = &config.ca_file {
        let certificate = reqwest::Certificate::from_pem(&read_ca(ca_file)?)
            .map_err(|err| format!("{}: {err}", ca_file.display()))?;
        builder = builder.tls_certs_merge([certificate]);
    }
    let client = builder.build().map_err(|err| format!("TLS: {err}"))?;
    Ok(Transport::Http {
        client,
        url,
        headers,
        gzip: config.gzip,
    })
}

fn read_ca(ca_file: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(ca_file).map_err(|err| format!("reading {}: {err}", ca_file.display()))
}

/// Whether a gRPC answer is worth sending the request again. OTLP calls only some codes
/// retryable, but tonic also reports a connection that broke mid-request as `Unknown` or
/// `Internal`: only the answers that are a collector's judgement of the request itself are
/// taken as final.
fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    !matches!(
        code,
        InvalidArgument
            | NotFound
            | AlreadyExists
            | PermissionDenied
            | Unauthenticated
            | FailedPrecondition
            | Unimplemented
    )
}

/// Whether an HTTP answer is worth sending the request again, as OTLP/HTTP says.
fn http_retryable(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// POSTs a request as OTLP/HTTP's binary protobuf; a non-2xx answer is an error.
async fn send_http(
    client: &reqwest::Client,
    url: &str,
    headers: &reqwest::header::HeaderMap,
    gzip: bool,
    request: Bytes,
) -> Result<ExportTraceServiceResponse, SendError> {
    let mut post = client
        .post(url)
        .headers(headers.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
    post = if gzip {
        // Megabytes to compress: on the blocking pool, not on a runtime worker.
        let body = tokio::task::spawn_blocking(move || gzipped(&request))
            .await
            .map_err(|err| SendError::transient(format!("gzip: {err}")))?
            .map_err(|err| SendError::transient(format!("gzip: {err}")))?;
        post.header(reqwest::header::CONTENT_ENCODING, "gzip")
            .body(body)
    } else {
        post.body(request)
    };
    let failed = |err: reqwest::Error| SendError::transient(error_chain(&err));
    let response = post.send().await.map_err(failed)?;
    let status = response.status();
    let body = response.bytes().await.map_err(failed)?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        return Err(SendError {
            message: format!("HTTP {status}: {}", text.trim()),
            permanent: !http_retryable(status),
        });
    }
    Ok(decode_accepted(&body))
}

/// What a collector that took a request (2xx) answered. An empty body is full success; a
/// body that is not OTLP's answer (a gateway's `OK`, `{}` or HTML) still means the spans
/// were taken: sending them again would only duplicate them.
fn decode_accepted(body: &[u8]) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse::decode(body).unwrap_or_else(|err| {
        tracing::debug!(%err, "the collector's 2xx answer is not an OTLP response; taken as success");
        ExportTraceServiceResponse::default()
    })
}

fn gzipped(request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(request.len() / 4), Compression::fast());
    encoder.write_all(request)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    use super::*;

    #[test]
    fn only_the_answers_otlp_calls_retryable_are_retried() {
        for code in [429, 502, 503, 504] {
            assert!(
                http_retryable(reqwest::StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 413, 500] {
            assert!(
                !http_retryable(reqwest::StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        assert!(grpc_retryable(tonic::Code::Unavailable));
        assert!(grpc_retryable(tonic::Code::DeadlineExceeded));
        assert!(grpc_retryable(tonic::Code::Unknown), "a broken connection");
        assert!(!grpc_retryable(tonic::Code::InvalidArgument));
        assert!(!grpc_retryable(tonic::Code::Unauthenticated));
    }

    #[test]
    fn a_2xx_answer_is_success_whatever_its_body_and_partial_success_is_read() {
        for body in [&b""[..], b"OK", b"{}", b"<html>ok</html>"] {
            assert_eq!(decode_accepted(body), ExportTraceServiceResponse::default());
        }
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        };
        assert_eq!(decode_accepted(&partial.encode_to_vec()), partial);
    }
}

/// An error and its causes on one line (reqwest's own message names only the outermost).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A codec that sends an already encoded request as it is and decodes OTLP's response.
#[derive(Clone, Copy, Default)]
struct RequestCodec {
    /// The request's size: tonic's buffer starts with room for all of it (its default, 8
    /// KiB, would grow by doubling and copying, nine times for a request of 2 MiB).
    size: usize,
}

impl Codec for RequestCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RequestCodec;
    type Decoder = RequestCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RequestCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // With the message's 5-byte header; the yield threshold is tonic's default (it
        // matters only for streams).
        BufferSettings::new(self.size + 5, 32 << 10)
    }
}

impl Decoder for RequestCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let response = ExportTraceServiceResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|err| tonic::Status::internal(format!("the collector's answer: {err}")))?;
        Ok(Some(response))
    }
}
