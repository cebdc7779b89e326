//! Slack: `X-Slack-Signature: v0=<hex>` =
//! `HMAC-SHA256(signing secret, "v0:{X-Slack-Request-Timestamp}:{body}")`.
//!
//! The version tag is part of the signed base string so a future `v1` can
//! never be confused with `v0`; the timestamp is signed to bound replays
//! (default tolerance 300 s). The signing secret is used as is (UTF-8).
//!
//! Metadata comes from JSON bodies (Events API): `event_id` is the dedup id;
//! the event name is `type`, suffixed with `.{event.type}` when an inner event
//! exists (e.g. `event_callback.app_mention`, or plain `url_verification`).
//! Form-encoded bodies (slash commands, interactivity) yield no metadata.

use super::common::{
    any_hmac_matches, check_tolerance, decode_prefixed, parse_timestamp, Envelope,
};
use super::{HmacAlgorithm, Request, Secret, SignatureEncoding, Verified, Verifier, VerifyError};

pub(crate) const SIGNATURE_HEADER: &str = "X-Slack-Signature";
pub(crate) const TIMESTAMP_HEADER: &str = "X-Slack-Request-Timestamp";

pub(crate) struct SlackVerifier {
    secrets: Vec<Secret>,
    tolerance_secs: u64,
}

impl SlackVerifier {
    pub(crate) fn new(secrets: Vec<Secret>, tolerance_secs: u64) -> Self {
        Self {
            secrets,
            tolerance_secs,
        }
    }
}

impl Verifier for SlackVerifier {
    fn verify(&self, req: &Request<'_>, now_unix: i64) -> Result<Verified, VerifyError> {
        let value = req.required(SIGNATURE_HEADER)?;
        let ts_raw = req.required(TIMESTAMP_HEADER)?;
        let timestamp = parse_timestamp(TIMESTAMP_HEADER, ts_raw)?;
        let candidate = decode_prefixed(value, Some("v0="), SignatureEncoding::Hex)
            .map_err(|reason| VerifyError::malformed(SIGNATURE_HEADER, reason))?
            .ok_or(VerifyError::InvalidSignature)?;
        let parts: [&[u8]; 4] = [b"v0:", ts_raw.as_bytes(), b":", req.body];
        if !any_hmac_matches(HmacAlgorithm::Sha256, &self.secrets, &parts, &[candidate]) {
            return Err(VerifyError::InvalidSignature);
        }
        check_tolerance(timestamp, now_unix, self.tolerance_secs)?;
        let envelope = Envelope::parse(req.body);
        let event_type = match (envelope.kind(), envelope.inner_event_kind()) {
            (Some(outer), Some(inner)) => Some(format!("{outer}.{inner}")),
            (outer, _) => outer,
        };
        Ok(Verified {
            delivery_id: envelope.event_id(),
            event_type,
            timestamp: Some(timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::*;
    use crate::verify::{build, ProviderConfig};

    fn verifier(secrets: &[&str]) -> Box<dyn Verifier> {
        build(
            &ProviderConfig::Slack {
                tolerance_secs: None,
            },
            secrets.iter().map(|s| Secret::from(*s)).collect(),
        )
        .unwrap()
    }

    fn vector_ts(case: &serde_json::Value) -> i64 {
        vector_str(&case["headers"], "X-Slack-Request-Timestamp")
            .parse()
            .unwrap()
    }

    #[test]
    fn published_vectors() {
        for case in vectors("slack") {
            let v = verifier(&[vector_str(&case, "secret")]);
            let hs = vector_headers(&case);
            let body = vector_str(&case, "body").as_bytes();
            let result = v.verify(&Request::new(&hs, body), vector_ts(&case));
            assert_eq!(result.is_ok(), case["valid"].as_bool().unwrap(), "{case}");
        }
    }

    #[test]
    fn tampering_is_rejected() {
        let case = &vectors("slack")[0];
        let secret = vector_str(case, "secret");
        let body = vector_str(case, "body").as_bytes();
        let hs = vector_headers(case);
        let t = vector_ts(case);
        let sig = vector_str(&case["headers"], "X-Slack-Signature");
        let v = verifier(&[secret]);
        let req =
            |hs: &[(String, Vec<u8>)], body: &[u8], now| v.verify(&Request::new(hs, body), now);

        assert_eq!(code(req(&hs, &flip_byte(body, 3), t)), "invalid_signature");
        let flipped = with_header(&hs, SIGNATURE_HEADER, &flip_char(sig, 20));
        assert_eq!(code(req(&flipped, body, t)), "invalid_signature");
        let moved = with_header(&hs, TIMESTAMP_HEADER, &(t + 1).to_string());
        assert_eq!(code(req(&moved, body, t)), "invalid_signature");
        assert_eq!(
            code(
                verifier(&["8f742231b10e8888abcd99yyyzzz85a6"]).verify(&Request::new(&hs, body), t)
            ),
            "invalid_signature"
        );
        assert!(req(&hs, body, t + 300).is_ok());
        assert_eq!(
            req(&hs, body, t + 301),
            Err(VerifyError::TimestampOutOfTolerance { age_secs: 301 })
        );
        assert_eq!(
            req(&hs, body, t - 301),
            Err(VerifyError::TimestampOutOfTolerance { age_secs: -301 })
        );
        let v1 = with_header(&hs, SIGNATURE_HEADER, &sig.replacen("v0=", "v1=", 1));
        assert_eq!(code(req(&v1, body, t)), "malformed_signature");
        let bad_ts = with_header(&hs, TIMESTAMP_HEADER, "yesterday");
        assert_eq!(code(req(&bad_ts, body, t)), "malformed_signature");
        let no_ts: Vec<_> = hs
            .iter()
            .filter(|(n, _)| n != "x-slack-request-timestamp")
            .cloned()
            .collect();
        assert_eq!(
            req(&no_ts, body, t),
            Err(VerifyError::MissingHeader {
                header: TIMESTAMP_HEADER.into()
            })
        );
    }

    #[test]
    fn rotation_and_event_metadata() {
        let secret = "slack-new";
        let t = 1_700_000_000i64;
        let body = br#"{"token":"x","team_id":"T1","type":"event_callback","event_id":"Ev08MFMKH6","event":{"type":"app_mention","text":"hi"}}"#;
        let sig = format!(
            "v0={}",
            hmac_sha256_hex(
                secret.as_bytes(),
                &[format!("v0:{t}:").as_bytes(), body].concat()
            )
        );
        let hs = headers(&[
            ("x-slack-signature", &sig),
            ("x-slack-request-timestamp", &t.to_string()),
        ]);
        let ok = verifier(&["slack-old", secret])
            .verify(&Request::new(&hs, body), t)
            .unwrap();
        assert_eq!(ok.delivery_id.as_deref(), Some("Ev08MFMKH6"));
        assert_eq!(ok.event_type.as_deref(), Some("event_callback.app_mention"));
        assert_eq!(ok.timestamp, Some(t));
    }

    #[test]
    fn url_verification_event_type() {
        let secret = "s";
        let t = 1_700_000_000i64;
        let body = br#"{"token":"x","challenge":"abc","type":"url_verification"}"#;
        let sig = format!(
            "v0={}",
            hmac_sha256_hex(
                secret.as_bytes(),
                &[format!("v0:{t}:").as_bytes(), body].concat()
            )
        );
        let hs = headers(&[
            ("x-slack-signature", &sig),
            ("x-slack-request-timestamp", &t.to_string()),
        ]);
        let ok = verifier(&[secret])
            .verify(&Request::new(&hs, body), t)
            .unwrap();
        assert_eq!(ok.event_type.as_deref(), Some("url_verification"));
        assert_eq!(ok.delivery_id, None);
    }

    #[test]
    fn errors_never_contain_secret_or_expected_signature() {
        let case = &vectors("slack")[0];
        let secret = vector_str(case, "secret");
        let sig = vector_str(&case["headers"], "X-Slack-Signature");
        let hs = with_header(&vector_headers(case), SIGNATURE_HEADER, &flip_char(sig, 5));
        let e = verifier(&[secret])
            .verify(
                &Request::new(&hs, vector_str(case, "body").as_bytes()),
                vector_ts(case),
            )
            .unwrap_err();
        assert_no_leak(&e, &[secret, &sig[3..]]);
    }
}
