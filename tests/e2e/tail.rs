//! `sluice tail` decodes through the registry, prints one JSON line per record, and keeps
//! going past a record it cannot decode.

use std::time::Duration;

use rdkafka::producer::FutureRecord;
use sluice_runtime::kafka::create_topic_if_missing;
use sluice_schemas::codec::encode_with;
use sluice_schemas::json::from_json;
use sluice_schemas::{Catalog, RegistryClient};

use crate::support::{clients, registry, require_stack, sluice_async, unique_topic};

#[tokio::test]
async fn tail_prints_decoded_records_and_errors_in_line() {
    require_stack().await;
    let topic = unique_topic("tail");
    let clients = clients();
    create_topic_if_missing(&clients.admin().unwrap(), &topic, 1)
        .await
        .unwrap();
    let entry = Catalog::embedded().unwrap();
    let entry = entry
        .latest("dev.sluice.events.scm.IssueOpened")
        .unwrap()
        .clone();
    let id = RegistryClient::new(&registry())
        .unwrap()
        .register(
            &format!("{topic}-dev.sluice.events.scm.IssueOpened"),
            &entry.json,
        )
        .await
        .unwrap();
    let producer = clients.producer("e2e").unwrap();
    let event = |n: i32| {
        serde_json::json!({"event_id": format!("e{n}"), "occurred_at": 1, "source": "s",
            "repository": "octo/hello", "number": n, "title": "bug", "author": "octocat",
            "url": "https://github.com/octo/hello/issues/1", "labels": ["bug"]})
    };
    let good = |n| {
        encode_with(
            id,
            &entry.schema,
            from_json(&event(n), &entry.schema).unwrap(),
        )
        .unwrap()
    };
    let payloads: Vec<Vec<u8>> = vec![good(1), b"not avro at all".to_vec(), good(3)];
    for p in &payloads {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(p),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let run = |extra: &[&str]| {
        let mut a = vec!["tail".to_string(), topic.clone()];
        a.extend(extra.iter().map(|s| s.to_string()));
        sluice_async(a)
    };
    let (ok, out, err) = run(&["--from-beginning"]).await;
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["value"]["number"], 1);
    assert_eq!(lines[0]["value"]["labels"], serde_json::json!(["bug"]));
    assert_eq!(lines[0]["schema_id"], id);
    assert_eq!(lines[0]["key"], "k");
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("wrong magic byte"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{topic}/0@1")),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["value"]["number"], 3);
    assert_eq!(lines[2]["offset"], 2);

    let (_, out, _) = run(&["--from-beginning", "--max", "1"]).await;
    assert_eq!(out.lines().count(), 1);
    let (_, out, _) = run(&["--partition", "0", "--offset", "2"]).await;
    let only: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((only["offset"].as_i64(), out.lines().count()), (Some(2), 1));
    // Without --from-beginning tail starts at the end: nothing new, nothing printed.
    let (ok, out, _) = run(&[]).await;
    assert!(ok && out.is_empty(), "{out}");
    let (ok, _, err) = run(&["--partition", "7"]).await;
    assert!(!ok && err.contains("has no partition 7"), "{err}");
}
