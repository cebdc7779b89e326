//! `sources[].poll`: a source fed by polling a third-party list API instead of webhooks.
//!
//! ```yaml
//! sources:
//!   - name: shop-orders
//!     raw_topic: sluice.raw.shop-orders
//!     poll:
//!       url: https://api.shop.example/v1/orders
//!       interval: 30s
//!       auth: {bearer: {env: SHOP_TOKEN}}
//!       items: data                 # where the items are in the response body
//!       id: id                      # the item id, per item
//!       version: updated_at         # its version (a timestamp or a number)
//!       since: {param: updated_since, lookback: 60s, tie_break: after_id}
//!       pagination: {type: cursor, param: cursor, path: next_cursor}
//!       page_size: {param: limit, value: 100}
//! ```
//!
//! The poller (`sluice poll`, crate `sluice-poll`) reads these; validation here checks only
//! what can be checked without the network.

use serde::Deserialize;
use sluice_runtime::SecretRef;

use crate::model::HumanDuration;

/// How to poll one source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSpec {
    /// The list endpoint; fixed query parameters may be part of it.
    pub url: String,
    /// Pause between the end of one crawl and the start of the next.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// The `sluice_provider` header of its records: `poll` (the generic mapping) or a
    /// webhook provider type whose mapping reads the polled items (e.g. `stripe` for
    /// Stripe's `/v1/events`).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// A fixed `sluice_event_type` header, when the items do not say their type.
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub auth: Option<PollAuth>,
    /// Dotted path to the array of items in the body (`data`, `result.items`); empty: the
    /// body is the array.
    #[serde(default)]
    pub items: String,
    /// Dotted path to an item's id within the item.
    #[serde(default = "default_id")]
    pub id: String,
    /// Dotted path to an item's version: an RFC 3339 timestamp, a number, or any string
    /// (then only equality is known).
    pub version: String,
    #[serde(default)]
    pub since: Option<SinceSpec>,
    /// Send `If-None-Match` with the last `ETag` of an unchanged request.
    #[serde(default = "yes")]
    pub etag: bool,
    #[serde(default)]
    pub pagination: Pagination,
    #[serde(default)]
    pub page_size: Option<PageSize>,
    /// Pages committed per Kafka transaction, with the cursor of the last one. More pages
    /// spread a transaction's fixed cost over more items (a backfill runs faster); a poller
    /// killed mid-transaction fetches that many pages again (and writes them once).
    #[serde(default = "one_page")]
    pub pages_per_transaction: u32,
    /// Fetch the next page while the previous transaction's records are acknowledged and
    /// it commits, instead of after: a backfill runs faster where those round trips take
    /// as long as a page, and a poller killed meanwhile fetches one page more again (the
    /// committing transaction's and the one being fetched; each still written once).
    #[serde(default)]
    pub overlap_commit: bool,
    #[serde(default)]
    pub limits: PollLimits,
}

/// The most pages one transaction may hold: a transaction's records wait in the producer
/// until it commits.
pub const MAX_PAGES_PER_TRANSACTION: u32 = 1_000;

/// Change detection by an `updated since` query parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinceSpec {
    pub param: String,
    /// How the parameter's value is written.
    #[serde(default)]
    pub format: TimeFormat,
    /// How far back each crawl starts before the last one's newest item, for items that
    /// show up late; re-read items are dropped by the (id, version) store.
    #[serde(default = "default_lookback")]
    pub lookback: HumanDuration,
    /// A parameter taking the id of the last item at the `since` time, for APIs that page
    /// by `(updated_at, id)` themselves (keyset pagination): it breaks ties between items
    /// sharing one timestamp.
    #[serde(default)]
    pub tie_break: Option<String>,
    /// Backfill start (RFC 3339) for the very first crawl; without it, everything.
    #[serde(default)]
    pub start: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    #[default]
    Rfc3339,
    UnixSeconds,
    UnixMillis,
}

/// How the next page is found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One page per crawl, or keyset pages when `since.tie_break` is set.
    #[default]
    None,
    /// The next cursor is in the body at `path` and is sent as `param`.
    Cursor { param: String, path: String },
    /// The next page's URL is the `Link: <…>; rel="next"` header (same origin only).
    Link,
    /// Page numbers in `param`, from `start`.
    Page {
        param: String,
        #[serde(default = "one")]
        start: u64,
    },
    /// Item offsets in `param`, from 0.
    Offset { param: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageSize {
    pub param: String,
    pub value: u32,
}

/// Credentials, by reference; never written in the topology itself. Written as exactly
/// one of `{bearer: SECRET}`, `{basic: {username: U, password: SECRET}}` or
/// `{header: {name: X-Api-Key, value: SECRET}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawAuth")]
pub enum PollAuth {
    /// `Authorization: Bearer <secret>`.
    Bearer(SecretRef),
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        username: String,
        password: SecretRef,
    },
    /// Any header, e.g. `X-Api-Key`.
    Header { name: String, value: SecretRef },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bearer: Option<SecretRef>,
    basic: Option<RawBasic>,
    header: Option<RawHeader>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    username: String,
    password: SecretRef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: SecretRef,
}

impl TryFrom<RawAuth> for PollAuth {
    type Error = &'static str;

    fn try_from(raw: RawAuth) -> Result<Self, Self::Error> {
        match (raw.bearer, raw.basic, raw.header) {
            (Some(s), None, None) => Ok(PollAuth::Bearer(s)),
            (None, Some(b), None) => Ok(PollAuth::Basic {
                username: b.username,
                password: b.password,
            }),
            (None, None, Some(h)) => Ok(PollAuth::Header {
                name: h.name,
                value: h.value,
            }),
            _ => Err("auth is exactly one of `bearer`, `basic` or `header`"),
        }
    }
}

impl PollAuth {
    /// Where the credential comes from (never its value): the key of its request budget.
    pub fn budget_key(&self) -> String {
        let secret = match self {
            PollAuth::Bearer(s) | PollAuth::Basic { password: s, .. } => s,
            PollAuth::Header { value, .. } => value,
        };
        format!("{secret:?}")
    }
}

/// Request budgets and the page size limit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollLimits {
    /// Requests per second to the API's host, shared by every source polling it.
    pub host_rate_per_sec: Option<u32>,
    pub host_burst: Option<u32>,
    /// Requests per second made with this source's credential, shared by every source
    /// using the same one.
    pub credential_rate_per_sec: Option<u32>,
    pub credential_burst: Option<u32>,
    /// Largest page body read.
    pub max_page_bytes: usize,
}

impl Default for PollLimits {
    fn default() -> Self {
        Self {
            host_rate_per_sec: None,
            host_burst: None,
            credential_rate_per_sec: None,
            credential_burst: None,
            max_page_bytes: 16 * 1024 * 1024,
        }
    }
}

fn default_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_lookback() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}

fn default_provider() -> String {
    "poll".into()
}

fn default_id() -> String {
    "id".into()
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

fn one_page() -> u32 {
    1
}

/// What is wrong with a poll spec, as (path suffix, message) pairs.
pub fn problems(p: &PollSpec, providers: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match url::Url::parse(&p.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => out.push(("url".into(), "must be an http(s) URL with a host".into())),
        Err(e) => out.push(("url".into(), format!("`{}` is not a URL: {e}", p.url))),
    }
    if p.interval.0.is_zero() {
        out.push(("interval".into(), "must be more than 0".into()));
    }
    if p.provider != "poll" && !providers.contains(&p.provider.as_str()) {
        out.push((
            "provider".into(),
            format!(
                "unknown provider `{}`; `poll` or one of {}",
                p.provider,
                providers.join(", ")
            ),
        ));
    }
    if p.id.is_empty() {
        out.push(("id".into(), "must name the item's id field".into()));
    }
    if p.version.is_empty() {
        out.push((
            "version".into(),
            "must name the item's version field".into(),
        ));
    }
    if let Some(s) = &p.since {
        if s.param.is_empty() {
            out.push(("since.param".into(), "must not be empty".into()));
        }
        if let Some(start) = &s.start {
            if start.parse::<jiff::Timestamp>().is_err() {
                out.push((
                    "since.start".into(),
                    format!("`{start}` is not an RFC 3339 time"),
                ));
            }
        }
        if s.tie_break.is_some() && p.pagination != Pagination::None {
            out.push((
                "since.tie_break".into(),
                "pages by (since, id) itself, so pagination must be `none`".into(),
            ));
        }
    }
    if let Some(size) = &p.page_size {
        if size.value == 0 || size.param.is_empty() {
            out.push((
                "page_size".into(),
                "needs a parameter and a value above 0".into(),
            ));
        }
    }
    if matches!(p.pagination, Pagination::Offset { .. }) && p.page_size.is_none() {
        out.push((
            "pagination".into(),
            "offset pagination needs page_size (the end is a short page)".into(),
        ));
    }
    if p.limits.host_rate_per_sec == Some(0) || p.limits.credential_rate_per_sec == Some(0) {
        out.push(("limits".into(), "rates must be more than 0".into()));
    }
    if !(1..=MAX_PAGES_PER_TRANSACTION).contains(&p.pages_per_transaction) {
        out.push((
            "pages_per_transaction".into(),
            format!("must be from 1 to {MAX_PAGES_PER_TRANSACTION}"),
        ));
    }
    if p.limits.max_page_bytes == 0 {
        out.push(("limits.max_page_bytes".into(), "must be more than 0".into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PollSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_full_spec_reads_and_checks_clean() {
        let p = spec(
            "{url: 'http://127.0.0.1:9/orders?x=1', interval: 5s, auth: {bearer: {env: T}}, items: data, version: updated_at,
              since: {param: updated_since, lookback: 30s}, pagination: {type: cursor, param: cursor, path: next},
              page_size: {param: limit, value: 100}, limits: {host_rate_per_sec: 10}}",
        );
        assert!(problems(&p, &["stripe"]).is_empty());
        assert_eq!(
            p.pagination,
            Pagination::Cursor {
                param: "cursor".into(),
                path: "next".into()
            }
        );
        assert_eq!(p.auth.unwrap().budget_key(), "SecretRef::Env(T)");
        assert_eq!(
            p.pages_per_transaction, 1,
            "one page per transaction by default"
        );
        assert!(
            !p.overlap_commit,
            "a commit finishes before the next page is fetched by default"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let p = spec(
            "{url: 'ftp://x', interval: 0s, provider: nope, version: v, since: {param: s, tie_break: id, start: yesterday},
              pagination: {type: offset, param: o}, pages_per_transaction: 0}",
        );
        let paths: Vec<String> = problems(&p, &["stripe"])
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        for want in [
            "url",
            "interval",
            "provider",
            "since.start",
            "since.tie_break",
            "pagination",
            "pages_per_transaction",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} in {paths:?}");
        }
        let unknown = serde_yaml_ng::from_str::<PollSpec>("{url: x, version: v, verison: w}");
        assert!(unknown.unwrap_err().to_string().contains("verison"));
    }
}
