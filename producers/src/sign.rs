//! Signing webhooks the way each provider does, for sending test deliveries to a gateway
//! (the end-to-end tests, local tooling). Written straight from the providers' documented
//! schemes with the `hmac` crate, independently of the verifiers in [`crate::verify`].
//!
//! Each function returns the headers to add to the request.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Hex HMAC-SHA256 of `content`, for generic HMAC senders whose header layout is configured
/// per source (see the topology's `generic_hmac` provider options).
pub fn hmac_sha256_hex(secret: &[u8], content: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, &[content]))
}

/// Stripe: `Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`.
pub fn stripe(secret: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let t = timestamp.to_string();
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body]));
    vec![("Stripe-Signature", format!("t={t},v1={sig}"))]
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`, plus the event
/// name and a delivery id.
pub fn github(
    secret: &str,
    event: &str,
    delivery_id: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[body]));
    vec![
        ("X-Hub-Signature-256", format!("sha256={sig}")),
        ("X-GitHub-Event", event.to_string()),
        ("X-GitHub-Delivery", delivery_id.to_string()),
    ]
}

/// Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret, body)>`, plus topic and
/// webhook id.
pub fn shopify(
    secret: &str,
    topic: &str,
    webhook_id: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let sig =
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret.as_bytes(), &[body]));
    vec![
        ("X-Shopify-Hmac-Sha256", sig),
        ("X-Shopify-Topic", topic.to_string()),
        ("X-Shopify-Webhook-Id", webhook_id.to_string()),
    ]
}

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:<ts>:<body>")>` and
/// `X-Slack-Request-Timestamp`.
pub fn slack(secret: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let t = timestamp.to_string();
    let sig = hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[b"v0:", t.as_bytes(), b":", body],
    ));
    vec![
        ("X-Slack-Signature", format!("v0={sig}")),
        ("X-Slack-Request-Timestamp", t),
    ]
}

/// Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<ts>.<body>")>`
/// where the key is the base64 after `whsec_`. `None` when `secret` is not `whsec_<base64>`.
pub fn standard_webhooks(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Option<Vec<(&'static str, String)>> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    let t = timestamp.to_string();
    let sig = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
        &key,
        &[id.as_bytes(), b".", t.as_bytes(), b".", body],
    ));
    Some(vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", t),
        ("webhook-signature", format!("v1,{sig}")),
    ])
}

/// SendGrid's Event Webhook: an ECDSA P-256 / SHA-256 signature over `timestamp + body`,
/// base64 DER, in `X-Twilio-Email-Event-Webhook-Signature`. Returns the headers and the
/// public key (base64 DER SubjectPublicKeyInfo) to configure as the source's secret.
/// `private_key` is a 32-byte P-256 scalar; `None` when it is not a valid one.
pub fn sendgrid(
    private_key: &[u8; 32],
    timestamp: i64,
    body: &[u8],
) -> Option<(Vec<(&'static str, String)>, String)> {
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;
    let key = p256::ecdsa::SigningKey::from_slice(private_key).ok()?;
    let t = timestamp.to_string();
    let mut message = t.as_bytes().to_vec();
    message.extend_from_slice(body);
    let signature: p256::ecdsa::Signature = key.sign(&message);
    let b64 = base64::engine::general_purpose::STANDARD;
    let public = key.verifying_key().to_public_key_der().ok()?;
    Some((
        vec![
            (
                "X-Twilio-Email-Event-Webhook-Signature",
                b64.encode(signature.to_der().as_bytes()),
            ),
            ("X-Twilio-Email-Event-Webhook-Timestamp", t),
        ],
        b64.encode(public.as_bytes()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{build, ProviderConfig, Request, Secret};

    fn verify(
        config: ProviderConfig,
        secret: &str,
        headers: &[(&str, String)],
        body: &[u8],
        now: i64,
    ) -> bool {
        let hs: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        build(&config, vec![Secret::from(secret)])
            .unwrap()
            .verify(&Request::new(&hs, body), now)
            .is_ok()
    }

    #[test]
    fn stripe_matches_the_python_computed_value() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/webhooks/stripe/payment_intent.succeeded.json"
        ))
        .unwrap();
        let h = stripe("whsec_sluice_test_secret", 1_721_950_000, &body);
        assert_eq!(
            h[0].1,
            "t=1721950000,v1=d6f2aadfae143b6e7bd780cc7c625f04c4cb3279af828070dc7b7def62478836"
        );
    }

    #[test]
    fn every_signer_satisfies_its_verifier() {
        let body = br#"{"id":"evt_1","type":"x"}"#;
        let t = 1_700_000_000;
        assert!(verify(
            ProviderConfig::Stripe {
                tolerance_secs: None
            },
            "s",
            &stripe("s", t, body),
            body,
            t
        ));
        assert!(verify(
            ProviderConfig::Github,
            "s",
            &github("s", "push", "d", body),
            body,
            t
        ));
        assert!(verify(
            ProviderConfig::Shopify,
            "s",
            &shopify("s", "orders/create", "w", body),
            body,
            t
        ));
        assert!(verify(
            ProviderConfig::Slack {
                tolerance_secs: None
            },
            "s",
            &slack("s", t, body),
            body,
            t
        ));
        let (h, public_key) = sendgrid(&[7u8; 32], t, body).unwrap();
        assert!(verify(ProviderConfig::Sendgrid, &public_key, &h, body, t));
        assert!(!verify(
            ProviderConfig::Sendgrid,
            &public_key,
            &h,
            b"tampered",
            t
        ));
        assert!(
            sendgrid(&[0u8; 32], t, body).is_none(),
            "zero is not a valid P-256 scalar"
        );
        let sw = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let h = standard_webhooks(sw, "msg_1", t, body).unwrap();
        assert!(verify(
            ProviderConfig::StandardWebhooks {
                tolerance_secs: None
            },
            sw,
            &h,
            body,
            t
        ));
        assert!(standard_webhooks("nope", "m", t, body).is_none());
        assert!(!verify(
            ProviderConfig::Github,
            "other",
            &github("s", "push", "d", body),
            body,
            t
        ));
    }
}
