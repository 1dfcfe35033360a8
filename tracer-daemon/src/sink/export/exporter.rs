//! The OTLP exporter for a collector: gRPC (tonic) or HTTP/protobuf (reqwest), with the
//! configured headers, compression, TLS and timeout.
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{trace::SpanExporter as _, Resource};

use super::config::{OtlpConfig, Protocol};

/// The collector's exporter, without its own retries (the sender retries, in order). The
/// error is a message; the caller names the endpoint.
pub(super) fn build_exporter(
    config: &OtlpConfig,
    resource: &Resource,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let mut exporter = match config.protocol {
        Protocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (key, value) in &config.headers {
                let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes())
                    .map_err(|err| format!("header {key:?}: {err}"))?;
                let value = value
                    .parse()
                    .map_err(|err| format!("header value for {key:?}: {err}"))?;
                metadata.insert(key, value);
            }
            // Our own channel: with HTTP/2's default 64 KiB windows a batch of spans (hundreds
            // of KiB) waits for window updates on the way; larger windows let it go at once.
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
                    let pem = std::fs::read(ca_file)
                        .map_err(|err| format!("reading {}: {err}", ca_file.display()))?;
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                }
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|err| format!("TLS: {err}"))?;
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(endpoint.connect_lazy())
                .with_timeout(config.timeout)
                .with_metadata(metadata)
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
            if config.gzip {
                builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            builder.build()
        }
        Protocol::HttpProtobuf => {
            // The endpoint is used as given: add the traces path to a bare host:port.
            let endpoint = match config.endpoint.trim_end_matches('/') {
                bare if bare.matches('/').count() == 2 => format!("{bare}/v1/traces"),
                full => full.to_owned(),
            };
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(config.timeout)
                .with_headers(config.headers.clone().into_iter().collect())
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
            if config.gzip {
                builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            builder.build()
        }
    }
    .map_err(|err| err.to_string())?;
    exporter.set_resource(resource);
    Ok(exporter)
}
