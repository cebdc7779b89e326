//! HTTP routes: `POST /webhooks/{source}`, `POST /v1/events/{event_type}`, the endpoints
//! API under `/v1/endpoints` ([`crate::endpoints`]), `GET /openapi.json`, and JSON 404s for
//! everything else.
//!
//! A webhook is acknowledged only after Kafka's delivery report for its raw record: the
//! order is source lookup, method, the client's failure budget (before the body is read),
//! body size (while streaming), signature (a failure is charged to the client address), the
//! source's rate limit (charged only now, so unsigned traffic cannot spend it), then the
//! durable write.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sluice_runtime::trace_context;
use tracing::Instrument;

use super::config::Source;
use super::errors::{code, ApiError};
use super::metrics::UNKNOWN;
use super::raw_record::{self, RawDelivery};
use super::AppState;
use crate::produce::{self, ProduceError};
use crate::verify::{Request, VerifyError};
use sluice_topology::sizes::MAX_REQUEST_HEADER_BYTES;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/{source}", any(webhook))
        .route(
            "/v1/events/{event_type}",
            any(crate::publish::http::publish),
        )
        .route("/v1/endpoints", any(crate::endpoints::http::handle))
        .route("/v1/endpoints/{id}", any(crate::endpoints::http::handle))
        .route(
            "/v1/endpoints/{id}/deliveries/{event_id}",
            any(crate::endpoints::http::handle),
        )
        .route(
            "/v1/endpoints/{id}/deliveries/{event_id}/{sub}",
            any(crate::endpoints::http::handle),
        )
        .route(
            "/v1/endpoints/{id}/{action}",
            any(crate::endpoints::http::handle),
        )
        .route("/openapi.json", get(crate::endpoints::openapi::serve))
        .fallback(not_found)
        .with_state(state)
}

/// The client's address: the TCP peer, as the serving layer records it
/// (`X-Forwarded-For` is never trusted). In-process tests have none and share
/// `0.0.0.0`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

/// Reads at most `limit` bytes: refuses at once when `Content-Length` says more, and stops
/// reading (413) as soon as a streamed body passes the limit, so an unbounded body is never
/// buffered.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    read_limited_within(headers, body, limit, BODY_READ_TIMEOUT).await
}

/// How long a client may take to send its body. Providers send a few KiB at once; a client
/// that trickles its body would otherwise hold a connection and its buffer indefinitely.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

async fn read_limited_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let Ok(read) = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            code::BODY_READ_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(limit))
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading a request body failed");
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                code::BODY_READ_FAILED,
                "the request body could not be read",
            ))
        }
    }
}

/// A body that did not arrive in time held a connection and a request slot for the whole
/// body timeout: it counts against the client's failure budget like a bad signature.
pub(crate) fn charge_slow_body<C: governor::clock::Clock>(
    failures: &super::rate_limit::ClientFailures<C>,
    client: IpAddr,
    e: ApiError,
) -> ApiError {
    if e.code != code::BODY_READ_TIMEOUT {
        return e;
    }
    match failures.charge(client) {
        Some(retry_after) => ApiError::too_many_failures(retry_after),
        None => e,
    }
}

async fn webhook(
    State(app): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let name = path.map(|p| p.0).unwrap_or_default();
    let Some(source) = app.sources.get(&name).cloned() else {
        app.metrics
            .requests
            .with_label_values(&[UNKNOWN, code::UNKNOWN_SOURCE])
            .inc();
        return ApiError::unknown_source(&name).into_response();
    };
    // The request's span: a child of the caller's `traceparent`, the parent of the raw record.
    let span = tracing::info_span!("webhook.receive", source = %source.name, provider = source.provider.kind());
    trace_context::follow(
        &span,
        headers
            .get(trace_context::HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    let result = if method == Method::POST {
        receive(&app, &source, client, &headers, body, &span)
            .instrument(span.clone())
            .await
    } else {
        Err(ApiError::method_not_allowed("POST"))
    };
    let (outcome, response) = match result {
        Ok(ok) => ok,
        Err(e) => (e.code, e.into_response()),
    };
    app.metrics
        .requests
        .with_label_values(&[&source.name, outcome])
        .inc();
    app.metrics
        .duration
        .with_label_values(&[&source.name])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn receive(
    app: &AppState,
    source: &Source,
    client: IpAddr,
    headers: &HeaderMap,
    body: Body,
    span: &tracing::Span,
) -> Result<(&'static str, Response), ApiError> {
    if let Some(retry_after) = app.failures.refused(client) {
        return Err(ApiError::too_many_failures(retry_after));
    }

    let body = read_limited(headers, body, source.max_body_bytes)
        .await
        .map_err(|e| charge_slow_body(&app.failures, client, e))?;
    app.metrics
        .body_bytes
        .with_label_values(&[&source.name])
        .observe(body.len() as f64);

    let request_headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let now = SystemTime::now();
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let verified = source
        .verifier
        .verify(&Request::new(&request_headers, &body), now_unix)
        .map_err(|e: VerifyError| {
            app.metrics
                .verification_failures
                .with_label_values(&[&source.name, e.code()])
                .inc();
            tracing::debug!(source = %source.name, code = e.code(), error = %e, "webhook rejected");
            match app.failures.charge(client) {
                Some(retry_after) => ApiError::too_many_failures(retry_after),
                None => ApiError::verify(&e),
            }
        })?;

    if let Some(bucket) = &source.bucket {
        let d = bucket.try_acquire();
        if !d.allowed {
            return Err(ApiError::rate_limited(
                &format!("source `{}`", source.name),
                &d,
            ));
        }
    }

    if source.provider.kind() == "slack" {
        if let Some(challenge) = slack_challenge(&body) {
            return Ok((
                "url_verification",
                (
                    StatusCode::OK,
                    Json(serde_json::json!({ "challenge": challenge })),
                )
                    .into_response(),
            ));
        }
    }

    let delivery_id = raw_record::delivery_id(&verified, &body);
    let digest = (!source.provider.signs_delivery_id())
        .then(|| raw_record::content_digest(verified.event_type.as_deref(), &body));
    let traceparent = trace_context::traceparent(span).unwrap_or_else(|| {
        crate::traceparent::continue_or_start(
            headers
                .get(crate::traceparent::HEADER)
                .and_then(|v| v.to_str().ok()),
        )
    });
    let record = RawDelivery {
        source: &source.name,
        provider: source.provider.kind(),
        delivery_id: &delivery_id,
        event_type: verified.event_type.as_deref(),
        received_at_ms: now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        content_type: headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        traceparent: &traceparent,
        content_digest: digest.as_deref(),
        request_headers: &request_headers,
    };
    let raw_headers = record.headers();
    let header_bytes: usize = delivery_id.len()
        + raw_headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    // The topology sizes every topic for the body limit plus this much (see
    // `sluice_topology::sizes`): more would make a record that fits nowhere downstream.
    if header_bytes as u64 > MAX_REQUEST_HEADER_BYTES {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code::HEADERS_TOO_LARGE,
            format!(
                "the delivery id and the copied request headers take {header_bytes} bytes; at most {MAX_REQUEST_HEADER_BYTES} are accepted"
            ),
        ));
    }
    let delivered = produce::send(
        &app.producer,
        &source.raw_topic,
        // A replay under a fresh unsigned id must land where the original did, so the
        // normalizer instance that saw the original sees its digest.
        digest.as_deref().unwrap_or(&delivery_id).as_bytes(),
        &body,
        produce::owned_headers(&raw_headers),
        app.produce_timeout,
    )
    .await
    .map_err(|e| {
        tracing::warn!(source = %source.name, error = %e, "webhook not acknowledged by Kafka");
        match e {
            ProduceError::Unavailable { .. } => ApiError::kafka_unavailable(app.retry_after_secs),
            ProduceError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::BODY_TOO_LARGE,
                e.to_string(),
            ),
        }
    })?;
    tracing::debug!(source = %source.name, %delivery_id, topic = %source.raw_topic,
        partition = delivered.partition, offset = delivered.offset, "webhook accepted");
    Ok((
        "accepted",
        (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "status": "accepted",
                "delivery_id": delivery_id,
                "topic": source.raw_topic,
                "partition": delivered.partition,
                "offset": delivered.offset,
            })),
        )
            .into_response(),
    ))
}

/// The `challenge` of a Slack `url_verification` body, if this is one.
fn slack_challenge(body: &[u8]) -> Option<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    (json.get("type")?.as_str()? == "url_verification").then(|| json.get("challenge").cloned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_challenge_only_for_url_verification() {
        assert_eq!(
            slack_challenge(br#"{"type":"url_verification","challenge":"abc","token":"x"}"#),
            Some(serde_json::json!("abc"))
        );
        assert_eq!(
            slack_challenge(br#"{"type":"event_callback","challenge":"abc"}"#),
            None
        );
        assert_eq!(slack_challenge(b"token=x&challenge=abc"), None);
    }

    #[tokio::test]
    async fn body_limit_is_enforced_by_header_and_while_streaming() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, "11".parse().unwrap());
        let err = read_limited(&h, Body::from("x".repeat(11)), 10)
            .await
            .unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (413, "body_too_large"));

        // No Content-Length: a stream that never ends is cut off at the limit.
        let chunks = futures_stream(1_000_000);
        let err = read_limited(&HeaderMap::new(), Body::from_stream(chunks), 4096)
            .await
            .unwrap_err();
        assert_eq!(err.code, "body_too_large");

        let ok = read_limited(&HeaderMap::new(), Body::from("0123456789"), 10)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"0123456789");
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_gets_408() {
        let never = futures::stream::pending::<Result<Bytes, std::io::Error>>();
        let err = read_limited_within(
            &HeaderMap::new(),
            Body::from_stream(never),
            4096,
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (408, "body_read_timeout"));
    }

    #[test]
    fn a_body_timeout_is_charged_to_the_client_other_errors_are_not() {
        let clock = governor::clock::FakeRelativeClock::default();
        let failures = super::super::rate_limit::ClientFailures::with_clock(60, 1, clock);
        let client: IpAddr = "192.0.2.9".parse().unwrap();
        let slow = || ApiError::new(StatusCode::REQUEST_TIMEOUT, code::BODY_READ_TIMEOUT, "slow");
        for _ in 0..3 {
            let e = charge_slow_body(&failures, client, ApiError::body_too_large(1));
            assert_eq!(e.code, code::BODY_TOO_LARGE);
        }
        assert_eq!(
            charge_slow_body(&failures, client, slow()).code,
            code::BODY_READ_TIMEOUT
        );
        assert_eq!(
            charge_slow_body(&failures, client, slow()).code,
            code::TOO_MANY_FAILURES
        );
        assert!(failures.refused(client).is_some());
    }

    /// `n` chunks of 1 KiB, with no length known up front.
    fn futures_stream(
        n: usize,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures::stream::iter((0..n).map(|_| Ok(Bytes::from(vec![b'x'; 1024]))))
    }
}
