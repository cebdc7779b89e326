//! Shopify: `X-Shopify-Hmac-Sha256: <base64>` = `HMAC-SHA256(secret, body)`.
//!
//! The key is the app's client secret (or the store's webhook signing secret)
//! string as is. Like GitHub, Shopify signs only the body; there is no signed
//! timestamp, so `X-Shopify-Webhook-Id` (unsigned) is the dedup key and
//! `X-Shopify-Topic` (unsigned) the event name, e.g. `orders/create`.

use super::common::{any_hmac_matches, decode_signature};
use super::{HmacAlgorithm, Request, Secret, SignatureEncoding, Verified, Verifier, VerifyError};

pub(crate) const SIGNATURE_HEADER: &str = "X-Shopify-Hmac-Sha256";
const WEBHOOK_ID_HEADER: &str = "X-Shopify-Webhook-Id";
const TOPIC_HEADER: &str = "X-Shopify-Topic";

pub(crate) struct ShopifyVerifier {
    secrets: Vec<Secret>,
}

impl ShopifyVerifier {
    pub(crate) fn new(secrets: Vec<Secret>) -> Self {
        Self { secrets }
    }
}

impl Verifier for ShopifyVerifier {
    fn verify(&self, req: &Request<'_>, _now_unix: i64) -> Result<Verified, VerifyError> {
        let value = req.required(SIGNATURE_HEADER)?;
        let candidate = decode_signature(SignatureEncoding::Base64, value)
            .ok_or(VerifyError::InvalidSignature)?;
        if !any_hmac_matches(
            HmacAlgorithm::Sha256,
            &self.secrets,
            &[req.body],
            &[candidate],
        ) {
            return Err(VerifyError::InvalidSignature);
        }
        Ok(Verified {
            delivery_id: req.metadata(WEBHOOK_ID_HEADER),
            event_type: req.metadata(TOPIC_HEADER),
            timestamp: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::*;
    use crate::verify::{build, ProviderConfig};

    const SECRET: &str = "shpss_sluice_test_secret";
    /// Computed once, independently, with Python:
    /// `base64.b64encode(hmac.new(b"shpss_sluice_test_secret", body, hashlib.sha256).digest())`
    /// over the exact bytes of `webhooks/shopify/orders.create.json`.
    const PYTHON_SIG: &str = "LukwDzm5l5TcZHc+thl+PbACiXfX64OZeXR4d6DpBJ0=";

    fn verifier(secrets: &[&str]) -> Box<dyn Verifier> {
        build(
            &ProviderConfig::Shopify,
            secrets.iter().map(|s| Secret::from(*s)).collect(),
        )
        .unwrap()
    }

    fn shopify_headers(sig: &str) -> Vec<(String, Vec<u8>)> {
        headers(&[
            ("x-shopify-hmac-sha256", sig),
            ("x-shopify-topic", "orders/create"),
            (
                "x-shopify-webhook-id",
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            ),
            ("x-shopify-shop-domain", "example.myshopify.com"),
        ])
    }

    #[test]
    fn python_known_good_value_verifies() {
        let body = fixture_bytes("webhooks/shopify/orders.create.json");
        assert_eq!(hmac_sha256_b64(SECRET.as_bytes(), &body), PYTHON_SIG);
        let hs = shopify_headers(PYTHON_SIG);
        let ok = verifier(&[SECRET])
            .verify(&Request::new(&hs, &body), 0)
            .unwrap();
        assert_eq!(
            ok.delivery_id.as_deref(),
            Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
        );
        assert_eq!(ok.event_type.as_deref(), Some("orders/create"));
        assert_eq!(ok.timestamp, None);
    }

    #[test]
    fn tampering_is_rejected() {
        let body = fixture_bytes("webhooks/shopify/orders.create.json");
        let v = verifier(&[SECRET]);
        let hs = shopify_headers(PYTHON_SIG);
        assert_eq!(
            code(v.verify(&Request::new(&hs, &flip_byte(&body, body.len() / 2)), 0)),
            "invalid_signature"
        );
        let flipped = shopify_headers(&flip_char(PYTHON_SIG, 5));
        assert_eq!(
            code(v.verify(&Request::new(&flipped, &body), 0)),
            "invalid_signature"
        );
        let garbage = shopify_headers("!!not base64!!");
        assert_eq!(
            code(v.verify(&Request::new(&garbage, &body), 0)),
            "invalid_signature"
        );
        let hex = shopify_headers(&hmac_sha256_hex(SECRET.as_bytes(), &body));
        assert_eq!(
            code(v.verify(&Request::new(&hex, &body), 0)),
            "invalid_signature"
        );
        assert_eq!(
            code(verifier(&["shpss_other"]).verify(&Request::new(&hs, &body), 0)),
            "invalid_signature"
        );
        let none = headers(&[("x-shopify-topic", "orders/create")]);
        assert_eq!(
            code(v.verify(&Request::new(&none, &body), 0)),
            "missing_signature"
        );
    }

    #[test]
    fn rotation_and_unpadded_base64() {
        let body = fixture_bytes("webhooks/shopify/orders.create.json");
        let hs = shopify_headers(PYTHON_SIG.trim_end_matches('='));
        assert!(verifier(&["shpss_old", SECRET])
            .verify(&Request::new(&hs, &body), 0)
            .is_ok());
    }

    #[test]
    fn errors_never_contain_secret_or_expected_signature() {
        let body = fixture_bytes("webhooks/shopify/orders.create.json");
        let hs = shopify_headers(&flip_char(PYTHON_SIG, 0));
        let e = verifier(&[SECRET])
            .verify(&Request::new(&hs, &body), 0)
            .unwrap_err();
        assert_no_leak(&e, &[SECRET, PYTHON_SIG]);
    }
}
