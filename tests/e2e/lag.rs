//! `sluice lag` against the real broker: its offsets agree with Kafka's own
//! `kafka-consumer-groups --describe` for the same moment, the Burrow-style statuses come out
//! of real groups (caught up, lagging, stalled, stopped, rewound, broken), and the exporter
//! serves the metrics dashboards use.
//!
//! Groups are driven step by step (produce, commit, sample) rather than by sleeping, so the
//! outcomes do not depend on how fast the machine is; windows are kept short with flags.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sluice_ops::lag::history::Estimate;
use sluice_ops::lag::{GroupFilter, LagMonitor, LagReport, Status};
use sluice_runtime::kafka::create_topic_if_missing;

use crate::gateway::{free_port, unique_prefix};
use crate::normalizer::{spawn_sluice, ChildGuard};
use crate::support::{clients, require_stack, sluice_async};

// ---------------------------------------------------------------------------------------------
// Harness

async fn create_topic(name: &str, partitions: i32) {
    create_topic_if_missing(&clients().admin().unwrap(), name, partitions)
        .await
        .unwrap();
}

/// Writes `n` records to one partition and waits until the broker acknowledged them all.
async fn produce(producer: &FutureProducer, topic: &str, partition: i32, n: usize) {
    let sends = (0..n).map(|i| {
        let payload = format!("r{i}");
        async move {
            producer
                .send(
                    FutureRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    join_all(sends).await;
}

/// A client of `group` that never subscribes: it commits like a consumer using assign().
fn committer(group: &str) -> BaseConsumer {
    clients()
        .consumer_config("e2e", group)
        .unwrap()
        .create()
        .unwrap()
}

fn commit_with(consumer: &BaseConsumer, topic: &str, offsets: &[(i32, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

/// Commits `offsets` for `group` from a short-lived client; the group has no members after.
fn commit(group: &str, topic: &str, offsets: &[(i32, i64)]) {
    commit_with(&committer(group), topic, offsets);
}

/// A live member of `group` subscribed to `topic`, returned once it owns partitions.
fn member(group: &str, topic: &str) -> BaseConsumer {
    let c = committer(group);
    c.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "{group} never got an assignment");
        // Joining happens inside poll; the records themselves are not wanted.
        let _ = c.poll(Duration::from_millis(200));
    }
    c
}

/// The start offsets of the transactions Kafka's own `kafka-transactions describe-producers`
/// sees open on `topic`/`partition`.
fn kafka_open_transactions(topic: &str, partition: i32) -> Vec<i64> {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dev/stack"))
        .arg("kafka-tool")
        .arg("org.apache.kafka.tools.TransactionsCommand")
        .args([
            "--bootstrap-server",
            &crate::support::kafka().bootstrap_servers,
            "describe-producers",
            "--topic",
            topic,
            "--partition",
            &partition.to_string(),
        ])
        .output()
        .expect("run dev/stack kafka-tool");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka-transactions failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The tool's own log lines come first.
    let mut lines = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .skip_while(|cells| cells.first() != Some(&"ProducerId"));
    let header = lines.next().unwrap_or_default();
    let column = header
        .iter()
        .position(|c| *c == "CurrentTransactionStartOffset")
        .unwrap_or_else(|| panic!("no CurrentTransactionStartOffset column in:\n{stdout}"));
    lines
        .filter_map(|cells| cells.get(column).and_then(|c| c.parse().ok()))
        .filter(|offset: &i64| *offset >= 0)
        .collect()
}

/// A transactional producer `id` with a transaction begun.
fn begun_transaction(id: &str) -> FutureProducer {
    let txn: FutureProducer = clients()
        .transactional_producer_config("e2e", id)
        .unwrap()
        .create()
        .unwrap();
    txn.init_transactions(Duration::from_secs(30)).unwrap();
    txn.begin_transaction().unwrap();
    txn
}

/// A transactional producer with a transaction open on `topic`/0 holding one record; the
/// transaction stays open until the producer is dropped and the broker times it out.
async fn open_transaction(topic: &str, id: &str) -> FutureProducer {
    let txn = begun_transaction(id);
    txn.send(
        FutureRecord::to(topic)
            .partition(0)
            .key("k")
            .payload("open"),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
    txn
}

/// A fresh topic whose only record sits in an open transaction, with a group committed
/// in front of it: what the lag exporter's open-transaction gauge shows.
pub(crate) async fn hold_a_group_behind_an_open_transaction(prefix: &str) -> FutureProducer {
    let topic = format!("{prefix}.held");
    create_topic(&topic, 1).await;
    let txn = open_transaction(&topic, &format!("{prefix}-txn")).await;
    commit(&format!("{prefix}-held"), &topic, &[(0, 0)]);
    txn
}

/// `sluice lag --json` with the given extra arguments, parsed.
async fn sluice_lag(args: &[&str]) -> Value {
    let mut a = vec!["lag".to_string(), "--json".to_string()];
    a.extend(args.iter().map(|s| s.to_string()));
    let (ok, out, err) = sluice_async(a).await;
    assert!(ok, "sluice lag failed:\n{out}\n{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// One partition row of Kafka's `--describe`: (current offset, log-end offset, lag).
type ToolRow = (Option<i64>, Option<i64>, Option<i64>);

/// Kafka's own `ConsumerGroupCommand --describe` for `groups`, from the tools the dev stack
/// ships: group → (topic, partition) → row. `-` cells are `None`.
fn kafka_describe(groups: &[String]) -> BTreeMap<String, BTreeMap<(String, i32), ToolRow>> {
    let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dev/stack"));
    cmd.arg("kafka-tool")
        .arg("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand")
        .args([
            "--bootstrap-server",
            &crate::support::kafka().bootstrap_servers,
        ])
        .arg("--describe");
    for g in groups {
        cmd.args(["--group", g]);
    }
    let out = cmd.output().expect("run dev/stack kafka-tool");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka-consumer-groups failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: BTreeMap<String, BTreeMap<(String, i32), ToolRow>> = BTreeMap::new();
    let mut columns: Vec<String> = Vec::new();
    for line in stdout.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.first() == Some(&"GROUP") {
            columns = cells.iter().map(|c| c.to_string()).collect();
            continue;
        }
        // Log lines and other groups' rows are not ours.
        let Some(group) = cells.first().filter(|g| groups.iter().any(|x| x == *g)) else {
            continue;
        };
        let cell = |name: &str| {
            let i = columns
                .iter()
                .position(|c| c == name)
                .unwrap_or_else(|| panic!("no {name} column in {columns:?}:\n{stdout}"));
            cells[i]
        };
        let num = |name: &str| cell(name).parse::<i64>().ok();
        rows.entry(group.to_string()).or_default().insert(
            (
                cell("TOPIC").to_string(),
                cell("PARTITION").parse().unwrap(),
            ),
            (num("CURRENT-OFFSET"), num("LOG-END-OFFSET"), num("LAG")),
        );
    }
    rows
}

fn group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {report}"))
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Caught up, lagging, stalled (a live member that stopped advancing) and stopped (no
/// members) groups: for the same moment, `sluice lag --json` and Kafka's tool agree on the
/// committed offset, log end and lag of every partition, and the one-shot window already
/// tells the stalled and stopped groups apart.
#[tokio::test]
async fn lag_agrees_with_kafka_consumer_groups_describe() {
    require_stack().await;
    let prefix = unique_prefix("lag");
    let topic = format!("{prefix}.orders");
    create_topic(&topic, 3).await;
    let producer = clients().producer("e2e").unwrap();
    for (p, n) in [(0, 10), (1, 6), (2, 4)] {
        produce(&producer, &topic, p, n).await;
    }
    let name = |s: &str| format!("{prefix}-{s}");
    let (caught_up, lagging, stalled, stopped) = (
        name("caught-up"),
        name("lagging"),
        name("stalled"),
        name("stopped"),
    );
    commit(&caught_up, &topic, &[(0, 10), (1, 6), (2, 4)]);
    commit(&lagging, &topic, &[(0, 7), (1, 2)]);
    commit(&stopped, &topic, &[(0, 2), (1, 2), (2, 0)]);
    let stalled_member = member(&stalled, &topic);
    commit_with(&stalled_member, &topic, &[(0, 1), (1, 1), (2, 1)]);

    // Nothing moves from here on: both tools look at the same moment.
    let filter = format!("{prefix}-*");
    let ours = sluice_lag(&["--group", &filter, "--window", "3", "--interval", "200ms"]).await;
    let groups = [
        caught_up.clone(),
        lagging.clone(),
        stalled.clone(),
        stopped.clone(),
    ];
    let theirs = tokio::task::spawn_blocking({
        let groups = groups.to_vec();
        move || kafka_describe(&groups)
    })
    .await
    .unwrap();

    assert_eq!(ours["groups"].as_array().unwrap().len(), 4, "{ours}");
    for g in &groups {
        let mine = group(&ours, g);
        let mut mine_rows = BTreeMap::new();
        for p in mine["partitions"].as_array().unwrap() {
            mine_rows.insert(
                (
                    p["topic"].as_str().unwrap().to_string(),
                    p["partition"].as_i64().unwrap() as i32,
                ),
                (
                    p["committed_offset"].as_i64(),
                    p["log_end_offset"].as_i64(),
                    p["lag"].as_i64(),
                ),
            );
        }
        // Kafka's tool also lists partitions a live member owns without a commit ("-");
        // sluice lists committed partitions only.
        let their_rows: BTreeMap<_, _> = theirs
            .get(g)
            .unwrap_or_else(|| panic!("kafka-consumer-groups printed nothing for {g}"))
            .iter()
            .filter(|(_, row)| row.0.is_some())
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(mine_rows, their_rows, "group {g}");
    }
    // The expected numbers, so agreement is not agreement on nothing.
    let lagging_rows = &theirs[&lagging];
    assert_eq!(
        lagging_rows[&(topic.clone(), 0)],
        (Some(7), Some(10), Some(3))
    );
    assert_eq!(
        lagging_rows[&(topic.clone(), 1)],
        (Some(2), Some(6), Some(4))
    );

    let status = |g: &str| group(&ours, g)["status"].as_str().unwrap().to_string();
    assert_eq!(status(&caught_up), "OK");
    assert_eq!(status(&stalled), "STALL");
    assert_eq!(status(&stopped), "STOP");
    // No commits and no members across the window: lagging and idle is a stop too.
    assert_eq!(status(&lagging), "STOP");
    let s = group(&ours, &stalled);
    assert_eq!(s["members"], 1);
    assert!(
        s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["owner"] == "sluice-e2e"),
        "{s}"
    );
    let c = group(&ours, &caught_up);
    assert!(
        c["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["lag_seconds"] == 0.0 && p["lag_seconds_estimate"] == "exact"),
        "{c}"
    );
    drop(stalled_member);
}

/// Every rule on real groups, one topic each, sampled three times with changes in between:
/// the window is incomplete (and everything OK) until the third sample, then each group
/// shows its own status.
#[tokio::test]
async fn statuses_follow_real_groups_over_the_window() {
    require_stack().await;
    let prefix = unique_prefix("lagst");
    let kinds = [
        "caught-up",
        "falling",
        "warn",
        "stall",
        "stop",
        "rewind",
        "err",
    ];
    let topic = |k: &str| format!("{prefix}.{k}");
    let group = |k: &str| format!("{prefix}-{k}");
    let producer = clients().producer("e2e").unwrap();
    for k in kinds {
        create_topic(&topic(k), 1).await;
        produce(&producer, &topic(k), 0, 10).await;
    }
    let stall_member = member(&group("stall"), &topic("stall"));

    // Step 1.
    commit(&group("caught-up"), &topic("caught-up"), &[(0, 10)]);
    commit(&group("falling"), &topic("falling"), &[(0, 2)]);
    commit(&group("warn"), &topic("warn"), &[(0, 2)]);
    commit_with(&stall_member, &topic("stall"), &[(0, 3)]);
    commit(&group("stop"), &topic("stop"), &[(0, 4)]);
    commit(&group("rewind"), &topic("rewind"), &[(0, 8)]);
    commit(&group("err"), &topic("err"), &[(0, 5)]);

    let mut monitor =
        LagMonitor::new(clients(), GroupFilter::new([format!("{prefix}-*")]), 3).unwrap();
    let first = monitor.sample().await.unwrap();
    assert_eq!(first.groups.len(), kinds.len());
    assert!(first
        .groups
        .iter()
        .all(|g| g.status == Status::Ok && !g.complete));

    // Step 2: the falling group gains, the warn group moves but the producer moves faster,
    // the rewind group goes back.
    commit(&group("falling"), &topic("falling"), &[(0, 6)]);
    produce(&producer, &topic("warn"), 0, 5).await;
    commit(&group("warn"), &topic("warn"), &[(0, 4)]);
    produce(&producer, &topic("stall"), 0, 2).await;
    commit(&group("rewind"), &topic("rewind"), &[(0, 3)]);
    let second = monitor.sample().await.unwrap();
    let status_of = |r: &LagReport, k: &str| {
        r.groups
            .iter()
            .find(|g| g.group == group(k))
            .map(|g| (g.status, g.complete))
            .unwrap()
    };
    assert_eq!(status_of(&second, "rewind"), (Status::Rewind, false));
    for k in ["stop", "stall", "warn", "falling"] {
        assert_eq!(status_of(&second, k), (Status::Ok, false), "{k}");
    }

    // Step 3: one more step of each trend; the err group's offset ends up beyond the log end.
    commit(&group("falling"), &topic("falling"), &[(0, 8)]);
    produce(&producer, &topic("warn"), 0, 5).await;
    commit(&group("warn"), &topic("warn"), &[(0, 6)]);
    commit(&group("err"), &topic("err"), &[(0, 25)]);
    let third = monitor.sample().await.unwrap();
    let expected = [
        ("caught-up", Status::Ok),
        ("falling", Status::Ok),
        ("warn", Status::Warn),
        ("stall", Status::Stall),
        ("stop", Status::Stop),
        ("rewind", Status::Rewind),
        ("err", Status::Err),
    ];
    for (k, s) in expected {
        assert_eq!(status_of(&third, k), (s, true), "{k}: {third:#?}");
    }

    let part = |k: &str| {
        third
            .groups
            .iter()
            .find(|g| g.group == group(k))
            .unwrap()
            .partitions[0]
            .clone()
    };
    // warn: log end 10 → 15 → 20 and committed 2 → 4 → 6; lag 8 → 11 → 14.
    let w = part("warn");
    assert_eq!(
        (w.committed_offset, w.log_end_offset, w.lag),
        (6, Some(20), Some(14))
    );
    // Offset 6 is older than every log end seen (10, 15, 20): extrapolated from their rate.
    assert_eq!(w.lag_seconds_estimate, Some(Estimate::Extrapolated));
    let span = (third.taken_at_ms - first.taken_at_ms) as f64 / 1000.0;
    assert!(w.lag_seconds.unwrap() > span, "{w:?} span {span}");
    // stop: the log end never moved while watched, so the time lag is a lower bound.
    let s = part("stop");
    assert_eq!(s.lag_seconds_estimate, Some(Estimate::LowerBound));
    assert_eq!(s.lag_seconds, Some(span));
    assert_eq!(
        (part("err").lag, part("err").lag_seconds),
        (Some(-15), None)
    );
    assert_eq!(part("stall").owner.as_deref(), Some("sluice-e2e"));
    drop(stall_member);
}

/// `sluice lag --export` serves the dashboards' metric names with the real values, and
/// `--watch --json` prints one report per pass.
#[tokio::test]
async fn exporter_serves_lag_metrics_and_watch_refreshes() {
    require_stack().await;
    let prefix = unique_prefix("lagex");
    let topic = format!("{prefix}.events");
    create_topic(&topic, 2).await;
    let producer = clients().producer("e2e").unwrap();
    produce(&producer, &topic, 0, 7).await;
    produce(&producer, &topic, 1, 3).await;
    let g = format!("{prefix}-reader");
    commit(&g, &topic, &[(0, 5), (1, 3)]);

    let port = free_port();
    let filter = format!("{prefix}-*");
    let _exporter: ChildGuard = spawn_sluice(
        &[
            "lag",
            "--export",
            "--group",
            &filter,
            "--interval",
            "200ms",
            "--window",
            "2",
        ],
        &[("SLUICE_ADMIN__LISTEN", &format!("127.0.0.1:{port}"))],
    );
    let expected = [
        format!(
            r#"kafka_consumergroup_lag{{consumergroup="{g}",partition="0",topic="{topic}"}} 2"#
        ),
        format!(
            r#"kafka_consumergroup_lag{{consumergroup="{g}",partition="1",topic="{topic}"}} 0"#
        ),
        format!(r#"kafka_consumergroup_lag_sum{{consumergroup="{g}",topic="{topic}"}} 2"#),
        format!(
            r#"kafka_consumergroup_current_offset{{consumergroup="{g}",partition="0",topic="{topic}"}} 5"#
        ),
        format!(r#"kafka_topic_partition_current_offset{{partition="0",topic="{topic}"}} 7"#),
        format!(r#"kafka_topic_partition_oldest_offset{{partition="1",topic="{topic}"}} 0"#),
        format!(r#"kafka_consumergroup_members{{consumergroup="{g}"}} 0"#),
        format!(
            r#"kafka_consumergroup_lag_seconds{{consumergroup="{g}",partition="1",topic="{topic}"}} 0"#
        ),
        format!(r#"sluice_lag_group_status{{consumergroup="{g}",status="STOP"}} 1"#),
        format!(r#"sluice_lag_group_status{{consumergroup="{g}",status="OK"}} 0"#),
    ];
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut body = String::new();
    while Instant::now() < deadline {
        body = match crate::support::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if expected.iter().all(|l| body.contains(l.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for line in &expected {
        assert!(body.contains(line.as_str()), "missing {line}\n{body}");
    }
    assert!(
        body.contains(&format!(
            r#"kafka_consumergroup_lag_seconds{{consumergroup="{g}",partition="0",topic="{topic}"}}"#
        )),
        "{body}"
    );
    let ready = crate::support::get(format!("http://127.0.0.1:{port}/health/ready"))
        .await
        .unwrap();
    assert!(ready.status().is_success());

    // --watch --json: a line per pass, each a full report.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "lag",
            "--watch",
            "--json",
            "--group",
            &filter,
            "--interval",
            "100ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let _guard = ChildGuard(watch);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok).take(3) {
            let _ = tx.send(line);
        }
    });
    let mut samples = Vec::new();
    for _ in 0..3 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a report per --watch pass");
        let report: Value = serde_json::from_str(&line).unwrap();
        samples.push(
            report["groups"][0]["partitions"][0]["samples"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(samples, vec![1, 2, 3], "the window fills pass by pass");
}

/// An exactly-once consumer that has read everything commits the offset before the last
/// commit marker: the lag column shows 1, as Kafka's tool does, but the group is OK, not
/// STALL. Once a readable record arrives and the offset stays, it is a real STALL.
#[tokio::test]
async fn an_idle_exactly_once_group_is_ok_though_a_commit_marker_remains() {
    require_stack().await;
    let prefix = unique_prefix("lagtx");
    let (topic, group) = (format!("{prefix}.in"), format!("{prefix}-eos"));
    create_topic(&topic, 1).await;
    let txn = begun_transaction(&format!("{prefix}-txn"));
    for i in 0..3 {
        txn.send(
            FutureRecord::to(&topic)
                .partition(0)
                .key("k")
                .payload(&format!("r{i}")),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    txn.commit_transaction(Duration::from_secs(30)).unwrap();

    let owner = member(&group, &topic);
    let mut monitor = LagMonitor::new(clients(), GroupFilter::new([group.clone()]), 3).unwrap();
    // The log is asked from the second pass on (an offset must stay put first), within a
    // time budget per pass; a few passes leave room for a slow machine.
    let mut report = None;
    for _ in 0..6 {
        commit_with(&owner, &topic, &[(0, 3)]);
        report = Some(monitor.sample().await.unwrap());
    }
    let report = report.unwrap();
    let g = &report.groups[0];
    assert_eq!(
        (g.partitions[0].lag, g.partitions[0].log_end_offset),
        (Some(1), Some(4)),
        "the marker counts in the lag, as in kafka-consumer-groups"
    );
    assert_eq!((g.status, g.complete), (Status::Ok, true), "{g:#?}");

    // A readable record behind the same offset: now the group really is stuck.
    produce(&clients().producer("e2e").unwrap(), &topic, 0, 1).await;
    let mut report = None;
    for _ in 0..6 {
        commit_with(&owner, &topic, &[(0, 3)]);
        report = Some(monitor.sample().await.unwrap());
    }
    let g = &report.unwrap().groups[0];
    assert_eq!(g.partitions[0].lag, Some(2));
    assert_eq!(g.status, Status::Stall, "{g:#?}");
}

/// A transaction left open holds back every read_committed reader of its partition: the
/// group has read all it may, its lag does not fall, and `sluice lag` says why (the stable
/// offset, the note, the exporter's gauge) until the transaction ends.
#[tokio::test]
async fn a_group_held_back_by_an_open_transaction_is_told_apart() {
    require_stack().await;
    let prefix = unique_prefix("lagopen");
    let (topic, reader) = (format!("{prefix}.in"), format!("{prefix}-reader"));
    create_topic(&topic, 1).await;
    let plain = clients().producer("e2e").unwrap();
    produce(&plain, &topic, 0, 2).await;
    let txn = open_transaction(&topic, &format!("{prefix}-txn")).await;
    // Records after the open one: readable only once the transaction ends.
    produce(&plain, &topic, 0, 3).await;
    commit(&reader, &topic, &[(0, 2)]);

    assert_eq!(
        kafka_open_transactions(&topic, 0),
        vec![2],
        "Kafka's tool sees the transaction open from offset 2"
    );
    let report = sluice_lag(&["--group", &reader, "--window", "3", "--interval", "1s"]).await;
    let p = &group(&report, &reader)["partitions"][0];
    assert_eq!(p["committed_offset"], 2);
    assert_eq!(p["log_end_offset"], 6);
    assert_eq!(p["stable_offset"], 2, "{p}");
    assert_eq!(p["waits_on_transaction"], true, "{p}");
    let t = &report["topics"][0];
    assert_eq!(t["stable_offset"], 2);
    let seen = t["open_transaction_seconds"]
        .as_f64()
        .expect("an open transaction");
    assert!(
        (1.0..60.0).contains(&seen),
        "seen open for {seen} s over a 2 s window"
    );

    let (ok, text, err) = sluice_async(vec![
        "lag".into(),
        "--group".into(),
        reader.clone(),
        "--window".into(),
        "2".into(),
        "--interval".into(),
        "1s".into(),
    ])
    .await;
    assert!(ok, "{text}\n{err}");
    assert!(
        text.contains(&format!(
            "{topic}/0: read up to offset 2; the rest waits behind a transaction still open there"
        )),
        "{text}"
    );

    txn.commit_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(kafka_open_transactions(&topic, 0), Vec::<i64>::new());
    let report = sluice_lag(&["--group", &reader, "--window", "2", "--interval", "1s"]).await;
    let p = &group(&report, &reader)["partitions"][0];
    assert_eq!(p["stable_offset"], p["log_end_offset"], "{p}");
    assert_eq!(p["waits_on_transaction"], false, "{p}");
    assert!(report["topics"][0]["open_transaction_seconds"].is_null());
}
