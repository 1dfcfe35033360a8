//! HTTP to tracerd's unix socket (`--server unix:/run/tracerd/tracerd.sock`).
//!
//! Written here because ureq's transports for other sockets are not part of its stable API:
//! one HTTP/1.0 exchange per request is all the CLI needs — the answer ends when the daemon
//! closes the connection, streamed answers (a followed event stream) included.
use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{anyhow, bail, Context as _, Result};

/// Sends one request and returns the status and a reader of the body.
pub fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Result<(u16, Box<dyn Read + Send>)> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|err| anyhow!("cannot reach tracerd at unix:{}: {err}", socket.display()))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: tracerd\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(request.as_bytes())
        .context("sending the request")?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .context("reading tracerd's answer")?;
    // `HTTP/1.0 200 OK`
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("tracerd answered `{}`", status_line.trim()))?;
    loop {
        let mut header = String::new();
        if reader
            .read_line(&mut header)
            .context("reading the headers")?
            == 0
        {
            bail!("tracerd closed the connection in the headers");
        }
        if header.trim().is_empty() {
            break;
        }
    }
    Ok((status, Box::new(reader)))
}
