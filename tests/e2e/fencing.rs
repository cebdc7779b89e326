//! A role process fences its exactly-once predecessor before anything else: a member killed
//! mid-transaction leaves that transaction open, and every `read_committed` reader of the
//! partitions it wrote stops there until it is aborted (found by the fault suite's registry
//! outage, where the successor waited for the registry first).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_runtime::kafka::create_topic_if_missing;
use sluice_stream::fence_predecessor;

use crate::normalizer::{read_until, reader};
use crate::support::{clients, require_stack, unique_topic};

async fn send(producer: &FutureProducer, topic: &str, key: &str) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(key),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_the_predecessor_releases_readers_held_by_its_open_transaction() {
    require_stack().await;
    let clients = clients();
    let topic = unique_topic("fencing");
    create_topic_if_missing(&clients.admin().unwrap(), &topic, 1)
        .await
        .unwrap();
    let (group, instance) = (format!("{topic}-group"), "member-1");

    // The predecessor, as the consumer loop builds it, with a transaction left open: from
    // the broker's side the same as a process killed before it committed.
    let predecessor: FutureProducer = clients
        .transactional_producer_config("consumer", &format!("{group}-{instance}"))
        .unwrap()
        .set("transaction.timeout.ms", "60000")
        .create()
        .unwrap();
    let p = predecessor.clone();
    tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    predecessor.begin_transaction().unwrap();
    send(&predecessor, &topic, "uncommitted").await;
    // Someone else's committed record, after the open transaction's first offset.
    send(&clients.producer("e2e").unwrap(), &topic, "after").await;

    let r = reader(&topic);
    let held = read_until(&r, Duration::from_secs(3), |_| false).await;
    assert!(
        held.is_empty(),
        "a read_committed reader stops at the open transaction: {held:?}"
    );

    fence_predecessor(&clients, &group, instance).await.unwrap();
    let seen = read_until(&r, Duration::from_secs(15), |g| !g.is_empty()).await;
    let keys: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        keys,
        ["after"],
        "the open transaction was aborted and the reader moved past it"
    );
}
