//! The tracerd API as the CLI uses it: JSON requests, and followed NDJSON streams. Every
//! failure becomes one readable sentence (the daemon's own message for an API error).
use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
};

use anyhow::{anyhow, Context as _, Result};
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    server: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// `--server unix:/PATH`: the API's unix socket.
    socket: Option<PathBuf>,
}

/// PEM files for an `https://` server: the CA to trust (else the public roots), and a client
/// certificate and key for mutual TLS.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>, tls: &TlsFiles) -> Result<Self> {
        let agent = ureq::Agent::config_builder()
            // API errors are answers to read, not transport failures.
            .http_status_as_error(false)
            .tls_config(tls_config(tls)?)
            .build()
            .new_agent();
        Ok(Self {
            socket: server.strip_prefix("unix:").map(PathBuf::from),
            server: server.trim_end_matches('/').to_owned(),
            token,
            agent,
        })
    }

    /// Sends `method path` (with a JSON body) and returns the status and the body's reader.
    fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Box<dyn Read + Send>)> {
        let mut headers = Vec::new();
        if let Some(token) = &self.token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/json".to_owned()));
        }
        let body = body.map_or_else(String::new, Value::to_string);
        if let Some(socket) = &self.socket {
            return crate::unix::exchange(socket, method, path, &headers, &body);
        }
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(body).context("building the request")?;
        let response = self
            .agent
            .run(request)
            .map_err(|err| anyhow!("cannot reach tracerd at {}: {err}", self.server))?;
        let status = response.status().as_u16();
        Ok((status, Box::new(response.into_body().into_reader())))
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
        let (status, mut reader) = self.open(method, path, body)?;
        let mut text = String::new();
        reader
            .read_to_string(&mut text)
            .context("reading tracerd's answer")?;
        Ok((status, text))
    }

    /// `method path` with an optional JSON body; the JSON answer of a 2xx, or the daemon's
    /// error message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, text) = self.request(method, path, body)?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &text));
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("tracerd answered {path} with {text}"))
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)
    }

    /// Calls `each` with every line of the NDJSON answer of `GET path`, as it arrives, until
    /// the stream ends or `each` returns false.
    pub fn lines(&self, path: &str, mut each: impl FnMut(Value) -> bool) -> Result<()> {
        let (status, mut body) = self.open("GET", path, None)?;
        if status != 200 {
            let mut text = String::new();
            let _ = body.read_to_string(&mut text);
            return Err(api_error(status, &text));
        }
        let reader = BufReader::new(body);
        for line in reader.lines() {
            let line = line.context("reading the event stream")?;
            if line.is_empty() {
                continue;
            }
            let value = serde_json::from_str(&line)
                .with_context(|| format!("tracerd sent a line that is not JSON: {line}"))?;
            if !each(value) {
                break;
            }
        }
        Ok(())
    }
}

fn tls_config(files: &TlsFiles) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{parse_pem, ClientCert, PemItem, RootCerts, TlsConfig};
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let mut config = TlsConfig::builder();
    if let Some(ca) = &files.ca {
        let pem = read(ca)?;
        let certs: Vec<_> = parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(cert)) => Some(cert),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(anyhow!("{}: no certificate in it", ca.display()));
        }
        config = config.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let pem = read(cert)?;
            let chain: Vec<_> = parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(cert)) => Some(cert),
                    _ => None,
                })
                .collect();
            let key = ureq::tls::PrivateKey::from_pem(&read(key)?)
                .map_err(|err| anyhow!("{}: {err}", key.display()))?;
            config = config.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        _ => return Err(anyhow!("--cert and --key go together")),
    }
    Ok(config.build())
}

/// An API error as one sentence: tracerd's `message`, else the body.
fn api_error(status: u16, text: &str) -> anyhow::Error {
    let message = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|body| body["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned());
    anyhow!("tracerd refused ({status}): {message}")
}
