//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...][,v0=<hex>]`,
//! where `v1 = hex(HMAC-SHA256(secret, "{t}.{body}"))`.
//!
//! The key is the endpoint secret string *as is* (`whsec_...`, UTF-8 bytes):
//! Stripe's own libraries treat it as an opaque password rather than encoded
//! key material, so decoding it (as Standard Webhooks does) would yield a
//! different key and nothing would verify. While an endpoint secret is being
//! rolled, Stripe signs with each active secret and sends several `v1`
//! entries, so any `v1` matching any configured secret accepts. `v0` entries
//! are legacy test-mode signatures and are ignored, as are unknown keys.
//!
//! Event id and type are not in the headers: they come from the JSON body's
//! `id` and `type`, read leniently (a verified non-JSON body is still `Ok`).

use super::common::{any_hmac_matches, check_tolerance, parse_timestamp, Envelope};
use super::{HmacAlgorithm, Request, Secret, Verified, Verifier, VerifyError};

pub(crate) const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// A parsed `Stripe-Signature` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SignatureHeader<'a> {
    /// The `t=` value exactly as sent (it is part of the signed payload).
    pub(crate) timestamp_raw: &'a str,
    pub(crate) timestamp: i64,
    /// Every `v1` entry that decoded as hex; entries that did not are dropped
    /// (they cannot match).
    pub(crate) v1: Vec<Vec<u8>>,
}

/// Parses the header. Entries are `key=value` separated by commas; entries
/// without `=` and unknown keys are ignored. Exactly one `t` and at least one
/// `v1` entry are required.
pub(crate) fn parse_header(value: &str) -> Result<SignatureHeader<'_>, VerifyError> {
    let mut timestamp_raw = None;
    let mut v1 = Vec::new();
    let mut v1_entries = 0usize;
    for item in value.split(',') {
        let Some((key, val)) = item.split_once('=') else {
            continue;
        };
        let val = val.trim();
        match key.trim() {
            "t" if timestamp_raw.is_some() => {
                return Err(VerifyError::malformed(
                    SIGNATURE_HEADER,
                    "more than one t= entry",
                ));
            }
            "t" => timestamp_raw = Some(val),
            "v1" => {
                v1_entries += 1;
                if let Ok(sig) = hex::decode(val) {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let timestamp_raw = timestamp_raw
        .ok_or_else(|| VerifyError::malformed(SIGNATURE_HEADER, "no t= timestamp entry"))?;
    let timestamp = parse_timestamp(SIGNATURE_HEADER, timestamp_raw)?;
    if v1_entries == 0 {
        return Err(VerifyError::malformed(
            SIGNATURE_HEADER,
            "no v1= signature entry",
        ));
    }
    Ok(SignatureHeader {
        timestamp_raw,
        timestamp,
        v1,
    })
}

pub(crate) struct StripeVerifier {
    secrets: Vec<Secret>,
    tolerance_secs: u64,
}

impl StripeVerifier {
    pub(crate) fn new(secrets: Vec<Secret>, tolerance_secs: u64) -> Self {
        Self {
            secrets,
            tolerance_secs,
        }
    }
}

impl Verifier for StripeVerifier {
    fn verify(&self, req: &Request<'_>, now_unix: i64) -> Result<Verified, VerifyError> {
        let header = parse_header(req.required(SIGNATURE_HEADER)?)?;
        let parts: [&[u8]; 3] = [header.timestamp_raw.as_bytes(), b".", req.body];
        if !any_hmac_matches(HmacAlgorithm::Sha256, &self.secrets, &parts, &header.v1) {
            return Err(VerifyError::InvalidSignature);
        }
        check_tolerance(header.timestamp, now_unix, self.tolerance_secs)?;
        let envelope = Envelope::parse(req.body);
        Ok(Verified {
            delivery_id: envelope.id(),
            event_type: envelope.kind(),
            timestamp: Some(header.timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::*;
    use crate::verify::{build, ProviderConfig};

    const SECRET: &str = "whsec_sluice_test_secret";
    const T: i64 = 1_721_950_000;
    /// Computed once, independently, with Python:
    /// `hmac.new(b"whsec_sluice_test_secret", b"1721950000." + body, hashlib.sha256).hexdigest()`
    /// over the exact bytes of `webhooks/stripe/payment_intent.succeeded.json`.
    const PYTHON_SIG: &str = "d6f2aadfae143b6e7bd780cc7c625f04c4cb3279af828070dc7b7def62478836";

    fn verifier(secrets: &[&str]) -> Box<dyn Verifier> {
        build(
            &ProviderConfig::Stripe {
                tolerance_secs: None,
            },
            secrets.iter().map(|s| Secret::from(*s)).collect(),
        )
        .unwrap()
    }

    fn sig(secret: &str, t: i64, body: &[u8]) -> String {
        hmac_sha256_hex(
            secret.as_bytes(),
            &[format!("{t}.").as_bytes(), body].concat(),
        )
    }

    fn check(
        v: &dyn Verifier,
        header: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let headers = headers(&[("stripe-signature", header)]);
        v.verify(&Request::new(&headers, body), now)
    }

    #[test]
    fn python_known_good_value_verifies() {
        let body = fixture_bytes("webhooks/stripe/payment_intent.succeeded.json");
        // The independent helper agrees with Python...
        assert_eq!(sig(SECRET, T, &body), PYTHON_SIG);
        // ...and the verifier accepts it, reading id and type from the body.
        let ok = check(
            &*verifier(&[SECRET]),
            &format!("t={T},v1={PYTHON_SIG}"),
            &body,
            T,
        )
        .unwrap();
        assert_eq!(
            ok.delivery_id.as_deref(),
            Some("evt_3PgaAAB7WZ01zgkW0pi00001")
        );
        assert_eq!(ok.event_type.as_deref(), Some("payment_intent.succeeded"));
        assert_eq!(ok.timestamp, Some(T));
    }

    #[test]
    fn tampering_is_rejected() {
        let body = fixture_bytes("webhooks/stripe/payment_intent.succeeded.json");
        let v = verifier(&[SECRET]);
        let good = format!("t={T},v1={PYTHON_SIG}");
        assert_eq!(
            code(check(&*v, &good, &flip_byte(&body, 10), T)),
            "invalid_signature"
        );
        let bad_sig = flip_char(PYTHON_SIG, 7);
        assert_eq!(
            code(check(&*v, &format!("t={T},v1={bad_sig}"), &body, T)),
            "invalid_signature"
        );
        // The timestamp is signed: moving it breaks the signature.
        assert_eq!(
            code(check(
                &*v,
                &format!("t={},v1={PYTHON_SIG}", T + 1),
                &body,
                T + 1
            )),
            "invalid_signature"
        );
        assert_eq!(
            code(check(&*verifier(&["whsec_other"]), &good, &body, T)),
            "invalid_signature"
        );
        // Not hex at all, or truncated: still just a wrong signature.
        assert_eq!(
            code(check(
                &*v,
                &format!("t={T},v1=zz{}", &PYTHON_SIG[2..]),
                &body,
                T
            )),
            "invalid_signature"
        );
        assert_eq!(
            code(check(
                &*v,
                &format!("t={T},v1={}", &PYTHON_SIG[..62]),
                &body,
                T
            )),
            "invalid_signature"
        );
    }

    #[test]
    fn timestamp_tolerance_both_directions() {
        let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
        let v = verifier(&[SECRET]);
        let h = format!("t={T},v1={}", sig(SECRET, T, body));
        assert!(check(&*v, &h, body, T + 300).is_ok());
        assert!(check(&*v, &h, body, T - 300).is_ok());
        assert_eq!(
            check(&*v, &h, body, T + 301),
            Err(VerifyError::TimestampOutOfTolerance { age_secs: 301 })
        );
        assert_eq!(
            check(&*v, &h, body, T - 301),
            Err(VerifyError::TimestampOutOfTolerance { age_secs: -301 })
        );
        let strict = build(
            &ProviderConfig::Stripe {
                tolerance_secs: Some(10),
            },
            vec![SECRET.into()],
        )
        .unwrap();
        assert_eq!(
            code(check(&*strict, &h, body, T + 11)),
            "timestamp_out_of_tolerance"
        );
    }

    #[test]
    fn signature_is_checked_before_timestamp() {
        let body = b"{}";
        let h = format!("t={T},v1={}", sig("whsec_other", T, body));
        // Stale *and* wrong: the caller only learns the signature is wrong.
        assert_eq!(
            code(check(&*verifier(&[SECRET]), &h, body, T + 10_000)),
            "invalid_signature"
        );
    }

    #[test]
    fn any_v1_matching_any_secret_accepts() {
        let body = br#"{"id":"evt_2","type":"invoice.paid"}"#;
        let old = "whsec_old";
        let new = "whsec_new";
        // Rotation: only the second configured secret matches.
        let h = format!("t={T},v1={}", sig(new, T, body));
        assert!(check(&*verifier(&[old, new]), &h, body, T).is_ok());
        // Stripe rolling a secret: two v1 entries, the second one matches;
        // a v0 entry and an unknown key are ignored.
        let h = format!(
            "t={T},v1={},v1={},v0={},scheme=x",
            sig("whsec_unknown", T, body),
            sig(SECRET, T, body),
            "00".repeat(32)
        );
        let ok = check(&*verifier(&[SECRET]), &h, body, T).unwrap();
        assert_eq!(ok.delivery_id.as_deref(), Some("evt_2"));
        assert_eq!(ok.event_type.as_deref(), Some("invoice.paid"));
        // Whitespace after commas is tolerated.
        let h = format!("t={T}, v1={}", sig(SECRET, T, body));
        assert!(check(&*verifier(&[SECRET]), &h, body, T).is_ok());
    }

    #[test]
    fn non_json_body_still_verifies() {
        let body = b"not json at all";
        let h = format!("t={T},v1={}", sig(SECRET, T, body));
        let ok = check(&*verifier(&[SECRET]), &h, body, T).unwrap();
        assert_eq!(
            ok,
            Verified {
                delivery_id: None,
                event_type: None,
                timestamp: Some(T)
            }
        );
        // JSON with unexpected types: lenient, still Ok.
        let body = br#"{"id":5,"type":"charge.failed","data":[1,2]}"#;
        let h = format!("t={T},v1={}", sig(SECRET, T, body));
        let ok = check(&*verifier(&[SECRET]), &h, body, T).unwrap();
        assert_eq!(ok.delivery_id, None);
        assert_eq!(ok.event_type.as_deref(), Some("charge.failed"));
    }

    #[test]
    fn header_framing_errors() {
        let v = verifier(&[SECRET]);
        let none: Vec<(String, Vec<u8>)> = Vec::new();
        assert_eq!(
            v.verify(&Request::new(&none, b"{}"), T),
            Err(VerifyError::MissingHeader {
                header: SIGNATURE_HEADER.into()
            })
        );
        for (h, reason) in [
            ("v1=abcd", "no t= timestamp entry"),
            (&format!("t={T}")[..], "no v1= signature entry"),
            (&format!("t={T},v0=abcd")[..], "no v1= signature entry"),
            (
                "t=abc,v1=abcd",
                "timestamp is not a unix time in decimal seconds",
            ),
            (
                "t=-5,v1=abcd",
                "timestamp is not a unix time in decimal seconds",
            ),
            ("t=99999999999999999999,v1=ab", "timestamp is out of range"),
            (&format!("t={T},t={T},v1=ab")[..], "more than one t= entry"),
        ] {
            assert_eq!(
                check(&*v, h, b"{}", T),
                Err(VerifyError::MalformedHeader {
                    header: SIGNATURE_HEADER.into(),
                    reason
                }),
                "{h}"
            );
        }
    }

    #[test]
    fn errors_never_contain_secret_or_expected_signature() {
        let body = b"{}";
        let expected = sig(SECRET, T, body);
        let v = verifier(&[SECRET]);
        let errors = [
            check(
                &*v,
                &format!("t={T},v1={}", flip_char(&expected, 0)),
                body,
                T,
            ),
            check(&*v, &format!("t={T},v1={expected}"), body, T + 999),
            check(&*v, "t=x", body, T),
        ];
        for e in errors {
            assert_no_leak(&e.unwrap_err(), &[SECRET, &expected]);
        }
    }
}
