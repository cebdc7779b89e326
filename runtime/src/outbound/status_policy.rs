//! What a failed attempt means to a caller that makes *calls* rather than deliveries (saga
//! steps calling an API, pollers): whether trying again can help.
//!
//! Webhook delivery retries every failure ([`Verdict`]); an API call must not: a `422` will
//! be a `422` again, and retrying it only delays the compensation. The classes:
//!
//! - **transient**: network errors, timeouts, `408`, `429`, `5xx`: retry (honouring
//!   `Retry-After`);
//! - **permanent**: every other `4xx`, and a request that cannot be sent as addressed;
//! - **unknown**: anything else that is not a success (`1xx`, `3xx`): the caller retries it
//!   cautiously and reports it.
//!
//! A caller may move statuses between the transient and permanent classes (a provider whose
//! `409` means "busy, try again", or a `503` it documents as final).

use super::attempt::Attempt;
use super::verdict::{FailureReason, Verdict};

/// The class of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    Transient,
    Permanent,
    Unknown,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
            FailureClass::Unknown => "unknown",
        }
    }
}

/// Statuses a caller classes otherwise than the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusPolicy {
    /// Statuses that are permanent failures whatever their default class.
    pub permanent: Vec<u16>,
    /// Statuses that are transient failures whatever their default class.
    pub transient: Vec<u16>,
}

impl StatusPolicy {
    /// The class of a response with `status` that is not a success.
    pub fn classify_status(&self, status: u16) -> FailureClass {
        if self.permanent.contains(&status) {
            return FailureClass::Permanent;
        }
        if self.transient.contains(&status) {
            return FailureClass::Transient;
        }
        match status {
            408 | 429 | 500..=599 => FailureClass::Transient,
            400..=499 => FailureClass::Permanent,
            _ => FailureClass::Unknown,
        }
    }

    /// The class of `attempt`, or `None` when it succeeded (2xx).
    pub fn classify(&self, attempt: &Attempt) -> Option<FailureClass> {
        if attempt.verdict == Verdict::Delivered {
            return None;
        }
        if let Some(status) = attempt.status {
            return Some(self.classify_status(status));
        }
        Some(match attempt.verdict.reason() {
            Some(FailureReason::Request | FailureReason::Refused(_)) => FailureClass::Permanent,
            _ => FailureClass::Transient,
        })
    }

    /// Whether `attempt` is worth repeating right away (for [`super::send_with_retries_while`]).
    pub fn retries(&self, attempt: &Attempt) -> bool {
        self.classify(attempt) == Some(FailureClass::Transient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_classes() {
        let p = StatusPolicy::default();
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(p.classify_status(s), FailureClass::Transient, "{s}");
        }
        for s in [400, 401, 402, 403, 404, 409, 410, 422] {
            assert_eq!(p.classify_status(s), FailureClass::Permanent, "{s}");
        }
        for s in [101, 301, 304, 600] {
            assert_eq!(p.classify_status(s), FailureClass::Unknown, "{s}");
        }
    }

    #[test]
    fn a_caller_moves_statuses_between_classes() {
        let p = StatusPolicy {
            permanent: vec![503],
            transient: vec![409],
        };
        assert_eq!(p.classify_status(503), FailureClass::Permanent);
        assert_eq!(p.classify_status(409), FailureClass::Transient);
        assert_eq!(p.classify_status(422), FailureClass::Permanent);
    }
}
