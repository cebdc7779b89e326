//! What an endpoint is, and how requests to create and change one are checked.
//!
//! Requests arrive as [`EndpointSpec`] (create), [`EndpointPatch`] (update) and
//! [`RotateRequest`]; each denies unknown fields and keeps free-form values as text, so that
//! every problem is reported by [`ValidationError`] with the field's path
//! (`event_types[2]`) and a stable code naming the field (`invalid_event_types`), never as
//! a bare deserializer message. Only a checked [`Endpoint`] is ever stored.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use sluice_topology::naming::{format_duration, parse_duration};

use super::breaker::BreakerSettings;
use super::secret::{EndpointSecret, SecretValue};

/// How long a rotated-out secret keeps signing when the request does not say.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// The longest grace period a rotation may ask for.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(30 * 86_400);
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_EVENT_TYPES: usize = 100;
pub const MAX_FILTERS: usize = 20;
pub const MAX_FILTER_VALUE_LEN: usize = 512;
pub const MAX_DESCRIPTION_LEN: usize = 1024;
pub const MAX_RATE_PER_SEC: i64 = 10_000;
pub const MAX_IN_FLIGHT: i64 = 1_000;
pub const MAX_RETRIES: usize = 20;
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 86_400);

/// A request value that is wrong: which field, a stable code naming it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field's path in the request, e.g. `retry_schedule[1]`.
    pub field: String,
    /// `invalid_<field>`, e.g. `invalid_url`, stable for clients to branch on.
    pub code: &'static str,
    pub message: String,
}

impl ValidationError {
    pub(crate) fn new(
        field: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

/// The stable codes of [`ValidationError`], one per field.
pub mod code {
    pub const URL: &str = "invalid_url";
    pub const EVENT_TYPES: &str = "invalid_event_types";
    pub const FILTER: &str = "invalid_filter";
    pub const ORDERING: &str = "invalid_ordering";
    pub const RATE_LIMIT: &str = "invalid_rate_limit_per_sec";
    pub const MAX_IN_FLIGHT: &str = "invalid_max_in_flight";
    pub const DESCRIPTION: &str = "invalid_description";
    pub const RETRY_SCHEDULE: &str = "invalid_retry_schedule";
    pub const GRACE_PERIOD: &str = "invalid_grace_period";
    pub const BREAKER: &str = "invalid_breaker";
}

/// Which event types an endpoint takes: one full name, or every type under a prefix
/// (written `dev.sluice.events.payments.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EventTypePattern {
    Exact(String),
    /// The prefix with its trailing dot, `dev.sluice.events.payments.`.
    Prefix(String),
}

impl EventTypePattern {
    /// `a.b.C` or `a.b.*`: dot-separated segments of letters, digits, `_` and `-`; `*` only
    /// as the whole last segment, after at least one other.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, prefix) = match text.strip_suffix(".*") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        if name.is_empty() {
            return Err(format!(
                "`{text}` names no event type; use a full name such as dev.sluice.events.payments.PaymentSucceeded or a prefix such as dev.sluice.events.payments.*"
            ));
        }
        for segment in name.split('.') {
            let ok = !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if !ok {
                return Err(format!(
                    "`{text}` is not an event type or pattern: segments are letters, digits, `_` or `-`, separated by single dots, and `*` may only end a pattern as `.*`"
                ));
            }
        }
        Ok(if prefix {
            Self::Prefix(format!("{name}."))
        } else {
            Self::Exact(name.to_string())
        })
    }
}

impl std::fmt::Display for EventTypePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl TryFrom<String> for EventTypePattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<EventTypePattern> for String {
    fn from(p: EventTypePattern) -> String {
        p.to_string()
    }
}

/// The CloudEvents attributes a filter may test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CeAttribute {
    Source,
    Subject,
}

/// How a filter compares an attribute with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    Equals,
    Prefix,
}

/// One condition on an event's CloudEvents attributes; an endpoint's filters must all hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeFilter {
    pub attribute: CeAttribute,
    pub op: FilterOp,
    pub value: String,
}

/// Whether deliveries to an endpoint keep the order of their key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    #[default]
    Unordered,
    /// A key's later events wait while one of its events is being retried.
    PerKey,
}

/// The delays between delivery attempts, written as durations (`5s`, `5m`, `2h`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct RetrySchedule(pub Vec<Duration>);

impl TryFrom<Vec<String>> for RetrySchedule {
    type Error = String;
    fn try_from(texts: Vec<String>) -> Result<Self, String> {
        parse_schedule(&texts).map_err(|e| e.to_string())
    }
}

impl From<RetrySchedule> for Vec<String> {
    fn from(s: RetrySchedule) -> Self {
        s.0.into_iter().map(format_duration).collect()
    }
}

/// A subscription: where to deliver, which events, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub description: String,
    pub event_types: Vec<EventTypePattern>,
    pub filter: Vec<AttributeFilter>,
    pub ordering: Ordering,
    pub rate_limit_per_sec: Option<u32>,
    pub max_in_flight: Option<u32>,
    /// The endpoint's own circuit breaker; absent settings are the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSettings>,
    pub enabled: bool,
    /// `None`: the delivery consumer's default schedule.
    pub retry_schedule: Option<RetrySchedule>,
    /// Newest last. Several sign at once only during a rotation's grace period.
    pub secrets: Vec<EndpointSecret>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The filter as requests write it: `{"attribute": "source", "op": "equals", "value": …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub attribute: String,
    pub op: String,
    pub value: String,
}

/// `POST /v1/endpoints`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub url: String,
    pub event_types: Vec<String>,
    #[serde(default)]
    pub filter: Vec<FilterSpec>,
    #[serde(default)]
    pub ordering: Option<String>,
    #[serde(default)]
    pub rate_limit_per_sec: Option<i64>,
    #[serde(default)]
    pub max_in_flight: Option<i64>,
    #[serde(default)]
    pub breaker: Option<BreakerSettings>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub retry_schedule: Option<Vec<String>>,
}

/// `PATCH /v1/endpoints/{id}`: absent fields stay as they are; `null` clears an optional one
/// (`rate_limit_per_sec`, `max_in_flight`, `breaker`, `retry_schedule`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    #[serde(default)]
    pub filter: Option<Vec<FilterSpec>>,
    #[serde(default)]
    pub ordering: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit_per_sec: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub max_in_flight: Option<Option<i64>>,
    /// Replaces the breaker settings whole; `null`: the defaults.
    #[serde(default, deserialize_with = "present")]
    pub breaker: Option<Option<BreakerSettings>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub retry_schedule: Option<Option<Vec<String>>>,
}

/// `POST /v1/endpoints/{id}/rotate-secret`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the current secrets keep signing beside the new one (default 24 h).
    #[serde(default)]
    pub grace_period: Option<String>,
}

impl RotateRequest {
    pub fn grace_period(&self) -> Result<Duration, ValidationError> {
        let Some(text) = &self.grace_period else {
            return Ok(DEFAULT_GRACE_PERIOD);
        };
        let invalid = |m: String| ValidationError::new("grace_period", code::GRACE_PERIOD, m);
        let d = parse_duration(text).map_err(invalid)?;
        if d > MAX_GRACE_PERIOD {
            return Err(invalid(format!(
                "`{text}` is longer than the longest grace period, {}",
                format_duration(MAX_GRACE_PERIOD)
            )));
        }
        Ok(d)
    }
}

/// A field that is present, `null` included: `Some(None)` for `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl Endpoint {
    /// A new endpoint from a create request, with id `id` and one fresh secret; returns the
    /// secret's value too, to show the caller once.
    pub fn create(
        spec: EndpointSpec,
        id: String,
        now: Timestamp,
    ) -> Result<(Self, SecretValue), ValidationError> {
        let secret = SecretValue::generate();
        let endpoint = Self {
            id,
            url: parse_url(&spec.url)?,
            description: parse_description(spec.description.as_deref().unwrap_or(""))?,
            event_types: parse_event_types(&spec.event_types)?,
            filter: parse_filters(&spec.filter)?,
            ordering: parse_ordering(spec.ordering.as_deref())?,
            rate_limit_per_sec: parse_bounded(
                spec.rate_limit_per_sec,
                "rate_limit_per_sec",
                code::RATE_LIMIT,
                MAX_RATE_PER_SEC,
            )?,
            max_in_flight: parse_bounded(
                spec.max_in_flight,
                "max_in_flight",
                code::MAX_IN_FLIGHT,
                MAX_IN_FLIGHT,
            )?,
            breaker: spec.breaker.map(BreakerSettings::checked).transpose()?,
            enabled: spec.enabled.unwrap_or(true),
            retry_schedule: spec
                .retry_schedule
                .as_deref()
                .map(parse_schedule)
                .transpose()?,
            secrets: vec![EndpointSecret::new(secret.clone(), now)],
            created_at: now,
            updated_at: now,
        };
        Ok((endpoint, secret))
    }

    /// This endpoint with `patch` applied; nothing changes unless every field checks out.
    pub fn patched(&self, patch: EndpointPatch, now: Timestamp) -> Result<Self, ValidationError> {
        let mut next = self.clone();
        if let Some(url) = &patch.url {
            next.url = parse_url(url)?;
        }
        if let Some(types) = &patch.event_types {
            next.event_types = parse_event_types(types)?;
        }
        if let Some(filter) = &patch.filter {
            next.filter = parse_filters(filter)?;
        }
        if let Some(ordering) = &patch.ordering {
            next.ordering = parse_ordering(Some(ordering))?;
        }
        if let Some(rate) = patch.rate_limit_per_sec {
            next.rate_limit_per_sec = parse_bounded(
                rate,
                "rate_limit_per_sec",
                code::RATE_LIMIT,
                MAX_RATE_PER_SEC,
            )?;
        }
        if let Some(n) = patch.max_in_flight {
            next.max_in_flight =
                parse_bounded(n, "max_in_flight", code::MAX_IN_FLIGHT, MAX_IN_FLIGHT)?;
        }
        if let Some(breaker) = patch.breaker {
            next.breaker = breaker.map(BreakerSettings::checked).transpose()?;
        }
        if let Some(enabled) = patch.enabled {
            next.enabled = enabled;
        }
        if let Some(description) = &patch.description {
            next.description = parse_description(description)?;
        }
        if let Some(schedule) = &patch.retry_schedule {
            next.retry_schedule = schedule.as_deref().map(parse_schedule).transpose()?;
        }
        next.updated_at = now;
        Ok(next)
    }

    /// Adds a fresh secret; the secrets signing now keep signing beside it for `grace`
    /// (none sign past `now + grace`), and secrets already expired are dropped. Returns the
    /// new secret's value, to show the caller once.
    pub fn rotate_secret(&mut self, now: Timestamp, grace: Duration) -> SecretValue {
        let end = now
            .checked_add(jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX);
        self.secrets.retain(|s| s.is_active(now));
        for s in &mut self.secrets {
            if s.expires_at.is_none_or(|e| e > end) {
                s.expires_at = Some(end);
            }
        }
        let fresh = SecretValue::generate();
        self.secrets.push(EndpointSecret::new(fresh.clone(), now));
        self.updated_at = now;
        fresh
    }

    /// The secrets that sign a delivery made at `now`, newest first.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&SecretValue> {
        self.secrets
            .iter()
            .rev()
            .filter(|s| s.is_active(now))
            .map(|s| &s.value)
            .collect()
    }

    /// Refuses an exact event type that is not in `known` (a misspelt name would quietly
    /// match nothing). Prefix patterns are not checked: they may name types yet to come.
    pub fn check_known_types(&self, known: &BTreeSet<String>) -> Result<(), ValidationError> {
        for (i, p) in self.event_types.iter().enumerate() {
            if let EventTypePattern::Exact(name) = p {
                if !known.contains(name) {
                    return Err(ValidationError::new(
                        format!("event_types[{i}]"),
                        code::EVENT_TYPES,
                        format!("`{name}` is not an event type of the catalog; for every type under a prefix, end it with `.*`"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What the API answers about this endpoint: everything but secret values (each secret
    /// is shown by fingerprint, `created_at` and `expires_at`).
    pub fn public_view(&self) -> serde_json::Value {
        let mut view = serde_json::to_value(self).expect("endpoints serialise");
        view["secrets"] = self
            .secrets
            .iter()
            .map(EndpointSecret::public_view)
            .collect();
        view
    }
}

fn parse_url(text: &str) -> Result<String, ValidationError> {
    let invalid = |m: String| ValidationError::new("url", code::URL, m);
    if text.len() > MAX_URL_LEN {
        return Err(invalid(format!(
            "the URL is longer than {MAX_URL_LEN} bytes"
        )));
    }
    let url = url::Url::parse(text).map_err(|e| invalid(format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme must be http or https, not `{}`",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host".into()));
    }
    // Credentials in a URL would be shown by every GET: they belong in a signed request.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "the URL must not carry a user name or password".into(),
        ));
    }
    if url.fragment().is_some() {
        return Err(invalid("the URL must not have a fragment (`#…`)".into()));
    }
    Ok(url.to_string())
}

fn parse_event_types(texts: &[String]) -> Result<Vec<EventTypePattern>, ValidationError> {
    if texts.is_empty() {
        return Err(ValidationError::new(
            "event_types",
            code::EVENT_TYPES,
            "at least one event type or pattern is required",
        ));
    }
    if texts.len() > MAX_EVENT_TYPES {
        return Err(ValidationError::new(
            "event_types",
            code::EVENT_TYPES,
            format!("at most {MAX_EVENT_TYPES} event types or patterns"),
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            EventTypePattern::parse(text).map_err(|m| {
                ValidationError::new(format!("event_types[{i}]"), code::EVENT_TYPES, m)
            })
        })
        .collect()
}

fn parse_filters(specs: &[FilterSpec]) -> Result<Vec<AttributeFilter>, ValidationError> {
    if specs.len() > MAX_FILTERS {
        return Err(ValidationError::new(
            "filter",
            code::FILTER,
            format!("at most {MAX_FILTERS} filters"),
        ));
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let at = |field: &str, m: String| {
                ValidationError::new(format!("filter[{i}].{field}"), code::FILTER, m)
            };
            let attribute = match f.attribute.as_str() {
                "source" => CeAttribute::Source,
                "subject" => CeAttribute::Subject,
                other => {
                    return Err(at(
                        "attribute",
                        format!("`{other}` is not a filterable attribute (source, subject)"),
                    ))
                }
            };
            let op = match f.op.as_str() {
                "equals" => FilterOp::Equals,
                "prefix" => FilterOp::Prefix,
                other => {
                    return Err(at(
                        "op",
                        format!("`{other}` is not a filter operation (equals, prefix)"),
                    ))
                }
            };
            if f.value.is_empty() || f.value.len() > MAX_FILTER_VALUE_LEN {
                return Err(at(
                    "value",
                    format!("must be 1 to {MAX_FILTER_VALUE_LEN} bytes"),
                ));
            }
            Ok(AttributeFilter {
                attribute,
                op,
                value: f.value.clone(),
            })
        })
        .collect()
}

fn parse_ordering(text: Option<&str>) -> Result<Ordering, ValidationError> {
    match text {
        None | Some("unordered") => Ok(Ordering::Unordered),
        Some("per_key") => Ok(Ordering::PerKey),
        Some(other) => Err(ValidationError::new(
            "ordering",
            code::ORDERING,
            format!("`{other}` is not an ordering mode (unordered, per_key)"),
        )),
    }
}

fn parse_bounded(
    value: Option<i64>,
    field: &str,
    code: &'static str,
    max: i64,
) -> Result<Option<u32>, ValidationError> {
    match value {
        None => Ok(None),
        Some(n) if (1..=max).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(ValidationError::new(
            field,
            code,
            format!("{n} is out of range: 1 to {max}, or null for no limit"),
        )),
    }
}

fn parse_description(text: &str) -> Result<String, ValidationError> {
    let invalid = |m: &str| ValidationError::new("description", code::DESCRIPTION, m);
    if text.len() > MAX_DESCRIPTION_LEN {
        return Err(invalid("longer than 1024 bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(text.to_string())
}

fn parse_schedule(texts: &[String]) -> Result<RetrySchedule, ValidationError> {
    if texts.is_empty() || texts.len() > MAX_RETRIES {
        return Err(ValidationError::new(
            "retry_schedule",
            code::RETRY_SCHEDULE,
            format!("1 to {MAX_RETRIES} delays, or null for the default schedule"),
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let invalid = |m: String| {
                ValidationError::new(format!("retry_schedule[{i}]"), code::RETRY_SCHEDULE, m)
            };
            let d = parse_duration(text).map_err(invalid)?;
            if !(MIN_RETRY_DELAY..=MAX_RETRY_DELAY).contains(&d) {
                return Err(invalid(format!(
                    "`{text}` is outside {} to {}",
                    format_duration(MIN_RETRY_DELAY),
                    format_duration(MAX_RETRY_DELAY)
                )));
            }
            Ok(d)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(RetrySchedule)
}

/// A fresh endpoint id: `ep_` and a UUIDv7 (time-ordered, so listings sort by creation).
pub fn new_id() -> String {
    format!("ep_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
