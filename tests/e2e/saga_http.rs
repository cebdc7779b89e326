//! Saga steps that are HTTP calls, against the real broker and registry and a real local
//! payment provider (`dev/payments.py`, honouring `Idempotency-Key` and counting its side
//! effects per key, with fault injection): the order-fulfillment saga with its payment step
//! and refund declared as `http:` calls, executed by sluice's built-in HTTP participant.
//!
//! Every request goes to 127.0.0.1: the participants are allowed exactly that address.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use sluice_sagas::demo::{scratch_topology, Scratch};
use sluice_sagas::http::payments::with_http_payments;

use crate::normalizer::ChildGuard;
use crate::saga::{executed, place, Deployment, Lifecycle};
use crate::support::free_port;

/// The reference saga with test-sized timeouts.
fn scratch(prefix: &str) -> String {
    scratch_topology(
        &crate::support::reference_topology(),
        "order-fulfillment",
        &Scratch {
            prefix,
            partitions: 3,
            timeout: "3s",
            // Long enough for a call held by the provider to be killed mid-way.
            timeouts: &[("charge-payment", "10s")],
            retry: Some("{max_attempts: 2, backoff: 500ms}"),
            compensation_retry: "{max_attempts: 2, backoff: 300ms}",
        },
    )
    .unwrap()
}

/// [`scratch`] with its payment step an HTTP call answered by the built-in participant
/// `payment-api`.
fn topology(prefix: &str) -> String {
    let out = with_http_payments(&scratch(prefix), None);
    assert!(
        out.contains("url: \"{env:PAYMENTS_URL}/v1/refunds\""),
        "{out}"
    );
    out
}

/// [`topology`] with the payment calls going to upstream `psp`, whose breaker opens after
/// 3 failures, probes again after 2 s and closes after one successful probe.
fn topology_with_psp(prefix: &str) -> String {
    with_http_payments(&scratch(prefix), Some("psp")) + "upstreams:\n  - {name: psp, breaker: {consecutive_failures: 3, cool_down: 2s, close_after: 1}}\n"
}

/// `dev/payments.py` on a free port.
pub(crate) struct Provider {
    _child: ChildGuard,
    pub base: String,
}

impl Provider {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// With the demo's fault rules (`--demo`), as `make demo` runs it.
    pub(crate) fn demo() -> Self {
        Self::start_with(&["--demo"])
    }

    fn start_with(args: &[&str]) -> Self {
        let (child, base) = crate::support::start_dev_server("payments.py", args);
        Self {
            _child: ChildGuard(child),
            base,
        }
    }

    pub(crate) async fn fault(&self, rule: Json) {
        let r = reqwest::Client::new()
            .post(format!("{}/_faults", self.base))
            .json(&rule)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    /// Waits (up to a minute) until order `id`'s charge has been requested.
    async fn until_charge_requested(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.counts().await["requests"][charge_key(id)].is_null() {
            assert!(
                Instant::now() < deadline,
                "the charge of {id} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn counts(&self) -> Json {
        crate::support::get(format!("{}/_counts", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The orchestrator and the participants (the demo ones and the HTTP one) on `d`, talking
/// to `provider`.
fn participants(d: &Deployment, provider: &Provider, admin: u16) -> ChildGuard {
    let listen = format!("127.0.0.1:{admin}");
    d.participants_with_env(
        &[],
        &[
            ("SLUICE_ADMIN__LISTEN", &listen),
            ("SLUICE_OUTBOUND_ALLOW", "127.0.0.1/32"),
            ("PAYMENTS_URL", &provider.base),
            ("PAYMENTS_KEY", "sk_test_e2e_secret"),
        ],
    )
}

/// A provider, a deployment of `yaml` (e.g. [`topology`]) and its orchestrator.
async fn deploy(yaml: fn(&str) -> String) -> (Provider, Deployment, ChildGuard) {
    let provider = Provider::start();
    let d = Deployment::of(yaml).await;
    let orchestrator = d.orchestrator();
    (provider, d, orchestrator)
}

/// Places `orders` (id, SKUs) and waits until each ended with the lifecycle event `end`.
async fn place_and_end(d: &Deployment, orders: &[(&String, &[&str])], end: &str) {
    let publisher = d.publisher().await;
    for (id, skus) in orders {
        place(&publisher, id, skus).await;
    }
    let ids: Vec<String> = orders.iter().map(|(id, _)| id.to_string()).collect();
    let mut lifecycle = Lifecycle::new(d);
    lifecycle
        .until_terminal(ids.iter(), Duration::from_secs(90))
        .await;
    let events = lifecycle.by_id();
    for id in &ids {
        assert_eq!(Lifecycle::terminal(&events[id]), [end], "{id}");
    }
}

/// The provider's log lines of requests to `path` for order `id`.
fn requests_of<'a>(counts: &'a Json, path: &str, id: &str) -> Vec<&'a Json> {
    counts["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["path"] == path && l["order_id"] == id)
        .collect()
}

fn charge_key(id: &str) -> String {
    format!("/v1/charges {id}:charge-payment:do:1")
}

/// The exact accounting of the provider's side effects: one per idempotency key in
/// `charged` (orders) and `refunded` (orders whose charge was refunded), none for any other
/// key, and as many charge and refund objects as keys.
fn assert_effects(counts: &Json, charged: &[&String], refunded: &[&String]) {
    let mut expected = serde_json::Map::new();
    for id in charged {
        expected.insert(charge_key(id), 1.into());
    }
    for id in refunded {
        expected.insert(format!("/v1/refunds {id}:charge-payment:undo:1"), 1.into());
    }
    assert_eq!(counts["effects"], Json::Object(expected), "{counts:#}");
    assert_eq!(counts["charges"].as_object().unwrap().len(), charged.len());
    assert_eq!(counts["refunds"].as_object().unwrap().len(), refunded.len());
}

/// The charges the provider made for order `id`.
fn charges_of<'a>(counts: &'a Json, id: &str) -> Vec<&'a Json> {
    counts["charges"]
        .as_object()
        .unwrap()
        .values()
        .filter(|c| c["order_id"] == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_payment_step_completes_and_a_429_is_retried_after_retry_after() {
    let (provider, d, _orchestrator) = deploy(topology).await;
    let _participants = participants(&d, &provider, free_port());
    let ok = format!("{}-ok", d.prefix);
    let limited = format!("{}-limited", d.prefix);
    provider
        .fault(json!({"path": "/v1/charges", "order_suffix": "-limited", "status": 429, "times": 1, "retry_after": 1}))
        .await;
    place_and_end(
        &d,
        &[(&ok, &["SKU-1", "SKU-2"]), (&limited, &["SKU-1"])],
        "SagaCompleted",
    )
    .await;
    let counts = provider.counts().await;
    // One charge per order, with the amount from the saga's data and the secret header.
    for (id, amount) in [(&ok, "20.0000"), (&limited, "10.0000")] {
        let charges = charges_of(&counts, id);
        assert_eq!(charges.len(), 1, "{id}: {counts:#}");
        assert_eq!(charges[0]["amount"], amount);
        assert_eq!(charges[0]["currency"], "EUR");
        assert_eq!(counts["effects"][charge_key(id)], 1, "{counts:#}");
    }
    assert_eq!(counts["requests"][charge_key(&ok)], 1);
    assert_effects(&counts, &[&ok, &limited], &[]);
    assert!(counts["log"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["authorization"] == true));
    // The 429 was answered once, and the retry waited at least its Retry-After.
    assert_eq!(counts["requests"][charge_key(&limited)], 2, "{counts:#}");
    let times: Vec<f64> = requests_of(&counts, "/v1/charges", &limited)
        .iter()
        .map(|l| l["time"].as_f64().unwrap())
        .collect();
    assert_eq!(times.len(), 2);
    assert!(times[1] - times[0] >= 0.9, "{times:?}");
    // The charge's id is kept as the step's result, with the call's summary (no secret).
    let s = d.state(&ok).await;
    let charge = s["completed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == "charge-payment")
        .unwrap();
    let result: Json = serde_json::from_str(charge["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["payment_id"], charges_of(&counts, &ok)[0]["id"]);
    assert_eq!(result["_http"]["status"], 201);
    assert_eq!(result["_http"]["url"], "[redacted]/v1/charges");
    let (shown, out, err) = d.sluice(&["saga", "show", &ok]).await;
    assert!(shown, "{err}");
    assert!(out.contains("POST [redacted]/v1/charges"), "{out}");
    assert!(
        !out.contains(&provider.base) && !out.contains("sk_test"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_compensates_and_a_later_failure_refunds_over_http_in_reverse() {
    let (provider, d, _orchestrator) = deploy(topology).await;
    let _participants = participants(&d, &provider, free_port());
    provider
        .fault(json!({"path": "/v1/charges", "order_suffix": "-declined", "status": 422}))
        .await;
    let declined = format!("{}-declined", d.prefix);
    let unshippable = format!("{}-noship", d.prefix);
    place_and_end(
        &d,
        &[
            (&declined, &["SKU-1"]),
            (&unshippable, &["SKU-1", "FAIL-SHIPPING"]),
        ],
        "SagaCompensated",
    )
    .await;
    let counts = provider.counts().await;
    // 422 is permanent: one request, no retry, no charge, nothing to refund.
    assert_eq!(counts["requests"][charge_key(&declined)], 1, "{counts:#}");
    assert!(charges_of(&counts, &declined).is_empty());
    let s = d.state(&declined).await;
    assert_eq!(s["failure"]["step"], "charge-payment");
    let reason = s["failure"]["reason"].as_str().unwrap();
    assert!(reason.contains("→ 422"), "{reason}");
    assert!(!reason.contains(&provider.base), "{reason}");
    let effects = d.effects();
    assert_eq!(
        executed(&effects, &declined),
        ["ReserveInventory:succeeded", "ReleaseInventory:succeeded"]
    );
    // The shipment failed after the charge: the refund went over HTTP, once, for that
    // charge, before the inventory was released.
    let charge = charges_of(&counts, &unshippable);
    assert_eq!(charge.len(), 1);
    let refunds: Vec<&Json> = counts["refunds"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["charge"] == charge[0]["id"])
        .collect();
    assert_eq!(refunds.len(), 1, "{counts:#}");
    assert_effects(&counts, &[&unshippable], &[&unshippable]);
    let s = d.state(&unshippable).await;
    assert_eq!(
        compensated_steps(&s),
        ["charge-payment", "reserve-inventory"]
    );
    let refund_at = counts["log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["path"] == "/v1/refunds" && l["key"].as_str().unwrap().starts_with(&unshippable)
        })
        .unwrap()["time"]
        .as_f64()
        .unwrap();
    let released = s["compensated"][1]["at"].as_i64().unwrap() as f64 / 1000.0;
    assert!(
        refund_at <= released,
        "refund {refund_at} before release {released}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_killed_mid_call_resend_the_same_idempotency_key_and_charge_once() {
    let (provider, d, mut orchestrator) = deploy(topology).await;
    let mut first = participants(&d, &provider, free_port());
    // The provider charges, then holds its answer for 4 s: the participant dies meanwhile.
    provider
        .fault(
            json!({"path": "/v1/charges", "order_suffix": "-crash", "delay_ms": 4000, "times": 1}),
        )
        .await;
    let id = format!("{}-crash", d.prefix);
    let publisher = d.publisher().await;
    place(&publisher, &id, &["SKU-1"]).await;
    provider.until_charge_requested(&id).await;
    // SIGKILL both the participant making the call and the orchestrator waiting on it: the
    // reply is never written. The restarted orchestrator resends the command when the step
    // times out, under the same id, so the same Idempotency-Key.
    for process in [&mut first, &mut orchestrator] {
        process.0.kill().unwrap();
        process.0.wait().unwrap();
    }
    let _orchestrator = d.orchestrator();
    let _second = participants(&d, &provider, free_port());
    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until_terminal([id.clone()].iter(), Duration::from_secs(90))
        .await;
    assert_eq!(
        Lifecycle::terminal(&lifecycle.by_id()[&id]),
        ["SagaCompleted"]
    );
    let counts = provider.counts().await;
    let requests = counts["requests"][charge_key(&id)].as_u64().unwrap();
    assert!(requests >= 2, "the same key came again: {counts:#}");
    // Every request for this order carried the one key; one charge was made.
    let keys: Vec<&str> = requests_of(&counts, "/v1/charges", &id)
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.iter()
            .all(|k| *k == format!("{id}:charge-payment:do:1")),
        "{keys:?}"
    );
    assert_effects(&counts, &[&id], &[]);
    assert_eq!(charges_of(&counts, &id).len(), 1, "{counts:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_payments_open_the_breaker_which_recovers_and_the_order_completes() {
    let (provider, d, _orchestrator) = deploy(topology_with_psp).await;
    let admin = free_port();
    let _participants = participants(&d, &provider, admin);
    // Five 503s: three open the breaker, each half-open probe fails once more, then the
    // provider is back.
    provider
        .fault(json!({"path": "/v1/charges", "order_suffix": "-flaky", "status": 503, "times": 5}))
        .await;
    let flaky = format!("{}-flaky", d.prefix);
    place_and_end(&d, &[(&flaky, &["SKU-1"])], "SagaCompleted").await;
    let counts = provider.counts().await;
    assert_eq!(counts["requests"][charge_key(&flaky)], 6, "{counts:#}");
    assert_effects(&counts, &[&flaky], &[]);
    // While open, the breaker held calls back; the probes were at least its cool-down apart.
    let times: Vec<f64> = requests_of(&counts, "/v1/charges", &flaky)
        .iter()
        .map(|l| l["time"].as_f64().unwrap())
        .collect();
    assert!(times[3] - times[2] >= 1.9, "{times:?}");
    let metrics = crate::support::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"sluice_outbound_breaker_transitions_total{endpoint="psp",state="open"} 3"#,
        r#"sluice_outbound_breaker_transitions_total{endpoint="psp",state="closed"} 1"#,
        r#"sluice_outbound_attempts_total{endpoint="psp",reason="status_5xx",verdict="retry_later"} 5"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
}

/// One order whose charge the provider performs, then answers only after the call's budget
/// (80% of the step's 10 s timeout) ran out, on the first `times` requests with its key;
/// waits until the saga ended with `end`. Returns the deployment, the order and the
/// provider's counts.
async fn charge_answered_late(times: u32, suffix: &str, end: &str) -> (Deployment, String, Json) {
    let (provider, d, _orchestrator) = deploy(topology).await;
    let _participants = participants(&d, &provider, free_port());
    provider
        .fault(json!({"path": "/v1/charges", "order_suffix": suffix, "delay_ms": 9000, "times": times}))
        .await;
    let id = format!("{}{suffix}", d.prefix);
    place_and_end(&d, &[(&id, &["SKU-1"])], end).await;
    let counts = provider.counts().await;
    (d, id, counts)
}

/// The steps a saga compensated, in order.
fn compensated_steps(state: &Json) -> Vec<&str> {
    state["compensated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_times_out_is_resent_with_the_same_key_and_charges_once() {
    // The participant gives up, the step times out, the orchestrator resends the command,
    // and the provider answers it from its idempotency store.
    let (d, slow, counts) = charge_answered_late(1, "-slow", "SagaCompleted").await;
    assert_eq!(counts["requests"][charge_key(&slow)], 2, "{counts:#}");
    assert_effects(&counts, &[&slow], &[]);
    assert_eq!(charges_of(&counts, &slow).len(), 1);
    let s = d.state(&slow).await;
    let timeline = s["history"].to_string();
    assert!(timeline.contains("timeout"), "{timeline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_never_answered_is_asked_again_and_refunded_when_the_saga_compensates() {
    // Both attempts the step has go unanswered: the step times out with the charge made but
    // unknown to the saga, which compensates it in case it took effect. The refund needs the
    // charge's id, so the participant first asks the charge again with its own key and gets
    // the stored answer.
    let (d, lost, counts) = charge_answered_late(2, "-lost", "SagaCompensated").await;
    assert_eq!(counts["requests"][charge_key(&lost)], 3, "{counts:#}");
    let charge = charges_of(&counts, &lost);
    assert_eq!(charge.len(), 1);
    assert_effects(&counts, &[&lost], &[&lost]);
    let refund = counts["refunds"].as_object().unwrap().values().next();
    assert_eq!(refund.unwrap()["charge"], charge[0]["id"], "{counts:#}");
    let s = d.state(&lost).await;
    assert_eq!(s["failure"]["kind"], "timed_out", "{s:#}");
    assert_eq!(
        compensated_steps(&s),
        ["charge-payment", "reserve-inventory"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_does_not_hold_back_the_steps_of_other_sagas() {
    let (provider, d, _orchestrator) = deploy(topology).await;
    let _participants = participants(&d, &provider, free_port());
    // The provider charges the slow order, then holds its answer for 6 s: within the call's
    // budget (80% of the step's 10 s), so the call succeeds, late.
    provider
        .fault(
            json!({"path": "/v1/charges", "order_suffix": "-slow", "delay_ms": 6000, "times": 1}),
        )
        .await;
    let slow = format!("{}-slow", d.prefix);
    let publisher = d.publisher().await;
    place(&publisher, &slow, &["SKU-1"]).await;
    provider.until_charge_requested(&slow).await;
    // While that call is held, other orders on every partition go through all their steps,
    // their payments through the same participant and upstream.
    let fast: Vec<String> = (0..6).map(|i| format!("{}-fast-{i}", d.prefix)).collect();
    for id in &fast {
        place(&publisher, id, &["SKU-1"]).await;
    }
    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until_terminal(fast.iter(), Duration::from_secs(60))
        .await;
    let events = lifecycle.by_id();
    let s = d.state(&slow).await;
    assert_eq!(
        s["pending"]["step"], "charge-payment",
        "the slow call was still held when the others finished: {s:#}"
    );
    for id in &fast {
        assert_eq!(Lifecycle::terminal(&events[id]), ["SagaCompleted"], "{id}");
    }
    // The slow order completes too, charged once by its one request.
    lifecycle
        .until_terminal([slow.clone()].iter(), Duration::from_secs(60))
        .await;
    assert_eq!(
        Lifecycle::terminal(&lifecycle.by_id()[&slow]),
        ["SagaCompleted"]
    );
    let counts = provider.counts().await;
    assert_eq!(counts["requests"][charge_key(&slow)], 1, "{counts:#}");
    let all: Vec<&String> = fast.iter().chain([&slow]).collect();
    assert_effects(&counts, &all, &[]);
    for id in all {
        assert_eq!(charges_of(&counts, id).len(), 1, "{id}: {counts:#}");
    }
}
