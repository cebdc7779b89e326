//! One outbound request, as the caller describes it.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};

/// What to send. Cheap to clone (the body is shared), so a retry sends the same bytes.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// A total timeout shorter than the client's, e.g. what is left of a caller's deadline.
    pub timeout: Option<Duration>,
    /// Bytes of the answer kept, when this caller reads the body itself (a poller's page)
    /// and needs more than the client's diagnostic prefix.
    pub body_limit: Option<usize>,
}

impl OutboundRequest {
    /// A `POST` of `body` to `url`.
    pub fn post(url: Url, body: impl Into<Bytes>) -> Self {
        Self {
            method: Method::POST,
            url,
            headers: HeaderMap::new(),
            body: body.into(),
            timeout: None,
            body_limit: None,
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: Url) -> Self {
        Self {
            method: Method::GET,
            ..Self::post(url, Bytes::new())
        }
    }

    /// Adds headers (a signature, a content type, an idempotency key).
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers.extend(headers);
        self
    }

    /// Keeps up to `limit` bytes of the answer (instead of the client's prefix limit).
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = Some(limit);
        self
    }

    /// Caps this request's total time below the client's.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}
