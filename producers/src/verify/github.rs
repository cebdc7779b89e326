//! GitHub: `X-Hub-Signature-256: sha256=<hex>` = `HMAC-SHA256(secret, body)`.
//!
//! GitHub signs only the body (no timestamp, so no replay window: dedup on
//! `X-GitHub-Delivery` is the only replay defence). The secret is the
//! webhook's secret string as typed (UTF-8 bytes). The legacy SHA-1
//! `X-Hub-Signature` header is ignored. `X-GitHub-Delivery` and
//! `X-GitHub-Event` are *not* covered by the signature.

use super::common::{any_hmac_matches, decode_prefixed};
use super::{HmacAlgorithm, Request, Secret, SignatureEncoding, Verified, Verifier, VerifyError};

pub(crate) const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
const DELIVERY_HEADER: &str = "X-GitHub-Delivery";
const EVENT_HEADER: &str = "X-GitHub-Event";

pub(crate) struct GithubVerifier {
    secrets: Vec<Secret>,
}

impl GithubVerifier {
    pub(crate) fn new(secrets: Vec<Secret>) -> Self {
        Self { secrets }
    }
}

impl Verifier for GithubVerifier {
    fn verify(&self, req: &Request<'_>, _now_unix: i64) -> Result<Verified, VerifyError> {
        let value = req.required(SIGNATURE_HEADER)?;
        let candidate = decode_prefixed(value, Some("sha256="), SignatureEncoding::Hex)
            .map_err(|reason| VerifyError::malformed(SIGNATURE_HEADER, reason))?
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
            delivery_id: req.metadata(DELIVERY_HEADER),
            event_type: req.metadata(EVENT_HEADER),
            timestamp: None,
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
            &ProviderConfig::Github,
            secrets.iter().map(|s| Secret::from(*s)).collect(),
        )
        .unwrap()
    }

    #[test]
    fn published_vectors() {
        for case in vectors("github") {
            let v = verifier(&[vector_str(&case, "secret")]);
            let hs = vector_headers(&case);
            let body = vector_str(&case, "body").as_bytes();
            let result = v.verify(&Request::new(&hs, body), 0);
            assert_eq!(result.is_ok(), case["valid"].as_bool().unwrap(), "{case}");
        }
    }

    #[test]
    fn tampering_is_rejected() {
        let case = &vectors("github")[0];
        let secret = vector_str(case, "secret");
        let body = vector_str(case, "body").as_bytes();
        let hs = vector_headers(case);
        let sig = vector_str(&case["headers"], "X-Hub-Signature-256");
        let v = verifier(&[secret]);
        assert_eq!(
            code(v.verify(&Request::new(&hs, &flip_byte(body, 0)), 0)),
            "invalid_signature"
        );
        let flipped = with_header(&hs, SIGNATURE_HEADER, &flip_char(sig, 10));
        assert_eq!(
            code(v.verify(&Request::new(&flipped, body), 0)),
            "invalid_signature"
        );
        let not_hex = with_header(&hs, SIGNATURE_HEADER, "sha256=xyz");
        assert_eq!(
            code(v.verify(&Request::new(&not_hex, body), 0)),
            "invalid_signature"
        );
        let wrong = verifier(&["It's a Secret to Everybody!"]);
        assert_eq!(
            code(wrong.verify(&Request::new(&hs, body), 0)),
            "invalid_signature"
        );
        let no_prefix = with_header(&hs, SIGNATURE_HEADER, &sig["sha256=".len()..]);
        assert_eq!(
            code(v.verify(&Request::new(&no_prefix, body), 0)),
            "malformed_signature"
        );
        let sha1_only = headers(&[("x-hub-signature", "sha1=0000")]);
        assert_eq!(
            v.verify(&Request::new(&sha1_only, body), 0),
            Err(VerifyError::MissingHeader {
                header: SIGNATURE_HEADER.into()
            })
        );
    }

    #[test]
    fn rotation_metadata_and_header_case() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let new = "new-secret";
        let sig = format!("sha256={}", hmac_sha256_hex(new.as_bytes(), body));
        // Mixed-case header names, as a non-http-crate caller might pass.
        let hs = headers(&[
            ("X-Hub-Signature-256", &sig),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("X-GitHub-Event", "ping"),
        ]);
        let ok = verifier(&["old-secret", new])
            .verify(&Request::new(&hs, body), 0)
            .unwrap();
        assert_eq!(
            ok.delivery_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(ok.event_type.as_deref(), Some("ping"));
        assert_eq!(ok.timestamp, None);
    }

    #[test]
    fn repeated_signature_header_is_malformed() {
        let case = &vectors("github")[0];
        let mut hs = vector_headers(case);
        hs.extend(hs.clone());
        let v = verifier(&[vector_str(case, "secret")]);
        let r = v.verify(&Request::new(&hs, vector_str(case, "body").as_bytes()), 0);
        assert_eq!(code(r), "malformed_signature");
    }

    #[test]
    fn errors_never_contain_secret_or_expected_signature() {
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let expected = hmac_sha256_hex(secret.as_bytes(), body);
        let v = verifier(&[secret]);
        for value in [
            "sha256=00",
            "md5=00",
            &format!("sha256={}", flip_char(&expected, 3)),
        ] {
            let hs = headers(&[("x-hub-signature-256", value)]);
            let e = v.verify(&Request::new(&hs, body), 0).unwrap_err();
            assert_no_leak(&e, &[secret, &expected]);
        }
    }
}
