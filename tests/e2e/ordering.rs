//! Per-key ordering on the retry path (`ordering: per_key`) against the real broker:
//! interleaved keys with scripted failures, and a restart while keys are held; and
//! `sluice normalize` under a topology whose normalizer policy orders per key.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_runtime::Shutdown;
use sluice_stream::metrics::LoopMetrics;
use sluice_stream::{
    ErrorClass, FailureRouter, Guarantee, Handler, HandlerError, LoopConfig, Output, PerKey,
    Record, RetryTier,
};

use crate::normalizer::{fixture, read_until, reader, send_raw, spawn_sluice, Seen};
use crate::retry::handled_copy;
use crate::support::{clients, free_port, require_stack, sluice_async, temp_file};

/// Copies records to `out`. Failures are scripted by value: `A1` fails transiently on its
/// first two attempts, `C1` always (so it is dead-lettered), `D1` and `D2` on their first,
/// `E1` permanently, `R1` and `S1` until `release` is set; everything else succeeds.
struct Scripted {
    out: String,
    release: Arc<AtomicBool>,
}

impl Handler for Scripted {
    async fn handle(&self, record: &Record) -> Result<Vec<Output>, HandlerError> {
        let value =
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
        let attempts: u32 = record
            .header("sluice_attempts")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let fails = match value.as_str() {
            "A1" => attempts < 2,
            "C1" => true,
            "D1" | "D2" => attempts < 1,
            "R1" | "S1" => !self.release.load(Ordering::SeqCst),
            "E1" => {
                return Err(HandlerError::permanent(
                    ErrorClass::custom("ValidationFailed"),
                    "E1 is invalid",
                ));
            }
            _ => false,
        };
        if fails {
            return Err(HandlerError::transient(
                ErrorClass::custom("DownstreamTimeout"),
                format!("{value} attempt {}", attempts + 1),
            ));
        }
        Ok(vec![handled_copy(&self.out, record)])
    }
}

/// The topics of one test, all with two partitions but the output and the DLQ (one each,
/// so the order across keys is visible).
struct Rig {
    input: String,
    out: String,
    dlq: String,
    held: String,
    tiers: Vec<RetryTier>,
    group: String,
    max_attempts: u32,
    release: Arc<AtomicBool>,
}

/// One running loop.
struct Running {
    task: tokio::task::JoinHandle<Result<(), sluice_stream::LoopError>>,
    shutdown: Shutdown,
    metrics: LoopMetrics,
}

impl Running {
    fn held(&self, group: &str) -> i64 {
        self.metrics.held_keys.with_label_values(&[group]).get()
    }

    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }
}

impl Rig {
    async fn new(tier_delays: &[u64], max_attempts: u32) -> Self {
        require_stack().await;
        let p = format!("o{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let tiers: Vec<RetryTier> = tier_delays
            .iter()
            .enumerate()
            .map(|(i, s)| RetryTier {
                topic: format!("{p}.retry.{i}.{s}s"),
                delay: Duration::from_secs(*s),
            })
            .collect();
        let rig = Rig {
            input: format!("{p}.in"),
            out: format!("{p}.out"),
            dlq: format!("{p}.dlq"),
            held: format!("{p}.state.held-e2e"),
            tiers,
            group: format!("{p}-group"),
            max_attempts,
            release: Arc::new(AtomicBool::new(false)),
        };
        let mut specs: Vec<NewTopic<'_>> = vec![
            NewTopic::new(&rig.input, 2, TopicReplication::Fixed(1)),
            NewTopic::new(&rig.out, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&rig.dlq, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&rig.held, 2, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact"),
        ];
        for t in &rig.tiers {
            specs.push(NewTopic::new(&t.topic, 2, TopicReplication::Fixed(1)));
        }
        let admin = clients().admin().unwrap();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.create_topics(&specs, &opts).await.unwrap() {
            r.unwrap();
        }
        rig
    }

    /// Starts a loop; instances of one group need different `instance` names.
    fn start(&self, instance: &str) -> Running {
        let router = FailureRouter {
            group: self.group.clone(),
            tiers: self.tiers.clone(),
            max_attempts: self.max_attempts,
            dlq_topic: self.dlq.clone(),
        };
        let mut topics = vec![self.input.clone()];
        topics.extend(self.tiers.iter().map(|t| t.topic.clone()));
        let mut config = LoopConfig::new(&self.group, instance, topics, Guarantee::ExactlyOnce);
        config.per_key = Some(PerKey {
            policy: "e2e".into(),
            held_topic: self.held.clone(),
        });
        let shutdown = Shutdown::new();
        let metrics = LoopMetrics::new(&prometheus::Registry::new()).unwrap();
        let handler = Arc::new(Scripted {
            out: self.out.clone(),
            release: self.release.clone(),
        });
        let task = {
            let (clients, shutdown, metrics) = (clients(), shutdown.clone(), metrics.clone());
            tokio::spawn(async move {
                sluice_stream::run(&clients, config, router, handler, metrics, shutdown).await
            })
        };
        Running {
            task,
            shutdown,
            metrics,
        }
    }

    /// Sends `value` with key `value[..1]` to input partition `partition`, in order.
    async fn send(&self, producer: &FutureProducer, partition: i32, values: &[&str]) {
        for v in values {
            producer
                .send(
                    FutureRecord::to(&self.input)
                        .partition(partition)
                        .key(&v[..1])
                        .payload(v.as_bytes()),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    /// The held-key topic's records, as (key, value) with the original topic stripped from
    /// the key; an empty value is a tombstone.
    async fn held_records(&self, until: impl FnMut(&[Seen]) -> bool) -> Vec<(String, String)> {
        let prefix = format!("{}\0", self.input);
        read_until(&reader(&self.held), Duration::from_secs(20), until)
            .await
            .into_iter()
            .map(|(k, _, v)| {
                let key = k.strip_prefix(&prefix).unwrap_or(&k).to_string();
                (key, String::from_utf8(v).unwrap())
            })
            .collect()
    }
}

/// Values per key, in the order they were written.
fn by_key(records: &[Seen]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, _, v) in records {
        out.entry(k.clone())
            .or_default()
            .push(String::from_utf8_lossy(v).into_owned());
    }
    out
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_keys_release_their_records_in_order_and_other_keys_flow_past() {
    let rig = Rig::new(&[1, 1], 3).await;
    let running = rig.start("e2e");
    let producer = clients().producer("e2e").unwrap();
    // Interleaved: A, B and E share partition 0, C and D partition 1.
    for n in 1..=3 {
        rig.send(&producer, 0, &[&format!("A{n}"), &format!("B{n}")])
            .await;
        rig.send(&producer, 1, &[&format!("C{n}"), &format!("D{n}")])
            .await;
        if n <= 2 {
            rig.send(&producer, 0, &[&format!("E{n}")]).await;
        }
    }
    let mut most_held = 0;
    let out = read_until(&reader(&rig.out), Duration::from_secs(30), |got| {
        most_held = most_held.max(running.held(&rig.group));
        got.len() >= 12
    })
    .await;
    if running.task.is_finished() {
        panic!("the consumer loop stopped early: {:?}", running.task.await);
    }
    let keys = by_key(&out);
    let expected: BTreeMap<String, Vec<String>> = [
        ("A", vec!["A1", "A2", "A3"]),
        ("B", vec!["B1", "B2", "B3"]),
        ("C", vec!["C2", "C3"]),
        ("D", vec!["D1", "D2", "D3"]),
        ("E", vec!["E2"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(keys, expected, "every key's records, in order, once");
    // B shares A's partition but is never held: all of it is out before A1's third attempt.
    let at = |v: &str| out.iter().position(|(_, _, x)| x == v.as_bytes()).unwrap();
    assert!(at("B3") < at("A1"), "{:?}", by_key(&out));
    assert!(
        at("E2") < at("A1"),
        "E1 was dead-lettered at once, E never held"
    );
    // Followers were not handled until released: they come from the tier the head was on.
    let tier1 = rig.tiers[1].topic.as_bytes();
    for v in ["A2", "A3", "C2", "C3"] {
        assert_eq!(out[at(v)].1["handled_from"], tier1, "{v}");
    }
    assert_eq!(
        out[at("D3")].1["handled_from"],
        rig.tiers[0].topic.as_bytes()
    );
    assert!(most_held >= 1, "the held-keys gauge never rose");

    let dead = read_until(&reader(&rig.dlq), Duration::from_secs(10), |g| g.len() >= 2).await;
    let dead: BTreeMap<String, &Seen> = dead
        .iter()
        .map(|d| (String::from_utf8_lossy(&d.2).into_owned(), d))
        .collect();
    assert_eq!(dead.keys().collect::<Vec<_>>(), ["C1", "E1"]);
    let c1 = &dead["C1"].1;
    assert_eq!(c1["sluice_attempts"], b"3");
    assert_eq!(c1["kafka_dlt-original-topic"], rig.input.as_bytes());
    assert_eq!(c1["kafka_dlt-original-partition"], 1i32.to_be_bytes());
    assert!(
        !c1.contains_key("sluice_key_seq"),
        "ordering stays out of the DLQ"
    );
    assert_eq!(dead["E1"].1["sluice_failure_kind"], b"permanent");

    wait_for("no held keys", Duration::from_secs(10), || {
        running.held(&rig.group) == 0
    })
    .await;
    // The held-key topic saw A, C and D held and then released (tombstones), never B or E.
    let held = rig
        .held_records(|g| {
            let last = by_key(g);
            ["A", "C", "D"].iter().all(|k| {
                last.keys()
                    .any(|x| x.ends_with(k) && last[x].last().is_some_and(String::is_empty))
            })
        })
        .await;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &held {
        last.insert(k.clone(), v.clone());
    }
    assert_eq!(last.keys().collect::<Vec<_>>(), ["A", "C", "D"], "{held:?}");
    assert!(
        last.values().all(String::is_empty),
        "all released: {held:?}"
    );

    // Exactly once: nothing more arrives.
    let again = read_until(&reader(&rig.out), Duration::from_secs(3), |_| false).await;
    assert_eq!(again.len(), 12);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_keys_survive_a_restart() {
    let rig = Rig::new(&[1], 1000).await;
    let first = rig.start("e2e");
    let producer = clients().producer("e2e").unwrap();
    rig.send(&producer, 0, &["R1", "R2"]).await;
    // R1 keeps failing; R2 waits behind it. The state says so in the held-key topic.
    let held = rig
        .held_records(|g| {
            g.iter()
                .any(|(_, _, v)| String::from_utf8_lossy(v).contains(r#""1":0"#))
        })
        .await;
    assert!(
        held.iter()
            .any(|(k, v)| k == "R" && v.contains(r#""0":0"#) && v.contains(r#""1":0"#)),
        "{held:?}"
    );
    assert_eq!(first.held(&rig.group), 1);
    first.stop().await;

    // A new loop in the same group restores the held key from the topic.
    let second = rig.start("e2e");
    wait_for("the held key restored", Duration::from_secs(30), || {
        second.held(&rig.group) == 1
    })
    .await;
    // R3 arrives after the restart and must wait too; F (same partition) is not held.
    rig.send(&producer, 0, &["R3", "F1"]).await;
    let out = reader(&rig.out);
    let before = read_until(&out, Duration::from_secs(20), |g| {
        g.iter().any(|r| r.0 == "F")
    })
    .await;
    assert_eq!(
        by_key(&before).keys().collect::<Vec<_>>(),
        ["F"],
        "{before:?}"
    );
    // Give R2 and R3 the chance to overtake if they could.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.release.store(true, Ordering::SeqCst);
    let after = read_until(&out, Duration::from_secs(20), |g| g.len() >= 3).await;
    if second.task.is_finished() {
        panic!("the consumer loop stopped early: {:?}", second.task.await);
    }
    assert_eq!(by_key(&after)["R"], ["R1", "R2", "R3"], "{after:?}");
    wait_for("no held keys", Duration::from_secs(10), || {
        second.held(&rig.group) == 0
    })
    .await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_keys_move_with_their_partition_when_a_member_joins() {
    let rig = Rig::new(&[1], 1000).await;
    let a = rig.start("a");
    let producer = clients().producer("e2e").unwrap();
    rig.send(&producer, 0, &["R1", "R2"]).await;
    rig.send(&producer, 1, &["S1", "S2"]).await;
    wait_for("two held keys", Duration::from_secs(30), || {
        a.held(&rig.group) == 2
    })
    .await;

    // A second member takes one partition of every topic, with its held key.
    let b = rig.start("b");
    wait_for("one held key each", Duration::from_secs(30), || {
        a.held(&rig.group) == 1 && b.held(&rig.group) == 1
    })
    .await;
    rig.send(&producer, 0, &["R3"]).await;
    rig.send(&producer, 1, &["S3"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.release.store(true, Ordering::SeqCst);
    let out = read_until(&reader(&rig.out), Duration::from_secs(30), |g| g.len() >= 6).await;
    for (name, running) in [("a", &a), ("b", &b)] {
        assert!(!running.task.is_finished(), "loop {name} stopped early");
    }
    let keys = by_key(&out);
    assert_eq!(keys["R"], ["R1", "R2", "R3"], "{out:?}");
    assert_eq!(keys["S"], ["S1", "S2", "S3"], "{out:?}");
    wait_for("no held keys", Duration::from_secs(10), || {
        a.held(&rig.group) + b.held(&rig.group) == 0
    })
    .await;
    let again = read_until(&reader(&rig.out), Duration::from_secs(3), |_| false).await;
    assert_eq!(again.len(), 6, "once each");
    b.stop().await;
    a.stop().await;
}

/// The normalizer's test topology with its retry policy ordered per key.
fn per_key_topology(prefix: &str) -> String {
    crate::normalizer::topology(prefix)
        .replace(
            &format!("dlq_topic: {prefix}.dlq.normalizer}}"),
            &format!("dlq_topic: {prefix}.dlq.normalizer, ordering: per_key}}"),
        )
        .replace(
            "sources:",
            &format!("  - {{name: {prefix}.state.held-normalizer, partitions: 3, config: {{cleanup.policy: compact}}}}\nsources:"),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_normalize_keeps_its_policy_s_held_keys() {
    require_stack().await;
    let prefix = format!("ok{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let file = temp_file("topology.yaml", &per_key_topology(&prefix))
        .display()
        .to_string();
    let (ok, out, err) = sluice_async(
        ["topology", "plan", "--topology", &file]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(ok, "{out}{err}");
    for created in [
        format!("+ create      {prefix}.state.held-normalizer (3 partitions"),
        format!("+ create      {prefix}.retry.normalizer.1s (3 partitions"),
    ] {
        assert!(out.contains(&created), "missing `{created}` in:\n{out}");
    }
    for cmd in [["topology", "apply"], ["schemas", "register"]] {
        let (ok, out, err) = sluice_async(
            [cmd[0], cmd[1], "--topology", &file]
                .map(String::from)
                .to_vec(),
        )
        .await;
        assert!(ok, "{cmd:?}: {out}{err}");
    }

    // At-least-once cannot keep the held keys with the outputs: refused, naming the policy.
    let refused = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["normalize", "--guarantee", "at-least-once"])
                .args(["--topology", &file])
                .env("SLUICE_ADMIN__LISTEN", "127.0.0.1:0")
                .output()
                .unwrap()
        }
    });
    let refused = tokio::time::timeout(Duration::from_secs(60), refused)
        .await
        .expect("an at-least-once per-key normalizer must stop at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("retry policy `normalizer` has `ordering: per_key`, which needs the exactly-once guarantee"),
        "{stderr}"
    );

    // Exactly-once runs, normalizes, and exports the gauge at 0.
    let admin = free_port();
    let listen = format!("127.0.0.1:{admin}");
    let instance = format!("e2e-{prefix}");
    let _child = spawn_sluice(
        &["normalize", "--topology", &file],
        &[
            ("SLUICE_INSTANCE_ID", instance.as_str()),
            ("SLUICE_ADMIN__LISTEN", listen.as_str()),
        ],
    );
    let producer = clients().producer("e2e").unwrap();
    send_raw(
        &producer,
        &format!("{prefix}.raw.stripe"),
        "stripe",
        "stripe",
        "evt_1",
        Some("payment_intent.succeeded"),
        &fixture("stripe/payment_intent.succeeded.json"),
    )
    .await;
    let payments = reader(&format!("{prefix}.events.payments"));
    let events = read_until(&payments, Duration::from_secs(60), |g| !g.is_empty()).await;
    assert_eq!(events.len(), 1);
    let metrics = crate::support::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = format!("sluice_consumer_held_keys{{group=\"{prefix}-normalizer\"}} 0");
    assert!(metrics.contains(&gauge), "{metrics}");
}
