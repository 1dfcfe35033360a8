//! The API's connections under abuse, against the real daemon: a flood of idle connections
//! with a low open-files limit, clients too slow to send a head or a body, idle keep-alive
//! connections, and early refusals that must close the connection visibly.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use tracer_tests::{daemon::Daemon, require_root};

fn connect(daemon: &Daemon) -> TcpStream {
    let stream = TcpStream::connect(daemon.address()).expect("connecting to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Everything the daemon sends until it closes the connection, and how long that took.
fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(err) => panic!("the daemon did not close the connection: {err}"),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn a_flood_of_idle_connections_leaves_the_api_answering() {
    require_root();
    // The usual limit: 1,024 open files, soft and hard.
    let daemon = Daemon::start_with_open_files_limit(&[], 1024);
    let flood: Vec<TcpStream> = (0..1000).map(|_| connect(&daemon)).collect();
    let health = daemon.get("/healthz");
    assert_eq!(health["status"], "ok", "{health}");
    let (status, sessions) = daemon.call("GET", "/v1/sessions", None, None);
    assert_eq!(status, 200, "{sessions}");
    drop(flood);
    let log = daemon.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("max_connections=768"), "{log}");
}

#[test]
fn clients_too_slow_with_a_head_or_a_body_or_idle_too_long_are_cut_off() {
    require_root();
    let daemon = Daemon::start(&[
        "--header-timeout",
        "1s",
        "--body-timeout",
        "1s",
        "--idle-timeout",
        "2s",
    ]);
    // Half a request head, then nothing.
    let mut head = connect(&daemon);
    head.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let (_, took) = read_until_closed(&mut head);
    assert!(took < Duration::from_secs(5), "closed after {took:?}");

    // A body announced and never sent.
    let mut body = connect(&daemon);
    body.write_all(
        b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{",
    )
    .unwrap();
    let (response, _) = read_until_closed(&mut body);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"body_timeout\""), "{response}");

    // A connection that never sends anything, and one idle after a request.
    let mut silent = connect(&daemon);
    let mut kept = connect(&daemon);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    for stream in [&mut silent, &mut kept] {
        let (_, took) = read_until_closed(stream);
        assert!(took < Duration::from_secs(8), "closed after {took:?}");
    }
}

#[test]
fn an_early_refusal_tells_the_client_the_connection_closes() {
    require_root();
    let daemon = Daemon::start(&[]);
    // Not JSON: 415, before the body is read.
    let mut stream = connect(&daemon);
    stream
        .write_all(b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let (response, _) = read_until_closed(&mut stream);
    assert!(response.starts_with("HTTP/1.1 415"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    // Too large: 413.
    let mut stream = connect(&daemon);
    let body = vec![b' '; 128 << 10];
    stream
        .write_all(
            format!(
                "POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let _ = stream.write_all(&body);
    let (response, _) = read_until_closed(&mut stream);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    // A request without a body keeps its connection.
    let mut stream = connect(&daemon);
    stream
        .write_all(
            b"GET /v1/nothing HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    let mut received = String::new();
    let mut buffer = [0u8; 4096];
    while received.matches("HTTP/1.1 ").count() < 2 {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "closed early: {received}");
        received.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(received.contains("HTTP/1.1 404") && received.contains("HTTP/1.1 200"));
}
