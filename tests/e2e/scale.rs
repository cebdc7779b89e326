//! Scaling out: a second `sluice normalize` joins the group mid-stream, the partitions are
//! shared between the two, and nothing is lost or duplicated across the rebalance.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::normalizer::{deploy, fixture, read_until, reader, send_payment, spawn_sluice};
use crate::support::{clients, require_stack};

/// Members of `group` right now, per the group coordinator.
fn members(group: &str) -> usize {
    let c: BaseConsumer = clients().base("e2e-groups").unwrap().create().unwrap();
    c.fetch_group_list(Some(group), Duration::from_secs(10))
        .map(|l| l.groups().iter().map(|g| g.members().len()).sum())
        .unwrap_or(0)
}

async fn wait_members(group: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let g = group.to_string();
        if tokio::task::spawn_blocking(move || members(&g))
            .await
            .unwrap()
            == n
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_normalizer_shares_the_partitions_without_loss_or_duplicates() {
    require_stack().await;
    let prefix = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let file = deploy(&prefix).await;
    let group = format!("{prefix}-normalizer");
    let raw = format!("{prefix}.raw.stripe");
    let body = fixture("stripe/payment_intent.succeeded.json");
    let producer = clients().producer("e2e").unwrap();
    let send = |from: usize, to: usize| {
        let (producer, raw, body) = (producer.clone(), raw.clone(), body.clone());
        async move {
            for i in from..to {
                send_payment(&producer, &raw, &body, i).await;
            }
        }
    };

    let run = ["normalize", "--topology", file.as_str()];
    let _first = spawn_sluice(&run, &[("SLUICE_INSTANCE_ID", "scale-a")]);
    assert!(wait_members(&group, 1).await, "the first normalizer joins");
    send(0, 200).await;
    let _second = spawn_sluice(&run, &[("SLUICE_INSTANCE_ID", "scale-b")]);
    send(200, 300).await;
    assert!(
        wait_members(&group, 2).await,
        "the second normalizer joins the same group"
    );
    send(300, 400).await;

    let payments = reader(&format!("{prefix}.events.payments"));
    let mut got = read_until(&payments, Duration::from_secs(90), |g| g.len() >= 400).await;
    got.extend(read_until(&payments, Duration::from_secs(3), |_| false).await);
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for (key, _, _) in &got {
        *by_key.entry(key.clone()).or_default() += 1;
    }
    assert_eq!(
        by_key.len(),
        400,
        "every delivery normalized once the group has two members"
    );
    assert!(
        by_key.values().all(|n| *n == 1),
        "no duplicates across the rebalance"
    );
}
