//! The dashboards and alert rules in `deploy/` are checked: the rules load with `promtool`,
//! and every metric a panel or a rule names is one that sluice really exports, on a live
//! scrape of `sluice run --demo`, `sluice lag --export` and `sluice outbox relay`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::normalizer::{spawn_sluice, ChildGuard};
use crate::saga_http::Provider;
use crate::support::{free_port, free_ports, require_stack, sluice_async};
use serde_json::json;

fn root(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// Metric names (`sluice_*`, `kafka_*`) used in PromQL expressions.
pub(crate) fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in exprs {
        // Drop quoted label values (`outcome="kafka_unavailable"`) first.
        let unquoted: String = e.split('"').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = unquoted.as_str();
        while let Some(i) = rest.find(|c: char| c.is_ascii_lowercase()) {
            rest = &rest[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            // Label names in `by (…)` and selectors never start with these prefixes.
            if (word.starts_with("sluice_") || word.starts_with("kafka_"))
                && !rest[end..].starts_with('=')
            {
                out.insert(word.to_string());
            }
            rest = &rest[end..];
        }
    }
    out
}

pub(crate) fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root("deploy/grafana/dashboards/sluice.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

pub(crate) fn rule_exprs() -> Vec<String> {
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root("deploy/prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn alert_rules_load_with_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules", &root("deploy/prometheus/alerts.yml")])
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is not installed ({e}): run `make test`, whose dev/setup installs it")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 13 rules found"), "{text}");
}

pub(crate) async fn scrape(url: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = crate::support::get(url).await {
            last = r.text().await.unwrap_or_default();
            if wanted(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last
}

/// The first scrape of a child role of `sluice run` (admin ports after `admin`) that is
/// `wanted`.
async fn scrape_children(admin: u16, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        for port in admin + 1..=admin + 8 {
            let url = format!("http://127.0.0.1:{port}/metrics");
            if let Ok(r) = crate::support::get(&url).await {
                let text = r.text().await.unwrap_or_default();
                if wanted(&text) {
                    return text;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    String::new()
}

pub(crate) fn exported(scrape: &str, name: &str) -> bool {
    let has = |n: &str, kind: Option<&str>| {
        scrape.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|r| r.strip_prefix(n))
                .is_some_and(|r| r.starts_with(' ') && kind.is_none_or(|k| r.trim() == k))
        })
    };
    has(name, None)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| has(base, Some("histogram")))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_dashboards_and_rules_is_exported() {
    require_stack().await;
    let demo_config = root("dev/demo.yaml");
    for cmd in [["topology", "apply"], ["schemas", "register"]] {
        let args = ["--config", demo_config.as_str(), cmd[0], cmd[1]];
        let (ok, out, err) = sluice_async(args.iter().map(|s| s.to_string()).collect()).await;
        assert!(ok, "{cmd:?}: {out}{err}");
    }
    // The demo saga's payment step calls the payment stand-in, as in `make demo`.
    let payments = Provider::demo();
    let demo_env: Vec<(String, String)> = std::fs::read_to_string(root("dev/demo.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    // `sluice run` puts its child roles on the eight admin ports after its own.
    let (admin, gateway, lag_admin) = (free_ports(9), free_port(), free_port());
    let mut env: Vec<(&str, String)> = demo_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    env.push(("SLUICE_ADMIN__LISTEN", format!("127.0.0.1:{admin}")));
    env.push(("SLUICE_GATEWAY__LISTEN", format!("127.0.0.1:{gateway}")));
    env.push(("SLUICE_INSTANCE_ID", format!("observability-{admin}")));
    env.push(("PAYMENTS_URL", payments.base.clone()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _run: ChildGuard = spawn_sluice(&["--config", &demo_config, "run", "--demo"], &env_refs);
    let lag_listen = format!("127.0.0.1:{lag_admin}");
    let _lag: ChildGuard = spawn_sluice(
        &["lag", "--export", "--interval", "2s"],
        &[("SLUICE_ADMIN__LISTEN", lag_listen.as_str())],
    );

    // After the demo traffic every family has samples (empty families are not exposed).
    let run_metrics = scrape(&format!("http://127.0.0.1:{admin}/metrics"), |s| {
        s.contains("sluice_normalizer_events_total")
            && s.contains("sluice_dlq_depth")
            && s.contains("sluice_consumer_dead_letters_total")
    })
    .await;
    // A group held behind an open transaction, for the open-transaction gauge.
    let _open = crate::lag::hold_a_group_behind_an_open_transaction(
        &crate::gateway::unique_prefix("obsopen"),
    )
    .await;
    let lag_metrics = scrape(&format!("http://127.0.0.1:{lag_admin}/metrics"), |s| {
        s.contains("kafka_consumergroup_lag_seconds")
            && s.contains("sluice_lag_open_transaction_seconds")
    })
    .await;
    // `sluice run` supervises the orchestrator as a child on the next admin port.
    let saga_metrics = scrape(&format!("http://127.0.0.1:{}/metrics", admin + 1), |s| {
        s.contains("sluice_saga_terminal_total")
            && s.contains("sluice_saga_duration_seconds_bucket")
    })
    .await;
    // The participants (the next port): the payment calls' outbound metrics, a rate-limit
    // wait among them (the demo's upstream allows 2 calls a second after a burst of 1).
    let participants = format!("http://127.0.0.1:{}/metrics", admin + 2);
    scrape(&participants, |s| {
        s.contains("sluice_outbound_attempt_seconds_bucket")
            && s.contains("sluice_outbound_limit_wait_seconds_bucket")
            && s.contains("sluice_outbound_breaker_state")
    })
    .await;
    // Then the provider fails an order's charge four times: the upstream's breaker opens
    // (after 3 failures in a row), holds the next attempts back, and closes after a good
    // probe (a second failing probe opens it again).
    payments
        .fault(
            json!({"path": "/v1/charges", "order_suffix": "-breaker", "status": 503, "times": 4}),
        )
        .await;
    let token = &demo_env
        .iter()
        .find(|(k, _)| k == "SLUICE_DEMO_PUBLISH_TOKEN")
        .unwrap()
        .1;
    let order = format!("observability-{admin}-breaker");
    let published = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{gateway}/v1/events/dev.sluice.events.commerce.OrderPlaced"
        ))
        .bearer_auth(token)
        .json(&json!({
            "subject": order, "order_id": order, "order_number": "#1",
            "customer_email": "demo@example.com",
            "total": {"amount": "19.99", "currency": "EUR"},
            "line_items": [{"sku": "WIDGET", "title": "Widget", "quantity": 1,
                "unit_price": {"amount": "19.99", "currency": "EUR"}}],
            "provider": "demo-shop",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202, "{:?}", published.text().await);
    let participant_metrics = scrape(&participants, |s| {
        s.contains(
            r#"sluice_outbound_breaker_transitions_total{endpoint="payments",state="closed"}"#,
        ) && s.contains(
            r#"sluice_outbound_not_admitted_total{endpoint="payments",reason="breaker_open"}"#,
        )
    })
    .await;
    // The outbox relay runs where an outbox is configured, which the demo has not: one of its
    // own, with rows that make it export every family.
    let outbox = crate::outbox::Deployment::new("obs").await;
    let mut relay = outbox.relay("relay", 200);
    relay.ready().await;
    outbox.write_one_of_each().await;
    let outbox_metrics = scrape(&relay.metrics_url(), |s| {
        [
            "sluice_outbox_relayed_total",
            "sluice_outbox_dead_lettered_total",
            "sluice_outbox_sequence_gaps_total",
            "sluice_outbox_rows_waiting",
        ]
        .iter()
        .all(|m| s.contains(m))
    })
    .await;
    // The polling role is a later child; nothing answers its demo API here, so it waits
    // (backoff) and every family it shows a panel for has samples.
    let poll_metrics = scrape_children(admin, |s| {
        s.contains("sluice_poll_wait_seconds_total") && s.contains("sluice_poll_errors_total")
    })
    .await;
    let all = format!(
        "{run_metrics}\n{lag_metrics}\n{saga_metrics}\n{participant_metrics}\n{outbox_metrics}\n{poll_metrics}"
    );

    let mut used = metric_names(&dashboard_exprs());
    used.extend(metric_names(&rule_exprs()));
    assert!(used.len() > 20, "{used:?}");
    // The demo has no webhook endpoints, so delivery's families have no samples here:
    // `deliver::delivery_panels_and_rules_name_metrics_sluice_deliver_exports` checks them.
    used.retain(|m| {
        !crate::deliver::DELIVERY_METRIC_PREFIXES
            .iter()
            .any(|p| m.starts_with(p))
    });
    let missing: Vec<&String> = used.iter().filter(|m| !exported(&all, m)).collect();
    assert!(
        missing.is_empty(),
        "named by a panel or rule but not exported: {missing:?}"
    );

    // And the other way: every family sluice exports has a row in the README's tables.
    let readme = std::fs::read_to_string(root("README.md")).unwrap();
    let families: BTreeSet<&str> = all
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split_whitespace().next())
        .filter(|n| n.starts_with("sluice_") || n.starts_with("kafka_"))
        .collect();
    assert!(families.len() > 20, "{families:?}");
    let undocumented: Vec<&&str> = families
        .iter()
        .filter(|n| !readme.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but missing from the README's metric tables: {undocumented:?}"
    );
}
