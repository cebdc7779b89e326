//! Bearer tokens for the publish API (`gateway.publish_tokens`).
//!
//! The presented token is hashed and compared with every configured token's hash in constant
//! time, with no early exit, so neither the position of a match nor a token's length shows
//! in the timing. Token values are never logged; errors name the env var or file.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use sluice_runtime::config::PublishToken;
use subtle::{ConditionallySelectable, ConstantTimeEq};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("gateway.publish_tokens[{index}] ({name}): {source}")]
    Secret {
        index: usize,
        name: String,
        source: sluice_runtime::ConfigError,
    },
    #[error("gateway.publish_tokens[{index}] ({name}): {reason}")]
    Invalid {
        index: usize,
        name: String,
        reason: String,
    },
}

/// Which event types a token may publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    All,
    Only(BTreeSet<String>),
}

impl Allowed {
    pub fn permits(&self, event_type: &str) -> bool {
        match self {
            Allowed::All => true,
            Allowed::Only(set) => set.contains(event_type),
        }
    }
}

/// An authenticated publisher.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub allowed: Allowed,
}

struct Entry {
    digest: [u8; 32],
    caller: Caller,
}

/// The configured tokens, resolved.
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.caller.name))
            .finish()
    }
}

impl Tokens {
    /// Resolves every token; `routed` are the event types a token may name.
    pub fn resolve(config: &[PublishToken], routed: &BTreeSet<String>) -> Result<Self, TokenError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (index, t) in config.iter().enumerate() {
            let invalid = |reason: String| TokenError::Invalid {
                index,
                name: t.name.clone(),
                reason,
            };
            if t.name.is_empty() {
                return Err(invalid("name must not be empty".into()));
            }
            let value = t.token.resolve().map_err(|source| TokenError::Secret {
                index,
                name: t.name.clone(),
                source,
            })?;
            if value.len() < 16 {
                return Err(invalid(format!(
                    "the token from {:?} is shorter than 16 characters",
                    t.token
                )));
            }
            let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            if entries.iter().any(|e| e.digest == digest) {
                return Err(invalid("the same token value is configured twice".into()));
            }
            let allowed = if t.event_types.iter().any(|e| e == "*") {
                Allowed::All
            } else {
                for (j, e) in t.event_types.iter().enumerate() {
                    if !routed.contains(e) {
                        return Err(invalid(format!(
                            "event_types[{j}]: `{e}` is not a routed event type"
                        )));
                    }
                }
                Allowed::Only(t.event_types.iter().cloned().collect())
            };
            entries.push(Entry {
                digest,
                caller: Caller {
                    name: t.name.clone(),
                    allowed,
                },
            });
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller whose token is `presented`, if any.
    pub fn authenticate(&self, presented: &[u8]) -> Option<&Caller> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // 1-based index of the match; 0 when none. Every entry is compared.
        let mut found = 0u32;
        for (i, e) in self.entries.iter().enumerate() {
            let is = e.digest.ct_eq(&digest);
            found.conditional_assign(&(i as u32 + 1), is);
        }
        found
            .checked_sub(1)
            .and_then(|i| self.entries.get(i as usize))
            .map(|e| &e.caller)
    }
}

/// The token in an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&[u8]>) -> Option<&[u8]> {
    let value = header?;
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::SecretRef;

    fn token(name: &str, env: &str, types: &[&str]) -> PublishToken {
        PublishToken {
            name: name.into(),
            token: SecretRef::Env(env.into()),
            event_types: types.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn routed() -> BTreeSet<String> {
        ["a.A".to_string(), "b.B".to_string()].into()
    }

    #[test]
    fn authenticates_any_configured_token_and_scopes_types() {
        std::env::set_var("SLUICE_AUTH_TEST_T1", "token-one-0123456789");
        std::env::set_var("SLUICE_AUTH_TEST_T2", "token-two-0123456789");
        let tokens = Tokens::resolve(
            &[
                token("one", "SLUICE_AUTH_TEST_T1", &["*"]),
                token("two", "SLUICE_AUTH_TEST_T2", &["a.A"]),
            ],
            &routed(),
        )
        .unwrap();
        let one = tokens.authenticate(b"token-one-0123456789").unwrap();
        assert_eq!(one.name, "one");
        assert!(one.allowed.permits("b.B"));
        let two = tokens.authenticate(b"token-two-0123456789").unwrap();
        assert_eq!(two.name, "two");
        assert!(two.allowed.permits("a.A") && !two.allowed.permits("b.B"));
        assert!(tokens.authenticate(b"token-two-012345678").is_none());
        assert!(tokens.authenticate(b"").is_none());
        assert!(!format!("{tokens:?}").contains("token-one"));
    }

    #[test]
    fn configuration_errors_name_the_token_not_its_value() {
        std::env::set_var("SLUICE_AUTH_TEST_SHORT", "tiny-val");
        let err = Tokens::resolve(&[token("s", "SLUICE_AUTH_TEST_SHORT", &["*"])], &routed())
            .unwrap_err()
            .to_string();
        assert!(err.contains("publish_tokens[0] (s)"), "{err}");
        assert!(
            err.contains("SLUICE_AUTH_TEST_SHORT") && !err.contains("tiny-val"),
            "{err}"
        );
        let err = Tokens::resolve(&[token("m", "SLUICE_AUTH_TEST_MISSING", &["*"])], &routed())
            .unwrap_err()
            .to_string();
        assert!(err.contains("env:SLUICE_AUTH_TEST_MISSING"), "{err}");
        std::env::set_var("SLUICE_AUTH_TEST_T3", "token-three-0123456789");
        let err = Tokens::resolve(&[token("u", "SLUICE_AUTH_TEST_T3", &["c.C"])], &routed())
            .unwrap_err()
            .to_string();
        assert!(err.contains("event_types[0]: `c.C`"), "{err}");
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"bearer   abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bearer ")), None);
        assert_eq!(bearer(Some(b"Bearer")), None);
        assert_eq!(bearer(None), None);
    }
}
