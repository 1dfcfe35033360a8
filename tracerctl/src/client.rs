//! The tracerd API as the CLI uses it: JSON requests, and followed NDJSON streams. Every
//! failure becomes one readable sentence (the daemon's own message for an API error).
use std::io::{BufRead, BufReader};

use anyhow::{anyhow, Context as _, Result};
use serde_json::Value;

pub struct Client {
    server: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            // API errors are answers to read, not transport failures.
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self {
            server: server.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header("Content-Type", "application/json");
                body.to_string()
            }
            None => String::new(),
        };
        let request = request.body(body).context("building the request")?;
        let mut response = self
            .agent
            .run(request)
            .map_err(|err| anyhow!("cannot reach tracerd at {}: {err}", self.server))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
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
        let mut request = self.agent.get(format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request
            .call()
            .map_err(|err| anyhow!("cannot reach tracerd at {}: {err}", self.server))?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.into_body().read_to_string().unwrap_or_default();
            return Err(api_error(status, &text));
        }
        let reader = BufReader::new(response.into_body().into_reader());
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

/// An API error as one sentence: tracerd's `message`, else the body.
fn api_error(status: u16, text: &str) -> anyhow::Error {
    let message = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|body| body["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned());
    anyhow!("tracerd refused ({status}): {message}")
}
