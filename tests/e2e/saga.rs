//! Sagas against the real broker and registry: `sluice saga run` and the demo participants run
//! as real processes on the reference order-fulfillment saga (read from
//! `topology/topology.yaml`, with short timeouts), under a topology prefix of their own.
//!
//! What happened is read back from Kafka (lifecycle events, commands, the state topic via
//! `sluice saga show|list`) and from the participants' effects log, one line per executed
//! command.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value as Json};
use sluice_producers::publish::Publisher;
use sluice_sagas::demo::{scratch_topology, Scratch};
use sluice_sagas::home_partition;
use sluice_sagas::messages::{Meta, Reply, SchemaBook};
use sluice_schemas::codec::ReaderSchema;
use sluice_schemas::json::to_json_with_schema;
use sluice_schemas::{AvroCodec, Catalog, RecordLocation, RegistryClient};
use sluice_topology::Topology;

use crate::normalizer::{read_until, reader, spawn_sluice, ChildGuard, Seen};
use crate::support::{clients, registry, require_stack, sluice_async, temp_file};

const SAGA: &str = "order-fulfillment";

/// The reference saga with test-sized timeouts, under `prefix`.
fn topology(prefix: &str) -> String {
    saga_topology(&Scratch {
        prefix,
        partitions: 3,
        timeout: "3s",
        // Long enough for an operator to abort a saga waiting on its shipment.
        timeouts: &[("create-shipment", "4s")],
        retry: Some("{max_attempts: 2, backoff: 500ms}"),
        compensation_retry: "{max_attempts: 2, backoff: 300ms}",
    })
}

/// The saga with one step timeout, no step retries and the given compensation retries.
fn topology_without_retries(prefix: &str, timeout: &str, compensation_retry: &str) -> String {
    saga_topology(&Scratch {
        prefix,
        partitions: 3,
        timeout,
        timeouts: &[],
        retry: None,
        compensation_retry,
    })
}

/// The reference topology's order saga, as `scratch` sets it up.
fn saga_topology(scratch: &Scratch<'_>) -> String {
    scratch_topology(&crate::support::reference_topology(), SAGA, scratch).unwrap()
}

use crate::support::free_port;

/// One deployed saga topology and what the test started on it.
pub(crate) struct Deployment {
    pub(crate) prefix: String,
    file: String,
    effects: PathBuf,
    admin_port: u16,
    topology: Topology,
}

/// The deployment's topics and subjects go when the test ends, passed or not.
impl Drop for Deployment {
    fn drop(&mut self) {
        crate::support::remove_deployment(&self.topology);
    }
}

/// One line of the participants' effects log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effect {
    role: String,
    kind: String,
    command: String,
    command_id: String,
    saga_id: String,
    outcome: String,
}

impl Deployment {
    async fn new() -> Self {
        Self::of(topology).await
    }

    /// Deploys the topology `yaml(prefix)` under a fresh prefix.
    pub(crate) async fn of(yaml: impl Fn(&str) -> String) -> Self {
        require_stack().await;
        let prefix = format!("sg{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let file = temp_file("topology.yaml", &yaml(&prefix))
            .display()
            .to_string();
        for cmd in [["topology", "apply"], ["schemas", "register"]] {
            let (ok, out, err) = sluice_async(vec![
                cmd[0].into(),
                cmd[1].into(),
                "--topology".into(),
                file.clone(),
            ])
            .await;
            assert!(ok, "{cmd:?}: {out}{err}");
        }
        let topology = crate::support::load_topology(file.as_ref());
        let effects = std::path::Path::new(&file).with_file_name("effects.log");
        Self {
            prefix,
            file,
            effects,
            admin_port: free_port(),
            topology,
        }
    }

    fn topic(&self, what: &str) -> String {
        format!("{}.{what}", self.prefix)
    }

    pub(crate) fn orchestrator(&self) -> ChildGuard {
        self.orchestrator_with(&[])
    }

    fn orchestrator_with(&self, extra: &[&str]) -> ChildGuard {
        self.orchestrator_named(&["saga", "run"], extra)
    }

    /// The orchestrator started as `sluice <command> --topology … <extra>`.
    fn orchestrator_named(&self, command: &[&str], extra: &[&str]) -> ChildGuard {
        let listen = format!("127.0.0.1:{}", self.admin_port);
        spawn_sluice(
            &[command, &["--topology", &self.file][..], extra].concat(),
            &[
                ("SLUICE_INSTANCE_ID", "e2e"),
                ("SLUICE_ADMIN__LISTEN", &listen),
                ("RUST_LOG", "warn"),
            ],
        )
    }

    fn participants(&self, extra: &[&str]) -> ChildGuard {
        self.participants_with_env(extra, &[])
    }

    /// The participants, with `env` set for them (e.g. an HTTP step's base URL).
    pub(crate) fn participants_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> ChildGuard {
        let effects = self.effects.display().to_string();
        let mut args = vec![
            "saga",
            "participant",
            "--role",
            "all",
            "--topology",
            &self.file,
            "--effects-log",
            &effects,
        ];
        args.extend_from_slice(extra);
        let base = [("SLUICE_INSTANCE_ID", "e2e"), ("RUST_LOG", "warn")];
        spawn_sluice(&args, &[&base[..], env].concat())
    }

    pub(crate) async fn publisher(&self) -> Publisher {
        let catalog = Catalog::embedded().unwrap();
        Publisher::new(
            &clients(),
            &RegistryClient::new(&registry()).unwrap(),
            &catalog,
            &self.topology,
        )
        .await
        .unwrap()
    }

    pub(crate) async fn sluice(&self, args: &[&str]) -> (bool, String, String) {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.push("--topology".into());
        v.push(self.file.clone());
        sluice_async(v).await
    }

    /// The instance's state record, via `sluice saga show --json`.
    pub(crate) async fn state(&self, id: &str) -> Json {
        let (ok, out, err) = self.sluice(&["saga", "show", id, "--json"]).await;
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    pub(crate) async fn wait_state(
        &self,
        id: &str,
        timeout: Duration,
        until: impl Fn(&Json) -> bool,
    ) -> Json {
        let deadline = Instant::now() + timeout;
        loop {
            let (ok, out, _) = self.sluice(&["saga", "show", id, "--json"]).await;
            if ok {
                let s: Json = serde_json::from_str(&out).unwrap();
                if until(&s) || Instant::now() > deadline {
                    return s;
                }
            } else if Instant::now() > deadline {
                panic!("no state for {id}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub(crate) fn effects(&self) -> Vec<Effect> {
        std::fs::read_to_string(&self.effects)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                Effect {
                    role: f[0].into(),
                    kind: f[1].into(),
                    command: f[2].into(),
                    command_id: f[3].into(),
                    saga_id: f[4].into(),
                    outcome: f[6].into(),
                }
            })
            .collect()
    }

    /// The orchestrator's metrics once they contain every line of `lines` (or after 30 s).
    async fn wait_metrics(&self, lines: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.metrics().await;
            if lines.iter().all(|l| m.contains(l)) || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn metrics(&self) -> String {
        crate::support::get(format!("http://127.0.0.1:{}/metrics", self.admin_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A demo OrderPlaced.
fn order(id: &str, skus: &[&str]) -> Json {
    let lines: Vec<Json> = skus
        .iter()
        .map(|sku| {
            json!({"sku": sku, "title": format!("item {sku}"), "quantity": 1,
                   "unit_price": {"amount": "10.0000", "currency": "EUR"}})
        })
        .collect();
    json!({
        "subject": id,
        "order_id": id,
        "order_number": format!("#{id}"),
        "total": {"amount": format!("{}.0000", 10 * skus.len()), "currency": "EUR"},
        "line_items": lines,
        "provider": "e2e",
    })
}

pub(crate) async fn place(publisher: &Publisher, id: &str, skus: &[&str]) {
    publisher
        .publish("dev.sluice.events.commerce.OrderPlaced", order(id, skus))
        .await
        .unwrap();
}

/// Lifecycle event types by saga id, read from the start of the lifecycle topic until
/// `done` says enough (or `timeout`).
pub struct Lifecycle {
    reader: StreamConsumer,
    seen: Vec<Seen>,
}

impl Lifecycle {
    pub(crate) fn new(d: &Deployment) -> Self {
        Self::on(&d.topic("events.sagas"))
    }

    /// Reads the lifecycle topic `topic`.
    pub fn on(topic: &str) -> Self {
        Self {
            reader: reader(topic),
            seen: Vec::new(),
        }
    }

    pub async fn until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.by_id()) && Instant::now() < deadline {
            let more = read_until(&self.reader, Duration::from_millis(500), |_| false).await;
            self.seen.extend(more);
        }
    }

    /// Reads until each of `ids` reached a terminal event.
    pub(crate) async fn until_terminal<'a>(
        &mut self,
        ids: impl Iterator<Item = &'a String> + Clone,
        timeout: Duration,
    ) {
        self.until(timeout, |m| {
            ids.clone().all(|id| {
                m.get(id)
                    .is_some_and(|e| !Lifecycle::terminal(e).is_empty())
            })
        })
        .await
    }

    pub fn by_id(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, headers, _) in &self.seen {
            let t = String::from_utf8_lossy(&headers["ce_type"]);
            m.entry(key.clone())
                .or_default()
                .push(t.rsplit('.').next().unwrap().to_string());
        }
        m
    }

    pub(crate) fn terminal(events: &[String]) -> Vec<&str> {
        events
            .iter()
            .map(String::as_str)
            .filter(|e| *e == "SagaCompleted" || *e == "SagaCompensated")
            .collect()
    }
}

/// Commands of `saga_id` executed by the participants, as `Command:outcome`, in order.
pub(crate) fn executed(effects: &[Effect], saga_id: &str) -> Vec<String> {
    effects
        .iter()
        .filter(|e| e.saga_id == saga_id)
        .map(|e| format!("{}:{}", e.command, e.outcome))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_complete_compensate_in_reverse_and_ignore_duplicate_and_late_replies() {
    let d = Deployment::new().await;
    let _orchestrator = d.orchestrator();
    let _participants = d.participants(&[]);
    let publisher = d.publisher().await;
    let ok = format!("{}-ok", d.prefix);
    let fail = |role: &str| format!("{}-fail-{role}", d.prefix);
    place(&publisher, &ok, &["SKU-1", "SKU-2"]).await;
    for role in ["inventory", "payments", "shipping"] {
        let sku = format!("FAIL-{}", role.to_uppercase());
        place(&publisher, &fail(role), &["SKU-1", &sku]).await;
    }
    let ids = [
        ok.clone(),
        fail("inventory"),
        fail("payments"),
        fail("shipping"),
    ];
    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until_terminal(ids.iter(), Duration::from_secs(90))
        .await;
    let events = lifecycle.by_id();
    assert_eq!(
        events[&ok],
        [
            "SagaStarted",
            "SagaStepCompleted",
            "SagaStepCompleted",
            "SagaStepCompleted",
            "SagaCompleted"
        ]
    );
    let effects = d.effects();
    assert_eq!(
        executed(&effects, &ok),
        [
            "ReserveInventory:succeeded",
            "ChargePayment:succeeded",
            "CreateShipment:succeeded"
        ]
    );
    // A failure at each step: exactly the completed steps are compensated, in reverse.
    assert_eq!(
        executed(&effects, &fail("inventory")),
        ["ReserveInventory:failed"]
    );
    assert_eq!(
        executed(&effects, &fail("payments")),
        [
            "ReserveInventory:succeeded",
            "ChargePayment:failed",
            "ReleaseInventory:succeeded"
        ]
    );
    assert_eq!(
        executed(&effects, &fail("shipping")),
        [
            "ReserveInventory:succeeded",
            "ChargePayment:succeeded",
            "CreateShipment:failed",
            "RefundPayment:succeeded",
            "ReleaseInventory:succeeded"
        ]
    );
    for role in ["inventory", "payments", "shipping"] {
        assert_eq!(
            Lifecycle::terminal(&events[&fail(role)]),
            ["SagaCompensated"],
            "{role}"
        );
    }
    let s = d.state(&fail("shipping")).await;
    assert_eq!(s["status"], "compensated");
    assert_eq!(s["failure"]["kind"], "failed");
    assert_eq!(s["failure"]["step"], "create-shipment");
    let undone: Vec<&str> = s["compensated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["step"].as_str().unwrap())
        .collect();
    assert_eq!(undone, ["charge-payment", "reserve-inventory"]);

    // The outcome events, decoded through the registry.
    let outcomes = read_until(
        &reader(&d.topic("events.commerce")),
        Duration::from_secs(30),
        |g| {
            g.iter()
                .filter(|r| r.1["ce_type"] != b"dev.sluice.events.commerce.OrderPlaced")
                .count()
                >= 4
        },
    )
    .await;
    let catalog = Catalog::embedded().unwrap();
    let codec = AvroCodec::new(RegistryClient::new(&registry()).unwrap());
    let decode = |t: &str, value: &[u8]| {
        let schema = catalog.latest(t).unwrap().schema.clone();
        let codec = codec.clone();
        let value = value.to_vec();
        async move {
            let v = codec
                .decode_as(
                    &value,
                    &ReaderSchema::new(schema.clone()).unwrap(),
                    &RecordLocation::default(),
                )
                .await
                .unwrap();
            to_json_with_schema(&v.value, &schema)
        }
    };
    let confirmed = outcomes
        .iter()
        .find(|r| r.0 == ok && r.1["ce_type"] == b"dev.sluice.events.sagas.OrderConfirmed")
        .expect("an OrderConfirmed for the completed saga");
    let c = decode("dev.sluice.events.sagas.OrderConfirmed", &confirmed.2).await;
    assert_eq!(c["order_id"], ok.as_str());
    assert_eq!(c["total"]["amount"], "20.0000");
    assert_eq!(c["saga_id"], ok.as_str());
    let cancelled = outcomes
        .iter()
        .find(|r| {
            r.0 == fail("payments")
                && r.1["ce_type"] == b"dev.sluice.events.commerce.OrderCancelled"
        })
        .expect("an OrderCancelled for a compensated saga");
    let c = decode("dev.sluice.events.commerce.OrderCancelled", &cancelled.2).await;
    assert_eq!(c["reason"], "simulated payments failure");

    // Commands carry the idempotency key, correlation and trace headers.
    let commands = read_until(
        &reader(&d.topic(&format!("saga.{SAGA}.commands"))),
        Duration::from_secs(20),
        |g| g.iter().any(|r| r.0 == ok),
    )
    .await;
    let first = commands.iter().find(|r| r.0 == ok).unwrap();
    assert_eq!(
        first.1["sluice_command_id"],
        format!("{ok}:reserve-inventory:do:1").as_bytes()
    );
    assert_eq!(first.1["sluice_correlation_id"], ok.as_bytes());
    assert_eq!(first.1["traceparent"].len(), 55);

    // A duplicate of an accepted reply and a reply to a command never sent are ignored and
    // counted; the state does not change.
    let before = d.state(&ok).await;
    let replies = d.topic(&format!("saga.{SAGA}.replies"));
    let codec = AvroCodec::new(RegistryClient::new(&registry()).unwrap());
    let book = SchemaBook::resolve(
        &RegistryClient::new(&registry()).unwrap(),
        &catalog,
        d.topology.subjects.naming,
        [(
            replies.clone(),
            "dev.sluice.events.sagas.InventoryReserved".to_string(),
        )],
        &codec,
    )
    .await
    .unwrap();
    let producer = clients().producer("e2e").unwrap();
    // The duplicate goes where the default partitioner puts it (the saga id's partition);
    // the late one to another partition, which the orchestrator moves to the right one.
    let home = home_partition(ok.as_bytes(), 3);
    for (command_id, partition) in [
        (format!("{ok}:reserve-inventory:do:1"), None),
        (format!("{ok}:reserve-inventory:do:7"), Some((home + 1) % 3)),
    ] {
        let reply = Reply {
            event_type: "dev.sluice.events.sagas.InventoryReserved".into(),
            saga_id: ok.clone(),
            saga_name: SAGA.into(),
            step: "reserve-inventory".into(),
            command_id,
            attempt: 1,
            reason: None,
            retryable: false,
            result: None,
        };
        let meta = Meta {
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: sluice_schemas::metadata::now_ms(),
            source: "e2e".into(),
            subject: Some(ok.clone()),
        };
        let value = book
            .encode_fields(&replies, &reply.event_type, reply.fields(&meta))
            .unwrap();
        let mut record = FutureRecord::to(&replies).key(&ok).payload(&value);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let landed = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(
            landed.partition,
            partition.unwrap_or(home),
            "sluice's partitioner is librdkafka's"
        );
    }
    let expected = [
        "sluice_saga_ignored_total{reason=\"duplicate_reply\",saga=\"order-fulfillment\"} 1",
        "sluice_saga_ignored_total{reason=\"late_reply\",saga=\"order-fulfillment\"} 1",
        "sluice_saga_terminal_total{saga=\"order-fulfillment\",state=\"completed\"} 1",
        "sluice_saga_terminal_total{saga=\"order-fulfillment\",state=\"compensated\"} 3",
        // Only the misplaced reply: every participant reply landed in its saga's partition.
        "sluice_saga_forwarded_total{saga=\"order-fulfillment\"} 1",
    ];
    let metrics = d.wait_metrics(&expected).await;
    for line in expected {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert_eq!(d.state(&ok).await, before, "ignored replies change nothing");

    // Operators: list with filters, show, and clear errors.
    let (ok_, out, err) = d.sluice(&["saga", "list", "--state", "compensated"]).await;
    assert!(ok_, "{err}");
    assert!(
        out.contains(&fail("shipping")) && !out.contains(&format!("{ok} ")),
        "{out}"
    );
    assert!(
        out.contains("3 instance(s): order-fulfillment compensated 3"),
        "{out}"
    );
    let (_, out, _) = d.sluice(&["saga", "list", "--older-than", "1h"]).await;
    assert!(out.contains("0 instance(s)"), "{out}");
    let (_, out, _) = d.sluice(&["saga", "show", &fail("payments")]).await;
    assert!(
        out.contains(
            "state        compensated (failed at charge-payment: simulated payments failure)"
        ),
        "{out}"
    );
    assert!(
        out.contains("PaymentChargeFailed: simulated payments failure"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:reserve-inventory:undo:1", fail("payments"))),
        "{out}"
    );
    let (ok_, _, err) = d.sluice(&["saga", "show", "no-such-order"]).await;
    assert!(
        !ok_ && err.contains("no saga instance `no-such-order`"),
        "{err}"
    );
    let (ok_, _, err) = d.sluice(&["saga", "retry", &ok]).await;
    assert!(
        !ok_ && err.contains("is completed; only a parked saga can be retried"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_survive_a_restart_and_compensate_and_an_abort_compensates_now() {
    let d = Deployment::new().await;
    let mut orchestrator = d.orchestrator();
    let _participants = d.participants(&[]);
    let publisher = d.publisher().await;
    let slow = format!("{}-timeout", d.prefix);
    let held = format!("{}-abort", d.prefix);
    place(&publisher, &slow, &["TIMEOUT-SHIPPING"]).await;
    place(&publisher, &held, &["TIMEOUT-SHIPPING"]).await;

    // Abort `held` while it waits on its shipment.
    let s = d
        .wait_state(&held, Duration::from_secs(30), |s| {
            s["pending"]["step"] == "create-shipment"
        })
        .await;
    assert_eq!(s["pending"]["step"], "create-shipment", "{s}");
    let (ok, out, err) = d
        .sluice(&[
            "saga",
            "abort",
            &held,
            "--reason",
            "customer called",
            "--by",
            "e2e",
        ])
        .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied: order-fulfillment"), "{out}");

    // `slow` waits on a deadline that only its state knows: kill the orchestrator and start
    // a new one, which must still time it out.
    let s = d.state(&slow).await;
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["pending"]["step"], "create-shipment", "{s}");
    let _ = orchestrator.0.kill();
    let _ = orchestrator.0.wait();
    orchestrator = d.orchestrator();

    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until_terminal([&slow, &held].into_iter(), Duration::from_secs(60))
        .await;
    let events = lifecycle.by_id();
    for id in [&slow, &held] {
        assert_eq!(
            Lifecycle::terminal(&events[id]),
            ["SagaCompensated"],
            "{id}"
        );
    }
    let effects = d.effects();
    // Two attempts, same command id: the timed-out step might have run, so it is compensated
    // first (the participant never ran it, so its compensation is "nothing to undo" and
    // the participant's code is not called), then the others in reverse.
    assert_eq!(
        executed(&effects, &slow),
        [
            "ReserveInventory:succeeded",
            "ChargePayment:succeeded",
            "CreateShipment:no_reply",
            "CreateShipment:no_reply",
            "RefundPayment:succeeded",
            "ReleaseInventory:succeeded"
        ]
    );
    let shipment_ids: BTreeSet<&str> = effects
        .iter()
        .filter(|e| e.saga_id == slow && e.command == "CreateShipment")
        .map(|e| e.command_id.as_str())
        .collect();
    assert_eq!(
        shipment_ids.len(),
        1,
        "a resend after a timeout keeps the command id"
    );
    let s = d.state(&slow).await;
    assert_eq!(s["failure"]["kind"], "timed_out");
    let undone: Vec<&str> = s["compensated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        undone,
        ["create-shipment", "charge-payment", "reserve-inventory"]
    );
    let cancel = &s["compensated"][0];
    assert_eq!(cancel["result"], r#"{"nothing_to_undo":true}"#);
    let events: Vec<&str> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "timeout").count(),
        2,
        "{events:?}"
    );

    let s = d.state(&held).await;
    assert_eq!(s["failure"]["kind"], "aborted");
    assert_eq!(s["failure"]["reason"], "customer called");
    let (ok, _, err) = d.sluice(&["saga", "abort", &held]).await;
    assert!(
        !ok && err.contains("is compensated; only a running saga can be aborted"),
        "{err}"
    );
    let (_, out, _) = d.sluice(&["saga", "show", &held]).await;
    assert!(out.contains("by e2e: customer called"), "{out}");
    drop(orchestrator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_compensation_parks_the_saga_until_an_operator_retries() {
    let d = Deployment::new().await;
    let _orchestrator = d.orchestrator();
    let id = format!("{}-park", d.prefix);
    let rule = format!("RefundPayment={id}");
    let participants = d.participants(&["--fail-when", &rule]);
    let publisher = d.publisher().await;
    place(&publisher, &id, &["FAIL-SHIPPING"]).await;
    let s = d
        .wait_state(&id, Duration::from_secs(60), |s| s["status"] == "parked")
        .await;
    assert_eq!(s["status"], "parked", "{s}");
    assert_eq!(s["pending"]["step"], "charge-payment");
    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until(Duration::from_secs(30), |m| {
            m.get(&id)
                .is_some_and(|e| e.iter().any(|t| t == "SagaFailed"))
        })
        .await;
    assert!(lifecycle.by_id()[&id].contains(&"SagaFailed".to_string()));
    let metrics = d
        .wait_metrics(&["sluice_saga_parked{saga=\"order-fulfillment\"} 1"])
        .await;
    assert!(
        metrics.contains("sluice_saga_parked{saga=\"order-fulfillment\"} 1"),
        "{metrics}"
    );
    let (_, out, _) = d.sluice(&["saga", "list", "--state", "parked"]).await;
    assert!(out.contains(&id) && out.contains("1 instance(s)"), "{out}");
    let (ok, _, err) = d.sluice(&["saga", "abort", &id]).await;
    assert!(
        !ok && err.contains("is parked; only a running saga can be aborted"),
        "{err}"
    );

    // The payment provider is fixed: the participants come back without the fault.
    drop(participants);
    let _participants = d.participants(&[]);
    let (ok, out, err) = d.sluice(&["saga", "retry", &id, "--by", "e2e"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied"), "{out}");
    lifecycle
        .until_terminal(std::iter::once(&id), Duration::from_secs(60))
        .await;
    assert_eq!(
        Lifecycle::terminal(&lifecycle.by_id()[&id]),
        ["SagaCompensated"]
    );
    assert_eq!(
        executed(&d.effects(), &id),
        [
            "ReserveInventory:succeeded",
            "ChargePayment:succeeded",
            "CreateShipment:failed",
            "RefundPayment:failed",
            "RefundPayment:failed",
            "RefundPayment:succeeded",
            "ReleaseInventory:succeeded"
        ]
    );
    let refunds: BTreeSet<String> = d
        .effects()
        .into_iter()
        .filter(|e| e.saga_id == id && e.command == "RefundPayment")
        .map(|e| e.command_id)
        .collect();
    assert_eq!(
        refunds.len(),
        3,
        "each try after a failure reply is a new command"
    );
    let metrics = d
        .wait_metrics(&["sluice_saga_parked{saga=\"order-fulfillment\"} 0"])
        .await;
    assert!(
        metrics.contains("sluice_saga_parked{saga=\"order-fulfillment\"} 0"),
        "{metrics}"
    );
}

/// Places one order, `<prefix>-done`, and waits for its saga to complete; returns its id.
async fn complete_one_saga(d: &Deployment) -> String {
    let publisher = d.publisher().await;
    let done = format!("{}-done", d.prefix);
    place(&publisher, &done, &["A-1"]).await;
    let mut lifecycle = Lifecycle::new(d);
    lifecycle
        .until_terminal(std::iter::once(&done), Duration::from_secs(60))
        .await;
    assert_eq!(
        Lifecycle::terminal(&lifecycle.by_id()[&done]),
        ["SagaCompleted"]
    );
    done
}

/// A finished instance's state is deleted once the keep period is over: a tombstone in the
/// state topic, so operators see an unknown id and a restart does not bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_are_deleted_after_the_keep_period() {
    let d = Deployment::new().await;
    let _orchestrator = d.orchestrator_with(&["--keep-finished", "3s"]);
    let _participants = d.participants(&[]);
    let done = complete_one_saga(&d).await;
    assert_eq!(d.state(&done).await["status"], "completed");

    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        let (ok, _, err) = d.sluice(&["saga", "show", &done]).await;
        if !ok {
            break err;
        }
        assert!(
            Instant::now() < deadline,
            "{done} still has state long after the keep period"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(err.contains(&done), "{err}");
    let line = "sluice_saga_expired_total{saga=\"order-fulfillment\"} 1";
    assert!(d.wait_metrics(&[line]).await.contains(line));

    // The tombstone is the instance's last record in the state topic.
    let state = read_until(
        &reader(&d.topic("state.saga-order-fulfillment")),
        Duration::from_secs(20),
        |g| g.iter().any(|r| r.0 == done && r.2.is_empty()),
    )
    .await;
    let last = state.iter().rev().find(|r| r.0 == done).unwrap();
    assert!(
        last.2.is_empty(),
        "last state record of {done} is not a tombstone"
    );
}

/// The participants forget a saga's commands as soon as it finishes (tombstones in their
/// dedup topics), while the orchestrator keeps its state for `--keep-finished`: their tables
/// hold the commands of running sagas, not of every saga finished in the last week.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_forget_a_saga_s_commands_once_it_finishes() {
    let d = Deployment::new().await;
    let _orchestrator = d.orchestrator_with(&[]);
    let _participants = d.participants(&[]);
    let done = complete_one_saga(&d).await;

    // Each command of the saga they handled ends with a tombstone in its role's dedup topic.
    let handled: BTreeMap<String, String> = d
        .effects()
        .into_iter()
        .filter(|e| e.saga_id == done)
        .map(|e| (e.command_id, e.role))
        .collect();
    assert_eq!(handled.len(), 3, "{handled:?}");
    for (command_id, role) in &handled {
        let topic = sluice_topology::naming::saga_participant_state_topic(&d.prefix, role);
        let dedup = read_until(&reader(&topic), Duration::from_secs(30), |g| {
            g.iter().any(|r| &r.0 == command_id && r.2.is_empty())
        })
        .await;
        let last = dedup.iter().rev().find(|r| &r.0 == command_id);
        assert!(
            last.is_some_and(|r| r.2.is_empty()),
            "{role} did not forget {command_id}: {:?}",
            dedup
                .iter()
                .filter(|r| &r.0 == command_id)
                .map(|r| String::from_utf8_lossy(&r.2))
                .collect::<Vec<_>>()
        );
    }
    let (kept, _, err) = d.sluice(&["saga", "show", &done]).await;
    assert!(
        kept,
        "the orchestrator keeps the finished saga's state: {err}"
    );
}

/// At `--max-in-flight` running sagas further orders wait unread in their partitions, and
/// start as the running ones finish: none is lost, none starts twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_beyond_max_in_flight_wait_unread_and_start_as_others_finish() {
    // Nobody answers for a while; nothing may time out meanwhile.
    let d = Deployment::of(|prefix| {
        topology_without_retries(prefix, "120s", "{max_attempts: 2, backoff: 300ms}")
    })
    .await;
    let _orchestrator = d.orchestrator_with(&["--max-in-flight", "3"]);
    let publisher = d.publisher().await;
    let ids: Vec<String> = (0..12).map(|i| format!("{}-cap-{i}", d.prefix)).collect();
    for id in &ids {
        place(&publisher, id, &["A-1"]).await;
    }
    let started = |m: &BTreeMap<String, Vec<String>>| {
        m.values()
            .filter(|e| e.iter().any(|t| t == "SagaStarted"))
            .count()
    };
    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until(Duration::from_secs(60), |m| started(m) >= 3)
        .await;
    // Long enough for a fourth to start if the cap did not hold (the trigger partitions are
    // offered again every 100 ms).
    lifecycle.until(Duration::from_secs(5), |_| false).await;
    assert_eq!(
        started(&lifecycle.by_id()),
        3,
        "with nobody answering, only --max-in-flight sagas start: {:?}",
        lifecycle.by_id()
    );

    let _participants = d.participants(&[]);
    lifecycle
        .until_terminal(ids.iter(), Duration::from_secs(120))
        .await;
    let events = lifecycle.by_id();
    for id in &ids {
        let of = events.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(Lifecycle::terminal(of), ["SagaCompleted"], "{id}: {of:?}");
        assert_eq!(
            of.iter().filter(|t| *t == "SagaStarted").count(),
            1,
            "{id} started once: {of:?}"
        );
    }
}

/// `sluice sagas`, the orchestrator's old name, still runs it: scripts and manifests written
/// before `sluice saga run` keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_name_sluice_sagas_still_runs_the_orchestrator() {
    let d = Deployment::new().await;
    let _orchestrator = d.orchestrator_named(&["sagas"], &[]);
    let _participants = d.participants(&[]);
    let publisher = d.publisher().await;
    let id = format!("{}-old-name", d.prefix);
    place(&publisher, &id, &["A-1"]).await;
    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until_terminal(std::iter::once(&id), Duration::from_secs(60))
        .await;
    let events = lifecycle.by_id();
    let events = events.get(&id).map(Vec::as_slice).unwrap_or_default();
    assert_eq!(
        Lifecycle::terminal(events),
        ["SagaCompleted"],
        "the saga of {id} under `sluice sagas`: {events:?}"
    );
}

/// Many sagas while the orchestrator is killed with SIGKILL at random moments and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_the_orchestrator_loses_and_repeats_nothing() {
    const SAGAS: usize = 200;
    const KILLS: usize = 4;
    let d = Deployment::new().await;
    let mut orchestrator = d.orchestrator();
    let _participants = d.participants(&["--fail-rate", "0.25", "--seed", "11"]);
    let publisher = d.publisher().await;
    let ids: Vec<String> = (0..SAGAS).map(|i| format!("{}-c{i}", d.prefix)).collect();
    let started = Instant::now();
    // Orders arrive over about five seconds while the orchestrator is killed every 0.7 to
    // 2.2 s, so kills land in every phase of the sagas (and of their transactions).
    let dice = || uuid::Uuid::new_v4().as_u128() % 1500;
    let placing = async {
        for chunk in ids.chunks(20) {
            futures::future::join_all(chunk.iter().map(|id| place(&publisher, id, &["SKU-1"])))
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let killing = async {
        let mut kills = Vec::new();
        for _ in 0..KILLS {
            tokio::time::sleep(Duration::from_millis(700 + dice() as u64)).await;
            let _ = orchestrator.0.kill(); // SIGKILL
            let _ = orchestrator.0.wait();
            kills.push(format!("{:.1}s", started.elapsed().as_secs_f64()));
            orchestrator = d.orchestrator();
        }
        kills
    };
    let ((), kills) = tokio::join!(placing, killing);
    assert_eq!(kills.len(), KILLS);

    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until_terminal(ids.iter(), Duration::from_secs(120))
        .await;
    // Anything written twice would be here by now; read a little more to be sure.
    let more = read_until(&lifecycle.reader, Duration::from_secs(3), |_| false).await;
    lifecycle.seen.extend(more);
    let events = lifecycle.by_id();
    let mut completed = 0;
    let mut compensated = 0;
    for id in &ids {
        let terminal = Lifecycle::terminal(events.get(id).map(Vec::as_slice).unwrap_or_default());
        assert_eq!(terminal.len(), 1, "{id} reached {terminal:?}");
        match terminal[0] {
            "SagaCompleted" => completed += 1,
            _ => compensated += 1,
        }
        let started = events[id].iter().filter(|e| *e == "SagaStarted").count();
        assert_eq!(started, 1, "{id} started {started} times");
    }

    // Every executed command ran once per command id; every compensation at most once per
    // step, and only for steps that had succeeded, in reverse order.
    let effects = d.effects();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for e in &effects {
        *runs.entry(e.command_id.as_str()).or_default() += 1;
    }
    let repeated: Vec<(&&str, &usize)> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "side effects repeated: {repeated:?}");
    for id in &ids {
        let mine: Vec<&Effect> = effects.iter().filter(|e| &e.saga_id == id).collect();
        let done: Vec<&str> = mine
            .iter()
            .filter(|e| e.kind == "action" && e.outcome == "succeeded")
            .map(|e| e.role.as_str())
            .collect();
        let undone: Vec<&str> = mine
            .iter()
            .filter(|e| e.kind == "compensation")
            .map(|e| e.role.as_str())
            .collect();
        let terminal = Lifecycle::terminal(&events[id])[0];
        if terminal == "SagaCompleted" {
            assert_eq!(done, ["inventory", "payments", "shipping"], "{id}");
            assert!(undone.is_empty(), "{id}: {undone:?}");
        } else {
            let mut expected = done.clone();
            expected.reverse();
            assert_eq!(undone, expected, "{id}: compensations");
        }
    }
    // The command ids the orchestrator sent are exactly those executed: none lost, none
    // executed twice.
    let ran: BTreeSet<String> = effects.iter().map(|e| e.command_id.clone()).collect();
    // The topic also carries the orchestrator's word that a saga finished (no command id).
    let ids_of = |g: &[Seen]| -> BTreeSet<String> {
        g.iter()
            .filter_map(|r| r.1.get("sluice_command_id"))
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .collect()
    };
    let commands_topic = reader(&d.topic(&format!("saga.{SAGA}.commands")));
    let mut commands = read_until(&commands_topic, Duration::from_secs(30), |g| {
        ids_of(g).is_superset(&ran)
    })
    .await;
    commands.extend(read_until(&commands_topic, Duration::from_secs(2), |_| false).await);
    commands.retain(|r| r.1.contains_key("sluice_command_id"));
    let sent = ids_of(&commands);
    assert_eq!(sent, ran);
    let (_, out, _) = d.sluice(&["saga", "list"]).await;
    assert!(out.contains(&format!("{SAGAS} instance(s)")), "{out}");
    eprintln!(
        "crash test: {SAGAS} sagas, SIGKILLs at {}, {completed} completed, {compensated} compensated, {} commands sent ({} executed once each, {} duplicate deliveries answered from dedup) in {:?}",
        kills.join(" "),
        commands.len(),
        ran.len(),
        commands.len() - sent.len(),
        started.elapsed()
    );
}

/// The topology changes under sagas that are compensating: `reserve-inventory` becomes a
/// step without side effects and without compensation (which `sluice topology validate`
/// accepts) while its compensation is failing and being retried, and the orchestrator is
/// killed and started on the new topology. Those sagas cannot take their next step: they are
/// parked `definition_changed`, the orchestrator keeps running new sagas, and operators end
/// the parked ones with `sluice saga abort` or `retry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_change_under_a_compensating_saga_parks_it_and_the_orchestrator_runs_on() {
    // The failing release keeps being retried while the test changes the topology.
    let d = Deployment::of(|prefix| {
        topology_without_retries(
            prefix,
            "3s",
            "{max_attempts: 1000, backoff: 500ms, max_backoff: 1s}",
        )
    })
    .await;
    let mut orchestrator = d.orchestrator();
    let _participants = d.participants(&["--fail-when", "ReleaseInventory=-chg"]);
    let publisher = d.publisher().await;
    // The payment fails, so the reservation is released, and the release fails every time.
    let (aborted, retried) = (format!("{}-a-chg", d.prefix), format!("{}-r-chg", d.prefix));
    for id in [&aborted, &retried] {
        place(&publisher, id, &["SKU-1", "FAIL-PAYMENTS"]).await;
    }
    for id in [&aborted, &retried] {
        let s = d
            .wait_state(id, Duration::from_secs(60), |s| {
                s["status"] == "compensating"
                    && s["pending"]["step"] == "reserve-inventory"
                    && s["pending"]["attempt"].as_u64() >= Some(2)
            })
            .await;
        assert_eq!(s["status"], "compensating", "{s}");
        assert_eq!(s["pending"]["kind"], "compensation", "{s}");
        assert!(s["pending"]["attempt"].as_u64() >= Some(2), "{s}");
    }

    // The new topology: reserve-inventory has no side effects and no compensation.
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&d.file).unwrap()).unwrap();
    let steps = yaml["sagas"][0]["steps"].as_sequence_mut().unwrap();
    let reserve = steps
        .iter_mut()
        .find(|s| s["name"] == "reserve-inventory")
        .unwrap()
        .as_mapping_mut()
        .unwrap();
    reserve.insert("side_effects".into(), false.into());
    assert!(reserve.remove("compensation").is_some());
    let changed = std::path::Path::new(&d.file).with_file_name("changed.yaml");
    std::fs::write(&changed, serde_yaml_ng::to_string(&yaml).unwrap()).unwrap();
    let changed = changed.display().to_string();
    let (ok, out, err) = sluice_async(vec![
        "topology".into(),
        "validate".into(),
        "--topology".into(),
        changed.clone(),
    ])
    .await;
    assert!(ok, "the changed topology is valid: {out}{err}");

    let _ = orchestrator.0.kill(); // SIGKILL
    let _ = orchestrator.0.wait();
    let mut d = d;
    d.file = changed;
    orchestrator = d.orchestrator();

    // Both are parked, saying why; nothing was sent for them on the new definition.
    for id in [&aborted, &retried] {
        let s = d
            .wait_state(id, Duration::from_secs(60), |s| s["status"] == "parked")
            .await;
        assert_eq!(s["status"], "parked", "{s}");
        assert_eq!(s["parked"]["reason"], "definition_changed", "{s}");
        assert_eq!(s["parked"]["was"], "compensating", "{s}");
        assert_eq!(s["pending"]["step"], "reserve-inventory", "{s}");
        assert_eq!(s["pending"]["wait"]["for"], "operator", "{s}");
    }
    assert!(
        orchestrator.0.try_wait().unwrap().is_none(),
        "the orchestrator exited on the restored state"
    );

    // A saga started now runs to completion on the new definition.
    let fresh = format!("{}-new", d.prefix);
    place(&publisher, &fresh, &["SKU-1"]).await;
    let mut lifecycle = Lifecycle::new(&d);
    lifecycle
        .until_terminal(std::iter::once(&fresh), Duration::from_secs(60))
        .await;
    assert_eq!(
        Lifecycle::terminal(
            lifecycle
                .by_id()
                .get(&fresh)
                .map(Vec::as_slice)
                .unwrap_or_default()
        ),
        ["SagaCompleted"]
    );

    // Operators see why.
    let (_, out, _) = d.sluice(&["saga", "show", &aborted]).await;
    assert!(
        out.contains("parked       definition_changed: step `reserve-inventory` has no compensation in the current definition"),
        "{out}"
    );
    assert!(
        out.contains("waiting for `sluice saga retry` or `sluice saga abort`"),
        "{out}"
    );
    let (_, out, _) = d.sluice(&["saga", "list", "--state", "parked"]).await;
    assert!(
        out.lines()
            .filter(|l| l.ends_with("definition_changed"))
            .count()
            == 2
            && out.contains("2 instance(s)"),
        "{out}"
    );
    let parked = "sluice_saga_parked{saga=\"order-fulfillment\"} 2";
    assert!(d.wait_metrics(&[parked]).await.contains(parked));

    // Abort ends one compensated, retry the other: the release no longer exists in the
    // definition, so there is nothing left to undo.
    let (ok, out, err) = d
        .sluice(&[
            "saga",
            "abort",
            &aborted,
            "--reason",
            "topology changed",
            "--by",
            "e2e",
        ])
        .await;
    assert!(ok && out.contains("is compensated"), "{out}{err}");
    let (ok, out, err) = d.sluice(&["saga", "retry", &retried, "--by", "e2e"]).await;
    assert!(ok && out.contains("is compensated"), "{out}{err}");
    lifecycle
        .until(Duration::from_secs(30), |m| {
            [&aborted, &retried].iter().all(|id| {
                m.get(*id)
                    .is_some_and(|e| !Lifecycle::terminal(e).is_empty())
            })
        })
        .await;
    let more = read_until(&lifecycle.reader, Duration::from_secs(2), |_| false).await;
    lifecycle.seen.extend(more);
    let events = lifecycle.by_id();
    for id in [&aborted, &retried] {
        assert_eq!(
            Lifecycle::terminal(&events[id]),
            ["SagaCompensated"],
            "{id}"
        );
        assert!(
            events[id].contains(&"SagaFailed".to_string()),
            "{id}: {:?}",
            events[id]
        );
        let s = d.state(id).await;
        assert_eq!(s["status"], "compensated", "{s}");
        assert!(s.get("parked").is_none(), "{s}");
    }
    // No release ran after the change, and none succeeded before it.
    assert!(executed(&d.effects(), &aborted)
        .iter()
        .all(|e| e != "ReleaseInventory:succeeded"));
    let cleared = "sluice_saga_parked{saga=\"order-fulfillment\"} 0";
    assert!(d.wait_metrics(&[cleared]).await.contains(cleared));
    assert!(orchestrator.0.try_wait().unwrap().is_none());
}
