//! The HTTP gateway (`sluice gateway`): webhook ingestion and the publish API on one port.
//!
//! `POST /webhooks/{source}` verifies the provider's signature, writes the delivery byte for
//! byte to the source's raw topic (see [`raw_record`]) and answers 202 only after Kafka's
//! delivery report; when Kafka does not acknowledge within `gateway.produce_timeout_ms` it
//! answers 503 with `Retry-After`, so the provider redelivers and nothing is lost. Duplicates
//! are expected (providers redeliver, clients retry): deduplication is the normalizer's job.
//!
//! `POST /v1/events/{event_type}` is the publish API ([`crate::publish::http`]);
//! `/v1/endpoints` manages outbound webhook endpoints ([`crate::endpoints`]), and
//! `GET /openapi.json` describes both.
//!
//! [`run`] is the whole process: admin server (`/metrics`, `/health/*` with the `kafka`
//! readiness check), gateway, graceful shutdown that stops accepting, finishes in-flight
//! requests and flushes the producer.
//!
//! Both servers are served by [`sluice_runtime::serve`]: a header read timeout, an idle
//! timeout, and caps on connections and in-flight requests (`gateway.header_read_timeout_ms`,
//! `idle_timeout_ms`, `max_connections`, `max_in_flight_requests`), so slow or greedy
//! clients cannot exhaust the process. Verification failures are budgeted per client address
//! ([`rate_limit::ClientFailures`]); rate limits are charged only by verified traffic.

pub mod config;
pub mod errors;
pub mod metrics;
pub mod rate_limit;
pub mod raw_record;
pub mod readiness;
pub(crate) mod routes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rdkafka::producer::{FutureProducer, Producer};
use sluice_runtime::admin::{self, Readiness};
use sluice_runtime::config::GatewayConfig;
use sluice_runtime::kafka::{ClientError, KafkaClients};
use sluice_runtime::serve::ServeLimits;
use sluice_runtime::{Shutdown, SluiceConfig};
use sluice_schemas::{Catalog, RegistryClient, RegistryError};
use sluice_topology::Topology;

use self::config::{build_sources, Source, SourceError};
use self::metrics::GatewayMetrics;
use self::rate_limit::ClientFailures;
use crate::endpoints::EndpointsApi;
use crate::publish::auth::{TokenError, Tokens};
use crate::publish::http::PublishApi;
use crate::publish::idempotency::IdempotencyStore;
use crate::publish::{Publisher, PublisherBuildError, PublisherOptions};
use sluice_delivery::endpoints::TableError;
use sluice_runtime::config::Scope;

/// How long shutdown waits for queued records to be delivered.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the per-client failure budgets forget clients whose budget is full again.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Kafka(#[from] ClientError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("publish API: {0}")]
    Publisher(#[from] PublisherBuildError),
    #[error("endpoints API: {0}")]
    Endpoints(#[from] TableError),
    #[error("registering gateway metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {listen} ({what}): {source}")]
    Bind {
        what: &'static str,
        listen: String,
        source: std::io::Error,
    },
    #[error("the gateway server failed: {0}")]
    Serve(std::io::Error),
}

/// Shared by every request handler.
pub(crate) struct AppState {
    pub(crate) sources: BTreeMap<String, Arc<Source>>,
    pub(crate) producer: FutureProducer,
    pub(crate) produce_timeout: Duration,
    pub(crate) retry_after_secs: u64,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) publish: PublishApi,
    pub(crate) endpoints: EndpointsApi,
    /// Verification failures (signatures, bearer tokens) per client address.
    pub(crate) failures: ClientFailures,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("produce_timeout", &self.produce_timeout)
            .field("publish", &self.publish)
            .finish()
    }
}

/// A built gateway: sources verified, producer created, schema ids resolved.
#[derive(Debug, Clone)]
pub struct Gateway {
    state: Arc<AppState>,
    limits: ServeLimits,
}

impl Gateway {
    /// Builds everything that can fail before the port opens. The publish API is enabled
    /// when a token in `config.publish_tokens` has the `publish` scope (it then needs the
    /// registry); the endpoints API when one has the `admin` scope (it then reads
    /// `<prefix>.state.endpoints` to its end first).
    pub async fn build(
        config: &GatewayConfig,
        clients: &KafkaClients,
        registry: &RegistryClient,
        catalog: &Catalog,
        topology: &Topology,
        metrics: &prometheus::Registry,
    ) -> Result<Self, GatewayError> {
        let sources = build_sources(topology)?;
        let routed: BTreeSet<String> = topology
            .routes
            .iter()
            .map(|r| r.event_type.clone())
            .collect();
        let tokens = Tokens::resolve(&config.publish_tokens, &routed)?;
        let produce_timeout = Duration::from_millis(config.produce_timeout_ms.max(1));
        let producer = crate::produce::producer(clients, "gateway", produce_timeout)?;
        // A retry sooner than a produce attempt takes would just queue behind it.
        let retry_after_secs = produce_timeout.as_secs().max(1);
        let publisher = if tokens.any_with(Scope::Publish) {
            Some(Arc::new(
                Publisher::with_producer(
                    producer.clone(),
                    registry,
                    catalog,
                    topology,
                    PublisherOptions {
                        produce_timeout,
                        ..PublisherOptions::default()
                    },
                )
                .await?,
            ))
        } else {
            tracing::info!(
                "publish API disabled: no gateway.publish_tokens with the publish scope"
            );
            None
        };
        let endpoints = if tokens.any_with(Scope::Admin) {
            let known = catalog.event_types().map(str::to_string).collect();
            EndpointsApi::load(clients, registry, &topology.prefix, known).await?
        } else {
            tracing::info!(
                "endpoints API disabled: no gateway.publish_tokens with the admin scope"
            );
            EndpointsApi::disabled()
        };
        let publish = PublishApi::new(
            publisher,
            tokens,
            IdempotencyStore::new(
                Duration::from_secs(config.idempotency_window_secs),
                config.idempotency_max_keys,
            ),
            retry_after_secs,
        );
        Ok(Self {
            state: Arc::new(AppState {
                sources,
                producer,
                produce_timeout,
                retry_after_secs,
                metrics: GatewayMetrics::register(metrics)?,
                publish,
                endpoints,
                failures: ClientFailures::new(
                    config.client_failures_per_minute,
                    config.client_failure_burst,
                ),
            }),
            limits: config.serve_limits(),
        })
    }

    /// The HTTP routes, for serving or for tests.
    pub fn router(&self) -> Router {
        routes::router(self.state.clone())
    }

    /// Names of the configured webhook sources.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.state.sources.keys().map(String::as_str)
    }

    /// The gateway's producer (shared with the publish API).
    pub fn producer(&self) -> &FutureProducer {
        &self.state.producer
    }

    /// Prunes the per-client failure budgets every [`PRUNE_INTERVAL`] until `shutdown`, so
    /// their memory follows the clients failing now, not every client ever seen.
    fn spawn_pruner(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => state.failures.prune(),
                    _ = shutdown.wait() => return,
                }
            }
        })
    }

    /// Starts the `kafka` readiness probe (see [`readiness`]).
    pub fn spawn_kafka_probe(
        &self,
        readiness: Readiness,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let mut raw_topics: Vec<String> = self
            .state
            .sources
            .values()
            .map(|s| s.raw_topic.clone())
            .collect();
        raw_topics.sort();
        raw_topics.dedup();
        readiness::spawn_kafka_probe(self.state.producer.clone(), raw_topics, readiness, shutdown)
    }

    /// Serves until `shutdown` with the configured [`ServeLimits`]: then stops accepting,
    /// lets in-flight requests finish, and flushes the producer.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: Shutdown,
    ) -> Result<(), GatewayError> {
        let app = self.router();
        let pruner = self.spawn_pruner(shutdown.clone());
        let follower = self.state.endpoints.spawn_follower(shutdown.clone());
        sluice_runtime::serve::serve(listener, app, self.limits, shutdown)
            .await
            .map_err(GatewayError::Serve)?;
        pruner.abort();
        if let Some(follower) = follower {
            follower.abort();
        }
        tracing::info!("gateway stopped accepting; flushing the producer");
        let producer = self.state.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(FLUSH_TIMEOUT))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        if flushed {
            tracing::info!("producer flushed; gateway stopped");
        } else {
            tracing::warn!("producer flush did not complete within {FLUSH_TIMEOUT:?}");
        }
        Ok(())
    }
}

/// Runs the gateway process until `shutdown`: the admin server on `config.admin.listen`
/// (with this process's metrics and readiness) and the gateway on `config.gateway.listen`.
pub async fn run(
    config: &SluiceConfig,
    catalog: &Catalog,
    topology: &Topology,
    shutdown: Shutdown,
) -> Result<(), GatewayError> {
    let metrics = prometheus::Registry::new();
    let readiness = Readiness::default();
    readiness.set(readiness::CHECK, false);
    admin::serve(
        &config.admin.listen,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|source| GatewayError::Bind {
        what: "admin",
        listen: config.admin.listen.clone(),
        source,
    })?;
    let clients = KafkaClients::new(config.kafka.clone());
    let registry = RegistryClient::new(&config.registry)?;
    let gateway = Gateway::build(
        &config.gateway,
        &clients,
        &registry,
        catalog,
        topology,
        &metrics,
    )
    .await?;
    let bind_error = |source| GatewayError::Bind {
        what: "gateway",
        listen: config.gateway.listen.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    tracing::info!(
        %addr,
        sources = gateway.sources().collect::<Vec<_>>().join(","),
        "gateway listening on http://{addr} (POST /webhooks/{{source}}, POST /v1/events/{{event_type}}, /v1/endpoints, GET /openapi.json)"
    );
    let probe = gateway.spawn_kafka_probe(readiness, shutdown.clone());
    gateway.serve(listener, shutdown).await?;
    let _ = probe.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The routes that answer before anything is produced, served in-process. Nothing here
    //! reaches a broker: the producer points at a closed port and is never used.
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const SECRET: &str = "gateway-unit-test-secret";

    async fn gateway() -> (Gateway, prometheus::Registry) {
        std::env::set_var("SLUICE_GATEWAY_UNIT_SECRET", SECRET);
        let yaml = "topics:\n  - {name: sluice.raw.a, partitions: 1}\nsources:\n  - {name: gh, provider: {type: github}, secrets: [{env: SLUICE_GATEWAY_UNIT_SECRET}], raw_topic: sluice.raw.a, limits: {max_body_bytes: 64}}\n  - {name: limited, provider: {type: github}, secrets: [{env: SLUICE_GATEWAY_UNIT_SECRET}], raw_topic: sluice.raw.a, limits: {rate_per_sec: 1, burst: 2}}\n";
        let topology = Topology::parse("t.yaml", yaml, &Default::default()).unwrap();
        let kafka = sluice_runtime::config::KafkaConfig {
            bootstrap_servers: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let registry = RegistryClient::new(&Default::default()).unwrap();
        let metrics = prometheus::Registry::new();
        let g = Gateway::build(
            &GatewayConfig::default(),
            &KafkaClients::new(kafka),
            &registry,
            &Catalog::embedded().unwrap(),
            &topology,
            &metrics,
        )
        .await
        .unwrap();
        (g, metrics)
    }

    async fn call(
        g: &Gateway,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let r = g.router().oneshot(req).await.unwrap();
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    fn post(uri: &str, body: &'static str) -> Request<Body> {
        Request::post(uri).body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn rejections_are_json_with_stable_codes() {
        let (g, metrics) = gateway().await;
        let (s, _, j) = call(&g, post("/webhooks/nope", "{}")).await;
        assert_eq!(
            (s.as_u16(), &j["error"]["code"]),
            (404, &"unknown_source".into())
        );

        let (s, h, j) = call(
            &g,
            Request::get("/webhooks/gh").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(h["allow"], "POST");
        assert_eq!(j["error"]["code"], "method_not_allowed");

        let (s, _, j) = call(&g, post("/elsewhere", "")).await;
        assert_eq!(
            (s.as_u16(), &j["error"]["code"]),
            (404, &"not_found".into())
        );

        let (s, _, j) = call(&g, post("/webhooks/gh", "{}")).await;
        assert_eq!(
            (s.as_u16(), &j["error"]["code"]),
            (400, &"missing_signature".into())
        );

        let req = Request::post("/webhooks/gh")
            .header("x-hub-signature-256", format!("sha256={}", "00".repeat(32)))
            .body(Body::from("{}"))
            .unwrap();
        let (s, _, j) = call(&g, req).await;
        assert_eq!(
            (s.as_u16(), &j["error"]["code"]),
            (401, &"invalid_signature".into())
        );
        assert!(!j.to_string().contains(SECRET));

        let big = "x".repeat(65);
        let req = Request::post("/webhooks/gh").body(Body::from(big)).unwrap();
        let (s, _, j) = call(&g, req).await;
        assert_eq!(
            (s.as_u16(), &j["error"]["code"]),
            (413, &"body_too_large".into())
        );

        let text = String::from_utf8({
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &metrics.gather(),
                &mut buf,
            )
            .unwrap();
            buf
        })
        .unwrap();
        assert!(
            text.contains(
                r#"sluice_gateway_requests_total{outcome="unknown_source",source="unknown"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_gateway_verification_failures_total{reason="invalid_signature",source="gh"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("nope"),
            "unknown source names never become labels"
        );
    }

    #[tokio::test]
    async fn unsigned_requests_spend_the_client_failure_budget_not_the_source_rate_limit() {
        let (g, _) = gateway().await;
        let burst = GatewayConfig::default().client_failure_burst;
        // Far more unsigned requests than the source's burst of 2: none is `rate_limited`.
        for _ in 0..burst {
            let (s, _, j) = call(&g, post("/webhooks/limited", "{}")).await;
            assert_eq!(
                (s.as_u16(), &j["error"]["code"]),
                (400, &"missing_signature".into())
            );
        }
        // The next failure is over the client's budget.
        let (s, h, j) = call(&g, post("/webhooks/limited", "{}")).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(j["error"]["code"], "too_many_failures");
        assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
        // From now on the client is refused before its body is read: a body that fails
        // when read would otherwise answer 400 `body_read_failed`.
        let broken = futures::stream::iter([Err::<axum::body::Bytes, _>(std::io::Error::other(
            "never read",
        ))]);
        let req = Request::post("/webhooks/gh")
            .body(Body::from_stream(broken))
            .unwrap();
        let (s, _, j) = call(&g, req).await;
        assert_eq!(
            (s.as_u16(), &j["error"]["code"]),
            (429, &"too_many_failures".into())
        );
        // And the publish API shares the budget: a bad token is not even looked at.
        let req = Request::post("/v1/events/dev.sluice.events.payments.PaymentSucceeded")
            .header("authorization", "Bearer whatever-token-value")
            .body(Body::from("{}"))
            .unwrap();
        let (s, _, j) = call(&g, req).await;
        assert_eq!(
            (s.as_u16(), &j["error"]["code"]),
            (429, &"too_many_failures".into())
        );
    }

    #[tokio::test]
    async fn publish_without_configured_tokens_is_unauthorized() {
        let (g, _) = gateway().await;
        let req = Request::post("/v1/events/dev.sluice.events.payments.PaymentSucceeded")
            .header("authorization", "Bearer whatever-token-value")
            .body(Body::from("{}"))
            .unwrap();
        let (s, h, j) = call(&g, req).await;
        assert_eq!(
            (s.as_u16(), &j["error"]["code"]),
            (401, &"unauthorized".into())
        );
        assert_eq!(h["www-authenticate"], "Bearer");
    }

    #[tokio::test]
    async fn endpoints_without_an_admin_token_are_unauthorized_and_openapi_is_served() {
        let (g, _) = gateway().await;
        for (method, uri) in [
            ("GET", "/v1/endpoints"),
            ("POST", "/v1/endpoints"),
            ("PATCH", "/v1/endpoints/ep_1"),
            ("POST", "/v1/endpoints/ep_1/rotate-secret"),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", "Bearer whatever-token-value")
                .body(Body::from("{}"))
                .unwrap();
            let (s, _, j) = call(&g, req).await;
            assert_eq!(
                (s.as_u16(), &j["error"]["code"]),
                (401, &"unauthorized".into()),
                "{method} {uri}"
            );
        }
        let put = Request::put("/v1/endpoints/ep_1").body(Body::empty());
        let (s, h, _) = call(&g, put.unwrap()).await;
        assert_eq!(
            (s.as_u16(), h["allow"].to_str().unwrap()),
            (405, "GET, PATCH, DELETE")
        );
        let openapi = Request::get("/openapi.json").body(Body::empty());
        let (s, h, j) = call(&g, openapi.unwrap()).await;
        assert_eq!(
            (s.as_u16(), h["content-type"].to_str().unwrap()),
            (200, "application/json")
        );
        assert_eq!(j["openapi"], "3.1.0");
    }
}
