//! Standard Webhooks (and Svix): headers `webhook-id`, `webhook-timestamp`,
//! `webhook-signature`; the signature header is a space-separated list of
//! `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>` entries.
//!
//! Signing the id and timestamp binds the dedup key and the replay window to
//! the body. The secret is `whsec_` + base64 of the real key, and the key is
//! the *decoded* bytes (unlike Stripe, whose `whsec_` string is the key).
//! Entries with other version tags (e.g. asymmetric `v1a`) are ignored, so
//! senders can add schemes without breaking receivers; a list with no `v1`
//! entry at all is malformed. Svix's `svix-id`/`svix-timestamp`/
//! `svix-signature` are accepted when the `webhook-*` set is absent (the
//! whole set is taken from one family, never mixed).
//!
//! The event name is the body's `type` field, per the spec's payload
//! convention, when the body is JSON.

use base64::Engine as _;

use super::common::{any_hmac_matches, check_tolerance, parse_timestamp, Envelope, BASE64};
use super::{BuildError, HmacAlgorithm, Request, Secret, Verified, Verifier, VerifyError};

const SECRET_PREFIX: &str = "whsec_";

struct HeaderNames {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

const STANDARD: HeaderNames = HeaderNames {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};

const SVIX: HeaderNames = HeaderNames {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

/// Decoded `v1` signatures from a signature list, and how many `v1` entries
/// there were (including ones that did not decode).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SignatureList {
    pub(crate) v1: Vec<Vec<u8>>,
    pub(crate) v1_entries: usize,
}

/// Parses `"v1,<b64> v1,<b64> v1a,<b64>"`. Never fails: entries without a
/// comma and other versions are skipped; undecodable `v1` values are counted
/// but cannot match.
pub(crate) fn parse_signatures(value: &str) -> SignatureList {
    let mut list = SignatureList {
        v1: Vec::new(),
        v1_entries: 0,
    };
    for entry in value.split_ascii_whitespace() {
        if let Some(("v1", sig)) = entry.split_once(',') {
            list.v1_entries += 1;
            if let Ok(bytes) = BASE64.decode(sig) {
                list.v1.push(bytes);
            }
        }
    }
    list
}

/// Decodes a `whsec_<base64>` secret into the HMAC key.
pub(crate) fn decode_secret(secret: &[u8], index: usize) -> Result<Secret, BuildError> {
    let invalid = |reason| BuildError::InvalidStandardWebhooksSecret { index, reason };
    let text = std::str::from_utf8(secret).map_err(|_| invalid("not UTF-8 text"))?;
    let encoded = text
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| invalid("does not start with `whsec_`"))?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| invalid("the part after `whsec_` is not valid base64"))?;
    if key.is_empty() {
        return Err(invalid("the decoded key is empty"));
    }
    Ok(Secret::new(key))
}

pub(crate) struct StandardWebhooksVerifier {
    keys: Vec<Secret>,
    tolerance_secs: u64,
}

impl StandardWebhooksVerifier {
    pub(crate) fn new(secrets: &[Secret], tolerance_secs: u64) -> Result<Self, BuildError> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| decode_secret(s.expose(), i))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            tolerance_secs,
        })
    }
}

impl Verifier for StandardWebhooksVerifier {
    fn verify(&self, req: &Request<'_>, now_unix: i64) -> Result<Verified, VerifyError> {
        let names = if !req.has_header(STANDARD.signature) && req.has_header(SVIX.signature) {
            &SVIX
        } else {
            &STANDARD
        };
        let signature = req.required(names.signature)?;
        let id = req.required(names.id)?;
        let ts_raw = req.required(names.timestamp)?;
        let timestamp = parse_timestamp(names.timestamp, ts_raw)?;
        let list = parse_signatures(signature);
        if list.v1_entries == 0 {
            return Err(VerifyError::malformed(
                names.signature,
                "no v1 signature entry",
            ));
        }
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_raw.as_bytes(), b".", req.body];
        if !any_hmac_matches(HmacAlgorithm::Sha256, &self.keys, &parts, &list.v1) {
            return Err(VerifyError::InvalidSignature);
        }
        check_tolerance(timestamp, now_unix, self.tolerance_secs)?;
        Ok(Verified {
            delivery_id: Some(id.to_owned()),
            event_type: Envelope::parse(req.body).kind(),
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
            &ProviderConfig::StandardWebhooks {
                tolerance_secs: None,
            },
            secrets.iter().map(|s| Secret::from(*s)).collect(),
        )
        .unwrap()
    }

    fn vector_ts(case: &serde_json::Value) -> i64 {
        vector_str(&case["headers"], "webhook-timestamp")
            .parse()
            .unwrap()
    }

    /// The first (valid) vector: secret, body, headers, timestamp, signature.
    fn valid_case() -> (String, Vec<u8>, Headers, i64, String) {
        let case = vectors("standard_webhooks")
            .into_iter()
            .find(|c| c["valid"] == true)
            .unwrap();
        (
            vector_str(&case, "secret").to_owned(),
            vector_str(&case, "body").as_bytes().to_vec(),
            vector_headers(&case),
            vector_ts(&case),
            vector_str(&case["headers"], "webhook-signature").to_owned(),
        )
    }

    #[test]
    fn published_vectors() {
        let cases = vectors("standard_webhooks");
        assert!(
            cases.iter().any(|c| c["valid"] == false),
            "expected a negative vector"
        );
        for case in cases {
            let v = verifier(&[vector_str(&case, "secret")]);
            let hs = vector_headers(&case);
            let body = vector_str(&case, "body").as_bytes();
            let result = v.verify(&Request::new(&hs, body), vector_ts(&case));
            if case["valid"].as_bool().unwrap() {
                let ok = result.unwrap();
                assert_eq!(
                    ok.delivery_id.as_deref(),
                    Some("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk")
                );
                assert_eq!(ok.timestamp, Some(vector_ts(&case)));
            } else {
                assert_eq!(result, Err(VerifyError::InvalidSignature), "{case}");
            }
        }
    }

    #[test]
    fn tampering_is_rejected() {
        let (secret, body, hs, t, sig) = valid_case();
        let v = verifier(&[&secret]);
        let req =
            |hs: &[(String, Vec<u8>)], body: &[u8], now| v.verify(&Request::new(hs, body), now);
        assert_eq!(code(req(&hs, &flip_byte(&body, 2), t)), "invalid_signature");
        let flipped = with_header(&hs, "webhook-signature", &flip_char(&sig, 10));
        assert_eq!(code(req(&flipped, &body, t)), "invalid_signature");
        // id and timestamp are signed.
        let other_id = with_header(&hs, "webhook-id", "msg_other");
        assert_eq!(code(req(&other_id, &body, t)), "invalid_signature");
        let other_ts = with_header(&hs, "webhook-timestamp", &(t - 1).to_string());
        assert_eq!(code(req(&other_ts, &body, t)), "invalid_signature");
        let wrong = verifier(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        assert_eq!(
            code(wrong.verify(&Request::new(&hs, &body), t)),
            "invalid_signature"
        );
        assert_eq!(
            req(&hs, &body, t + 301),
            Err(VerifyError::TimestampOutOfTolerance { age_secs: 301 })
        );
        assert_eq!(
            req(&hs, &body, t - 301),
            Err(VerifyError::TimestampOutOfTolerance { age_secs: -301 })
        );
        assert!(req(&hs, &body, t - 300).is_ok());
        let v2_only = with_header(&hs, "webhook-signature", &sig.replacen("v1,", "v2,", 1));
        assert_eq!(code(req(&v2_only, &body, t)), "malformed_signature");
        let no_id: Vec<_> = hs
            .iter()
            .filter(|(n, _)| n != "webhook-id")
            .cloned()
            .collect();
        assert_eq!(
            req(&no_id, &body, t),
            Err(VerifyError::MissingHeader {
                header: "webhook-id".into()
            })
        );
    }

    #[test]
    fn signature_lists_and_rotation() {
        let (secret, body, hs, t, sig) = valid_case();
        // Several entries: unknown versions, junk and a non-matching v1 first.
        let list =
            format!("v1a,AAAA v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU= junk v1,%%% {sig}");
        let hs2 = with_header(&hs, "webhook-signature", &list);
        assert!(verifier(&[&secret])
            .verify(&Request::new(&hs2, &body), t)
            .is_ok());
        // Rotation: the matching secret is the second one.
        let v = verifier(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &secret]);
        assert!(v.verify(&Request::new(&hs, &body), t).is_ok());
    }

    #[test]
    fn svix_header_family_and_body_type() {
        let key_b64 = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = BASE64.decode(key_b64).unwrap();
        let t = 1_700_000_000i64;
        let body = br#"{"type":"invoice.paid","timestamp":"2023-11-14T22:13:20Z","data":{}}"#;
        let msg = [format!("msg_1.{t}.").as_bytes(), body].concat();
        let sig = format!("v1,{}", hmac_sha256_b64(&key, &msg));
        let hs = headers(&[
            ("svix-id", "msg_1"),
            ("svix-timestamp", &t.to_string()),
            ("svix-signature", &sig),
        ]);
        let ok = verifier(&[&format!("whsec_{key_b64}")])
            .verify(&Request::new(&hs, body), t)
            .unwrap();
        assert_eq!(ok.delivery_id.as_deref(), Some("msg_1"));
        assert_eq!(ok.event_type.as_deref(), Some("invoice.paid"));
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        let cfg = ProviderConfig::StandardWebhooks {
            tolerance_secs: None,
        };
        for (secret, reason) in [
            (
                "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "does not start with `whsec_`",
            ),
            (
                "whsec_not*base64!",
                "the part after `whsec_` is not valid base64",
            ),
            ("whsec_", "the decoded key is empty"),
        ] {
            let err = build(
                &cfg,
                vec![
                    "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
                    secret.into(),
                ],
            )
            .unwrap_err();
            assert_eq!(
                err,
                BuildError::InvalidStandardWebhooksSecret { index: 1, reason }
            );
            assert!(
                !err.to_string().contains(secret) || secret == "whsec_",
                "{err}"
            );
        }
    }

    #[test]
    fn errors_never_contain_secret_or_expected_signature() {
        let (secret, body, hs, t, sig) = valid_case();
        let hs = with_header(&hs, "webhook-signature", &flip_char(&sig, 4));
        let e = verifier(&[&secret])
            .verify(&Request::new(&hs, &body), t)
            .unwrap_err();
        assert_no_leak(&e, &[&secret, &secret[6..], &sig[3..]]);
    }
}
