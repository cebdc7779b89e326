//! Outbound webhook endpoints managed over a real `sluice gateway`'s `/v1/endpoints` API and
//! the `sluice endpoints` CLI, stored in a real compacted topic: every change is read back
//! from the topic, endpoints survive a restart, a second gateway follows the first's
//! changes, and the gateway's OpenAPI document passes an independent validator.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::{
    all_records, apply_topology, post, record_count, send, unique_prefix, GatewayProcess,
};
use crate::support::{require_stack, sluice_async, temp_file};

pub(crate) const ADMIN_TOKEN: &str = "e2e-endpoints-admin-token-0123456789";
const PUBLISH_TOKEN: &str = "e2e-endpoints-publish-token-0123456789";
const PAID: &str = "dev.sluice.events.payments.PaymentSucceeded";

pub(crate) const CONFIG: &str = r#"gateway:
  publish_tokens:
    - {name: ops, token: {env: E2E_EP_ADMIN}, scopes: [admin]}
    - {name: billing, token: {env: E2E_EP_PUBLISH}, event_types: ["*"]}
"#;

pub(crate) const ENV: &[(&str, &str)] = &[
    ("E2E_EP_ADMIN", ADMIN_TOKEN),
    ("E2E_EP_PUBLISH", PUBLISH_TOKEN),
];

/// A fresh prefix with its endpoints topic applied; the topology file to start gateways on.
async fn deploy(tag: &str) -> (String, std::path::PathBuf) {
    require_stack().await;
    let p = unique_prefix(tag);
    let file = apply_topology(&format!(
        "prefix: {p}\ntopics:\n  - {{name: {p}.state.endpoints, partitions: 1, config: {{cleanup.policy: compact}}}}\n"
    ))
    .await;
    (format!("{p}.state.endpoints"), file)
}

/// Sends `method url` with `token` (if any) and a JSON body (if any); status and JSON.
async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

pub(crate) async fn admin(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let (status, _, json) = call(method, url, Some(ADMIN_TOKEN), body).await;
    (status, json)
}

fn spec() -> Value {
    json!({
        "url": "https://hooks.example.com/sluice",
        "event_types": [PAID, "dev.sluice.events.scm.*"],
        "filter": [{"attribute": "source", "op": "prefix", "value": "sluice://publishers/"}],
        "retry_schedule": ["5s", "5m", "2h"],
        "rate_limit_per_sec": 20,
        "description": "billing hooks",
    })
}

/// The latest record of `key` in `topic`: `Some(value)`, or `None` for a tombstone.
async fn latest_record(topic: &str, key: &str) -> Option<Option<Value>> {
    all_records(topic)
        .await
        .into_iter()
        .rev()
        .find(|(k, _)| k.as_deref() == Some(key.as_bytes()))
        .map(|(_, v)| (!v.is_empty()).then(|| serde_json::from_slice(&v).unwrap()))
}

#[tokio::test]
async fn endpoints_are_managed_over_the_api_and_stored_in_the_compacted_topic() {
    let (topic, file) = deploy("ep").await;
    let gw = GatewayProcess::start(&file, CONFIG, ENV).await;
    let base = gw.url("/v1/endpoints");
    use reqwest::Method as M;

    // Create: 201, the secret shown once, a Location, the record written before the answer.
    let (status, headers, created) = call(M::POST, &base, Some(ADMIN_TOKEN), Some(spec())).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ep_"), "{id}");
    assert_eq!(headers["location"], format!("/v1/endpoints/{id}").as_str());
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(
        created["event_types"],
        json!([PAID, "dev.sluice.events.scm.*"])
    );
    assert_eq!(created["retry_schedule"], json!(["5s", "5m", "2h"]));
    assert_eq!(created["ordering"], "unordered");
    assert_eq!(created["enabled"], true);
    let stored = latest_record(&topic, &id).await.unwrap().unwrap();
    assert_eq!(stored["url"], "https://hooks.example.com/sluice");
    assert_eq!(stored["secrets"][0]["value"], secret.as_str());

    // Reads never show the secret, only its fingerprint.
    let (status, shown) = admin(M::GET, &format!("{base}/{id}"), None).await;
    assert_eq!(status, 200, "{shown}");
    assert!(!shown.to_string().contains(&secret), "{shown}");
    assert!(shown.get("secret").is_none());
    let fingerprint = shown["secrets"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fingerprint.starts_with("sha256:"), "{fingerprint}");
    assert!(shown["secrets"][0]["created_at"].is_string());
    let (status, list) = admin(M::GET, &base, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert!(!list.to_string().contains(&secret));

    // Update: only the named fields; null clears.
    let (status, updated) = admin(
        M::PATCH,
        &format!("{base}/{id}"),
        Some(
            json!({"description": "billing v2", "rate_limit_per_sec": null, "ordering": "per_key",
                   "breaker": {"consecutive_failures": 3, "cool_down": "120s"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["description"], "billing v2");
    assert_eq!(updated["rate_limit_per_sec"], Value::Null);
    assert_eq!(updated["ordering"], "per_key");
    assert_eq!(
        updated["breaker"],
        json!({"consecutive_failures": 3, "cool_down": "2m"})
    );
    assert_eq!(updated["url"], "https://hooks.example.com/sluice");
    let stored = latest_record(&topic, &id).await.unwrap().unwrap();
    assert_eq!(stored["description"], "billing v2");

    // Disable and enable.
    let (status, off) = admin(M::POST, &format!("{base}/{id}/disable"), None).await;
    assert_eq!((status, &off["enabled"]), (200, &json!(false)), "{off}");
    let stored = latest_record(&topic, &id).await.unwrap().unwrap();
    assert_eq!(stored["enabled"], false);
    let (status, on) = admin(M::POST, &format!("{base}/{id}/enable"), None).await;
    assert_eq!((status, &on["enabled"]), (200, &json!(true)), "{on}");

    // Rotation: a new secret shown once; the old one keeps signing for the grace period.
    let (status, rotated) = admin(
        M::POST,
        &format!("{base}/{id}/rotate-secret"),
        Some(json!({"grace_period": "2h"})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    let secrets = rotated["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 2, "{rotated}");
    assert_eq!(secrets[0]["fingerprint"], fingerprint.as_str());
    let expires: jiff::Timestamp = secrets[0]["expires_at"].as_str().unwrap().parse().unwrap();
    let left = expires.duration_since(jiff::Timestamp::now()).as_secs();
    assert!(
        (7000..=7200).contains(&left),
        "old secret expires in {left}s"
    );
    assert_eq!(secrets[1]["expires_at"], Value::Null);
    let stored = latest_record(&topic, &id).await.unwrap().unwrap();
    assert_eq!(stored["secrets"][1]["value"], new_secret.as_str());
    assert_eq!(stored["secrets"][0]["value"], secret.as_str());
    let (_, shown) = admin(M::GET, &format!("{base}/{id}"), None).await;
    assert!(!shown.to_string().contains(&new_secret));

    // Delete: 204, a tombstone, then 404 with a code.
    let (status, _) = admin(M::DELETE, &format!("{base}/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(latest_record(&topic, &id).await, Some(None), "a tombstone");
    let (status, gone) = admin(M::GET, &format!("{base}/{id}"), None).await;
    assert_eq!(
        (status, &gone["error"]["code"]),
        (404, &json!("endpoint_not_found"))
    );
    let (status, gone) = admin(M::POST, &format!("{base}/{id}/disable"), None).await;
    assert_eq!(
        (status, &gone["error"]["code"]),
        (404, &json!("endpoint_not_found"))
    );
    assert!(
        !gw.log().contains(&secret) && !gw.log().contains(&new_secret),
        "secrets never reach the log"
    );
    let metrics = gw.metrics().await;
    for line in [
        r#"sluice_endpoints_requests_total{operation="create",outcome="ok"} 1"#,
        r#"sluice_endpoints_requests_total{operation="rotate_secret",outcome="ok"} 1"#,
        r#"sluice_endpoints_requests_total{operation="show",outcome="endpoint_not_found"} 1"#,
        r#"sluice_endpoints_requests_total{operation="disable",outcome="endpoint_not_found"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains(&secret) && !metrics.contains(&new_secret));
}

#[tokio::test]
async fn endpoints_survive_a_restart_and_other_gateways_follow_changes() {
    let (_, file) = deploy("eprs").await;
    let mut first = GatewayProcess::start(&file, CONFIG, ENV).await;
    use reqwest::Method as M;
    let (status, kept) = admin(M::POST, &first.url("/v1/endpoints"), Some(spec())).await;
    assert_eq!(status, 201, "{kept}");
    let kept_id = kept["id"].as_str().unwrap().to_string();
    let (_, dropped) = admin(M::POST, &first.url("/v1/endpoints"), Some(spec())).await;
    let dropped_id = dropped["id"].as_str().unwrap().to_string();
    let (status, _) = admin(
        M::DELETE,
        &first.url(&format!("/v1/endpoints/{dropped_id}")),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = admin(
        M::PATCH,
        &first.url(&format!("/v1/endpoints/{kept_id}")),
        Some(json!({"description": "after restart"})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(first.terminate().await.success());

    // A new process reads the topic back before it is ready.
    let second = GatewayProcess::start(&file, CONFIG, ENV).await;
    let (status, list) = admin(M::GET, &second.url("/v1/endpoints"), None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![kept_id.as_str()],
        "the deleted endpoint stays deleted"
    );
    assert_eq!(list["data"][0]["description"], "after restart");
    assert_eq!(
        list["data"][0]["secrets"][0]["fingerprint"],
        kept["secrets"][0]["fingerprint"]
    );

    // A change made on one gateway reaches another that is already running.
    let third = GatewayProcess::start(&file, CONFIG, ENV).await;
    let (status, _) = admin(
        M::POST,
        &second.url(&format!("/v1/endpoints/{kept_id}/disable")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, seen) = admin(
            M::GET,
            &third.url(&format!("/v1/endpoints/{kept_id}")),
            None,
        )
        .await;
        if seen["enabled"] == json!(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other gateway never saw the change: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn endpoints_api_requires_an_admin_token_and_names_bad_fields() {
    let (topic, file) = deploy("epbad").await;
    let gw = GatewayProcess::start(&file, CONFIG, ENV).await;
    let base = gw.url("/v1/endpoints");
    use reqwest::Method as M;

    let (status, h, json) = call(M::GET, &base, None, None).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    assert_eq!(h["www-authenticate"], "Bearer");
    let (status, _, json) =
        call(M::POST, &base, Some("not-a-token-0123456789"), Some(spec())).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _, json) = call(M::POST, &base, Some(PUBLISH_TOKEN), Some(spec())).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (403, &json!("forbidden")),
        "{json}"
    );
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin scope"));
    // And an admin token is no publish token.
    let (status, _, json) = call(
        M::POST,
        &gw.url(&format!("/v1/events/{PAID}")),
        Some(ADMIN_TOKEN),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (403, &json!("forbidden")),
        "{json}"
    );

    let with = |field: &str, value: Value| {
        let mut s = spec();
        s[field] = value;
        s
    };
    for (body, code, field) in [
        (with("colour", "blue".into()), "unknown_field", "colour"),
        (
            with("url", "ftp://example.com/x".into()),
            "invalid_url",
            "url",
        ),
        (with("url", "not a url".into()), "invalid_url", "url"),
        (
            with("event_types", json!([])),
            "invalid_event_types",
            "event_types",
        ),
        (
            with("event_types", json!([PAID, "dev.*.x"])),
            "invalid_event_types",
            "event_types[1]",
        ),
        (
            with("retry_schedule", json!(["5s", "soon"])),
            "invalid_retry_schedule",
            "retry_schedule[1]",
        ),
        (
            with("ordering", "fifo".into()),
            "invalid_ordering",
            "ordering",
        ),
        (json!({"event_types": [PAID]}), "missing_field", "url"),
        (
            with(
                "event_types",
                json!([PAID, "dev.sluice.events.payments.PaymentSucceded"]),
            ),
            "invalid_event_types",
            "event_types[1]",
        ),
    ] {
        let (status, json) = admin(M::POST, &base, Some(body.clone())).await;
        assert_eq!(
            (
                status,
                &json["error"]["code"],
                &json["error"]["fields"][0]["field"]
            ),
            (400, &json!(code), &json!(field)),
            "{body} -> {json}"
        );
    }
    let (status, _, json) = call(M::POST, &base, Some(ADMIN_TOKEN), None).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("missing_field")),
        "{json}"
    );
    let (status, _, json) = post(
        &base,
        &[("authorization", format!("Bearer {ADMIN_TOKEN}"))],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("invalid_json"))
    );
    let big = json!({"url": "https://example.com/h", "event_types": [PAID], "description": "x".repeat(70_000)});
    let (status, json) = admin(M::POST, &base, Some(big)).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (413, &json!("body_too_large"))
    );
    let (status, json) = admin(M::PUT, &base, None).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (405, &json!("method_not_allowed"))
    );

    // Nothing refused was written.
    assert_eq!(record_count(&topic).await, 0);

    // Bad changes to an existing endpoint leave it as it was.
    let (_, created) = admin(M::POST, &base, Some(spec())).await;
    let item = format!("{base}/{}", created["id"].as_str().unwrap());
    let (status, json) = admin(M::PATCH, &item, Some(json!({"enabeld": false}))).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("unknown_field"))
    );
    let (status, json) = admin(
        M::PATCH,
        &item,
        Some(json!({"event_types": ["dev.sluice.events.payments.Nope"]})),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("invalid_event_types"))
    );
    let (status, json) = admin(M::PATCH, &item, Some(json!({"max_in_flight": 0}))).await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("invalid_max_in_flight"))
    );
    let (status, json) = admin(
        M::PATCH,
        &item,
        Some(json!({"breaker": {"cool_down": "0s"}})),
    )
    .await;
    assert_eq!(
        (
            status,
            &json["error"]["code"],
            &json["error"]["fields"][0]["field"]
        ),
        (400, &json!("invalid_breaker"), &json!("breaker.cool_down")),
        "{json}"
    );
    let (status, json) = admin(
        M::POST,
        &format!("{item}/rotate-secret"),
        Some(json!({"grace_period": "90d"})),
    )
    .await;
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("invalid_grace_period"))
    );
    let (status, json) = admin(M::POST, &format!("{item}/explode"), None).await;
    assert_eq!((status, &json["error"]["code"]), (404, &json!("not_found")));
    assert_eq!(record_count(&topic).await, 1, "only the create was written");
    let (_, shown) = admin(M::GET, &item, None).await;
    assert_eq!(shown["max_in_flight"], Value::Null);
    assert_eq!(shown["secrets"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_cli_manages_endpoints_against_a_running_gateway() {
    let (_, file) = deploy("epcli").await;
    let gw = GatewayProcess::start(&file, CONFIG, ENV).await;
    let cli = |args: &[&str], token: &str| {
        let mut all: Vec<String> = vec![
            "endpoints".into(),
            "--gateway".into(),
            gw.base.clone(),
            "--token".into(),
            token.into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        sluice_async(all)
    };

    let (ok, out, err) = cli(
        &[
            "add",
            "--url",
            "https://hooks.example.com/cli",
            "--event-type",
            PAID,
            "--event-type",
            "dev.sluice.events.scm.*",
            "--filter",
            "subject^=pi_",
            "--retry-schedule",
            "5s,5m,2h",
            "--ordering",
            "per-key",
            "--breaker",
            "consecutive_failures=3",
            "--breaker",
            "cool_down=10s",
        ],
        ADMIN_TOKEN,
    )
    .await;
    assert!(ok, "{out}\n{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["ordering"], "per_key");
    assert_eq!(
        created["breaker"],
        json!({"consecutive_failures": 3, "cool_down": "10s"})
    );
    assert_eq!(
        created["filter"],
        json!([{"attribute": "subject", "op": "prefix", "value": "pi_"}])
    );

    let (ok, out, err) = cli(&["list"], ADMIN_TOKEN).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&id) && out.contains("https://hooks.example.com/cli"),
        "{out}"
    );
    assert!(out.contains("1 endpoint(s)"), "{out}");

    let (ok, out, err) = cli(&["disable", &id], ADMIN_TOKEN).await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["enabled"],
        false
    );
    let (ok, out, _) = cli(&["show", &id], ADMIN_TOKEN).await;
    assert!(ok);
    assert!(!out.contains(created["secret"].as_str().unwrap()), "{out}");

    // 4xx: a non-zero exit with the API's code and the field.
    let (ok, out, err) = cli(
        &["add", "--url", "ftp://example.com", "--event-type", PAID],
        ADMIN_TOKEN,
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("400 invalid_url") && err.contains("url:"),
        "{err}"
    );
    let (ok, _, err) = cli(&["list"], PUBLISH_TOKEN).await;
    assert!(!ok);
    assert!(err.contains("403 forbidden"), "{err}");
    let (ok, _, err) = cli(&["show", "ep_missing"], ADMIN_TOKEN).await;
    assert!(!ok);
    assert!(err.contains("404 endpoint_not_found"), "{err}");

    let (ok, out, err) = cli(&["delete", &id], ADMIN_TOKEN).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("deleted {id}")), "{out}");
    let (ok, out, _) = cli(&["list"], ADMIN_TOKEN).await;
    assert!(ok && out.contains("0 endpoint(s)"), "{out}");
}

#[tokio::test]
async fn the_openapi_document_passes_openapi_spec_validator() {
    let (_, file) = deploy("epoas").await;
    let gw = GatewayProcess::start(&file, CONFIG, ENV).await;
    let resp = crate::support::get(gw.url("/openapi.json")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let text = resp.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/endpoints/{id}/rotate-secret"]["post"].is_object());
    let out = openapi_spec_validator(&text).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openapi-spec-validator: {said}");
    assert!(said.contains(": OK"), "{said}");

    // The validator does reject a broken document, so its OK means something.
    let mut broken = doc.clone();
    broken["paths"]["/v1/endpoints"]["get"]["responses"] = json!("none");
    let out = openapi_spec_validator(&broken.to_string()).await;
    assert!(
        !out.status.success(),
        "a broken document must fail validation"
    );
}

/// Runs the PyPI `openapi-spec-validator` on `document`.
async fn openapi_spec_validator(document: &str) -> std::process::Output {
    let path = temp_file("openapi.json", document);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::interop::python())
            .args(["-m", "openapi_spec_validator"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}
