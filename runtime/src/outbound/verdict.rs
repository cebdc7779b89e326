//! What one attempt means for the caller: a typed verdict.
//!
//! The rules (product spec): a 2xx delivers; `410 Gone` means the endpoint asks to be
//! disabled; every other status, a timeout or a connection failure is retried later, at the
//! time `Retry-After` asks for when the response carries one. A request that can never be
//! sent as addressed (a refused IP literal, a scheme the policy forbids, an unusable URL) is
//! rejected: retrying it cannot help.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use super::ssrf::{AddressClass, Refused};

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint answered 2xx.
    Delivered,
    /// The endpoint answered `410 Gone`: it asks not to be sent to again.
    Gone,
    /// It failed in a way a later attempt may not; `after` is the endpoint's `Retry-After`
    /// (already capped) when it sent one.
    RetryLater {
        after: Option<Duration>,
        reason: FailureReason,
    },
    /// The request cannot be sent as addressed; retrying is pointless.
    Rejected { reason: FailureReason },
}

impl Verdict {
    /// A stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Gone => "gone",
            Verdict::RetryLater { .. } => "retry_later",
            Verdict::Rejected { .. } => "rejected",
        }
    }

    /// Every label value, to start each series at zero.
    pub const LABELS: [&'static str; 4] = ["delivered", "gone", "retry_later", "rejected"];

    /// Why it failed, unless it was delivered or gone.
    pub fn reason(&self) -> Option<&FailureReason> {
        match self {
            Verdict::RetryLater { reason, .. } | Verdict::Rejected { reason } => Some(reason),
            Verdict::Delivered | Verdict::Gone => None,
        }
    }

    /// Whether the endpoint is healthy as far as a circuit breaker is concerned. `Gone` is an
    /// answer, not an outage; a rejection never reached the endpoint, so it counts neither way
    /// (see [`Verdict::counts_for_breaker`]).
    pub fn is_success(&self) -> bool {
        matches!(self, Verdict::Delivered | Verdict::Gone)
    }

    /// Whether this outcome says anything about the endpoint's health.
    pub fn counts_for_breaker(&self) -> bool {
        !matches!(self, Verdict::Rejected { .. })
    }

    /// Judges a response by its status and (capped) `Retry-After`.
    pub fn from_status(status: u16, retry_after: Option<Duration>) -> Verdict {
        match status {
            200..=299 => Verdict::Delivered,
            410 => Verdict::Gone,
            _ => Verdict::RetryLater {
                after: retry_after,
                reason: FailureReason::from_status(status),
            },
        }
    }

    /// Judges a request that got no response.
    pub fn from_error(reason: FailureReason) -> Verdict {
        match reason {
            FailureReason::Request | FailureReason::Refused(RefusalKind::Scheme) => {
                Verdict::Rejected { reason }
            }
            reason => Verdict::RetryLater {
                after: None,
                reason,
            },
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::RetryLater {
                after: Some(after),
                reason,
            } => write!(f, "retry later ({reason}, after {after:?})"),
            Verdict::RetryLater {
                after: None,
                reason,
            } => write!(f, "retry later ({reason})"),
            Verdict::Rejected { reason } => write!(f, "rejected ({reason})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// What the SSRF guard refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// An address of this class (an IP literal, or every address DNS gave).
    Address(AddressClass),
    /// The URL's scheme.
    Scheme,
    /// DNS gave no address, or the URL had no host.
    NoAddress,
}

impl From<&Refused> for RefusalKind {
    fn from(refused: &Refused) -> Self {
        match refused {
            Refused::Address { class, .. } => RefusalKind::Address(*class),
            Refused::Scheme { .. } => RefusalKind::Scheme,
            Refused::NoHost | Refused::NoAddress { .. } => RefusalKind::NoAddress,
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The endpoint answered with this status (not 2xx, 3xx, 410 or 429).
    Status(u16),
    /// `429 Too Many Requests`.
    TooManyRequests,
    /// A 3xx: redirects are never followed (the target would escape the SSRF check and the
    /// signature was made for this endpoint).
    Redirect(u16),
    /// No complete response within the total timeout (or the connect timeout).
    Timeout,
    /// No connection could be made (refused, unreachable, TLS failure, DNS failure).
    Connect,
    /// The connection closed before a response arrived.
    Closed,
    /// The SSRF guard refused the destination.
    Refused(RefusalKind),
    /// The answer was not HTTP (a malformed status line or headers).
    Protocol,
    /// The response body could not be read before the response head.
    Body,
    /// The request could not be built (an unusable URL or header).
    Request,
}

impl FailureReason {
    fn from_status(status: u16) -> FailureReason {
        match status {
            429 => FailureReason::TooManyRequests,
            300..=399 => FailureReason::Redirect(status),
            _ => FailureReason::Status(status),
        }
    }

    /// A stable, bounded label for logs and metrics (status codes by class).
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureReason::Status(s) if (500..600).contains(s) => "status_5xx",
            FailureReason::Status(s) if (400..500).contains(s) => "status_4xx",
            FailureReason::Status(_) => "status_other",
            FailureReason::TooManyRequests => "too_many_requests",
            FailureReason::Redirect(_) => "redirect",
            FailureReason::Timeout => "timeout",
            FailureReason::Connect => "connect",
            FailureReason::Closed => "closed",
            FailureReason::Refused(_) => "refused",
            FailureReason::Protocol => "protocol",
            FailureReason::Body => "body",
            FailureReason::Request => "request",
        }
    }

    /// Classifies a reqwest error: the SSRF refusal is found in its source chain (the
    /// resolver's error is wrapped by the connector), the rest by reqwest's own kinds.
    pub fn of_error(err: &reqwest::Error) -> FailureReason {
        if let Some(refused) = find_source::<Refused>(err) {
            return FailureReason::Refused(refused.into());
        }
        if err.is_timeout() {
            FailureReason::Timeout
        } else if err.is_connect() {
            FailureReason::Connect
        } else if err.is_builder() {
            FailureReason::Request
        } else if is_closed_early(err) {
            FailureReason::Closed
        } else if find_source::<hyper::Error>(err).is_some_and(hyper::Error::is_parse) {
            FailureReason::Protocol
        } else if err.is_body() || err.is_decode() {
            FailureReason::Body
        } else {
            FailureReason::Connect
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Status(s) => write!(f, "status {s}"),
            FailureReason::Redirect(s) => write!(f, "redirect {s} not followed"),
            FailureReason::Refused(RefusalKind::Address(class)) => {
                write!(f, "refused: {class} address")
            }
            FailureReason::Refused(RefusalKind::Scheme) => f.write_str("refused: scheme"),
            FailureReason::Refused(RefusalKind::NoAddress) => f.write_str("refused: no address"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The first error of type `E` in `err`'s source chain.
pub(crate) fn find_source<'a, E: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// hyper's "connection closed before message completed" and resets while waiting for the
/// response: the endpoint accepted the connection and hung up without answering.
fn is_closed_early(err: &reqwest::Error) -> bool {
    if let Some(hyper_err) = find_source::<hyper::Error>(err) {
        if hyper_err.is_incomplete_message() || hyper_err.is_closed() {
            return true;
        }
    }
    find_source::<std::io::Error>(err).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_delivery_rules() {
        assert_eq!(Verdict::from_status(200, None), Verdict::Delivered);
        assert_eq!(Verdict::from_status(204, None), Verdict::Delivered);
        assert_eq!(
            Verdict::from_status(410, Some(Duration::from_secs(9))),
            Verdict::Gone
        );
        assert_eq!(
            Verdict::from_status(500, None),
            Verdict::RetryLater {
                after: None,
                reason: FailureReason::Status(500)
            }
        );
        assert_eq!(
            Verdict::from_status(404, None).reason(),
            Some(&FailureReason::Status(404))
        );
        let after = Some(Duration::from_secs(2));
        assert_eq!(
            Verdict::from_status(429, after),
            Verdict::RetryLater {
                after,
                reason: FailureReason::TooManyRequests
            }
        );
        assert_eq!(
            Verdict::from_status(503, after),
            Verdict::RetryLater {
                after,
                reason: FailureReason::Status(503)
            }
        );
        assert_eq!(
            Verdict::from_status(302, None).reason(),
            Some(&FailureReason::Redirect(302))
        );
        assert_eq!(
            Verdict::from_status(101, None)
                .reason()
                .map(FailureReason::as_str),
            Some("status_other")
        );
    }

    #[test]
    fn unsendable_requests_are_rejected_and_everything_else_retried() {
        assert!(matches!(
            Verdict::from_error(FailureReason::Request),
            Verdict::Rejected { .. }
        ));
        assert!(matches!(
            Verdict::from_error(FailureReason::Refused(RefusalKind::Scheme)),
            Verdict::Rejected { .. }
        ));
        // DNS may answer differently later; the guard checks again on every attempt.
        let dns = FailureReason::Refused(RefusalKind::Address(AddressClass::Private));
        assert!(matches!(
            Verdict::from_error(dns),
            Verdict::RetryLater { after: None, .. }
        ));
        for reason in [
            FailureReason::Timeout,
            FailureReason::Connect,
            FailureReason::Closed,
        ] {
            assert!(matches!(
                Verdict::from_error(reason),
                Verdict::RetryLater { .. }
            ));
        }
    }

    #[test]
    fn labels_are_bounded_and_stable() {
        assert_eq!(FailureReason::Status(502).as_str(), "status_5xx");
        assert_eq!(FailureReason::Status(418).as_str(), "status_4xx");
        assert_eq!(Verdict::Delivered.as_str(), "delivered");
        assert_eq!(
            Verdict::RetryLater {
                after: None,
                reason: FailureReason::Timeout
            }
            .as_str(),
            "retry_later"
        );
        for v in [
            Verdict::Delivered,
            Verdict::Gone,
            Verdict::from_status(500, None),
            Verdict::from_error(FailureReason::Request),
        ] {
            assert!(Verdict::LABELS.contains(&v.as_str()));
        }
    }

    #[test]
    fn breaker_accounting() {
        assert!(Verdict::Delivered.is_success());
        assert!(Verdict::Gone.is_success());
        assert!(!Verdict::from_status(500, None).is_success());
        assert!(!Verdict::from_error(FailureReason::Request).counts_for_breaker());
        assert!(Verdict::from_error(FailureReason::Timeout).counts_for_breaker());
    }
}
