//! The delivery log routes of the endpoints API: an endpoint's deliveries, one delivery with
//! every attempt, resending one, and recovering every failed or missed one since a time.
//! The same operations as `sluice deliveries`, reading the status and attempts topics by time
//! on a blocking thread (see `sluice_delivery::log` for what that costs).

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sluice_delivery::log;
use sluice_delivery::resend::Resender;
use sluice_delivery::status::{DeliveryStatus, StatusRecord};
use sluice_runtime::kafka::KafkaClients;
use sluice_schemas::{AvroCodec, RegistryClient};

use super::http::{existing, Request};
use crate::gateway::errors::{code, ApiError};
use crate::produce;

/// What the routes read with and write through.
#[derive(Debug)]
pub(super) struct DeliveryLog {
    clients: KafkaClients,
    prefix: String,
    resender: Resender,
}

impl DeliveryLog {
    pub(super) fn new(clients: KafkaClients, registry: RegistryClient, prefix: &str) -> Self {
        Self {
            resender: Resender::new(clients.clone(), AvroCodec::new(registry), prefix),
            clients,
            prefix: prefix.to_string(),
        }
    }

    async fn statuses(
        &self,
        endpoint: &str,
        since: Option<jiff::Timestamp>,
    ) -> Result<Vec<StatusRecord>, ApiError> {
        let (c, p, e) = (
            self.clients.clone(),
            self.prefix.clone(),
            endpoint.to_string(),
        );
        tokio::task::spawn_blocking(move || log::statuses(&c, &p, &e, since))
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))
    }

    async fn status(&self, endpoint: &str, event: &str) -> Result<StatusRecord, ApiError> {
        self.statuses(endpoint, None)
            .await?
            .into_iter()
            .find(|s| s.webhook_id == event)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    code::NOT_FOUND,
                    format!("no delivery of event `{event}` to endpoint `{endpoint}` is recorded"),
                )
            })
    }
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, message)
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code::KAFKA_UNAVAILABLE,
        message,
    )
}

fn bad_query(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code::INVALID_BODY, message)
}

/// The log, once the caller is authorized and the endpoint exists.
fn log_for<'a>(req: &'a Request<'_>, id: &str) -> Result<&'a DeliveryLog, ApiError> {
    let (api, _) = req.api()?;
    existing(api, id)?;
    api.log
        .as_ref()
        .ok_or_else(|| internal("the delivery log is not loaded".into()))
}

/// `since` as RFC 3339.
fn parse_since(text: &str) -> Result<jiff::Timestamp, ApiError> {
    text.parse().map_err(|_| {
        bad_query(format!(
            "`since`: `{text}` is not an RFC 3339 time such as 2026-11-22T10:00:00Z"
        ))
    })
}

/// `GET /v1/endpoints/{id}/deliveries?since=T&status=S`.
pub(super) async fn list(req: &Request<'_>, id: &str) -> Result<Response, ApiError> {
    let log = log_for(req, id)?;
    let query: std::collections::HashMap<String, String> = req
        .query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let since = query.get("since").map(|s| parse_since(s)).transpose()?;
    let status = query
        .get("status")
        .map(|s| s.parse::<DeliveryStatus>().map_err(bad_query))
        .transpose()?;
    let data: Vec<StatusRecord> = log
        .statuses(id, since)
        .await?
        .into_iter()
        .filter(|s| status.is_none_or(|w| s.status == w))
        .collect();
    Ok(Json(serde_json::json!({ "data": data })).into_response())
}

/// `GET …/deliveries/{event_id}` and `POST …/deliveries/{event_id}/resend`.
pub(super) async fn route_one(
    req: &Request<'_>,
    id: &str,
    event: &str,
    sub: Option<&str>,
    method: &Method,
) -> Result<Response, ApiError> {
    match (sub, method) {
        (None, &Method::GET) => {
            let log = log_for(req, id)?;
            let status = log.status(id, event).await?;
            let (c, p, of) = (log.clients.clone(), log.prefix.clone(), status.clone());
            let attempts = tokio::task::spawn_blocking(move || log::attempts(&c, &p, &of))
                .await
                .map_err(|e| internal(e.to_string()))?
                .map_err(|e| unavailable(e.to_string()))?;
            Ok(Json(serde_json::json!({"status": status, "attempts": attempts})).into_response())
        }
        (None, _) => Err(ApiError::method_not_allowed("GET")),
        (Some("resend"), &Method::POST) => {
            let log = log_for(req, id)?;
            let status = log.status(id, event).await?;
            resend(req, log, &status).await?;
            Ok((
                StatusCode::ACCEPTED,
                Json(serde_json::json!({"resent": [event]})),
            )
                .into_response())
        }
        (Some("resend"), _) => Err(ApiError::method_not_allowed("POST")),
        (Some(other), _) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("no delivery action `{other}`; use resend"),
        )),
    }
}

/// Rebuilds `status`'s task and writes it, acknowledged.
async fn resend(
    req: &Request<'_>,
    log: &DeliveryLog,
    status: &StatusRecord,
) -> Result<(), ApiError> {
    let out = log
        .resender
        .task(status)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, code::INVALID_BODY, e.to_string()))?;
    let headers: Vec<(&str, &[u8])> = out
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    produce::send_keyed(
        &req.app.producer,
        &out.topic,
        out.key.as_deref().unwrap_or_default(),
        out.value.as_deref(),
        produce::owned_headers(&headers),
        req.app.produce_timeout,
    )
    .await
    .map_err(|_| ApiError::kafka_unavailable(req.app.retry_after_secs))?;
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    since: String,
}

/// `POST /v1/endpoints/{id}/recover` with `{"since": T}`.
pub(super) async fn recover(req: &Request<'_>, id: &str, body: Body) -> Result<Response, ApiError> {
    let log = log_for(req, id)?;
    let asked: RecoverRequest = req.json(body).await?;
    let since = parse_since(&asked.since)?;
    let mut resent = Vec::new();
    let mut failed = Vec::new();
    for s in log.statuses(id, Some(since)).await? {
        if !s.status.is_recoverable() {
            continue;
        }
        match resend(req, log, &s).await {
            Ok(()) => resent.push(s.webhook_id),
            Err(e) => {
                failed.push(serde_json::json!({"event_id": s.webhook_id, "message": e.message}))
            }
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"resent": resent, "failed": failed})),
    )
        .into_response())
}
