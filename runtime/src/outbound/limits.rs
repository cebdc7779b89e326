//! Per-endpoint limits: how many attempts may be in flight at once, and how fast they may
//! start.
//!
//! Each endpoint has its own semaphore and its own `governor` GCRA limiter, so a slow or
//! hanging endpoint exhausts only its own permits. Both are small (a counter or two), which
//! keeps 10,000 endpoints cheap.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The limits of one endpoint.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Attempts in flight at once.
    pub max_in_flight: u32,
    /// Attempts started per second, if limited.
    pub rate_per_sec: Option<u32>,
    /// Attempts that may start at once after a quiet spell (default: the rate).
    pub burst: Option<u32>,
    /// Longest an attempt waits for a free slot or for the rate to allow it.
    pub max_wait: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            rate_per_sec: None,
            burst: None,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// Why the limits did not let an attempt start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitRefusal {
    /// Every in-flight slot stayed taken for `max_wait`.
    #[error("{max_in_flight} attempts already in flight")]
    Busy { max_in_flight: u32 },
    /// The rate allows the next attempt only after `retry_in`, later than `max_wait`.
    #[error("rate limited; next attempt in {retry_in:?}")]
    RateLimited { retry_in: Duration },
}

/// An in-flight slot, released when dropped, and how long getting it took.
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    waits: Waits,
}

impl InFlight {
    /// How long the attempt waited for the limits before it could start.
    pub fn waits(&self) -> Waits {
        self.waits
    }
}

/// How long an admitted attempt waited for each of its endpoint's limits: what operators
/// see as rate-limit waits, when an upstream's declared rate is the bottleneck.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waits {
    /// For an in-flight slot (every slot was taken).
    pub busy: Duration,
    /// For the rate to allow a start.
    pub rate_limited: Duration,
}

/// The limits of one endpoint, live.
#[derive(Debug)]
pub struct EndpointLimits {
    in_flight: Arc<Semaphore>,
    max_in_flight: u32,
    rate: Option<DefaultDirectRateLimiter>,
    max_wait: Duration,
}

impl EndpointLimits {
    pub fn new(config: &LimitsConfig) -> Self {
        let max_in_flight = config.max_in_flight.max(1);
        let rate = config.rate_per_sec.and_then(NonZeroU32::new).map(|rate| {
            let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            rate,
            max_wait: config.max_wait,
        }
    }

    /// Waits (at most `max_wait`) for an in-flight slot, then for the rate to allow a start.
    pub async fn acquire(&self) -> Result<InFlight, LimitRefusal> {
        let start = Instant::now();
        let deadline = start + self.max_wait;
        let (permit, busy) = match Arc::clone(&self.in_flight).try_acquire_owned() {
            Ok(permit) => (permit, Duration::ZERO),
            Err(_) => {
                let permit =
                    tokio::time::timeout_at(deadline, Arc::clone(&self.in_flight).acquire_owned())
                        .await
                        .map_err(|_| LimitRefusal::Busy {
                            max_in_flight: self.max_in_flight,
                        })?
                        .expect("the semaphore is never closed");
                (permit, start.elapsed())
            }
        };
        let rate_limited = self.wait_for_rate(deadline).await?;
        Ok(InFlight {
            _permit: permit,
            waits: Waits { busy, rate_limited },
        })
    }

    /// Waits until the rate allows a start; how long that took (zero when it allowed one
    /// at once).
    async fn wait_for_rate(&self, deadline: Instant) -> Result<Duration, LimitRefusal> {
        let Some(rate) = &self.rate else {
            return Ok(Duration::ZERO);
        };
        let start = Instant::now();
        let mut waited = false;
        loop {
            let Err(not_until) = rate.check() else {
                return Ok(if waited {
                    start.elapsed()
                } else {
                    Duration::ZERO
                });
            };
            let retry_in = not_until.wait_time_from(rate.clock().now());
            if Instant::now() + retry_in > deadline {
                return Err(LimitRefusal::RateLimited { retry_in });
            }
            waited = true;
            tokio::time::sleep(retry_in).await;
        }
    }

    /// Attempts in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight as usize - self.in_flight.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_flight_slots_are_capped_and_freed_on_drop() {
        let limits = EndpointLimits::new(&LimitsConfig {
            max_in_flight: 2,
            max_wait: Duration::from_millis(50),
            ..LimitsConfig::default()
        });
        let a = limits.acquire().await.unwrap();
        let _b = limits.acquire().await.unwrap();
        assert_eq!(limits.in_flight(), 2);
        assert_eq!(
            limits.acquire().await.unwrap_err(),
            LimitRefusal::Busy { max_in_flight: 2 }
        );
        drop(a);
        assert!(limits.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn a_rate_beyond_the_wait_is_refused_with_when_to_come_back() {
        let limits = EndpointLimits::new(&LimitsConfig {
            rate_per_sec: Some(1),
            burst: Some(2),
            max_wait: Duration::ZERO,
            ..LimitsConfig::default()
        });
        let _a = limits.acquire().await.unwrap();
        let _b = limits.acquire().await.unwrap();
        match limits.acquire().await.unwrap_err() {
            LimitRefusal::RateLimited { retry_in } => {
                assert!(retry_in > Duration::ZERO && retry_in <= Duration::from_secs(1));
            }
            other => panic!("expected a rate refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_short_rate_wait_is_waited_out() {
        let limits = EndpointLimits::new(&LimitsConfig {
            rate_per_sec: Some(20),
            burst: Some(1),
            max_wait: Duration::from_secs(2),
            ..LimitsConfig::default()
        });
        let started = std::time::Instant::now();
        let mut waited = Duration::ZERO;
        for _ in 0..3 {
            let slot = limits.acquire().await.unwrap();
            assert_eq!(slot.waits().busy, Duration::ZERO);
            waited += slot.waits().rate_limited;
        }
        // Two waits of ~50 ms each: the limiter made it wait, and not for long; each
        // slot says how long it waited for the rate.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(80), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(waited >= Duration::from_millis(80), "{waited:?}");
        assert!(waited <= took, "{waited:?} {took:?}");
    }
}
