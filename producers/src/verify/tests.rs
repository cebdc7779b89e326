//! Cross-cutting tests: configuration, errors, redaction, request view, and
//! every published vector through [`build`]. Per-scheme tests live in each
//! provider module.

use super::test_support::*;
use super::*;

fn cfg(json: &str) -> Result<ProviderConfig, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn config_deserializes_every_variant() {
    assert_eq!(
        cfg(r#"{"type":"stripe"}"#).unwrap(),
        ProviderConfig::Stripe {
            tolerance_secs: None
        }
    );
    assert_eq!(
        cfg(r#"{"type":"stripe","tolerance_secs":60}"#).unwrap(),
        ProviderConfig::Stripe {
            tolerance_secs: Some(60)
        }
    );
    assert_eq!(cfg(r#"{"type":"github"}"#).unwrap(), ProviderConfig::Github);
    assert_eq!(
        cfg(r#"{"type":"shopify"}"#).unwrap(),
        ProviderConfig::Shopify
    );
    assert_eq!(
        cfg(r#"{"type":"sendgrid"}"#).unwrap(),
        ProviderConfig::Sendgrid
    );
    assert_eq!(
        cfg(r#"{"type":"slack"}"#).unwrap(),
        ProviderConfig::Slack {
            tolerance_secs: None
        }
    );
    assert_eq!(
        cfg(r#"{"type":"standard_webhooks","tolerance_secs":10}"#).unwrap(),
        ProviderConfig::StandardWebhooks {
            tolerance_secs: Some(10)
        }
    );
    let generic = cfg(
        r#"{"type":"generic_hmac","header":"X-Sig","algorithm":"sha512","encoding":"base64",
            "prefix":"sha512=","timestamp_header":"X-Ts","signed_content":"timestamp_and_body",
            "tolerance_secs":30,"delivery_id_header":"X-Id","event_type_header":"X-Ev"}"#,
    )
    .unwrap();
    assert_eq!(
        generic,
        ProviderConfig::GenericHmac {
            header: "X-Sig".into(),
            algorithm: HmacAlgorithm::Sha512,
            encoding: SignatureEncoding::Base64,
            prefix: Some("sha512=".into()),
            timestamp_header: Some("X-Ts".into()),
            signed_content: SignedContent::TimestampAndBody,
            tolerance_secs: Some(30),
            delivery_id_header: Some("X-Id".into()),
            event_type_header: Some("X-Ev".into()),
        }
    );
    assert_eq!(generic.kind(), "generic_hmac");
    let minimal = cfg(
        r#"{"type":"generic_hmac","header":"X-Sig","algorithm":"sha256","encoding":"hex","signed_content":"body"}"#,
    )
    .unwrap();
    assert!(build(&minimal, vec!["s".into()]).is_ok());
}

#[test]
fn config_rejects_unknown_fields_and_types() {
    for bad in [
        r#"{"type":"stripe","tolerance":60}"#,
        r#"{"type":"github","secret":"x"}"#,
        r#"{"type":"sendgrid","tolerance_secs":5}"#,
        r#"{"type":"paypal"}"#,
        r#"{"tolerance_secs":5}"#,
        r#"{"type":"generic_hmac","header":"X","algorithm":"md5","encoding":"hex","signed_content":"body"}"#,
        r#"{"type":"generic_hmac","header":"X","algorithm":"sha256","encoding":"hex"}"#,
    ] {
        assert!(cfg(bad).is_err(), "accepted {bad}");
    }
}

#[test]
fn error_codes_and_statuses() {
    let cases = [
        (
            VerifyError::MissingHeader { header: "H".into() },
            "missing_signature",
            400,
        ),
        (VerifyError::malformed("H", "r"), "malformed_signature", 400),
        (VerifyError::InvalidSignature, "invalid_signature", 401),
        (
            VerifyError::TimestampOutOfTolerance { age_secs: -5 },
            "timestamp_out_of_tolerance",
            401,
        ),
    ];
    for (e, code, status) in cases {
        assert_eq!(e.code(), code);
        assert_eq!(e.http_status(), status);
    }
    assert_eq!(
        VerifyError::MissingHeader {
            header: "Stripe-Signature".into()
        }
        .to_string(),
        "missing required header `Stripe-Signature`"
    );
}

#[test]
fn secrets_are_redacted_everywhere() {
    let s = Secret::from("whsec_super_secret_value");
    assert_eq!(format!("{s:?}"), "Secret(**redacted**)");
    assert_eq!(format!("{:?}", vec![s.clone()]), "[Secret(**redacted**)]");
    let v = build(&ProviderConfig::Github, vec![s]).unwrap();
    assert!(!format!("{v:?}").contains("super_secret"));
    let hs = headers(&[("x-hub-signature-256", "sha256=deadbeef")]);
    let req = Request::new(&hs, b"body");
    let shown = format!("{req:?}");
    assert!(
        shown.contains("x-hub-signature-256") && !shown.contains("deadbeef"),
        "{shown}"
    );
}

#[test]
fn build_rejects_missing_or_empty_secrets() {
    let all = [
        ProviderConfig::Stripe {
            tolerance_secs: None,
        },
        ProviderConfig::Github,
        ProviderConfig::Shopify,
        ProviderConfig::Sendgrid,
        ProviderConfig::Slack {
            tolerance_secs: None,
        },
        ProviderConfig::StandardWebhooks {
            tolerance_secs: None,
        },
    ];
    for c in &all {
        assert_eq!(
            build(c, vec![]).unwrap_err(),
            BuildError::NoSecrets,
            "{c:?}"
        );
        assert_eq!(
            build(c, vec!["x".into(), Secret::new(Vec::new())]).unwrap_err(),
            BuildError::EmptySecret { index: 1 },
            "{c:?}"
        );
    }
}

#[test]
fn request_header_lookup() {
    let hs = vec![
        ("x-a".to_owned(), b" one ".to_vec()),
        ("X-A".to_owned(), b"two".to_vec()),
        ("x-bin".to_owned(), vec![0xff, 0xfe]),
        ("x-empty".to_owned(), Vec::new()),
    ];
    let req = Request::new(&hs, b"");
    assert_eq!(req.header("X-a"), Some("one"));
    assert_eq!(req.header("x-bin"), None);
    assert_eq!(req.header("x-missing"), None);
    assert!(req.has_header("X-BIN"));
    assert_eq!(code_of(req.required("x-a")), "malformed_signature");
    assert_eq!(code_of(req.required("x-bin")), "malformed_signature");
    assert_eq!(code_of(req.required("x-empty")), "malformed_signature");
    assert_eq!(code_of(req.required("x-missing")), "missing_signature");
}

fn code_of(r: Result<&str, VerifyError>) -> &'static str {
    r.unwrap_err().code()
}

#[test]
fn tolerance_is_symmetric_and_inclusive() {
    use super::common::check_tolerance;
    assert!(check_tolerance(1000, 1300, 300).is_ok());
    assert!(check_tolerance(1000, 700, 300).is_ok());
    assert!(check_tolerance(1000, 1301, 300).is_err());
    assert!(check_tolerance(1000, 699, 300).is_err());
    assert!(check_tolerance(0, 0, 0).is_ok());
    assert_eq!(
        check_tolerance(i64::MAX, i64::MIN, 300),
        Err(VerifyError::TimestampOutOfTolerance { age_secs: i64::MIN })
    );
}

/// Every provider in the vector file is exercised here (and in its module),
/// so a newly added provider section cannot go untested.
#[test]
fn every_published_vector_through_build() {
    let all: serde_json::Value =
        serde_json::from_slice(&fixture_bytes("signature-vectors.json")).unwrap();
    let mut checked = 0;
    for (provider, cases) in all.as_object().unwrap() {
        if provider.starts_with('_') {
            continue;
        }
        let (config, secret_key, ts_header) = match provider.as_str() {
            "github" => (ProviderConfig::Github, "secret", None),
            "slack" => (
                ProviderConfig::Slack {
                    tolerance_secs: None,
                },
                "secret",
                Some("X-Slack-Request-Timestamp"),
            ),
            "standard_webhooks" => (
                ProviderConfig::StandardWebhooks {
                    tolerance_secs: None,
                },
                "secret",
                Some("webhook-timestamp"),
            ),
            "sendgrid" => (
                ProviderConfig::Sendgrid,
                "public_key",
                Some("X-Twilio-Email-Event-Webhook-Timestamp"),
            ),
            other => panic!("vector file has an untested provider `{other}`"),
        };
        for case in cases.as_array().unwrap() {
            let v = build(&config, vec![vector_str(case, secret_key).into()]).unwrap();
            let now = ts_header.map_or(0, |h| vector_str(&case["headers"], h).parse().unwrap());
            let hs = vector_headers(case);
            let result = v.verify(&Request::new(&hs, vector_str(case, "body").as_bytes()), now);
            if case["valid"].as_bool().unwrap() {
                assert!(result.is_ok(), "{provider}: {result:?} for {case}");
            } else {
                assert_eq!(
                    result,
                    Err(VerifyError::InvalidSignature),
                    "{provider}: {case}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} vectors");
}
