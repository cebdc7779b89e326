//! One batch, without Kafka: each partition's records through the handler (in offset order,
//! the partitions concurrently), failures routed to their tier or the DLQ, and the batch's
//! end — its state and outcomes applied when it committed, dropped when it did not. The
//! loop ([`crate::processing`]) wraps this in the consumer and the transaction; unit tests
//! drive it directly with state in a [`crate::state::MemoryLog`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;

use super::failure::{FailureRouter, Routed};
use super::headers as h;
use super::metrics::LoopMetrics;
use super::ordering::{Decision, KeyOrdering};
use super::outcome::{Outcomes, RecordOutcome};
use super::processing::{now_ms, LoopError};
use super::rebalance::TopicPartition;
use super::refusals::{self, Origin, RefusalClass, Refusals};
use super::{Admit, ErrorClass, Handler, HandlerError, Output, Record};

/// Where a partition task hands each output as it makes it: the producer, while the
/// batch's transaction is open, so producing overlaps handling.
pub(crate) trait OutputSink: Send + Sync {
    fn send(&self, origin: Option<Origin>, o: &Output);
}

/// What the partition tasks share.
pub(crate) struct Shared<H> {
    pub handler: Arc<H>,
    pub router: FailureRouter,
    pub ordering: Option<Arc<KeyOrdering>>,
    pub refusals: Arc<Refusals>,
    pub metrics: LoopMetrics,
    pub group: String,
    /// The producer's `message.max.bytes`.
    pub max_record: u64,
}

// Not derived: that would ask for `H: Clone`, and only the `Arc` is cloned.
impl<H> Clone for Shared<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            router: self.router.clone(),
            ordering: self.ordering.clone(),
            refusals: self.refusals.clone(),
            metrics: self.metrics.clone(),
            group: self.group.clone(),
            max_record: self.max_record,
        }
    }
}

/// A handled batch: what to write, what to commit, what to count.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Where each partition started, to rewind to when the batch is not committed.
    pub firsts: Vec<(TopicPartition, i64)>,
    /// Outputs not handed to a sink yet, in the order they are to be written, each with
    /// the record it was made for (`None`: batch-wide state writes).
    pub outputs: Vec<(Option<Origin>, Output)>,
    /// Per partition, the offset to commit: one past the last record handled.
    pub offsets: Vec<(TopicPartition, i64)>,
    /// Retry-tier partitions to hold: (partition, offset of the record not due, due at).
    pub to_pause: Vec<(TopicPartition, i64, i64)>,
    pub outcomes: Outcomes,
    /// A record made an output Kafka cannot take: the batch must not commit.
    pub refused: Option<LoopError>,
}

/// How a batch ended, for the loop to act on the consumer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Offsets committed: hold these retry partitions until their records are due.
    Committed {
        offsets: Vec<(TopicPartition, i64)>,
        to_pause: Vec<(TopicPartition, i64, i64)>,
    },
    /// Nothing of the batch counts: seek every partition back to where it started.
    Aborted { rewind: Vec<(TopicPartition, i64)> },
}

/// Where each partition of `records` starts: what a batch that is not committed rewinds to.
fn firsts(records: &[Record]) -> Vec<(TopicPartition, i64)> {
    let mut firsts: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    for r in records {
        firsts
            .entry((r.topic.clone(), r.partition))
            .or_insert(r.offset);
    }
    firsts.into_iter().collect()
}

impl Batch {
    /// A batch whose records were consumed but could not be handled (its transaction did
    /// not begin): nothing to write, and every partition to rewind to its first record, or
    /// the consumer would go on past them.
    pub(crate) fn unhandled(records: &[Record]) -> Batch {
        Batch {
            firsts: firsts(records),
            ..Batch::default()
        }
    }
}

/// Handles `records`: each partition's on its own task, so handlers use every core.
pub(crate) async fn handle<H: Handler>(
    shared: &Shared<H>,
    records: Vec<Record>,
    sink: Option<Arc<dyn OutputSink>>,
) -> Result<Batch, LoopError> {
    let mut by_partition: BTreeMap<TopicPartition, Vec<Record>> = BTreeMap::new();
    for r in records {
        by_partition
            .entry((r.topic.clone(), r.partition))
            .or_default()
            .push(r);
    }
    let firsts = by_partition
        .iter()
        .map(|(tp, rs)| (tp.clone(), rs[0].offset))
        .collect();
    let tasks = by_partition.into_iter().map(|(tp, records)| {
        let (shared, sink) = (shared.clone(), sink.clone());
        tokio::spawn(async move {
            let ctx = PartitionContext {
                router: &shared.router,
                ordering: shared.ordering.as_deref(),
                sink: sink.as_deref(),
                refusals: &shared.refusals,
                max_record: shared.max_record,
                metrics: &shared.metrics,
                group: &shared.group,
            };
            handle_partition(tp, records, &*shared.handler, &ctx).await
        })
    });
    let mut results = Vec::new();
    for joined in join_all(tasks).await {
        results.push(joined.map_err(|e| LoopError::HandlerTask(e.to_string()))?);
    }
    Ok(assemble(shared, firsts, results))
}

/// Puts the partitions' results together, outputs in the order they are to be written.
fn assemble<H: Handler>(
    shared: &Shared<H>,
    firsts: Vec<(TopicPartition, i64)>,
    results: Vec<PartitionResult>,
) -> Batch {
    let mut batch = Batch {
        firsts,
        ..Batch::default()
    };
    let mut stamped: Vec<(u64, Option<Origin>, Output)> = Vec::new();
    for result in results {
        stamped.extend(result.outputs);
        batch.outcomes.extend(result.outcomes);
        if batch.refused.is_none() {
            batch.refused = result.refused;
        }
        if let Some(next) = result.next_offset {
            batch.offsets.push((result.tp.clone(), next));
        }
        if let Some((offset, due)) = result.wait_until {
            batch.to_pause.push((result.tp, offset, due));
        }
    }
    // Under per-key ordering a key's records may be handled by different partition tasks
    // (main topic, tiers) in one batch: write outputs in the order their records were let
    // through, so a released key's outputs cannot come out ahead of its head's.
    stamped.sort_by_key(|(stamp, _, _)| *stamp);
    batch.outputs = stamped.into_iter().map(|(_, at, o)| (at, o)).collect();
    if let Some(o) = &shared.ordering {
        // Each changed key's final state, after every partition task is done.
        batch
            .outputs
            .extend(o.batch_writes().into_iter().map(|o| (None, o)));
    }
    batch.outputs.extend(
        shared
            .handler
            .batch_outputs()
            .into_iter()
            .map(|o| (None, o)),
    );
    batch
}

impl Batch {
    /// Ends the batch once its write committed or failed: the handler's and the key
    /// ordering's staged state is applied or dropped, and the records' outcomes are counted
    /// only when committed, so a batch that is aborted and handled again counts once.
    pub(crate) fn end<H: Handler>(self, shared: &Shared<H>, committed: bool) -> Ended {
        let (metrics, group) = (&shared.metrics, shared.group.as_str());
        shared.handler.on_batch_end(committed);
        if let Some(o) = &shared.ordering {
            let held = o.finish_batch(committed);
            metrics
                .held_keys
                .with_label_values(&[group])
                .set(held as i64);
        }
        let outcome = if committed { "committed" } else { "aborted" };
        metrics
            .transactions
            .with_label_values(&[group, outcome])
            .inc();
        if !committed {
            return Ended::Aborted {
                rewind: self.firsts,
            };
        }
        self.outcomes.committed(metrics, group);
        Ended::Committed {
            offsets: self.offsets,
            to_pause: self.to_pause,
        }
    }
}

struct PartitionResult {
    tp: TopicPartition,
    /// Each with the stamp of its record (see [`KeyOrdering::decide`]; 0 without ordering)
    /// and the record it was made for.
    outputs: Vec<(u64, Option<Origin>, Output)>,
    /// Offset to commit (one past the last record handled), if any was.
    next_offset: Option<i64>,
    /// A retry record that is not yet due, or a record the handler does not admit yet: its
    /// offset and when to offer it again.
    wait_until: Option<(i64, i64)>,
    /// A record made an output Kafka cannot take: the batch must not commit.
    refused: Option<LoopError>,
    /// What became of each record, counted once the batch is committed.
    outcomes: Outcomes,
}

/// What a partition task shares with the loop.
struct PartitionContext<'a> {
    router: &'a FailureRouter,
    ordering: Option<&'a KeyOrdering>,
    /// Where outputs go as they are made; when absent they are returned with the result.
    sink: Option<&'a dyn OutputSink>,
    refusals: &'a Refusals,
    /// The producer's `message.max.bytes`.
    max_record: u64,
    metrics: &'a LoopMetrics,
    group: &'a str,
}

async fn handle_partition<H: Handler>(
    tp: TopicPartition,
    records: Vec<Record>,
    handler: &H,
    ctx: &PartitionContext<'_>,
) -> PartitionResult {
    let PartitionContext {
        router,
        metrics,
        group,
        ..
    } = *ctx;
    let mut result = PartitionResult {
        tp,
        outputs: Vec::new(),
        next_offset: None,
        wait_until: None,
        refused: None,
        outcomes: Outcomes::default(),
    };
    for record in records {
        if let Some(due) = record.header(h::DUE_AT).and_then(|d| d.parse::<i64>().ok()) {
            if router.tier_of(&record.topic).is_some() && due > now_ms() {
                result.wait_until = Some((record.offset, due));
                break;
            }
        }
        if let Some(refusal) = ctx.refusals.get(&record) {
            // Its outputs were refused last time round: dead-lettered unhandled, outside
            // per-key ordering (nothing of it can ever be delivered in order).
            let error = refusal.error;
            let (_, mut copy) = router.route(&record, &error, now_ms());
            refusals::fit_failure_copy(&mut copy, ctx.max_record, refusal.copies_refused);
            result.outcomes.note(
                original_topic(&record),
                failure_outcome(&error, &Routed::DeadLetter),
            );
            emit(
                ctx,
                &mut result,
                0,
                Origin::failure_copy(&record, &error),
                copy,
            );
            result.next_offset = Some(record.offset + 1);
            continue;
        }
        if let Admit::Later(delay) = handler.admit(&record) {
            result.wait_until = Some((record.offset, now_ms() + delay.as_millis() as i64));
            break;
        }
        let (stamp, decision) = match ctx.ordering {
            Some(o) => o.decide(&record),
            None => (0, Decision::Free),
        };
        let slot = match decision {
            Decision::Forward(copy) => {
                // Waits behind its key's head, unhandled.
                let cause = HandlerError::permanent(
                    ErrorClass::RecordTooLarge,
                    "its copy waiting behind its key's head was refused",
                );
                let origin = Origin::failure_copy(&record, &cause);
                result.outputs.push((stamp, Some(origin), copy));
                result.next_offset = Some(record.offset + 1);
                continue;
            }
            Decision::Handle(slot) => Some(slot),
            Decision::Free => None,
        };
        let started = Instant::now();
        let outcome = handler.handle(&record).await;
        metrics
            .handler_seconds
            .with_label_values(&[group])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(outputs) => {
                if let Some(e) = oversized(ctx, &record, &outputs) {
                    result.refused = Some(e);
                    break;
                }
                result
                    .outcomes
                    .note(original_topic(&record), RecordOutcome::Ok);
                for o in outputs {
                    emit(ctx, &mut result, stamp, Origin::output(&record), o);
                }
                if let (Some(o), Some(slot)) = (ctx.ordering, &slot) {
                    o.resolved(slot);
                }
            }
            Err(error) => {
                let (routed, mut copy) = router.route(&record, &error, now_ms());
                refusals::fit_failure_copy(&mut copy, ctx.max_record, 0);
                if let (Some(o), Some(slot)) = (ctx.ordering, &slot) {
                    match routed {
                        Routed::Retry { tier, .. } => o.retried(slot, tier, &mut copy),
                        Routed::DeadLetter => o.resolved(slot),
                    }
                }
                result
                    .outcomes
                    .note(original_topic(&record), failure_outcome(&error, &routed));
                tracing::debug!(group, topic = record.topic, offset = record.offset, %error, ?routed, "record failed");
                emit(
                    ctx,
                    &mut result,
                    stamp,
                    Origin::failure_copy(&record, &error),
                    copy,
                );
            }
        }
        result.next_offset = Some(record.offset + 1);
    }
    result
}

/// Hands `output` to the producer at once, or keeps it for the batch's ordered write.
fn emit(
    ctx: &PartitionContext<'_>,
    result: &mut PartitionResult,
    stamp: u64,
    origin: Origin,
    output: Output,
) {
    match ctx.sink {
        Some(sink) => sink.send(Some(origin), &output),
        None => result.outputs.push((stamp, Some(origin), output)),
    }
}

/// The refusal of the first of `record`'s outputs the producer could never send.
fn oversized(ctx: &PartitionContext<'_>, record: &Record, outputs: &[Output]) -> Option<LoopError> {
    let o = outputs
        .iter()
        .find(|o| refusals::output_size(o) > ctx.max_record)?;
    Some(LoopError::refused(
        ctx.refusals,
        &Origin::output(record),
        RefusalClass::RecordTooLarge,
        format!(
            "its output to {} is {} bytes, over the producer's message.max.bytes ({})",
            o.topic,
            refusals::output_size(o),
            ctx.max_record
        ),
    ))
}

fn failure_outcome(error: &HandlerError, routed: &Routed) -> RecordOutcome {
    match routed {
        Routed::Retry { tier, .. } => RecordOutcome::Retried { tier: *tier },
        Routed::DeadLetter => RecordOutcome::DeadLettered {
            class: error.class().to_string(),
        },
    }
}

/// The topic a record first came from, for metric labels.
fn original_topic(record: &Record) -> String {
    record
        .header(h::ORIGINAL_TOPIC)
        .unwrap_or(&record.topic)
        .to_string()
}

#[cfg(test)]
mod tests;
