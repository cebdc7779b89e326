//! One owned lane: its transactional producer, its ordering state, and one batch at a time.
//!
//! A batch is one Kafka transaction holding the lane's events (or dead letters) and the
//! lane's new position. Any failure aborts it and drops the lane; the relay claims it again,
//! which re-initialises the producer (fencing whatever it left open) and reads the position
//! back from Kafka: the in-memory state is never trusted past an error.
//!
//! Each lane runs as a task of its own, so no lane waits for another's Kafka commit. While a
//! batch's transaction runs, the lane reads its next batch (read-only: rows after the plan's
//! cursor, of ended transactions) and deletes what the previous transaction covered
//! (cleanup only): the database round trips hide behind the Kafka ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_runtime::kafka::{abort_transaction, KafkaClients, Reports};
use sluice_runtime::Shutdown;
use sluice_stream::refusals::{blame, RefusalClass};
use sluice_stream::state::kafka::read_partitions;

use super::db::{Db, DbError};
use super::Relay;
use crate::event::{AggregateKey, OutboxRow, Position};
use crate::sequencer::{Durable, Plan, Sequencer};
use crate::{position, records};

/// While a backlog is drained, relayed rows are deleted at most every this many batches.
const CLEANUP_EVERY_BATCHES: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("lane {lane}: {what}: {source}")]
    Kafka {
        lane: u32,
        what: &'static str,
        source: KafkaError,
    },
    #[error("lane {lane}: reading its position from {topic}: {reason}")]
    Restore {
        lane: u32,
        topic: String,
        reason: String,
    },
    #[error("lane {lane}: {0}", lane = .1)]
    Db(#[source] DbError, u32),
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing new to publish.
    Idle,
    /// Published a batch; there may be more.
    Published { rows: usize },
}

pub struct Lane {
    pub lane: u32,
    producer: FutureProducer,
    sequencer: Sequencer,
    partition: i32,
    last_backlog: Option<Instant>,
    /// Rows of the lane up to here are deleted (zero: none known to be).
    deleted_through: Position,
    /// The next batch, read while the last one was published; it starts at the cursor.
    prefetched: Option<(Position, Vec<OutboxRow>)>,
    /// Rows relayed since the last cleanup: while a backlog is drained, cleanup waits until
    /// the lane catches up or this many batches are behind it.
    undeleted: u64,
    /// The lane's own database session (reads, deletes, backlog), so lanes do not queue
    /// behind each other's statements.
    db: Db,
    /// Aggregates forgotten (their sequences now in PostgreSQL) whose Kafka state records
    /// the next transaction deletes.
    forgetting: Vec<AggregateKey>,
    /// After a failed write to `<table>_relayed`, none is tried again before this.
    forget_not_before: Option<Instant>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("lane", &self.lane).finish()
    }
}

/// A lane whose previous producer is fenced (so whatever transaction it left open is
/// aborted), its position not read yet: see [`Relay`]'s `balance`, which fences every lane it
/// claims before reading any position back.
pub struct Fenced {
    lane: u32,
    producer: FutureProducer,
}

impl Lane {
    /// Fences `lane`'s previous producer in Kafka. Lanes share state partitions, and a
    /// position is read back only up to the partition's last stable offset, which a
    /// transaction left open by another lane's dead producer holds back until it times
    /// out: so a relay taking over several lanes (after a broker outage failed them all)
    /// fences all of them before it reads any position.
    pub async fn fence(relay: &Arc<Relay>, lane: u32) -> Result<Fenced, LaneError> {
        let producer = relay
            .clients
            .fenced_loop_producer(
                "outbox-relay",
                &format!("outbox-{}-lane-{lane}", relay.settings.table),
            )
            .await
            .map_err(|e| LaneError::Kafka {
                lane,
                what: e.what,
                source: e.source,
            })?;
        Ok(Fenced { lane, producer })
    }

    /// Takes over a fenced lane: reads its position and opens its database session.
    pub async fn open(relay: &Arc<Relay>, fenced: Fenced, dsn: &str) -> Result<Self, LaneError> {
        let Fenced { lane, producer } = fenced;
        let partition =
            position::partition_of(relay.settings.table.as_str(), lane, relay.state_partitions);
        let durable = restore(
            relay.clients.clone(),
            relay.state_topic.clone(),
            relay.settings.table.to_string(),
            lane,
            partition,
        )
        .await?;
        let db = Db::connect_lane(dsn, &relay.settings.table, relay.settings.lanes)
            .await
            .map_err(|e| LaneError::Db(e, lane))?;
        tracing::info!(lane, watermark = ?durable.watermark, aggregates = durable.last.len(), "outbox lane claimed");
        Ok(Self {
            lane,
            producer,
            sequencer: Sequencer::restore(durable),
            partition,
            last_backlog: None,
            deleted_through: Default::default(),
            prefetched: None,
            undeleted: 0,
            db,
            forgetting: Vec::new(),
            forget_not_before: None,
        })
    }

    /// Steps the lane until `stop` (between batches, never inside one) or an error; sleeps
    /// a poll interval whenever there is nothing new, unless another lane finds rows first
    /// (a service transaction usually writes to several lanes, so the others look at once
    /// instead of each waiting out its own interval).
    pub async fn run(mut self, relay: Arc<Relay>, stop: Shutdown) -> Result<(), LaneError> {
        while !stop.is_triggered() {
            // Listening before the step: rows committed while it reads (too late for it)
            // still wake the sleep after it.
            let woken = relay.rows_found.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.step(&relay).await? == Step::Idle {
                tokio::select! {
                    _ = tokio::time::sleep(relay.settings.poll_interval) => {}
                    _ = woken => {}
                    _ = stop.wait() => {}
                }
            }
        }
        Ok(())
    }

    /// Takes the next eligible rows (prefetched, or read now) and publishes what is next in
    /// line, with the new position, in one Kafka transaction; meanwhile reads the batch after
    /// and deletes what the previous transaction covered.
    pub async fn step(&mut self, relay: &Arc<Relay>) -> Result<Step, LaneError> {
        let lane = self.lane;
        let s = &relay.settings;
        let cursor = self.sequencer.cursor();
        let rows = match self.prefetched.take() {
            // An empty prefetch is read again: rows may have committed since.
            Some((after, rows)) if after == cursor && !rows.is_empty() => rows,
            _ => {
                let rows = self.read(cursor, s.batch_size).await?;
                if !rows.is_empty() {
                    // Wakes the lanes sleeping out their poll interval (not a permit: a lane
                    // busy right now reads on anyway).
                    relay.rows_found.notify_waiters();
                }
                rows
            }
        };
        let full = rows.len() as u32 >= s.batch_size;
        self.look_up(relay, &rows).await?;
        let plan = self.sequencer.plan(rows, Instant::now(), s.gap_report);
        self.report(relay, &plan);
        // Forgotten aggregates' state records still to delete make a transaction too: a lane
        // over its bound with no new rows (restored from a larger state) shrinks all the same.
        if !plan.is_durable_change(&self.sequencer) && self.forgetting.is_empty() {
            self.sequencer.commit(plan);
            self.forget_some(relay).await;
            self.clean_up().await;
            self.observe(relay).await;
            return Ok(if full {
                Step::Published { rows: 0 }
            } else {
                Step::Idle
            });
        }
        let next = plan.cursor();
        // The cleanup shares the lane's session with the read of the next batch: during a
        // backlog it would delay that read (and compete with it in PostgreSQL), so it waits
        // until the lane catches up, or until enough rows pile up to bound the table's growth.
        let clean = !full || self.undeleted >= u64::from(s.batch_size) * CLEANUP_EVERY_BATCHES;
        let (published, prefetched, deleted) = tokio::join!(
            self.publish(relay, &plan),
            self.read(next, s.batch_size),
            async {
                if clean {
                    self.delete_relayed().await
                } else {
                    None
                }
            },
        );
        let (events, dead) = published?;
        if let Some(through) = deleted {
            self.deleted_through = through;
            self.undeleted = 0;
        }
        self.undeleted += plan.emit.len() as u64;
        // A failed prefetch is read again by the next step.
        self.prefetched = prefetched.ok().map(|rows| (next, rows));
        if dead > 0 {
            // Refusals are needed until their dead letter is committed.
            let mut refused = relay.refused.lock().expect("refused");
            for row in &plan.emit {
                refused.remove(&row.event_id);
            }
        }
        self.sequencer.commit(plan);
        self.forgetting.clear();
        self.forget_some(relay).await;
        let label = lane.to_string();
        relay
            .metrics
            .relayed
            .with_label_values(&[&label])
            .inc_by(events);
        relay
            .metrics
            .dead_lettered
            .with_label_values(&[&label])
            .inc_by(dead);
        self.observe(relay).await;
        Ok(Step::Published {
            rows: (events + dead) as usize,
        })
    }

    /// Learns the last sequences of the aggregates of `rows` the lane forgot.
    async fn look_up(&mut self, relay: &Relay, rows: &[OutboxRow]) -> Result<(), LaneError> {
        let keys = self.sequencer.unknown(rows);
        if keys.is_empty() {
            return Ok(());
        }
        let watermark = self.sequencer.durable().watermark;
        let found = self
            .db
            .relayed_sequences(&keys, watermark)
            .await
            .map_err(|e| LaneError::Db(e, self.lane))?;
        relay
            .metrics
            .lookups
            .with_label_values(&[&self.lane.to_string()])
            .inc_by(keys.len() as u64);
        self.sequencer.learn(found);
        Ok(())
    }

    /// Past `aggregates_in_memory`, writes some aggregates' last sequences (committed to
    /// Kafka) to PostgreSQL and forgets them; the next transaction deletes their Kafka
    /// records. Should the write fail, they stay remembered.
    async fn forget_some(&mut self, relay: &Relay) {
        if self.forget_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let entries = self
            .sequencer
            .to_forget(relay.settings.aggregates_in_memory);
        if entries.is_empty() {
            return;
        }
        let relayed: Vec<_> = entries.iter().filter(|(_, s)| *s > 0).cloned().collect();
        match self.db.record_relayed(&relayed).await {
            Ok(()) => {
                tracing::debug!(
                    lane = self.lane,
                    aggregates = entries.len(),
                    "aggregates forgotten (kept in PostgreSQL)"
                );
                self.sequencer.forget(entries.iter().map(|(k, _)| k));
                self.forgetting.extend(entries.into_iter().map(|(k, _)| k));
            }
            Err(e) => {
                tracing::warn!(lane = self.lane, error = %e, "could not write aggregates to PostgreSQL; the lane keeps them in memory and tries again in a minute");
                self.forget_not_before = Some(Instant::now() + Duration::from_secs(60));
            }
        }
    }

    async fn read(&self, after: Position, limit: u32) -> Result<Vec<OutboxRow>, LaneError> {
        let started = Instant::now();
        let rows = self
            .db
            .read_batch(self.lane, after, limit)
            .await
            .map_err(|e| LaneError::Db(e, self.lane))?;
        tracing::debug!(lane = self.lane, rows = rows.len(), took = ?started.elapsed(), "outbox rows read");
        Ok(rows)
    }

    /// Deletes the rows the committed position covers and earlier cleanups left.
    async fn clean_up(&mut self) {
        if let Some(through) = self.delete_relayed().await {
            self.deleted_through = through;
            self.undeleted = 0;
        }
    }

    /// The cleanup without recording it: returns how far it deleted. Run next to a publish,
    /// it records nothing, so a failed or skipped delete is simply done again later.
    async fn delete_relayed(&self) -> Option<Position> {
        let through = self.sequencer.durable().watermark;
        if through <= self.deleted_through {
            return None;
        }
        let started = Instant::now();
        match self
            .db
            .delete_between(self.lane, self.deleted_through, through)
            .await
        {
            Ok(deleted) => {
                tracing::debug!(lane = self.lane, deleted, took = ?started.elapsed(), "outbox rows cleaned up");
                Some(through)
            }
            Err(e) => {
                tracing::warn!(lane = self.lane, error = %e, "could not delete relayed rows (they stay until the next batch)");
                None
            }
        }
    }

    /// One transaction: the plan's records, then the lane's position.
    async fn publish(&self, relay: &Arc<Relay>, plan: &Plan) -> Result<(u64, u64), LaneError> {
        let lane = self.lane;
        let kafka = |what| move |source| LaneError::Kafka { lane, what, source };
        self.producer
            .begin_transaction()
            .map_err(kafka("beginning a transaction"))?;
        let started = Instant::now();
        let result = async {
            let table = relay.settings.table.as_str();
            let mut deliveries = Vec::with_capacity(plan.emit.len() + plan.advanced.len() + 1);
            // Every record is encoded before the first is enqueued: enqueued in one burst,
            // they leave in a few large produce requests per partition instead of a trickle
            // of small ones (each a request the broker handles and a compression context).
            let encoded = self.encode(relay, plan);
            let encoded_in = started.elapsed();
            let (mut events, mut dead) = (0, 0);
            for (row, out) in &encoded {
                if out.dead_letter {
                    dead += 1;
                } else {
                    events += 1;
                }
                let headers = owned_headers(&out.headers);
                let record = FutureRecord::to(&out.topic)
                    .key(&out.key)
                    .payload(&out.payload)
                    .headers(headers);
                let delivery = self
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| {
                        note_refusal(relay, row, &e);
                        e
                    })
                    .map_err(kafka("enqueuing a record"))?;
                let size = (out.key.len() + out.payload.len()) as u64;
                deliveries.push((Some((*row, out.topic.as_str(), size)), delivery));
            }
            // Deletions first: an aggregate forgotten and relayed again since keeps its value.
            let mut state: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
                .forgetting
                .iter()
                .map(|a| (position::aggregate_key(table, lane, a), None))
                .collect();
            state.extend(plan.advanced.iter().map(|(a, s)| {
                (
                    position::aggregate_key(table, lane, a),
                    Some(position::sequence_value(*s)),
                )
            }));
            state.push((
                position::watermark_key(table, lane),
                Some(position::watermark_value(
                    plan.watermark(),
                    self.sequencer.durable().forgotten,
                )),
            ));
            for (key, value) in &state {
                let mut record = FutureRecord::to(&relay.state_topic)
                    .partition(self.partition)
                    .key(key);
                if let Some(value) = value {
                    record = record.payload(value);
                }
                deliveries.push((
                    None,
                    self.producer
                        .send_result(record)
                        .map_err(|(e, _)| kafka("enqueuing the position")(e))?,
                ));
            }
            let enqueued = started.elapsed();
            // The acknowledgements are awaited before the commit, not next to it: started
            // at once, the commit's own flush (which waits for the delivery reports to be
            // taken off the producer's queue) added ~100 ms to every batch when measured.
            let failed = Reports::UntilFailure.failures(deliveries).await;
            if let Some((_, first)) = failed.first() {
                let blamed = blame(&failed, |sent| sent.map(|(_, topic, size)| (topic, size)));
                for (sent, e, _) in blamed {
                    if let Some((row, _, _)) = sent {
                        note_refusal(relay, row, e);
                    }
                }
                return Err(kafka("producing a record")(first.clone()));
            }
            let acked = started.elapsed();
            sluice_runtime::kafka::commit_transaction(&self.producer, Duration::from_secs(60))
                .await
                .map_err(kafka("committing the transaction"))?;
            // Where a batch's time goes, for tuning (each figure from the transaction's
            // start): encoding, enqueueing, the acknowledgements, the commit.
            tracing::debug!(lane, rows = plan.emit.len(), ?encoded_in, ?enqueued, ?acked, committed = ?started.elapsed(),
                "outbox batch published");
            Ok((events, dead))
        }
        .await;
        if result.is_err() {
            let _ = abort_transaction(&self.producer, Duration::from_secs(30)).await;
        }
        result
    }

    /// The plan's rows as records: each its event, or its dead letter (a payload off its
    /// schema, an unrouted type, or a record Kafka refused before).
    fn encode<'p>(&self, relay: &Relay, plan: &'p Plan) -> Vec<(&'p OutboxRow, records::Outgoing)> {
        let table = relay.settings.table.as_str();
        plan.emit
            .iter()
            .map(|row| {
                // Looked up row by row: the lock is never held while encoding, which other
                // lanes do at the same time.
                let refused = relay.refused.lock().expect("refused").get(&row.event_id).cloned();
                let out = match refused {
                    Some(reason) => records::refused(row, table, &relay.dlq_topic, reason),
                    None => relay.routes.encode(row, table, &relay.settings.source, &relay.dlq_topic),
                };
                if out.dead_letter {
                    tracing::warn!(lane = self.lane, row = row.position.id, event_id = %row.event_id,
                        aggregate_type = %row.aggregate_type, aggregate_id = %row.aggregate_id,
                        sequence = row.sequence, reason = %out.headers.last().map(|h| h.1.as_str()).unwrap_or_default(),
                        "outbox row dead-lettered");
                }
                (row, out)
            })
            .collect()
    }

    fn report(&self, relay: &Arc<Relay>, plan: &Plan) {
        for gap in &plan.gaps {
            relay
                .metrics
                .gaps
                .with_label_values(&[&self.lane.to_string()])
                .inc();
            tracing::error!(lane = self.lane, aggregate_type = %gap.aggregate.aggregate_type,
                aggregate_id = %gap.aggregate.aggregate_id, expected = gap.expected,
                next_held = gap.next_held, held_rows = gap.held_rows, waited = ?gap.waited,
                "gap in an aggregate's outbox sequence: its later events wait until the missing one is written");
        }
    }

    /// Refreshes the lane's gauges, at most once a second.
    async fn observe(&mut self, relay: &Arc<Relay>) {
        if self
            .last_backlog
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_backlog = Some(Instant::now());
        let label = self.lane.to_string();
        relay
            .metrics
            .held
            .with_label_values(&[&label])
            .set(self.sequencer.held_rows() as i64);
        relay
            .metrics
            .aggregates_in_memory
            .with_label_values(&[&label])
            .set(self.sequencer.durable().last.len() as i64);
        let backlog = self
            .db
            .backlog(self.lane, self.sequencer.durable().watermark)
            .await;
        if let Ok((waiting, age)) = backlog {
            relay
                .metrics
                .waiting
                .with_label_values(&[&label])
                .set(waiting);
            relay
                .metrics
                .oldest_age
                .with_label_values(&[&label])
                .set(age);
        }
    }
}

/// Remembers `row` as refused when `e` is about its record (too large, invalid), so the
/// lane's next attempt dead-letters it.
fn note_refusal(relay: &Relay, row: &OutboxRow, e: &KafkaError) {
    if let Some(class) = RefusalClass::of(e) {
        tracing::warn!(event_id = %row.event_id, row = row.position.id, class = class.as_str(), error = %e,
            "Kafka refused an outbox event; it goes to the DLQ on the next attempt");
        relay
            .refused
            .lock()
            .expect("refused")
            .insert(row.event_id, format!("{}: {e}", class.as_str()));
    }
}

fn owned_headers(pairs: &[(&'static str, String)]) -> rdkafka::message::OwnedHeaders {
    pairs
        .iter()
        .fold(rdkafka::message::OwnedHeaders::new(), |h, (k, v)| {
            h.insert(rdkafka::message::Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
}

/// The lane's durable state, read committed from its state partition.
async fn restore(
    clients: KafkaClients,
    topic: String,
    table: String,
    lane: u32,
    partition: i32,
) -> Result<Durable, LaneError> {
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        let mut durable = Durable::default();
        read_partitions(&clients, &t, &[partition], |_, key, value| {
            position::apply(&mut durable, &table, lane, key, value)
        })
        .map(|_| durable)
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
    .map_err(|reason| LaneError::Restore {
        lane,
        topic,
        reason,
    })
}
