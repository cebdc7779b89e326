//! Per-source token bucket (`limits.rate_per_sec`, `limits.burst`), checked before the body
//! is read or verified so a flood is turned away at the cheapest point.
//!
//! The bucket holds up to `burst` tokens and refills at `rate_per_sec`; each request takes
//! one. It lives in one gateway instance: N instances admit up to N times the rate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a request is told about the bucket, for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Bucket capacity (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Whole tokens left after this request (`X-RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the bucket is full again (`X-RateLimit-Reset`), rounded up.
    pub reset_secs: u64,
    /// Seconds until one token is available (`Retry-After`), rounded up; 0 when allowed.
    pub retry_after_secs: u64,
}

#[derive(Debug)]
pub struct TokenBucket {
    rate_per_sec: f64,
    capacity: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `burst` defaults to `rate_per_sec`; both are at least 1.
    pub fn new(rate_per_sec: u32, burst: Option<u32>, now: Instant) -> Self {
        let rate = f64::from(rate_per_sec.max(1));
        let capacity = f64::from(burst.unwrap_or(rate_per_sec).max(1));
        Self {
            rate_per_sec: rate,
            capacity,
            state: Mutex::new(State {
                tokens: capacity,
                last: now,
            }),
        }
    }

    /// Takes one token if there is one.
    pub fn try_acquire(&self, now: Instant) -> Decision {
        let mut s = self.state.lock().expect("token bucket lock");
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate_per_sec).min(self.capacity);
        s.last = s.last.max(now);
        let allowed = s.tokens >= 1.0;
        if allowed {
            s.tokens -= 1.0;
        }
        let secs_for = |tokens: f64| {
            Duration::from_secs_f64((tokens.max(0.0)) / self.rate_per_sec)
                .as_secs_f64()
                .ceil() as u64
        };
        Decision {
            allowed,
            limit: self.capacity as u32,
            remaining: s.tokens.floor() as u32,
            reset_secs: secs_for(self.capacity - s.tokens),
            retry_after_secs: if allowed {
                0
            } else {
                secs_for(1.0 - s.tokens).max(1)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_at_the_rate() {
        let t0 = Instant::now();
        let b = TokenBucket::new(2, Some(3), t0);
        for left in [2, 1, 0] {
            let d = b.try_acquire(t0);
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (3, left));
        }
        let d = b.try_acquire(t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_secs, 1);
        assert_eq!(d.reset_secs, 2, "3 tokens at 2/s");
        // Half a second later one token has come back.
        let d = b.try_acquire(t0 + Duration::from_millis(500));
        assert!(d.allowed);
        assert!(!b.try_acquire(t0 + Duration::from_millis(500)).allowed);
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        let d = b.try_acquire(later);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn burst_defaults_to_the_rate_and_slow_rates_round_retry_up() {
        let t0 = Instant::now();
        let b = TokenBucket::new(1, None, t0);
        assert!(b.try_acquire(t0).allowed);
        let d = b.try_acquire(t0 + Duration::from_millis(100));
        assert!(!d.allowed);
        assert_eq!(d.limit, 1);
        assert_eq!(d.retry_after_secs, 1);
        let slow = TokenBucket::new(1, Some(1), t0);
        assert!(slow.try_acquire(t0).allowed);
        assert!(slow.try_acquire(t0 + Duration::from_secs(1)).allowed);
    }

    #[test]
    fn a_clock_going_backwards_does_not_panic_or_mint_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let b = TokenBucket::new(1, Some(1), t0);
        assert!(b.try_acquire(t0).allowed);
        assert!(!b.try_acquire(t0 - Duration::from_secs(5)).allowed);
        assert!(!b.try_acquire(t0 + Duration::from_millis(500)).allowed);
    }
}
