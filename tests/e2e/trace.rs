//! One trace per delivery: a webhook sent with a W3C `traceparent` is followed through the
//! raw record, the normalized event and the saga command it causes; each hop carries the
//! same trace id in its `traceparent` header (with its own span id). The processes export
//! their spans over OTLP/HTTP to a receiver inside the test, which checks that the exported
//! spans form one tree: caller → webhook → normalizer → saga transition → participant, with
//! the span ids in the record headers naming exported spans.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::normalizer::{read_until, reader, spawn_sluice, ChildGuard};
use crate::support::{free_port, free_ports, require_stack, sluice_async, temp_file};

/// `topology/topology.yaml` with every topic under `prefix` instead of `sluice` (event types
/// such as `dev.sluice.…` keep theirs).
fn own_topology(prefix: &str) -> String {
    let reference = std::fs::read_to_string(root("topology/topology.yaml")).unwrap();
    let mut out = String::with_capacity(reference.len());
    let mut rest = reference.as_str();
    while let Some(at) = rest.find("sluice.") {
        let before = rest[..at].chars().next_back();
        let is_topic = !before.is_some_and(|c| c == '.' || c.is_alphanumeric());
        out.push_str(&rest[..at]);
        out.push_str(if is_topic { prefix } else { "sluice" });
        out.push('.');
        rest = &rest[at + "sluice.".len()..];
    }
    out.push_str(rest);
    out.replace("prefix: sluice\n", &format!("prefix: {prefix}\n"))
}

fn root(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn trace_id(headers: &std::collections::BTreeMap<String, Vec<u8>>) -> Option<String> {
    let tp = String::from_utf8_lossy(headers.get("traceparent")?).into_owned();
    sluice_schemas::traceparent::trace_id(&tp).map(str::to_string)
}

/// A span as the receiver saw it: name, trace id, span id, parent span id (hex).
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

type Spans = Arc<Mutex<Vec<Exported>>>;

async fn collect(State(spans): State<Spans>, body: Bytes) -> axum::http::StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut seen = spans.lock().unwrap();
    for span in request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
    {
        seen.push(Exported {
            name: span.name.clone(),
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            parent: hex(&span.parent_span_id),
        });
    }
    axum::http::StatusCode::OK
}

/// An OTLP/HTTP (protobuf) trace receiver on `port`.
async fn otlp_receiver(port: u16) -> Spans {
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(collect))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    spans
}

/// The parent-id field of a traceparent header: the span that wrote the record.
fn span_of(headers: &std::collections::BTreeMap<String, Vec<u8>>) -> String {
    String::from_utf8_lossy(&headers["traceparent"])[36..52].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_command_a_webhook_causes_carries_its_trace_id() {
    require_stack().await;
    let otlp = free_port();
    let spans = otlp_receiver(otlp).await;
    // The reference topology under a prefix of its own: roles of other tests share the
    // `sluice` prefix's consumer groups and would take (and trace) this test's records.
    let prefix = format!("tr{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let file = temp_file("topology.yaml", &own_topology(&prefix))
        .display()
        .to_string();
    for cmd in [["topology", "apply"], ["schemas", "register"]] {
        let args = [cmd[0], cmd[1], "--topology", &file];
        let (ok, out, err) = sluice_async(args.iter().map(|s| s.to_string()).collect()).await;
        assert!(ok, "{cmd:?}: {out}{err}");
    }
    let secret = "trace-test-shopify-secret";
    // `sluice run` puts its child roles on the admin ports after its own.
    let (gateway, admin, sagas_admin) = (free_port(), free_ports(9), free_port());
    let instance = format!("trace-{gateway}");
    let env: Vec<(&str, String)> = vec![
        ("SLUICE_SECRET_SHOPIFY", secret.into()),
        ("SLUICE_SECRET_STRIPE", "x".into()),
        ("SLUICE_SECRET_STRIPE_PREVIOUS", "y".into()),
        ("SLUICE_SECRET_GITHUB", "x".into()),
        ("SLUICE_SENDGRID_PUBLIC_KEY", "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHhhTL9R1TALzBB2cdc6zO4P/2BrHzk/ogsyxyYvFiW6kbDEcTi/0DdlqNlPm5FRF0y3+SG7O11x6kMahiIHAow==".into()),
        ("SLUICE_SECRET_SLACK", "x".into()),
        ("SLUICE_SECRET_STANDARD_WEBHOOKS", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()),
        ("SLUICE_SECRET_GENERIC", "x".into()),
        ("SLUICE_GATEWAY__LISTEN", format!("127.0.0.1:{gateway}")),
        ("SLUICE_ADMIN__LISTEN", format!("127.0.0.1:{admin}")),
        ("SLUICE_INSTANCE_ID", instance.clone()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{otlp}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ];
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _run: ChildGuard = spawn_sluice(&["run", "--topology", &file], &refs);
    let sagas_listen = format!("127.0.0.1:{sagas_admin}");
    let _sagas: ChildGuard = spawn_sluice(
        &["saga", "run", "--topology", &file],
        &[
            ("SLUICE_ADMIN__LISTEN", sagas_listen.as_str()),
            ("SLUICE_INSTANCE_ID", instance.as_str()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://127.0.0.1:{otlp}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );

    // A Shopify order with an id no other run used, so it starts a new saga.
    let mut order: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root("tests/fixtures/webhooks/shopify/orders.create.json")).unwrap(),
    )
    .unwrap();
    let order_id = format!("{}", sluice_schemas::metadata::now_ms());
    order["id"] = serde_json::json!(order_id.parse::<u64>().unwrap());
    let body = serde_json::to_vec(&order).unwrap();
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut req = http
            .post(format!("http://127.0.0.1:{gateway}/webhooks/shopify"))
            .header("traceparent", &traceparent)
            .header("content-type", "application/json")
            .body(body.clone());
        for (k, v) in sluice_producers::sign::shopify(
            secret,
            "orders/create",
            &format!("trace-{order_id}"),
            &body,
        ) {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) if r.status() == 202 => break,
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => panic!("the gateway did not accept the delivery: {other:?}"),
        }
    }

    let orders = reader(&format!("{prefix}.events.commerce"));
    let placed = read_until(&orders, Duration::from_secs(60), |g| {
        g.iter().any(|r| r.0 == order_id)
    })
    .await;
    let event = placed
        .iter()
        .find(|r| r.0 == order_id)
        .expect("the OrderPlaced event");
    assert_eq!(
        trace_id(&event.1).as_deref(),
        Some(caller_trace),
        "normalized event keeps the trace"
    );
    assert_ne!(
        String::from_utf8_lossy(&event.1["traceparent"]),
        traceparent,
        "with a span of its own"
    );

    let commands = reader(&format!("{prefix}.saga.order-fulfillment.commands"));
    let got = read_until(&commands, Duration::from_secs(60), |g| {
        g.iter()
            .any(|r| r.0 == order_id || String::from_utf8_lossy(&r.2).contains(&order_id))
    })
    .await;
    let command = got
        .iter()
        .find(|r| r.0 == order_id || String::from_utf8_lossy(&r.2).contains(&order_id))
        .expect("the saga's first command");
    assert_eq!(
        trace_id(&command.1).as_deref(),
        Some(caller_trace),
        "the saga command carries the webhook's trace id"
    );

    // The exported spans: one tree from the caller's span down to the participant.
    let (event_span, command_span) = (span_of(&event.1), span_of(&command.1));
    let find = |all: &[Exported], name: &str, id: Option<&str>| {
        all.iter()
            .find(|s| {
                s.trace_id == caller_trace && s.name == name && id.is_none_or(|i| s.span_id == i)
            })
            .cloned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (webhook, normalize, transition, participant) = loop {
        let all = spans.lock().unwrap().clone();
        let normalize = find(&all, "normalize", Some(&event_span));
        let transition = find(&all, "saga.transition", Some(&command_span));
        let webhook = normalize
            .as_ref()
            .and_then(|n| find(&all, "webhook.receive", Some(&n.parent)));
        let participant = all.iter().find(|s| {
            s.trace_id == caller_trace && s.name == "saga.participant" && s.parent == command_span
        });
        match (webhook, normalize, transition, participant) {
            (Some(w), Some(n), Some(t), Some(p)) => break (w, n, t, p.clone()),
            found if std::time::Instant::now() > deadline => panic!(
                "spans of trace {caller_trace} missing: found {found:?}; all exported: {all:#?}"
            ),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    assert_eq!(
        webhook.parent, "00f067aa0ba902b7",
        "the caller's span is the root's parent"
    );
    assert_eq!(
        normalize.parent, webhook.span_id,
        "the raw record names the webhook span"
    );
    assert_eq!(participant.parent, transition.span_id);
    // The transition that wrote the command descends from the normalized event.
    let all = spans.lock().unwrap().clone();
    let mut at = transition.clone();
    let mut hops = 0;
    while at.parent != normalize.span_id {
        at = all
            .iter()
            .find(|s| s.span_id == at.parent)
            .unwrap_or_else(|| panic!("span {} has no exported parent {}", at.name, at.parent))
            .clone();
        hops += 1;
        assert!(
            hops < 10,
            "no path from the saga transition to the normalizer span"
        );
    }
}
