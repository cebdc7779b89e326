//! The raw-delivery record: what the gateway writes to a source's raw topic and what the
//! normalizer reads back. The header names below are the contract between the two.
//!
//! - value: the request body, byte for byte (signatures cover exact bytes, so nothing is
//!   re-encoded);
//! - key: the provider's delivery id, or for providers without one the SHA-256 of the body,
//!   so a redelivery lands on the same partition as the original and dedup sees both; where
//!   the signature does not cover the delivery id (GitHub, Shopify, generic HMAC with an id
//!   header) the [`content_digest`] instead, so a replay under a fresh id lands there too;
//! - headers: provenance (`sluice_*`), `content-type`, `traceparent`, and an allow-list of
//!   the original request headers prefixed `sluice_h_`. Signature headers and anything
//!   that could carry a secret are never copied.
//!
//! The `sluice_*` names are defined once in `sluice_schemas::metadata::raw`, which the
//! normalizer reads; they are re-exported here next to what the gateway writes.

use sha2::{Digest, Sha256};
use sluice_schemas::metadata::raw;

use crate::verify::Verified;

/// The configured source name (`sources[].name`).
pub const SOURCE: &str = raw::SOURCE;
/// The provider type (`stripe`, `github`, …).
pub const PROVIDER: &str = raw::PROVIDER;
/// The provider's delivery id, or the SHA-256 (hex) of the body when it has none.
pub const DELIVERY_ID: &str = raw::DELIVERY_ID;
/// The provider's event name (`payment_intent.succeeded`, `push`, …), when known.
pub const EVENT_TYPE: &str = raw::EVENT_TYPE;
/// When the gateway received the request, RFC 3339 UTC with milliseconds.
pub const RECEIVED_AT: &str = raw::RECEIVED_AT;
/// The request's `Content-Type` (`application/octet-stream` when absent).
pub const CONTENT_TYPE: &str = sluice_schemas::metadata::CONTENT_TYPE;
/// W3C trace context: the request's when valid, otherwise a new trace.
pub const TRACEPARENT: &str = crate::traceparent::HEADER;
/// Set when the signature does not cover the delivery id (see [`content_digest`]).
pub const CONTENT_DIGEST: &str = raw::CONTENT_DIGEST;
/// Prefix of copied original request headers (`sluice_h_user-agent`).
pub const ORIGINAL_HEADER_PREFIX: &str = raw::ORIGINAL_HEADER_PREFIX;

/// Original request headers worth keeping for debugging and normalization. Lower case.
/// None of these carries a signature or credential.
pub const COPIED_HEADERS: &[&str] = &[
    "user-agent",
    "x-request-id",
    // GitHub
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-id",
    "x-github-hook-installation-target-type",
    // Shopify
    "x-shopify-topic",
    "x-shopify-shop-domain",
    "x-shopify-webhook-id",
    "x-shopify-event-id",
    "x-shopify-api-version",
    "x-shopify-triggered-at",
    // Standard Webhooks / Svix
    "webhook-id",
    "webhook-timestamp",
    "svix-id",
    "svix-timestamp",
    // Slack
    "x-slack-request-timestamp",
    "x-slack-retry-num",
    "x-slack-retry-reason",
];

/// Name fragments that mark a header as secret-bearing. Checked in addition to the
/// allow-list, so a careless addition to [`COPIED_HEADERS`] still cannot leak a signature.
const SECRET_MARKERS: &[&str] = &[
    "signature",
    "hmac",
    "authorization",
    "cookie",
    "secret",
    "token",
    "api-key",
    "apikey",
    "password",
];

/// Whether an original request header (lower-cased name) is copied onto the record.
pub fn is_copied(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    COPIED_HEADERS.contains(&name.as_str()) && !SECRET_MARKERS.iter().any(|m| name.contains(m))
}

/// The delivery id used as key and `sluice_delivery_id`.
pub fn delivery_id(verified: &Verified, body: &[u8]) -> String {
    match &verified.delivery_id {
        Some(id) => id.clone(),
        None => hex::encode(Sha256::digest(body)),
    }
}

/// SHA-256 (hex) of the claimed event type, a newline and the signed body: what a replay of
/// a captured delivery under a fresh, unsigned delivery id still has in common with the
/// original. The claimed type is part of it, because a provider may send one unchanged body
/// under two topics (a Shopify order created already paid: `orders/create` and
/// `orders/paid`), and both are real.
pub fn content_digest(event_type: Option<&str>, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(event_type.unwrap_or_default().as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// Everything that goes on one raw record besides the body.
#[derive(Debug, Clone)]
pub struct RawDelivery<'a> {
    pub source: &'a str,
    pub provider: &'static str,
    pub delivery_id: &'a str,
    pub event_type: Option<&'a str>,
    pub received_at_ms: i64,
    pub content_type: Option<&'a str>,
    pub traceparent: &'a str,
    /// [`content_digest`], when the provider's signature leaves the delivery id out.
    pub content_digest: Option<&'a str>,
    /// The request headers, lower-cased names, every value.
    pub request_headers: &'a [(String, Vec<u8>)],
}

impl RawDelivery<'_> {
    /// The record's headers, in a stable order.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut h: Vec<(String, Vec<u8>)> = vec![
            (SOURCE.into(), self.source.as_bytes().to_vec()),
            (PROVIDER.into(), self.provider.as_bytes().to_vec()),
            (DELIVERY_ID.into(), self.delivery_id.as_bytes().to_vec()),
        ];
        if let Some(t) = self.event_type {
            h.push((EVENT_TYPE.into(), t.as_bytes().to_vec()));
        }
        h.push((
            RECEIVED_AT.into(),
            sluice_schemas::metadata::rfc3339_ms(self.received_at_ms).into_bytes(),
        ));
        h.push((
            CONTENT_TYPE.into(),
            self.content_type
                .unwrap_or("application/octet-stream")
                .as_bytes()
                .to_vec(),
        ));
        h.push((TRACEPARENT.into(), self.traceparent.as_bytes().to_vec()));
        if let Some(d) = self.content_digest {
            h.push((CONTENT_DIGEST.into(), d.as_bytes().to_vec()));
        }
        for (name, value) in self.request_headers {
            if is_copied(name) {
                h.push((
                    format!("{ORIGINAL_HEADER_PREFIX}{}", name.to_ascii_lowercase()),
                    value.clone(),
                ));
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    const SIGNATURE_HEADERS: &[&str] = &[
        "stripe-signature",
        "x-hub-signature-256",
        "x-hub-signature",
        "x-shopify-hmac-sha256",
        "x-slack-signature",
        "webhook-signature",
        "svix-signature",
        "x-twilio-email-event-webhook-signature",
        "x-signature",
        "authorization",
        "cookie",
        "x-api-key",
    ];

    #[test]
    fn signature_and_secret_headers_are_never_copied() {
        for name in SIGNATURE_HEADERS {
            assert!(!is_copied(name), "{name}");
            assert!(!is_copied(&name.to_ascii_uppercase()), "{name}");
        }
        for name in COPIED_HEADERS {
            assert!(is_copied(name), "{name} is on the allow-list");
            assert!(
                !SECRET_MARKERS.iter().any(|m| name.contains(m)),
                "{name} looks secret"
            );
        }
        assert!(!is_copied("x-something-else"));
    }

    #[test]
    fn headers_carry_provenance_and_only_allowed_originals() {
        let mut request = hs(&[
            ("user-agent", "GitHub-Hookshot/abc"),
            ("x-github-event", "push"),
            ("x-github-delivery", "d-1"),
            ("content-type", "application/json"),
        ]);
        for name in SIGNATURE_HEADERS {
            request.push((name.to_string(), b"sha256=deadbeef".to_vec()));
        }
        let d = RawDelivery {
            source: "github",
            provider: "github",
            delivery_id: "d-1",
            event_type: Some("push"),
            received_at_ms: 1_649_367_553_123,
            content_type: Some("application/json"),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            content_digest: Some("abc"),
            request_headers: &request,
        };
        let h = d.headers();
        let get = |k: &str| {
            h.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get(SOURCE).as_deref(), Some("github"));
        assert_eq!(get(PROVIDER).as_deref(), Some("github"));
        assert_eq!(get(DELIVERY_ID).as_deref(), Some("d-1"));
        assert_eq!(get(EVENT_TYPE).as_deref(), Some("push"));
        assert_eq!(get(CONTENT_DIGEST).as_deref(), Some("abc"));
        assert_ne!(
            content_digest(Some("orders/create"), b"{}"),
            content_digest(Some("orders/paid"), b"{}"),
            "one body under two topics is two deliveries"
        );
        assert_eq!(
            get(RECEIVED_AT).as_deref(),
            Some("2022-04-07T21:39:13.123Z")
        );
        assert_eq!(get(CONTENT_TYPE).as_deref(), Some("application/json"));
        assert_eq!(get("sluice_h_x-github-event").as_deref(), Some("push"));
        assert_eq!(
            get("sluice_h_user-agent").as_deref(),
            Some("GitHub-Hookshot/abc")
        );
        for (name, value) in &h {
            assert!(value != b"sha256=deadbeef", "{name} copied a signature");
        }
        assert!(get("sluice_h_content-type").is_none());
    }

    #[test]
    fn key_is_the_delivery_id_or_a_body_hash() {
        let with_id = Verified {
            delivery_id: Some("evt_1".into()),
            ..Default::default()
        };
        assert_eq!(delivery_id(&with_id, b"x"), "evt_1");
        let without = Verified::default();
        let a = delivery_id(&without, b"{\"a\":1}");
        assert_eq!(a, delivery_id(&without, b"{\"a\":1}"));
        assert_ne!(a, delivery_id(&without, b"{\"a\":2}"));
        assert_eq!(
            delivery_id(&without, b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
