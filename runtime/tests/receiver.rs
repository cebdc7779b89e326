//! Smoke test of `dev/receiver.py`, the fault-injecting receiver, driven by the outbound
//! client: each path behaves as documented, and the receiver's Standard Webhooks check (the
//! official `standardwebhooks` Python package) accepts a correct signature and flags a bad
//! one in its log.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;
use sluice_runtime::outbound::{
    ClientConfig, FailureReason, OutboundClient, OutboundRequest, Verdict,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const KEY: &[u8] = b"receiver-smoke-test-key-32-bytes";

fn python() -> PathBuf {
    let cache = std::env::var("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sluice"));
    let py = cache.join("py/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `make setup` (dev/setup installs the Python test tools there)",
        py.display()
    );
    py
}

/// The receiver, killed when dropped.
struct Receiver {
    _child: Child,
    base: String,
    log: PathBuf,
}

async fn start_receiver(extra: &[&str]) -> Receiver {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let log = std::env::temp_dir().join(format!(
        "sluice-receiver-{}-{nanos}.jsonl",
        std::process::id()
    ));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dev/receiver.py");
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    );
    let mut child = Command::new(python())
        .arg(script)
        .args([
            "--port",
            "0",
            "--max-hang",
            "5",
            "--secret",
            &secret,
            "--log",
        ])
        .arg(&log)
        .args(extra)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start dev/receiver.py");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the receiver is ready within 20 s")
        .unwrap()
        .expect("a readiness line");
    let base = ready
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {ready}"))
        .to_owned();
    Receiver {
        _child: child,
        base,
        log,
    }
}

/// A Standard Webhooks request: `webhook-id`, `-timestamp` and `-signature` over the body.
fn signed(url: &str, id: &str, body: &str, key: &[u8]) -> OutboundRequest {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", id.parse().unwrap());
    headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
    headers.insert(
        "webhook-signature",
        format!("v1,{signature}").parse().unwrap(),
    );
    headers.insert("content-type", "application/json".parse().unwrap());
    OutboundRequest::post(url.parse().unwrap(), body.to_owned()).with_headers(headers)
}

#[tokio::test]
async fn the_receiver_behaves_per_path_and_checks_signatures() {
    let receiver = start_receiver(&[]).await;
    let client = OutboundClient::new(ClientConfig {
        total_timeout: Duration::from_secs(5),
        allow: vec!["127.0.0.1/32".into()],
        ..ClientConfig::default()
    })
    .unwrap();
    let base = &receiver.base;
    let body = r#"{"type":"order.placed"}"#;
    let send = |path: &str, id: &str| {
        let request = signed(&format!("{base}{path}"), id, body, KEY);
        let client = client.clone();
        async move { client.attempt(&request).await }
    };

    assert_eq!(send("/ok", "msg_ok").await.verdict, Verdict::Delivered);
    assert_eq!(send("/gone", "msg_gone").await.verdict, Verdict::Gone);
    assert_eq!(
        send("/status/502", "msg_502").await.verdict,
        Verdict::RetryLater {
            after: None,
            reason: FailureReason::Status(502)
        }
    );
    assert_eq!(
        send("/retry-after/3", "msg_ra").await.verdict,
        Verdict::RetryLater {
            after: Some(Duration::from_secs(3)),
            reason: FailureReason::TooManyRequests
        }
    );
    let flaky: Vec<_> = [
        send("/flaky/1", "msg_f").await.verdict,
        send("/flaky/1", "msg_f").await.verdict,
    ]
    .into_iter()
    .map(|v| v.as_str())
    .collect();
    assert_eq!(flaky, ["retry_later", "delivered"]);
    assert_eq!(
        send("/close", "msg_close").await.verdict.reason(),
        Some(&FailureReason::Closed)
    );
    let slow = send("/slow/150", "msg_slow").await;
    assert_eq!(slow.verdict, Verdict::Delivered);
    assert!(
        slow.latency >= Duration::from_millis(150),
        "{:?}",
        slow.latency
    );
    let hang = signed(&format!("{base}/hang"), "msg_hang", body, KEY)
        .with_timeout(Duration::from_millis(300));
    assert_eq!(
        client.attempt(&hang).await.verdict.reason(),
        Some(&FailureReason::Timeout)
    );
    let forged = signed(&format!("{base}/ok"), "msg_forged", body, b"another key");
    assert_eq!(client.attempt(&forged).await.verdict, Verdict::Delivered);

    // The hang's line is written when the receiver notices the client left; give it time.
    let mut lines = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&receiver.log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        if lines.len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&receiver.log);
    assert_eq!(lines.len(), 10, "{lines:#?}");
    let by_id = |id: &str| {
        lines
            .iter()
            .filter(|l| l["webhook_id"] == id)
            .collect::<Vec<_>>()
    };
    for line in &lines {
        let id = line["webhook_id"].as_str().unwrap();
        assert_eq!(line["signature_valid"], id != "msg_forged", "{line}");
        assert_eq!(line["body_bytes"], body.len(), "{line}");
    }
    assert_eq!(by_id("msg_ok")[0]["status"], 200);
    assert_eq!(by_id("msg_gone")[0]["status"], 410);
    assert_eq!(by_id("msg_f").len(), 2);
    assert_eq!(by_id("msg_close")[0]["status"], serde_json::Value::Null);
    assert!(by_id("msg_forged")[0]["error"]
        .as_str()
        .unwrap()
        .contains("signature"));
}

#[tokio::test]
async fn with_require_signature_a_forged_request_is_refused() {
    let receiver = start_receiver(&["--require-signature"]).await;
    let client = OutboundClient::new(ClientConfig {
        allow: vec!["127.0.0.1/32".into()],
        ..ClientConfig::default()
    })
    .unwrap();
    let url = format!("{}/ok", receiver.base);
    let genuine = client.attempt(&signed(&url, "msg_1", "{}", KEY)).await;
    assert_eq!(genuine.verdict, Verdict::Delivered);
    let forged = client
        .attempt(&signed(&url, "msg_2", "{}", b"not the key"))
        .await;
    assert_eq!(forged.status, Some(401));
    let _ = std::fs::remove_file(&receiver.log);
}
