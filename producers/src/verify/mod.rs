//! Webhook signature verification, one module per provider.
//!
//! The gateway adapts its HTTP request to a borrowed [`Request`], asks the
//! [`Verifier`] built from a [`ProviderConfig`] (see [`build`]) whether the
//! request is authentic, and gets back what the provider says about the
//! delivery ([`Verified`]) or a [`VerifyError`] with a stable machine code and
//! HTTP status.
//!
//! Rules shared by every scheme:
//!
//! * **Constant-time comparison.** MACs are compared with
//!   [`subtle::ConstantTimeEq`]; every configured secret is checked against
//!   every candidate signature with no early exit.
//! * **Rotation.** Verifiers take one or more [`Secret`]s; a request is
//!   accepted when *any* candidate signature matches *any* secret.
//! * **Signature first, then timestamp.** For timestamped schemes the MAC (or
//!   ECDSA signature) is checked before the timestamp tolerance, so a caller
//!   without a valid signature only ever sees `invalid_signature` and learns
//!   nothing about the clock or the tolerance. The timestamp is still *parsed*
//!   first, because it is part of the signed content.
//! * **Malformed vs invalid.** A header whose framing is wrong (missing
//!   `sha256=`/`v0=` prefix, no `t=` entry, no `v1` entry, timestamp that is
//!   not a decimal unix time, non-UTF-8 value, header repeated) is
//!   [`VerifyError::MalformedHeader`] (400). Once the framing is right, the
//!   signature bytes either match or they do not: a signature that fails to
//!   decode as hex/base64/DER, or decodes to the wrong length, is
//!   [`VerifyError::InvalidSignature`] (401), exactly like a wrong one. This
//!   lets lists of signatures carry entries we cannot decode (forward
//!   compatibility) without failing the whole request.
//! * **No secrets in errors.** Error messages may name a header, never a
//!   secret, a provided signature or the expected signature.

use std::fmt;

use serde::Deserialize;

mod common;
mod generic_hmac;
mod github;
mod sendgrid;
mod shopify;
mod slack;
mod standard_webhooks;
mod stripe;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

/// Default timestamp tolerance (seconds) for schemes with a signed timestamp.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// A borrowed view of an incoming webhook request.
///
/// Header names are matched ASCII case-insensitively, so the gateway may pass
/// them lower-cased (as `http::HeaderMap` yields them) or in any other case.
/// Values are raw bytes; verifiers require the headers they use to be UTF-8.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// `(name, value)` pairs in arrival order; repeated names allowed.
    pub headers: &'a [(String, Vec<u8>)],
    /// The raw, unmodified request body, exactly as received.
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// A view over the given headers and body.
    pub fn new(headers: &'a [(String, Vec<u8>)], body: &'a [u8]) -> Self {
        Self { headers, body }
    }

    /// The first value of header `name` (case-insensitive), trimmed of
    /// surrounding ASCII whitespace; `None` when absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let headers: &'a [(String, Vec<u8>)] = self.headers;
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(|v| v.trim_matches(|c: char| c.is_ascii_whitespace()))
    }

    /// Whether header `name` is present at all (any value).
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// A header that signature verification depends on: it must be present
    /// exactly once, be UTF-8 and be non-empty. A repeated security header is
    /// rejected rather than resolved, so that no two components can disagree
    /// about which copy was verified.
    pub(crate) fn required(&self, name: &str) -> Result<&'a str, VerifyError> {
        let headers: &'a [(String, Vec<u8>)] = self.headers;
        let mut found = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let (_, value) = found.next().ok_or_else(|| VerifyError::MissingHeader {
            header: name.to_owned(),
        })?;
        if found.next().is_some() {
            return Err(VerifyError::malformed(
                name,
                "header appears more than once",
            ));
        }
        let value = std::str::from_utf8(value)
            .map_err(|_| VerifyError::malformed(name, "header value is not valid UTF-8"))?
            .trim_matches(|c: char| c.is_ascii_whitespace());
        if value.is_empty() {
            return Err(VerifyError::malformed(name, "header value is empty"));
        }
        Ok(value)
    }

    /// An optional metadata header (delivery id, event name): first value,
    /// `None` when absent, empty or not UTF-8.
    pub(crate) fn metadata(&self, name: &str) -> Option<String> {
        self.header(name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

impl fmt::Debug for Request<'_> {
    /// Header names and the body length only: header values carry signatures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// What an authentic request says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// The provider's delivery / event id, for de-duplication, where the
    /// scheme defines one.
    pub delivery_id: Option<String>,
    /// The provider's event name (e.g. `push`, `orders/create`,
    /// `payment_intent.succeeded`), where the scheme defines one.
    pub event_type: Option<String>,
    /// The signed timestamp (unix seconds), for timestamped schemes.
    pub timestamp: Option<i64>,
}

/// Why a request was rejected. See [`VerifyError::code`] and
/// [`VerifyError::http_status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header needed for verification is absent.
    #[error("missing required header `{header}`")]
    MissingHeader { header: String },
    /// A header needed for verification is present but not well-formed.
    #[error("malformed header `{header}`: {reason}")]
    MalformedHeader {
        header: String,
        reason: &'static str,
    },
    /// No provided signature matches any configured secret.
    #[error("signature does not match")]
    InvalidSignature,
    /// The signature is valid but the signed timestamp is too far from now.
    /// `age_secs` is `now - timestamp` (negative when in the future).
    #[error(
        "signed timestamp is outside the tolerance (age {age_secs}s; negative means in the future)"
    )]
    TimestampOutOfTolerance { age_secs: i64 },
}

impl VerifyError {
    /// A stable machine-readable code, safe to return to the caller.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader { .. } => "missing_signature",
            Self::MalformedHeader { .. } => "malformed_signature",
            Self::InvalidSignature => "invalid_signature",
            Self::TimestampOutOfTolerance { .. } => "timestamp_out_of_tolerance",
        }
    }

    /// The HTTP status to answer with: 400 for a missing or malformed
    /// header, 401 for a signature or timestamp that does not verify.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::MissingHeader { .. } | Self::MalformedHeader { .. } => 400,
            Self::InvalidSignature | Self::TimestampOutOfTolerance { .. } => 401,
        }
    }

    pub(crate) fn malformed(header: &str, reason: &'static str) -> Self {
        Self::MalformedHeader {
            header: header.to_owned(),
            reason,
        }
    }
}

/// Key material: an HMAC secret, or for SendGrid a public key. Its `Debug`
/// never shows the bytes, and it has no `Display`.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the given bytes (a UTF-8 string's bytes for string secrets).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(**redacted**)")
    }
}

/// MAC hash for [`ProviderConfig::GenericHmac`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha256,
    Sha512,
}

/// How [`ProviderConfig::GenericHmac`] signatures are written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Hex, either case.
    Hex,
    /// Standard alphabet; padding optional.
    Base64,
}

/// What [`ProviderConfig::GenericHmac`] signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignedContent {
    /// The raw body.
    Body,
    /// `"{timestamp}.{body}"`, the timestamp taken from `timestamp_header`.
    TimestampAndBody,
}

/// Which scheme an endpoint uses, as written in configuration
/// (`type: stripe`, `type: generic_hmac`, ...). `tolerance_secs` defaults to
/// [`DEFAULT_TOLERANCE_SECS`]. Unknown fields are rejected for every variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawProviderConfig")]
pub enum ProviderConfig {
    Stripe {
        tolerance_secs: Option<u64>,
    },
    Github,
    Shopify,
    Sendgrid,
    Slack {
        tolerance_secs: Option<u64>,
    },
    StandardWebhooks {
        tolerance_secs: Option<u64>,
    },
    GenericHmac {
        header: String,
        algorithm: HmacAlgorithm,
        encoding: SignatureEncoding,
        prefix: Option<String>,
        timestamp_header: Option<String>,
        signed_content: SignedContent,
        tolerance_secs: Option<u64>,
        delivery_id_header: Option<String>,
        event_type_header: Option<String>,
    },
}

/// The serde shape of [`ProviderConfig`]. serde silently ignores extra
/// fields on *unit* variants of an internally tagged enum even with
/// `deny_unknown_fields` (so `{type: github, secret: x}` or
/// `{type: sendgrid, tolerance_secs: 5}` would be accepted and the field
/// dropped); empty struct variants here make those an error while the public
/// enum keeps its unit variants.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RawProviderConfig {
    Stripe {
        tolerance_secs: Option<u64>,
    },
    Github {},
    Shopify {},
    Sendgrid {},
    Slack {
        tolerance_secs: Option<u64>,
    },
    StandardWebhooks {
        tolerance_secs: Option<u64>,
    },
    GenericHmac {
        header: String,
        algorithm: HmacAlgorithm,
        encoding: SignatureEncoding,
        prefix: Option<String>,
        timestamp_header: Option<String>,
        signed_content: SignedContent,
        tolerance_secs: Option<u64>,
        delivery_id_header: Option<String>,
        event_type_header: Option<String>,
    },
}

impl From<RawProviderConfig> for ProviderConfig {
    fn from(raw: RawProviderConfig) -> Self {
        match raw {
            RawProviderConfig::Stripe { tolerance_secs } => Self::Stripe { tolerance_secs },
            RawProviderConfig::Github {} => Self::Github,
            RawProviderConfig::Shopify {} => Self::Shopify,
            RawProviderConfig::Sendgrid {} => Self::Sendgrid,
            RawProviderConfig::Slack { tolerance_secs } => Self::Slack { tolerance_secs },
            RawProviderConfig::StandardWebhooks { tolerance_secs } => {
                Self::StandardWebhooks { tolerance_secs }
            }
            RawProviderConfig::GenericHmac {
                header,
                algorithm,
                encoding,
                prefix,
                timestamp_header,
                signed_content,
                tolerance_secs,
                delivery_id_header,
                event_type_header,
            } => Self::GenericHmac {
                header,
                algorithm,
                encoding,
                prefix,
                timestamp_header,
                signed_content,
                tolerance_secs,
                delivery_id_header,
                event_type_header,
            },
        }
    }
}

impl ProviderConfig {
    /// The configuration tag, e.g. `"standard_webhooks"`; handy as a metric label.
    /// Whether a valid signature also vouches for the delivery id. Where it does not (the id
    /// is a header the signature leaves out), anyone holding one captured delivery can send
    /// it again under a fresh id; the gateway then adds a digest of the signed content to
    /// the raw record, and the normalizer deduplicates on both.
    pub fn signs_delivery_id(&self) -> bool {
        match self {
            // The id comes from the signed body (Stripe, Slack) or is signed itself
            // (Standard Webhooks); SendGrid has none, so the body's hash is the id.
            Self::Stripe { .. } | Self::Slack { .. } | Self::StandardWebhooks { .. } => true,
            Self::Sendgrid => true,
            Self::Github | Self::Shopify => false,
            Self::GenericHmac {
                delivery_id_header, ..
            } => delivery_id_header.is_none(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stripe { .. } => "stripe",
            Self::Github => "github",
            Self::Shopify => "shopify",
            Self::Sendgrid => "sendgrid",
            Self::Slack { .. } => "slack",
            Self::StandardWebhooks { .. } => "standard_webhooks",
            Self::GenericHmac { .. } => "generic_hmac",
        }
    }
}

/// Checks one provider's signatures.
pub trait Verifier: Send + Sync {
    /// Verifies `req` at wall-clock time `now_unix` (seconds).
    fn verify(&self, req: &Request<'_>, now_unix: i64) -> Result<Verified, VerifyError>;
}

impl fmt::Debug for dyn Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(..)")
    }
}

/// Why a verifier could not be built. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("no secret configured")]
    NoSecrets,
    #[error("secret #{index} is empty")]
    EmptySecret { index: usize },
    #[error("secret #{index} is not a Standard Webhooks secret: {reason}")]
    InvalidStandardWebhooksSecret { index: usize, reason: &'static str },
    #[error("SendGrid public key #{index} is invalid: {reason}")]
    InvalidPublicKey { index: usize, reason: &'static str },
    #[error("invalid generic_hmac configuration: {reason}")]
    InvalidConfig { reason: &'static str },
}

/// Builds the verifier for `config`. `secrets` are tried in any order; any
/// match accepts (rotation). For SendGrid each secret is a public key
/// (base64 DER SubjectPublicKeyInfo); for Standard Webhooks each is
/// `whsec_` + base64; for every other scheme it is used as raw bytes.
pub fn build(
    config: &ProviderConfig,
    secrets: Vec<Secret>,
) -> Result<Box<dyn Verifier>, BuildError> {
    if secrets.is_empty() {
        return Err(BuildError::NoSecrets);
    }
    if let Some(index) = secrets.iter().position(|s| s.expose().is_empty()) {
        return Err(BuildError::EmptySecret { index });
    }
    let tol = |t: &Option<u64>| t.unwrap_or(DEFAULT_TOLERANCE_SECS);
    Ok(match config {
        ProviderConfig::Stripe { tolerance_secs } => {
            Box::new(stripe::StripeVerifier::new(secrets, tol(tolerance_secs)))
        }
        ProviderConfig::Github => Box::new(github::GithubVerifier::new(secrets)),
        ProviderConfig::Shopify => Box::new(shopify::ShopifyVerifier::new(secrets)),
        ProviderConfig::Sendgrid => Box::new(sendgrid::SendgridVerifier::new(
            &secrets,
            DEFAULT_TOLERANCE_SECS,
        )?),
        ProviderConfig::Slack { tolerance_secs } => {
            Box::new(slack::SlackVerifier::new(secrets, tol(tolerance_secs)))
        }
        ProviderConfig::StandardWebhooks { tolerance_secs } => Box::new(
            standard_webhooks::StandardWebhooksVerifier::new(&secrets, tol(tolerance_secs))?,
        ),
        ProviderConfig::GenericHmac {
            header,
            algorithm,
            encoding,
            prefix,
            timestamp_header,
            signed_content,
            tolerance_secs,
            delivery_id_header,
            event_type_header,
        } => Box::new(generic_hmac::GenericHmacVerifier::new(
            generic_hmac::Settings {
                header: header.clone(),
                algorithm: *algorithm,
                encoding: *encoding,
                prefix: prefix.clone(),
                timestamp_header: timestamp_header.clone(),
                signed_content: *signed_content,
                tolerance_secs: *tolerance_secs,
                delivery_id_header: delivery_id_header.clone(),
                event_type_header: event_type_header.clone(),
            },
            secrets,
        )?),
    })
}
