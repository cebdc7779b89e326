//! Generic HMAC, for providers without a dedicated module: one header holds
//! `[prefix]<hex|base64>(HMAC-SHA256|512(secret, content))`, where content is
//! the body or `"{timestamp}.{body}"`.
//!
//! Most in-house and smaller providers use one of these two shapes. Some
//! combinations are refused when building, because they would look safer than
//! they are: a timestamp header or tolerance with `signed_content: body`
//! (an unsigned timestamp can be changed by anyone, so it bounds nothing),
//! and `timestamp_and_body` without a `timestamp_header`. The secret is used
//! as raw bytes. The optional delivery-id and event-type headers are unsigned
//! metadata.

use super::common::{any_hmac_matches, check_tolerance, decode_prefixed, parse_timestamp};
use super::{
    BuildError, HmacAlgorithm, Request, Secret, SignatureEncoding, SignedContent, Verified,
    Verifier, VerifyError, DEFAULT_TOLERANCE_SECS,
};

/// The `generic_hmac` configuration fields.
pub(crate) struct Settings {
    pub(crate) header: String,
    pub(crate) algorithm: HmacAlgorithm,
    pub(crate) encoding: SignatureEncoding,
    pub(crate) prefix: Option<String>,
    pub(crate) timestamp_header: Option<String>,
    pub(crate) signed_content: SignedContent,
    pub(crate) tolerance_secs: Option<u64>,
    pub(crate) delivery_id_header: Option<String>,
    pub(crate) event_type_header: Option<String>,
}

pub(crate) struct GenericHmacVerifier {
    header: String,
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    prefix: Option<String>,
    /// `Some` exactly when the content is `"{timestamp}.{body}"`.
    timestamp: Option<(String, u64)>,
    delivery_id_header: Option<String>,
    event_type_header: Option<String>,
    secrets: Vec<Secret>,
}

impl GenericHmacVerifier {
    pub(crate) fn new(s: Settings, secrets: Vec<Secret>) -> Result<Self, BuildError> {
        let invalid = |reason| Err(BuildError::InvalidConfig { reason });
        if s.header.trim().is_empty() {
            return invalid("`header` must not be empty");
        }
        let timestamp = match (s.signed_content, s.timestamp_header) {
            (SignedContent::TimestampAndBody, Some(h)) if !h.trim().is_empty() => {
                Some((h, s.tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS)))
            }
            (SignedContent::TimestampAndBody, _) => {
                return invalid("`signed_content: timestamp_and_body` needs a `timestamp_header`");
            }
            (SignedContent::Body, Some(_)) => {
                return invalid(
                    "`timestamp_header` needs `signed_content: timestamp_and_body` (an unsigned timestamp prevents no replay)",
                );
            }
            (SignedContent::Body, None) if s.tolerance_secs.is_some() => {
                return invalid("`tolerance_secs` needs `signed_content: timestamp_and_body`");
            }
            (SignedContent::Body, None) => None,
        };
        Ok(Self {
            header: s.header,
            algorithm: s.algorithm,
            encoding: s.encoding,
            prefix: s.prefix.filter(|p| !p.is_empty()),
            timestamp,
            delivery_id_header: s.delivery_id_header,
            event_type_header: s.event_type_header,
            secrets,
        })
    }
}

impl Verifier for GenericHmacVerifier {
    fn verify(&self, req: &Request<'_>, now_unix: i64) -> Result<Verified, VerifyError> {
        let value = req.required(&self.header)?;
        let signed_ts = match &self.timestamp {
            Some((name, tolerance)) => {
                let raw = req.required(name)?;
                Some((raw, parse_timestamp(name, raw)?, *tolerance))
            }
            None => None,
        };
        let candidate = decode_prefixed(value, self.prefix.as_deref(), self.encoding)
            .map_err(|reason| VerifyError::malformed(&self.header, reason))?
            .ok_or(VerifyError::InvalidSignature)?;
        let matched = match signed_ts {
            Some((raw, ..)) => {
                let parts: [&[u8]; 3] = [raw.as_bytes(), b".", req.body];
                any_hmac_matches(self.algorithm, &self.secrets, &parts, &[candidate])
            }
            None => any_hmac_matches(self.algorithm, &self.secrets, &[req.body], &[candidate]),
        };
        if !matched {
            return Err(VerifyError::InvalidSignature);
        }
        if let Some((_, ts, tolerance)) = signed_ts {
            check_tolerance(ts, now_unix, tolerance)?;
        }
        let meta = |h: &Option<String>| h.as_deref().and_then(|h| req.metadata(h));
        Ok(Verified {
            delivery_id: meta(&self.delivery_id_header),
            event_type: meta(&self.event_type_header),
            timestamp: signed_ts.map(|(_, ts, _)| ts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::*;
    use crate::verify::{build, ProviderConfig};

    const BODY: &[u8] = br#"{"hello":"world"}"#;
    const T: i64 = 1_700_000_000;
    /// Computed once with Python:
    /// `hmac.new(b"generic-secret", b'1700000000.{"hello":"world"}', hashlib.sha512).hexdigest()`
    const PYTHON_SHA512: &str = "3b5469376982c2b80910b71477526acc9634a71020c1da2d64b27a5ca877b503372563c9d47e089df38b88d7ce14871cfda74fd24b20e053475c75a7dec7966c";

    fn config(
        algorithm: HmacAlgorithm,
        encoding: SignatureEncoding,
        prefix: Option<&str>,
        timestamped: bool,
    ) -> ProviderConfig {
        ProviderConfig::GenericHmac {
            header: "X-Signature".into(),
            algorithm,
            encoding,
            prefix: prefix.map(str::to_owned),
            timestamp_header: timestamped.then(|| "X-Timestamp".to_owned()),
            signed_content: if timestamped {
                SignedContent::TimestampAndBody
            } else {
                SignedContent::Body
            },
            tolerance_secs: None,
            delivery_id_header: Some("X-Delivery".into()),
            event_type_header: Some("X-Event".into()),
        }
    }

    fn check(
        cfg: &ProviderConfig,
        secrets: &[&str],
        hs: &[(&str, &str)],
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let v = build(cfg, secrets.iter().map(|s| Secret::from(*s)).collect()).unwrap();
        v.verify(&Request::new(&headers(hs), body), now)
    }

    #[test]
    fn sha512_hex_timestamped_python_value() {
        let cfg = config(
            HmacAlgorithm::Sha512,
            SignatureEncoding::Hex,
            Some("sha512="),
            true,
        );
        let sig = format!("sha512={PYTHON_SHA512}");
        let ts = T.to_string();
        let hs = [
            ("x-signature", &sig[..]),
            ("x-timestamp", &ts[..]),
            ("x-delivery", "d-1"),
            ("x-event", "thing.happened"),
        ];
        let ok = check(&cfg, &["generic-secret"], &hs, BODY, T).unwrap();
        assert_eq!(
            ok,
            Verified {
                delivery_id: Some("d-1".into()),
                event_type: Some("thing.happened".into()),
                timestamp: Some(T)
            }
        );
        // Upper-case hex and prefix are accepted.
        let upper = format!("SHA512={}", PYTHON_SHA512.to_ascii_uppercase());
        let hs_upper = [("x-signature", &upper[..]), ("x-timestamp", &ts[..])];
        assert!(check(&cfg, &["generic-secret"], &hs_upper, BODY, T).is_ok());

        let stale = check(&cfg, &["generic-secret"], &hs, BODY, T + 301);
        assert_eq!(
            stale,
            Err(VerifyError::TimestampOutOfTolerance { age_secs: 301 })
        );
        let future = check(&cfg, &["generic-secret"], &hs, BODY, T - 301);
        assert_eq!(
            future,
            Err(VerifyError::TimestampOutOfTolerance { age_secs: -301 })
        );
        let ts2 = (T + 1).to_string();
        let moved = [("x-signature", &sig[..]), ("x-timestamp", &ts2[..])];
        assert_eq!(
            code(check(&cfg, &["generic-secret"], &moved, BODY, T)),
            "invalid_signature"
        );
        assert_eq!(
            code(check(
                &cfg,
                &["generic-secret"],
                &hs,
                &flip_byte(BODY, 1),
                T
            )),
            "invalid_signature"
        );
        let flipped = flip_char(&sig, 20);
        let hs_f = [("x-signature", &flipped[..]), ("x-timestamp", &ts[..])];
        assert_eq!(
            code(check(&cfg, &["generic-secret"], &hs_f, BODY, T)),
            "invalid_signature"
        );
        assert_eq!(
            code(check(&cfg, &["generic-secret2"], &hs, BODY, T)),
            "invalid_signature"
        );
        let no_prefix = [("x-signature", PYTHON_SHA512), ("x-timestamp", &ts[..])];
        assert_eq!(
            check(&cfg, &["generic-secret"], &no_prefix, BODY, T),
            Err(VerifyError::MalformedHeader {
                header: "X-Signature".into(),
                reason: "missing the expected prefix"
            })
        );
        assert_eq!(
            check(
                &cfg,
                &["generic-secret"],
                &[("x-signature", &sig[..])],
                BODY,
                T
            ),
            Err(VerifyError::MissingHeader {
                header: "X-Timestamp".into()
            })
        );
    }

    #[test]
    fn sha256_base64_body_with_rotation() {
        let cfg = config(
            HmacAlgorithm::Sha256,
            SignatureEncoding::Base64,
            None,
            false,
        );
        let sig = hmac_sha256_b64(b"new", BODY);
        let ok = check(&cfg, &["old", "new"], &[("X-Signature", &sig)], BODY, 0).unwrap();
        assert_eq!(ok.timestamp, None);
        assert_eq!(ok.delivery_id, None);
        assert_eq!(
            code(check(&cfg, &["old"], &[("X-Signature", &sig)], BODY, 0)),
            "invalid_signature"
        );
        assert_eq!(
            code(check(&cfg, &["new"], &[("X-Signature", "@@@")], BODY, 0)),
            "invalid_signature"
        );
        // A sha256 tag never matches a sha512 verifier.
        let cfg512 = config(
            HmacAlgorithm::Sha512,
            SignatureEncoding::Base64,
            None,
            false,
        );
        assert_eq!(
            code(check(&cfg512, &["new"], &[("X-Signature", &sig)], BODY, 0)),
            "invalid_signature"
        );
    }

    #[test]
    fn unsafe_configurations_are_refused() {
        let base = || config(HmacAlgorithm::Sha256, SignatureEncoding::Hex, None, false);
        let mut cases = Vec::new();
        let mut c = base();
        if let ProviderConfig::GenericHmac {
            timestamp_header, ..
        } = &mut c
        {
            *timestamp_header = Some("X-Timestamp".into());
        }
        cases.push(c);
        let mut c = base();
        if let ProviderConfig::GenericHmac { tolerance_secs, .. } = &mut c {
            *tolerance_secs = Some(60);
        }
        cases.push(c);
        let mut c = base();
        if let ProviderConfig::GenericHmac { signed_content, .. } = &mut c {
            *signed_content = SignedContent::TimestampAndBody;
        }
        cases.push(c);
        let mut c = base();
        if let ProviderConfig::GenericHmac { header, .. } = &mut c {
            *header = " ".into();
        }
        cases.push(c);
        for c in cases {
            assert!(
                matches!(
                    build(&c, vec!["s".into()]),
                    Err(BuildError::InvalidConfig { .. })
                ),
                "{c:?}"
            );
        }
    }

    #[test]
    fn errors_never_contain_secret_or_expected_signature() {
        let cfg = config(
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            Some("sha256="),
            false,
        );
        let expected = hmac_sha256_hex(b"generic-secret", BODY);
        for value in [
            format!("sha256={}", flip_char(&expected, 1)),
            expected.clone(),
        ] {
            let e = check(
                &cfg,
                &["generic-secret"],
                &[("x-signature", &value)],
                BODY,
                0,
            )
            .unwrap_err();
            assert_no_leak(&e, &["generic-secret", &expected]);
        }
    }
}
