//! An error and its causes on one line. reqwest's and hyper's messages stop at their own
//! layer ("error sending request"); the reason (refused, reset, timed out) is further down
//! the source chain, and an operator needs it.

use std::error::Error;

/// `e` and each of its causes, `: `-separated.
pub fn with_causes(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("sending the request")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_follows_the_error() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(with_causes(&Outer(refused)), "sending the request: refused");
    }
}
