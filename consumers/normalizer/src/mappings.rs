//! Provider mappings: a raw webhook delivery in, canonical events out.
//!
//! Mappings are pure functions over the delivery's bytes and metadata, one module per
//! provider, so each is tested on real payloads without a broker. The normalizer consumer
//! adds the common metadata fields (`event_id`, `occurred_at`, `source`, `subject`), encodes
//! with the catalog schema and produces to the routed topic.

pub mod claims;
pub mod generic;
pub mod github;
pub mod money;
#[cfg(test)]
mod proptests;
pub mod redact;
#[cfg(test)]
mod regressions;
pub mod sendgrid;
pub mod shopify;
pub mod slack;
pub mod stripe;

use serde_json::Value as Json;

use sluice_stream::ErrorClass;

/// A raw delivery as the gateway wrote it (see the raw record headers).
#[derive(Debug, Clone, Copy)]
pub struct RawDelivery<'a> {
    /// Configured source instance, e.g. `stripe` or `github-main`.
    pub source: &'a str,
    /// Provider type, e.g. `stripe`, `github`, `standard_webhooks`, `generic_hmac`.
    pub provider: &'a str,
    pub delivery_id: &'a str,
    /// The provider's event name when the gateway knew it (GitHub's `X-GitHub-Event`,
    /// Shopify's `X-Shopify-Topic`, Stripe's body `type`, …).
    pub event_type: Option<&'a str>,
    pub received_at_ms: i64,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// One canonical event produced from a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// Full Avro record name, e.g. `dev.sluice.events.payments.PaymentSucceeded`.
    pub event_type: &'static str,
    /// Kafka key of the normalized record: the business entity, so its events stay ordered
    /// (payment intent id, order id, repository full name, email address).
    pub key: String,
    /// CloudEvents `ce_subject`: the id of the resource the event is about.
    pub subject: Option<String>,
    /// When it happened at the provider, epoch ms (the delivery's `received_at` when the
    /// payload has no time).
    pub occurred_at_ms: i64,
    /// The record's domain fields as JSON, in the catalog schema's shape, WITHOUT the four
    /// metadata fields (`event_id`, `occurred_at`, `source`, `subject`). Money is
    /// `{"amount": "<decimal string>", "currency": "<ISO-4217 upper case>"}`.
    pub fields: Json,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The body is not JSON (or not the JSON shape the provider documents).
    #[error("invalid JSON from {provider}: {reason}")]
    InvalidJson { provider: String, reason: String },
    /// A well-formed delivery whose event type no mapping covers.
    #[error("no mapping for {provider} event type `{event_type}`")]
    Unmapped {
        provider: String,
        event_type: String,
    },
    /// JSON that lacks a field the mapping needs, with the field's path.
    #[error("{provider} {event_type}: {reason}")]
    Invalid {
        provider: String,
        event_type: String,
        reason: String,
    },
    /// The event type an unsigned header claims contradicts the signed body (see
    /// [`claims`]).
    #[error("{provider} delivery claims `{claimed}`, but {reason}")]
    EventTypeMismatch {
        provider: String,
        claimed: String,
        reason: String,
    },
}

impl MapError {
    /// The class a delivery that fails this way is dead-lettered with.
    pub fn class(&self) -> ErrorClass {
        match self {
            MapError::InvalidJson { .. } => ErrorClass::InvalidJson,
            MapError::Unmapped { .. } => ErrorClass::UnmappedEventType,
            MapError::Invalid { .. } => ErrorClass::InvalidPayload,
            MapError::EventTypeMismatch { .. } => ErrorClass::EventTypeMismatch,
        }
    }
}

/// Maps a delivery with the mapping for its provider.
///
/// Every event it returns has a non-empty key: an entity id sent as `""` (a hostile or
/// broken payload) is [`MapError::Invalid`], not an event that would share the empty key
/// (and so a partition and an ordering) with every other such event.
pub fn map(delivery: &RawDelivery<'_>) -> Result<Vec<Mapped>, MapError> {
    let mapped = match delivery.provider {
        "stripe" => stripe::map(delivery),
        "github" => github::map(delivery),
        "shopify" => shopify::map(delivery),
        "sendgrid" => sendgrid::map(delivery),
        "slack" => slack::map(delivery),
        _ => generic::map(delivery),
    }?;
    if let Some((i, m)) = mapped.iter().enumerate().find(|(_, m)| m.key.is_empty()) {
        return Err(MapError::Invalid {
            provider: delivery.provider.to_string(),
            event_type: delivery.event_type.unwrap_or("unknown").to_string(),
            reason: format!(
                "event {i} ({}) has an empty key: its entity id is an empty string",
                m.event_type
            ),
        });
    }
    Ok(mapped)
}

/// Parses the body as JSON or says why not.
pub fn parse_json(delivery: &RawDelivery<'_>) -> Result<Json, MapError> {
    serde_json::from_slice(delivery.body).map_err(|e| MapError::InvalidJson {
        provider: delivery.provider.to_string(),
        reason: e.to_string(),
    })
}

/// The deterministic event id of the `index`-th event mapped from a delivery: the same
/// delivery always yields the same ids, so a redelivery or a reprocessing after a crash is
/// recognisable by id downstream.
pub fn event_id(source: &str, delivery_id: &str, index: usize) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c1c_e000_0000_4000_8000_0000_0000_0001);
    uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{source}\n{delivery_id}\n{index}").as_bytes(),
    )
    .to_string()
}
