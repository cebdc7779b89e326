//! The gateway's error answers: always JSON `{"error":{"code","message"}}` with a stable,
//! machine-readable `code`, so senders and publishers can branch on it without parsing
//! prose. Messages may name headers, limits and topics, never secrets or signatures.

use axum::http::header::{HeaderName, HeaderValue, ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_schemas::json::FieldError;

use crate::verify::VerifyError;

/// Codes, in one place so tests and docs agree with the handlers.
pub mod code {
    pub const NOT_FOUND: &str = "not_found";
    pub const UNKNOWN_SOURCE: &str = "unknown_source";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const HEADERS_TOO_LARGE: &str = "headers_too_large";
    pub const BODY_READ_FAILED: &str = "body_read_failed";
    pub const BODY_READ_TIMEOUT: &str = "body_read_timeout";
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The client address caused too many verification failures (signatures, tokens).
    pub const TOO_MANY_FAILURES: &str = "too_many_failures";
    /// The server is handling as many requests as it is configured to (answered by the
    /// serving layer, `sluice_runtime::serve`).
    pub const OVERLOADED: &str = sluice_runtime::serve::OVERLOADED;
    /// A published event names a `source` other than its token's publisher.
    pub const SOURCE_MISMATCH: &str = "source_mismatch";
    pub const KAFKA_UNAVAILABLE: &str = "kafka_unavailable";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const UNKNOWN_EVENT_TYPE: &str = "unknown_event_type";
    pub const INVALID_JSON: &str = "invalid_json";
    pub const SCHEMA_MISMATCH: &str = "schema_mismatch";
    pub const SCHEMA_NOT_REGISTERED: &str = "schema_not_registered";
    pub const SCHEMA_OUT_OF_DATE: &str = "schema_out_of_date";
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    pub const IDEMPOTENCY_KEY_IN_PROGRESS: &str = "idempotency_key_in_progress";
    pub const INVALID_IDEMPOTENCY_KEY: &str = "invalid_idempotency_key";
    pub const INTERNAL: &str = "internal_error";
    /// `/v1/endpoints/{id}` names no endpoint.
    pub const ENDPOINT_NOT_FOUND: &str = "endpoint_not_found";
    /// A request body names a field the request does not have (bodies deny unknown fields).
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    /// A request body lacks a required field.
    pub const MISSING_FIELD: &str = "missing_field";
    /// A request body is JSON of the wrong shape (a field of the wrong type).
    pub const INVALID_BODY: &str = "invalid_body";
}

/// One error answer. Build it with the constructors below and return it from a handler.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Field-level problems (`schema_mismatch`).
    pub fields: Vec<FieldError>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("no route for `{path}`; webhooks go to POST /webhooks/{{source}}, events to POST /v1/events/{{event_type}}, endpoints are managed under /v1/endpoints; GET /openapi.json describes the API"),
        )
    }

    pub fn unknown_source(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::UNKNOWN_SOURCE,
            format!("no webhook source named `{name}` is configured"),
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            code::METHOD_NOT_ALLOWED,
            format!("use {allow}"),
        )
        .with_header(ALLOW, allow)
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::BODY_TOO_LARGE,
            format!("the body is larger than this endpoint's limit of {limit} bytes"),
        )
    }

    pub fn verify(e: &VerifyError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        Self::new(status, e.code(), e.to_string())
    }

    /// Kafka did not acknowledge in time: the sender should retry later.
    pub fn kafka_unavailable(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::KAFKA_UNAVAILABLE,
            "Kafka did not acknowledge the write in time; nothing was accepted, retry later",
        )
        .with_header(RETRY_AFTER, retry_after_secs)
    }

    /// The client address is over its verification failure budget.
    pub fn too_many_failures(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            code::TOO_MANY_FAILURES,
            "too many requests from this address failed verification; retry later",
        )
        .with_header(RETRY_AFTER, retry_after_secs)
    }

    /// A rate limit ([`crate::gateway::rate_limit::RateBucket`]) said no; `what` names it.
    pub fn rate_limited(what: &str, d: &crate::gateway::rate_limit::Decision) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            code::RATE_LIMITED,
            format!("{what} is over its rate limit"),
        )
        .with_rate_limit(d)
        .with_header(RETRY_AFTER, d.retry_after_secs)
    }

    /// The `X-RateLimit-*` headers of a decision.
    pub fn with_rate_limit(self, d: &crate::gateway::rate_limit::Decision) -> Self {
        self.with_header(HeaderName::from_static("x-ratelimit-limit"), d.limit)
            .with_header(
                HeaderName::from_static("x-ratelimit-remaining"),
                d.remaining,
            )
            .with_header(HeaderName::from_static("x-ratelimit-reset"), d.reset_secs)
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, message)
            .with_header(WWW_AUTHENTICATE, "Bearer")
    }

    pub fn with_fields(mut self, fields: Vec<FieldError>) -> Self {
        self.fields = fields;
        self
    }

    /// The JSON body, exposed for tests.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if !self.fields.is_empty() {
            error["fields"] = serde_json::to_value(&self.fields).unwrap_or_default();
        }
        serde_json::json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_have_the_documented_shape() {
        let e = ApiError::unknown_source("nope");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.body()["error"]["code"], "unknown_source");
        assert!(e.body()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope"));
        assert_eq!(e.body()["error"].as_object().unwrap().len(), 2);

        let e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code::SCHEMA_MISMATCH, "x")
            .with_fields(vec![FieldError {
                field: "amount".into(),
                message: "expected decimal string".into(),
            }]);
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"code": "schema_mismatch", "message": "x",
                "fields": [{"field": "amount", "message": "expected decimal string"}]}})
        );
    }

    #[test]
    fn verify_errors_keep_their_code_and_status() {
        let e = ApiError::verify(&VerifyError::InvalidSignature);
        assert_eq!((e.status.as_u16(), e.code), (401, "invalid_signature"));
        let e = ApiError::verify(&VerifyError::MissingHeader {
            header: "Stripe-Signature".into(),
        });
        assert_eq!((e.status.as_u16(), e.code), (400, "missing_signature"));
        let e = ApiError::verify(&VerifyError::TimestampOutOfTolerance { age_secs: 900 });
        assert_eq!(
            (e.status.as_u16(), e.code),
            (401, "timestamp_out_of_tolerance")
        );
    }

    #[tokio::test]
    async fn responses_carry_json_and_extra_headers() {
        let r = ApiError::method_not_allowed("POST").into_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "POST");
        assert_eq!(r.headers()["content-type"], "application/json");
        let r = ApiError::kafka_unavailable(5).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "kafka_unavailable");
    }
}
