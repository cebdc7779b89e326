//! The request for a crawl's next page: the source's URL with `since`, page size and page
//! position as query parameters (or the `Link` URL the API gave), the credential, and
//! `If-None-Match` when an `ETag` is known for exactly this URL.

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, IF_NONE_MATCH};
use reqwest::Url;
use sluice_runtime::outbound::OutboundRequest;
use sluice_topology::poll::Pagination;

use crate::cursor::{Crawl, Cursor, PageRef};
use crate::settings::{origin, Settings};
use crate::version::format_time;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the API's next link `{0}` is not a URL")]
    BadLink(String),
    #[error("the API's next link leaves {expected} (to {got}); only the source's own origin is followed")]
    OtherOrigin { expected: String, got: String },
}

/// The URL of the page `crawl.next`.
pub fn page_url(settings: &Settings, crawl: &Crawl) -> Result<Url, RequestError> {
    if let PageRef::Url { url } = &crawl.next {
        let url = Url::parse(url).map_err(|_| RequestError::BadLink(url.clone()))?;
        if origin(&url) != settings.host_key {
            return Err(RequestError::OtherOrigin {
                expected: settings.host_key.clone(),
                got: origin(&url),
            });
        }
        return Ok(url);
    }
    let spec = &settings.spec;
    let mut url = settings.url.clone();
    {
        let mut q = url.query_pairs_mut();
        if let Some(since) = &spec.since {
            let from = match &crawl.next {
                PageRef::Keyset { time_ms, .. } => Some(*time_ms),
                _ => crawl.since_ms,
            };
            if let Some(ms) = from {
                q.append_pair(&since.param, &format_time(ms, since.format));
            }
            if let (Some(param), PageRef::Keyset { id, .. }) = (&since.tie_break, &crawl.next) {
                q.append_pair(param, id);
            }
        }
        if let Some(size) = &spec.page_size {
            q.append_pair(&size.param, &size.value.to_string());
        }
        match (&spec.pagination, &crawl.next) {
            (Pagination::Cursor { param, .. }, PageRef::Cursor { token }) => {
                q.append_pair(param, token);
            }
            (Pagination::Page { param, start }, next) => {
                let n = match next {
                    PageRef::Page { n } => *n,
                    _ => *start,
                };
                q.append_pair(param, &n.to_string());
            }
            (Pagination::Offset { param }, PageRef::Offset { n, .. }) => {
                q.append_pair(param, &n.to_string());
            }
            _ => {}
        }
    }
    Ok(url)
}

/// The whole request, with `body_limit` bytes of answer kept.
pub fn build(settings: &Settings, cursor: &Cursor, url: Url) -> OutboundRequest {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    if let Some((name, value)) = &settings.auth {
        headers.insert(name.clone(), value.clone());
    }
    if settings.spec.etag {
        if let Some((for_url, etag)) = &cursor.etag {
            if for_url == url.as_str() {
                if let Ok(v) = HeaderValue::from_str(etag) {
                    headers.insert(IF_NONE_MATCH, v);
                }
            }
        }
    }
    OutboundRequest::get(url)
        .with_headers(headers)
        .with_body_limit(settings.spec.limits.max_page_bytes)
}
