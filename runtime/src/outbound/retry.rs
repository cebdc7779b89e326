//! When to try again: a retry schedule with jitter.
//!
//! A schedule is the list of delays between attempts; the webhook default is the common
//! "immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h". Each delay is spread by ±20% so
//! that deliveries failed by one outage do not all come back in the same second; the spread
//! is a pure function of a seed (e.g. derived from the message id), so a redelivery after a
//! restart computes the same delay, and tests are deterministic. A `Retry-After` longer
//! than the scheduled delay wins, up to a cap.

use std::time::Duration;

/// The webhook delivery schedule.
pub const DEFAULT_WEBHOOK_SCHEDULE: &str = "0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h";

/// A schedule could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("retry schedule entry {index} (`{text}`): {reason}")]
    Delay {
        index: usize,
        text: String,
        reason: String,
    },
    #[error("a retry schedule needs at least one delay")]
    Empty,
    #[error("jitter must be between 0 and 1, got {0}")]
    Jitter(f64),
}

/// Delays between attempts, with jitter and a cap on `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// `delays[0]` is the wait before the first attempt, `delays[n]` the wait after the
    /// n-th failed attempt; the schedule is exhausted after `delays.len()` attempts.
    delays: Vec<Duration>,
    /// Relative spread: 0.2 means each delay lands in [0.8 d, 1.2 d].
    jitter: f64,
    /// The longest `Retry-After` honoured.
    retry_after_cap: Duration,
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Result<Self, ScheduleError> {
        if delays.is_empty() {
            return Err(ScheduleError::Empty);
        }
        Ok(Self {
            delays,
            jitter: 0.2,
            retry_after_cap: Duration::from_secs(3600),
        })
    }

    /// Reads a comma-separated list like `0s, 5s, 5m, 2h` (`immediately` is `0s`).
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .enumerate()
            .map(|(index, t)| {
                parse_delay(t).map_err(|reason| ScheduleError::Delay {
                    index,
                    text: t.to_owned(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }

    /// The webhook default, [`DEFAULT_WEBHOOK_SCHEDULE`].
    pub fn webhook_default() -> Self {
        Self::parse(DEFAULT_WEBHOOK_SCHEDULE).expect("the default schedule parses")
    }

    pub fn with_jitter(mut self, jitter: f64) -> Result<Self, ScheduleError> {
        if !(0.0..=1.0).contains(&jitter) {
            return Err(ScheduleError::Jitter(jitter));
        }
        self.jitter = jitter;
        Ok(self)
    }

    pub fn with_retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// This schedule's jitter and `Retry-After` cap over other delays (an endpoint's own
    /// schedule); `None` for no delays.
    pub fn with_delays(&self, delays: Vec<Duration>) -> Option<Self> {
        (!delays.is_empty()).then(|| Self {
            delays,
            ..self.clone()
        })
    }

    /// Attempts the schedule allows in all.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX)
    }

    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The wait before attempt `failed + 1`, after `failed` failed attempts (0 for the
    /// first), jittered by `seed`, or longer if `retry_after` asks for more (up to the cap).
    /// `None` once the schedule is exhausted.
    pub fn next_delay(
        &self,
        failed: u32,
        retry_after: Option<Duration>,
        seed: u64,
    ) -> Option<Duration> {
        let base = *self.delays.get(failed as usize)?;
        let jittered = base.mul_f64(1.0 + self.jitter * spread(seed, failed));
        let asked = retry_after.unwrap_or_default().min(self.retry_after_cap);
        Some(jittered.max(asked))
    }
}

/// A value in [-1, 1) that depends only on `seed` and `attempt`.
fn spread(seed: u64, attempt: u32) -> f64 {
    let mut rng = fastrand::Rng::with_seed(seed ^ u64::from(attempt).rotate_left(32));
    rng.f64() * 2.0 - 1.0
}

/// `0s`, `5s`, `250ms`, `5m`, `2h`, `1d` (jiff's friendly format) or `immediately`.
fn parse_delay(text: &str) -> Result<Duration, String> {
    if text.eq_ignore_ascii_case("immediately") {
        return Ok(Duration::ZERO);
    }
    let span: jiff::Span = text
        .parse()
        .map_err(|e| format!("not a duration like 5s, 5m or 2h: {e}"))?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| e.to_string())?;
    Duration::try_from(signed).map_err(|_| "a delay cannot be negative".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_webhook_default_schedule() {
        let schedule = RetrySchedule::webhook_default();
        assert_eq!(
            schedule.delays(),
            [
                S(0),
                S(5),
                S(300),
                S(1800),
                S(7200),
                S(18000),
                S(36000),
                S(36000)
            ]
        );
        assert_eq!(schedule.max_attempts(), 8);
    }

    #[test]
    fn human_delays_parse_and_bad_ones_say_which() {
        let schedule = RetrySchedule::parse("immediately, 250ms,1m, 1d").unwrap();
        assert_eq!(
            schedule.delays(),
            [S(0), Duration::from_millis(250), S(60), S(86_400)]
        );
        let err = RetrySchedule::parse("5s, 5x, 2h").unwrap_err();
        assert!(
            matches!(err, ScheduleError::Delay { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`5x`"), "{err}");
        assert!(RetrySchedule::parse("5").is_err());
        assert!(RetrySchedule::parse("-5s").is_err());
        assert_eq!(
            RetrySchedule::parse(" , ").unwrap_err(),
            ScheduleError::Empty
        );
        assert!(RetrySchedule::webhook_default().with_jitter(1.5).is_err());
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_is_deterministic() {
        let schedule = RetrySchedule::webhook_default();
        let mut below = false;
        let mut above = false;
        for seed in 0..500 {
            let d = schedule.next_delay(2, None, seed).unwrap();
            assert!(d >= S(240) && d <= S(360), "{d:?}");
            below |= d < S(300);
            above |= d > S(300);
            assert_eq!(schedule.next_delay(2, None, seed), Some(d));
        }
        assert!(below && above, "the spread goes both ways");
        assert_eq!(schedule.next_delay(0, None, 7), Some(Duration::ZERO));
        let exact = schedule.clone().with_jitter(0.0).unwrap();
        assert_eq!(exact.next_delay(1, None, 99), Some(S(5)));
    }

    #[test]
    fn retry_after_wins_when_longer_up_to_the_cap() {
        let schedule = RetrySchedule::webhook_default()
            .with_jitter(0.0)
            .unwrap()
            .with_retry_after_cap(S(600));
        assert_eq!(schedule.next_delay(1, Some(S(2)), 0), Some(S(5)));
        assert_eq!(schedule.next_delay(1, Some(S(60)), 0), Some(S(60)));
        assert_eq!(schedule.next_delay(1, Some(S(86_400)), 0), Some(S(600)));
        assert_eq!(schedule.next_delay(3, Some(S(60)), 0), Some(S(1800)));
    }

    #[test]
    fn the_schedule_runs_out() {
        let schedule = RetrySchedule::parse("0s, 1s").unwrap();
        assert!(schedule.next_delay(1, None, 0).is_some());
        assert_eq!(schedule.next_delay(2, None, 0), None);
        assert_eq!(schedule.next_delay(2, Some(S(1)), 0), None);
    }
}
