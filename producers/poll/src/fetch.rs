//! Fetching one page through the shared outbound client, one attempt at a time, saying how
//! long to wait before the next: the host's and the credential's budgets, `Retry-After`
//! (both forms), rate-limit reset headers, 5xx and timeouts with a capped backoff, the
//! breaker. A limit slows the sync down and never fails it; what does fail it is an answer
//! that no wait can change (a 401, a 404, a page over the size limit, a refused address).

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, ETAG};
use sluice_runtime::outbound::rate_limit_reset::reset_wait;
use sluice_runtime::outbound::{Budgets, Outbound, OutboundRequest, Verdict};
use sluice_runtime::Shutdown;

use crate::metrics::{PollMetrics, Wait};

/// The longest a rate-limit reset header may hold a source.
const RESET_CAP: Duration = Duration::from_secs(3600);
/// The backoff of failures that say nothing about when to come back.
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// What came back.
#[derive(Debug)]
pub enum Fetched {
    /// A 2xx: the body and the headers kept (`ETag`, `Link`).
    Page {
        body: bytes::Bytes,
        headers: HeaderMap,
    },
    /// `304 Not Modified`: the `If-None-Match` matched.
    NotModified,
    /// `410 Gone`: the page position (a cursor) expired.
    Gone,
}

impl Fetched {
    pub fn etag(&self) -> Option<String> {
        match self {
            Fetched::Page { headers, .. } => headers
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the page is larger than limits.max_page_bytes ({0} bytes)")]
    TooLarge(usize),
    #[error("the request cannot be sent: {0}")]
    Rejected(String),
    #[error("stopped")]
    Stopped,
}

/// What one attempt came to, short of a failure.
#[derive(Debug)]
pub enum Step {
    /// An answer to act on.
    Done(Fetched),
    /// Ask again after `wait`. `binding` when the API itself set the time (`Retry-After`,
    /// a spent budget's reset): no request to the host may go before it, after a restart
    /// too, so the caller records it before waiting.
    Wait {
        wait: Duration,
        why: Wait,
        binding: bool,
    },
}

/// Who fetches, with what.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub outbound: Outbound,
    pub budgets: Budgets,
    pub metrics: PollMetrics,
}

impl Fetcher {
    /// One attempt at `request` for `source`, spending from `keys` (host first) once they
    /// allow; `failures` is how many attempts at this request failed so far (the backoff).
    pub async fn attempt(
        &self,
        source: &str,
        keys: &[&str],
        request: &OutboundRequest,
        failures: u32,
        shutdown: &Shutdown,
    ) -> Result<Step, FetchError> {
        let host = keys[0];
        let waited = tokio::select! {
            w = self.budgets.acquire(keys) => w,
            _ = shutdown.wait() => return Err(FetchError::Stopped),
        };
        self.metrics.waited(source, Wait::Budget, waited);
        let attempt = match self.outbound.send(host, request).await {
            Ok(attempt) => attempt,
            Err(refusal) => {
                return Ok(Step::Wait {
                    wait: refusal.retry_in().unwrap_or(Duration::from_millis(100)),
                    why: Wait::Breaker,
                    binding: false,
                })
            }
        };
        let status = attempt.status.unwrap_or(0);
        self.metrics.request(source, status);
        let reset = reset_wait(&attempt.headers, SystemTime::now(), RESET_CAP);
        if let Some(wait) = reset {
            // The budget is spent: nobody asks this host with this credential again
            // before it refills.
            for key in keys {
                self.budgets.pause(key, wait);
            }
        }
        let step = match (status, &attempt.verdict) {
            (304, _) => Step::Done(Fetched::NotModified),
            (_, Verdict::Gone) => Step::Done(Fetched::Gone),
            (_, Verdict::Delivered) if attempt.truncated => {
                return Err(FetchError::TooLarge(attempt.body_prefix.len()))
            }
            (_, Verdict::Delivered) => Step::Done(Fetched::Page {
                body: attempt.body_prefix,
                headers: attempt.headers,
            }),
            (_, Verdict::Rejected { reason }) => {
                return Err(FetchError::Rejected(reason.to_string()))
            }
            (s, Verdict::RetryLater { .. }) if (400..500).contains(&s) && s != 408 && s != 429 => {
                let body = String::from_utf8_lossy(&attempt.body_prefix)
                    .chars()
                    .take(200)
                    .collect();
                return Err(FetchError::Status { status: s, body });
            }
            (_, Verdict::RetryLater { after, reason }) => {
                let backoff = backoff(failures + 1);
                let step = match (after, reset) {
                    (Some(after), _) if *after >= backoff => Step::Wait {
                        wait: *after,
                        why: Wait::RetryAfter,
                        binding: true,
                    },
                    (_, Some(reset)) if reset >= backoff => Step::Wait {
                        wait: reset,
                        why: Wait::RateLimitReset,
                        binding: true,
                    },
                    _ => Step::Wait {
                        wait: backoff,
                        why: Wait::Backoff,
                        binding: false,
                    },
                };
                if let Step::Wait {
                    wait,
                    binding: true,
                    ..
                } = &step
                {
                    // It binds every request to the host, not only this one.
                    self.budgets.pause(host, *wait);
                }
                tracing::info!(source, reason = %reason, ?step, "page request failed; waiting before asking again");
                step
            }
        };
        Ok(step)
    }

    /// Sleeps `wait` (counted as `why`), or returns early on shutdown.
    pub async fn sleep(
        &self,
        source: &str,
        why: Wait,
        wait: Duration,
        shutdown: &Shutdown,
    ) -> Result<(), FetchError> {
        self.metrics.waited(source, why, wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = shutdown.wait() => Err(FetchError::Stopped),
        }
    }
}

/// 250 ms doubling to 30 s.
fn backoff(failures: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(50), BACKOFF_CAP);
    }
}
