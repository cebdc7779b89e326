//! Exactly-once under faults: N distinct deliveries with redeliveries mixed in, while the
//! normalizer is killed with SIGKILL and restarted several times and the broker itself is
//! killed and restarted once. Afterwards there must be exactly N normalized events (by event
//! id, no gaps, no duplicates) and exactly the expected dead letters.
//!
//! It stops the shared broker, so it is `#[ignore]`d and run by `make test` in the serial
//! step after the other tests (`cargo test --test e2e -- --ignored --test-threads=1`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::normalizer::{
    deploy, fixture, read_until, reader, send_payment, send_raw, spawn_sluice, ChildGuard,
};
use crate::support::{clients, require_stack, stack, StackGuard};

const DISTINCT: usize = 300;
const POISON: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kills and restarts the shared broker; run by `make test` in its serial step"]
async fn exactly_once_survives_normalizer_kills_and_a_broker_restart() {
    require_stack().await;
    let _broker = StackGuard("broker-start");
    let prefix = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let file = deploy(&prefix).await;
    let raw = format!("{prefix}.raw.stripe");
    let instance = format!("chaos-{prefix}");

    // A supervisor that restarts the normalizer whenever it exits or is killed.
    let child: Arc<Mutex<Option<ChildGuard>>> = Arc::new(Mutex::new(None));
    let running = Arc::new(AtomicBool::new(true));
    let start = {
        let (file, instance) = (file.clone(), instance.clone());
        move || {
            spawn_sluice(
                &["normalize", "--topology", &file],
                &[("SLUICE_INSTANCE_ID", &instance)],
            )
        }
    };
    *child.lock().unwrap() = Some(start());
    let supervisor = {
        let (child, running, start) = (child.clone(), running.clone(), start.clone());
        std::thread::spawn(move || {
            let mut restarts = 0;
            while running.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let mut slot = child.lock().unwrap();
                let exited = slot
                    .as_mut()
                    .is_none_or(|c| c.0.try_wait().ok().flatten().is_some());
                if exited && running.load(Ordering::SeqCst) {
                    *slot = Some(start());
                    restarts += 1;
                }
            }
            restarts
        })
    };

    let body = fixture("stripe/payment_intent.succeeded.json");
    let producer = clients().producer("chaos").unwrap();
    let mut kills = 0;
    for i in 0..DISTINCT {
        send_payment(&producer, &raw, &body, i).await;
        if i % 4 == 0 {
            // A provider redelivery of the same event.
            send_payment(&producer, &raw, &body, i).await;
        }
        if i % 30 == 0 && i / 30 < POISON {
            send_raw(
                &producer,
                &raw,
                "stripe",
                "stripe",
                &format!("bad_{i}"),
                None,
                b"<html>not json</html>",
            )
            .await;
        }
        if i % 60 == 30 {
            // SIGKILL mid-stream; the supervisor restarts it.
            if let Some(c) = child.lock().unwrap().as_mut() {
                let _ = c.0.kill();
                kills += 1;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if i == DISTINCT / 2 {
            stack("broker-kill");
            tokio::time::sleep(Duration::from_secs(2)).await;
            stack("broker-start");
        }
    }
    // Redeliveries of already processed events after everything else.
    for i in (0..DISTINCT).step_by(50) {
        send_payment(&producer, &raw, &body, i).await;
    }

    let payments = reader(&format!("{prefix}.events.payments"));
    let mut all = read_until(&payments, Duration::from_secs(240), |g| g.len() >= DISTINCT).await;
    // Anything arriving later would be a duplicate: keep reading a little longer.
    all.extend(read_until(&payments, Duration::from_secs(5), |_| false).await);
    let dead = read_until(
        &reader(&format!("{prefix}.dlq.normalizer")),
        Duration::from_secs(30),
        |g| g.len() >= POISON,
    )
    .await;

    running.store(false, Ordering::SeqCst);
    let restarts = supervisor.join().unwrap();
    drop(child.lock().unwrap().take());

    let mut by_id: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (_, headers, _) in &all {
        *by_id.entry(headers["ce_id"].clone()).or_default() += 1;
    }
    let duplicates: usize = by_id.values().map(|n| n - 1).sum();
    println!(
        "chaos: {} distinct deliveries, {} normalized events, {} distinct event ids, {duplicates} duplicates, {} dead letters, {kills} SIGKILLs, {restarts} restarts, 1 broker restart",
        DISTINCT,
        all.len(),
        by_id.len(),
        dead.len()
    );
    assert_eq!(by_id.len(), DISTINCT, "every delivery normalized");
    assert_eq!(duplicates, 0, "no event twice");
    assert_eq!(
        dead.len(),
        POISON,
        "every poison delivery dead-lettered once"
    );
    assert!(kills >= 3, "the normalizer was killed {kills} times");
}
