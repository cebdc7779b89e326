//! A consumer nobody here wrote, Confluent's Python `AvroDeserializer`, decodes sluice's
//! events from the same registry to the expected fields.

use std::process::Command;

use sluice_runtime::kafka::create_topic_if_missing;
use sluice_schemas::codec::encode_with;
use sluice_schemas::json::from_json;
use sluice_schemas::metadata::EventMetadata;
use sluice_schemas::{Catalog, RegistryClient};

use crate::support::{clients, config, registry, require_stack, send_event, unique_topic};

const ORDER: &str = "dev.sluice.events.commerce.OrderPlaced";

/// The Python of the test venv (`dev/setup`), with the tools in `dev/interop-requirements.txt`.
pub fn python() -> std::path::PathBuf {
    let cache = std::env::var("SLUICE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sluice")
        });
    let py = cache.join("py/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `make test` (dev/setup installs the Python test tools there)",
        py.display()
    );
    py
}

#[tokio::test]
async fn confluent_python_client_decodes_sluice_events() {
    require_stack().await;
    let topic = unique_topic("interop");
    let clients = clients();
    create_topic_if_missing(&clients.admin().unwrap(), &topic, 1)
        .await
        .unwrap();
    let catalog = Catalog::embedded().unwrap();
    let entry = catalog.latest(ORDER).unwrap();
    let registry_client = RegistryClient::new(&registry()).unwrap();
    let id = registry_client
        .register(&format!("{topic}-{ORDER}"), &entry.json)
        .await
        .unwrap();

    let producer = clients.producer("interop").unwrap();
    let mut sent = Vec::new();
    for (i, total) in ["1234.5600", "-0.0100", "0.0000"].iter().enumerate() {
        let meta = EventMetadata::new("sluice://sources/shopify", ORDER);
        let event = serde_json::json!({
            "event_id": meta.id, "occurred_at": meta.time_ms, "source": meta.source,
            "subject": format!("order-{i}"), "order_id": format!("{i}"), "order_number": null,
            "customer_email": "buyer@example.com",
            "total": {"amount": total, "currency": "EUR"},
            "line_items": [{"title": "Widget", "quantity": 2, "sku": "W-1",
                            "unit_price": {"amount": "617.28", "currency": "EUR"}}],
            "provider": "shopify"
        });
        let value = from_json(&event, &entry.schema).unwrap_or_else(|e| panic!("{e:?}"));
        let payload = encode_with(id, &entry.schema, value).unwrap();
        send_event(&producer, &topic, &format!("{i}"), &payload, &meta).await;
        sent.push((meta.id.clone(), total.to_string()));
    }

    let cfg = config();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/interop_consume.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args([
                script,
                &cfg.kafka.bootstrap_servers,
                &cfg.registry.url,
                &topic,
                "3",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python consumer failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 3);
    for ((event_id, total), record) in sent.iter().zip(&got) {
        let v = &record["value"];
        assert_eq!(&v["event_id"], event_id);
        assert_eq!(
            v["total"]["amount"],
            serde_json::json!(total),
            "decimal read by fastavro"
        );
        assert_eq!(v["total"]["currency"], "EUR");
        assert_eq!(v["line_items"][0]["unit_price"]["amount"], "617.2800");
        assert_eq!(v["line_items"][0]["quantity"], 2);
        assert_eq!(v["order_number"], serde_json::Value::Null);
        assert_eq!(record["headers"]["ce_id"], *event_id);
        assert_eq!(record["headers"]["ce_type"], ORDER);
    }
}
