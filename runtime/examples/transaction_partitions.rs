//! What a Kafka transaction costs as it spans more partitions, and when several run at once.
//!
//! The saga loops commit one transaction per batch over every partition the batch wrote
//! (state, commands, lifecycle events, outcomes), so their latency follows that count. This
//! measures, against the broker at `SLUICE_KAFKA__BOOTSTRAP_SERVERS` (default the local
//! stack's), with four fresh topics of six partitions and one small record per partition:
//!
//! - one transaction over all 24 partitions (a batch touching every input partition);
//! - one transaction over 4 (one partition per topic: a batch of one partition group);
//! - six producers at once, each a transaction over its own 4 (a loop split into partition
//!   groups with producers of their own).
//!
//! ```sh
//! cargo run --release -p sluice-runtime --example transaction_partitions
//! ```

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const TOPICS: usize = 4;
const PARTITIONS: i32 = 6;
const TRANSACTIONS: usize = 300;

type Targets = Vec<(String, i32)>;

fn bootstrap() -> String {
    std::env::var("SLUICE_KAFKA__BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn producer(transactional_id: &str) -> BaseProducer {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", transactional_id)
        .set("linger.ms", "0")
        .set("compression.type", "zstd")
        .create()
        .expect("producer");
    p.init_transactions(Duration::from_secs(30))
        .expect("init_transactions");
    p
}

/// One transaction writing one record to each of `targets`, acknowledged, then committed
/// (after the delivery reports are taken, as sluice's loops do, so the commit's flush does
/// not wait out a poll).
fn transaction(p: &BaseProducer, targets: &Targets) -> Duration {
    let started = Instant::now();
    p.begin_transaction().expect("begin");
    for (topic, partition) in targets {
        let record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(*partition)
            .key(b"k".as_slice())
            .payload(b"x".as_slice());
        p.send(record).map_err(|(e, _)| e).expect("send");
    }
    while p.in_flight_count() > 0 {
        p.poll(Duration::from_millis(1));
    }
    p.commit_transaction(Duration::from_secs(30))
        .expect("commit");
    started.elapsed()
}

/// `TRANSACTIONS` transactions after a first one (which registers the producer's partitions).
fn run(p: &BaseProducer, targets: &Targets) -> Vec<Duration> {
    transaction(p, targets);
    (0..TRANSACTIONS).map(|_| transaction(p, targets)).collect()
}

fn p50_p99(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.1} ms, p99 {:.1} ms",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 99 / 100])
    )
}

#[tokio::main]
async fn main() {
    let run_id = std::process::id();
    let topics: Vec<String> = (0..TOPICS)
        .map(|i| format!("sluice-example-txn-{run_id}-{i}"))
        .collect();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let group = |g: i32| -> Targets { topics.iter().map(|t| (t.clone(), g)).collect() };
    let all: Targets = (0..PARTITIONS).flat_map(group).collect();
    let one = producer(&format!("sluice-example-txn-{run_id}-one"));
    println!(
        "one transaction over {} partitions: {}",
        all.len(),
        p50_p99(run(&one, &all))
    );
    println!(
        "one transaction over {TOPICS} partitions: {}",
        p50_p99(run(&one, &group(0)))
    );
    drop(one);
    let parallel: Vec<_> = (0..PARTITIONS)
        .map(|g| {
            let (targets, id) = (group(g), format!("sluice-example-txn-{run_id}-group-{g}"));
            std::thread::spawn(move || run(&producer(&id), &targets))
        })
        .collect();
    let each: Vec<Duration> = parallel
        .into_iter()
        .flat_map(|h| h.join().expect("group"))
        .collect();
    println!(
        "{PARTITIONS} producers at once, each a transaction over {TOPICS} partitions: {}",
        p50_p99(each)
    );
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
}
