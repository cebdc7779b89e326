//! The consumer runtime's retry tiers and DLQ against the real broker, with a handler whose
//! failures are scripted per key.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use sluice_runtime::kafka::create_topic_if_missing;
use sluice_runtime::Shutdown;
use sluice_stream::metrics::LoopMetrics;
use sluice_stream::{
    ErrorClass, FailureRouter, Guarantee, Handler, HandlerError, LoopConfig, Output, Record,
    RetryTier,
};

use crate::normalizer::{read_until, reader};
use crate::support::{clients, require_stack};

/// Copies records to `out`; `flaky-*` keys fail transiently on their first two attempts,
/// `poison` always fails transiently, `bad` fails permanently.
struct Scripted {
    out: String,
}

impl Handler for Scripted {
    async fn handle(&self, record: &Record) -> Result<Vec<Output>, HandlerError> {
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        let attempts: u32 = record
            .header("sluice_attempts")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        if key == "poison" || (key.starts_with("flaky") && attempts < 2) {
            return Err(HandlerError::transient(
                ErrorClass::custom("DownstreamTimeout"),
                format!("{key} attempt {}", attempts + 1),
            ));
        }
        if key == "bad" {
            return Err(HandlerError::permanent(
                ErrorClass::custom("ValidationFailed"),
                "field `x` is required",
            ));
        }
        Ok(vec![handled_copy(&self.out, record)])
    }
}

/// What a scripted handler writes for a record it handled: the record, to `out`, with the
/// topic it was handled from (main topic or retry tier) in a `handled_from` header.
pub fn handled_copy(out: &str, record: &Record) -> Output {
    Output {
        topic: out.to_string(),
        partition: None,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: vec![("handled_from".into(), record.topic.clone().into_bytes())],
    }
}

async fn run_case(guarantee: Guarantee) {
    require_stack().await;
    let p = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let (input, out, dlq) = (format!("{p}.in"), format!("{p}.out"), format!("{p}.dlq"));
    let tiers = vec![
        RetryTier {
            topic: format!("{p}.retry.1s"),
            delay: Duration::from_secs(1),
        },
        RetryTier {
            topic: format!("{p}.retry.2s"),
            delay: Duration::from_secs(2),
        },
    ];
    let admin = clients().admin().unwrap();
    for t in [&input, &out, &dlq, &tiers[0].topic, &tiers[1].topic] {
        create_topic_if_missing(&admin, t, 2).await.unwrap();
    }
    let group = format!("{p}-group");
    let router = FailureRouter {
        group: group.clone(),
        tiers: tiers.clone(),
        max_attempts: 3,
        dlq_topic: dlq.clone(),
    };
    let mut topics = vec![input.clone()];
    topics.extend(tiers.iter().map(|t| t.topic.clone()));
    let config = LoopConfig::new(&group, "e2e", topics, guarantee);
    let shutdown = Shutdown::new();
    let metrics = LoopMetrics::new(&prometheus::Registry::new()).unwrap();
    let handler = Arc::new(Scripted { out: out.clone() });
    let loop_task = {
        let (clients, shutdown) = (clients(), shutdown.clone());
        tokio::spawn(async move {
            sluice_stream::run(&clients, config, router, handler, metrics, shutdown).await
        })
    };

    let producer = clients().producer("e2e").unwrap();
    for key in ["ok-1", "flaky-1", "poison", "bad", "ok-2"] {
        producer
            .send(
                FutureRecord::to(&input).key(key).payload(key.as_bytes()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let outputs = read_until(&reader(&out), Duration::from_secs(60), |g| g.len() >= 3).await;
    if loop_task.is_finished() {
        panic!("the consumer loop stopped early: {:?}", loop_task.await);
    }
    let keys: Vec<&str> = outputs.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(outputs.len(), 3, "{keys:?}");
    // The main topic is not held up by records waiting on a tier.
    let flaky_at = keys.iter().position(|k| *k == "flaky-1").unwrap();
    assert!(
        keys.iter().position(|k| *k == "ok-2").unwrap() < flaky_at,
        "{keys:?}"
    );
    let flaky = &outputs[flaky_at];
    assert_eq!(
        flaky.1["handled_from"],
        tiers[1].topic.as_bytes(),
        "succeeded on its third attempt, from tier 2"
    );

    let dead = read_until(&reader(&dlq), Duration::from_secs(60), |g| g.len() >= 2).await;
    assert_eq!(dead.len(), 2);
    let poison = dead.iter().find(|d| d.0 == "poison").unwrap();
    assert_eq!(poison.1["sluice_attempts"], b"3");
    assert_eq!(
        poison.1["kafka_dlt-original-topic"],
        input.as_bytes(),
        "first provenance kept through the tiers"
    );
    assert_eq!(poison.1["kafka_dlt-exception-fqcn"], b"DownstreamTimeout");
    assert_eq!(
        String::from_utf8_lossy(&poison.1["sluice_attempt_history"])
            .lines()
            .count(),
        3
    );
    assert_eq!(poison.2, b"poison");
    let bad = dead.iter().find(|d| d.0 == "bad").unwrap();
    assert_eq!(
        bad.1["sluice_attempts"], b"1",
        "permanent failures are not retried"
    );
    assert_eq!(bad.1["sluice_failure_kind"], b"permanent");

    shutdown.trigger();
    loop_task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_loop_retries_through_tiers_then_dead_letters() {
    run_case(Guarantee::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loop_retries_through_tiers_then_dead_letters() {
    run_case(Guarantee::AtLeastOnce).await;
}
