//! Bearer tokens of the gateway (`gateway.publish_tokens`): the publish API's, and, with
//! the `admin` [`Scope`], the management API's (`/v1/endpoints`).
//!
//! The presented token is hashed and compared with every configured token's hash in constant
//! time, with no early exit, so neither the position of a match nor a token's length shows
//! in the timing. Token values are never logged; errors name the env var or file.

use std::collections::BTreeSet;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sluice_runtime::config::{PublishToken, Scope};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::gateway::rate_limit::RateBucket;

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
    /// The publisher's name: event ids it chooses are namespaced as `<name>:<id>`.
    pub name: String,
    /// The only `source` this publisher's events may carry.
    pub source: String,
    pub allowed: Allowed,
    /// The token's rate limit (`rate_per_sec` / `burst`), if it has one.
    pub bucket: Option<Arc<RateBucket>>,
    /// What the token may do.
    pub scopes: BTreeSet<Scope>,
}

impl Caller {
    /// Whether the token was given `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// The event id stored for an id this publisher chose: `<name>:<id>`, so no publisher
    /// can choose an id that another publisher's events carry (names contain no `:`). An id
    /// already in this publisher's namespace is kept as it is.
    pub fn namespaced_event_id(&self, chosen: &str) -> String {
        match chosen.strip_prefix(self.name.as_str()) {
            Some(rest) if rest.starts_with(':') => chosen.to_string(),
            _ => format!("{}:{chosen}", self.name),
        }
    }
}

/// Whether `name` may name a publisher: letters, digits, `.`, `_`, `-` (it appears in
/// `sluice://publishers/<name>` and as the `<name>:` event id namespace).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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
            if !valid_name(&t.name) {
                return Err(invalid(
                    "name must be 1 or more letters, digits, `.`, `_` or `-`".into(),
                ));
            }
            if t.scopes.is_empty() {
                return Err(invalid(
                    "scopes must name at least one of publish, admin".into(),
                ));
            }
            if t.rate_per_sec == Some(0) || t.burst == Some(0) {
                return Err(invalid("rate_per_sec and burst must be at least 1".into()));
            }
            let source = t
                .source
                .clone()
                .unwrap_or_else(|| format!("sluice://publishers/{}", t.name));
            if source.trim().is_empty() {
                return Err(invalid("source must not be empty".into()));
            }
            // A source names one publisher: otherwise two could pass for each other.
            if let Some(other) = entries
                .iter()
                .find(|e| e.caller.source == source && e.caller.name != t.name)
            {
                return Err(invalid(format!(
                    "source `{source}` is already the source of publisher `{}`",
                    other.caller.name
                )));
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
                    source,
                    allowed,
                    bucket: t
                        .rate_per_sec
                        .map(|rate| Arc::new(RateBucket::new(rate, t.burst))),
                    scopes: t.scopes.iter().copied().collect(),
                },
            });
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any token has `scope`.
    pub fn any_with(&self, scope: Scope) -> bool {
        self.entries.iter().any(|e| e.caller.may(scope))
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
            rate_per_sec: None,
            burst: None,
            source: None,
            scopes: vec![Scope::Publish],
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
    fn names_are_restricted_and_sources_unique_so_publishers_cannot_overlap() {
        std::env::set_var("SLUICE_AUTH_TEST_N1", "token-n1-0123456789");
        std::env::set_var("SLUICE_AUTH_TEST_N2", "token-n2-0123456789");
        for bad in ["", "a:b", "a/b", "a b"] {
            let err = Tokens::resolve(&[token(bad, "SLUICE_AUTH_TEST_N1", &["*"])], &routed())
                .unwrap_err()
                .to_string();
            assert!(err.contains("name must be"), "{bad}: {err}");
        }
        // Two tokens of one publisher (rotation) are fine; two publishers sharing a source
        // are not.
        let rotated = Tokens::resolve(
            &[
                token("same", "SLUICE_AUTH_TEST_N1", &["*"]),
                token("same", "SLUICE_AUTH_TEST_N2", &["*"]),
            ],
            &routed(),
        )
        .unwrap();
        assert_eq!(
            rotated.authenticate(b"token-n2-0123456789").unwrap().name,
            "same"
        );
        let mut other = token("other", "SLUICE_AUTH_TEST_N2", &["*"]);
        other.source = Some("sluice://publishers/same".into());
        let err = Tokens::resolve(
            &[token("same", "SLUICE_AUTH_TEST_N1", &["*"]), other],
            &routed(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("publish_tokens[1] (other)"), "{err}");
        assert!(
            err.contains("already the source of publisher `same`"),
            "{err}"
        );
    }

    #[test]
    fn chosen_event_ids_are_namespaced_by_publisher() {
        let caller = |name: &str| Caller {
            name: name.into(),
            source: format!("sluice://publishers/{name}"),
            allowed: Allowed::All,
            bucket: None,
            scopes: BTreeSet::from([Scope::Publish]),
        };
        let (billing, shop) = (caller("billing"), caller("shop"));
        assert_eq!(billing.namespaced_event_id("order-42"), "billing:order-42");
        assert_eq!(
            billing.namespaced_event_id("billing:order-42"),
            "billing:order-42",
            "an id already in the namespace is kept"
        );
        assert_eq!(
            shop.namespaced_event_id("billing:order-42"),
            "shop:billing:order-42",
            "another publisher's namespace cannot be claimed"
        );
        assert_eq!(billing.namespaced_event_id("billingx"), "billing:billingx");
    }

    #[test]
    fn a_token_with_a_rate_gets_a_bucket() {
        std::env::set_var("SLUICE_AUTH_TEST_R1", "token-r1-0123456789");
        let mut t = token("r", "SLUICE_AUTH_TEST_R1", &["*"]);
        t.rate_per_sec = Some(0);
        let err = Tokens::resolve(std::slice::from_ref(&t), &routed())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rate_per_sec and burst must be at least 1"),
            "{err}"
        );
        t.rate_per_sec = Some(1);
        t.burst = Some(2);
        let tokens = Tokens::resolve(&[t], &routed()).unwrap();
        let caller = tokens.authenticate(b"token-r1-0123456789").unwrap();
        let bucket = caller.bucket.as_ref().expect("a bucket");
        let d = bucket.try_acquire();
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (2, 1));
    }

    #[test]
    fn scopes_are_typed_and_an_admin_token_need_not_publish() {
        std::env::set_var("SLUICE_AUTH_TEST_ADMIN", "token-admin-0123456789");
        std::env::set_var("SLUICE_AUTH_TEST_PUB", "token-pub-0123456789");
        let mut admin = token("ops", "SLUICE_AUTH_TEST_ADMIN", &[]);
        admin.scopes = vec![Scope::Admin];
        let publisher = token("billing", "SLUICE_AUTH_TEST_PUB", &["*"]);
        let tokens = Tokens::resolve(&[admin.clone(), publisher], &routed()).unwrap();
        assert!(tokens.any_with(Scope::Admin) && tokens.any_with(Scope::Publish));
        let ops = tokens.authenticate(b"token-admin-0123456789").unwrap();
        assert!(ops.may(Scope::Admin) && !ops.may(Scope::Publish));
        let billing = tokens.authenticate(b"token-pub-0123456789").unwrap();
        assert!(billing.may(Scope::Publish) && !billing.may(Scope::Admin));
        admin.scopes.clear();
        let err = Tokens::resolve(&[admin], &routed())
            .unwrap_err()
            .to_string();
        assert!(err.contains("scopes must name at least one"), "{err}");
        let parsed: PublishToken = serde_yaml_ng::from_str(
            "{name: ops, token: {env: X}, scopes: [admin, publish], event_types: []}",
        )
        .unwrap();
        assert_eq!(parsed.scopes, vec![Scope::Admin, Scope::Publish]);
        let defaulted: PublishToken =
            serde_yaml_ng::from_str("{name: b, token: {env: X}, event_types: ['*']}").unwrap();
        assert_eq!(defaulted.scopes, vec![Scope::Publish]);
        assert!(serde_yaml_ng::from_str::<PublishToken>(
            "{name: b, token: {env: X}, scopes: [root]}"
        )
        .is_err());
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
