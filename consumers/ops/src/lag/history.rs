//! Time lag: how long ago the log end stood where a group's committed offset stands now.
//!
//! Offsets say how many records a group is behind, not how late it is. Each partition keeps a
//! bounded history of (log-end offset, time) points; the time lag of a committed offset is
//! "now" minus the moment the log end was at that offset, read off the history by linear
//! interpolation (as kafka-lag-exporter does). Flat stretches keep only their first and last
//! point, so an idle partition does not push useful history out.

use std::collections::VecDeque;

use serde::Serialize;

/// How a time lag was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimate {
    /// The committed offset is at the newest log end: zero.
    Exact,
    /// Between two points of the history.
    Interpolated,
    /// Older than the history: extended from the history's average rate.
    Extrapolated,
    /// Older than a history whose log end never moved: at least this much.
    LowerBound,
}

/// A time lag in seconds and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimeLag {
    pub seconds: f64,
    pub estimate: Estimate,
}

/// The (log-end offset, time) history of one partition, at most `capacity` points.
#[derive(Debug, Clone)]
pub struct LogEndHistory {
    /// (offset, at_ms), oldest first; offsets never decrease.
    points: VecDeque<(i64, i64)>,
    capacity: usize,
}

/// Points kept per partition by default: with a 30 s interval and a partition that moves on
/// every sample, half an hour of history; older offsets are extrapolated.
pub const DEFAULT_HISTORY_POINTS: usize = 64;

impl LogEndHistory {
    pub fn new(capacity: usize) -> Self {
        Self {
            points: VecDeque::new(),
            capacity: capacity.max(2),
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Adds an observation. A log end lower than the last one (the topic was deleted and
    /// recreated, or truncated) starts the history afresh.
    pub fn record(&mut self, offset: i64, at_ms: i64) {
        if let Some(&(last, last_at)) = self.points.back() {
            if offset < last || at_ms < last_at {
                self.points.clear();
            } else if offset == last {
                let flat_run =
                    self.points.len() >= 2 && self.points[self.points.len() - 2].0 == last;
                if flat_run {
                    // Keep the first and the last point of a flat stretch only.
                    *self.points.back_mut().expect("non-empty") = (offset, at_ms);
                    return;
                }
            }
        }
        self.points.push_back((offset, at_ms));
        while self.points.len() > self.capacity {
            self.points.pop_front();
        }
    }

    /// The time lag of `committed` at `now_ms`, `None` without history.
    pub fn time_lag(&self, committed: i64, now_ms: i64) -> Option<TimeLag> {
        let &(newest, _) = self.points.back()?;
        let lag = |at_ms: f64, estimate| TimeLag {
            seconds: ((now_ms as f64 - at_ms) / 1000.0).max(0.0),
            estimate,
        };
        if committed >= newest {
            return Some(TimeLag {
                seconds: 0.0,
                estimate: Estimate::Exact,
            });
        }
        let &(oldest, oldest_at) = self.points.front().expect("non-empty");
        if committed < oldest {
            let &(_, newest_at) = self.points.back().expect("non-empty");
            if newest > oldest && newest_at > oldest_at {
                let per_ms = (newest - oldest) as f64 / (newest_at - oldest_at) as f64;
                let at = oldest_at as f64 - (oldest - committed) as f64 / per_ms;
                return Some(lag(at, Estimate::Extrapolated));
            }
            return Some(lag(oldest_at as f64, Estimate::LowerBound));
        }
        // The last point at or below `committed`; the one after it is above (committed < newest).
        let i = self.points.partition_point(|&(o, _)| o <= committed) - 1;
        let (o1, t1) = self.points[i];
        let (o2, t2) = self.points[i + 1];
        if o1 == committed {
            // The log end was still here at t1 (the last point of a flat stretch).
            return Some(lag(t1 as f64, Estimate::Interpolated));
        }
        let at = t1 as f64 + (committed - o1) as f64 / (o2 - o1) as f64 * (t2 - t1) as f64;
        Some(lag(at, Estimate::Interpolated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(points: &[(i64, i64)]) -> LogEndHistory {
        let mut h = LogEndHistory::new(DEFAULT_HISTORY_POINTS);
        for &(o, t) in points {
            h.record(o, t);
        }
        h
    }

    fn at(h: &LogEndHistory, committed: i64, now_ms: i64) -> (f64, Estimate) {
        let t = h.time_lag(committed, now_ms).unwrap();
        (t.seconds, t.estimate)
    }

    #[test]
    fn no_history_no_estimate() {
        assert_eq!(history(&[]).time_lag(5, 1_000), None);
    }

    #[test]
    fn caught_up_is_exactly_zero() {
        let h = history(&[(10, 0), (20, 10_000)]);
        assert_eq!(at(&h, 20, 50_000), (0.0, Estimate::Exact));
        assert_eq!(at(&h, 25, 50_000), (0.0, Estimate::Exact));
    }

    #[test]
    fn interpolates_between_points() {
        // 100 records between t=10s and t=20s; offset 150 was the log end at t=15s.
        let h = history(&[(100, 10_000), (200, 20_000), (300, 30_000)]);
        assert_eq!(at(&h, 150, 40_000), (25.0, Estimate::Interpolated));
        assert_eq!(at(&h, 200, 40_000), (20.0, Estimate::Interpolated));
        assert_eq!(at(&h, 100, 40_000), (30.0, Estimate::Interpolated));
        assert_eq!(at(&h, 275, 40_000), (12.5, Estimate::Interpolated));
    }

    #[test]
    fn a_flat_stretch_keeps_its_first_and_last_point() {
        let h = history(&[(10, 0), (10, 1_000), (10, 2_000), (10, 3_000), (20, 4_000)]);
        assert_eq!(h.len(), 3);
        // The log end was still 10 at t=3s, so a consumer at 10 is 7 s late at t=10s...
        assert_eq!(at(&h, 10, 10_000), (7.0, Estimate::Interpolated));
        // ...and offset 15 was reached half way between t=3s and t=4s.
        assert_eq!(at(&h, 15, 10_000), (6.5, Estimate::Interpolated));
    }

    #[test]
    fn older_than_history_is_extrapolated_or_a_lower_bound() {
        // 10 records per second: offset 50 was the log end 5 s before the oldest point.
        let h = history(&[(100, 10_000), (200, 20_000)]);
        assert_eq!(at(&h, 50, 20_000), (15.0, Estimate::Extrapolated));
        // An idle partition says only "at least since the oldest point".
        let idle = history(&[(100, 10_000), (100, 20_000)]);
        assert_eq!(at(&idle, 50, 30_000), (20.0, Estimate::LowerBound));
        let single = history(&[(100, 10_000)]);
        assert_eq!(at(&single, 50, 12_000), (2.0, Estimate::LowerBound));
    }

    #[test]
    fn capacity_bounds_the_history_and_a_lower_log_end_restarts_it() {
        let mut h = LogEndHistory::new(4);
        for i in 0..100 {
            h.record(i * 10, i * 1_000);
        }
        assert_eq!(h.len(), 4);
        assert_eq!(at(&h, 960, 99_000), (3.0, Estimate::Interpolated));
        h.record(5, 100_000);
        assert_eq!(h.len(), 1);
        assert_eq!(at(&h, 5, 100_000), (0.0, Estimate::Exact));
    }

    #[test]
    fn never_negative() {
        let h = history(&[(0, 10_000), (100, 20_000)]);
        // "now" before the point (clock skew between samples and evaluation) clamps to zero.
        assert_eq!(at(&h, 50, 0), (0.0, Estimate::Interpolated));
    }
}
