use std::time::{Duration, SystemTime};

use sluice_runtime::outbound::{Attempt, FailureReason, RetrySchedule, Verdict};
use sluice_stream::{Output, Record, RetryTier};

use super::*;
use crate::endpoints::{Endpoint, EndpointSpec};
use crate::task::{header, EventPosition};

fn settler() -> Settler {
    let tier = |secs: u64| RetryTier {
        topic: format!("sluice.retry.deliveries.{secs}s"),
        delay: Duration::from_secs(secs),
    };
    Settler {
        topics: DispatchTopics::for_prefix("sluice"),
        tiers: Tiers::new(vec![tier(1), tier(5), tier(300)]).unwrap(),
        group: "sluice-deliver".into(),
        default_schedule: RetrySchedule::webhook_default().with_jitter(0.0).unwrap(),
    }
}

fn endpoint(schedule: Option<&[&str]>) -> Endpoint {
    let mut spec = serde_json::json!({"url": "http://127.0.0.1:1/ok", "event_types": ["a.B"]});
    if let Some(s) = schedule {
        spec["retry_schedule"] = serde_json::json!(s);
    }
    let spec: EndpointSpec = serde_json::from_value(spec).unwrap();
    Endpoint::create(spec, "ep_1".into(), jiff::Timestamp::UNIX_EPOCH)
        .unwrap()
        .0
}

fn task(attempts: u32) -> DeliveryTask {
    DeliveryTask {
        endpoint_id: "ep_1".into(),
        webhook_id: "evt_1".into(),
        event_type: "a.B".into(),
        event_key: None,
        body: b"{}".to_vec(),
        attempts,
        first_attempt_at: None,
        due_at: None,
        key_seq: None,
        event: EventPosition {
            topic: "sluice.events.payments".into(),
            partition: 0,
            offset: 1,
        },
    }
}

fn from() -> Record {
    Record {
        topic: "sluice.deliveries".into(),
        partition: 2,
        offset: 9,
        timestamp_ms: Some(0),
        key: None,
        value: None,
        headers: Vec::new(),
    }
}

fn attempt(status: Option<u16>, verdict: Verdict) -> Attempt {
    Attempt {
        started_at: SystemTime::now(),
        latency: Duration::from_millis(3),
        status,
        verdict,
        error: None,
        headers: Default::default(),
        body_prefix: bytes::Bytes::from_static(b"nope"),
        truncated: false,
    }
}

fn retry_later(after: Option<Duration>) -> Verdict {
    Verdict::RetryLater {
        after,
        reason: FailureReason::Status(503),
    }
}

fn topics(s: &Settled) -> Vec<&str> {
    s.outputs.iter().map(|o| o.topic.as_str()).collect()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(o.value.as_deref().unwrap()).unwrap()
}

fn due_in(o: &Output, now: jiff::Timestamp) -> i64 {
    let due: i64 = std::str::from_utf8(
        &o.headers
            .iter()
            .find(|(k, _)| k == header::DUE_AT)
            .unwrap()
            .1,
    )
    .unwrap()
    .parse()
    .unwrap();
    due - now.as_millisecond()
}

#[test]
fn a_2xx_logs_the_attempt_and_the_delivered_status() {
    let now = jiff::Timestamp::now();
    let s = settler().attempted(
        &task(0),
        &from(),
        &endpoint(None),
        &attempt(Some(200), Verdict::Delivered),
        now,
    );
    assert_eq!(s.settlement, Settlement::Delivered);
    assert_eq!(
        topics(&s),
        ["sluice.deliveries.attempts", "sluice.state.delivery-status"]
    );
    let logged = json(&s.outputs[0]);
    assert_eq!(logged["attempt"], 1);
    assert_eq!(logged["status_code"], 200);
    assert_eq!(logged["response_body"], "nope");
    assert_eq!(json(&s.outputs[1])["status"], "delivered");
}

#[test]
fn a_failure_is_retried_from_the_tier_its_wait_fits_with_retry_after_honoured() {
    let now = jiff::Timestamp::now();
    let st = settler();
    // The default schedule waits 5 s after the first failure.
    let s = st.attempted(
        &task(0),
        &from(),
        &endpoint(None),
        &attempt(Some(503), retry_later(None)),
        now,
    );
    assert_eq!(s.settlement, Settlement::Retrying);
    assert_eq!(s.outputs[1].topic, "sluice.retry.deliveries.5s");
    assert_eq!(due_in(&s.outputs[1], now), 5_000);
    let retried = json(&s.outputs[2]);
    assert_eq!(retried["status"], "retrying");
    assert_eq!(retried["attempts"], 1);
    // Retry-After: 20 s is longer than the schedule's 5 s, so it wins.
    let s = st.attempted(
        &task(0),
        &from(),
        &endpoint(None),
        &attempt(Some(429), retry_later(Some(Duration::from_secs(20)))),
        now,
    );
    assert_eq!(s.outputs[1].topic, "sluice.retry.deliveries.5s");
    assert_eq!(due_in(&s.outputs[1], now), 20_000);
}

#[test]
fn an_endpoint_schedule_runs_out_into_the_delivery_dlq() {
    let now = jiff::Timestamp::now();
    let st = settler();
    let ep = endpoint(Some(&["1s", "2s"]));
    let s = st.attempted(
        &task(1),
        &from(),
        &ep,
        &attempt(Some(500), retry_later(None)),
        now,
    );
    assert_eq!(s.settlement, Settlement::Retrying);
    assert!((1_600..=2_400).contains(&due_in(&s.outputs[1], now)));
    let s = st.attempted(
        &task(2),
        &from(),
        &ep,
        &attempt(Some(500), retry_later(None)),
        now,
    );
    assert_eq!(s.settlement, Settlement::DeadLettered);
    assert_eq!(s.outputs[1].topic, "sluice.dlq.deliveries");
    let dlq = &s.outputs[1];
    let h = |name: &str| {
        dlq.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        h(sluice_stream::headers::ORIGINAL_TOPIC).as_deref(),
        Some("sluice.deliveries")
    );
    assert_eq!(h(sluice_stream::headers::ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(
        h(sluice_stream::headers::EXCEPTION_MESSAGE).as_deref(),
        Some("the endpoint answered 500")
    );
}

#[test]
fn gone_disables_the_endpoint_and_parking_burns_no_attempt() {
    let now = jiff::Timestamp::now();
    let st = settler();
    let s = st.attempted(
        &task(0),
        &from(),
        &endpoint(None),
        &attempt(Some(410), Verdict::Gone),
        now,
    );
    assert_eq!(s.settlement, Settlement::Gone);
    let written = s.outputs.last().unwrap();
    assert_eq!(written.topic, "sluice.state.endpoints");
    assert_eq!(json(written)["enabled"], false);
    assert!(!s.disabled.unwrap().enabled);

    let later = now
        .checked_add(jiff::SignedDuration::from_secs(30))
        .unwrap();
    let p = st.parked(&task(3), later, now);
    assert_eq!(p.outputs[0].topic, "sluice.retry.deliveries.1s");
    assert_eq!(due_in(&p.outputs[0], now), 30_000);
    let back = Record {
        topic: p.outputs[0].topic.clone(),
        key: p.outputs[0].key.clone(),
        value: p.outputs[0].value.clone(),
        headers: p.outputs[0].headers.clone(),
        ..from()
    };
    assert_eq!(DeliveryTask::from_record(&back).unwrap().attempts, 3);
}

#[test]
fn a_record_that_is_not_a_task_is_dead_lettered_apart_with_its_reason() {
    let record = Record {
        topic: "sluice.deliveries".into(),
        partition: 4,
        offset: 17,
        timestamp_ms: Some(9),
        key: None,
        value: Some(b"garbage".to_vec()),
        headers: vec![("x".into(), b"y".to_vec())],
    };
    let error = DeliveryTask::from_record(&record).unwrap_err();
    let letter = settler().invalid(&record, &error, jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(letter.topic, "sluice.dlq.delivery-fanout");
    assert_eq!(
        letter.value.as_deref(),
        Some(&b"garbage"[..]),
        "kept as it was"
    );
    let h = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    };
    assert_eq!(
        h("kafka_dlt-exception-message").as_deref(),
        Some("sluice.deliveries/4@17: no key (the endpoint id)")
    );
    assert_eq!(
        h("kafka_dlt-exception-fqcn").as_deref(),
        Some("InvalidDeliveryTask")
    );
    assert_eq!(
        h("kafka_dlt-original-topic").as_deref(),
        Some("sluice.deliveries")
    );
    assert_eq!(h("x").as_deref(), Some("y"));
}

#[test]
fn a_retry_copy_its_tier_refuses_dead_letters_the_delivery_and_keeps_its_attempt_record() {
    let now = jiff::Timestamp::now();
    let st = settler();
    let mut s = st.attempted(
        &task(0),
        &from(),
        &endpoint(None),
        &attempt(Some(503), retry_later(None)),
        now,
    );
    let copy = topics(&s)
        .iter()
        .position(|t| t.starts_with("sluice.retry."))
        .unwrap();
    let refit = st.refit(
        &mut s,
        copy,
        Some((&task(0), &from())),
        RefusalClass::RecordTooLarge,
        "Message size too large",
        now,
    );
    assert!(refit);
    assert_eq!(s.settlement, Settlement::DeadLettered);
    assert_eq!(
        topics(&s),
        [
            "sluice.deliveries.attempts",
            "sluice.dlq.deliveries",
            "sluice.state.delivery-status"
        ]
    );
    let header = |o: &Output, name: &str| {
        o.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let reason = header(&s.outputs[1], "kafka_dlt-exception-message").unwrap();
    assert!(
        reason.contains("RecordTooLarge") && reason.contains("Message size too large"),
        "{reason}"
    );
    assert_eq!(
        header(&s.outputs[1], "kafka_dlt-original-offset").map(|v| v.len()),
        Some(8),
        "where the task is"
    );
    let status = json(&s.outputs[2]);
    assert_eq!(status["status"], "failed");
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["last_status_code"], 503);
}

/// An attempt the endpoint answered 400, which can never succeed.
fn rejected_400() -> Attempt {
    attempt(
        Some(400),
        Verdict::Rejected {
            reason: FailureReason::Status(400),
        },
    )
}

#[test]
fn a_refused_attempt_record_loses_its_quoted_body_and_a_refused_dead_letter_is_cut() {
    let now = jiff::Timestamp::now();
    let st = settler();
    let mut big = task(7);
    big.body = vec![b'x'; 200_000];
    let mut s = st.attempted(&big, &from(), &endpoint(None), &rejected_400(), now);
    assert_eq!(s.settlement, Settlement::DeadLettered);
    let refuse = |s: &mut Settled, index: usize| {
        st.refit(
            s,
            index,
            Some((&big, &from())),
            RefusalClass::RecordTooLarge,
            "too large",
            now,
        )
    };
    assert!(refuse(&mut s, 0));
    assert_eq!(json(&s.outputs[0])["response_body"], "");
    assert_eq!(json(&s.outputs[0])["response_truncated"], true);
    assert!(!refuse(&mut s, 0), "nothing more to take out");

    let dlq = topics(&s)
        .iter()
        .position(|t| *t == "sluice.dlq.deliveries")
        .unwrap();
    let size = |s: &Settled| s.outputs[dlq].value.as_ref().unwrap().len();
    assert!(size(&s) >= 200_000);
    assert!(refuse(&mut s, dlq));
    assert_eq!(size(&s), refusals::TRUNCATED_KEEP_BYTES);
    assert!(refuse(&mut s, dlq));
    assert_eq!(size(&s), 0);
    assert!(!refuse(&mut s, dlq), "nothing more to cut");
    // A dead letter already under 64 KiB goes straight to nothing.
    let mut small = st.attempted(&task(7), &from(), &endpoint(None), &rejected_400(), now);
    assert!(refuse(&mut small, dlq));
    assert_eq!(size(&small), 0);
    // The status cannot be made smaller: written again as it is.
    let status = s.outputs.len() - 1;
    assert!(!refuse(&mut s, status));
}

#[test]
fn a_refused_dead_letter_of_a_record_that_is_no_task_is_cut_and_says_where_it_is() {
    let now = jiff::Timestamp::now();
    let st = settler();
    let mut record = from();
    record.value = Some(vec![b'x'; 100_000]);
    let error = TaskError::NoKey { at: "here".into() };
    let mut s = Settled {
        settlement: Settlement::DeadLettered,
        outputs: vec![st.invalid(&record, &error, now)],
        disabled: None,
        then: Vec::new(),
    };
    assert!(st.refit(
        &mut s,
        0,
        None,
        RefusalClass::RecordTooLarge,
        "too large",
        now
    ));
    let letter = &s.outputs[0];
    assert_eq!(
        letter.value.as_ref().unwrap().len(),
        refusals::TRUNCATED_KEEP_BYTES
    );
    let at = letter
        .headers
        .iter()
        .find(|(k, _)| k == refusals::TRUNCATED_ORIGINAL_AT)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert_eq!(at.as_deref(), Some("sluice.deliveries/2@9"));
}

#[test]
fn acknowledged_records_a_changed_settlement_still_holds_are_not_sent_again() {
    let record = |topic: &str, value: &[u8]| Output {
        topic: topic.into(),
        partition: None,
        key: None,
        value: Some(value.to_vec()),
        headers: Vec::new(),
    };
    let before = [
        record("attempts", b"1"),
        record("tier", b"t"),
        record("status", b"s"),
    ];
    let acked = Acked(vec![Some((0, 7)), None, Some((0, 9))]);
    let after = [
        record("attempts", b"1"),
        record("dlq", b"t"),
        record("status", b"f"),
    ];
    assert_eq!(
        acked.carried_to(&before, &after).0,
        [Some((0, 7)), None, None],
        "only the unchanged attempt record stays acknowledged"
    );
}
