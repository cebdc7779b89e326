//! Property tests: parsers never panic; verification of arbitrary input never
//! panics and never accepts a random signature.

use base64::Engine as _;
use proptest::prelude::*;

use super::common::{decode_prefixed, BASE64};
use super::test_support::vectors;
use super::*;

const HMAC_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn sendgrid_key() -> String {
    vectors("sendgrid")[0]["public_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn generic(encoding: SignatureEncoding, signed_content: SignedContent) -> ProviderConfig {
    let timestamped = signed_content == SignedContent::TimestampAndBody;
    ProviderConfig::GenericHmac {
        header: "x-signature".into(),
        algorithm: HmacAlgorithm::Sha256,
        encoding,
        prefix: Some("sha256=".into()),
        timestamp_header: timestamped.then(|| "x-timestamp".into()),
        signed_content,
        tolerance_secs: None,
        delivery_id_header: Some("x-delivery".into()),
        event_type_header: None,
    }
}

/// Every scheme, built with a fixed secret (SendGrid: a real public key).
fn all_verifiers() -> Vec<(&'static str, Box<dyn Verifier>)> {
    let s = || vec![Secret::from(HMAC_SECRET)];
    vec![
        (
            "stripe",
            build(
                &ProviderConfig::Stripe {
                    tolerance_secs: None,
                },
                s(),
            )
            .unwrap(),
        ),
        ("github", build(&ProviderConfig::Github, s()).unwrap()),
        ("shopify", build(&ProviderConfig::Shopify, s()).unwrap()),
        (
            "slack",
            build(
                &ProviderConfig::Slack {
                    tolerance_secs: None,
                },
                s(),
            )
            .unwrap(),
        ),
        (
            "standard_webhooks",
            build(
                &ProviderConfig::StandardWebhooks {
                    tolerance_secs: None,
                },
                s(),
            )
            .unwrap(),
        ),
        (
            "sendgrid",
            build(&ProviderConfig::Sendgrid, vec![sendgrid_key().into()]).unwrap(),
        ),
        (
            "generic_hex_ts",
            build(
                &generic(SignatureEncoding::Hex, SignedContent::TimestampAndBody),
                s(),
            )
            .unwrap(),
        ),
        (
            "generic_b64",
            build(
                &generic(SignatureEncoding::Base64, SignedContent::Body),
                s(),
            )
            .unwrap(),
        ),
    ]
}

/// Header names the verifiers look at, plus noise.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("stripe-signature".to_owned()),
        Just("x-hub-signature-256".to_owned()),
        Just("x-shopify-hmac-sha256".to_owned()),
        Just("x-slack-signature".to_owned()),
        Just("X-Slack-Request-Timestamp".to_owned()),
        Just("webhook-id".to_owned()),
        Just("webhook-timestamp".to_owned()),
        Just("webhook-signature".to_owned()),
        Just("svix-signature".to_owned()),
        Just("x-twilio-email-event-webhook-signature".to_owned()),
        Just("x-twilio-email-event-webhook-timestamp".to_owned()),
        Just("x-signature".to_owned()),
        Just("x-timestamp".to_owned()),
        "[a-zA-Z-]{1,12}",
    ]
}

/// Header values: plausible framing around random content, or raw bytes.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "(t=[0-9]{0,12},)?(v1=[0-9a-f]{0,70},?){0,3}".prop_map(String::into_bytes),
        "((v1|v1a|v2),[A-Za-z0-9+/=]{0,48} ?){0,3}".prop_map(String::into_bytes),
        "(sha256=|v0=)?[0-9a-fA-F]{0,66}".prop_map(String::into_bytes),
        "[A-Za-z0-9+/=]{0,100}".prop_map(String::into_bytes),
        "[0-9]{0,20}".prop_map(String::into_bytes),
        any::<String>().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..80),
    ]
}

fn random_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec((header_name(), header_value()), 0..8)
}

fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

proptest! {
    #[test]
    fn stripe_parser_never_panics(s in any::<String>()) {
        let _ = stripe::parse_header(&s);
    }

    #[test]
    fn stripe_parser_never_panics_on_near_valid(s in "(t|v1|v0|x| )*=?[0-9a-fA-F,= -]*") {
        if let Ok(h) = stripe::parse_header(&s) {
            prop_assert!(h.timestamp >= 0);
        }
    }

    #[test]
    fn signature_list_parser_never_panics(s in any::<String>(), t in "((v1|v1a|v2),[A-Za-z0-9+/=]{0,60}[ \t]{0,2}){0,5}") {
        let _ = standard_webhooks::parse_signatures(&s);
        let list = standard_webhooks::parse_signatures(&t);
        prop_assert!(list.v1.len() <= list.v1_entries);
    }

    #[test]
    fn prefix_and_encoding_decoding_never_panics(
        value in any::<String>(),
        prefix in proptest::option::of(any::<String>()),
        hex in any::<bool>(),
    ) {
        let encoding = if hex { SignatureEncoding::Hex } else { SignatureEncoding::Base64 };
        let _ = decode_prefixed(&value, prefix.as_deref(), encoding);
        // Multi-byte prefixes and values must not split a char boundary.
        let _ = decode_prefixed(&value, Some("é="), encoding);
    }

    #[test]
    fn arbitrary_requests_never_panic_and_never_verify(
        hs in random_headers(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        now in any::<i64>(),
    ) {
        for (name, v) in all_verifiers() {
            let r = v.verify(&Request::new(&hs, &body), now);
            prop_assert!(r.is_err(), "{name} accepted {hs:?}");
        }
    }

    /// Well-framed headers with a random signature of the right length are
    /// rejected as `invalid_signature`, never accepted.
    #[test]
    fn random_signatures_are_rejected(
        sig in proptest::array::uniform32(any::<u8>()),
        sig64 in proptest::array::uniform32(any::<u8>()),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        ts in 1_000_000_000i64..4_000_000_000,
    ) {
        let t = ts.to_string();
        let hex_sig = hex_of(&sig);
        let b64_sig = BASE64.encode(sig);
        let mut ecdsa = sig.to_vec();
        ecdsa.extend_from_slice(&sig64);
        let der = p256::ecdsa::Signature::from_slice(&ecdsa)
            .map(|s| BASE64.encode(s.to_der().as_bytes()))
            .unwrap_or_else(|_| BASE64.encode(&ecdsa));
        let requests: Vec<(&str, Vec<(&str, String)>)> = vec![
            ("stripe", vec![("stripe-signature", format!("t={t},v1={hex_sig},v1={}", hex_of(&sig64)))]),
            ("github", vec![("x-hub-signature-256", format!("sha256={hex_sig}"))]),
            ("shopify", vec![("x-shopify-hmac-sha256", b64_sig.clone())]),
            ("slack", vec![("x-slack-signature", format!("v0={hex_sig}")), ("x-slack-request-timestamp", t.clone())]),
            ("standard_webhooks", vec![
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", format!("v1,{b64_sig} v1,{}", BASE64.encode(sig64))),
            ]),
            ("sendgrid", vec![
                ("x-twilio-email-event-webhook-signature", der),
                ("x-twilio-email-event-webhook-timestamp", t.clone()),
            ]),
            ("generic_hex_ts", vec![("x-signature", format!("sha256={hex_sig}")), ("x-timestamp", t.clone())]),
            ("generic_b64", vec![("x-signature", format!("sha256={b64_sig}"))]),
        ];
        let verifiers = all_verifiers();
        prop_assert_eq!(verifiers.len(), requests.len());
        for ((name, v), (req_name, hs)) in verifiers.iter().zip(&requests) {
            prop_assert_eq!(name, req_name);
            let hs: Vec<(String, Vec<u8>)> =
                hs.iter().map(|(k, v)| (k.to_string(), v.clone().into_bytes())).collect();
            let r = v.verify(&Request::new(&hs, &body), ts);
            prop_assert_eq!(r, Err(VerifyError::InvalidSignature), "{}", name);
        }
    }
}
