//! `sluice dlq …` and `sluice tail` on dead letters written straight into a DLQ topic of a
//! scratch topology, as any producer could: hostile bytes in keys, headers and payloads, and
//! replays that must not go anywhere the topology does not name, nor twice.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sluice_runtime::kafka::create_topic_if_missing;
use sluice_stream::headers as h;

use crate::normalizer::{read_until, reader};
use crate::support::{clients, require_stack, sluice_async, temp_file};

/// A deployed scratch topology with a DLQ topic, the replay markers and a destination.
struct Scratch {
    prefix: String,
    file: String,
    topology: sluice_topology::Topology,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        crate::support::remove_deployment(&self.topology);
    }
}

impl Scratch {
    async fn new() -> Self {
        require_stack().await;
        let prefix = format!("dq{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let yaml = format!(
            "prefix: {prefix}\ntopics:\n  - {{name: {prefix}.dlq.test, partitions: 1}}\n  - {{name: {prefix}.dest, partitions: 1}}\n  - {{name: {prefix}.state.dlq-replays, partitions: 1, config: {{cleanup.policy: compact}}}}\n"
        );
        let file = temp_file("topology.yaml", &yaml).display().to_string();
        let (ok, out, err) = sluice_async(vec![
            "topology".into(),
            "apply".into(),
            "--topology".into(),
            file.clone(),
        ])
        .await;
        assert!(ok, "{out}{err}");
        let topology = crate::support::load_topology(file.as_ref());
        Self {
            prefix,
            file,
            topology,
        }
    }

    fn dlq(&self) -> String {
        format!("{}.dlq.test", self.prefix)
    }

    /// Writes one dead letter; returns its offset.
    async fn dead_letter(&self, key: &[u8], payload: &[u8], headers: &[(&str, &[u8])]) -> i64 {
        let mut hs = OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let producer = clients().producer("e2e").unwrap();
        let dlq = self.dlq();
        producer
            .send(
                FutureRecord::to(&dlq)
                    .partition(0)
                    .key(key)
                    .payload(payload)
                    .headers(hs),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap()
            .offset
    }
}

/// Runs `sluice` and returns (success, raw stdout, raw stderr).
async fn sluice_raw(args: &[&str]) -> (bool, Vec<u8>, Vec<u8>) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&args)
            .output()
            .unwrap();
        (out.status.success(), out.stdout, out.stderr)
    })
    .await
    .unwrap()
}

/// Output a terminal can show without being driven: valid UTF-8, and no control character
/// but newline and tab (ESC, CR, BEL, C1 controls such as U+009B CSI).
fn assert_inert(what: &str, out: &[u8]) -> String {
    let text = match std::str::from_utf8(out) {
        Ok(t) => t,
        Err(e) => panic!("{what}: output is not UTF-8 ({e}): {out:?}"),
    };
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\t'))
        .collect();
    assert!(
        raw.is_empty(),
        "{what}: raw control characters {raw:?} in\n{text:?}"
    );
    text.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_show_list_and_tail_print_hostile_records_escaped() {
    let s = Scratch::new().await;
    let dest = format!("{}.dest", s.prefix);
    let offset = s
        .dead_letter(
            b"key\x1b]0;owned\x07\xff",
            b"{\"note\": \"hi\"}\x1b[2J\r\x07\xff\xfe\nsecond line \xc2\x9b31m",
            &[
                (h::EXCEPTION_FQCN, b"Bad\x1b[31mClass"),
                (h::EXCEPTION_MESSAGE, b"it broke\r\x07 here"),
                (h::ORIGINAL_TOPIC, dest.as_bytes()),
                ("x-evil", b"\x1b[2J\xc2\x9b\xe2\x80\xae"),
            ],
        )
        .await;
    let dlq = s.dlq();

    let (ok, out, err) = sluice_raw(&["dlq", "show", &dlq, &format!("0:{offset}")]).await;
    assert!(ok, "{}", String::from_utf8_lossy(&err));
    let text = assert_inert("dlq show", &out);
    for shown in [
        "key           key\\x1b]0;owned\\x07\\xff",
        "error         Bad\\x1b[31mClass: it broke\\r\\x07 here",
        "  x-evil: \\x1b[2J\\u{9b}\\u{202e}",
        // Printable text and newlines stay readable.
        "{\"note\": \"hi\"}\\x1b[2J\\r\\x07\\xff\\xfe\nsecond line \\u{9b}31m",
        "(40 bytes, not UTF-8)",
    ] {
        assert!(text.contains(shown), "missing {shown:?} in\n{text}");
    }

    let (ok, out, err) = sluice_raw(&["dlq", "list", &dlq]).await;
    assert!(ok, "{}", String::from_utf8_lossy(&err));
    let text = assert_inert("dlq list", &out);
    assert!(text.contains("Bad\\x1b[31mClass"), "{text}");

    let (ok, out, err) = sluice_raw(&["tail", &dlq, "--from-beginning", "--max", "1"]).await;
    assert!(ok, "{}", String::from_utf8_lossy(&err));
    let text = assert_inert("tail", &out);
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        line["headers"]["x-evil"], "\u{1b}[2J\u{9b}\u{202e}",
        "escaped the JSON way, so the value reads back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_refuses_unknown_destinations_and_incomplete_scans() {
    let s = Scratch::new().await;
    let dlq = s.dlq();
    let dest = format!("{}.dest", s.prefix);
    let nowhere = format!("{}.nowhere", s.prefix);
    for (class, original) in [("A", &dest), ("B", &dest), ("C", &nowhere)] {
        s.dead_letter(
            class.as_bytes(),
            b"payload",
            &[
                (h::EXCEPTION_FQCN, class.as_bytes()),
                (h::ORIGINAL_TOPIC, original.as_bytes()),
            ],
        )
        .await;
    }
    // A topic that exists but that the topology does not declare.
    let outside = crate::support::unique_topic("dlq-outside");
    create_topic_if_missing(&clients().admin().unwrap(), &outside, 1)
        .await
        .unwrap();
    let replay = |extra: &[&str]| {
        let mut a: Vec<String> = ["dlq", "replay", &dlq, "--topology", &s.file]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        sluice_async(a)
    };

    // --to must name a topic of the topology.
    let (ok, out, err) = replay(&["--to", &outside]).await;
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!("--to `{outside}` is not a topic of the topology"))
            && err.contains(&dest)
            && err.contains("--force"),
        "{err}"
    );
    // ... unless forced.
    let (ok, out, err) = replay(&["--to", &outside, "--force", "--filter", "error_class=A"]).await;
    assert!(
        ok && out.contains("1 replayed, 0 already replayed before, 2 not matching"),
        "{out}{err}"
    );

    // The markers now hold one record. A scan of them that cannot reach the end in time
    // fails the replay before anything is sent: an incomplete "already replayed" set would
    // send A again (the count of `outside` below is 1).
    let (ok, out, err) = replay(&[
        "--to",
        &outside,
        "--force",
        "--filter",
        "error_class=A",
        "--scan-timeout",
        "0s",
    ])
    .await;
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!(
            "reading {}.state.dlq-replays did not reach the end within 0s: partition(s) 0 not read to the end",
            s.prefix
        )) && err.contains("nothing was done"),
        "{err}"
    );

    // An original-topic header naming a topic outside the topology stops the replay before
    // the first record is sent.
    let (ok, out, err) = replay(&[]).await;
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!(
            "the original topic of {dlq}/0@2 `{nowhere}` is not a topic of the topology"
        )),
        "{err}"
    );
    let (ok, out, err) = replay(&["--filter", "error_class=B"]).await;
    assert!(
        ok && out.contains("1 replayed, 0 already replayed before, 2 not matching"),
        "{out}{err}"
    );
    let (ok, out, err) = replay(&["--filter", "error_class=B"]).await;
    assert!(
        ok && out.contains("0 replayed, 1 already replayed before"),
        "{out}{err}"
    );

    // Each record went once, where it was sent.
    let to_dest = read_until(&reader(&dest), Duration::from_secs(10), |_| false).await;
    assert_eq!(to_dest.len(), 1);
    assert_eq!(to_dest[0].0, "B");
    let to_outside = read_until(&reader(&outside), Duration::from_secs(10), |_| false).await;
    assert_eq!(to_outside.len(), 1);
    assert_eq!(to_outside[0].0, "A");
}
