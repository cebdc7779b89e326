//! Serving an axum [`Router`] over HTTP/1.1 with limits a slow or greedy client cannot
//! exhaust. The gateway and the admin server both serve through [`serve`], so their
//! protections cannot drift apart.
//!
//! `axum::serve` gives hyper no timer, so hyper cannot time out anything: a client that
//! trickles its request head one byte a second holds its connection (and a task) forever.
//! Here every connection is served by hyper's HTTP/1 builder with a Tokio timer and:
//!
//! - **header read timeout**: the request head (request line and headers) must arrive within
//!   [`ServeLimits::header_read_timeout`] of the server starting to wait for it, or hyper
//!   closes the connection. On a kept-alive connection the wait for the next request counts
//!   too, so this also bounds how long a connection may sit between requests.
//! - **idle timeout**: a connection with no request in flight that receives no byte for
//!   [`ServeLimits::idle_timeout`] is closed. This frees silent connections sooner than the
//!   header timeout; a client that keeps sending bytes is the header timeout's business.
//! - **connection cap**: at most [`ServeLimits::max_connections`] connections are served at
//!   once. Past that the server stops accepting, so new connections wait in the kernel's
//!   accept backlog (and are refused by the kernel once it is full) instead of being
//!   accepted and starved. A slot frees as soon as any connection closes.
//! - **in-flight cap**: at most [`ServeLimits::max_in_flight`] requests are handled at once
//!   across all connections; one more is answered at once with `503` and a JSON body
//!   (`{"error":{"code":"overloaded",…}}`) and `Retry-After`, without running the handler.
//!
//! Each request carries the peer's address as axum's [`ConnectInfo<SocketAddr>`], so
//! handlers can key limits by client.
//!
//! Shutdown is graceful: once [`Shutdown`] triggers the server stops accepting, every
//! connection finishes the request it is handling and is then closed, and [`serve`] returns
//! when the last connection is gone. Idle connections close at once; one still receiving a
//! request head is held at most until its header read timeout.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::shutdown::Shutdown;

/// The error code of the `503` answered when [`ServeLimits::max_in_flight`] is reached.
pub const OVERLOADED: &str = "overloaded";
/// `Retry-After` (seconds) of that answer: in-flight requests finish in milliseconds to a
/// few seconds, so a client may come back soon.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// Limits applied by [`serve`]. The defaults suit both the gateway and the admin server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Longest wait for a complete request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte received for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// Most requests handled at once; more are answered `503 overloaded`.
    pub max_in_flight: usize,
}

impl ServeLimits {
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown`, then drains (see the module
/// docs). Accept errors (e.g. too many open files) are logged and retried after a pause;
/// they never stop the server.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let max_connections = limits.max_connections.max(1);
    let connections = Arc::new(Semaphore::new(max_connections));
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    loop {
        // Take a connection slot before accepting: at the cap, clients wait in the backlog.
        let slot = tokio::select! {
            slot = connections.clone().acquire_owned() => slot.expect("semaphore never closed"),
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let in_flight = in_flight.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, app, limits, in_flight, shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    // Every slot back means every connection has finished.
    let _all = connections
        .acquire_many(max_connections as u32)
        .await
        .expect("semaphore never closed");
    Ok(())
}

/// What one connection shares between its requests and its idle watchdog.
struct Activity {
    /// Requests of this connection being handled now.
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last byte received or request finished.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection has been idle, or `None` while a request is in flight.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ServeLimits,
    in_flight: Arc<Semaphore>,
    shutdown: Shutdown,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(req, peer, app.clone(), in_flight.clone(), activity.clone())
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let idle_timeout = limits.idle_timeout.max(Duration::from_millis(1));
    let mut closing = false;
    let result = loop {
        let next_check = match activity.idle_for() {
            Some(idle) => idle_timeout.saturating_sub(idle),
            None => idle_timeout,
        };
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = shutdown.wait(), if !closing => {
                // Finish the request in progress (if any), then close.
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(next_check), if !closing => {
                if activity.idle_for().is_some_and(|idle| idle >= idle_timeout) {
                    tracing::debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    };
    if let Err(e) = result {
        // Header timeouts, resets and malformed requests: the client's problem, not ours.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    app: Router,
    in_flight: Arc<Semaphore>,
    activity: Arc<Activity>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let Ok(permit) = in_flight.try_acquire_owned() else {
        return Ok(overloaded());
    };
    activity.in_flight.fetch_add(1, Ordering::Relaxed);
    req.extensions_mut().insert(ConnectInfo(peer));
    let response = app.oneshot(req.map(Body::new)).await;
    activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    activity.touch();
    drop(permit);
    response
}

/// `503` with the JSON error shape the gateway uses everywhere.
fn overloaded() -> Response<Body> {
    let body = serde_json::json!({"error": {
        "code": OVERLOADED,
        "message": "the server is handling as many requests as it is configured to; retry shortly",
    }});
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, OVERLOADED_RETRY_AFTER_SECS)
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

/// A TCP stream that records when bytes arrive, for the idle watchdog.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    //! Behaviour with counts, not clocks: timeouts are proven end to end against a real
    //! `sluice gateway` (tests/e2e/gateway.rs).
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(app: Router, limits: ServeLimits) -> (SocketAddr, Shutdown) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        tokio::spawn(serve(listener, app, limits, shutdown.clone()));
        (addr, shutdown)
    }

    async fn get_once(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn requests_past_the_in_flight_cap_get_503_json_with_retry_after() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let entered = Arc::new(tokio::sync::Notify::new());
        let app = {
            let (gate, entered) = (gate.clone(), entered.clone());
            Router::new().route(
                "/slow",
                get(move || async move {
                    entered.notify_one();
                    gate.notified().await;
                    "done"
                }),
            )
        };
        let limits = ServeLimits {
            max_in_flight: 1,
            ..ServeLimits::default()
        };
        let (addr, shutdown) = start(app, limits).await;
        let first = tokio::spawn(get_once(addr, "/slow"));
        entered.notified().await;
        let second = get_once(addr, "/slow").await;
        assert!(second.starts_with("HTTP/1.1 503"), "{second}");
        assert!(second.contains("retry-after: 1"), "{second}");
        assert!(second.contains(r#""code":"overloaded""#), "{second}");
        gate.notify_one();
        let first = first.await.unwrap();
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.ends_with("done"), "{first}");
        shutdown.trigger();
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        let (addr, shutdown) = start(app, ServeLimits::default()).await;
        let answer = get_once(addr, "/peer").await;
        assert!(answer.ends_with("127.0.0.1"), "{answer}");
        shutdown.trigger();
    }

    #[tokio::test]
    async fn at_the_connection_cap_a_new_connection_is_not_served_until_a_slot_frees() {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let limits = ServeLimits {
            max_connections: 1,
            ..ServeLimits::default()
        };
        let (addr, shutdown) = start(app, limits).await;
        // The first connection holds the only slot (keep-alive, no request yet).
        let mut holder = TcpStream::connect(addr).await.unwrap();
        holder
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = holder.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // The second waits in the backlog until the first closes, then is served.
        let second = tokio::spawn(get_once(addr, "/"));
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(holder);
        let answer = second.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        shutdown.trigger();
    }

    #[tokio::test]
    async fn shutdown_finishes_the_request_in_flight_then_returns() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let entered = Arc::new(tokio::sync::Notify::new());
        let app = {
            let (gate, entered) = (gate.clone(), entered.clone());
            Router::new().route(
                "/slow",
                get(move || async move {
                    entered.notify_one();
                    gate.notified().await;
                    "finished"
                }),
            )
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(serve(
            listener,
            app,
            ServeLimits::default(),
            shutdown.clone(),
        ));
        let request = tokio::spawn(get_once(addr, "/slow"));
        entered.notified().await;
        shutdown.trigger();
        tokio::task::yield_now().await;
        assert!(!server.is_finished(), "waits for the request in flight");
        gate.notify_one();
        assert!(request.await.unwrap().ends_with("finished"));
        server.await.unwrap().unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    }
}
