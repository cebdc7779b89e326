//! One trace per delivery: a webhook sent with a W3C `traceparent` is followed through the
//! raw record, the normalized event and the saga command it causes; each hop carries the
//! same trace id in its `traceparent` header (with its own span id).

use std::time::Duration;

use crate::normalizer::{read_until, reader, spawn_sluice, ChildGuard};
use crate::support::{free_port, require_stack, sluice_async};

fn root(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn trace_id(headers: &std::collections::BTreeMap<String, Vec<u8>>) -> Option<String> {
    let tp = String::from_utf8_lossy(headers.get("traceparent")?).into_owned();
    sluice_schemas::traceparent::trace_id(&tp).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_command_a_webhook_causes_carries_its_trace_id() {
    require_stack().await;
    for cmd in [["topology", "apply"], ["schemas", "register"]] {
        let (ok, out, err) = sluice_async(cmd.iter().map(|s| s.to_string()).collect()).await;
        assert!(ok, "{cmd:?}: {out}{err}");
    }
    let secret = "trace-test-shopify-secret";
    let (gateway, admin, sagas_admin) = (free_port(), free_port(), free_port());
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
    ];
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _run: ChildGuard = spawn_sluice(&["run"], &refs);
    let sagas_listen = format!("127.0.0.1:{sagas_admin}");
    let _sagas: ChildGuard = spawn_sluice(
        &["sagas"],
        &[
            ("SLUICE_ADMIN__LISTEN", sagas_listen.as_str()),
            ("SLUICE_INSTANCE_ID", instance.as_str()),
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

    let orders = reader("sluice.events.commerce");
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

    let commands = reader("sluice.saga.order-fulfillment.commands");
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
}
