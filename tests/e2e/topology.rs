//! `sluice topology plan|apply` against the real broker, each test under its own prefix.

use crate::support::{require_stack, sluice_async, temp_file};

fn topology(prefix: &str, raw_partitions: i32, retention: &str, with_extra: bool) -> String {
    let extra = if with_extra {
        format!("  - {{name: {prefix}.events.extra, partitions: 1}}\n")
    } else {
        String::new()
    };
    format!(
        r#"prefix: {prefix}
topics:
  - {{name: {prefix}.raw.stripe, partitions: {raw_partitions}, config: {{retention.ms: {retention}}}}}
  - {{name: {prefix}.events.payments, partitions: 2}}
  - {{name: {prefix}.dlq.normalizer, partitions: 1}}
  - name: {prefix}.state.dedup
    partitions: 2
    config: {{cleanup.policy: compact}}
{extra}sources:
  - {{name: stripe, provider: {{type: stripe}}, secrets: [{{env: X}}], raw_topic: {prefix}.raw.stripe}}
routes:
  - {{event_type: dev.sluice.events.payments.PaymentSucceeded, topic: {prefix}.events.payments}}
retry_policies:
  - {{name: normalizer, tiers: [5s, 1m], max_attempts: 3, dlq_topic: {prefix}.dlq.normalizer}}
"#
    )
}

async fn run(args: &[&str], file: &std::path::Path) -> (bool, String, String) {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--topology".into());
    v.push(file.display().to_string());
    sluice_async(v).await
}

#[tokio::test]
async fn plan_apply_is_idempotent_grows_alters_and_refuses_to_shrink_or_delete() {
    require_stack().await;
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let v1 = temp_file("topology.yaml", &topology(&prefix, 2, "86400000", true));

    let (ok, out, err) = run(&["topology", "plan"], &v1).await;
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.matches("+ create").count(),
        7,
        "5 declared + 2 retry tiers:\n{out}"
    );
    assert!(
        out.contains(&format!("+ create      {prefix}.retry.normalizer.1m")),
        "{out}"
    );

    let (ok, out, err) = run(&["topology", "apply"], &v1).await;
    assert!(ok && out.contains("apply: 7 change(s) made"), "{out}{err}");
    let (ok, out, _) = run(&["topology", "apply"], &v1).await;
    assert!(
        ok && out.contains("apply: nothing to do"),
        "second apply must be a no-op:\n{out}"
    );

    // Grow partitions, change a config, drop a topic from the file.
    let v2 = temp_file("topology.yaml", &topology(&prefix, 4, "172800000", false));
    let (ok, out, _) = run(&["topology", "plan"], &v2).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("~ partitions  {prefix}.raw.stripe: 2 -> 4")),
        "{out}"
    );
    assert!(out.contains("retention.ms 86400000 -> 172800000"), "{out}");
    assert!(
        out.contains(&format!("kept        {prefix}.events.extra")),
        "{out}"
    );
    let (ok, out, err) = run(&["topology", "apply"], &v2).await;
    assert!(ok && out.contains("apply: 2 change(s) made"), "{out}{err}");
    let (_, out, _) = run(&["topology", "plan"], &v2).await;
    assert!(out.contains("no changes"), "{out}");

    // Deleting needs --allow-delete.
    let (ok, out, _) = run(&["topology", "plan", "--allow-delete"], &v2).await;
    assert!(
        ok && out.contains(&format!("- delete      {prefix}.events.extra")),
        "{out}"
    );

    // Shrinking is refused, with a non-zero exit.
    let v3 = temp_file("topology.yaml", &topology(&prefix, 1, "172800000", false));
    let (ok, out, _) = run(&["topology", "apply"], &v3).await;
    assert!(!ok, "shrinking must fail:\n{out}");
    assert!(
        out.contains("partitions 4 -> 1 (Kafka cannot remove partitions"),
        "{out}"
    );

    let (ok, out, _) = run(&["topology", "apply", "--allow-delete"], &v2).await;
    assert!(
        ok && out.contains(&format!("- delete      {prefix}.events.extra")),
        "{out}"
    );
}

#[tokio::test]
async fn validation_errors_name_the_file_and_path() {
    let bad = topology("tbad", 0, "1", false).replace(
        "dlq_topic: tbad.dlq.normalizer",
        "dlq_topic: tbad.dlq.missing",
    );
    let file = temp_file("topology.yaml", &bad);
    let (ok, _, err) = run(&["topology", "validate"], &file).await;
    assert!(!ok);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        err.contains("topics[0].partitions: must be at least 1, got 0"),
        "{err}"
    );
    assert!(
        err.contains("retry_policies[0].dlq_topic: topic `tbad.dlq.missing` is not declared"),
        "{err}"
    );
    let typo = topology("tbad", 1, "1", false).replace("max_attempts", "max_atempts");
    let file = temp_file("topology.yaml", &typo);
    let (ok, _, err) = run(&["topology", "validate"], &file).await;
    assert!(
        !ok && err.contains("retry_policies[0]: unknown field `max_atempts`"),
        "{err}"
    );
}

#[tokio::test]
async fn asyncapi_export_parses_back_with_every_route() {
    let (ok, out, err) =
        sluice_async(vec!["topology".into(), "export".into(), "asyncapi".into()]).await;
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("AsyncAPI is JSON");
    assert_eq!(doc["asyncapi"], "3.0.0");
    let channel = &doc["channels"]["sluice_events_payments"];
    assert_eq!(channel["address"], "sluice.events.payments");
    let reference = channel["messages"]["PaymentSucceeded"]["$ref"]
        .as_str()
        .unwrap();
    assert_eq!(reference, "#/components/messages/PaymentSucceeded");
    let message = &doc["components"]["messages"]["PaymentSucceeded"];
    assert_eq!(message["payload"]["schema"]["name"], "PaymentSucceeded");
    assert!(message["summary"]
        .as_str()
        .unwrap()
        .contains("subject sluice.events.payments-dev.sluice.events.payments.PaymentSucceeded"));
    // Every $ref in the document points at something that exists.
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap().to_string());
                    } else {
                        refs(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 40, "{}", all.len());
    for r in all {
        let pointer = r.trim_start_matches('#');
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
    assert_eq!(
        doc["operations"]["consume_sluice_events_email"]["action"],
        "receive"
    );
}
