//! How the outbound client behaves: timeouts, pooling, caps and the address policy.

use std::time::Duration;

use super::limits::LimitsConfig;

/// Settings of the one shared outbound client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time to resolve and connect (and finish TLS).
    pub connect_timeout: Duration,
    /// Time for a whole attempt: connect, send, response head and body prefix.
    pub total_timeout: Duration,
    /// Idle keep-alive connections kept per host. This bounds only *idle* connections:
    /// busy ones are never capped per host, so a hanging endpoint holding connections cannot
    /// make another endpoint wait for one. As many as an endpoint's default in-flight cap,
    /// so one busy endpoint reuses its connections instead of opening one per attempt
    /// (connecting took about a seventh of the deliverer's CPU with 4); no more, because
    /// 10,000 endpoints each keeping many idle sockets would exhaust file descriptors.
    pub pool_max_idle_per_host: usize,
    /// How long an idle connection is kept.
    pub pool_idle_timeout: Duration,
    /// Bytes of a response body kept on the attempt; the rest is never read.
    pub body_prefix_limit: usize,
    /// Longest `Retry-After` honoured; longer requests are cut to this.
    pub retry_after_cap: Duration,
    /// Non-public addresses that may nevertheless be reached (CIDRs like `127.0.0.1/32`).
    pub allow: Vec<String>,
    /// Send only to `https` URLs.
    pub https_only: bool,
    /// The `User-Agent` of every request.
    pub user_agent: String,
    /// Response headers kept on the attempt (besides `retry-after`, `content-type` and
    /// `location`, which are always kept).
    pub keep_headers: Vec<String>,
}

/// Default bytes of response body kept: 64 KiB.
pub const DEFAULT_BODY_PREFIX_LIMIT: usize = 64 * 1024;

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(15),
            pool_max_idle_per_host: LimitsConfig::default().max_in_flight as usize,
            pool_idle_timeout: Duration::from_secs(90),
            body_prefix_limit: DEFAULT_BODY_PREFIX_LIMIT,
            retry_after_cap: Duration::from_secs(3600),
            allow: Vec::new(),
            https_only: false,
            user_agent: concat!("sluice/", env!("CARGO_PKG_VERSION")).to_owned(),
            keep_headers: Vec::new(),
        }
    }
}
