//! One attempt: send a request once and record what happened.
//!
//! The body is read as a stream and only its first `body_prefix_limit` bytes are kept: a
//! receiver's answer is for diagnosis, and a hostile one may be endless.

use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, CONTENT_TYPE, LOCATION, RETRY_AFTER};

use super::config::ClientConfig;
use super::request::OutboundRequest;
use super::retry_after::retry_after_header;
use super::ssrf::{AddressPolicy, Refused};
use super::verdict::{find_source, FailureReason, RefusalKind, Verdict};

/// The record of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the attempt started (wall clock, for logs and delivery records).
    pub started_at: SystemTime,
    /// From start to the end of reading the body prefix (or to the failure).
    pub latency: Duration,
    /// The response status, when a response head arrived.
    pub status: Option<u16>,
    pub verdict: Verdict,
    /// What went wrong, without the URL (it may carry a token).
    pub error: Option<String>,
    /// The response headers of interest (`retry-after`, `content-type`, `location`, and
    /// those the config names).
    pub headers: HeaderMap,
    /// The first bytes of the response body.
    pub body_prefix: Bytes,
    /// Whether the body was longer than the prefix.
    pub truncated: bool,
}

impl Attempt {
    /// A `304 Not Modified` answering a conditional request (`If-None-Match`,
    /// `If-Modified-Since`): the endpoint is healthy and has nothing new, which a poller
    /// asks for on purpose; its verdict stays "not delivered" for everyone else.
    pub fn not_modified(&self, request: &OutboundRequest) -> bool {
        self.status == Some(304)
            && (request.headers.contains_key(reqwest::header::IF_NONE_MATCH)
                || request
                    .headers
                    .contains_key(reqwest::header::IF_MODIFIED_SINCE))
    }

    /// An attempt that got no response: refused before sending, or failed before an answer.
    fn without_response(
        started_at: SystemTime,
        started: Instant,
        verdict: Verdict,
        error: String,
    ) -> Self {
        Attempt {
            started_at,
            latency: started.elapsed(),
            status: None,
            verdict,
            error: Some(error),
            headers: HeaderMap::new(),
            body_prefix: Bytes::new(),
            truncated: false,
        }
    }
}

/// Sends `request` once with `http` (built with the guard resolver of `policy`).
pub(crate) async fn send_once(
    http: &reqwest::Client,
    policy: &AddressPolicy,
    config: &ClientConfig,
    keep: &[HeaderName],
    request: &OutboundRequest,
) -> Attempt {
    let started_at = SystemTime::now();
    let started = Instant::now();
    if let Err(refused) = policy.check_url(&request.url) {
        let reason = FailureReason::Refused(RefusalKind::from(&refused));
        return Attempt::without_response(
            started_at,
            started,
            Verdict::Rejected { reason },
            refused.to_string(),
        );
    }
    let mut builder = http
        .request(request.method.clone(), request.url.clone())
        .headers(request.headers.clone())
        .body(request.body.clone());
    if let Some(timeout) = request.timeout {
        builder = builder.timeout(timeout.min(config.total_timeout));
    }
    let mut response = match builder.send().await {
        Ok(response) => response,
        Err(err) => {
            let reason = FailureReason::of_error(&err);
            return Attempt::without_response(
                started_at,
                started,
                Verdict::from_error(reason),
                describe(err),
            );
        }
    };
    let status = response.status().as_u16();
    let retry_after = retry_after_header(
        response.headers(),
        SystemTime::now(),
        config.retry_after_cap,
    );
    let headers = kept_headers(response.headers(), keep);
    let (body_prefix, truncated, body_error) = read_prefix(
        &mut response,
        request.body_limit.unwrap_or(config.body_prefix_limit),
    )
    .await;
    Attempt {
        started_at,
        latency: started.elapsed(),
        status: Some(status),
        verdict: Verdict::from_status(status, retry_after),
        error: body_error.map(|e| format!("reading the response body: {}", describe(e))),
        headers,
        body_prefix,
        truncated,
    }
}

/// Reads at most `limit` bytes of the body, then stops (dropping the rest unread).
async fn read_prefix(
    response: &mut reqwest::Response,
    limit: usize,
) -> (Bytes, bool, Option<reqwest::Error>) {
    let mut prefix = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - prefix.len();
                if chunk.len() > room {
                    prefix.extend_from_slice(&chunk[..room]);
                    return (prefix.freeze(), true, None);
                }
                prefix.extend_from_slice(&chunk);
            }
            Ok(None) => return (prefix.freeze(), false, None),
            Err(err) => return (prefix.freeze(), false, Some(err)),
        }
    }
}

fn kept_headers(headers: &HeaderMap, keep: &[HeaderName]) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [&RETRY_AFTER, &CONTENT_TYPE, &LOCATION]
        .into_iter()
        .chain(keep)
    {
        for value in headers.get_all(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// The error and its causes on one line, without the URL.
fn describe(err: reqwest::Error) -> String {
    if let Some(refused) = find_source::<Refused>(&err) {
        return refused.to_string();
    }
    crate::causes::with_causes(&err.without_url())
}
