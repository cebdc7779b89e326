//! Intake against hostile and oversized deliveries, through a real `sluice gateway` and a
//! real `sluice normalize` on the real broker and registry: one oversized record never stops
//! the normalizer, a 5 MB GitHub push is accepted and normalized, and a captured delivery
//! replayed under a fresh id or a forged topic yields no second or forged event.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_producers::sign;

use crate::gateway::{
    apply_topology, fixture, now_unix, post, register_schemas, unique_prefix, GatewayProcess,
};
use crate::normalizer::{read_until, reader, spawn_sluice, ChildGuard, Seen};
use crate::support::{require_stack, shrink_topic_limit, sluice_async};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const GITHUB_SECRET: &str = "e2e-intake-github-secret";
const SHOPIFY_SECRET: &str = "e2e-intake-shopify-secret";
/// Records of up to 2 MiB on every topic of the test topology.
const TOPIC_LIMIT: &str = "2097152";

fn secrets() -> Vec<(&'static str, &'static str)> {
    vec![
        ("E2E_INTAKE_SW", SW_SECRET),
        ("E2E_INTAKE_GITHUB", GITHUB_SECRET),
        ("E2E_INTAKE_SHOPIFY", SHOPIFY_SECRET),
    ]
}

/// The reference topology's shape, at a test's scale: GitHub bodies up to 25 MiB on 26 MiB
/// topics, the rest on 2 MiB topics, per-key ordering on the normalizer's retry path.
fn topology(p: &str) -> String {
    let big = "27262976";
    format!(
        r#"prefix: {p}
topics:
  - {{name: {p}.raw.hooks, partitions: 1, config: {{max.message.bytes: {TOPIC_LIMIT}}}}}
  - {{name: {p}.raw.github, partitions: 1, config: {{max.message.bytes: {big}}}}}
  - {{name: {p}.raw.shopify, partitions: 1, config: {{max.message.bytes: {TOPIC_LIMIT}}}}}
  - {{name: {p}.events.external, partitions: 1, config: {{max.message.bytes: {TOPIC_LIMIT}}}}}
  - {{name: {p}.events.scm, partitions: 1, config: {{max.message.bytes: {big}}}}}
  - {{name: {p}.events.commerce, partitions: 1}}
  - {{name: {p}.dlq.normalizer, partitions: 1, config: {{max.message.bytes: {big}}}}}
  - {{name: {p}.state.dedup, partitions: 1, config: {{cleanup.policy: compact}}}}
  - {{name: {p}.state.held-normalizer, partitions: 1, config: {{cleanup.policy: compact}}}}
  - {{name: {p}.state.dlq-replays, partitions: 1, config: {{cleanup.policy: compact}}}}
sources:
  - {{name: hooks, provider: {{type: standard_webhooks}}, secrets: [{{env: E2E_INTAKE_SW}}], raw_topic: {p}.raw.hooks, unmapped: generic, limits: {{max_body_bytes: 1500000}}}}
  - {{name: github, provider: {{type: github}}, secrets: [{{env: E2E_INTAKE_GITHUB}}], raw_topic: {p}.raw.github, limits: {{max_body_bytes: 26214400}}}}
  - {{name: shopify, provider: {{type: shopify}}, secrets: [{{env: E2E_INTAKE_SHOPIFY}}], raw_topic: {p}.raw.shopify}}
routes:
  - {{event_type: dev.sluice.events.external.ExternalEvent, topic: {p}.events.external}}
  - {{event_type: dev.sluice.events.scm.CodePushed, topic: {p}.events.scm}}
  - {{event_type: dev.sluice.events.scm.IssueOpened, topic: {p}.events.scm}}
  - {{event_type: dev.sluice.events.scm.PullRequestOpened, topic: {p}.events.scm}}
  - {{event_type: dev.sluice.events.commerce.OrderPlaced, topic: {p}.events.commerce}}
  - {{event_type: dev.sluice.events.commerce.OrderPaid, topic: {p}.events.commerce}}
retry_policies:
  - {{name: normalizer, tiers: [1s], max_attempts: 2, dlq_topic: {p}.dlq.normalizer, ordering: per_key}}
"#
    )
}

/// A deployed topology with a gateway and a normalizer running on it.
struct Pipeline {
    p: String,
    file: String,
    gateway: GatewayProcess,
    _normalizer: ChildGuard,
}

async fn pipeline(tag: &str) -> Pipeline {
    require_stack().await;
    let p = unique_prefix(tag);
    let file = apply_topology(&topology(&p)).await;
    register_schemas(&file).await;
    let gateway = GatewayProcess::start(&file, "", &secrets()).await;
    let file = file.display().to_string();
    let instance = format!("e2e-{p}");
    let normalizer = spawn_sluice(
        &["normalize", "--topology", &file],
        &[("SLUICE_INSTANCE_ID", &instance)],
    );
    Pipeline {
        p,
        file,
        gateway,
        _normalizer: normalizer,
    }
}

impl Pipeline {
    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.p)
    }

    /// POSTs a signed Standard Webhooks delivery; returns the status.
    async fn send_hook(&self, id: &str, body: Vec<u8>) -> u16 {
        let headers = sign::standard_webhooks(SW_SECRET, id, now_unix(), &body).unwrap();
        let headers: Vec<(&str, String)> = headers
            .into_iter()
            .chain([("content-type", "application/json".to_string())])
            .collect();
        post(&self.gateway.url("/webhooks/hooks"), &headers, body)
            .await
            .0
    }

    async fn send(&self, source: &str, headers: Vec<(&'static str, String)>, body: Vec<u8>) -> u16 {
        post(
            &self.gateway.url(&format!("/webhooks/{source}")),
            &headers,
            body,
        )
        .await
        .0
    }
}

/// `n` bytes that are not JSON and that zstd cannot shrink much (random hex), so the broker
/// sees nearly all of them.
fn incompressible_not_json(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    out.extend_from_slice(b"not json: ");
    while out.len() < n {
        out.extend_from_slice(uuid::Uuid::new_v4().simple().to_string().as_bytes());
    }
    out.truncate(n);
    out
}

fn header(seen: &Seen, name: &str) -> Option<String> {
    seen.1
        .get(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn class(seen: &Seen) -> String {
    header(seen, "kafka_dlt-exception-fqcn").unwrap_or_default()
}

#[tokio::test]
async fn an_oversized_record_is_dead_lettered_and_the_normalizer_keeps_going() {
    let pl = pipeline("intbig").await;
    let external = reader(&pl.topic("events.external"));
    let dlq = reader(&pl.topic("dlq.normalizer"));

    // 999,000 bytes of invalid JSON: its dead-letter copy is larger than librdkafka's own
    // default message.max.bytes (1,000,000), which used to abort every batch holding it.
    let big = incompressible_not_json(999_000);
    assert_eq!(pl.send_hook("msg_big_1", big.clone()).await, 202);
    assert_eq!(
        pl.send_hook("msg_after_1", br#"{"type":"a.b","n":1}"#.to_vec())
            .await,
        202
    );

    let dead = read_until(&dlq, Duration::from_secs(60), |g| !g.is_empty()).await;
    assert_eq!(dead.len(), 1, "the oversized delivery is dead-lettered");
    assert_eq!(class(&dead[0]), "InvalidJson");
    assert_eq!(dead[0].2, big, "the whole original, byte for byte");
    let events = read_until(&external, Duration::from_secs(60), |g| !g.is_empty()).await;
    assert_eq!(events.len(), 1, "the delivery behind it is normalized");

    // The cluster drifts from the topology: the DLQ and the events topic now take 200,000
    // bytes at most. A copy the DLQ refuses is cut, with headers saying so and where the
    // original sits; an event the topic refuses dead-letters its delivery as RecordTooLarge.
    shrink_topic_limit(&pl.topic("dlq.normalizer"), "200000").await;
    shrink_topic_limit(&pl.topic("events.external"), "200000").await;
    let sent = std::time::Instant::now();
    assert_eq!(pl.send_hook("msg_big_2", big.clone()).await, 202);
    let mut large_json = br#"{"type":"a.big","blob":""#.to_vec();
    large_json.extend(
        incompressible_not_json(400_000)
            .iter()
            .filter(|b| b.is_ascii_hexdigit()),
    );
    large_json.extend_from_slice(br#""}"#);
    assert_eq!(pl.send_hook("msg_big_json", large_json.clone()).await, 202);
    assert_eq!(
        pl.send_hook("msg_after_2", br#"{"type":"a.b","n":2}"#.to_vec())
            .await,
        202
    );

    let dead = read_until(&dlq, Duration::from_secs(90), |g| g.len() >= 2).await;
    let by_class: BTreeMap<String, &Seen> = dead.iter().map(|d| (class(d), d)).collect();
    assert_eq!(dead.len(), 2, "{:?}", by_class.keys());
    let cut = by_class["InvalidJson"];
    assert_eq!(
        header(cut, "sluice_truncated_original_bytes").as_deref(),
        Some("999000")
    );
    let at = header(cut, "sluice_truncated_original_at").unwrap();
    assert!(
        at.starts_with(&format!("{}/0@", pl.topic("raw.hooks"))),
        "{at}"
    );
    assert!(
        cut.2.len() <= 64 * 1024 && big.starts_with(&cut.2),
        "a prefix of the original"
    );
    let too_large = by_class["RecordTooLarge"];
    let message = header(too_large, "kafka_dlt-exception-message").unwrap();
    assert!(
        message.contains("too large") || message.contains("Too Large") || message.contains("size"),
        "{message}"
    );
    let events = read_until(&external, Duration::from_secs(60), |g| !g.is_empty()).await;
    assert_eq!(
        events.len(),
        1,
        "the delivery behind both is normalized: {events:?}"
    );
    assert_eq!(
        header(&events[0], "ce_type").as_deref(),
        Some("dev.sluice.events.external.ExternalEvent")
    );
    // Two refusals in one transaction are found in passes of about a second each; waiting
    // for the doomed transaction's other outputs instead took its 30 s timeout per pass.
    assert!(
        sent.elapsed() < Duration::from_secs(25),
        "the refusals held the partition for {:?}",
        sent.elapsed()
    );

    // A cut copy is never replayed as if it were whole.
    let (ok, out, err) = sluice_async(vec![
        "dlq".into(),
        "replay".into(),
        pl.topic("dlq.normalizer"),
        "--topology".into(),
        pl.file.clone(),
        "--dry-run".into(),
    ])
    .await;
    assert!(!ok, "{out}{err}");
    assert!(err.contains("2 dead letters were not replayed"), "{err}");
    assert!(
        err.contains(&format!("the whole original is at {at}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_github_push_of_5_mb_is_accepted_and_normalized() {
    let pl = pipeline("intpush").await;
    let scm = reader(&pl.topic("events.scm"));
    // The real push fixture, grown to 5 MB the way large pushes are: long commit messages.
    let mut push: serde_json::Value = serde_json::from_slice(&fixture("github/push.json")).unwrap();
    let commit = push["commits"][0].clone();
    let commits: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            let mut c = commit.clone();
            c["id"] = format!("{i:040x}").into();
            c["message"] = format!("commit {i}\n\n{}", "x".repeat(100_000)).into();
            c
        })
        .collect();
    push["commits"] = commits.into();
    let body = serde_json::to_vec(&push).unwrap();
    assert!(body.len() > 5_000_000, "{}", body.len());
    let headers = sign::github(GITHUB_SECRET, "push", "push-5mb", &body);
    assert_eq!(pl.send("github", headers, body).await, 202);
    let events = read_until(&scm, Duration::from_secs(60), |g| !g.is_empty()).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        header(&events[0], "ce_type").as_deref(),
        Some("dev.sluice.events.scm.CodePushed")
    );
    assert!(
        events[0].2.len() > 5_000_000,
        "the commits are in the event"
    );
}

#[tokio::test]
async fn replays_under_a_fresh_id_and_forged_event_types_yield_nothing() {
    let pl = pipeline("intforge").await;
    let commerce = reader(&pl.topic("events.commerce"));
    let scm = reader(&pl.topic("events.scm"));
    let dlq = reader(&pl.topic("dlq.normalizer"));

    // A captured, signed orders/create: sent, replayed with a fresh webhook id, and sent
    // again claiming orders/paid (the order's financial_status is `authorized`).
    let order = fixture("shopify/orders.create.json");
    let sent = [
        sign::shopify(SHOPIFY_SECRET, "orders/create", "wh-1", &order),
        sign::shopify(SHOPIFY_SECRET, "orders/create", "wh-replayed", &order),
        sign::shopify(SHOPIFY_SECRET, "orders/paid", "wh-forged", &order),
    ];
    for headers in sent {
        assert_eq!(pl.send("shopify", headers, order.clone()).await, 202);
    }
    // A signed issues payload claiming to be a pull request, and a push replayed under a
    // fresh delivery id.
    let issue = fixture("github/issues.opened.json");
    let headers = sign::github(GITHUB_SECRET, "pull_request", "gh-forged", &issue);
    assert_eq!(pl.send("github", headers, issue.clone()).await, 202);
    let push = fixture("github/push.json");
    for id in ["gh-push", "gh-push-replayed"] {
        let headers = sign::github(GITHUB_SECRET, "push", id, &push);
        assert_eq!(pl.send("github", headers, push.clone()).await, 202);
    }
    // A genuine one after them all, to know when the normalizer got past them.
    let headers = sign::github(GITHUB_SECRET, "issues", "gh-issue", &issue);
    assert_eq!(pl.send("github", headers, issue.clone()).await, 202);

    let dead = read_until(&dlq, Duration::from_secs(60), |g| g.len() >= 2).await;
    let scm_events = read_until(&scm, Duration::from_secs(60), |g| g.len() >= 2).await;
    let orders = read_until(&commerce, Duration::from_secs(30), |g| !g.is_empty()).await;
    // Give a wrongly emitted duplicate or forgery time to show up.
    let more_orders = read_until(&commerce, Duration::from_secs(5), |_| false).await;
    let more_scm = read_until(&scm, Duration::from_secs(2), |_| false).await;

    let types = |events: &[Seen]| -> Vec<String> {
        events
            .iter()
            .map(|e| header(e, "ce_type").unwrap_or_default())
            .collect()
    };
    let all_orders: Vec<Seen> = orders.into_iter().chain(more_orders).collect();
    assert_eq!(
        types(&all_orders),
        ["dev.sluice.events.commerce.OrderPlaced"],
        "one OrderPlaced, no replayed one, no forged OrderPaid"
    );
    let all_scm: Vec<Seen> = scm_events.into_iter().chain(more_scm).collect();
    let mut scm_types = types(&all_scm);
    scm_types.sort();
    assert_eq!(
        scm_types,
        [
            "dev.sluice.events.scm.CodePushed",
            "dev.sluice.events.scm.IssueOpened"
        ],
        "one push, no replayed one, no forged pull request"
    );
    let mut classes: Vec<String> = dead.iter().map(class).collect();
    classes.sort();
    assert_eq!(classes, ["EventTypeMismatch", "EventTypeMismatch"]);
    assert!(dead.iter().any(|d| header(d, "kafka_dlt-exception-message")
        .unwrap_or_default()
        .contains("claims `orders/paid`")));
}

#[tokio::test]
async fn copied_headers_beyond_their_room_get_431() {
    let pl = pipeline("inthdr").await;
    let body = br#"{"type":"a.b"}"#.to_vec();
    let mut headers = sign::standard_webhooks(SW_SECRET, "msg_hdr", now_unix(), &body).unwrap();
    headers.push(("user-agent", "u".repeat(20_000)));
    let (status, _, json) = post(&pl.gateway.url("/webhooks/hooks"), &headers, body).await;
    assert_eq!(status, 431, "{json}");
    assert_eq!(json["error"]["code"], "headers_too_large");
}
