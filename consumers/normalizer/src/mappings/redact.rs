//! Credentials that providers put inside webhook bodies, removed before a body is copied
//! into an event.
//!
//! Events topics are read by every downstream team; a credential copied there is a
//! credential leaked. Every path that copies a provider body (or a part of one) into an
//! event goes through [`redacted_payload`]: the generic `ExternalEvent` (standard
//! webhooks, `generic_hmac`, any source under `unmapped: generic`), SendGrid batch
//! elements copied as `ExternalEvent`s, and Slack's `event_callback` mapping.
//!
//! Only fields the providers document as secrets are removed, so payloads stay what the
//! provider sent otherwise:
//!
//! | provider | field | why |
//! |---|---|---|
//! | `slack` | `token` | the app's (deprecated) verification token, on every Events API envelope: anyone holding it can forge requests to apps that still check it |
//! | `stripe` | `data.object.client_secret` | PaymentIntent / SetupIntent / Checkout Session client secret, which Stripe says "should not be stored, logged, or exposed to anyone other than the customer" |
//! | `stripe` | `data.object.source.client_secret` | the same for a charge's (legacy) Source |
//!
//! The raw topic and the DLQ keep the delivery byte for byte, token included: replay needs
//! the exact original bytes. Restrict those topics' ACLs (docs/runbook.md).

use serde_json::Value as Json;

/// Documented secret-bearing fields: provider type and the field's path of object keys.
const SECRET_FIELDS: &[(&str, &[&str])] = &[
    ("slack", &["token"]),
    ("stripe", &["data", "object", "client_secret"]),
    ("stripe", &["data", "object", "source", "client_secret"]),
];

/// Removes `provider`'s documented secret fields from `body`; true when one was there.
pub fn redact(provider: &str, body: &mut Json) -> bool {
    let mut removed = false;
    for (_, path) in SECRET_FIELDS.iter().filter(|(p, _)| *p == provider) {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let parent = parents
            .iter()
            .try_fold(&mut *body, |cur, key| cur.get_mut(*key));
        if let Some(Json::Object(obj)) = parent {
            // `shift_remove` keeps the other members in the provider's order.
            removed |= obj.shift_remove(*last).is_some();
        }
    }
    removed
}

/// The JSON text to carry as an event's payload: `raw` itself when `body` (its parsed
/// form) holds no secret field, so payloads stay byte for byte what the provider sent;
/// otherwise `body` without the secrets, re-serialised.
pub fn redacted_payload(provider: &str, mut body: Json, raw: &str) -> String {
    if redact(provider, &mut body) {
        body.to_string()
    } else {
        raw.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slack_token_is_removed_from_the_top_level_only() {
        let mut body = json!({"token": "XXYYZZ", "type": "x", "event": {"token": "inner"}});
        assert!(redact("slack", &mut body));
        assert_eq!(body, json!({"type": "x", "event": {"token": "inner"}}));
        assert!(!redact("slack", &mut body), "nothing left to remove");
    }

    #[test]
    fn stripe_client_secret_is_removed_from_the_event_object() {
        let mut body = json!({"type": "payment_intent.created", "data": {"object": {
            "id": "pi_1", "client_secret": "pi_1_secret_abc"
        }}});
        assert!(redact("stripe", &mut body));
        assert_eq!(
            body,
            json!({"type": "payment_intent.created", "data": {"object": {"id": "pi_1"}}})
        );
    }

    #[test]
    fn stripe_source_client_secret_is_removed_from_a_charge() {
        let fixture = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/webhooks/stripe/charge.refunded.json"
        ));
        let mut body: Json = serde_json::from_str(fixture).unwrap();
        assert!(body["data"]["object"]["source"]["client_secret"].is_string());
        assert!(redact("stripe", &mut body));
        assert!(body["data"]["object"]["source"]
            .get("client_secret")
            .is_none());
        assert!(body["data"]["object"]["source"]["id"].is_string());
    }

    #[test]
    fn other_providers_and_shapes_are_left_alone() {
        for (provider, body) in [
            ("standard_webhooks", json!({"token": "t", "secret": "s"})),
            ("github", json!({"token": "t"})),
            ("sendgrid", json!([{"token": "t"}])),
            ("slack", json!(["token"])),
            ("slack", json!("token")),
            ("stripe", json!({"data": {"object": "client_secret"}})),
            (
                "stripe",
                json!({"data": [{"object": {"client_secret": "s"}}]}),
            ),
        ] {
            let mut redacted = body.clone();
            assert!(!redact(provider, &mut redacted), "{provider} {body}");
            assert_eq!(redacted, body);
        }
    }

    #[test]
    fn payload_is_the_raw_text_unless_something_was_removed() {
        // Formatting and number spelling survive when there is nothing to redact.
        let raw = "{ \"type\": \"x\", \"n\": 1.50 }";
        let body: Json = serde_json::from_str(raw).unwrap();
        assert_eq!(redacted_payload("slack", body, raw), raw);
        let raw = r#"{"token":"XXYYZZ","type":"app_rate_limited"}"#;
        let body: Json = serde_json::from_str(raw).unwrap();
        assert_eq!(
            redacted_payload("slack", body, raw),
            r#"{"type":"app_rate_limited"}"#
        );
    }
}
