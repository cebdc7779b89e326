//! Burrow-style status of one partition of a consumer group, evaluated over a sliding window
//! of samples of its committed offset and log end.
//!
//! The evaluator is a pure function of the samples so every rule is unit-tested without a
//! broker. sluice *polls* committed offsets (OffsetFetch) instead of reading
//! `__consumer_offsets` (which managed clusters such as Confluent Cloud do not expose), so a
//! commit that repeats the same offset is invisible to it. Burrow tells STALL from STOP by
//! whether commits keep arriving; sluice tells them apart by whether a live member of the
//! group owns the partition: stuck offsets with an owner are a STALL (the consumer runs but
//! does not advance), stuck offsets without one are a STOP (nobody is committing).

use serde::Serialize;

/// Status of a partition, or of a group (the worst of its partitions).
///
/// Declared from best to worst, so `Ord` ranks severity: `OK < WARN < REWIND < STALL < STOP
/// < ERR`. STOP ranks above STALL because nobody is consuming at all; ERR is worst because
/// the monitor cannot vouch for the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Lag reached zero in the window, or lag fell at least once, or the window is not full yet.
    Ok,
    /// Offsets move but the lag never fell across the whole window.
    Warn,
    /// The committed offset went backwards (a reset, or a consumer rewinding).
    Rewind,
    /// The offset stood still for the whole window while there was lag and a live member owns
    /// the partition.
    Stall,
    /// The offset stood still for the whole window while there was lag and no member owns the
    /// partition: no commits for longer than the window spans.
    Stop,
    /// The partition cannot be evaluated: its log end is unknown, or the committed offset is
    /// beyond the log end (a recreated or truncated topic).
    Err,
}

impl Status {
    /// Every status, best first; the exporter writes one series per status and group.
    pub const ALL: [Status; 6] = [
        Status::Ok,
        Status::Warn,
        Status::Rewind,
        Status::Stall,
        Status::Stop,
        Status::Err,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Rewind => "REWIND",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
            Status::Err => "ERR",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One observation of a partition for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Wall-clock time of the observation, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The group's committed offset: the next record it will read.
    pub committed: i64,
    /// The partition's log-end offset (high watermark), `None` when it could not be read.
    pub log_end: Option<i64>,
    /// Nothing readable lies between the committed offset and the log end (only
    /// transaction markers or aborted records): as good as a zero lag.
    pub settled: bool,
}

impl Sample {
    /// Log end minus committed offset, as Kafka's own tool computes it (negative when the
    /// committed offset is beyond the log end).
    pub fn lag(&self) -> Option<i64> {
        self.log_end.map(|end| end - self.committed)
    }
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub status: Status,
    /// Whether the window held enough samples for the window rules (STALL, STOP, WARN).
    pub complete: bool,
}

/// Evaluates a partition over `samples` (oldest first; only the last `window` count).
///
/// Rules, first match wins:
/// 1. ERR: no samples, the newest log end is unknown, or the committed offset is beyond it;
/// 2. REWIND: a committed offset is lower than the one before it;
/// 3. OK: the lag is zero (or settled: only transaction markers) now, or was at some
///    sample in the window;
/// 4. OK: the window holds fewer than `window` samples (incomplete, nothing more to say);
/// 5. STALL / STOP: every committed offset in the window is the same (and the lag is not
///    zero): STALL when `owned` (a live member owns the partition), STOP otherwise;
/// 6. WARN: the lag never fell from one sample to the next;
/// 7. OK: the lag fell at least once.
pub fn evaluate(samples: &[Sample], window: usize, owned: bool) -> Evaluation {
    let window = window.max(2);
    let samples = &samples[samples.len().saturating_sub(window)..];
    let complete = samples.len() >= window;
    let status = status(samples, complete, owned);
    Evaluation { status, complete }
}

fn status(samples: &[Sample], complete: bool, owned: bool) -> Status {
    let Some(newest) = samples.last() else {
        return Status::Err;
    };
    match newest.lag() {
        None => return Status::Err,
        Some(lag) if lag < 0 => return Status::Err,
        Some(_) => {}
    }
    if samples.windows(2).any(|w| w[1].committed < w[0].committed) {
        return Status::Rewind;
    }
    if samples.iter().any(|s| s.lag() == Some(0) || s.settled) || !complete {
        return Status::Ok;
    }
    if samples.iter().all(|s| s.committed == newest.committed) {
        return if owned { Status::Stall } else { Status::Stop };
    }
    let fell = samples
        .windows(2)
        .any(|w| matches!((w[0].lag(), w[1].lag()), (Some(a), Some(b)) if b < a));
    if fell {
        Status::Ok
    } else {
        Status::Warn
    }
}

/// The status of a group: the worst of its partitions, OK when it has none.
pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Status {
    statuses.into_iter().max().unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples one second apart from (committed, log_end) pairs.
    fn w(points: &[(i64, i64)]) -> Vec<Sample> {
        points
            .iter()
            .enumerate()
            .map(|(i, &(committed, end))| Sample {
                at_ms: 1_000 * i as i64,
                committed,
                log_end: Some(end),
                settled: false,
            })
            .collect()
    }

    fn st(points: &[(i64, i64)], owned: bool) -> Status {
        evaluate(&w(points), points.len(), owned).status
    }

    #[test]
    fn caught_up_is_ok_whatever_else_happened() {
        assert_eq!(st(&[(5, 5), (5, 5), (5, 5)], false), Status::Ok);
        assert_eq!(st(&[(0, 9), (0, 9), (9, 9)], false), Status::Ok);
        assert_eq!(st(&[(0, 9), (0, 9), (9, 9)], true), Status::Ok);
    }

    #[test]
    fn lag_zero_somewhere_in_the_window_is_ok() {
        // Caught up at first, then the producer got ahead and the consumer stood still:
        // Burrow calls this OK because the lag reached zero inside the window.
        assert_eq!(st(&[(5, 5), (5, 8), (5, 12)], false), Status::Ok);
        assert_eq!(st(&[(1, 3), (3, 3), (4, 9)], true), Status::Ok);
    }

    #[test]
    fn falling_lag_is_ok_even_when_it_rose_before() {
        assert_eq!(st(&[(0, 10), (4, 12), (9, 12)], true), Status::Ok);
        assert_eq!(st(&[(0, 10), (1, 20), (15, 20)], true), Status::Ok);
        assert_eq!(st(&[(0, 10), (5, 14), (6, 20)], true), Status::Ok);
    }

    #[test]
    fn lag_that_never_falls_while_offsets_move_is_warn() {
        assert_eq!(st(&[(0, 10), (5, 15), (10, 20)], true), Status::Warn);
        assert_eq!(st(&[(0, 10), (5, 16), (10, 30)], true), Status::Warn);
        // Ownership does not matter for WARN: the offsets do move.
        assert_eq!(st(&[(0, 10), (5, 15), (10, 20)], false), Status::Warn);
    }

    #[test]
    fn stuck_offsets_with_lag_are_stall_when_owned_and_stop_when_not() {
        let stuck = [(3, 10), (3, 10), (3, 10)];
        assert_eq!(st(&stuck, true), Status::Stall);
        assert_eq!(st(&stuck, false), Status::Stop);
        // The log end may grow meanwhile; it is the offset that stands still.
        let growing = [(3, 10), (3, 11), (3, 19)];
        assert_eq!(st(&growing, true), Status::Stall);
        assert_eq!(st(&growing, false), Status::Stop);
    }

    #[test]
    fn a_lag_of_transaction_markers_only_is_ok_not_stall() {
        // An idle exactly-once group: its offset stops before the last commit marker.
        let mut idle = w(&[(3, 4), (3, 4), (3, 4)]);
        assert_eq!(evaluate(&idle, 3, true).status, Status::Stall);
        for s in &mut idle {
            s.settled = true;
        }
        assert_eq!(evaluate(&idle, 3, true).status, Status::Ok);
        assert_eq!(evaluate(&idle, 3, false).status, Status::Ok);
        // Settled once in the window, like a zero lag, is enough.
        let mut then_stuck = w(&[(3, 4), (3, 9), (3, 9)]);
        then_stuck[0].settled = true;
        assert_eq!(evaluate(&then_stuck, 3, true).status, Status::Ok);
    }

    #[test]
    fn any_backwards_offset_is_rewind_even_after_being_caught_up() {
        assert_eq!(st(&[(9, 9), (0, 9), (0, 9)], true), Status::Rewind);
        assert_eq!(st(&[(5, 9), (6, 9), (2, 9)], false), Status::Rewind);
        // In an incomplete window too: one step back is enough.
        let e = evaluate(&w(&[(5, 9), (4, 9)]), 5, true);
        assert_eq!((e.status, e.complete), (Status::Rewind, false));
    }

    #[test]
    fn unknown_log_end_or_offset_beyond_it_is_err() {
        let mut s = w(&[(1, 5), (2, 5), (3, 5)]);
        s[2].log_end = None;
        assert_eq!(evaluate(&s, 3, true).status, Status::Err);
        assert_eq!(st(&[(1, 5), (2, 5), (9, 5)], true), Status::Err);
        assert_eq!(evaluate(&[], 3, true).status, Status::Err);
        // ERR wins over REWIND.
        assert_eq!(st(&[(9, 9), (12, 9)], true), Status::Err);
        // Only the newest sample decides ERR: an old unknown log end does not.
        let mut s = w(&[(1, 5), (2, 5), (5, 5)]);
        s[0].log_end = None;
        assert_eq!(evaluate(&s, 3, true).status, Status::Ok);
    }

    #[test]
    fn incomplete_window_is_ok_and_says_so() {
        let e = evaluate(&w(&[(3, 10), (3, 10)]), 3, false);
        assert_eq!(
            e,
            Evaluation {
                status: Status::Ok,
                complete: false
            }
        );
        let e = evaluate(&w(&[(3, 10), (3, 10), (3, 10)]), 3, false);
        assert_eq!(
            e,
            Evaluation {
                status: Status::Stop,
                complete: true
            }
        );
    }

    #[test]
    fn only_the_last_window_samples_count() {
        // A rewind and a zero lag that slid out of the window no longer matter.
        let s = w(&[(9, 9), (2, 9), (3, 20), (3, 21), (3, 22)]);
        assert_eq!(evaluate(&s, 3, false).status, Status::Stop);
        assert_eq!(evaluate(&s, 5, false).status, Status::Rewind);
        // A window below two samples cannot show a trend; it is treated as two.
        let e = evaluate(&w(&[(3, 10)]), 1, false);
        assert_eq!(
            e,
            Evaluation {
                status: Status::Ok,
                complete: false
            }
        );
    }

    #[test]
    fn group_status_is_the_worst_partition() {
        assert_eq!(worst([]), Status::Ok);
        assert_eq!(worst([Status::Ok, Status::Warn]), Status::Warn);
        assert_eq!(
            worst([Status::Stall, Status::Stop, Status::Ok]),
            Status::Stop
        );
        assert_eq!(
            worst([Status::Rewind, Status::Err, Status::Stop]),
            Status::Err
        );
        let ordered: Vec<Status> = Status::ALL.to_vec();
        let mut sorted = ordered.clone();
        sorted.sort();
        assert_eq!(ordered, sorted, "ALL is listed best to worst");
    }

    /// Every window of three samples over a small domain (offsets 0..=3, log ends 0..=4,
    /// owned or not), checked against the rules as the issue states them (written over plain
    /// lag and offset lists, independently of the evaluator's code) and against promises
    /// that cut across rules.
    #[test]
    fn every_small_window_satisfies_the_rules() {
        let mut points = Vec::new();
        for c in 0..=3 {
            for e in 0..=4 {
                points.push((c, e));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for &a in &points {
            for &b in &points {
                for &c in &points {
                    for owned in [false, true] {
                        let win = [a, b, c];
                        let s = st(&win, owned);
                        seen.insert(s);
                        let lags: Vec<i64> = win.iter().map(|(o, e)| e - o).collect();
                        let offsets: Vec<i64> = win.iter().map(|(o, _)| *o).collect();
                        let back = offsets.windows(2).any(|p| p[1] < p[0]);
                        let zero = lags.contains(&0);
                        let fell = lags.windows(2).any(|p| p[1] < p[0]);
                        let stuck = offsets.iter().all(|o| *o == offsets[0]);
                        let expect = if lags[2] < 0 {
                            Status::Err
                        } else if back {
                            Status::Rewind
                        } else if zero {
                            Status::Ok
                        } else if stuck {
                            if owned {
                                Status::Stall
                            } else {
                                Status::Stop
                            }
                        } else if fell {
                            Status::Ok
                        } else {
                            Status::Warn
                        };
                        assert_eq!(s, expect, "window {win:?} owned={owned}");
                        // Cross-rule promises.
                        if lags[2] == 0 {
                            assert!(matches!(s, Status::Ok | Status::Rewind), "{win:?}");
                        }
                        if matches!(s, Status::Stall | Status::Stop) {
                            assert!(lags[2] > 0 && !zero && stuck, "{win:?}");
                        }
                        if s == Status::Warn {
                            assert!(!fell && !stuck && !zero, "{win:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(
            seen.len(),
            Status::ALL.len(),
            "every status is reachable: {seen:?}"
        );
    }
}
