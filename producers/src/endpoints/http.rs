//! The `/v1/endpoints` handlers. Order of checks: method (405), the client address's
//! failure budget (429), bearer token (401, charged to the address), `admin` scope (403),
//! body size (413) and JSON (400 `invalid_json`, `unknown_field`, `missing_field`,
//! `invalid_body`), values (400 with the field's code), the endpoint's existence (404
//! `endpoint_not_found`), then the durable write (503 when Kafka does not acknowledge).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, LOCATION};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use sluice_delivery::endpoints::model::RotateRequest;
use sluice_delivery::endpoints::{new_id, Endpoint, EndpointPatch, EndpointSpec, ValidationError};
use sluice_runtime::config::Scope;
use sluice_schemas::json::FieldError;

use super::{EndpointsApi, MAX_BODY_BYTES};
use crate::gateway::errors::{code, ApiError};
use crate::gateway::metrics::UNKNOWN;
use crate::gateway::routes::{charge_slow_body, read_limited, ClientAddr};
use crate::gateway::AppState;
use crate::produce::{self, ProduceError};
use crate::publish::auth::{bearer, Caller};

/// What a request under `/v1/endpoints/{id}/…` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Disable,
    Enable,
    RotateSecret,
    /// `GET …/deliveries`: the endpoint's delivery log.
    Deliveries,
    /// `POST …/recover`: resend what failed or arrived while disabled.
    Recover,
}

impl Action {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "disable" => Some(Self::Disable),
            "enable" => Some(Self::Enable),
            "rotate-secret" => Some(Self::RotateSecret),
            "deliveries" => Some(Self::Deliveries),
            "recover" => Some(Self::Recover),
            _ => None,
        }
    }
}

/// The request's client address and headers, with the app they reached.
pub(super) struct Request<'a> {
    pub(super) app: &'a AppState,
    client: std::net::IpAddr,
    headers: &'a HeaderMap,
    /// The URI's query, if any.
    pub(super) query: Option<&'a str>,
}

/// Every `/v1/endpoints` route: `id` and `action` are the path's parameters, if any.
pub(crate) async fn handle(
    State(app): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    path: Result<Path<HashMap<String, String>>, PathRejection>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let params = path.map(|p| p.0).unwrap_or_default();
    let req = Request {
        app: &app,
        client,
        headers: &headers,
        query: uri.query(),
    };
    let id = params.get("id").map(String::as_str);
    let action = params.get("action").map(String::as_str);
    let event = params.get("event_id").map(String::as_str);
    let routed = match (id, event) {
        (Some(id), Some(event)) => {
            let sub = params.get("sub").map(String::as_str);
            super::deliveries::route_one(&req, id, event, sub, &method).await
        }
        _ => route(&req, id, action, &method, body).await,
    };
    let (outcome, response) = match routed {
        Ok(response) => ("ok", response),
        Err(e) => (e.code, e.into_response()),
    };
    app.metrics
        .endpoints_requests
        .with_label_values(&[
            match event {
                Some(_) => delivery_operation(params.get("sub").map(String::as_str), &method),
                None => operation(id.is_some(), action, &method),
            },
            outcome,
        ])
        .inc();
    response
}

/// The metric label of a request: what it asks for, from a fixed set.
fn operation(has_id: bool, action: Option<&str>, method: &Method) -> &'static str {
    match (has_id, action.map(Action::parse), method.as_str()) {
        (false, _, "GET") => "list",
        (false, _, "POST") => "create",
        (true, None, "GET") => "show",
        (true, None, "PATCH") => "update",
        (true, None, "DELETE") => "delete",
        (true, Some(Some(Action::Disable)), "POST") => "disable",
        (true, Some(Some(Action::Enable)), "POST") => "enable",
        (true, Some(Some(Action::RotateSecret)), "POST") => "rotate_secret",
        (true, Some(Some(Action::Deliveries)), "GET") => "deliveries",
        (true, Some(Some(Action::Recover)), "POST") => "recover",
        _ => UNKNOWN,
    }
}

/// The metric label of a request for one delivery.
fn delivery_operation(sub: Option<&str>, method: &Method) -> &'static str {
    match (sub, method.as_str()) {
        (None, "GET") => "delivery",
        (Some("resend"), "POST") => "resend",
        _ => UNKNOWN,
    }
}

async fn route(
    req: &Request<'_>,
    id: Option<&str>,
    action: Option<&str>,
    method: &Method,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(id) = id else {
        return match *method {
            Method::GET => list(req).await,
            Method::POST => create(req, body).await,
            _ => Err(ApiError::method_not_allowed("GET, POST")),
        };
    };
    let Some(action) = action else {
        return match *method {
            Method::GET => show(req, id).await,
            Method::PATCH => update(req, id, body).await,
            Method::DELETE => delete(req, id).await,
            _ => Err(ApiError::method_not_allowed("GET, PATCH, DELETE")),
        };
    };
    let Some(action) = Action::parse(action) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("no endpoint action `{action}`; use disable, enable, rotate-secret, deliveries or recover"),
        ));
    };
    if action == Action::Deliveries {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed("GET"));
        }
        return super::deliveries::list(req, id).await;
    }
    if method != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
    match action {
        Action::Disable => set_enabled(req, id, false).await,
        Action::Enable => set_enabled(req, id, true).await,
        Action::RotateSecret => rotate(req, id, body).await,
        Action::Recover => super::deliveries::recover(req, id, body).await,
        Action::Deliveries => unreachable!("answered above"),
    }
}

impl Request<'_> {
    /// The caller, if its token is valid and has the `admin` scope.
    pub(super) fn authorize(&self) -> Result<&Caller, ApiError> {
        let failures = &self.app.failures;
        if let Some(retry_after) = failures.refused(self.client) {
            return Err(ApiError::too_many_failures(retry_after));
        }
        let presented = bearer(self.headers.get(AUTHORIZATION).map(|v| v.as_bytes()));
        let caller = presented
            .and_then(|t| self.app.publish.tokens().authenticate(t))
            .ok_or_else(|| match failures.charge(self.client) {
                Some(retry_after) => ApiError::too_many_failures(retry_after),
                None => ApiError::unauthorized(
                    "a valid `Authorization: Bearer <token>` with the admin scope is required",
                ),
            })?;
        if !caller.may(Scope::Admin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                code::FORBIDDEN,
                format!("token `{}` has no admin scope", caller.name),
            ));
        }
        Ok(caller)
    }

    /// Authorizes, then returns the API (which is on whenever an admin token exists).
    pub(super) fn api(&self) -> Result<(&EndpointsApi, &Caller), ApiError> {
        let caller = self.authorize()?;
        let api = &self.app.endpoints;
        match api.table {
            Some(_) => Ok((api, caller)),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::INTERNAL,
                "the endpoints API is not loaded",
            )),
        }
    }

    /// The body, read within the limit and parsed as `T`; an empty body is `{}`.
    pub(super) async fn json<T: DeserializeOwned>(&self, body: Body) -> Result<T, ApiError> {
        let bytes = read_limited(self.headers, body, MAX_BODY_BYTES)
            .await
            .map_err(|e| charge_slow_body(&self.app.failures, self.client, e))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text).map_err(|e| body_error(&e))
    }

    /// Writes `endpoint` (or, with `None`, a tombstone for `id`) and applies it to the
    /// table once Kafka acknowledged it.
    async fn write(&self, id: &str, endpoint: Option<&Endpoint>) -> Result<(), ApiError> {
        let api = &self.app.endpoints;
        let value = endpoint.map(|e| serde_json::to_vec(e).expect("endpoints serialise"));
        let delivered = produce::send_keyed(
            &self.app.producer,
            &api.topic,
            id.as_bytes(),
            value.as_deref(),
            produce::owned_headers::<&str, &[u8]>(&[]),
            self.app.produce_timeout,
        )
        .await
        .map_err(|e| {
            tracing::warn!(endpoint = id, error = %e, "endpoint change not acknowledged by Kafka");
            match e {
                ProduceError::Unavailable { .. } => {
                    ApiError::kafka_unavailable(self.app.retry_after_secs)
                }
                ProduceError::TooLarge { .. } => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    code::BODY_TOO_LARGE,
                    e.to_string(),
                ),
            }
        })?;
        if let Some(table) = &api.table {
            table
                .apply(
                    id,
                    value.as_deref(),
                    Some((delivered.partition, delivered.offset)),
                )
                .expect("a record this gateway just wrote reads back");
        }
        Ok(())
    }
}

fn table(api: &EndpointsApi) -> &sluice_delivery::endpoints::EndpointTable {
    api.table.as_ref().expect("checked by Request::api")
}

pub(super) fn existing(api: &EndpointsApi, id: &str) -> Result<Endpoint, ApiError> {
    table(api).get(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::ENDPOINT_NOT_FOUND,
            format!("no endpoint with id `{id}`"),
        )
    })
}

async fn list(req: &Request<'_>) -> Result<Response, ApiError> {
    let (api, _) = req.api()?;
    let data: Vec<_> = table(api)
        .list()
        .iter()
        .map(Endpoint::public_view)
        .collect();
    Ok(Json(serde_json::json!({ "data": data })).into_response())
}

async fn show(req: &Request<'_>, id: &str) -> Result<Response, ApiError> {
    let (api, _) = req.api()?;
    Ok(Json(existing(api, id)?.public_view()).into_response())
}

async fn create(req: &Request<'_>, body: Body) -> Result<Response, ApiError> {
    let (api, caller) = req.api()?;
    let spec: EndpointSpec = req.json(body).await?;
    let (endpoint, secret) =
        Endpoint::create(spec, new_id(), jiff::Timestamp::now()).map_err(|e| invalid(&e))?;
    endpoint
        .check_known_types(&api.known_types)
        .map_err(|e| invalid(&e))?;
    let _one_at_a_time = api.writes.lock().await;
    req.write(&endpoint.id, Some(&endpoint)).await?;
    tracing::info!(endpoint = %endpoint.id, by = %caller.name, "endpoint created");
    let mut view = endpoint.public_view();
    view["secret"] = secret.expose().into();
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(location) = format!("/v1/endpoints/{}", endpoint.id).parse() {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

async fn update(req: &Request<'_>, id: &str, body: Body) -> Result<Response, ApiError> {
    let (api, caller) = req.api()?;
    let patch: EndpointPatch = req.json(body).await?;
    let retyped = patch.event_types.is_some();
    let _one_at_a_time = api.writes.lock().await;
    let next = existing(api, id)?
        .patched(patch, jiff::Timestamp::now())
        .map_err(|e| invalid(&e))?;
    if retyped {
        // Only new event types are checked: an endpoint naming a type since removed from
        // the catalog can still be changed otherwise.
        next.check_known_types(&api.known_types)
            .map_err(|e| invalid(&e))?;
    }
    req.write(id, Some(&next)).await?;
    tracing::info!(endpoint = id, by = %caller.name, "endpoint updated");
    Ok(Json(next.public_view()).into_response())
}

async fn delete(req: &Request<'_>, id: &str) -> Result<Response, ApiError> {
    let (api, caller) = req.api()?;
    let _one_at_a_time = api.writes.lock().await;
    existing(api, id)?;
    req.write(id, None).await?;
    tracing::info!(endpoint = id, by = %caller.name, "endpoint deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_enabled(req: &Request<'_>, id: &str, enabled: bool) -> Result<Response, ApiError> {
    let (api, caller) = req.api()?;
    let _one_at_a_time = api.writes.lock().await;
    let mut next = existing(api, id)?;
    if next.enabled != enabled {
        next.enabled = enabled;
        next.updated_at = jiff::Timestamp::now();
        req.write(id, Some(&next)).await?;
        tracing::info!(endpoint = id, by = %caller.name, enabled, "endpoint switched");
    }
    Ok(Json(next.public_view()).into_response())
}

async fn rotate(req: &Request<'_>, id: &str, body: Body) -> Result<Response, ApiError> {
    let (api, caller) = req.api()?;
    let grace = req
        .json::<RotateRequest>(body)
        .await?
        .grace_period()
        .map_err(|e| invalid(&e))?;
    let _one_at_a_time = api.writes.lock().await;
    let mut next = existing(api, id)?;
    let secret = next.rotate_secret(jiff::Timestamp::now(), grace);
    req.write(id, Some(&next)).await?;
    tracing::info!(endpoint = id, by = %caller.name, grace_secs = grace.as_secs(), "endpoint secret rotated");
    let mut view = next.public_view();
    view["secret"] = secret.expose().into();
    Ok(Json(view).into_response())
}

/// A value that did not validate: 400 with the field's code and path.
fn invalid(e: &ValidationError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.code, e.to_string()).with_fields(vec![FieldError {
        field: e.field.clone(),
        message: e.message.clone(),
    }])
}

/// A body that is not the request's JSON shape: which kind of problem, and the field serde
/// names (between backticks) when there is one.
fn body_error(e: &serde_json::Error) -> ApiError {
    let message = e.to_string();
    let named = message
        .split('`')
        .nth(1)
        .map(str::to_string)
        .filter(|_| message.contains('`'));
    let (status_code, what) = match e.classify() {
        serde_json::error::Category::Data if message.starts_with("unknown field") => {
            (code::UNKNOWN_FIELD, named)
        }
        serde_json::error::Category::Data if message.starts_with("missing field") => {
            (code::MISSING_FIELD, named)
        }
        serde_json::error::Category::Data => (code::INVALID_BODY, None),
        _ => (code::INVALID_JSON, None),
    };
    let err = ApiError::new(
        StatusCode::BAD_REQUEST,
        status_code,
        format!("the body is not a valid request: {message}"),
    );
    match what {
        Some(field) => err.with_fields(vec![FieldError {
            field,
            message: message.clone(),
        }]),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field_with_a_stable_code() {
        let e = serde_json::from_str::<EndpointSpec>(
            r#"{"url":"https://x.example","event_types":["a.B"],"colour":1}"#,
        )
        .unwrap_err();
        let api = body_error(&e);
        assert_eq!((api.status.as_u16(), api.code), (400, "unknown_field"));
        assert_eq!(api.body()["error"]["fields"][0]["field"], "colour");
        let e = serde_json::from_str::<EndpointSpec>(r#"{"event_types":["a.B"]}"#).unwrap_err();
        let api = body_error(&e);
        assert_eq!(api.code, "missing_field");
        assert_eq!(api.body()["error"]["fields"][0]["field"], "url");
        let e =
            serde_json::from_str::<EndpointSpec>(r#"{"url": 5, "event_types": []}"#).unwrap_err();
        assert_eq!(body_error(&e).code, "invalid_body");
        let e = serde_json::from_str::<EndpointSpec>("{not json").unwrap_err();
        assert_eq!(body_error(&e).code, "invalid_json");
    }

    #[test]
    fn operations_are_a_fixed_set_of_labels() {
        assert_eq!(operation(false, None, &Method::POST), "create");
        assert_eq!(
            operation(true, Some("rotate-secret"), &Method::POST),
            "rotate_secret"
        );
        assert_eq!(
            operation(true, Some("rotate-secret"), &Method::GET),
            "unknown"
        );
        assert_eq!(operation(true, Some("../../etc"), &Method::POST), "unknown");
        assert_eq!(operation(true, None, &Method::PUT), "unknown");
        assert_eq!(operation(true, Some("recover"), &Method::POST), "recover");
        assert_eq!(delivery_operation(Some("resend"), &Method::POST), "resend");
        assert_eq!(delivery_operation(Some("x"), &Method::POST), "unknown");
    }

    #[test]
    fn validation_errors_keep_their_code_and_path() {
        let e = ValidationError {
            field: "retry_schedule[1]".into(),
            code: "invalid_retry_schedule",
            message: "`soon` is not a duration".into(),
        };
        let api = invalid(&e);
        assert_eq!(api.code, "invalid_retry_schedule");
        assert_eq!(
            api.body()["error"]["fields"][0]["field"],
            "retry_schedule[1]"
        );
    }
}
