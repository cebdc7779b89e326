//! The one outbound HTTP client every sender shares.
//!
//! One `reqwest::Client` (one connection pool, keep-alive per host) with the SSRF guard as
//! its resolver, no proxy (a proxy would resolve the target itself, around the guard), and
//! no redirects (a 3xx is a failed attempt carrying its status).

use std::sync::Arc;

use reqwest::header::HeaderName;

use super::attempt::{send_once, Attempt};
use super::config::ClientConfig;
use super::request::OutboundRequest;
use super::ssrf::{AddressPolicy, BadCidr, GuardedResolver};

/// The client could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("outbound allowlist: {0}")]
    Allowlist(#[from] BadCidr),
    #[error("outbound keep_headers: `{0}` is not a header name")]
    HeaderName(String),
    #[error("building the outbound HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Sends single attempts. Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct OutboundClient {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    config: Arc<ClientConfig>,
    keep: Arc<[HeaderName]>,
}

impl OutboundClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let policy = Arc::new(
            AddressPolicy::new()
                .allow(&config.allow)?
                .https_only(config.https_only),
        );
        let keep = config
            .keep_headers
            .iter()
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ClientError::HeaderName(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&policy))))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .tcp_nodelay(true)
            .https_only(config.https_only)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            http,
            policy,
            config: Arc::new(config),
            keep: keep.into(),
        })
    }

    /// Sends `request` once and says what happened. Never fails: every failure is a verdict.
    pub async fn attempt(&self, request: &OutboundRequest) -> Attempt {
        send_once(&self.http, &self.policy, &self.config, &self.keep, request).await
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }
}
