use std::time::Duration;

use sluice_stream::state::MemoryLog;
use sluice_stream::RetryTier;

use super::*;
use crate::dispatch::settle::Settlement;

const TASKS: &str = "sluice.deliveries";
const HELD: &str = "sluice.state.held-deliveries";

fn tiers() -> Tiers {
    Tiers::new(
        [("t1", 1), ("t5", 5)]
            .iter()
            .map(|(t, s)| RetryTier {
                topic: t.to_string(),
                delay: Duration::from_secs(*s),
            })
            .collect(),
    )
    .unwrap()
}

fn task(key: &str, n: u32) -> DeliveryTask {
    DeliveryTask {
        webhook_id: format!("evt_{key}_{n}"),
        event_key: Some(key.as_bytes().to_vec()),
        attempts: 0,
        first_attempt_at: None,
        due_at: None,
        ..crate::task::tests::task()
    }
}

/// The record `task` is read from, on partition 2 of `topic`.
fn from(topic: &str) -> Record {
    Record {
        topic: topic.into(),
        partition: 2,
        offset: 0,
        timestamp_ms: None,
        key: None,
        value: None,
        headers: Vec::new(),
    }
}

/// `task` settled as `settlement`, writing a copy to `tier` when it waits in one.
fn settled(task: &DeliveryTask, settlement: Settlement, tier: Option<&str>) -> Settled {
    Settled {
        settlement,
        outputs: tier.map(|t| task.output(t)).into_iter().collect(),
        disabled: None,
        then: Vec::new(),
    }
}

/// The task a copy written to a tier comes back as.
fn back(copy: &Output) -> DeliveryTask {
    let record = Record {
        partition: 2,
        offset: 9,
        timestamp_ms: None,
        key: copy.key.clone(),
        value: copy.value.clone(),
        headers: copy.headers.clone(),
        topic: copy.topic.clone(),
    };
    DeliveryTask::from_record(&record).unwrap()
}

fn go(turn: Turn) -> Slot {
    match turn {
        Turn::Go(slot) => slot,
        other => panic!("expected to go, got {other:?}"),
    }
}

#[test]
fn a_retrying_task_holds_only_its_key_until_it_is_delivered() {
    let mut order = KeyOrder::new(HELD, tiers());
    // a1 goes and fails: its copy waits in t5 as the head of `a`, numbered 0.
    let slot = go(order.turn(&task("a", 1), &from(TASKS)));
    let mut failed = settled(&task("a", 1), Settlement::Retrying, Some("t5"));
    let state = order.settled(&slot, &mut failed).expect("the key's state");
    assert_eq!((state.topic.as_str(), state.partition), (HELD, Some(2)));
    assert!(state.value.is_some(), "held");
    let head = back(&failed.outputs[0]);
    assert_eq!(head.key_seq, Some(0));

    // a2 arrives: it waits behind the head, in the head's tier; b1 goes.
    assert_eq!(
        order.turn(&task("a", 2), &from(TASKS)),
        Turn::Wait { seq: 1, tier: 1 }
    );
    let b = go(order.turn(&task("b", 1), &from(TASKS)));
    assert_eq!(
        order.settled(&b, &mut settled(&task("b", 1), Settlement::Delivered, None)),
        None,
        "an unheld key delivered writes no state"
    );
    // a2's copy comes round before the head: it waits again.
    let mut a2 = task("a", 2);
    a2.key_seq = Some(1);
    assert_eq!(order.turn(&a2, &from("t5")), Turn::Wait { seq: 1, tier: 1 });
    // The head comes back and is delivered; then a2 goes, and the key is released.
    let slot = go(order.turn(&head, &from("t5")));
    order
        .settled(&slot, &mut settled(&head, Settlement::Delivered, None))
        .unwrap();
    assert_eq!(order.held(), 1, "a2 still waits");
    let slot = go(order.turn(&a2, &from("t5")));
    let released = order
        .settled(&slot, &mut settled(&a2, Settlement::DeadLettered, None))
        .unwrap();
    assert_eq!(released.value, None, "released: a tombstone");
    assert_eq!(order.held(), 0);
    assert!(matches!(
        order.turn(&task("a", 3), &from(TASKS)),
        Turn::Go(_)
    ));
}

#[test]
fn a_parked_head_keeps_its_number_and_tasks_without_a_key_are_free() {
    let mut order = KeyOrder::new(HELD, tiers());
    let slot = go(order.turn(&task("a", 1), &from(TASKS)));
    let mut parked = settled(&task("a", 1), Settlement::Parked, Some("t1"));
    order.settled(&slot, &mut parked).unwrap();
    let head = back(&parked.outputs[0]);
    assert_eq!(head.key_seq, Some(0));
    // Parked again under an open breaker: still number 0, now in t1.
    let slot = go(order.turn(&head, &from("t1")));
    let mut again = settled(&head, Settlement::Parked, Some("t1"));
    order.settled(&slot, &mut again).unwrap();
    assert_eq!(back(&again.outputs[0]).key_seq, Some(0));
    assert_eq!(
        order.turn(&task("a", 2), &from(TASKS)),
        Turn::Wait { seq: 1, tier: 0 }
    );
    let mut keyless = task("a", 3);
    keyless.event_key = None;
    assert_eq!(order.turn(&keyless, &from(TASKS)), Turn::Free);
    // A number on the tasks topic (a replayed dead letter) does not count.
    let mut replayed = task("a", 4);
    replayed.key_seq = Some(0);
    assert_eq!(
        order.turn(&replayed, &from(TASKS)),
        Turn::Wait { seq: 2, tier: 0 }
    );
    // A copy whose number the state does not know goes unordered.
    let mut stray = task("c", 1);
    stray.key_seq = Some(7);
    assert_eq!(order.turn(&stray, &from("t1")), Turn::Free);
}

#[test]
fn held_keys_are_restored_from_their_records() {
    let log = MemoryLog::default();
    let mut order = KeyOrder::new(HELD, tiers());
    let slot = go(order.turn(&task("a", 1), &from(TASKS)));
    let mut failed = settled(&task("a", 1), Settlement::Retrying, Some("t1"));
    log.commit(&[order.settled(&slot, &mut failed).unwrap()]);
    let wait = order.turn(&task("a", 2), &from(TASKS));
    log.commit(&[order.record_of(&task("a", 2), &from(TASKS)).unwrap()]);
    assert_eq!(wait, Turn::Wait { seq: 1, tier: 0 });

    // Another dispatcher takes partition 2 over: `a` is held there, and numbers go on.
    let mut next = KeyOrder::new(HELD, tiers());
    assert_eq!(next.restore(&log, &[2]).unwrap(), 1);
    assert_eq!(
        next.turn(&task("a", 3), &from(TASKS)),
        Turn::Wait { seq: 2, tier: 0 }
    );
    // A partition it does not own holds nothing.
    let mut other = KeyOrder::new(HELD, tiers());
    assert_eq!(other.restore(&log, &[0, 1]).unwrap(), 0);
    // An unreadable state fails the restore rather than losing the key.
    log.commit(&[Output {
        topic: HELD.into(),
        partition: Some(2),
        key: Some(b"ep_1\0z".to_vec()),
        value: Some(b"not json".to_vec()),
        headers: Vec::new(),
    }]);
    let e = next.restore(&log, &[2]).unwrap_err();
    assert!(e.to_string().contains("not readable"), "{e}");
}
