//! Standard Webhooks signatures for outbound deliveries
//! (<https://www.standardwebhooks.com/>, "Signature scheme").
//!
//! Each delivery carries three headers:
//! - `webhook-id`: the message id, the same on every attempt (receivers deduplicate on it);
//! - `webhook-timestamp`: unix seconds of this attempt;
//! - `webhook-signature`: `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`, one per
//!   secret in force, separated by spaces, so a receiver that has either the old or the new
//!   secret accepts deliveries during a rotation's grace period.
//!
//! `key` is the base64-decoded part of the secret after `whsec_`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::endpoints::{Endpoint, SecretValue};

pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The three signature headers of one delivery attempt, as (name, value) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
}

impl SignedHeaders {
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (WEBHOOK_ID, self.id.clone()),
            (WEBHOOK_TIMESTAMP, self.timestamp.to_string()),
            (WEBHOOK_SIGNATURE, self.signature.clone()),
        ]
    }
}

/// `v1,<base64 signature>` of one secret.
pub fn sign_v1(secret: &SecretValue, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.key()).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` value for `secrets`: one `v1,…` per secret, space-separated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a SecretValue>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|s| sign_v1(s, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Signs a delivery of `body` with message id `id` to `endpoint` at `now`, with every
/// secret of the endpoint in force then.
pub fn sign_delivery(
    endpoint: &Endpoint,
    id: &str,
    now: jiff::Timestamp,
    body: &[u8],
) -> SignedHeaders {
    let timestamp = now.as_second();
    SignedHeaders {
        id: id.to_string(),
        timestamp,
        signature: signature_header(endpoint.signing_secrets(now), id, timestamp, body),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::endpoints::EndpointSpec;

    /// The published Standard Webhooks vectors (see `tests/data/README.md`).
    const VECTORS: &str = include_str!("../tests/data/standard-webhooks-vectors.json");

    #[test]
    fn signatures_equal_the_published_standard_webhooks_vectors() {
        let vectors: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let cases = vectors["standard_webhooks"].as_array().unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for case in cases {
            let secret = SecretValue::parse(case["secret"].as_str().unwrap()).unwrap();
            let h = &case["headers"];
            let ours = sign_v1(
                &secret,
                h["webhook-id"].as_str().unwrap(),
                h["webhook-timestamp"].as_str().unwrap().parse().unwrap(),
                case["body"].as_str().unwrap().as_bytes(),
            );
            let published = h["webhook-signature"].as_str().unwrap();
            if case["valid"].as_bool().unwrap() {
                assert_eq!(ours, published, "{}", case["source"]);
                valid += 1;
            } else {
                assert_ne!(ours, published, "{}", case["source"]);
                invalid += 1;
            }
        }
        assert!(
            valid >= 1 && invalid >= 1,
            "{valid} valid, {invalid} invalid"
        );
    }

    #[test]
    fn a_delivery_carries_one_signature_per_secret_in_force() {
        let vectors: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let case = &vectors["standard_webhooks"][0];
        let published = case["headers"]["webhook-signature"].as_str().unwrap();
        let spec: EndpointSpec = serde_json::from_value(serde_json::json!({
            "url": "https://example.com/h", "event_types": ["a.B"],
        }))
        .unwrap();
        let t0 = jiff::Timestamp::from_second(1_649_367_553).unwrap();
        let (mut endpoint, first) = Endpoint::create(spec, "ep_s".into(), t0).unwrap();
        // Give the endpoint the vector's secret, so the signature can be compared with the
        // published one.
        endpoint.secrets[0].value = SecretValue::parse(case["secret"].as_str().unwrap()).unwrap();
        assert_ne!(first, endpoint.secrets[0].value);
        let id = case["headers"]["webhook-id"].as_str().unwrap();
        let body = case["body"].as_str().unwrap().as_bytes();
        let signed = sign_delivery(&endpoint, id, t0, body);
        assert_eq!(signed.signature, published);
        assert_eq!(
            signed.pairs()[1],
            (WEBHOOK_TIMESTAMP, "1649367553".to_string())
        );

        let new = endpoint.rotate_secret(t0, Duration::from_secs(60));
        let during = sign_delivery(&endpoint, id, t0, body);
        let parts: Vec<&str> = during.signature.split(' ').collect();
        assert_eq!(
            parts,
            vec![sign_v1(&new, id, t0.as_second(), body).as_str(), published]
        );
        let after = t0 + jiff::SignedDuration::from_secs(60);
        let later = sign_delivery(&endpoint, id, after, body);
        assert_eq!(later.signature, sign_v1(&new, id, after.as_second(), body));
        assert!(!later.signature.contains(' '));
    }
}
