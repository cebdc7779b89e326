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

    /// Caps this request's total time below the client's.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}
