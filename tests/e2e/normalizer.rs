//! `sluice normalize` as a real process against the real broker and registry: raw
//! deliveries become Avro events exactly once; redeliveries are skipped, also after a
//! restart; what cannot be processed is dead-lettered with provenance.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_schemas::codec::ReaderSchema;
use sluice_schemas::json::to_json_with_schema;
use sluice_schemas::metadata::{raw, rfc3339_ms};
use sluice_schemas::{AvroCodec, Catalog, RecordLocation, RegistryClient};

use crate::support::{clients, registry, require_stack, sluice_async, temp_file};

/// Kills the child process when dropped, so a failing test leaves nothing running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_sluice(args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args)
        .env("SLUICE_ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().expect("spawn sluice"))
}

pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/webhooks/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

pub fn topology(prefix: &str) -> String {
    format!(
        r#"prefix: {prefix}
topics:
  - {{name: {prefix}.raw.stripe, partitions: 3}}
  - {{name: {prefix}.raw.hooks, partitions: 3}}
  - {{name: {prefix}.events.payments, partitions: 3}}
  - {{name: {prefix}.events.external, partitions: 1}}
  - {{name: {prefix}.dlq.normalizer, partitions: 1}}
  - {{name: {prefix}.state.dedup, partitions: 3, config: {{cleanup.policy: compact}}}}
  - {{name: {prefix}.state.dlq-replays, partitions: 1, config: {{cleanup.policy: compact}}}}
  - {{name: {prefix}.replayed, partitions: 1}}
sources:
  - {{name: stripe, provider: {{type: stripe}}, secrets: [{{env: X}}], raw_topic: {prefix}.raw.stripe}}
  - {{name: hooks, provider: {{type: standard_webhooks}}, secrets: [{{env: X}}], raw_topic: {prefix}.raw.hooks, unmapped: generic}}
routes:
  - {{event_type: dev.sluice.events.payments.PaymentSucceeded, topic: {prefix}.events.payments}}
  - {{event_type: dev.sluice.events.external.ExternalEvent, topic: {prefix}.events.external}}
retry_policies:
  - {{name: normalizer, tiers: [1s, 2s], max_attempts: 3, dlq_topic: {prefix}.dlq.normalizer}}
"#
    )
}

/// Applies a temp topology and registers its schemas; returns its path.
pub async fn deploy(prefix: &str) -> String {
    let file = temp_file("topology.yaml", &topology(prefix))
        .display()
        .to_string();
    for cmd in [["topology", "apply"], ["schemas", "register"]] {
        let (ok, out, err) = sluice_async(vec![
            cmd[0].into(),
            cmd[1].into(),
            "--topology".into(),
            file.clone(),
        ])
        .await;
        assert!(ok, "{cmd:?}: {out}{err}");
    }
    file
}

pub async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    source: &str,
    provider: &str,
    delivery_id: &str,
    event_type: Option<&str>,
    body: &[u8],
) {
    let received = rfc3339_ms(sluice_schemas::metadata::now_ms());
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: raw::SOURCE,
            value: Some(source),
        })
        .insert(Header {
            key: raw::PROVIDER,
            value: Some(provider),
        })
        .insert(Header {
            key: raw::DELIVERY_ID,
            value: Some(delivery_id),
        })
        .insert(Header {
            key: raw::RECEIVED_AT,
            value: Some(received.as_str()),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
    if let Some(t) = event_type {
        headers = headers.insert(Header {
            key: raw::EVENT_TYPE,
            value: Some(t),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(delivery_id)
                .payload(body)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// A committed-only reader of a topic, from the beginning.
pub fn reader(topic: &str) -> StreamConsumer {
    let c: StreamConsumer = clients()
        .consumer_config(
            "e2e",
            &format!("e2e-read-{}", uuid::Uuid::new_v4().simple()),
        )
        .unwrap()
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// A record as tests look at it: key, headers, value.
pub type Seen = (String, BTreeMap<String, Vec<u8>>, Vec<u8>);

/// Reads until `until` says enough or `timeout` passes.
pub async fn read_until(
    c: &StreamConsumer,
    timeout: Duration,
    mut until: impl FnMut(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while !until(&got) && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            got.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                headers,
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    got
}

#[tokio::test]
async fn deliveries_become_events_once_and_failures_are_dead_lettered() {
    require_stack().await;
    let prefix = format!("n{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let file = deploy(&prefix).await;
    let producer = clients().producer("e2e").unwrap();
    let stripe = fixture("stripe/payment_intent.succeeded.json");
    let raw_stripe = format!("{prefix}.raw.stripe");
    let raw_hooks = format!("{prefix}.raw.hooks");

    send_raw(
        &producer,
        &raw_stripe,
        "stripe",
        "stripe",
        "evt_1",
        Some("payment_intent.succeeded"),
        &stripe,
    )
    .await;
    send_raw(
        &producer,
        &raw_stripe,
        "stripe",
        "stripe",
        "evt_1",
        Some("payment_intent.succeeded"),
        &stripe,
    )
    .await;
    send_raw(
        &producer,
        &raw_stripe,
        "stripe",
        "stripe",
        "evt_bad",
        None,
        b"{not json",
    )
    .await;
    let unknown =
        br#"{"id":"evt_u","type":"customer.created","created":1700000000,"data":{"object":{}}}"#;
    send_raw(
        &producer,
        &raw_stripe,
        "stripe",
        "stripe",
        "evt_u",
        Some("customer.created"),
        unknown,
    )
    .await;
    let hook = br#"{"type":"user.created","data":{"id":"u_1"}}"#;
    send_raw(
        &producer,
        &raw_hooks,
        "hooks",
        "standard_webhooks",
        "msg_1",
        Some("user.created"),
        hook,
    )
    .await;

    let instance = format!("e2e-{prefix}");
    let run = ["normalize", "--topology", file.as_str()];
    let env = [("SLUICE_INSTANCE_ID", instance.as_str())];
    let child = spawn_sluice(&run, &env);

    let payments = reader(&format!("{prefix}.events.payments"));
    let events = read_until(&payments, Duration::from_secs(60), |g| !g.is_empty()).await;
    assert_eq!(events.len(), 1, "one PaymentSucceeded");
    let (key, headers, value) = &events[0];
    let fixture_json: serde_json::Value = serde_json::from_slice(&stripe).unwrap();
    let payment_id = fixture_json["data"]["object"]["id"].as_str().unwrap();
    let currency = fixture_json["data"]["object"]["currency"]
        .as_str()
        .unwrap()
        .to_uppercase();
    assert_eq!(key, payment_id);
    assert_eq!(
        headers["ce_type"],
        b"dev.sluice.events.payments.PaymentSucceeded"
    );
    let catalog = Catalog::embedded().unwrap();
    let schema = &catalog
        .latest("dev.sluice.events.payments.PaymentSucceeded")
        .unwrap()
        .schema;
    let codec = AvroCodec::new(RegistryClient::new(&registry()).unwrap());
    let decoded = codec
        .decode_as(
            value,
            &ReaderSchema::new(schema.clone()).unwrap(),
            &RecordLocation::default(),
        )
        .await
        .unwrap();
    let json = to_json_with_schema(&decoded.value, schema);
    assert_eq!(json["payment_id"], payment_id);
    assert_eq!(json["amount"]["currency"], currency.as_str());
    assert_eq!(json["source"], "sluice://sources/stripe");
    assert_eq!(
        headers["ce_id"],
        json["event_id"].as_str().unwrap().as_bytes()
    );

    let external = reader(&format!("{prefix}.events.external"));
    let ext = read_until(&external, Duration::from_secs(30), |g| !g.is_empty()).await;
    assert_eq!(
        ext.len(),
        1,
        "the unmapped standard-webhooks delivery became an ExternalEvent"
    );
    assert_eq!(
        ext[0].1["ce_type"],
        b"dev.sluice.events.external.ExternalEvent"
    );

    let dlq = reader(&format!("{prefix}.dlq.normalizer"));
    let dead = read_until(&dlq, Duration::from_secs(30), |g| g.len() >= 2).await;
    assert_eq!(dead.len(), 2);
    let by_class: BTreeMap<String, &Seen> = dead
        .iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.1["kafka_dlt-exception-fqcn"]).into_owned(),
                d,
            )
        })
        .collect();
    let invalid = by_class["InvalidJson"];
    assert_eq!(invalid.2, b"{not json", "original bytes kept");
    assert_eq!(invalid.0, "evt_bad", "original key kept");
    assert_eq!(invalid.1["kafka_dlt-original-topic"], raw_stripe.as_bytes());
    assert_eq!(
        invalid.1["kafka_dlt-original-consumer-group"],
        format!("{prefix}-normalizer").as_bytes()
    );
    assert_eq!(
        invalid.1["sluice_source"], b"stripe",
        "original headers kept"
    );
    assert_eq!(invalid.1["sluice_attempts"], b"1");
    assert!(
        by_class.contains_key("UnmappedEventType"),
        "{:?}",
        by_class.keys()
    );

    dlq_tooling(&prefix, &file).await;

    // Restart: dedup state comes back from the changelog, so a late redelivery is skipped.
    drop(child);
    let _child = spawn_sluice(&run, &env);
    send_raw(
        &producer,
        &raw_stripe,
        "stripe",
        "stripe",
        "evt_1",
        Some("payment_intent.succeeded"),
        &stripe,
    )
    .await;
    let second = stripe_with_id(&stripe, "evt_2", "pi_second");
    send_raw(
        &producer,
        &raw_stripe,
        "stripe",
        "stripe",
        "evt_2",
        Some("payment_intent.succeeded"),
        &second,
    )
    .await;
    let more = read_until(&payments, Duration::from_secs(60), |g| !g.is_empty()).await;
    assert_eq!(more.len(), 1, "only evt_2 is new");
    assert_eq!(more[0].0, "pi_second");
    // Nothing else arrives for evt_1.
    let late = read_until(&payments, Duration::from_secs(3), |_| false).await;
    assert!(late.is_empty(), "{} unexpected events", late.len());
}

/// Sends the `i`-th distinct Stripe delivery (`evt_<i>`, payment `pi_<i>`) built from the
/// fixture `body`; sending the same `i` again is a provider redelivery.
pub async fn send_payment(producer: &FutureProducer, raw_topic: &str, body: &[u8], i: usize) {
    let id = format!("evt_{i}");
    let payload = stripe_with_id(body, &id, &format!("pi_{i}"));
    send_raw(
        producer,
        raw_topic,
        "stripe",
        "stripe",
        &id,
        Some("payment_intent.succeeded"),
        &payload,
    )
    .await;
}

/// The Stripe fixture with another event id and payment intent id.
pub fn stripe_with_id(body: &[u8], event_id: &str, payment_id: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["id"] = event_id.into();
    v["data"]["object"]["id"] = payment_id.into();
    serde_json::to_vec(&v).unwrap()
}

/// `sluice dlq list|show|replay|purge` on the dead letters the normalizer just wrote.
async fn dlq_tooling(prefix: &str, file: &str) {
    let dlq = format!("{prefix}.dlq.normalizer");
    let run = |args: &[&str]| sluice_async(args.iter().map(|s| s.to_string()).collect());
    let (ok, out, err) = run(&["dlq", "list", &dlq]).await;
    assert!(ok, "{err}");
    assert!(out.contains("2 dead letters"), "{out}");
    assert!(
        out.contains("InvalidJson") && out.contains("UnmappedEventType"),
        "{out}"
    );
    let (_, out, _) = run(&["dlq", "list", &dlq, "--group-by", "original-topic"]).await;
    assert!(out.contains(&format!("{prefix}.raw.stripe")), "{out}");

    let (ok, out, err) = run(&["dlq", "show", &dlq, "0:0"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("original      {prefix}.raw.stripe/")),
        "{out}"
    );
    assert!(out.contains("attempts      1"), "{out}");
    let (ok, _, err) = run(&["dlq", "show", &dlq, "0:99"]).await;
    assert!(
        !ok && err.contains(&format!("no record at {dlq}/0@99")),
        "{err}"
    );

    // Replay into a scratch topic: first only one class, then the rest; never twice.
    let to = format!("{prefix}.replayed");
    let replay = |extra: &[&str]| {
        let mut a = vec![
            "dlq",
            "replay",
            dlq.as_str(),
            "--to",
            to.as_str(),
            "--topology",
            file,
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let (ok, out, err) = replay(&["--dry-run"]).await;
    assert!(
        ok && out.contains("dry run: would have 2 replayed"),
        "{out}{err}"
    );
    let (ok, out, err) = replay(&["--filter", "error_class=InvalidJson"]).await;
    assert!(
        ok && out.contains("1 replayed, 0 already replayed before, 1 not matching"),
        "{out}{err}"
    );
    let (ok, out, _) = replay(&[]).await;
    assert!(
        ok && out.contains("1 replayed, 1 already replayed before"),
        "{out}"
    );
    let (ok, out, _) = replay(&[]).await;
    assert!(
        ok && out.contains("0 replayed, 2 already replayed before"),
        "{out}"
    );
    let copies = read_until(&reader(&to), Duration::from_secs(20), |g| g.len() >= 2).await;
    assert_eq!(copies.len(), 2);
    let bad = copies
        .iter()
        .find(|c| c.2 == b"{not json")
        .expect("replayed bytes are the original");
    let from = String::from_utf8_lossy(&bad.1["sluice_replayed_from"]).into_owned();
    assert!(from.starts_with(&format!("{dlq}/0@")), "{from}");
    assert_eq!(
        bad.1["kafka_dlt-exception-fqcn"], b"InvalidJson",
        "attempt history travels with it"
    );

    let (ok, _, err) = run(&["dlq", "purge", &dlq, "--before", "1h"]).await;
    assert!(
        !ok && err.contains("--yes"),
        "purge needs confirmation: {err}"
    );
    let (ok, out, err) = run(&[
        "dlq",
        "purge",
        &dlq,
        "--before",
        "2099-01-01T00:00:00Z",
        "--yes",
    ])
    .await;
    assert!(ok, "{err}");
    // Transaction markers take offsets too, so the end offset is past the two records.
    assert!(
        out.contains(&format!("{dlq}/0: records before offset")),
        "{out}"
    );
    let (_, out, _) = run(&["dlq", "list", &dlq]).await;
    assert!(out.contains("0 dead letters"), "{out}");
}

/// Slack puts the app's verification `token` in every Events API body. Under
/// `unmapped: generic`, an envelope the Slack mapping does not cover (`app_rate_limited`)
/// became an `ExternalEvent` whose payload was the body, token included, on the widely read
/// events topic. A signed delivery through a real gateway and normalizer: the token stays on
/// the raw topic (replay needs the exact bytes) and reaches no event.
#[tokio::test]
async fn slack_verification_token_does_not_reach_the_external_event() {
    use crate::gateway::{apply_topology, now_unix, post, register_schemas, GatewayProcess};

    require_stack().await;
    let prefix = format!("nslk{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let secret = "e2e-normalizer-slack-signing-secret";
    let token = "Jhj5dZrVaK7ZwHHjRyZWjbDl";
    let file = apply_topology(&format!(
        r#"prefix: {prefix}
topics:
  - {{name: {prefix}.raw.slack, partitions: 1}}
  - {{name: {prefix}.events.external, partitions: 1}}
  - {{name: {prefix}.dlq.normalizer, partitions: 1}}
  - {{name: {prefix}.state.dedup, partitions: 1, config: {{cleanup.policy: compact}}}}
sources:
  - {{name: slack, provider: {{type: slack}}, secrets: [{{env: E2E_NORM_SLACK}}], raw_topic: {prefix}.raw.slack, unmapped: generic}}
routes:
  - {{event_type: dev.sluice.events.external.ExternalEvent, topic: {prefix}.events.external}}
retry_policies:
  - {{name: normalizer, tiers: [1s], max_attempts: 2, dlq_topic: {prefix}.dlq.normalizer}}
"#
    ))
    .await;
    register_schemas(&file).await;
    let env = [("E2E_NORM_SLACK", secret)];
    let gw = GatewayProcess::start(&file, "", &env).await;

    // An envelope with no Slack mapping (the `unmapped: generic` path) and a mapped
    // `event_callback`, both carrying the token.
    let rate_limited = format!(
        r#"{{"token":"{token}","type":"app_rate_limited","team_id":"T0E2E","minute_rate_limited":1518467820,"api_app_id":"A0E2E"}}"#
    );
    let callback = format!(
        r#"{{"token":"{token}","team_id":"T0E2E","api_app_id":"A0E2E","type":"event_callback","event_id":"Ev0E2ETOKEN","event_time":1700000000,"event":{{"type":"app_mention","channel":"C0E2E","text":"hi"}}}}"#
    );
    for body in [&rate_limited, &callback] {
        let mut headers = sluice_producers::sign::slack(secret, now_unix(), body.as_bytes());
        headers.push(("content-type", "application/json".into()));
        let (status, _, json) =
            post(&gw.url("/webhooks/slack"), &headers, body.clone().into()).await;
        assert_eq!(status, 202, "{json}");
    }
    let raw = reader(&format!("{prefix}.raw.slack"));
    let raw = read_until(&raw, Duration::from_secs(30), |g| g.len() >= 2).await;
    assert_eq!(raw.len(), 2);
    assert!(
        raw.iter()
            .all(|r| r.2.windows(token.len()).any(|w| w == token.as_bytes())),
        "the raw topic keeps the exact bytes, token included"
    );

    let instance = format!("e2e-{prefix}");
    let _normalizer = spawn_sluice(
        &["normalize", "--topology", file.to_str().unwrap()],
        &[
            ("SLUICE_INSTANCE_ID", instance.as_str()),
            ("E2E_NORM_SLACK", secret),
        ],
    );
    let external = reader(&format!("{prefix}.events.external"));
    let events = read_until(&external, Duration::from_secs(60), |g| g.len() >= 2).await;
    assert_eq!(events.len(), 2, "both deliveries became ExternalEvents");

    let catalog = Catalog::embedded().unwrap();
    let schema = &catalog
        .latest("dev.sluice.events.external.ExternalEvent")
        .unwrap()
        .schema;
    let codec = AvroCodec::new(RegistryClient::new(&registry()).unwrap());
    let mut event_types = Vec::new();
    for (_, _, value) in &events {
        assert!(
            !value.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is in the encoded event"
        );
        let decoded = codec
            .decode_as(
                value,
                &ReaderSchema::new(schema.clone()).unwrap(),
                &RecordLocation::default(),
            )
            .await
            .unwrap();
        let json = to_json_with_schema(&decoded.value, schema);
        let payload: serde_json::Value =
            serde_json::from_str(json["payload"].as_str().unwrap()).unwrap();
        assert!(payload.get("token").is_none(), "{payload}");
        assert_eq!(
            payload["team_id"], "T0E2E",
            "the rest of the body is carried"
        );
        event_types.push(json["event_type"].as_str().unwrap().to_string());
    }
    event_types.sort();
    assert_eq!(
        event_types,
        ["app_rate_limited", "event_callback.app_mention"]
    );
}
