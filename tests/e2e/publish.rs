//! The publish API against the real broker and registry: over HTTP from a real
//! `sluice gateway`, and from Rust through `sluice_producers::publish::Publisher`.

use sluice_producers::publish::{PublishError, Publisher};
use sluice_runtime::kafka::KafkaClients;
use sluice_schemas::json::to_json_with_schema;
use sluice_schemas::metadata::{self, EventMetadata};
use sluice_schemas::{AvroCodec, Catalog, RecordLocation, RegistryClient};
use sluice_topology::Topology;

use crate::gateway::{
    apply_topology, post, record_at, record_count, register_schemas, unique_prefix, GatewayProcess,
};
use crate::support::{kafka, registry, require_stack, temp_file};

const PAYMENT: &str = "dev.sluice.events.payments.PaymentSucceeded";
const ORDER: &str = "dev.sluice.events.commerce.OrderPlaced";
const PUSH: &str = "dev.sluice.events.scm.CodePushed";

const BILLING_TOKEN: &str = "e2e-billing-token-0123456789";
const SHOP_TOKEN: &str = "e2e-shop-token-0123456789";
const METERED_TOKEN: &str = "e2e-metered-token-0123456789";

/// Payments and orders are registered; code pushes are routed but their subject is not.
fn topology(p: &str, with_unregistered: bool) -> String {
    let scm = if with_unregistered {
        format!("  - {{event_type: {PUSH}, topic: {p}.events.scm}}\n")
    } else {
        String::new()
    };
    format!(
        r#"prefix: {p}
topics:
  - {{name: {p}.events.payments, partitions: 3}}
  - {{name: {p}.events.commerce, partitions: 2}}
  - {{name: {p}.events.scm, partitions: 1}}
routes:
  - {{event_type: {PAYMENT}, topic: {p}.events.payments}}
  - {{event_type: {ORDER}, topic: {p}.events.commerce}}
{scm}"#
    )
}

const CONFIG: &str = r#"gateway:
  publish_tokens:
    - {name: billing, token: {env: E2E_PUBLISH_BILLING}, event_types: ["*"]}
    - {name: shop, token: {env: E2E_PUBLISH_SHOP}, event_types: [dev.sluice.events.commerce.OrderPlaced]}
    - {name: metered, token: {env: E2E_PUBLISH_METERED}, event_types: ["*"], rate_per_sec: 1, burst: 2, source: "sluice://metered-service"}
"#;

/// Applies and registers a fresh topology, then starts a gateway on it.
async fn start(tag: &str) -> (String, std::path::PathBuf, GatewayProcess) {
    require_stack().await;
    let p = unique_prefix(tag);
    let registered = apply_topology(&topology(&p, false)).await;
    register_schemas(&registered).await;
    let full = temp_file("topology.yaml", &topology(&p, true));
    let gw = GatewayProcess::start(
        &full,
        CONFIG,
        &[
            ("E2E_PUBLISH_BILLING", BILLING_TOKEN),
            ("E2E_PUBLISH_SHOP", SHOP_TOKEN),
            ("E2E_PUBLISH_METERED", METERED_TOKEN),
        ],
    )
    .await;
    (p, full, gw)
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn payment() -> serde_json::Value {
    serde_json::json!({
        "subject": "pi_e2e_publish",
        "payment_id": "pi_e2e_publish",
        "customer_id": "cus_e2e",
        "amount": {"amount": "20.00", "currency": "EUR"},
        "provider": "stripe"
    })
}

async fn decode(
    topic: &str,
    partition: i32,
    offset: i64,
    event_type: &str,
) -> (serde_json::Value, Vec<(String, Vec<u8>)>, Option<Vec<u8>>) {
    let rec = record_at(topic, partition, offset).await;
    let codec = AvroCodec::new(RegistryClient::new(&registry()).unwrap());
    let decoded = codec
        .decode(&rec.value, &RecordLocation::new(topic, partition, offset))
        .await
        .unwrap();
    let catalog = Catalog::embedded().unwrap();
    let schema = &catalog.latest(event_type).unwrap().schema;
    (
        to_json_with_schema(&decoded.value, schema),
        rec.headers,
        rec.key,
    )
}

#[tokio::test]
async fn a_published_event_decodes_from_its_routed_topic_with_cloudevents_headers() {
    let (p, _, gw) = start("pub").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, json) = post(
        &gw.url(&format!("/v1/events/{PAYMENT}")),
        &[bearer(BILLING_TOKEN), ("traceparent", traceparent.into())],
        serde_json::to_vec(&payment()).unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{json}");
    let topic = format!("{p}.events.payments");
    assert_eq!(json["topic"], topic.as_str());
    let event_id = json["event_id"].as_str().unwrap().to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&event_id).unwrap().get_version_num(),
        7
    );

    let (event, headers, key) = decode(
        &topic,
        json["partition"].as_i64().unwrap() as i32,
        json["offset"].as_i64().unwrap(),
        PAYMENT,
    )
    .await;
    assert_eq!(event["event_id"], event_id.as_str());
    assert_eq!(event["source"], "sluice://publishers/billing");
    assert_eq!(event["amount"]["amount"], "20.0000");
    assert_eq!(event["payment_id"], "pi_e2e_publish");
    assert_eq!(
        key.as_deref(),
        Some(&b"pi_e2e_publish"[..]),
        "keyed by subject"
    );
    let meta = EventMetadata::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .expect("CloudEvents headers");
    assert_eq!(meta.id, event_id);
    assert_eq!(meta.event_type, PAYMENT);
    assert_eq!(meta.source, "sluice://publishers/billing");
    assert_eq!(meta.subject.as_deref(), Some("pi_e2e_publish"));
    // The publish hop is a child span of the caller's: same trace id.
    assert_eq!(
        meta.traceparent
            .as_deref()
            .and_then(sluice_schemas::traceparent::trace_id),
        sluice_schemas::traceparent::trace_id(traceparent)
    );
    assert_eq!(Some(meta.time_ms), event["occurred_at"].as_i64());
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(metadata::CE_SPECVERSION).as_deref(), Some("1.0"));
    assert_eq!(
        header(metadata::CONTENT_TYPE).as_deref(),
        Some("application/avro")
    );

    // A caller-chosen occurred_at is kept, a chosen event_id is kept in the publisher's
    // namespace, and the token's own source may be sent.
    let mut mine = payment();
    mine["event_id"] = "evt-mine-1".into();
    mine["occurred_at"] = "2024-07-26T00:00:00.000Z".into();
    mine["source"] = "sluice://publishers/billing".into();
    let (status, _, json) = post(
        &gw.url(&format!("/v1/events/{PAYMENT}")),
        &[bearer(BILLING_TOKEN)],
        serde_json::to_vec(&mine).unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{json}");
    assert_eq!(json["event_id"], "billing:evt-mine-1");
    let (event, _, _) = decode(
        &topic,
        json["partition"].as_i64().unwrap() as i32,
        json["offset"].as_i64().unwrap(),
        PAYMENT,
    )
    .await;
    assert_eq!(event["occurred_at"], 1_721_952_000_000i64);
    assert_eq!(event["source"], "sluice://publishers/billing");
}

#[tokio::test]
async fn publish_rejections_have_stable_codes() {
    let (p, _, gw) = start("pubbad").await;
    let url = gw.url(&format!("/v1/events/{PAYMENT}"));
    let body = serde_json::to_vec(&payment()).unwrap();

    let (status, h, json) = post(&url, &[], body.clone()).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (401, &"unauthorized".into())
    );
    assert_eq!(h["www-authenticate"], "Bearer");
    let (status, _, json) = post(&url, &[bearer("e2e-not-a-configured-token")], body.clone()).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (401, &"unauthorized".into())
    );

    let (status, _, json) = post(&url, &[bearer(SHOP_TOKEN)], body.clone()).await;
    assert_eq!((status, &json["error"]["code"]), (403, &"forbidden".into()));

    let (status, _, json) = post(
        &gw.url("/v1/events/dev.sluice.events.payments.Nope"),
        &[bearer(BILLING_TOKEN)],
        body.clone(),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (404, &"unknown_event_type".into())
    );

    let (status, _, json) = post(&url, &[bearer(BILLING_TOKEN)], b"{not json".to_vec()).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &"invalid_json".into())
    );

    let mut bad = payment();
    bad["amount"]["amount"] = serde_json::json!(20.5);
    bad["bogus"] = serde_json::json!(1);
    bad.as_object_mut().unwrap().remove("payment_id");
    let (status, _, json) = post(
        &url,
        &[bearer(BILLING_TOKEN)],
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (422, &"schema_mismatch".into()),
        "{json}"
    );
    let fields = json["error"]["fields"].as_array().unwrap();
    assert!(
        fields.contains(
            &serde_json::json!({"field": "amount.amount", "message": "expected decimal string"})
        ),
        "{json}"
    );
    assert!(
        fields.contains(
            &serde_json::json!({"field": "payment_id", "message": "required field is missing"})
        ),
        "{json}"
    );
    assert!(
        fields.contains(&serde_json::json!({"field": "bogus", "message": "unknown field"})),
        "{json}"
    );

    // Routed, but its subject was never registered: 503 naming the fix.
    let push = serde_json::json!({"repository": "octo/hello", "ref": "refs/heads/main"});
    let (status, _, json) = post(
        &gw.url(&format!("/v1/events/{PUSH}")),
        &[bearer(BILLING_TOKEN)],
        serde_json::to_vec(&push).unwrap(),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (503, &"schema_not_registered".into()),
        "{json}"
    );
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sluice schemas register"),
        "{json}"
    );

    let resp = crate::support::get(&url).await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    // The shop token may publish orders.
    let order = serde_json::json!({
        "order_id": "1001", "total": {"amount": "2.50", "currency": "EUR"},
        "line_items": [{"title": "t", "quantity": 1, "unit_price": {"amount": "2.5", "currency": "EUR"}}],
        "provider": "shopify"
    });
    let (status, _, json) = post(
        &gw.url(&format!("/v1/events/{ORDER}")),
        &[bearer(SHOP_TOKEN)],
        serde_json::to_vec(&order).unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{json}");

    assert_eq!(
        record_count(&format!("{p}.events.payments")).await,
        0,
        "nothing refused was written"
    );
    assert_eq!(record_count(&format!("{p}.events.commerce")).await, 1);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_publishes_once() {
    let (p, _, gw) = start("pubidem").await;
    let url = gw.url(&format!("/v1/events/{PAYMENT}"));
    let body = serde_json::to_vec(&payment()).unwrap();
    let key = ("idempotency-key", "order-42-charge".to_string());

    let (status, _, first) = post(&url, &[bearer(BILLING_TOKEN), key.clone()], body.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, h, again) = post(&url, &[bearer(BILLING_TOKEN), key.clone()], body.clone()).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again, first, "the same answer, the same event id");
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(record_count(&format!("{p}.events.payments")).await, 1);

    // Same key, different request.
    let mut other = payment();
    other["amount"]["amount"] = "21.00".into();
    let (status, _, json) = post(
        &url,
        &[bearer(BILLING_TOKEN), key.clone()],
        serde_json::to_vec(&other).unwrap(),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (422, &"idempotency_key_reused".into())
    );
    // Keys are per token: the same key from another token is its own request.
    let order = serde_json::json!({
        "order_id": "1", "total": {"amount": "1", "currency": "EUR"}, "line_items": [], "provider": "shopify"
    });
    let (status, _, json) = post(
        &gw.url(&format!("/v1/events/{ORDER}")),
        &[bearer(SHOP_TOKEN), key],
        serde_json::to_vec(&order).unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{json}");
    // Without a key, a retry is a new event.
    let (_, _, a) = post(&url, &[bearer(BILLING_TOKEN)], body.clone()).await;
    let (_, _, b) = post(&url, &[bearer(BILLING_TOKEN)], body).await;
    assert_ne!(a["event_id"], b["event_id"]);
    assert_eq!(record_count(&format!("{p}.events.payments")).await, 3);
}

#[tokio::test]
async fn the_rust_publisher_takes_the_same_path() {
    require_stack().await;
    let p = unique_prefix("pubrs");
    let file = apply_topology(&topology(&p, false)).await;
    register_schemas(&file).await;
    let full = temp_file("topology.yaml", &topology(&p, true));
    let catalog = Catalog::embedded().unwrap();
    let types = catalog.event_types().map(str::to_string).collect();
    let topology = Topology::load(&full, &types).unwrap();
    let registry = RegistryClient::new(&registry()).unwrap();
    let publisher = Publisher::new(&KafkaClients::new(kafka()), &registry, &catalog, &topology)
        .await
        .unwrap();

    let published = publisher.publish(PAYMENT, payment()).await.unwrap();
    assert_eq!(published.topic, format!("{p}.events.payments"));
    let (event, headers, _) = decode(
        &published.topic,
        published.partition,
        published.offset,
        PAYMENT,
    )
    .await;
    assert_eq!(event["event_id"], published.event_id.as_str());
    assert_eq!(event["source"], "sluice://publishers/rust");
    let meta = EventMetadata::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .unwrap();
    assert_eq!(meta.id, published.event_id);
    assert!(meta.traceparent.is_some());
    let latest = registry
        .schema_by_subject(&format!("{p}.events.payments-{PAYMENT}"), None)
        .await
        .unwrap();
    assert_eq!(published.schema_id, latest.id);

    let mut bad = payment();
    bad["amount"]["amount"] = serde_json::json!(1);
    match publisher.publish(PAYMENT, bad).await.unwrap_err() {
        PublishError::SchemaMismatch { fields, .. } => assert_eq!(fields[0].field, "amount.amount"),
        other => panic!("{other}"),
    }
    assert!(matches!(
        publisher
            .publish(PUSH, serde_json::json!({}))
            .await
            .unwrap_err(),
        PublishError::SchemaNotRegistered { .. }
    ));
    assert!(matches!(
        publisher
            .publish("dev.sluice.events.nope.Nope", serde_json::json!({}))
            .await
            .unwrap_err(),
        PublishError::UnknownEventType(_)
    ));
}

fn order(id: &str) -> serde_json::Value {
    serde_json::json!({
        "order_id": id, "total": {"amount": "1", "currency": "EUR"}, "line_items": [],
        "provider": "shopify"
    })
}

#[tokio::test]
async fn a_token_publishes_only_as_its_own_source_and_in_its_own_event_id_namespace() {
    let (p, _, gw) = start("pubsrc").await;
    let payments = gw.url(&format!("/v1/events/{PAYMENT}"));
    let orders = gw.url(&format!("/v1/events/{ORDER}"));

    // Claiming another publisher's source is refused, naming the field.
    let mut forged = payment();
    forged["source"] = "sluice://publishers/shop".into();
    let (status, _, json) = post(
        &payments,
        &[bearer(BILLING_TOKEN)],
        serde_json::to_vec(&forged).unwrap(),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (403, &"source_mismatch".into()),
        "{json}"
    );
    assert_eq!(json["error"]["fields"][0]["field"], "source", "{json}");

    // Its own source is fine, and so is leaving it out (covered by the first test).
    let mut own = payment();
    own["source"] = "sluice://publishers/billing".into();
    own["event_id"] = "order-42".into();
    let (status, _, billing) = post(
        &payments,
        &[bearer(BILLING_TOKEN)],
        serde_json::to_vec(&own).unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{billing}");
    assert_eq!(billing["event_id"], "billing:order-42");

    // Another publisher choosing the same id, or billing's namespaced id, gets its own.
    let mut shop_orders = Vec::new();
    for chosen in ["order-42", "billing:order-42"] {
        let mut o = order("42");
        o["event_id"] = chosen.into();
        let (status, _, json) = post(
            &orders,
            &[bearer(SHOP_TOKEN)],
            serde_json::to_vec(&o).unwrap(),
        )
        .await;
        assert_eq!(status, 202, "{json}");
        shop_orders.push(json);
    }
    assert_eq!(shop_orders[0]["event_id"], "shop:order-42");
    assert_eq!(shop_orders[1]["event_id"], "shop:billing:order-42");

    // What landed carries the namespaced id and the token's source, in the record and in
    // the CloudEvents headers consumers deduplicate on.
    let (event, headers, _) = decode(
        &format!("{p}.events.payments"),
        billing["partition"].as_i64().unwrap() as i32,
        billing["offset"].as_i64().unwrap(),
        PAYMENT,
    )
    .await;
    assert_eq!(event["event_id"], "billing:order-42");
    assert_eq!(event["source"], "sluice://publishers/billing");
    let meta = EventMetadata::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .unwrap();
    assert_eq!(
        (meta.id.as_str(), meta.source.as_str()),
        ("billing:order-42", "sluice://publishers/billing")
    );
    for json in &shop_orders {
        let (event, headers, _) = decode(
            &format!("{p}.events.commerce"),
            json["partition"].as_i64().unwrap() as i32,
            json["offset"].as_i64().unwrap(),
            ORDER,
        )
        .await;
        assert_eq!(event["event_id"], json["event_id"]);
        assert_eq!(event["source"], "sluice://publishers/shop");
        let meta =
            EventMetadata::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        assert_eq!(meta.id, json["event_id"].as_str().unwrap());
    }
    assert_eq!(
        record_count(&format!("{p}.events.payments")).await,
        1,
        "the forged event was not written"
    );
}

#[tokio::test]
async fn a_publish_token_over_its_rate_limit_gets_429_with_rate_limit_headers() {
    let (p, _, gw) = start("pubrate").await;
    let url = gw.url(&format!("/v1/events/{ORDER}"));
    // Burst 2, 1 per second: of 8 requests sent at once, most are refused.
    let answers = futures::future::join_all((0..8).map(|i| {
        let url = url.clone();
        async move {
            post(
                &url,
                &[bearer(METERED_TOKEN)],
                serde_json::to_vec(&order(&format!("m{i}"))).unwrap(),
            )
            .await
        }
    }))
    .await;
    let accepted = answers.iter().filter(|(s, _, _)| *s == 202).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(accepted + limited.len(), 8, "only 202 or 429: {answers:?}");
    assert!(
        (2..=4).contains(&accepted),
        "the burst, and at most what refilled meanwhile: {answers:?}"
    );
    for (_, h, json) in &limited {
        assert_eq!(json["error"]["code"], "rate_limited", "{json}");
        assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
        assert_eq!(h["x-ratelimit-limit"], "2");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert!(
            h["x-ratelimit-reset"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
    }
    // Other tokens have their own budgets (none here).
    for i in 0..4 {
        let (status, _, json) = post(
            &url,
            &[bearer(SHOP_TOKEN)],
            serde_json::to_vec(&order(&format!("s{i}"))).unwrap(),
        )
        .await;
        assert_eq!(status, 202, "{json}");
    }
    assert_eq!(
        record_count(&format!("{p}.events.commerce")).await,
        accepted as i64 + 4,
        "only accepted events were written"
    );
}
