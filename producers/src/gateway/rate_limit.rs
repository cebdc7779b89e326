//! Rate limits the gateway applies, on `governor`'s GCRA limiters:
//!
//! - [`RateBucket`]: one budget (a webhook source's `limits.rate_per_sec` / `limits.burst`, or
//!   a publish token's `rate_per_sec` / `burst`). It holds up to `burst` requests and refills
//!   at `rate_per_sec`. A source's bucket is charged only by requests whose signature
//!   verified, so traffic that cannot sign cannot spend a real sender's budget; a token's
//!   bucket only by requests that presented the token.
//! - [`ClientFailures`]: a budget of verification failures (bad or missing signatures, bad
//!   bearer tokens) per client address. A client over it is refused with 429 before its body
//!   is read, until the budget refills. Addresses that succeed are never charged.
//!
//! Both live in one gateway instance: N instances admit up to N times the rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

/// What a request is told about a bucket, for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Bucket capacity (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Whole requests left after this one (`X-RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the bucket is full again (`X-RateLimit-Reset`), rounded up.
    pub reset_secs: u64,
    /// Seconds until one request is allowed (`Retry-After`), rounded up; 0 when allowed.
    pub retry_after_secs: u64,
}

/// The quota `rate_per_sec` with `burst` (default: the rate); both at least 1.
fn quota(rate_per_sec: u32, burst: Option<u32>) -> Quota {
    let rate = rate_per_sec.max(1);
    let burst = NonZeroU32::new(burst.unwrap_or(rate).max(1)).expect("at least 1");
    Quota::with_period(Duration::from_secs_f64(1.0 / f64::from(rate)))
        .expect("a positive period")
        .allow_burst(burst)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// One budget of requests. `governor` gives the state after each decision
/// (`StateInformationMiddleware`), which is what the `X-RateLimit-*` headers report.
pub struct RateBucket<C: Clock = DefaultClock> {
    limiter: Direct<C>,
    quota: Quota,
}

impl std::fmt::Debug for RateBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateBucket")
            .field("burst", &self.quota.burst_size())
            .field("interval", &self.quota.replenish_interval())
            .finish()
    }
}

impl RateBucket {
    /// A full bucket on the real clock. `burst` defaults to `rate_per_sec`.
    pub fn new(rate_per_sec: u32, burst: Option<u32>) -> Self {
        Self::with_clock(rate_per_sec, burst, DefaultClock::default())
    }
}

impl<C: Clock> RateBucket<C> {
    pub fn with_clock(rate_per_sec: u32, burst: Option<u32>, clock: C) -> Self {
        let quota = quota(rate_per_sec, burst);
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock)
                .with_middleware::<StateInformationMiddleware>(),
            quota,
        }
    }

    /// Spends one request if the budget has one.
    pub fn try_acquire(&self) -> Decision {
        let limit = self.quota.burst_size().get();
        let interval = self.quota.replenish_interval();
        match self.limiter.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_secs: ceil_secs(interval * (limit - remaining)),
                    retry_after_secs: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_secs: ceil_secs(wait + interval * (limit - 1)),
                    retry_after_secs: ceil_secs(wait).max(1),
                }
            }
        }
    }
}

/// Most client addresses tracked before an early prune; pruning forgets addresses whose
/// budget is full again, so only addresses failing right now stay.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// A budget of verification failures per client address (see the module docs).
pub struct ClientFailures<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    /// Clients whose last failure was refused, until their budget has room again. `governor`
    /// cannot ask "is there room?" without spending, and a request must be refused before its
    /// body is read, when it is not yet known to fail.
    blocked: Mutex<HashMap<IpAddr, C::Instant>>,
}

impl std::fmt::Debug for ClientFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientFailures")
            .field("tracked", &self.limiter.len())
            .finish()
    }
}

impl ClientFailures {
    /// `per_minute` failures per client address after `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self::with_clock(per_minute, burst, DefaultClock::default())
    }
}

impl<C: Clock> ClientFailures<C> {
    pub fn with_clock(per_minute: u32, burst: u32, clock: C) -> Self {
        let per_minute = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Self {
            limiter: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(retry after, in whole seconds)` while `client` is over its failure budget.
    pub fn refused(&self, client: IpAddr) -> Option<u64> {
        let key = client_key(client);
        let now = self.limiter.clock().now();
        let blocked = self.blocked.lock().expect("client failures lock");
        let until = *blocked.get(&key)?;
        (until > now).then(|| ceil_secs(until.duration_since(now).into()).max(1))
    }

    /// Charges one failure to `client`. `Some(retry after)` when that was over the budget;
    /// the client is then refused by [`refused`](Self::refused) until the budget has room.
    pub fn charge(&self, client: IpAddr) -> Option<u64> {
        let key = client_key(client);
        if self.limiter.len() > MAX_TRACKED_CLIENTS {
            self.prune();
        }
        let not_until: NotUntil<C::Instant> = self.limiter.check_key(&key).err()?;
        let now = self.limiter.clock().now();
        let until = not_until.earliest_possible();
        self.blocked
            .lock()
            .expect("client failures lock")
            .insert(key, until);
        Some(ceil_secs(not_until.wait_time_from(now)).max(1))
    }

    /// Forgets clients whose budget is full again and blocks that have ended; run
    /// periodically so memory follows the number of clients failing now.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = self.limiter.clock().now();
        self.blocked
            .lock()
            .expect("client failures lock")
            .retain(|_, until| *until > now);
    }

    /// Client addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The key a client's failures are counted under: its IPv4 address, or its IPv6 /64 (one
/// host usually holds a whole /64, so a per-address key would be trivially sidestepped).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn burst_then_refill_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let b = RateBucket::with_clock(2, Some(3), clock.clone());
        for left in [2, 1, 0] {
            let d = b.try_acquire();
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (3, left));
        }
        let d = b.try_acquire();
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_secs, 1);
        assert_eq!(d.reset_secs, 2, "3 requests at 2/s");
        // Half a second later one request has come back.
        clock.advance(Duration::from_millis(500));
        assert!(b.try_acquire().allowed);
        assert!(!b.try_acquire().allowed);
        // Refill never exceeds the burst.
        clock.advance(Duration::from_secs(60));
        let d = b.try_acquire();
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset_secs, 1, "one request back at 2/s");
    }

    #[test]
    fn burst_defaults_to_the_rate_and_slow_rates_round_retry_up() {
        let clock = FakeRelativeClock::default();
        let b = RateBucket::with_clock(1, None, clock.clone());
        assert!(b.try_acquire().allowed);
        clock.advance(Duration::from_millis(100));
        let d = b.try_acquire();
        assert!(!d.allowed);
        assert_eq!(d.limit, 1);
        assert_eq!(d.retry_after_secs, 1);
        clock.advance(Duration::from_millis(900));
        assert!(b.try_acquire().allowed);
    }

    #[test]
    fn failures_are_budgeted_per_client_and_refusal_lasts_until_room() {
        let clock = FakeRelativeClock::default();
        let f = ClientFailures::with_clock(60, 3, clock.clone());
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(f.refused(a), None);
            assert_eq!(f.charge(a), None);
        }
        assert_eq!(f.charge(a), Some(1), "the fourth failure is over the burst");
        assert_eq!(f.refused(a), Some(1));
        assert_eq!(f.refused(b), None, "another client is unaffected");
        assert_eq!(f.charge(b), None);
        // One failure a second comes back at 60/min.
        clock.advance(Duration::from_secs(1));
        assert_eq!(f.refused(a), None);
        assert_eq!(f.charge(a), None);
        assert_eq!(f.charge(a), Some(1));
    }

    #[test]
    fn pruning_forgets_clients_whose_budget_is_full_again() {
        let clock = FakeRelativeClock::default();
        let f = ClientFailures::with_clock(60, 2, clock.clone());
        for i in 0..50u8 {
            f.charge(IpAddr::from([198, 51, 100, i]));
        }
        let a: IpAddr = "198.51.100.200".parse().unwrap();
        f.charge(a);
        f.charge(a);
        f.charge(a);
        assert_eq!(f.tracked(), 51);
        clock.advance(Duration::from_secs(5));
        f.prune();
        assert_eq!(f.tracked(), 0, "every budget refilled within 5 s");
        assert!(f.blocked.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
