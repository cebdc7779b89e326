//! One HTTP step (or compensation) ready to run: its templates parsed, its status policy
//! and success condition, and how a response becomes the step's outcome.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Value as Json};
use sluice_runtime::outbound::{
    Attempt, FailureClass, OutboundRequest, RetryEnd, RetryOutcome, StatusPolicy,
};
use sluice_topology::http_step::IDEMPOTENCY_KEY;
use sluice_topology::model::{HttpCallSpec, HttpMethod, HttpSuccessSpec};
use sluice_topology::template::{Template, TemplateError};

use super::values::{Escape, RenderError, Values};
use crate::participant::Outcome;

/// The key of the call's summary in a step's result (what `sluice saga show` prints).
pub const CALL_KEY: &str = "_http";

/// A prepared call.
#[derive(Debug, Clone)]
pub struct HttpCall {
    method: HttpMethod,
    url: Template,
    headers: Vec<(HeaderName, Template)>,
    body: Option<Json>,
    success: HttpSuccessSpec,
    policy: StatusPolicy,
    keep: BTreeMap<String, Vec<String>>,
    upstream: Option<String>,
    /// How long the call may take, retries included: less than the step's timeout, so its
    /// reply arrives before the orchestrator gives up on it.
    pub budget: Duration,
}

/// What a rendered request looks like, without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub method: &'static str,
    pub url: String,
    /// The breaker, rate limit and metrics key: the configured name or the URL's host:port.
    pub upstream: String,
}

impl HttpCall {
    /// Prepares `spec` for a step whose reply is due within `timeout`.
    pub fn new(spec: &HttpCallSpec, timeout: Duration) -> Result<Self, TemplateError> {
        let headers = spec
            .headers
            .iter()
            .filter_map(|(name, value)| {
                // Names were validated with the topology.
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                Some(Template::parse(value).map(|t| (name, t)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            method: spec.method,
            url: Template::parse(&spec.url)?,
            headers,
            body: spec.body.clone(),
            success: spec.success.clone(),
            policy: StatusPolicy {
                permanent: spec.permanent.clone(),
                transient: spec.transient.clone(),
            },
            keep: spec
                .keep
                .iter()
                .map(|(k, path)| (k.clone(), path.split('.').map(str::to_string).collect()))
                .collect(),
            upstream: spec.upstream.clone(),
            budget: timeout.mul_f64(0.8),
        })
    }

    pub fn policy(&self) -> &StatusPolicy {
        &self.policy
    }

    /// The request for `values`' command, carrying its id as `Idempotency-Key`.
    pub fn request(&self, values: &Values<'_>) -> Result<(OutboundRequest, Shown), RenderError> {
        let text = values.render(&self.url, Escape::Url)?;
        let shown_url = values.render(&self.url, Escape::UrlRedacted)?;
        let url: reqwest::Url = text
            .parse()
            .ok()
            .filter(|u: &reqwest::Url| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| RenderError::BadUrl(shown_url.clone()))?;
        let upstream = self.upstream.clone().unwrap_or_else(|| {
            format!(
                "{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or_default()
            )
        });
        let mut headers = HeaderMap::new();
        for (name, template) in &self.headers {
            let value = values.render(template, Escape::None)?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| RenderError::BadHeader(name.to_string()))?;
            value.set_sensitive(template.has_secret());
            headers.insert(name.clone(), value);
        }
        headers.insert(
            HeaderName::from_static(IDEMPOTENCY_KEY),
            HeaderValue::from_str(values.command_id())
                .map_err(|_| RenderError::BadHeader(IDEMPOTENCY_KEY.into()))?,
        );
        let body = match &self.body {
            Some(template) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                values.render_json(template)?.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let mut request = OutboundRequest::post(url, body).with_headers(headers);
        request.method = method(self.method);
        Ok((
            request,
            Shown {
                method: self.method.as_str(),
                url: shown_url,
                upstream,
            },
        ))
    }

    /// What a run of attempts means for the saga.
    pub fn outcome(&self, shown: &Shown, run: &RetryOutcome) -> Outcome {
        let Some(last) = run.last() else {
            return Outcome::NoReply {
                why: format!(
                    "{} {}: no attempt could start within {:?} ({} held back by the breaker or rate limit of {}); the step's timeout decides",
                    shown.method, shown.url, self.budget, run.not_admitted, shown.upstream
                ),
            };
        };
        let summary = summary(shown, last, run.attempts.len());
        match self.policy.classify(last) {
            None => self.judge_success(shown, last, run.attempts.len()),
            Some(FailureClass::Permanent) => Outcome::Failed {
                reason: format!("{summary}: permanent failure"),
                retryable: false,
            },
            // Retried until the budget ran out, or cautiously (unknown answers): no reply,
            // so the orchestrator resends the same command, with the same Idempotency-Key,
            // when the step times out.
            Some(class) => Outcome::NoReply {
                why: format!(
                    "{summary}: {} failure, {}",
                    class.as_str(),
                    match run.end {
                        RetryEnd::Final => "not retried now",
                        _ => "retries ran out",
                    }
                ),
            },
        }
    }

    /// A 2xx: success if its status is one the step accepts and its JSON field condition
    /// holds; the kept fields become the step's result.
    fn judge_success(&self, shown: &Shown, last: &Attempt, attempts: usize) -> Outcome {
        let status = last.status.unwrap_or_default();
        let summary = summary(shown, last, attempts);
        if !self.success.status.is_empty() && !self.success.status.contains(&status) {
            return Outcome::NoReply {
                why: format!(
                    "{summary}: not one of the success statuses {:?}",
                    self.success.status
                ),
            };
        }
        let body: Json = serde_json::from_slice(&last.body_prefix).unwrap_or(Json::Null);
        if let Some(field) = &self.success.field {
            let found = field.split('.').try_fold(&body, |v, s| v.get(s));
            let holds = match (&self.success.equals, found) {
                (Some(expected), Some(v)) => v == expected,
                (None, Some(v)) => !matches!(v, Json::Null | Json::Bool(false)),
                (_, None) => false,
            };
            if !holds {
                return Outcome::Failed {
                    reason: format!("{summary}: response field `{field}` does not say success"),
                    retryable: false,
                };
            }
        }
        let mut result = serde_json::Map::new();
        for (name, path) in &self.keep {
            match path.iter().try_fold(&body, |v, s| v.get(s)) {
                Some(v) => {
                    result.insert(name.clone(), v.clone());
                }
                None => {
                    return Outcome::Failed {
                        reason: format!(
                            "{summary}: the response has no `{}` to keep as `{name}`",
                            path.join(".")
                        ),
                        retryable: false,
                    }
                }
            }
        }
        result.insert(
            CALL_KEY.into(),
            json!({
                "method": shown.method,
                "url": shown.url,
                "upstream": shown.upstream,
                "status": status,
                "latency_ms": last.latency.as_millis() as u64,
                "attempts": attempts,
            }),
        );
        Outcome::Succeeded {
            result: Some(Json::Object(result)),
        }
    }
}

/// `POST [redacted]/v1/charges → 422 (attempt 1, 12 ms)`: what a reason or log shows.
fn summary(shown: &Shown, last: &Attempt, attempts: usize) -> String {
    let answer = match (last.status, &last.error) {
        (Some(s), _) => s.to_string(),
        (None, Some(e)) => e.clone(),
        (None, None) => last.verdict.to_string(),
    };
    format!(
        "{} {} → {answer} (attempt {attempts}, {} ms)",
        shown.method,
        shown.url,
        last.latency.as_millis()
    )
}

fn method(m: HttpMethod) -> reqwest::Method {
    match m {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
    }
}
