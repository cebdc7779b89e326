//! What an attempt leads to, as the records that say so: the attempt record, the status,
//! and for a failure the retry task (to the right tier, with its exact due time) or the dead
//! letter, and for 410 Gone the endpoint written back disabled.
//!
//! A task is settled (its offset may be committed) only once every record it led to is
//! acknowledged by the broker ([`Settler::write`]): a crash before that sends it again, with
//! the same `webhook-id`.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use sluice_runtime::outbound::{Attempt, RetrySchedule, Verdict};
use sluice_runtime::Shutdown;
use sluice_stream::refusals::{self, RefusalClass};
use sluice_stream::{ErrorClass, FailureRouter, HandlerError, Output, Record};

use super::schedule;
use super::tiers::Tiers;
use crate::attempt_log::AttemptRecord;
use crate::endpoints::Endpoint;
use crate::status::{DeliveryStatus, StatusRecord};
use crate::task::{DeliveryTask, TaskError};

/// Every topic the dispatcher writes.
#[derive(Debug, Clone)]
pub struct DispatchTopics {
    pub tasks: String,
    pub attempts: String,
    pub status: String,
    pub dlq: String,
    /// Where records of the tasks topic that are not tasks go: a system failure, kept
    /// apart from exhausted deliveries (the delivery fan-out's DLQ by default).
    pub invalid: String,
    pub endpoints: String,
    /// Held keys of `per_key` endpoints (`<prefix>.state.held-deliveries`), when the
    /// topology declares it; without it per-key order holds only within one dispatcher's
    /// memory.
    pub held: Option<String>,
    /// Endpoints' failing-since clocks (`<prefix>.state.delivery-health`), when the
    /// topology declares it; without it the clock restarts with the dispatcher.
    pub health: Option<String>,
}

impl DispatchTopics {
    pub fn for_prefix(prefix: &str) -> Self {
        use sluice_topology::naming;
        Self {
            tasks: naming::deliveries_topic(prefix),
            attempts: naming::delivery_attempts_topic(prefix),
            status: naming::delivery_status_topic(prefix),
            dlq: naming::delivery_dlq_topic(prefix),
            invalid: naming::dlq_topic(prefix, naming::DELIVERY_FANOUT_POLICY),
            endpoints: naming::endpoints_topic(prefix),
            held: None,
            health: None,
        }
    }
}

/// Where a task ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Delivered,
    Retrying,
    DeadLettered,
    /// 410 Gone: the endpoint is disabled.
    Gone,
    /// Waiting, without an attempt, for its endpoint's breaker or limits.
    Parked,
    EndpointDisabled,
}

impl Settlement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::DeadLettered => "dead_lettered",
            Self::Gone => "gone",
            Self::Parked => "parked",
            Self::EndpointDisabled => "endpoint_disabled",
        }
    }

    pub const LABELS: [&'static str; 6] = [
        "delivered",
        "retrying",
        "dead_lettered",
        "gone",
        "parked",
        "endpoint_disabled",
    ];
}

/// The records one task's settlement writes.
#[derive(Debug, Clone)]
pub struct Settled {
    pub settlement: Settlement,
    pub outputs: Vec<Output>,
    /// For [`Settlement::Gone`]: the disabled endpoint, written last.
    pub disabled: Option<Endpoint>,
    /// Records written only once `outputs` are acknowledged: a held key's state, which
    /// must never name a tier copy that is not there.
    pub then: Vec<Output>,
}

/// Builds settlements and writes them.
#[derive(Debug, Clone)]
pub struct Settler {
    pub topics: DispatchTopics,
    pub tiers: Tiers,
    pub group: String,
    pub default_schedule: RetrySchedule,
}

fn ms(t: jiff::Timestamp) -> i64 {
    t.as_millisecond()
}

fn after(now: jiff::Timestamp, wait: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(wait)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

impl Settler {
    fn status(
        &self,
        task: &DeliveryTask,
        status: DeliveryStatus,
        code: Option<u16>,
        next: Option<jiff::Timestamp>,
        now: jiff::Timestamp,
    ) -> Output {
        StatusRecord {
            endpoint_id: task.endpoint_id.clone(),
            webhook_id: task.webhook_id.clone(),
            event_type: task.event_type.clone(),
            status,
            attempts: task.attempts,
            last_status_code: code,
            next_attempt_at: next,
            updated_at: now,
            event_topic: None,
            event_partition: None,
            event_offset: None,
        }
        .at(&task.event)
        .output(&self.topics.status)
    }

    /// What `attempt` (the next attempt of `task`, read from `from`) leads to.
    pub fn attempted(
        &self,
        task: &DeliveryTask,
        from: &Record,
        endpoint: &Endpoint,
        attempt: &Attempt,
        now: jiff::Timestamp,
    ) -> Settled {
        let number = task.attempts + 1;
        let mut done = task.clone();
        done.attempts = number;
        done.first_attempt_at =
            Some(task.first_attempt_at.unwrap_or_else(|| {
                ms(jiff::Timestamp::try_from(attempt.started_at).unwrap_or(now))
            }));
        let mut outputs =
            vec![AttemptRecord::of(task, number, attempt).output(&self.topics.attempts)];
        let code = attempt.status;
        let (settlement, disabled) = match &attempt.verdict {
            Verdict::Delivered => {
                outputs.push(self.status(&done, DeliveryStatus::Delivered, code, None, now));
                (Settlement::Delivered, None)
            }
            Verdict::Gone => {
                outputs.push(self.status(&done, DeliveryStatus::Gone, code, None, now));
                let (off, record) = self.disable(endpoint, now);
                outputs.push(record);
                (Settlement::Gone, Some(off))
            }
            Verdict::RetryLater { after: asked, .. } => {
                let schedule = schedule::for_endpoint(endpoint, &self.default_schedule);
                let seed = schedule::seed(&task.endpoint_id, &task.webhook_id);
                match schedule.next_delay(number, *asked, seed) {
                    Some(wait) => {
                        let due = after(now, wait);
                        let mut retry = done.clone();
                        retry.due_at = Some(ms(due));
                        outputs.push(retry.output(&self.tiers.for_wait(wait).topic));
                        outputs.push(self.status(
                            &done,
                            DeliveryStatus::Retrying,
                            code,
                            Some(due),
                            now,
                        ));
                        (Settlement::Retrying, None)
                    }
                    None => {
                        outputs.push(self.dead_letter(&done, from, attempt, now));
                        (Settlement::DeadLettered, None)
                    }
                }
            }
            Verdict::Rejected { .. } => {
                outputs.push(self.dead_letter(&done, from, attempt, now));
                (Settlement::DeadLettered, None)
            }
        };
        Settled {
            settlement,
            outputs,
            disabled,
            then: Vec::new(),
        }
    }

    /// The dead letter of `record`, read where tasks are and not a task: as it was, with
    /// the stream runtime's provenance headers and `error` as the reason
    /// (`kafka_dlt-exception-fqcn` `InvalidDeliveryTask`), for `sluice dlq` to list.
    pub fn invalid(&self, record: &Record, error: &TaskError, now: jiff::Timestamp) -> Output {
        let router = FailureRouter {
            group: self.group.clone(),
            tiers: Vec::new(),
            max_attempts: 1,
            dlq_topic: self.topics.invalid.clone(),
        };
        let error =
            HandlerError::permanent(ErrorClass::custom("InvalidDeliveryTask"), error.to_string());
        router.route(record, &error, ms(now)).1
    }

    /// `endpoint` disabled, and its record for the endpoints topic.
    pub fn disable(&self, endpoint: &Endpoint, now: jiff::Timestamp) -> (Endpoint, Output) {
        let mut off = endpoint.clone();
        off.enabled = false;
        off.updated_at = now;
        let record = Output {
            topic: self.topics.endpoints.clone(),
            partition: None,
            key: Some(off.id.clone().into_bytes()),
            value: Some(serde_json::to_vec(&off).expect("endpoints serialise")),
            headers: Vec::new(),
        };
        (off, record)
    }

    fn dead_letter(
        &self,
        done: &DeliveryTask,
        from: &Record,
        attempt: &Attempt,
        now: jiff::Timestamp,
    ) -> Output {
        let reason = match (attempt.status, attempt.verdict.reason()) {
            (Some(code), _) => format!("the endpoint answered {code}"),
            (None, Some(reason)) => reason.to_string(),
            (None, None) => attempt.verdict.as_str().to_string(),
        };
        let history = format!(
            "{} {} {}: {reason}",
            done.attempts,
            ms(now),
            attempt.verdict.as_str()
        );
        self.letter(done, from, &reason, &history)
    }

    /// `done`'s dead letter for the delivery DLQ, with its provenance in the tasks topic.
    fn letter(&self, done: &DeliveryTask, from: &Record, reason: &str, history: &str) -> Output {
        done.dead_letter(
            &self.topics.dlq,
            &self.topics.tasks,
            from,
            &self.group,
            reason,
            history,
        )
    }

    /// `task` parked, without an attempt, until `until`: back to the shortest tier with its
    /// attempt count unchanged.
    pub fn parked(
        &self,
        task: &DeliveryTask,
        until: jiff::Timestamp,
        now: jiff::Timestamp,
    ) -> Settled {
        self.parked_in(task, &self.tiers.shortest().topic, until, now)
    }

    /// `task` parked, without an attempt, in the tier writing to `tier` until `until`.
    pub fn parked_in(
        &self,
        task: &DeliveryTask,
        tier: &str,
        until: jiff::Timestamp,
        now: jiff::Timestamp,
    ) -> Settled {
        let mut parked = task.clone();
        parked.due_at = Some(ms(until));
        Settled {
            settlement: Settlement::Parked,
            outputs: vec![
                parked.output(tier),
                self.status(task, DeliveryStatus::Parked, None, Some(until), now),
            ],
            disabled: None,
            then: Vec::new(),
        }
    }

    /// `task`'s endpoint is disabled or gone: nothing is sent.
    pub fn endpoint_disabled(&self, task: &DeliveryTask, now: jiff::Timestamp) -> Settled {
        Settled {
            settlement: Settlement::EndpointDisabled,
            outputs: vec![self.status(task, DeliveryStatus::EndpointDisabled, None, None, now)],
            disabled: None,
            then: Vec::new(),
        }
    }

    /// Writes `outputs`, trying again until every one is acknowledged or shutdown; returns
    /// each record's (partition, offset), or `None` on shutdown. A record acknowledged once
    /// is not sent again (the delivery log holds each attempt once).
    pub async fn write(
        producer: &FutureProducer,
        outputs: &[Output],
        shutdown: &Shutdown,
    ) -> Option<Vec<(i32, i64)>> {
        let mut backoff = Backoff::default();
        let mut acked = Acked::new(outputs.len());
        loop {
            match write_once(producer, outputs, &mut acked).await {
                Ok(positions) => return Some(positions),
                Err(e) => {
                    tracing::warn!(error = %e.1, "writing a delivery's outcome failed; trying again");
                }
            }
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }

    /// [`Self::write`] for a settlement (of `task`, read from `from`, when it is about one),
    /// which is changed when Kafka refuses one of its records for the record itself
    /// ([`Self::refit`]) instead of being sent again as it is, forever, holding its
    /// partition's commits behind it.
    pub async fn write_settled(
        &self,
        producer: &FutureProducer,
        settled: &mut Settled,
        task: Option<(&DeliveryTask, &Record)>,
        shutdown: &Shutdown,
    ) -> Option<Vec<(i32, i64)>> {
        let mut backoff = Backoff::default();
        let mut acked = Acked::new(settled.outputs.len());
        loop {
            let (index, e) = match write_once(producer, &settled.outputs, &mut acked).await {
                Ok(positions) => return Some(positions),
                Err(failed) => failed,
            };
            let before = settled.outputs.clone();
            let refit = RefusalClass::of(&e).is_some_and(|class| {
                self.refit(
                    settled,
                    index,
                    task,
                    class,
                    &e.to_string(),
                    jiff::Timestamp::now(),
                )
            });
            if refit {
                acked = acked.carried_to(&before, &settled.outputs);
                continue;
            }
            tracing::warn!(error = %e, "writing a delivery's outcome failed; trying again");
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }

    /// Changes `settled` so that its `index`th record, which Kafka refused for itself
    /// (`class`: too large, most likely), can be taken; false when nothing can change (the
    /// write is tried again as it is). A retry or parked copy of `task` refused by its tier
    /// dead-letters the delivery instead (it cannot be cut: it is what the next attempt
    /// sends); a dead letter is cut (to 64 KiB, then to nothing), with headers saying where
    /// the whole record is; an attempt record loses the response body it quoted.
    pub fn refit(
        &self,
        settled: &mut Settled,
        index: usize,
        task: Option<(&DeliveryTask, &Record)>,
        class: RefusalClass,
        error: &str,
        now: jiff::Timestamp,
    ) -> bool {
        let Some(output) = settled.outputs.get_mut(index) else {
            return false;
        };
        tracing::warn!(topic = %output.topic, class = class.as_str(), error,
            "Kafka refused a record of a delivery's outcome; writing it another way");
        if output.topic == self.topics.attempts {
            return without_response_body(output);
        }
        if output.topic == self.topics.dlq || output.topic == self.topics.invalid {
            // Cut to 64 KiB first, to nothing when that is not smaller.
            let kept = output.value.as_ref().map_or(0, Vec::len);
            let cuts = if kept > refusals::TRUNCATED_KEEP_BYTES {
                1
            } else {
                2
            };
            refusals::fit_failure_copy(output, u64::MAX, cuts);
            return output.value.as_ref().map_or(0, Vec::len) < kept;
        }
        match task {
            Some((task, from)) if self.tiers.contains(&output.topic) => {
                *settled = self.dead_lettered_instead(settled, task, from, class, error, now);
                true
            }
            _ => false,
        }
    }

    /// `settled`, whose retry or parked copy its tier refused, as a dead letter: the attempt
    /// record it made stays, the status says failed.
    fn dead_lettered_instead(
        &self,
        settled: &Settled,
        task: &DeliveryTask,
        from: &Record,
        class: RefusalClass,
        error: &str,
        now: jiff::Timestamp,
    ) -> Settled {
        let mut done = task.clone();
        done.attempts += u32::from(settled.settlement == Settlement::Retrying);
        let reason = format!(
            "its retry copy was refused by Kafka ({}): {error}",
            class.as_str()
        );
        let history = format!("{} {} refused: {reason}", done.attempts, ms(now));
        let code = settled
            .outputs
            .iter()
            .filter(|o| o.topic == self.topics.status)
            .find_map(|o| serde_json::from_slice::<StatusRecord>(o.value.as_deref()?).ok())
            .and_then(|s| s.last_status_code);
        let mut outputs: Vec<Output> = settled
            .outputs
            .iter()
            .filter(|o| o.topic == self.topics.attempts)
            .cloned()
            .collect();
        outputs.push(self.letter(&done, from, &reason, &history));
        outputs.push(self.status(&done, DeliveryStatus::Failed, code, None, now));
        Settled {
            settlement: Settlement::DeadLettered,
            outputs,
            disabled: None,
            then: Vec::new(),
        }
    }
}

/// The (partition, offset) of each record of a settlement the broker acknowledged so far.
struct Acked(Vec<Option<(i32, i64)>>);

impl Acked {
    fn new(records: usize) -> Self {
        Self(vec![None; records])
    }

    /// For `after` (the settlement's records once changed from `before`): the
    /// acknowledgements of records it still holds unchanged.
    fn carried_to(self, before: &[Output], after: &[Output]) -> Self {
        let acked = after
            .iter()
            .map(|o| {
                before
                    .iter()
                    .zip(&self.0)
                    .find(|(b, _)| *b == o)
                    .and_then(|(_, at)| *at)
            })
            .collect();
        Self(acked)
    }
}

/// Sends the records of `outputs` not yet `acked` and waits for their acknowledgements:
/// every record's (partition, offset), or the first failed one's index and error (the one
/// Kafka refused for itself, when one was).
async fn write_once(
    producer: &FutureProducer,
    outputs: &[Output],
    acked: &mut Acked,
) -> Result<Vec<(i32, i64)>, (usize, KafkaError)> {
    let sends = outputs
        .iter()
        .enumerate()
        .filter(|(i, _)| acked.0[*i].is_none())
        .map(|(i, o)| async move { (i, producer.send(o.record(), Duration::from_secs(30)).await) });
    let mut failed = Vec::new();
    for (i, r) in futures::future::join_all(sends).await {
        match r {
            Ok(d) => acked.0[i] = Some((d.partition, d.offset)),
            Err((e, _)) => failed.push((i, e)),
        }
    }
    let blamed = refusals::blame(&failed, |i| {
        let o = &outputs[*i];
        Some((o.topic.as_str(), refusals::output_size(o)))
    });
    match (blamed.first(), failed.first()) {
        (Some((i, e, _)), _) => Err((**i, (*e).clone())),
        (None, Some((i, e))) => Err((*i, e.clone())),
        (None, None) => Ok(acked.0.iter().flatten().copied().collect()),
    }
}

/// An attempt record without the response body it quoted (and saying so); false when it
/// quoted none, or is not one.
fn without_response_body(output: &mut Output) -> bool {
    let Some(mut record) = output
        .value
        .as_deref()
        .and_then(|v| serde_json::from_slice::<AttemptRecord>(v).ok())
    else {
        return false;
    };
    if record.response_body.is_empty() {
        return false;
    }
    record.response_body.clear();
    record.response_truncated = true;
    output.value = Some(serde_json::to_vec(&record).expect("attempt records serialise"));
    true
}

/// The wait between writes of an outcome: 200 ms, doubling up to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(200))
    }
}

impl Backoff {
    /// Waits its turn; false at shutdown.
    async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        if shutdown.is_triggered() {
            return false;
        }
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        true
    }
}

#[cfg(test)]
#[path = "settle_tests.rs"]
mod tests;
