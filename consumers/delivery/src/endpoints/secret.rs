//! Per-endpoint signing secrets: Standard Webhooks `whsec_` + base64 of random bytes.
//!
//! A secret's value is shown to the caller twice only (when the endpoint is created and when
//! a secret is rotated in); everywhere else it is named by its [`SecretValue::fingerprint`].
//! Its `Debug` never prints the value, so a stray `{:?}` in a log cannot leak it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The prefix of every Standard Webhooks secret.
pub const PREFIX: &str = "whsec_";
/// Random bytes in a generated secret (192 bits, as Svix generates).
pub const GENERATED_BYTES: usize = 24;

/// A secret's value, `whsec_<base64>`, checked to decode to key bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretValue {
    text: String,
    key: Vec<u8>,
}

impl SecretValue {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; GENERATED_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        Self {
            text: format!("{PREFIX}{}", STANDARD.encode(bytes)),
            key: bytes.to_vec(),
        }
    }

    /// Parses `whsec_<base64>`; the error says what is wrong without quoting the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("a secret must start with `{PREFIX}`"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("the part after `{PREFIX}` is not standard base64"))?;
        if key.is_empty() {
            return Err("the secret has no key bytes".into());
        }
        Ok(Self {
            text: text.to_string(),
            key,
        })
    }

    /// The HMAC key: the base64-decoded part after `whsec_`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The full `whsec_…` text, to show the caller once.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Names the secret without revealing it: `sha256:` and the first 16 hex digits of the
    /// SHA-256 of its text.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.text.as_bytes());
        format!("sha256:{}", hex::encode(&digest[..8]))
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({})", self.fingerprint())
    }
}

impl TryFrom<String> for SecretValue {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<SecretValue> for String {
    fn from(s: SecretValue) -> String {
        s.text
    }
}

/// One of an endpoint's secrets, with its lifetime. A secret without `expires_at` signs until
/// it is rotated out; a rotated-out one keeps signing until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSecret {
    pub value: SecretValue,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl EndpointSecret {
    pub fn new(value: SecretValue, now: Timestamp) -> Self {
        Self {
            value,
            created_at: now,
            expires_at: None,
        }
    }

    /// Whether this secret still signs at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }

    /// What GET answers show of a secret: never its value.
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "fingerprint": self.value.fingerprint(),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_standard_webhooks_secrets_and_never_debug_printed() {
        let a = SecretValue::generate();
        let b = SecretValue::generate();
        assert_ne!(a, b);
        assert_eq!(a.key().len(), GENERATED_BYTES);
        let parsed = SecretValue::parse(a.expose()).unwrap();
        assert_eq!(parsed.key(), a.key());
        let debug = format!("{a:?}");
        assert!(!debug.contains(a.expose()), "{debug}");
        assert!(debug.contains(&a.fingerprint()));
        assert_eq!(a.fingerprint().len(), "sha256:".len() + 16);
    }

    #[test]
    fn malformed_secrets_are_refused_without_quoting_them() {
        let e = SecretValue::parse("sk_live_abc").unwrap_err();
        assert!(e.contains("whsec_") && !e.contains("sk_live_abc"), "{e}");
        let e = SecretValue::parse("whsec_!!notbase64").unwrap_err();
        assert!(e.contains("base64") && !e.contains("notbase64"), "{e}");
        assert!(SecretValue::parse("whsec_").is_err());
    }
}
