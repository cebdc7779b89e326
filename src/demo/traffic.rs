//! Demo traffic: signed deliveries built from the real fixtures for every provider, with a
//! redelivery, a bad signature, a stale timestamp, a poison payload and an unmapped event
//! type, sent to a running gateway; then a summary of what the pipeline made of them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_producers::sign;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_sagas::http::{recorded_calls, RecordedCall};
use sluice_schemas::metadata::now_ms;
use sluice_topology::Topology;

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!("../../tests/fixtures/webhooks/", $path)).as_slice()
    };
}

/// The fixed P-256 key the demo signs SendGrid batches with; its public half is in
/// dev/demo.env. Demo-only: it signs nothing but local test traffic.
const DEMO_SENDGRID_KEY: [u8; 32] = [7; 32];

/// One request to send and why.
struct Delivery {
    what: &'static str,
    source: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Summary {
    /// (what, HTTP status, code) per delivery sent.
    pub sent: Vec<(String, u16, String)>,
    pub events: BTreeMap<String, usize>,
    pub dead_letters: BTreeMap<String, usize>,
    /// The demo's sagas by state (completed, compensated, parked, still running).
    pub sagas: BTreeMap<String, usize>,
    /// The HTTP calls the demo's sagas made (saga id, call), from their state.
    pub http_calls: Vec<(String, RecordedCall)>,
    /// Lag status of every consumer group.
    pub lag: Vec<(String, String)>,
    /// What the demo's webhook endpoints received, by endpoint.
    pub webhooks: BTreeMap<String, super::webhooks::EndpointReport>,
}

fn secret(topology: &Topology, source: &str) -> anyhow::Result<String> {
    let s = topology
        .sources
        .iter()
        .find(|s| s.name == source)
        .with_context(|| format!("the topology has no `{source}` source"))?;
    let first = s
        .secrets
        .first()
        .with_context(|| format!("source `{source}` has no secret"))?;
    first.resolve().with_context(|| {
        format!("source `{source}`: set its secret (dev/demo.env has demo values)")
    })
}

fn deliveries(topology: &Topology) -> anyhow::Result<Vec<Delivery>> {
    let now = now_ms() / 1000;
    let stripe = secret(topology, "stripe")?;
    let github = secret(topology, "github")?;
    let shopify = secret(topology, "shopify")?;
    let slack = secret(topology, "slack")?;
    let standard = secret(topology, "standard-webhooks")?;
    let generic = secret(topology, "generic")?;
    let mut out = Vec::new();
    // Provider ids get this run's suffix, so each demo run's deliveries are new to the
    // normalizer's dedup (the redelivery below repeats one of this run's ids).
    let run = now_ms();
    let stripe_delivery = |what, body: &[u8], t: i64| {
        let body = with_run_id(body, run, |v, suffix| {
            if let Some(id) = v["id"].as_str() {
                v["id"] = format!("{id}_{suffix}").into();
            }
        });
        Delivery {
            what,
            source: "stripe",
            headers: sign::stripe(&stripe, t, &body),
            body,
        }
    };
    let payment = fixture!("stripe/payment_intent.succeeded.json");
    out.push(stripe_delivery(
        "stripe payment_intent.succeeded",
        payment,
        now,
    ));
    out.push(stripe_delivery(
        "stripe redelivery of the same event",
        payment,
        now,
    ));
    out.push(stripe_delivery(
        "stripe payment_intent.payment_failed",
        fixture!("stripe/payment_intent.payment_failed.json"),
        now,
    ));
    out.push(stripe_delivery(
        "stripe charge.refunded",
        fixture!("stripe/charge.refunded.json"),
        now,
    ));
    out.push(stripe_delivery(
        "stripe customer.subscription.updated",
        fixture!("stripe/customer.subscription.updated.json"),
        now,
    ));
    out.push(stripe_delivery(
        "stripe invoice.paid",
        fixture!("stripe/invoice.paid.json"),
        now,
    ));
    let unmapped = br#"{"id":"evt_demo_unmapped","object":"event","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_demo"}}}"#;
    out.push(stripe_delivery(
        "stripe customer.created (no mapping)",
        unmapped,
        now,
    ));
    let mut tampered = stripe_delivery("stripe with a bad signature", payment, now);
    tampered.body.push(b' ');
    out.push(tampered);
    out.push(stripe_delivery(
        "stripe replayed 10 minutes late",
        payment,
        now - 600,
    ));

    for (what, event, file) in [
        ("github push", "push", fixture!("github/push.json")),
        (
            "github pull_request opened",
            "pull_request",
            fixture!("github/pull_request.opened.json"),
        ),
        (
            "github pull_request merged",
            "pull_request",
            fixture!("github/pull_request.closed.merged.json"),
        ),
        (
            "github issues opened",
            "issues",
            fixture!("github/issues.opened.json"),
        ),
    ] {
        // GitHub signs the body only, so the gateway deduplicates on the body too (a replay
        // under a fresh delivery id is dropped): each run's bodies carry the run.
        let body = with_run_id(file, run, |v, suffix| {
            v["sluice_demo_run"] = suffix.into();
        });
        out.push(Delivery {
            what,
            source: "github",
            headers: sign::github(
                &github,
                event,
                &format!("demo-{}-{}", event, now_ms()),
                &body,
            ),
            body,
        });
    }
    for (what, topic, file) in [
        (
            "shopify orders/create",
            "orders/create",
            fixture!("shopify/orders.create.json"),
        ),
        (
            "shopify orders/paid",
            "orders/paid",
            fixture!("shopify/orders.paid.json"),
        ),
        (
            "shopify orders/cancelled",
            "orders/cancelled",
            fixture!("shopify/orders.cancelled.json"),
        ),
    ] {
        // Shopify signs the body only too: each run's orders get ids of their own.
        let body = with_run_id(file, run, |v, suffix| {
            if let Some(id) = v["id"].as_u64() {
                v["id"] = format!("{id}-{suffix}").into();
            }
        });
        out.push(Delivery {
            what,
            source: "shopify",
            headers: sign::shopify(
                &shopify,
                topic,
                &format!("demo-{}-{}", topic.replace('/', "-"), now_ms()),
                &body,
            ),
            body,
        });
    }
    let batch = &with_run_id(fixture!("sendgrid/events.json"), run, |v, suffix| {
        for e in v.as_array_mut().into_iter().flatten() {
            if let Some(id) = e["sg_event_id"].as_str() {
                e["sg_event_id"] = format!("{id}_{suffix}").into();
            }
        }
    });
    let (headers, _) =
        sign::sendgrid(&DEMO_SENDGRID_KEY, now, batch).context("signing the SendGrid batch")?;
    out.push(Delivery {
        what: "sendgrid event batch",
        source: "sendgrid",
        headers,
        body: batch.to_vec(),
    });
    let message = &with_run_id(
        fixture!("slack/event_callback.message.json"),
        run,
        |v, suffix| {
            if let Some(id) = v["event_id"].as_str() {
                v["event_id"] = format!("{id}_{suffix}").into();
            }
        },
    );
    out.push(Delivery {
        what: "slack event_callback",
        source: "slack",
        headers: sign::slack(&slack, now, message),
        body: message.to_vec(),
    });
    let user =
        br#"{"type":"user.created","timestamp":"2026-11-22T10:00:00Z","data":{"id":"u_demo"}}"#;
    let headers = sign::standard_webhooks(&standard, &format!("msg_demo_{}", now_ms()), now, user)
        .context("the standard-webhooks secret must be whsec_<base64>")?;
    out.push(Delivery {
        what: "standard webhooks user.created",
        source: "standard-webhooks",
        headers,
        body: user.to_vec(),
    });
    for (what, body) in [
        (
            "generic HMAC invoice.created",
            br#"{"type":"invoice.created","id":"inv_demo"}"#.as_slice(),
        ),
        (
            "generic HMAC poison payload (not JSON)",
            b"<xml>not json</xml>".as_slice(),
        ),
    ] {
        let t = now.to_string();
        let mut content = t.as_bytes().to_vec();
        content.push(b'.');
        content.extend_from_slice(body);
        // The generic source in topology.yaml: sha256, hex, prefix "sha256=", timestamp_and_body.
        let sig = sign::hmac_sha256_hex(generic.as_bytes(), &content);
        out.push(Delivery {
            what,
            source: "generic",
            headers: vec![
                ("X-Signature", format!("sha256={sig}")),
                ("X-Timestamp", t),
                ("X-Delivery-Id", format!("gen-{}-{}", what.len(), now_ms())),
                ("X-Event-Type", "invoice.created".into()),
            ],
            body: body.to_vec(),
        });
    }
    Ok(out)
}

/// A demo order as a backend service publishes it; SKUs `FAIL-<ROLE>` make the demo
/// participants fail that saga step (see consumers/sagas/src/demo.rs).
fn order(id: &str, skus: &[&str]) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = skus
        .iter()
        .map(|sku| {
            serde_json::json!({"sku": sku, "title": format!("Demo item {sku}"), "quantity": 1,
                "unit_price": {"amount": "19.99", "currency": "EUR"}})
        })
        .collect();
    serde_json::json!({
        "subject": id, "order_id": id, "order_number": format!("#{id}"),
        "customer_email": "demo@example.com",
        "total": {"amount": format!("{:.2}", 19.99 * skus.len() as f64), "currency": "EUR"},
        "line_items": lines, "provider": "demo-shop",
    })
}

/// `body` (JSON) with `edit` applied to give its provider ids this run's suffix.
fn with_run_id(body: &[u8], run: i64, edit: impl Fn(&mut serde_json::Value, &str)) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            edit(&mut v, &run.to_string());
            serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
        }
        Err(_) => body.to_vec(),
    }
}

/// Domain events from a backend service through the publish API: orders that start sagas
/// (some fail a step and compensate), and one that does not fit its schema.
async fn publish(
    config: &SluiceConfig,
    http: &reqwest::Client,
    gateway: &str,
    summary: &mut Summary,
) -> anyhow::Result<Option<String>> {
    let Some(token) = config.gateway.publish_tokens.first() else {
        summary.sent.push((
            "publish API (no gateway.publish_tokens configured)".into(),
            0,
            "skipped".into(),
        ));
        return Ok(None);
    };
    let token = token.token.resolve()?;
    let run = now_ms();
    let mut orders: Vec<(String, serde_json::Value)> = Vec::new();
    for (name, skus) in [
        ("ok-1", vec!["WIDGET"]),
        ("ok-2", vec!["WIDGET", "GADGET"]),
        ("ok-3", vec!["GADGET"]),
        ("fails-payment", vec!["WIDGET", "FAIL-PAYMENTS"]),
        ("fails-shipping", vec!["FAIL-SHIPPING"]),
    ] {
        let id = format!("demo-{run}-{name}");
        orders.push((format!("publish OrderPlaced {name}"), order(&id, &skus)));
    }
    let mut bad = order(&format!("demo-{run}-bad"), &["WIDGET"]);
    bad["total"]["amount"] = serde_json::json!(19.99);
    orders.push(("publish OrderPlaced with a float amount".into(), bad));
    for (what, body) in orders {
        let resp = http
            .post(format!(
                "{gateway}/v1/events/dev.sluice.events.commerce.OrderPlaced"
            ))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("publishing to {gateway}"))?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let fallback = if status < 300 { "accepted" } else { "" };
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or(fallback)
            .to_string();
        summary.sent.push((what, status, code));
    }
    Ok(Some(format!("demo-{run}-")))
}

/// Sends the demo deliveries to `gateway` and waits for the pipeline to settle.
pub async fn drive(
    config: &SluiceConfig,
    topology: &Topology,
    gateway: &str,
) -> anyhow::Result<Summary> {
    let start = now_ms();
    let http = reqwest::Client::new();
    let mut summary = Summary::default();
    let clients = KafkaClients::new(config.kafka.clone());
    let webhooks = super::webhooks::start(&clients, topology).await?;
    if webhooks.is_some() {
        // Time for `sluice deliver` to read the new endpoints before their events come.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let saga_prefix = publish(config, &http, gateway, &mut summary).await?;
    for d in deliveries(topology)? {
        let mut req = http
            .post(format!("{gateway}/webhooks/{}", d.source))
            .header("content-type", "application/json")
            .body(d.body);
        for (k, v) in &d.headers {
            req = req.header(*k, v);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("sending {} to {gateway}", d.what))?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or(body["status"].as_str().unwrap_or(""))
            .to_string();
        summary.sent.push((d.what.to_string(), status, code));
    }

    // Wait until the normalizer has caught up: nothing new for three seconds.
    let event_topics: Vec<String> = {
        let mut t: Vec<String> = topology.routes.iter().map(|r| r.topic.clone()).collect();
        t.sort();
        t.dedup();
        t
    };
    let dlqs: Vec<String> = topology
        .retry_policies
        .iter()
        .map(|p| p.dlq_topic.clone())
        .collect();
    let mut last = (usize::MAX, usize::MAX);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (c, e) = (clients.clone(), event_topics.clone());
        summary.events =
            tokio::task::spawn_blocking(move || count_since(&c, &e, start, "ce_type")).await??;
        let (c, d) = (clients.clone(), dlqs.clone());
        summary.dead_letters = tokio::task::spawn_blocking(move || {
            count_since(&c, &d, start, "kafka_dlt-exception-fqcn")
        })
        .await??;
        let now = (
            summary.events.values().sum(),
            summary.dead_letters.values().sum(),
        );
        if now == last && now.0 > 0 {
            break;
        }
        last = now;
    }
    if let Some(prefix) = saga_prefix {
        (summary.sagas, summary.http_calls) = wait_for_sagas(&clients, topology, &prefix).await?;
    }
    if let Some(w) = &webhooks {
        summary.webhooks = w.settle().await;
        w.remove().await;
    }
    summary.lag = lag_status(&clients).await;
    Ok(summary)
}

/// Waits (up to a minute) for the demo's sagas to reach a terminal state; their counts by
/// state, and the HTTP calls they recorded.
async fn wait_for_sagas(
    clients: &KafkaClients,
    topology: &Topology,
    prefix: &str,
) -> anyhow::Result<(BTreeMap<String, usize>, Vec<(String, RecordedCall)>)> {
    let mut counts = BTreeMap::new();
    let mut calls = Vec::new();
    for _ in 0..60 {
        let (c, t) = (clients.clone(), topology.clone());
        let instances =
            tokio::task::spawn_blocking(move || sluice_sagas::ops::list(&c, &t, None)).await??;
        counts.clear();
        calls.clear();
        let mut running = 0;
        for i in instances.iter().filter(|i| i.id.starts_with(prefix)) {
            *counts.entry(i.status.as_str().to_string()).or_default() += 1;
            running += usize::from(!i.status.is_terminal());
            calls.extend(recorded_calls(i).into_iter().map(|c| (i.id.clone(), c)));
        }
        if counts.values().sum::<usize>() >= 5 && running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    calls.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((counts, calls))
}

/// Every consumer group's Burrow-style status, from a short sampling window.
async fn lag_status(clients: &KafkaClients) -> Vec<(String, String)> {
    let c = clients.clone();
    tokio::task::spawn_blocking(move || -> Option<Vec<(String, String)>> {
        let collector = sluice_ops::lag::Collector::new(
            c,
            sluice_ops::lag::GroupFilter::new(["sluice*".to_string()]),
        )
        .ok()?;
        // A window of three; two more passes give the transaction-marker probes (from the
        // second pass on) room to tell an idle exactly-once group from a stalled one.
        let mut tracker = sluice_ops::lag::Tracker::new(3);
        let mut report = None;
        for _ in 0..5 {
            report = Some(tracker.observe(&collector.collect().ok()?));
            std::thread::sleep(Duration::from_millis(500));
        }
        Some(
            report?
                .groups
                .iter()
                .map(|g| (g.group.clone(), g.status.to_string()))
                .collect(),
        )
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Counts committed records written since `since_ms`, by the value of `header`.
fn count_since(
    clients: &KafkaClients,
    topics: &[String],
    since_ms: i64,
    header: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let consumer = clients.read_to_end_consumer("demo-count", "sluice-demo-count")?;
    let mut query = TopicPartitionList::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10))?;
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            query.add_partition_offset(t, p.id(), Offset::Offset(since_ms))?;
        }
    }
    let start = consumer.offsets_for_times(query, Duration::from_secs(10))?;
    let mut assign = TopicPartitionList::new();
    for e in start.elements() {
        if let Offset::Offset(o) = e.offset() {
            assign.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
        }
    }
    let mut counts = BTreeMap::new();
    let mut remaining = assign.count();
    if remaining == 0 {
        return Ok(counts);
    }
    consumer.assign(&assign)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while remaining > 0 && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(300)) {
            Some(Ok(m)) => {
                let key = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == header).and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_else(|| "(none)".into());
                *counts.entry(key).or_default() += 1;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => remaining -= 1,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(counts)
}

impl Summary {
    pub fn print(&self, metrics_url: &str, topology: &Topology) {
        println!("\n=== sluice demo summary ===");
        let accepted = self
            .sent
            .iter()
            .filter(|s| (200..300).contains(&s.1))
            .count();
        println!(
            "deliveries: {} sent, {accepted} accepted, {} rejected",
            self.sent.len(),
            self.sent.len() - accepted
        );
        for (what, status, code) in &self.sent {
            println!("  {status}  {code:<28} {what}");
        }
        let mut rejected: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, status, code) in &self.sent {
            if *status >= 300 {
                *rejected.entry(code.as_str()).or_default() += 1;
            }
        }
        println!("rejected by reason: {rejected:?}");
        println!(
            "normalized events by type ({} in all):",
            self.events.values().sum::<usize>()
        );
        for (t, n) in &self.events {
            println!("  {n:>4}  {t}");
        }
        println!(
            "dead letters by reason ({} in all):",
            self.dead_letters.values().sum::<usize>()
        );
        for (t, n) in &self.dead_letters {
            println!("  {n:>4}  {t}");
        }
        println!("sagas started by the demo's orders, by state:");
        for (state, n) in &self.sagas {
            println!("  {n:>4}  {state}");
        }
        if !self.http_calls.is_empty() {
            println!("HTTP calls of the sagas' http: steps (URLs without secrets):");
            let width = self.http_calls.iter().map(|(id, _)| id.len()).max();
            for (id, call) in &self.http_calls {
                println!("  {id:<w$}  {call}", w = width.unwrap_or_default());
            }
        }
        if !self.webhooks.is_empty() {
            println!("webhooks sent to the demo's local receiver (signed, Standard Webhooks):");
            for (endpoint, r) in &self.webhooks {
                println!(
                    "  {endpoint:<6} {} delivered, {} failed attempts retried, {} bad signatures",
                    r.delivered, r.failed_attempts, r.bad_signatures
                );
            }
        }
        println!("consumer groups (lag status):");
        for (group, status) in &self.lag {
            println!("  {status:<6} {group}");
        }
        let dlq = topology
            .retry_policies
            .first()
            .map_or("sluice.dlq.normalizer", |p| p.dlq_topic.as_str());
        println!("where to look next:");
        println!("  {metrics_url}");
        println!("  sluice tail sluice.events.payments --from-beginning --max 5");
        println!("  sluice dlq list {dlq}");
        println!("  sluice lag");
        println!("  sluice saga list --state compensated");
        if let Some((id, _)) = self.http_calls.first() {
            println!("  sluice saga show {id}");
        }
    }
}
