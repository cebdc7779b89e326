//! `Idempotency-Key` for the publish API: a retried request (same token, same key, same
//! request) within the window gets the first answer back and publishes nothing new; the
//! same key with a different request is refused.
//!
//! The store is in memory and per gateway instance: behind a load balancer a retry that
//! reaches another instance is published again. Consumers that need exactly-once should
//! dedupe on `event_id`, which a careful publisher sets itself. Entries expire after the
//! window and the oldest are dropped beyond `max_keys`, so memory stays bounded.
//!
//! A key is held while its request is in flight (a concurrent retry gets 409) and only an
//! accepted answer is remembered: after an error, or when the client disconnects mid-request,
//! the key is released and a retry publishes. In the disconnect case the first attempt may
//! still have been written, so such a retry can duplicate; `event_id` dedup covers it.
//!
//! A map and an age queue rather than a cache crate such as `moka`: a new key's in-flight
//! claim must always be taken (moka's TinyLFU admission may refuse a new entry when full,
//! and a claim not taken would let a concurrent retry publish twice), the oldest keys go
//! first rather than the least used, and expiry is tested with the caller's clock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest key accepted (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

type Key = (String, String);

#[derive(Debug, Clone)]
enum Entry {
    InFlight {
        fingerprint: [u8; 32],
        at: Instant,
    },
    Done {
        fingerprint: [u8; 32],
        at: Instant,
        response: serde_json::Value,
    },
}

impl Entry {
    fn at(&self) -> Instant {
        match self {
            Entry::InFlight { at, .. } | Entry::Done { at, .. } => *at,
        }
    }
}

/// What to do with a request carrying a key.
#[derive(Debug)]
pub enum Begin {
    /// First time: publish, then [`Claim::complete`] with the answer.
    New(Claim),
    /// Seen and answered: return this body again (202).
    Replay(serde_json::Value),
    /// The same key is being published right now.
    InProgress,
    /// The key was used for a different request.
    Reused,
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<Key, Entry>,
    order: VecDeque<(Key, Instant)>,
}

#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    window: Duration,
    max_keys: usize,
    inner: Arc<Mutex<Inner>>,
}

impl IdempotencyStore {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys: max_keys.max(1),
            inner: Arc::new(Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    /// Looks `key` up for `token`; `fingerprint` identifies the request (a hash of the event
    /// type and body).
    pub fn begin(&self, token: &str, key: &str, fingerprint: [u8; 32], now: Instant) -> Begin {
        let mut inner = self.inner.lock().expect("idempotency lock");
        self.evict(&mut inner, now);
        let k = (token.to_string(), key.to_string());
        match inner.entries.get(&k) {
            Some(Entry::Done {
                fingerprint: f,
                response,
                ..
            }) => {
                if *f == fingerprint {
                    Begin::Replay(response.clone())
                } else {
                    Begin::Reused
                }
            }
            Some(Entry::InFlight { fingerprint: f, .. }) => {
                if *f == fingerprint {
                    Begin::InProgress
                } else {
                    Begin::Reused
                }
            }
            None => {
                while inner.entries.len() >= self.max_keys && !inner.order.is_empty() {
                    pop_oldest(&mut inner);
                }
                inner.entries.insert(
                    k.clone(),
                    Entry::InFlight {
                        fingerprint,
                        at: now,
                    },
                );
                inner.order.push_back((k.clone(), now));
                Begin::New(Claim {
                    store: self.clone(),
                    key: Some(k),
                })
            }
        }
    }

    /// Number of keys held (in flight or answered).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("idempotency lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired entries.
    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((_, at)) = inner.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            pop_oldest(inner);
        }
        // Slots of claims that were dropped stay queued until here; keep the queue bounded.
        if inner.order.len() > 2 * self.max_keys {
            let entries = &inner.entries;
            inner
                .order
                .retain(|(k, at)| entries.get(k).is_some_and(|e| e.at() == *at));
        }
    }
}

/// Removes the oldest queue slot and its entry (when the slot is still that entry's).
fn pop_oldest(inner: &mut Inner) {
    if let Some((key, at)) = inner.order.pop_front() {
        if inner.entries.get(&key).is_some_and(|e| e.at() == at) {
            inner.entries.remove(&key);
        }
    }
}

/// The right to publish under a key. Dropping it without [`complete`](Claim::complete)
/// (an error, or the client went away) forgets the key, so a retry can publish.
#[derive(Debug)]
pub struct Claim {
    store: IdempotencyStore,
    key: Option<Key>,
}

impl Claim {
    /// Remembers the successful answer for replays.
    pub fn complete(mut self, response: serde_json::Value) {
        if let Some(k) = self.key.take() {
            let mut inner = self.store.inner.lock().expect("idempotency lock");
            if let Some(entry) = inner.entries.get_mut(&k) {
                if let Entry::InFlight { fingerprint, at } = entry.clone() {
                    *entry = Entry::Done {
                        fingerprint,
                        at,
                        response,
                    };
                }
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            if let Ok(mut inner) = self.store.inner.lock() {
                if matches!(inner.entries.get(&k), Some(Entry::InFlight { .. })) {
                    inner.entries.remove(&k);
                }
            }
        }
    }
}

/// SHA-256 over the event type and the request body.
pub fn fingerprint(event_type: &str, body: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(event_type.as_bytes());
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> IdempotencyStore {
        IdempotencyStore::new(Duration::from_secs(60), 3)
    }

    #[test]
    fn replays_the_first_answer_and_refuses_a_different_body() {
        let s = store();
        let t0 = Instant::now();
        let fp = fingerprint("T", b"{}");
        let Begin::New(claim) = s.begin("tok", "k1", fp, t0) else {
            panic!("first use is new")
        };
        assert!(matches!(s.begin("tok", "k1", fp, t0), Begin::InProgress));
        claim.complete(serde_json::json!({"event_id": "e1"}));
        match s.begin("tok", "k1", fp, t0 + Duration::from_secs(1)) {
            Begin::Replay(body) => assert_eq!(body["event_id"], "e1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.begin("tok", "k1", fingerprint("T", b"{\"a\":1}"), t0),
            Begin::Reused
        ));
        assert!(matches!(
            s.begin("tok", "k1", fingerprint("U", b"{}"), t0),
            Begin::Reused
        ));
        // Keys are per token.
        assert!(matches!(s.begin("other", "k1", fp, t0), Begin::New(_)));
    }

    #[test]
    fn a_failed_attempt_frees_the_key() {
        let s = store();
        let t0 = Instant::now();
        let fp = fingerprint("T", b"{}");
        let Begin::New(claim) = s.begin("tok", "k", fp, t0) else {
            panic!()
        };
        drop(claim);
        assert!(s.is_empty());
        assert!(matches!(s.begin("tok", "k", fp, t0), Begin::New(_)));
    }

    #[test]
    fn keys_expire_after_the_window_and_the_oldest_go_first_when_full() {
        let s = store();
        let t0 = Instant::now();
        let fp = fingerprint("T", b"{}");
        for k in ["a", "b", "c"] {
            let Begin::New(c) = s.begin("tok", k, fp, t0) else {
                panic!()
            };
            c.complete(serde_json::json!({ "k": k }));
        }
        assert_eq!(s.len(), 3);
        // A fourth key pushes out the oldest.
        let Begin::New(c) = s.begin("tok", "d", fp, t0) else {
            panic!()
        };
        c.complete(serde_json::json!({"k": "d"}));
        assert_eq!(s.len(), 3);
        assert!(matches!(s.begin("tok", "b", fp, t0), Begin::Replay(_)));
        // After the window everything is forgotten: the same key publishes again.
        let later = t0 + Duration::from_secs(61);
        assert!(matches!(s.begin("tok", "b", fp, later), Begin::New(_)));
        assert_eq!(s.len(), 0, "the claim above was dropped");
    }
}
