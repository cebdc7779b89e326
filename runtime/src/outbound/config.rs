//! How the outbound client behaves: timeouts, pooling, caps and the address policy.

use std::time::Duration;

/// Settings of the one shared outbound client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time to resolve and connect (and finish TLS).
    pub connect_timeout: Duration,
    /// Time for a whole attempt: connect, send, response head and body prefix.
    pub total_timeout: Duration,
    /// Idle keep-alive connections kept per host. This bounds only *idle* connections:
    /// busy ones are never capped per host, so a hanging endpoint holding connections cannot
    /// make another endpoint wait for one. See [`DEFAULT_POOL_MAX_IDLE_PER_HOST`].
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

/// A host keeps no more idle connections than it had attempts in flight at once, so a host
/// with one endpoint keeps at most that endpoint's in-flight cap (8 by default) whatever this
/// is, and 10,000 such hosts cost what they did. Several endpoints on one host (a platform
/// that receives webhooks for many of its customers) share the host's pool: with 8, most of
/// their attempts closed a connection and opened another (`sluice bench deliver`: 8
/// endpoints on one receiver, 64 attempts in flight; 1.5–1.8× the deliveries/s with 64).
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 64;

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(15),
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
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
