//! Rate-limit reset headers: when an API says its budget is spent (`X-RateLimit-Remaining:
//! 0`, or the IETF draft's `RateLimit-Remaining: 0`), how long until it refills.
//!
//! `X-RateLimit-Reset` is, by convention, either epoch seconds (GitHub, Twitter) or seconds
//! from now (a small number); `RateLimit-Reset` is always seconds from now. Both come from
//! the other side, so anything unreadable is ignored and every wait is capped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// Header names, lower case, for [`ClientConfig::keep_headers`](super::ClientConfig).
pub const HEADERS: [&str; 4] = [
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-remaining",
    "ratelimit-reset",
];

/// Values at or above this are epoch seconds, below it seconds from now (2001-09-09).
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// How long to wait before the next request when the response says its budget is spent;
/// `None` while some remains (or when it does not say).
pub fn reset_wait(headers: &HeaderMap, now: SystemTime, cap: Duration) -> Option<Duration> {
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let (remaining, reset) = match number("x-ratelimit-remaining") {
        Some(r) => (r, number("x-ratelimit-reset")),
        None => (number("ratelimit-remaining")?, number("ratelimit-reset")),
    };
    if remaining > 0 {
        return None;
    }
    let reset = reset?;
    let wait = if reset >= EPOCH_THRESHOLD {
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        Duration::from_secs(reset.saturating_sub(now))
    } else {
        Duration::from_secs(reset)
    };
    Some(wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(3600);

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_spent_budget_waits_for_its_reset_in_either_form() {
        let now = at(1_700_000_000);
        let epoch = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000012"),
        ]);
        assert_eq!(reset_wait(&epoch, now, CAP), Some(Duration::from_secs(12)));
        let delta = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "7")]);
        assert_eq!(reset_wait(&delta, now, CAP), Some(Duration::from_secs(7)));
        let draft = headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "3")]);
        assert_eq!(reset_wait(&draft, now, CAP), Some(Duration::from_secs(3)));
        let past = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1600000000"),
        ]);
        assert_eq!(reset_wait(&past, now, CAP), Some(Duration::ZERO));
        let far = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "99999999"),
        ]);
        assert_eq!(reset_wait(&far, now, CAP), Some(CAP));
    }

    #[test]
    fn budget_left_or_garbage_means_no_wait() {
        let now = at(1_700_000_000);
        for h in [
            headers(&[]),
            headers(&[("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "9")]),
            headers(&[
                ("x-ratelimit-remaining", "none"),
                ("x-ratelimit-reset", "9"),
            ]),
            headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "soon"),
            ]),
            headers(&[("x-ratelimit-remaining", "-1"), ("x-ratelimit-reset", "9")]),
        ] {
            assert_eq!(reset_wait(&h, now, CAP), None, "{h:?}");
        }
    }
}
