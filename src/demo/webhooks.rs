//! Outbound delivery in `sluice run --demo`: a receiver on 127.0.0.1 in this process, two
//! endpoints subscribed to the demo's commerce events — `ok` answers 200, `flaky` is down for
//! its first three requests (503) and then recovers, so the summary shows retries with the
//! same `webhook-id` and nothing lost — and what arrived, each request's
//! Standard Webhooks signature checked. The endpoints are deleted once the summary is made,
//! so a later demo run does not inherit them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_delivery::endpoints::{new_id, Endpoint, EndpointSpec, EndpointTable, SecretValue};
use sluice_delivery::signing::sign_v1;
use sluice_runtime::kafka::KafkaClients;
use sluice_topology::{naming, Topology};

/// Every demo endpoint's description starts so: how a later run finds one an interrupted
/// run left behind.
const DESCRIPTION: &str = "sluice demo: ";

/// Requests the `flaky` endpoint fails before it recovers (fewer than its breaker's five
/// failures in a row, so its deliveries are retried rather than parked).
const FLAKY_FAILURES: usize = 3;

/// One request the receiver answered.
#[derive(Debug, Clone)]
struct Received {
    endpoint: String,
    webhook_id: String,
    status: u16,
    signature_valid: bool,
}

#[derive(Clone)]
struct Receiver {
    /// Each endpoint's secret, by its path.
    secrets: Arc<BTreeMap<String, SecretValue>>,
    log: Arc<Mutex<Vec<Received>>>,
}

/// What reached one endpoint.
#[derive(Debug, Default)]
pub struct EndpointReport {
    pub delivered: usize,
    pub failed_attempts: usize,
    pub bad_signatures: usize,
}

/// The demo's endpoints and their receiver.
pub struct DemoWebhooks {
    endpoints: Vec<Endpoint>,
    receiver: Receiver,
    producer: FutureProducer,
    topic: String,
}

/// Starts the receiver and writes the endpoints; `None` when the topology has no delivery.
pub async fn start(
    clients: &KafkaClients,
    topology: &Topology,
) -> anyhow::Result<Option<DemoWebhooks>> {
    if !topology
        .retry_policies
        .iter()
        .any(|p| p.name == naming::DELIVERY_POLICY)
    {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("starting the demo's webhook receiver")?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut endpoints = Vec::new();
    let mut secrets = BTreeMap::new();
    for (name, schedule) in [("ok", vec!["1s"]), ("flaky", vec!["1s", "1s", "2s", "5s"])] {
        let spec: EndpointSpec = serde_json::from_value(serde_json::json!({
            "url": format!("{base}/demo/{name}"),
            "event_types": ["dev.sluice.events.commerce.*"],
            "description": format!("{DESCRIPTION}{name}"),
            "retry_schedule": schedule,
        }))?;
        let (endpoint, secret) = Endpoint::create(spec, new_id(), jiff::Timestamp::now())?;
        secrets.insert(name.to_string(), secret);
        endpoints.push(endpoint);
    }
    let receiver = Receiver {
        secrets: Arc::new(secrets),
        log: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/demo/{name}", axum::routing::post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the demo's webhook receiver stopped");
        }
    });
    let topic = naming::endpoints_topic(&topology.prefix);
    let left_behind: Vec<Endpoint> = {
        let (c, t) = (clients.clone(), topic.clone());
        let (table, _) = tokio::task::spawn_blocking(move || EndpointTable::load(&c, &t)).await??;
        table
            .list()
            .into_iter()
            .filter(|e| e.description.starts_with(DESCRIPTION))
            .collect()
    };
    let demo = DemoWebhooks {
        endpoints: left_behind,
        receiver,
        producer: clients.producer("demo-endpoints")?,
        topic,
    };
    // An interrupted run could not delete its endpoints, whose receiver is gone: do it now.
    demo.remove().await;
    let demo = DemoWebhooks { endpoints, ..demo };
    for e in &demo.endpoints {
        demo.write(&e.id, Some(serde_json::to_vec(e)?)).await?;
    }
    Ok(Some(demo))
}

/// Answers one delivery: checks its signature, fails the `flaky` endpoint's first attempts.
async fn receive(
    State(r): State<Receiver>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let webhook_id = header("webhook-id").to_string();
    let signature_valid = match (
        r.secrets.get(&name),
        header("webhook-timestamp").parse::<i64>(),
    ) {
        (Some(secret), Ok(ts)) => {
            let expected = sign_v1(secret, &webhook_id, ts, &body);
            header("webhook-signature")
                .split(' ')
                .any(|s| s == expected)
        }
        _ => false,
    };
    let mut log = r.log.lock().unwrap_or_else(|e| e.into_inner());
    let before = log.iter().filter(|x| x.endpoint == name).count();
    let status = if !signature_valid {
        StatusCode::UNAUTHORIZED
    } else if name == "flaky" && before < FLAKY_FAILURES {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    log.push(Received {
        endpoint: name,
        webhook_id,
        status: status.as_u16(),
        signature_valid,
    });
    status
}

impl DemoWebhooks {
    async fn write(&self, id: &str, value: Option<Vec<u8>>) -> anyhow::Result<()> {
        let mut record = FutureRecord::<str, Vec<u8>>::to(&self.topic).key(id);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("writing demo endpoint {id}: {e}"))?;
        Ok(())
    }

    /// Waits (up to 45 s) until both endpoints have taken every delivery that arrived and
    /// nothing new came for three seconds; what each one saw.
    pub async fn settle(&self) -> BTreeMap<String, EndpointReport> {
        let mut last = usize::MAX;
        for _ in 0..45 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let log = self.snapshot();
            let pending = ["ok", "flaky"].iter().any(|name| {
                let ids: BTreeSet<&str> = log
                    .iter()
                    .filter(|r| r.endpoint == *name)
                    .map(|r| r.webhook_id.as_str())
                    .collect();
                ids.iter().any(|id| {
                    !log.iter()
                        .any(|r| r.endpoint == *name && r.webhook_id == *id && r.status == 200)
                })
            });
            if !pending && !log.is_empty() && log.len() == last {
                break;
            }
            last = log.len();
        }
        let mut out: BTreeMap<String, EndpointReport> = BTreeMap::new();
        for r in self.snapshot() {
            let report = out.entry(r.endpoint.clone()).or_default();
            match r.status {
                200 => report.delivered += 1,
                _ => report.failed_attempts += 1,
            }
            report.bad_signatures += usize::from(!r.signature_valid);
        }
        out
    }

    fn snapshot(&self) -> Vec<Received> {
        self.receiver
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Deletes the demo's endpoints (tombstones), so later runs start without them.
    pub async fn remove(&self) {
        for e in &self.endpoints {
            if let Err(error) = self.write(&e.id, None).await {
                tracing::warn!(%error, "removing a demo endpoint");
            }
        }
    }
}
