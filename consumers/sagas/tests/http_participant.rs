//! The built-in HTTP participant against a real HTTP server on 127.0.0.1: the request it
//! builds (templates, secrets, `Idempotency-Key`), and what each kind of answer means for
//! the saga step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_runtime::outbound::{
    BreakerConfig, BreakerState, ClientConfig, EndpointSettings, Endpoints, Outbound,
    OutboundClient, RetrySchedule,
};
use sluice_sagas::http::participant::upstream_settings;
use sluice_sagas::http::{HttpCall, HttpParticipant, CALL_KEY};
use sluice_sagas::instance::Kind;
use sluice_sagas::messages::Command;
use sluice_sagas::participant::Outcome;
use sluice_topology::model::{HttpCallSpec, UpstreamSpec};

/// One request the server saw: path, idempotency key, authorization, body.
type Request = (String, String, String, Value);

/// What the server saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Request>>>);

impl Seen {
    fn all(&self) -> Vec<Request> {
        self.0.lock().unwrap().clone()
    }
}

/// `/charges` charges once per key and answers the same again; `/status/{code}` answers
/// that code; `/limited/{n}` answers 429 `Retry-After: 1` to its first n requests.
async fn provider() -> (String, Seen) {
    let seen = Seen::default();
    let charged: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let limited = Arc::new(Mutex::new(0u32));
    let app = Router::new()
        .route(
            "/charges/{order}",
            post(
                move |Path(order): Path<String>, headers: HeaderMap, State(seen): State<Seen>, Json(body): Json<Value>| {
                    let charged = Arc::clone(&charged);
                    async move {
                        record(&seen, &format!("/charges/{order}"), &headers, body);
                        let key = header_text(&headers, "idempotency-key");
                        let mut charged = charged.lock().unwrap();
                        let n = charged.len() + 1;
                        let answer = charged
                            .entry(key)
                            .or_insert_with(|| json!({"id": format!("ch_{n}"), "status": "succeeded", "order": order}))
                            .clone();
                        (StatusCode::CREATED, Json(answer))
                    }
                },
            ),
        )
        .route(
            "/status/{code}",
            post(|Path(code): Path<u16>, headers: HeaderMap, State(seen): State<Seen>, Json(body): Json<Value>| async move {
                record(&seen, &format!("/status/{code}"), &headers, body);
                (StatusCode::from_u16(code).unwrap(), Json(json!({"error": "as asked"})))
            }),
        )
        .route(
            "/limited/{n}",
            post(move |Path(n): Path<u32>, headers: HeaderMap, State(seen): State<Seen>, Json(body): Json<Value>| {
                let limited = Arc::clone(&limited);
                async move {
                    record(&seen, "/limited", &headers, body);
                    let mut so_far = limited.lock().unwrap();
                    *so_far += 1;
                    if *so_far <= n {
                        (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response()
                    } else {
                        (StatusCode::OK, Json(json!({"id": "ok_1", "status": "succeeded"}))).into_response()
                    }
                }
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn record(seen: &Seen, path: &str, headers: &HeaderMap, body: Value) {
    seen.0.lock().unwrap().push((
        path.to_string(),
        header_text(headers, "idempotency-key"),
        header_text(headers, "authorization"),
        body,
    ));
}

/// An outbound client allowed to reach 127.0.0.1 (and nothing else private).
fn outbound() -> Outbound {
    outbound_with(EndpointSettings::default())
}

/// [`outbound`] with these breaker and limit settings per upstream.
fn outbound_with(settings: EndpointSettings) -> Outbound {
    let client = OutboundClient::new(ClientConfig {
        allow: vec!["127.0.0.1/32".into()],
        ..ClientConfig::default()
    })
    .unwrap();
    Outbound::new(client, Endpoints::new(settings))
}

/// A participant whose `charge` step is `spec` (its reply due within `timeout`).
fn participant(spec: Value, timeout: Duration, outbound: Outbound) -> HttpParticipant {
    let spec: HttpCallSpec = serde_json::from_value(spec).unwrap();
    let call = HttpCall::new(&spec, timeout).unwrap();
    let calls = HashMap::from([(
        ("orders".to_string(), "charge".to_string(), Kind::Action),
        call,
    )]);
    HttpParticipant::from_calls(calls, outbound)
        .with_schedule(RetrySchedule::parse("0s, 50ms, 100ms, 200ms, 400ms").unwrap())
}

fn command(id: &str, data: Value) -> Command {
    Command {
        event_type: "x.Charge".into(),
        saga_id: "order 7/a".into(),
        saga_name: "orders".into(),
        step: "charge".into(),
        kind: Kind::Action,
        compensates: None,
        attempt: 1,
        command_id: id.into(),
        correlation_id: "order 7/a".into(),
        reply_topic: "r".into(),
        data: data.to_string(),
        results: json!({"reserve": {"reservation": "res_9"}}).to_string(),
    }
}

fn order() -> Value {
    json!({"order_id": "order 7/a", "total": {"amount": "19.99", "currency": "EUR"}, "items": 3})
}

#[tokio::test]
async fn a_call_sends_its_templates_and_keeps_the_fields_later_steps_need() {
    let (base, seen) = provider().await;
    std::env::set_var("HTTP_STEP_TEST_BASE", &base);
    std::env::set_var("HTTP_STEP_TEST_KEY", "sk_test_secret");
    let p = participant(
        json!({
            "method": "POST",
            "url": "{env:HTTP_STEP_TEST_BASE}/charges/{data.order_id}",
            "headers": {"Authorization": "Bearer {env:HTTP_STEP_TEST_KEY}"},
            "body": {"amount": "{data.total.amount}", "items": "{data.items}", "reservation": "{results.reserve.reservation}", "note": "order {saga_id}"},
            "success": {"status": [201], "field": "status", "equals": "succeeded"},
            "keep": {"payment_id": "id"}
        }),
        Duration::from_secs(5),
        outbound(),
    );
    let first = p.call(&command("order 7/a:charge:do:1", order())).await;
    let again = p.call(&command("order 7/a:charge:do:1", order())).await;
    let Outcome::Succeeded {
        result: Some(result),
    } = &first
    else {
        panic!("{first:?}")
    };
    assert_eq!(result["payment_id"], "ch_1");
    assert_eq!(result[CALL_KEY]["status"], 201);
    assert_eq!(result[CALL_KEY]["method"], "POST");
    // The URL shown never carries the secret base; the saga's value is percent-encoded.
    assert_eq!(result[CALL_KEY]["url"], "[redacted]/charges/order%207%2Fa");
    let Outcome::Succeeded {
        result: Some(again),
    } = &again
    else {
        panic!("{again:?}")
    };
    assert_eq!(
        again["payment_id"], "ch_1",
        "the same key gets the same answer"
    );
    let seen = seen.all();
    assert_eq!(seen.len(), 2);
    for (path, key, auth, body) in &seen {
        assert_eq!(path, "/charges/order 7/a");
        assert_eq!(key, "order 7/a:charge:do:1");
        assert_eq!(auth, "Bearer sk_test_secret");
        assert_eq!(
            body,
            &json!({"amount": "19.99", "items": 3, "reservation": "res_9", "note": "order order 7/a"})
        );
    }
}

#[tokio::test]
async fn a_permanent_status_fails_the_step_without_retrying() {
    let (base, seen) = provider().await;
    for (status, permanent) in [(422, json!([])), (409, json!([409])), (402, json!([402]))] {
        let p = participant(
            json!({"method": "POST", "url": format!("{base}/status/{status}"), "body": {"a": 1}, "permanent": permanent}),
            Duration::from_secs(5),
            outbound(),
        );
        let outcome = p.call(&command(&format!("c{status}"), order())).await;
        let Outcome::Failed { reason, retryable } = &outcome else {
            panic!("{outcome:?}")
        };
        assert!(!retryable);
        assert!(reason.contains(&format!("→ {status}")), "{reason}");
        assert!(reason.contains("permanent"), "{reason}");
    }
    assert_eq!(seen.all().len(), 3, "one request each");
}

#[tokio::test]
async fn too_many_requests_waits_as_long_as_retry_after_asks() {
    let (base, seen) = provider().await;
    let p = participant(
        json!({"method": "POST", "url": format!("{base}/limited/1"), "body": {}, "keep": {"id": "id"}}),
        Duration::from_secs(5),
        outbound(),
    );
    let started = Instant::now();
    let outcome = p.call(&command("c1", order())).await;
    let Outcome::Succeeded {
        result: Some(result),
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(result["id"], "ok_1");
    assert_eq!(result[CALL_KEY]["attempts"], 2);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the schedule's 50 ms gave way to Retry-After: 1"
    );
    let keys: Vec<String> = seen.all().into_iter().map(|s| s.1).collect();
    assert_eq!(keys, vec!["c1", "c1"], "a retry carries the same key");
}

#[tokio::test]
async fn unavailable_upstreams_leave_the_step_to_its_timeout_and_open_the_breaker() {
    let (base, seen) = provider().await;
    let outbound = outbound();
    let p = participant(
        json!({"method": "POST", "url": format!("{base}/status/503"), "body": {}}),
        Duration::from_secs(2),
        outbound.clone(),
    );
    let outcome = p.call(&command("c1", order())).await;
    let Outcome::NoReply { why } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(why.contains("transient"), "{why}");
    // The schedule's five attempts failed, and five consecutive failures opened the
    // upstream's breaker.
    let upstream = base.trim_start_matches("http://");
    assert_eq!(
        outbound.endpoints().get(upstream).breaker.state(),
        BreakerState::Open
    );
    assert_eq!(seen.all().len(), 5);
}

#[tokio::test]
async fn while_the_breaker_is_open_a_call_waits_and_goes_through_once_it_recovers() {
    let (base, seen) = provider().await;
    let outbound = outbound_with(EndpointSettings {
        breaker: BreakerConfig {
            consecutive_failures: 2,
            cool_down: Duration::from_millis(1500),
            ..BreakerConfig::default()
        },
        ..EndpointSettings::default()
    });
    let failing = participant(
        json!({"method": "POST", "url": format!("{base}/status/503"), "body": {}}),
        Duration::from_secs(1),
        outbound.clone(),
    );
    assert!(matches!(
        failing.call(&command("c1", order())).await,
        Outcome::NoReply { .. }
    ));
    let upstream = base.trim_start_matches("http://");
    assert_eq!(
        outbound.endpoints().get(upstream).breaker.state(),
        BreakerState::Open
    );
    let sent = seen.all().len();
    assert_eq!(sent, 2, "the breaker opened after two failures");
    // Another step on the same upstream is not failed while the breaker is open: it waits,
    // sends nothing, and leaves the decision to the step's timeout.
    let charge = json!({"method": "POST", "url": format!("{base}/charges/o1"), "body": {}, "keep": {"id": "id"}});
    let short = participant(charge.clone(), Duration::from_millis(500), outbound.clone());
    let outcome = short.call(&command("c2", order())).await;
    let Outcome::NoReply { why } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(why.contains("no attempt could start"), "{why}");
    assert_eq!(seen.all().len(), sent);
    // With time to wait out the cool-down, the resent command goes through (same key).
    let patient = participant(charge, Duration::from_secs(5), outbound);
    let outcome = patient.call(&command("c2", order())).await;
    let Outcome::Succeeded {
        result: Some(result),
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(result["id"], "ch_1");
    assert_eq!(seen.all().last().unwrap().1, "c2");
}

#[tokio::test]
async fn a_declared_upstream_rate_limits_its_calls() {
    let (base, seen) = provider().await;
    let outbound = outbound();
    let psp: UpstreamSpec =
        serde_json::from_value(json!({"name": "psp", "rate_per_sec": 1, "burst": 1})).unwrap();
    outbound
        .endpoints()
        .configure(&psp.name, &upstream_settings(&psp));
    let p = participant(
        json!({"method": "POST", "url": format!("{base}/charges/o1"), "body": {}, "upstream": "psp"}),
        Duration::from_secs(5),
        outbound,
    );
    let started = Instant::now();
    for id in ["c1", "c2"] {
        let outcome = p.call(&command(id, order())).await;
        let Outcome::Succeeded {
            result: Some(result),
        } = &outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(result[CALL_KEY]["upstream"], "psp");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the second call waited for the rate"
    );
    assert_eq!(seen.all().len(), 2);
}

#[tokio::test]
async fn missing_data_fails_before_anything_is_sent_and_secrets_stay_out_of_reasons() {
    let (base, seen) = provider().await;
    std::env::set_var("HTTP_STEP_TEST_TOKEN", "tok_very_secret");
    let p = participant(
        json!({"method": "POST", "url": format!("{base}/status/500?token={{env:HTTP_STEP_TEST_TOKEN}}"), "body": {"x": "{data.nope}"}}),
        Duration::from_secs(5),
        outbound(),
    );
    let outcome = p.call(&command("c1", order())).await;
    let Outcome::Failed { reason, retryable } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(!retryable);
    assert!(reason.contains("`{data.nope}` is missing"), "{reason}");
    assert!(seen.all().is_empty());
    // The same call with its data present fails transiently; its reason shows no token.
    let p = participant(
        json!({"method": "POST", "url": format!("{base}/status/422?token={{env:HTTP_STEP_TEST_TOKEN}}"), "body": {}}),
        Duration::from_secs(5),
        outbound(),
    );
    let outcome = p.call(&command("c2", order())).await;
    let Outcome::Failed { reason, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(!reason.contains("tok_very_secret"), "{reason}");
    assert!(reason.contains("token=[redacted]"), "{reason}");
}
