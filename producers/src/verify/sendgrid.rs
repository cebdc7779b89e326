//! SendGrid (Twilio) Event Webhook: ECDSA P-256 / SHA-256 over
//! `timestamp + body` (plain concatenation), signature in
//! `X-Twilio-Email-Event-Webhook-Signature` (base64 DER), timestamp in
//! `X-Twilio-Email-Event-Webhook-Timestamp`.
//!
//! SendGrid signs with its private key and publishes a verification key, so
//! the configured "secrets" are public keys (base64 DER SubjectPublicKeyInfo)
//! and nothing here is secret: no constant-time comparison is needed. Both
//! low-S and high-S signatures are accepted (SendGrid's own libraries do;
//! ECDSA malleability does not matter for authenticity here). Bodies are
//! batches of events, so there is no single delivery id or event name.

use base64::Engine as _;
use p256::ecdsa::signature::MultipartVerifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;

use super::common::{check_tolerance, parse_timestamp, BASE64};
use super::{BuildError, Request, Secret, Verified, Verifier, VerifyError};

pub(crate) const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
pub(crate) const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// Parses a base64 DER SubjectPublicKeyInfo P-256 key (surrounding
/// whitespace ignored, as keys are often pasted with a newline).
pub(crate) fn parse_public_key(secret: &[u8], index: usize) -> Result<VerifyingKey, BuildError> {
    let invalid = |reason| BuildError::InvalidPublicKey { index, reason };
    let text = std::str::from_utf8(secret).map_err(|_| invalid("not UTF-8 text"))?;
    let der = BASE64
        .decode(text.trim())
        .map_err(|_| invalid("not valid base64"))?;
    VerifyingKey::from_public_key_der(&der)
        .map_err(|_| invalid("not a DER SubjectPublicKeyInfo for a P-256 key"))
}

pub(crate) struct SendgridVerifier {
    keys: Vec<VerifyingKey>,
    tolerance_secs: u64,
}

impl SendgridVerifier {
    pub(crate) fn new(secrets: &[Secret], tolerance_secs: u64) -> Result<Self, BuildError> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| parse_public_key(s.expose(), i))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            tolerance_secs,
        })
    }
}

impl Verifier for SendgridVerifier {
    fn verify(&self, req: &Request<'_>, now_unix: i64) -> Result<Verified, VerifyError> {
        let value = req.required(SIGNATURE_HEADER)?;
        let ts_raw = req.required(TIMESTAMP_HEADER)?;
        let timestamp = parse_timestamp(TIMESTAMP_HEADER, ts_raw)?;
        let signature = BASE64
            .decode(value)
            .ok()
            .and_then(|der| Signature::from_der(&der).ok())
            .ok_or(VerifyError::InvalidSignature)?;
        let message: [&[u8]; 2] = [ts_raw.as_bytes(), req.body];
        if !self
            .keys
            .iter()
            .any(|key| key.multipart_verify(&message, &signature).is_ok())
        {
            return Err(VerifyError::InvalidSignature);
        }
        check_tolerance(timestamp, now_unix, self.tolerance_secs)?;
        Ok(Verified {
            delivery_id: None,
            event_type: None,
            timestamp: Some(timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::*;
    use crate::verify::{build, ProviderConfig};

    fn verifier(keys: &[&str]) -> Box<dyn Verifier> {
        build(
            &ProviderConfig::Sendgrid,
            keys.iter().map(|s| Secret::from(*s)).collect(),
        )
        .unwrap()
    }

    fn vector_ts(case: &serde_json::Value) -> i64 {
        vector_str(&case["headers"], "X-Twilio-Email-Event-Webhook-Timestamp")
            .parse()
            .unwrap()
    }

    #[test]
    fn published_vectors() {
        for case in vectors("sendgrid") {
            let v = verifier(&[vector_str(&case, "public_key")]);
            let hs = vector_headers(&case);
            let body = vector_str(&case, "body").as_bytes();
            let result = v.verify(&Request::new(&hs, body), vector_ts(&case));
            assert_eq!(result.is_ok(), case["valid"].as_bool().unwrap(), "{case}");
            if let Ok(ok) = result {
                assert_eq!(
                    ok,
                    Verified {
                        delivery_id: None,
                        event_type: None,
                        timestamp: Some(vector_ts(&case))
                    }
                );
            }
        }
    }

    #[test]
    fn tampering_is_rejected() {
        let cases = vectors("sendgrid");
        let other_key = vector_str(&cases[1], "public_key");
        for case in &cases {
            let key = vector_str(case, "public_key");
            let body = vector_str(case, "body").as_bytes();
            let hs = vector_headers(case);
            let t = vector_ts(case);
            let sig = vector_str(&case["headers"], "X-Twilio-Email-Event-Webhook-Signature");
            let v = verifier(&[key]);
            let req =
                |hs: &[(String, Vec<u8>)], body: &[u8], now| v.verify(&Request::new(hs, body), now);

            assert_eq!(code(req(&hs, &flip_byte(body, 5), t)), "invalid_signature");
            // A char inside r: still valid DER, wrong signature.
            let flipped = with_header(&hs, SIGNATURE_HEADER, &flip_char(sig, 20));
            assert_eq!(code(req(&flipped, body, t)), "invalid_signature");
            // A char in the DER header: no longer DER.
            let broken = with_header(&hs, SIGNATURE_HEADER, &flip_char(sig, 0));
            assert_eq!(code(req(&broken, body, t)), "invalid_signature");
            let not_b64 = with_header(&hs, SIGNATURE_HEADER, "***");
            assert_eq!(code(req(&not_b64, body, t)), "invalid_signature");
            let moved = with_header(&hs, TIMESTAMP_HEADER, &(t + 1).to_string());
            assert_eq!(code(req(&moved, body, t)), "invalid_signature");
            if key != other_key {
                let wrong = verifier(&[other_key]);
                assert_eq!(
                    code(wrong.verify(&Request::new(&hs, body), t)),
                    "invalid_signature"
                );
            }
            assert!(req(&hs, body, t + 300).is_ok());
            assert_eq!(
                req(&hs, body, t + 301),
                Err(VerifyError::TimestampOutOfTolerance { age_secs: 301 })
            );
            assert_eq!(
                req(&hs, body, t - 301),
                Err(VerifyError::TimestampOutOfTolerance { age_secs: -301 })
            );
        }
    }

    #[test]
    fn key_rotation() {
        let cases = vectors("sendgrid");
        let keys = [
            vector_str(&cases[1], "public_key"),
            vector_str(&cases[0], "public_key"),
        ];
        let v = verifier(&keys);
        for case in &cases {
            let hs = vector_headers(case);
            let body = vector_str(case, "body").as_bytes();
            assert!(v.verify(&Request::new(&hs, body), vector_ts(case)).is_ok());
        }
    }

    #[test]
    fn bad_public_keys_fail_to_build_without_echoing_the_key() {
        let good = vector_str(&vectors("sendgrid")[0], "public_key").to_owned();
        let truncated = good[..40].to_owned();
        for (key, reason) in [
            ("not base64 at all!", "not valid base64"),
            (
                &truncated[..],
                "not a DER SubjectPublicKeyInfo for a P-256 key",
            ),
            // An Ed25519 SPKI: valid DER, wrong algorithm.
            (
                "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
                "not a DER SubjectPublicKeyInfo for a P-256 key",
            ),
        ] {
            let err = build(
                &ProviderConfig::Sendgrid,
                vec![good.as_str().into(), key.into()],
            )
            .unwrap_err();
            assert_eq!(err, BuildError::InvalidPublicKey { index: 1, reason });
            assert!(!format!("{err} {err:?}").contains(key));
        }
        // Pasted with a trailing newline: fine.
        assert!(build(&ProviderConfig::Sendgrid, vec![format!("{good}\n").into()]).is_ok());
    }
}
