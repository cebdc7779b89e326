//! `POST /v1/events/{event_type}`: the publish API over HTTP, on the gateway's port.
//!
//! Order of checks: method, the client address's failure budget (429 `too_many_failures`),
//! bearer token (401; a failure is charged to the client address), the token's rate limit
//! (429 `rate_limited` with `X-RateLimit-*`), event type routed (404), token scope (403),
//! schema available (503), body size (413), JSON (400), `source` (403 `source_mismatch`),
//! `Idempotency-Key` (replay / 409 / 422), schema (422 with field errors), then the durable
//! write (202, or 503 when Kafka does not acknowledge in time).
//!
//! Who published an event is the token's business, not the body's: `source` is always the
//! token's (`sluice://publishers/<token name>` unless the token configures `source`; filled
//! in when absent, refused when different), and an
//! `event_id` the publisher chooses is stored as `<token name>:<event_id>`, so no publisher
//! can write events that pass for another's or collide with another's ids. An event without
//! `event_id` gets a fresh UUIDv7.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_runtime::config::Scope;
use sluice_schemas::json::FieldError;

use super::auth::{bearer, Caller, Tokens};
use super::idempotency::{fingerprint, Begin, IdempotencyStore, MAX_KEY_LEN};
use super::publisher::{PublishContext, PublishError, Publisher};
use crate::gateway::errors::{code, ApiError};
use crate::gateway::metrics::UNKNOWN;
use crate::gateway::rate_limit::ClientFailures;
use crate::gateway::routes::{charge_slow_body, read_limited, ClientAddr};
use crate::gateway::AppState;

/// Largest publish request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Request header carrying the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header set on a replayed answer.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The publish side of the gateway: tokens, the publisher (absent when no token is
/// configured, so every request is 401) and the idempotency store.
#[derive(Debug)]
pub struct PublishApi {
    publisher: Option<Arc<Publisher>>,
    tokens: Tokens,
    idempotency: IdempotencyStore,
    retry_after_secs: u64,
}

impl PublishApi {
    pub fn new(
        publisher: Option<Arc<Publisher>>,
        tokens: Tokens,
        idempotency: IdempotencyStore,
        retry_after_secs: u64,
    ) -> Self {
        Self {
            publisher,
            tokens,
            idempotency,
            retry_after_secs,
        }
    }

    /// No publisher and no tokens: every request is answered 401.
    pub fn disabled() -> Self {
        Self::new(
            None,
            Tokens::resolve(&[], &BTreeSet::new()).expect("no tokens"),
            IdempotencyStore::new(Duration::from_secs(1), 1),
            1,
        )
    }

    pub fn publisher(&self) -> Option<&Arc<Publisher>> {
        self.publisher.as_ref()
    }

    /// The gateway's bearer tokens (also the management API's, by scope).
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }
}

pub(crate) async fn publish(
    State(app): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let event_type = path.map(|p| p.0).unwrap_or_default();
    let api = &app.publish;
    let label = match &api.publisher {
        Some(p) if p.is_routed(&event_type) => event_type.as_str(),
        _ => UNKNOWN,
    };
    let client = Client {
        addr: client,
        failures: &app.failures,
    };
    let (outcome, response) = match handle(api, client, &method, &headers, &event_type, body).await
    {
        Ok((outcome, response)) => (outcome, response),
        Err(e) => (e.code, e.into_response()),
    };
    app.metrics
        .publish_requests
        .with_label_values(&[label, outcome])
        .inc();
    app.metrics
        .publish_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The client address and its failure budget.
#[derive(Clone, Copy)]
struct Client<'a> {
    addr: std::net::IpAddr,
    failures: &'a ClientFailures,
}

async fn handle(
    api: &PublishApi,
    client: Client<'_>,
    method: &Method,
    headers: &HeaderMap,
    event_type: &str,
    body: Body,
) -> Result<(&'static str, Response), ApiError> {
    if method != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
    if let Some(retry_after) = client.failures.refused(client.addr) {
        return Err(ApiError::too_many_failures(retry_after));
    }
    let presented = bearer(headers.get(AUTHORIZATION).map(|v| v.as_bytes()));
    let caller = presented
        .and_then(|t| api.tokens.authenticate(t))
        .ok_or_else(|| match client.failures.charge(client.addr) {
            Some(retry_after) => ApiError::too_many_failures(retry_after),
            None => ApiError::unauthorized("a valid `Authorization: Bearer <token>` is required"),
        })?;
    if !caller.may(Scope::Publish) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            format!("token `{}` has no publish scope", caller.name),
        ));
    }
    if let Some(bucket) = &caller.bucket {
        let d = bucket.try_acquire();
        if !d.allowed {
            return Err(ApiError::rate_limited(
                &format!("publish token `{}`", caller.name),
                &d,
            ));
        }
    }
    let publisher = api
        .publisher
        .as_ref()
        .ok_or_else(|| ApiError::unauthorized("the publish API has no tokens configured"))?;
    if !publisher.is_routed(event_type) {
        return Err(from_publish_error(
            &PublishError::UnknownEventType(event_type.to_string()),
            api.retry_after_secs,
        ));
    }
    if !caller.allowed.permits(event_type) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            format!("token `{}` may not publish {event_type}", caller.name),
        ));
    }
    publisher
        .check_available(event_type)
        .map_err(|e| from_publish_error(&e, api.retry_after_secs))?;

    let bytes = read_limited(headers, body, MAX_BODY_BYTES)
        .await
        .map_err(|e| charge_slow_body(client.failures, client.addr, e))?;
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_JSON,
            format!("the body is not JSON: {e}"),
        )
    })?;
    bind_to_publisher(&mut json, caller)?;

    let claim = match idempotency_key(headers)? {
        None => None,
        Some(key) => match api.idempotency.begin(
            &caller.name,
            key,
            fingerprint(event_type, &bytes),
            Instant::now(),
        ) {
            Begin::New(claim) => Some(claim),
            Begin::Replay(body) => {
                let mut r = (StatusCode::ACCEPTED, Json(body)).into_response();
                r.headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, "true".parse().expect("header value"));
                return Ok(("replayed", r));
            }
            Begin::InProgress => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    code::IDEMPOTENCY_KEY_IN_PROGRESS,
                    "a request with this Idempotency-Key is being processed; retry shortly",
                )
                .with_header(RETRY_AFTER, 1))
            }
            Begin::Reused => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    code::IDEMPOTENCY_KEY_REUSED,
                    "this Idempotency-Key was already used for a different request",
                ))
            }
        },
    };

    let context = PublishContext {
        source: Some(caller.source.clone()),
        traceparent: headers
            .get(crate::traceparent::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let published = publisher
        .publish_with(event_type, json, &context)
        .await
        .map_err(|e| {
            if let PublishError::Produce(p) = &e {
                tracing::warn!(event_type, error = %p, "publish not acknowledged by Kafka");
            }
            from_publish_error(&e, api.retry_after_secs)
        })?;
    let body = serde_json::json!({
        "event_id": published.event_id,
        "topic": published.topic,
        "partition": published.partition,
        "offset": published.offset,
    });
    if let Some(claim) = claim {
        claim.complete(body.clone());
    }
    Ok((
        "accepted",
        (StatusCode::ACCEPTED, Json(body)).into_response(),
    ))
}

/// Makes the event `caller`'s: `source` must be absent, null or the caller's own (403
/// `source_mismatch` naming the field otherwise), and a chosen `event_id` is namespaced by
/// the caller's name. Values of the wrong type are left for the schema check to report.
fn bind_to_publisher(json: &mut serde_json::Value, caller: &Caller) -> Result<(), ApiError> {
    let Some(event) = json.as_object_mut() else {
        return Ok(());
    };
    let own = caller.source.as_str();
    if let Some(source) = event.get("source").filter(|v| !v.is_null()) {
        if source.as_str() != Some(own) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                code::SOURCE_MISMATCH,
                format!(
                    "token `{}` publishes as source `{own}`; omit `source` or send that value",
                    caller.name
                ),
            )
            .with_fields(vec![FieldError {
                field: "source".into(),
                message: format!("must be `{own}` or absent"),
            }]));
        }
    }
    if let Some(serde_json::Value::String(id)) = event.get_mut("event_id") {
        *id = caller.namespaced_event_id(id);
    }
    Ok(())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_IDEMPOTENCY_KEY,
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?.trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Some(key))
}

/// The HTTP answer for a [`PublishError`].
pub fn from_publish_error(e: &PublishError, retry_after_secs: u64) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut err = ApiError::new(status, e.code(), e.to_string());
    match e {
        PublishError::SchemaMismatch { fields, .. } => err = err.with_fields(fields.clone()),
        PublishError::Produce(crate::produce::ProduceError::Unavailable { .. }) => {
            err = err.with_header(RETRY_AFTER, retry_after_secs)
        }
        _ => {}
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::auth::Allowed;

    #[test]
    fn events_are_bound_to_the_token_publisher() {
        let billing = Caller {
            name: "billing".into(),
            source: "sluice://publishers/billing".into(),
            allowed: Allowed::All,
            bucket: None,
            scopes: [Scope::Publish].into(),
        };
        let mut json = serde_json::json!({"event_id": "order-42", "source": null});
        bind_to_publisher(&mut json, &billing).unwrap();
        assert_eq!(json["event_id"], "billing:order-42");
        let mut json = serde_json::json!({"source": "sluice://publishers/billing"});
        bind_to_publisher(&mut json, &billing).unwrap();
        assert!(
            json.get("event_id").is_none(),
            "filled in later as a UUIDv7"
        );
        let mut json = serde_json::json!({"source": "sluice://publishers/shop"});
        let err = bind_to_publisher(&mut json, &billing).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (403, "source_mismatch"));
        assert_eq!(err.body()["error"]["fields"][0]["field"], "source");
        let mut json = serde_json::json!({"event_id": 7});
        bind_to_publisher(&mut json, &billing).unwrap();
        assert_eq!(json["event_id"], 7, "left for the schema check");
    }

    #[test]
    fn schema_mismatch_carries_field_errors() {
        let e = PublishError::SchemaMismatch {
            event_type: "t".into(),
            version: 2,
            fields: vec![FieldError {
                field: "amount".into(),
                message: "expected decimal string".into(),
            }],
        };
        let api = from_publish_error(&e, 5);
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            api.body()["error"]["fields"],
            serde_json::json!([{"field": "amount", "message": "expected decimal string"}])
        );
    }

    #[test]
    fn idempotency_keys_are_validated() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert(IDEMPOTENCY_KEY, "order-42-attempt".parse().unwrap());
        assert_eq!(idempotency_key(&h).unwrap(), Some("order-42-attempt"));
        h.insert(IDEMPOTENCY_KEY, "has space".parse().unwrap());
        assert_eq!(
            idempotency_key(&h).unwrap_err().code,
            code::INVALID_IDEMPOTENCY_KEY
        );
        h.insert(IDEMPOTENCY_KEY, "x".repeat(256).parse().unwrap());
        assert!(idempotency_key(&h).is_err());
    }
}
