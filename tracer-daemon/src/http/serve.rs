//! Serving connections, for every listener (TCP, TLS, unix socket) alike, so that no client
//! can take the API away from the others: a client must send its request head within
//! `header_timeout` and its body within `body_timeout`, a connection idle for `idle_timeout`
//! is closed, and connections are capped below the file-descriptor limit. At the cap a new
//! connection closes the longest-idle one (so `/healthz` still answers under a flood of idle
//! connections); with none idle it gets a `503` and is closed.
//!
//! Written here rather than with `axum::serve`, which has no timeouts or cap (axum leaves
//! them to hyper's connection builder, which this drives directly).
use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue},
    Router,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    sync::{watch, Notify},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::sync::lock;

/// File descriptors kept for everything but API connections: sessions' ring buffers,
/// tracefs files, event logs, the database.
const FD_RESERVE: u64 = 256;
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connections get to finish their responses at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What one listener's connections may do.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

/// How accepted connections are read: as they are, or after a TLS handshake.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(TlsAcceptor),
}

/// Raises the soft limit of open files to the hard one (the usual soft 1,024 is far below
/// what a node's API can need), and returns the connection cap it leaves room for:
/// `wanted`, or fewer if the limit is too low to keep [`FD_RESERVE`] descriptors besides.
pub fn raise_fd_limit(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit are given a valid rlimit for the call's duration.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            ..limit
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            raised.rlim_cur
        } else {
            limit.rlim_cur
        }
    };
    let room = soft.saturating_sub(FD_RESERVE).max(16);
    let cap = wanted.min(usize::try_from(room).unwrap_or(usize::MAX));
    tracing::info!(
        open_files = soft,
        max_connections = cap,
        "connection limits"
    );
    cap
}

/// Serves `router` on `listener` until `shutdown` completes; connections then finish the
/// response they are sending (for up to [`SHUTDOWN_GRACE`]) and close.
pub async fn serve<L>(
    mut listener: L,
    transport: Transport,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let router = router.layer(RequestBodyTimeoutLayer::new(limits.body_timeout));
    let registry = Arc::new(Registry::default());
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            // Reap finished connections as they go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Some(connection) = registry.admit(limits.max_connections) else {
            tracing::warn!(
                ?peer,
                max = limits.max_connections,
                "refusing a connection: all busy"
            );
            if matches!(transport, Transport::Plain) {
                connections.spawn(refuse(io));
            }
            continue;
        };
        let serving = Serving {
            transport: transport.clone(),
            router: router.clone(),
            limits,
            stopping: stopping.clone(),
        };
        connections.spawn(async move {
            serving.connection(io, connection).await;
            tracing::trace!(?peer, "connection closed");
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        tracing::warn!("closing connections still busy at shutdown");
    }
    connections.shutdown().await;
    Ok(())
}

/// Answers `503` and closes, without reading the request.
async fn refuse(mut io: impl AsyncWrite + Unpin) {
    const BODY: &str =
        r#"{"error":"too_many_connections","message":"every connection slot is busy; try again"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(response.as_bytes())).await;
}

/// The live connections of one listener.
#[derive(Default)]
struct Registry {
    live: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// A place for a new connection: free, or made by closing the longest-idle one; `None`
    /// when every connection is busy.
    fn admit(self: &Arc<Self>, max: usize) -> Option<Admitted> {
        let mut live = lock(&self.live);
        if live.len() >= max {
            let idlest = live
                .values()
                .filter(|connection| connection.in_flight.load(Ordering::Acquire) == 0)
                .filter(|connection| !connection.closing.load(Ordering::Acquire))
                .min_by_key(|connection| *lock(&connection.last_active))?;
            idlest.closing.store(true, Ordering::Release);
            idlest.close.notify_one();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            in_flight: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
            closing: std::sync::atomic::AtomicBool::new(false),
            close: Notify::new(),
        });
        live.insert(id, connection.clone());
        Some(Admitted {
            registry: self.clone(),
            id,
            connection,
        })
    }
}

/// A connection's state, as the cap and the idle timeout see it.
struct Connection {
    /// Requests whose response has not started yet.
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
    /// Asked to close (to make room): not picked twice.
    closing: std::sync::atomic::AtomicBool,
    close: Notify,
}

impl Connection {
    /// How long it has been idle now; zero while a request is being handled.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        lock(&self.last_active).elapsed()
    }
}

/// A connection's place in its registry, given back when it closes.
struct Admitted {
    registry: Arc<Registry>,
    id: u64,
    connection: Arc<Connection>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.registry.live).remove(&self.id);
    }
}

/// Marks a connection busy while a request is handled.
struct Busy(Arc<Connection>);

impl Busy {
    fn begin(connection: &Arc<Connection>) -> Self {
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(connection.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *lock(&self.0.last_active) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection [`Busy`] until it is sent or dropped.
struct BusyBody {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for BusyBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether a request comes with a body (a length above zero, or chunks).
fn has_body<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok())
            .is_some_and(|length| length.trim() != "0")
}

/// What serving one connection needs.
struct Serving {
    transport: Transport,
    router: Router,
    limits: ServeLimits,
    stopping: watch::Receiver<bool>,
}

impl Serving {
    async fn connection<Io>(self, io: Io, admitted: Admitted)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self.transport.clone() {
            Transport::Plain => self.http(io, admitted).await,
            Transport::Tls(acceptor) => {
                // A client that never finishes its handshake does not keep its connection.
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => self.http(stream, admitted).await,
                    // A client that does not speak TLS, or has no acceptable certificate.
                    Ok(Err(err)) => tracing::debug!(%err, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
    }

    /// Serves HTTP/1 or HTTP/2 (with upgrades, for the WebSocket stream) until the client
    /// goes, the connection idles out, room is needed, or the daemon stops.
    async fn http<Io>(mut self, io: Io, admitted: Admitted)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = admitted.connection.clone();
        let router = self.router.clone();
        let tracked = connection.clone();
        let service = tower::service_fn(move |request: Request<hyper::body::Incoming>| {
            let busy = Busy::begin(&tracked);
            let router = router.clone();
            let sends_body = has_body(&request);
            async move {
                // Busy until the response's body is sent: a download or a followed stream
                // is not an idle connection.
                let response = router.oneshot(request.map(Body::new)).await;
                let mut response = response
                    .map(|response| response.map(|body| Body::new(BusyBody { body, _busy: busy })));
                // Refused early (413, 415, 401…), its body may be unread: the connection
                // cannot carry another request, and the client must know.
                if let Ok(response) = &mut response {
                    let status = response.status();
                    if sends_body && (status.is_client_error() || status.is_server_error()) {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                response
            }
        });
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout);
        builder.http2().timer(TokioTimer::new());
        let serving = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        tokio::pin!(serving);
        let idle_timeout = self.limits.idle_timeout;
        let mut closing = false;
        loop {
            let idle_left = idle_timeout.saturating_sub(connection.idle_for());
            tokio::select! {
                served = serving.as_mut() => {
                    if let Err(err) = served {
                        tracing::debug!(%err, "connection ended with an error");
                    }
                    break;
                }
                () = connection.close.notified(), if !closing => closing = true,
                _ = self.stopping.changed(), if !closing => closing = true,
                () = tokio::time::sleep(idle_left.max(Duration::from_millis(10))), if !closing => {
                    closing = connection.idle_for() >= idle_timeout;
                }
            }
            if closing {
                // Ends it now if idle, else once the response being sent is done.
                serving.as_mut().graceful_shutdown();
            }
        }
        drop(admitted);
    }
}
