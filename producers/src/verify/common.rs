//! Helpers shared by the verifiers: MACs, constant-time matching, timestamp
//! parsing and tolerance, signature decoding, lenient JSON metadata.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};

use super::{HmacAlgorithm, Secret, SignatureEncoding, VerifyError};

/// Standard-alphabet base64 that accepts input with or without padding.
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// HMAC of the concatenation of `parts` under `key`.
pub(crate) fn hmac_tag(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha256 => run::<Hmac<Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => run::<Hmac<Sha512>>(key, parts),
    }
}

/// Whether any candidate equals the MAC of `parts` under any secret.
///
/// Every (secret, candidate) pair is compared in constant time and the
/// results are OR-ed together as a [`Choice`]: there is no early exit, neither
/// on a byte mismatch nor on a match. (A length mismatch is not secret and
/// `subtle` reports it without inspecting bytes.)
pub(crate) fn any_hmac_matches(
    algorithm: HmacAlgorithm,
    secrets: &[Secret],
    parts: &[&[u8]],
    candidates: &[Vec<u8>],
) -> bool {
    let mut matched = Choice::from(0u8);
    for secret in secrets {
        let expected = hmac_tag(algorithm, secret.expose(), parts);
        for candidate in candidates {
            matched |= expected.as_slice().ct_eq(candidate.as_slice());
        }
    }
    matched.into()
}

/// Parses a unix timestamp in seconds: ASCII digits only (no sign, no
/// spaces), fitting in an `i64`.
pub(crate) fn parse_timestamp(header: &str, raw: &str) -> Result<i64, VerifyError> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::malformed(
            header,
            "timestamp is not a unix time in decimal seconds",
        ));
    }
    raw.parse::<i64>()
        .map_err(|_| VerifyError::malformed(header, "timestamp is out of range"))
}

/// Rejects a timestamp more than `tolerance` seconds before or after `now`.
pub(crate) fn check_tolerance(timestamp: i64, now: i64, tolerance: u64) -> Result<(), VerifyError> {
    let age_secs = now.saturating_sub(timestamp);
    if age_secs.unsigned_abs() > tolerance {
        Err(VerifyError::TimestampOutOfTolerance { age_secs })
    } else {
        Ok(())
    }
}

/// Strips `prefix` (ASCII case-insensitive) from `value`.
pub(crate) fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// Decodes a signature; `None` when it is not valid in `encoding`.
pub(crate) fn decode_signature(encoding: SignatureEncoding, value: &str) -> Option<Vec<u8>> {
    match encoding {
        SignatureEncoding::Hex => hex::decode(value).ok(),
        SignatureEncoding::Base64 => BASE64.decode(value).ok(),
    }
}

/// Strips the optional `prefix` and decodes the rest.
///
/// `Err` (framing problem, mapped to `MalformedHeader`) when the prefix is
/// absent; `Ok(None)` (mapped to `InvalidSignature`) when the remainder does
/// not decode.
pub(crate) fn decode_prefixed(
    value: &str,
    prefix: Option<&str>,
    encoding: SignatureEncoding,
) -> Result<Option<Vec<u8>>, &'static str> {
    let rest = match prefix {
        Some(p) => strip_prefix_ignore_case(value, p).ok_or("missing the expected prefix")?,
        None => value,
    };
    Ok(decode_signature(encoding, rest))
}

/// The few top-level fields providers put in JSON bodies. Every field is
/// optional and read as an arbitrary JSON value, so unexpected types never
/// make the whole body unreadable; other fields are skipped.
#[derive(Deserialize, Default)]
pub(crate) struct Envelope {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    kind: Option<serde_json::Value>,
    #[serde(default)]
    event_id: Option<serde_json::Value>,
    #[serde(default)]
    event: Option<serde_json::Value>,
}

impl Envelope {
    /// Parses leniently: a body that is not a JSON object yields all `None`.
    pub(crate) fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    fn string(v: &Option<serde_json::Value>) -> Option<String> {
        v.as_ref()
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    pub(crate) fn id(&self) -> Option<String> {
        Self::string(&self.id)
    }

    pub(crate) fn kind(&self) -> Option<String> {
        Self::string(&self.kind)
    }

    pub(crate) fn event_id(&self) -> Option<String> {
        Self::string(&self.event_id)
    }

    /// `event.type`, for Slack's Events API.
    pub(crate) fn inner_event_kind(&self) -> Option<String> {
        self.event
            .as_ref()
            .and_then(|e| e.get("type"))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }
}
