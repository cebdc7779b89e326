//! A per-endpoint circuit breaker.
//!
//! Closed, it lets every attempt through and opens on `consecutive_failures` failures in a
//! row, or when at least `min_requests` attempts in the last `window` failed at
//! `failure_rate` or more. Open, it refuses attempts for `cool_down`. Then it is half-open:
//! up to `half_open_probes` attempts at a time go through as probes; `close_after`
//! successful probes close it, one failed probe opens it again.
//!
//! Written here rather than taken from `failsafe`: that crate's half-open state admits every
//! call and closes on the first success, has no cap on probes, exposes no state to read
//! (only callbacks), and mocks time through a process-wide clock. This one takes an injected
//! [`Clock`], so its tests are deterministic and sleep-free.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A source of monotonic time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When a breaker opens and closes.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// Share of failed attempts in the window (0.0..=1.0) that opens the breaker...
    pub failure_rate: f64,
    /// ...counted over this much recent time...
    pub window: Duration,
    /// ...once the window holds at least this many attempts.
    pub min_requests: u32,
    /// How long it stays open before probing.
    pub cool_down: Duration,
    /// Probes allowed at the same time while half-open.
    pub half_open_probes: u32,
    /// Successful probes that close it.
    pub close_after: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_requests: 20,
            cool_down: Duration::from_secs(30),
            half_open_probes: 1,
            close_after: 2,
        }
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, for the caller to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// The breaker refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; next probe in {retry_in:?}")]
pub struct BreakerOpen {
    /// When a probe may be tried (zero while half-open probes are all taken).
    pub retry_in: Duration,
}

const BUCKETS: usize = 10;

/// Attempts and failures over the last `window`, in `BUCKETS` slices of time.
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    slice: u64,
    total: u32,
    failures: u32,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    consecutive_failures: u32,
    buckets: [Bucket; BUCKETS],
}

/// A per-endpoint circuit breaker. Share it behind an `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    epoch: Instant,
    inner: Mutex<Inner>,
}

/// Leave to make one attempt. Record its outcome with [`BreakerPermit::record`]; dropped
/// unrecorded (the attempt was cancelled) it frees its probe slot and counts for nothing.
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    recorded: bool,
}

impl BreakerPermit {
    /// Whether this attempt is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records the attempt's outcome; returns the state change it caused, if any.
    pub fn record(mut self, success: bool) -> Option<Transition> {
        self.recorded = true;
        self.breaker.on_outcome(self.probe, Some(success))
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.on_outcome(self.probe, None);
        }
    }
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let epoch = clock.now();
        Self {
            config,
            clock,
            epoch,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                consecutive_failures: 0,
                buckets: [Bucket::default(); BUCKETS],
            }),
        }
    }

    /// The current state (an open breaker past its cool-down reads as half-open).
    pub fn state(&self) -> BreakerState {
        let now = self.clock.now();
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Refuses fast while open, without taking a probe slot (checked again, for real, by
    /// [`CircuitBreaker::try_acquire`]).
    pub fn check(&self) -> Result<(), BreakerOpen> {
        let now = self.clock.now();
        match self.lock().phase {
            Phase::Open { until } if now < until => Err(BreakerOpen {
                retry_in: until - now,
            }),
            _ => Ok(()),
        }
    }

    /// Asks to make an attempt.
    pub fn try_acquire(
        self: &Arc<Self>,
    ) -> Result<(BreakerPermit, Option<Transition>), BreakerOpen> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut transition = None;
        if let Phase::Open { until } = inner.phase {
            if now < until {
                return Err(BreakerOpen {
                    retry_in: until - now,
                });
            }
            inner.phase = Phase::HalfOpen {
                in_flight: 0,
                successes: 0,
            };
            transition = Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
            });
        }
        let probe = match &mut inner.phase {
            Phase::HalfOpen { in_flight, .. } => {
                if *in_flight >= self.config.half_open_probes.max(1) {
                    return Err(BreakerOpen {
                        retry_in: Duration::ZERO,
                    });
                }
                *in_flight += 1;
                true
            }
            _ => false,
        };
        let permit = BreakerPermit {
            breaker: Arc::clone(self),
            probe,
            recorded: false,
        };
        Ok((permit, transition))
    }

    /// `success` is `None` for an attempt that was abandoned.
    fn on_outcome(&self, probe: bool, success: Option<bool>) -> Option<Transition> {
        let now = self.clock.now();
        let mut inner = self.lock();
        if probe {
            return self.on_probe(&mut inner, now, success);
        }
        let success = success?;
        if !matches!(inner.phase, Phase::Closed) {
            // A late answer from before the breaker opened: only probes decide now.
            return None;
        }
        self.count(&mut inner, now, success);
        if success {
            inner.consecutive_failures = 0;
            return None;
        }
        inner.consecutive_failures += 1;
        if inner.consecutive_failures >= self.config.consecutive_failures
            || self.rate_exceeded(&inner, now)
        {
            return Some(self.open(&mut inner, now, BreakerState::Closed));
        }
        None
    }

    fn on_probe(
        &self,
        inner: &mut Inner,
        now: Instant,
        success: Option<bool>,
    ) -> Option<Transition> {
        let Phase::HalfOpen {
            in_flight,
            successes,
        } = &mut inner.phase
        else {
            return None;
        };
        *in_flight = in_flight.saturating_sub(1);
        match success {
            None => None,
            Some(false) => Some(self.open(inner, now, BreakerState::HalfOpen)),
            Some(true) => {
                *successes += 1;
                if *successes < self.config.close_after {
                    return None;
                }
                inner.phase = Phase::Closed;
                inner.consecutive_failures = 0;
                inner.buckets = [Bucket::default(); BUCKETS];
                Some(Transition {
                    from: BreakerState::HalfOpen,
                    to: BreakerState::Closed,
                })
            }
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant, from: BreakerState) -> Transition {
        inner.phase = Phase::Open {
            until: now + self.config.cool_down,
        };
        Transition {
            from,
            to: BreakerState::Open,
        }
    }

    fn slice_of(&self, now: Instant) -> u64 {
        let width = (self.config.window.as_nanos() / BUCKETS as u128).max(1);
        (now.duration_since(self.epoch).as_nanos() / width) as u64
    }

    fn count(&self, inner: &mut Inner, now: Instant, success: bool) {
        let slice = self.slice_of(now);
        let bucket = &mut inner.buckets[(slice % BUCKETS as u64) as usize];
        if bucket.slice != slice {
            *bucket = Bucket {
                slice,
                ..Bucket::default()
            };
        }
        bucket.total += 1;
        bucket.failures += u32::from(!success);
    }

    fn rate_exceeded(&self, inner: &Inner, now: Instant) -> bool {
        let current = self.slice_of(now);
        let (total, failures) = inner
            .buckets
            .iter()
            .filter(|b| b.total > 0 && current - b.slice < BUCKETS as u64)
            .fold((0u32, 0u32), |(t, f), b| (t + b.total, f + b.failures));
        total >= self.config.min_requests.max(1)
            && f64::from(failures) >= self.config.failure_rate * f64::from(total)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is a few counters, valid after any panic; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> (Arc<CircuitBreaker>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (Arc::new(CircuitBreaker::new(config, clock.clone())), clock)
    }

    fn run(b: &Arc<CircuitBreaker>, success: bool) -> Option<Transition> {
        let (permit, _) = b.try_acquire().expect("admitted");
        permit.record(success)
    }

    fn consecutive_only() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            min_requests: 1000,
            cool_down: Duration::from_secs(10),
            half_open_probes: 1,
            close_after: 2,
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let (b, _) = breaker(consecutive_only());
        assert_eq!(run(&b, false), None);
        assert_eq!(run(&b, false), None);
        assert_eq!(run(&b, true), None);
        assert_eq!(run(&b, false), None);
        assert_eq!(run(&b, false), None);
        assert_eq!(
            run(&b, false),
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.check().unwrap_err().retry_in, Duration::from_secs(10));
        let refused = b.try_acquire().unwrap_err();
        assert_eq!(refused.retry_in, Duration::from_secs(10));
    }

    fn rate_only() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 100,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_on_failure_rate_over_the_window_once_enough_requests() {
        let (b, _) = breaker(rate_only());
        // Alternating: 50% failures, but below min_requests until the 10th.
        for i in 0..9 {
            assert_eq!(run(&b, i % 2 == 0), None, "attempt {i}");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            run(&b, false).map(|t| t.to),
            Some(BreakerState::Open),
            "5 of 10 failed"
        );
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let (b, clock) = breaker(rate_only());
        for _ in 0..6 {
            run(&b, false);
        }
        clock.advance(Duration::from_secs(11));
        // 4 of the 10 attempts in the window failed (10 of 16 counting the old ones).
        for success in [
            true, true, true, true, true, true, false, false, false, false,
        ] {
            assert_eq!(run(&b, success), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_limited_probes_and_closes_after_enough_successes() {
        let (b, clock) = breaker(BreakerConfig {
            half_open_probes: 2,
            ..consecutive_only()
        });
        for _ in 0..3 {
            run(&b, false);
        }
        clock.advance(Duration::from_secs(9));
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(1)
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);

        let (p1, t) = b.try_acquire().unwrap();
        assert_eq!(
            t,
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen
            })
        );
        let (p2, t) = b.try_acquire().unwrap();
        assert_eq!(t, None);
        assert!(p1.is_probe() && p2.is_probe());
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::ZERO,
            "a third probe waits"
        );
        assert_eq!(p1.record(true), None);
        assert_eq!(
            p2.record(true),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed
            })
        );
        assert_eq!(b.state(), BreakerState::Closed);
        // Closed again with a clean slate: two failures do not open it.
        run(&b, false);
        run(&b, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_cool_down() {
        let (b, clock) = breaker(consecutive_only());
        for _ in 0..3 {
            run(&b, false);
        }
        clock.advance(Duration::from_secs(10));
        assert_eq!(run(&b, true), None, "first of two successes");
        assert_eq!(
            run(&b, false),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open
            })
        );
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot_and_late_answers_are_ignored() {
        let (b, clock) = breaker(consecutive_only());
        let (late, _) = b.try_acquire().unwrap();
        for _ in 0..3 {
            run(&b, false);
        }
        // Started while closed, answered while open: it does not close or re-open anything.
        assert_eq!(late.record(true), None);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(10));
        let (probe, _) = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        drop(probe);
        let (probe, _) = b.try_acquire().expect("the slot was freed");
        assert_eq!(probe.record(true), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn labels() {
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
        assert_eq!(BreakerState::Open.gauge_value(), 2);
    }
}
