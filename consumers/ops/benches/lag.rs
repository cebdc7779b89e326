//! One lag evaluation at scale against the local broker: 50 consumer groups, each with
//! committed offsets on its own 40-partition topic (2,000 group partitions), collected and
//! evaluated as `sluice lag` and the exporter do it. Target: under 2 s, bounded memory.
//!
//! `cargo bench -p sluice-ops --bench lag` (needs `dev/stack up`)
//!
//! Set-up creates `sluice-bench-lag.tNN` topics and `sluice-bench-lag-gNN` groups and deletes
//! them at the end (`SLUICE_BENCH_LAG_KEEP=1` keeps them for the next run). Besides
//! criterion's timings the bench prints wall times of a run of consecutive evaluations through
//! one tracker, the process RSS along that run (memory must level off, not grow with the number
//! of evaluations), and the peak RSS during the first evaluation. The collection covers every
//! partition of the cluster, so other topics on the broker add to the figures.

use std::time::{Duration, Instant};

use criterion::Criterion;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_ops::lag::{Collector, GroupFilter, LagReport, Tracker};
use sluice_runtime::kafka::{create_topic_if_missing, KafkaClients};
use sluice_runtime::SluiceConfig;

const GROUPS: usize = 50;
const PARTITIONS: i32 = 40;
const RECORDS_PER_PARTITION: i64 = 20;
/// Consecutive evaluations through one tracker before criterion's runs.
const EVALUATIONS: usize = 60;
const PREFIX: &str = "sluice-bench-lag";

fn topic(i: usize) -> String {
    format!("{PREFIX}.t{i:02}")
}

fn group(i: usize) -> String {
    format!("{PREFIX}-g{i:02}")
}

/// Committed offset of group `i` on partition `p`: spread over 0..=20, some caught up.
fn committed(i: usize, p: i32) -> i64 {
    (i64::from(p) * 7 + i as i64) % (RECORDS_PER_PARTITION + 1)
}

fn setup(clients: &KafkaClients, rt: &tokio::runtime::Runtime) {
    let admin = clients.admin().expect("admin client");
    let producer: ThreadedProducer<DefaultProducerContext> = clients
        .producer_config("bench")
        .unwrap()
        .create()
        .expect("producer");
    let started = Instant::now();
    for i in 0..GROUPS {
        let created = rt
            .block_on(create_topic_if_missing(&admin, &topic(i), PARTITIONS))
            .expect("create topic (is the stack up? `dev/stack up`)");
        if created {
            let name = topic(i);
            for p in 0..PARTITIONS {
                for r in 0..RECORDS_PER_PARTITION {
                    let payload = format!("record {r}");
                    let mut record = BaseRecord::<(), _>::to(&name)
                        .partition(p)
                        .payload(&payload);
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                record = back;
                                producer.poll(Duration::from_millis(10));
                            }
                        }
                    }
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    for i in 0..GROUPS {
        let consumer: BaseConsumer = clients
            .consumer_config("bench", &group(i))
            .unwrap()
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic(i), p, Offset::Offset(committed(i, p)))
                .unwrap();
        }
        consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    }
    eprintln!(
        "set-up: {GROUPS} groups × {PARTITIONS} partitions ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn cleanup(clients: &KafkaClients, rt: &tokio::runtime::Runtime) {
    let admin = clients.admin().expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let groups: Vec<String> = (0..GROUPS).map(group).collect();
    let topics: Vec<String> = (0..GROUPS).map(topic).collect();
    let g: Vec<&str> = groups.iter().map(String::as_str).collect();
    let t: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = rt.block_on(admin.delete_groups(&g, &opts));
    let _ = rt.block_on(admin.delete_topics(&t, &opts));
    eprintln!("clean-up: deleted the bench topics and groups (SLUICE_BENCH_LAG_KEEP=1 keeps them)");
}

/// A field of /proc/self/status in MiB (Linux).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The first report sees every group and partition with the lag the set-up committed.
fn check(report: &LagReport) {
    let partitions: usize = report.groups.iter().map(|g| g.partitions.len()).sum();
    assert_eq!(report.groups.len(), GROUPS, "groups seen");
    assert_eq!(
        partitions,
        GROUPS * PARTITIONS as usize,
        "group partitions seen"
    );
    let lag: i64 = report
        .groups
        .iter()
        .flat_map(|g| &g.partitions)
        .filter_map(|p| p.lag)
        .sum();
    let expected: i64 = (0..GROUPS)
        .flat_map(|i| (0..PARTITIONS).map(move |p| RECORDS_PER_PARTITION - committed(i, p)))
        .sum();
    assert_eq!(lag, expected, "total lag");
}

/// Resets the peak-RSS mark so VmHWM measures from now on (Linux 4.0+).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let config = SluiceConfig::load(None).expect("config");
    let clients = KafkaClients::new(config.kafka);
    let rt = tokio::runtime::Runtime::new().unwrap();
    setup(&clients, &rt);

    let probe: BaseConsumer = clients.base("bench").unwrap().create().unwrap();
    let metadata = probe
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let cluster_partitions: usize = metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
        .map(|t| t.partitions().len())
        .sum();
    eprintln!(
        "the cluster has {cluster_partitions} partitions in {} topics: each group's OffsetFetch \
         asks for all of them",
        metadata.topics().len()
    );

    let filter = GroupFilter::new([format!("{PREFIX}-g*")]);
    let collector = Collector::new(clients.clone(), filter).expect("collector");
    let mut tracker = Tracker::new(10);

    // A run of consecutive evaluations through one tracker, as the exporter does.
    let rss_before = status_mib("VmRSS:");
    let mut times = Vec::new();
    let mut rss = Vec::new();
    let mut peak_first = 0.0;
    for n in 1..=EVALUATIONS {
        if n == 1 {
            reset_peak();
        }
        let t = Instant::now();
        let report = tracker.observe(&collector.collect().expect("collect"));
        times.push(t.elapsed().as_secs_f64());
        if n == 1 {
            peak_first = status_mib("VmHWM:");
            check(&report);
        }
        if [1, 10, EVALUATIONS / 2, EVALUATIONS].contains(&n) {
            rss.push(format!("{:.1} MiB after {n}", status_mib("VmRSS:")));
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!(
        "{EVALUATIONS} evaluations in a row of {} partitions across {GROUPS} groups (collect + \
         evaluate): min {:.0} ms, median {:.0} ms, max {:.0} ms",
        GROUPS * PARTITIONS as usize,
        sorted[0] * 1e3,
        sorted[sorted.len() / 2] * 1e3,
        sorted[sorted.len() - 1] * 1e3,
    );
    eprintln!(
        "RSS: {rss_before:.1} MiB before, peak {peak_first:.1} MiB during the first evaluation; {}; \
         the tracker holds {:?} (windows, histories)",
        rss.join(", "),
        tracker.held()
    );

    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("lag");
        g.bench_function("evaluate_2000_partitions_50_groups", |b| {
            b.iter(|| tracker.observe(&collector.collect().unwrap()))
        });
        for concurrency in [1, 4, 16] {
            let collector =
                Collector::new(clients.clone(), GroupFilter::new([format!("{PREFIX}-g*")]))
                    .unwrap()
                    .with_concurrency(concurrency);
            let mut tracker = Tracker::new(10);
            g.bench_function(format!("evaluate_concurrency_{concurrency}"), |b| {
                b.iter(|| tracker.observe(&collector.collect().unwrap()))
            });
        }
        g.finish();
    }
    eprintln!("RSS after criterion: {:.1} MiB", status_mib("VmRSS:"));
    drop(collector);
    if std::env::var_os("SLUICE_BENCH_LAG_KEEP").is_none() {
        cleanup(&clients, &rt);
    }
    c.final_summary();
}
