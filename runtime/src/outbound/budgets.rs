//! Shared request budgets for callers that must wait rather than fail (pollers): one
//! `governor` limiter per key (a host, a credential), and a "not before" instant per key set
//! by the other side's `Retry-After` or rate-limit reset headers.
//!
//! Unlike an endpoint's [`LimitsConfig`](super::LimitsConfig), which refuses an attempt past
//! its wait, a budget waits as long as it takes: hitting a third party's limit slows a sync
//! down, it never fails it. Keys are shared across callers, so two sources polling one host,
//! or using one credential, spend one budget.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// A rate: requests per second, with a burst (default: the rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: Option<u32>,
}

#[derive(Debug, Default)]
struct Budget {
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    not_before: Option<Instant>,
}

/// Every budget, by key. Cheap to clone; clones share the budgets.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    inner: Arc<Mutex<HashMap<String, Budget>>>,
}

impl Budgets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `key` a rate, unless it has one already (the first caller's rate wins, so one
    /// host keeps one budget however many sources name it).
    pub fn set_rate(&self, key: &str, rate: Rate) {
        let Some(per_sec) = NonZeroU32::new(rate.per_sec) else {
            return;
        };
        let burst = rate.burst.and_then(NonZeroU32::new).unwrap_or(per_sec);
        let mut all = self.inner.lock().expect("budgets");
        let budget = all.entry(key.to_string()).or_default();
        if budget.limiter.is_none() {
            budget.limiter = Some(Arc::new(RateLimiter::direct(
                Quota::per_second(per_sec).allow_burst(burst),
            )));
        }
    }

    /// No request under `key` before `wait` from now (a later instant already set stays).
    pub fn pause(&self, key: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut all = self.inner.lock().expect("budgets");
        let budget = all.entry(key.to_string()).or_default();
        if budget.not_before.is_none_or(|t| t < until) {
            budget.not_before = Some(until);
        }
    }

    /// How long until `key` allows a request, without spending from it.
    pub fn paused_for(&self, key: &str) -> Duration {
        let all = self.inner.lock().expect("budgets");
        all.get(key)
            .and_then(|b| b.not_before)
            .map_or(Duration::ZERO, |t| {
                t.saturating_duration_since(Instant::now())
            })
    }

    /// Waits until every one of `keys` allows a request, then spends one from each; returns
    /// how long it waited in total.
    pub async fn acquire(&self, keys: &[&str]) -> Duration {
        let started = Instant::now();
        for key in keys {
            loop {
                let pause = self.paused_for(key);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                let limiter = {
                    let all = self.inner.lock().expect("budgets");
                    all.get(*key).and_then(|b| b.limiter.clone())
                };
                let Some(limiter) = limiter else { break };
                match limiter.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        tokio::time::sleep(not_until.wait_time_from(limiter.clock().now())).await
                    }
                }
            }
        }
        started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rate_makes_requests_wait_and_never_refuses() {
        let b = Budgets::new();
        b.set_rate(
            "host",
            Rate {
                per_sec: 20,
                burst: Some(1),
            },
        );
        let started = std::time::Instant::now();
        for _ in 0..4 {
            b.acquire(&["host", "unlimited"]).await;
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(120), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn a_pause_holds_every_request_of_its_key() {
        let b = Budgets::new();
        b.pause("cred", Duration::from_millis(200));
        b.pause("cred", Duration::from_millis(10)); // an earlier end does not shorten it
        assert!(b.paused_for("cred") > Duration::from_millis(100));
        assert_eq!(b.paused_for("other"), Duration::ZERO);
        let waited = b.acquire(&["other", "cred"]).await;
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert_eq!(b.paused_for("cred"), Duration::ZERO);
    }
}
