//! The admin HTTP server every long-running sluice process starts:
//! `/metrics` (Prometheus text format), `/health/live` and `/health/ready`.
//!
//! It is served by [`crate::serve`] with the default [`ServeLimits`], like the gateway, so a
//! client trickling bytes at it is cut off by the header read timeout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::serve::{self as limited, ServeLimits};
use crate::shutdown::Shutdown;

/// Named readiness checks; the process is ready when every check is ready.
/// Components flip their own check (e.g. the gateway marks `kafka` unready while the
/// broker is unreachable).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Readiness {
    pub fn set(&self, check: &str, ready: bool) {
        self.checks
            .lock()
            .expect("readiness lock")
            .insert(check.to_string(), ready);
    }

    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        self.checks.lock().expect("readiness lock").clone()
    }

    pub fn is_ready(&self) -> bool {
        let checks = self.checks.lock().expect("readiness lock");
        !checks.is_empty() && checks.values().all(|v| *v)
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// Routes of the admin server, exposed for embedding and tests.
pub fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

/// Binds `listen` and serves until shutdown. Returns the bound address (useful with port 0).
pub async fn serve(
    listen: &str,
    registry: Registry,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(registry, readiness);
    tokio::spawn(async move {
        let result = limited::serve(listener, app, ServeLimits::default(), shutdown).await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    tracing::info!(%addr, "admin server listening (/metrics, /health/live, /health/ready)");
    Ok(addr)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let families = state.registry.gather();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let checks = state.readiness.snapshot();
    let status = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({ "checks": checks })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_readiness() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("sluice_test_total", "test").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let readiness = Readiness::default();
        readiness.set("kafka", false);
        let shutdown = Shutdown::new();
        let addr = serve("127.0.0.1:0", registry, readiness.clone(), shutdown.clone())
            .await
            .unwrap();

        let body = http_get(addr, "/metrics").await;
        assert!(body.contains("sluice_test_total 1"), "{body}");
        assert!(http_get(addr, "/health/ready")
            .await
            .starts_with("HTTP/1.1 503"));
        readiness.set("kafka", true);
        assert!(http_get(addr, "/health/ready")
            .await
            .starts_with("HTTP/1.1 200"));
        assert!(http_get(addr, "/health/live")
            .await
            .starts_with("HTTP/1.1 200"));
        shutdown.trigger();
    }

    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
