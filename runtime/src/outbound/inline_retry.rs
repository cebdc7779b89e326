//! Retrying inline, for callers that wait for the answer (saga steps, pollers).
//!
//! The delivery consumer does not use this: it schedules retries through Kafka. Here the
//! retries happen in the caller's task, following a [`RetrySchedule`], honouring the
//! endpoint's `Retry-After` and its breaker and limits, and never running past a deadline:
//! no wait is started that would end after it, and each attempt's timeout is cut to what
//! is left of it.

use std::time::Duration;

use tokio::time::Instant;

use super::attempt::Attempt;
use super::request::OutboundRequest;
use super::retry::RetrySchedule;
use super::sender::{NotAdmitted, Outbound};
use super::verdict::Verdict;

/// How long to wait before asking again after the endpoint's limits or breaker held an
/// attempt back without saying how long.
const NOT_ADMITTED_PAUSE: Duration = Duration::from_millis(100);

/// How long past the deadline an attempt's own timeout may take to be reported.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// How a run of attempts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryEnd {
    /// The last attempt was delivered.
    Delivered,
    /// The endpoint answered `410 Gone`.
    Gone,
    /// The request cannot be sent as addressed.
    Rejected,
    /// Every attempt of the schedule failed.
    Exhausted,
    /// The next attempt could not start (or its wait end) before the deadline.
    DeadlineExceeded,
    /// The caller's policy said the last failure is not worth retrying
    /// ([`send_with_retries_while`]).
    Final,
}

impl RetryEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryEnd::Delivered => "delivered",
            RetryEnd::Gone => "gone",
            RetryEnd::Rejected => "rejected",
            RetryEnd::Exhausted => "exhausted",
            RetryEnd::DeadlineExceeded => "deadline_exceeded",
            RetryEnd::Final => "final",
        }
    }
}

/// Every attempt made, and how it ended.
#[derive(Debug, Clone)]
pub struct RetryOutcome {
    pub end: RetryEnd,
    pub attempts: Vec<Attempt>,
    /// Times the breaker or limits held an attempt back.
    pub not_admitted: u32,
}

impl RetryOutcome {
    /// The last attempt made, if any.
    pub fn last(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
}

/// Sends `request` to `endpoint` until it is delivered, gone, rejected, the schedule runs
/// out or `deadline` (from now) passes. `seed` spreads the schedule's jitter (use something
/// stable per request, e.g. a hash of its idempotency key).
pub async fn send_with_retries(
    outbound: &Outbound,
    endpoint: &str,
    request: &OutboundRequest,
    schedule: &RetrySchedule,
    deadline: Duration,
    seed: u64,
) -> RetryOutcome {
    send_with_retries_while(
        outbound,
        endpoint,
        request,
        schedule,
        deadline,
        seed,
        |_| true,
    )
    .await
}

/// [`send_with_retries`], but a failed attempt is retried only when `retry` says so (e.g.
/// [`StatusPolicy::retries`](super::StatusPolicy::retries)); otherwise the run ends
/// [`RetryEnd::Final`].
pub async fn send_with_retries_while(
    outbound: &Outbound,
    endpoint: &str,
    request: &OutboundRequest,
    schedule: &RetrySchedule,
    deadline: Duration,
    seed: u64,
    retry: impl Fn(&Attempt) -> bool,
) -> RetryOutcome {
    let deadline = Instant::now() + deadline;
    let mut outcome = RetryOutcome {
        end: RetryEnd::Exhausted,
        attempts: Vec::new(),
        not_admitted: 0,
    };
    let mut failed = 0u32;
    let mut wait = schedule.next_delay(0, None, seed);
    while let Some(delay) = wait {
        if !wait_within(delay, deadline).await {
            outcome.end = RetryEnd::DeadlineExceeded;
            return outcome;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt_request = request
            .clone()
            .with_timeout(request.timeout.map_or(left, |own| own.min(left)));
        // The attempt's own timeout ends it by the deadline; this bounds the wait for the
        // endpoint's limits, with a grace so a timeout at the deadline is still recorded.
        let sent = tokio::time::timeout_at(
            deadline + DEADLINE_GRACE,
            outbound.send(endpoint, &attempt_request),
        );
        let attempt = match sent.await {
            Err(_elapsed) => {
                outcome.end = RetryEnd::DeadlineExceeded;
                return outcome;
            }
            Ok(Ok(attempt)) => attempt,
            Ok(Err(refusal)) => {
                outcome.not_admitted += 1;
                wait = Some(pause_for(&refusal));
                continue;
            }
        };
        let verdict = attempt.verdict.clone();
        let again = retry(&attempt);
        outcome.attempts.push(attempt);
        match verdict {
            Verdict::Delivered => outcome.end = RetryEnd::Delivered,
            Verdict::Gone => outcome.end = RetryEnd::Gone,
            Verdict::Rejected { .. } => outcome.end = RetryEnd::Rejected,
            Verdict::RetryLater { .. } if !again => outcome.end = RetryEnd::Final,
            Verdict::RetryLater { after, .. } => {
                failed += 1;
                wait = schedule.next_delay(failed, after, seed);
                continue;
            }
        }
        return outcome;
    }
    outcome
}

fn pause_for(refusal: &NotAdmitted) -> Duration {
    refusal
        .retry_in()
        .filter(|d| !d.is_zero())
        .unwrap_or(NOT_ADMITTED_PAUSE)
}

/// Sleeps `delay` unless it would end after `deadline`; says whether it slept.
async fn wait_within(delay: Duration, deadline: Instant) -> bool {
    let until = Instant::now() + delay;
    if until >= deadline {
        return false;
    }
    tokio::time::sleep_until(until).await;
    true
}
