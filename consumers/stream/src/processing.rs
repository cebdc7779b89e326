//! The loop itself: collect a batch, handle it partition by partition, then commit the
//! outputs and offsets together (exactly-once) or in order (at-least-once).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::kafka::{set_default, KafkaClients, Reports};
use sluice_runtime::Shutdown;

use super::batch::{self, Batch, Ended, OutputSink, Shared};
use super::failure::FailureRouter;
use super::metrics::{LoopMetrics, Phase};
use super::ordering::{self, KeyOrdering, OrderingError};
use super::outcome::RecordOutcome;
use super::rebalance::{LoopContext, TopicPartition};
use super::refusals::{self, Origin, RefusalClass, Refusals};
use super::state::KafkaStateLog;
use super::{Guarantee, Handler, LoopConfig, Output, Record};

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Client(#[from] sluice_runtime::kafka::ClientError),
    #[error(transparent)]
    Config(#[from] sluice_runtime::ConfigError),
    #[error("{what}: {source}")]
    Kafka {
        what: &'static str,
        source: KafkaError,
    },
    #[error("restoring state for newly assigned partitions failed: {0}")]
    Restore(String),
    #[error("a partition's handler task failed: {0}")]
    HandlerTask(String),
    #[error("the consumer has no group metadata to commit offsets with")]
    NoGroupMetadata,
    #[error("input topics missing from the cluster: {0} (run `sluice topology apply`)")]
    MissingTopics(String),
    #[error(transparent)]
    Ordering(#[from] OrderingError),
    /// Kafka will not take an output for the record it came from; the record is
    /// dead-lettered when the batch comes round again (see [`super::refusals`]).
    #[error("{what} of {topic}/{partition}@{offset} refused ({}): {detail}", class.as_str())]
    Refused {
        what: &'static str,
        class: RefusalClass,
        topic: String,
        partition: i32,
        offset: i64,
        detail: String,
    },
}

impl LoopError {
    /// Pins the refusal on its record, and the error that fails the batch.
    pub(crate) fn refused(
        refusals: &Refusals,
        origin: &Origin,
        class: RefusalClass,
        detail: String,
    ) -> LoopError {
        refusals.note(origin, class, detail.clone());
        LoopError::Refused {
            what: if origin.is_failure_copy() {
                "the failure copy"
            } else {
                "an output"
            },
            class,
            topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            detail,
        }
    }

    /// Whether only a restart (whose producer fences this one) gets past this error: the
    /// producer is fenced or failed for good, or a commit is still unfinished after every
    /// resume. Such a transaction cannot be aborted either.
    fn needs_restart(&self) -> bool {
        matches!(
            self,
            LoopError::Kafka { source: KafkaError::Transaction(t), .. } if t.is_fatal() || t.is_retriable()
        )
    }
}

fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> LoopError {
    move |source| LoopError::Kafka { what, source }
}

/// The exactly-once loop's producer, with transactions initialised: which fences this
/// member's predecessor and aborts the transaction it left open.
async fn transactional_producer(
    clients: &KafkaClients,
    config: &LoopConfig,
) -> Result<FutureProducer, LoopError> {
    let p: FutureProducer = clients
        .loop_producer_config(
            "consumer",
            &format!("{}-{}", config.group, config.instance_id),
        )?
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        )
        .create()
        .map_err(kafka("creating the transactional producer"))?;
    let init = p.clone();
    blocking(move || init.init_transactions(Duration::from_secs(30)))
        .map_err(kafka("initialising transactions"))?;
    Ok(p)
}

/// Fences the previous incarnation of exactly-once member `instance_id` of `group` now,
/// before the loop can start: a member killed mid-transaction leaves it open, and until it
/// is aborted every `read_committed` reader of the partitions it wrote stops at it (up to
/// the transaction timeout). A process that must wait before it runs its loop (for the
/// schema registry, say) calls this first, so downstream consumers are not held up meanwhile.
pub async fn fence_predecessor(
    clients: &KafkaClients,
    group: &str,
    instance_id: &str,
) -> Result<(), LoopError> {
    let config = LoopConfig::new(group, instance_id, Vec::new(), Guarantee::ExactlyOnce);
    drop(transactional_producer(clients, &config).await?);
    Ok(())
}

/// Runs the loop until shutdown. Returns an error only for failures a restart must fix
/// (a fenced producer, a commit whose outcome stays unknown, a broken state restore).
///
/// Each turn goes through named phases: [`Loop::collect_batch`] polls (outside any
/// transaction), [`Loop::apply_rebalance`] drops and restores state for partitions that
/// moved, [`Loop::handle_batch`] runs the handler on each partition's records concurrently,
/// [`Loop::write_batch`] commits the outputs and offsets (one transaction, or outputs then
/// offsets), and [`Loop::settle`] counts what was committed or rewinds what was not.
pub async fn run<H: Handler>(
    clients: &KafkaClients,
    config: LoopConfig,
    router: FailureRouter,
    handler: Arc<H>,
    metrics: LoopMetrics,
    shutdown: Shutdown,
) -> Result<(), LoopError> {
    let mut lp = Loop::start(clients, config, router, handler, metrics).await?;
    while !shutdown.is_triggered() {
        lp.resume_due()?;
        let Some(mut batch) = lp.collect_batch(&shutdown).await? else {
            break;
        };
        lp.apply_rebalance(&mut batch).await?;
        if batch.is_empty() {
            continue;
        }
        lp.note_pickup(&batch);
        let handling = Instant::now();
        let mut handled = lp.handle_batch(batch).await?;
        lp.shared
            .metrics
            .phase(&lp.shared.group, Phase::Handle, handling);
        let written = lp.write_batch(&mut handled).await;
        lp.settle(handled, written).await?;
    }
    lp.stop();
    Ok(())
}

/// A running loop: its clients, its handler and what it tracks between batches.
struct Loop<'c, H> {
    clients: &'c KafkaClients,
    config: LoopConfig,
    /// The handler, failure routing, key ordering and metrics the batches share.
    shared: Shared<H>,
    consumer: StreamConsumer<LoopContext>,
    producer: FutureProducer,
    assigned: HashSet<TopicPartition>,
    /// Retry-tier partitions waiting for their next record to be due.
    paused: BTreeMap<TopicPartition, i64>,
}

/// A batch after its handling, with the state of its write.
struct Handled {
    batch: Batch,
    /// Whether the batch's transaction is open (exactly-once), or why it is not.
    begun: Result<(), LoopError>,
    /// Outputs already handed to the producer while handling.
    stream: Option<Arc<OutputStream>>,
}

impl<'c, H: Handler> Loop<'c, H> {
    /// Creates the consumer and producer, checks the inputs, subscribes.
    async fn start(
        clients: &'c KafkaClients,
        config: LoopConfig,
        router: FailureRouter,
        handler: Arc<H>,
        metrics: LoopMetrics,
    ) -> Result<Self, LoopError> {
        if let Some(per_key) = &config.per_key {
            per_key.check_guarantee(config.guarantee)?;
        }
        // Per-key ordering needs partition i of every topic on one member (see `ordering`):
        // `range` does that for topics with equal partition counts, checked below.
        let assignor = match config.per_key {
            Some(_) => "range",
            None => "cooperative-sticky",
        };
        let consumer: StreamConsumer<LoopContext> = consumer_config(clients, &config, assignor)?
            .create_with_context(LoopContext::default())
            .map_err(kafka("creating the consumer"))?;
        let ordering: Option<Arc<KeyOrdering>> = match &config.per_key {
            Some(per_key) => {
                let mut all = config.topics.clone();
                all.push(per_key.held_topic.clone());
                blocking(|| ordering::check_partitions(&consumer, &per_key.policy, &all))?;
                Some(Arc::new(KeyOrdering::new(per_key.clone(), router.clone())))
            }
            None => None,
        };
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        blocking(|| wait_for_topics(&consumer, &topics, TOPICS_TIMEOUT))?;
        consumer.subscribe(&topics).map_err(kafka("subscribing"))?;

        let producer: FutureProducer = match config.guarantee {
            Guarantee::ExactlyOnce => transactional_producer(clients, &config).await?,
            Guarantee::AtLeastOnce => clients
                .producer_config("consumer")?
                .create()
                .map_err(kafka("creating the producer"))?,
        };
        let shared = Shared {
            handler,
            router,
            ordering,
            refusals: Arc::new(Refusals::default()),
            metrics,
            group: config.group.clone(),
            max_record: clients.producer_max_message_bytes(),
        };
        let lp = Self {
            clients,
            config,
            shared,
            consumer,
            producer,
            assigned: HashSet::new(),
            paused: BTreeMap::new(),
        };
        lp.zero_series();
        tracing::info!(group = lp.shared.group, topics = ?lp.config.topics, guarantee = ?lp.config.guarantee, "consumer loop started");
        Ok(lp)
    }

    /// Starts every known series at zero, so dashboards and alerts see them before the
    /// first failure rather than an absent metric.
    fn zero_series(&self) {
        let (metrics, group) = (&self.shared.metrics, self.shared.group.as_str());
        for topic in self
            .config
            .topics
            .iter()
            .filter(|t| self.shared.router.tier_of(t).is_none())
        {
            for outcome in RecordOutcome::LABELS {
                metrics.records.with_label_values(&[group, topic, outcome]);
            }
            for tier in 0..self.shared.router.tiers.len() {
                metrics
                    .retries
                    .with_label_values(&[group, topic, &tier.to_string()]);
            }
        }
        for outcome in ["committed", "aborted"] {
            metrics.transactions.with_label_values(&[group, outcome]);
        }
        metrics.paused_partitions.with_label_values(&[group]).set(0);
        metrics.in_flight.with_label_values(&[group]).set(0);
        metrics.held_keys.with_label_values(&[group]).set(0);
        for phase in Phase::ALL {
            metrics
                .phase_seconds
                .with_label_values(&[group, phase.as_str()]);
        }
        metrics.pickup_delay_seconds.with_label_values(&[group]);
    }

    /// Records how long the batch's oldest record waited before the loop took it.
    fn note_pickup(&self, batch: &[Record]) {
        if let Some(oldest) = batch.iter().filter_map(|r| r.timestamp_ms).min() {
            let waited = (now_ms() - oldest).max(0) as f64 / 1000.0;
            self.shared
                .metrics
                .pickup_delay_seconds
                .with_label_values(&[&self.shared.group])
                .observe(waited);
        }
    }

    /// Resumes the retry-tier partitions whose next record is due.
    fn resume_due(&mut self) -> Result<(), LoopError> {
        resume_due(
            &self.consumer,
            &mut self.paused,
            &self.shared.metrics,
            &self.shared.group,
        )
    }

    /// Up to `max_batch` records, waiting at most `linger` once the first arrived; `None`
    /// on shutdown. Polling happens only here, outside any transaction.
    async fn collect_batch(&self, shutdown: &Shutdown) -> Result<Option<Vec<Record>>, LoopError> {
        let next_resume = self
            .paused
            .values()
            .min()
            .map(|due| Duration::from_millis((due - now_ms()).max(0) as u64));
        let mut batch: Vec<Record> = Vec::new();
        let wait = next_resume.unwrap_or(Duration::from_secs(1));
        let consumer = &self.consumer;
        tokio::select! {
            _ = shutdown.wait() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
            first = consumer.recv() => {
                match first {
                    Ok(m) => {
                        // Only forgets revocations from before this batch.
                        consumer.context().drop_revoked(&mut batch);
                        batch.push(Record::from_message(&m));
                    }
                    Err(e) => {
                        consume_error(e, &self.shared.group)?;
                        return Ok(Some(batch));
                    }
                }
                let deadline = Instant::now() + self.config.linger;
                let mut bytes = batch.iter().map(Record::size).sum::<usize>();
                while batch.len() < self.config.max_batch && bytes < self.config.max_batch_bytes {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, consumer.recv()).await {
                        Ok(Ok(m)) => {
                            consumer.context().drop_revoked(&mut batch);
                            let record = Record::from_message(&m);
                            bytes += record.size();
                            batch.push(record);
                        }
                        Ok(Err(e)) => {
                            consume_error(e, &self.shared.group)?;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        consumer.context().drop_revoked(&mut batch);
        Ok(Some(batch))
    }

    /// Applies an assignment change: drops the state of revoked partitions, restores the
    /// state of added ones, and keeps only `batch`'s records of partitions still owned.
    async fn apply_rebalance(&mut self, batch: &mut Vec<Record>) -> Result<(), LoopError> {
        if !self
            .consumer
            .context()
            .changed
            .swap(false, Ordering::SeqCst)
        {
            return Ok(());
        }
        let group = self.shared.group.clone();
        let now: HashSet<TopicPartition> = self
            .consumer
            .assignment()
            .map_err(kafka("reading the assignment"))?
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let (revoked, added) = self.consumer.context().changes(&self.assigned, &now);
        if !revoked.is_empty() {
            tracing::info!(group, ?revoked, "partitions revoked");
            for tp in &revoked {
                self.paused.remove(tp);
            }
            self.shared.handler.on_revoked(&revoked);
            if let Some(o) = &self.shared.ordering {
                o.forget(&revoked.iter().map(|(_, p)| *p).collect());
            }
        }
        if !added.is_empty() {
            tracing::info!(group, ?added, "partitions assigned");
            // A partition paused before a revocation starts afresh.
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &added {
                tpl.add_partition(t, *p);
            }
            let _ = self.consumer.resume(&tpl);
            self.shared
                .handler
                .on_assigned(&added)
                .await
                .map_err(|e| LoopError::Restore(e.to_string()))?;
            if let Some(o) = &self.shared.ordering {
                let indices: HashSet<i32> = added.iter().map(|(_, p)| *p).collect();
                let log = KafkaStateLog::new(self.clients.clone());
                let n = blocking(|| o.restore(&log, &indices))?;
                tracing::info!(group, partitions = ?indices, keys = n, "held keys restored");
            }
        }
        self.shared
            .metrics
            .paused_partitions
            .with_label_values(&[&group])
            .set(self.paused.len() as i64);
        if let Some(o) = &self.shared.ordering {
            self.shared
                .metrics
                .held_keys
                .with_label_values(&[&group])
                .set(o.held() as i64);
        }
        self.assigned = now;
        batch.retain(|r| self.assigned.contains(&(r.topic.clone(), r.partition)));
        Ok(())
    }

    /// Opens the batch's transaction and runs the handler on each partition's records, in
    /// offset order, the partitions concurrently (see [`batch::handle`]).
    async fn handle_batch(&self, records: Vec<Record>) -> Result<Handled, LoopError> {
        self.shared
            .metrics
            .in_flight
            .with_label_values(&[&self.shared.group])
            .set(records.len() as i64);
        // The transaction opens before handling, so outputs can be produced as they are made.
        let mut begun = match self.config.guarantee {
            Guarantee::ExactlyOnce => self
                .producer
                .begin_transaction()
                .map_err(kafka("beginning a transaction")),
            Guarantee::AtLeastOnce => Ok(()),
        };
        // Without per-key ordering nothing needs the batch's outputs in a batch-wide order,
        // so each is handed to the producer as soon as it is made: producing overlaps handling.
        let stream = (begun.is_ok() && self.shared.ordering.is_none()).then(|| {
            Arc::new(OutputStream::new(
                self.producer.clone(),
                self.shared.refusals.clone(),
            ))
        });
        let mut batch = if begun.is_ok() {
            let sink = stream.clone().map(|s| s as Arc<dyn OutputSink>);
            batch::handle(&self.shared, records, sink).await?
        } else {
            Batch::unhandled(&records)
        };
        if let Some(e) = batch.refused.take() {
            // A record's output cannot be taken: this batch is abandoned and comes round
            // again with that record dead-lettered.
            begun = begun.and(Err(e));
        }
        Ok(Handled {
            batch,
            begun,
            stream,
        })
    }

    /// Writes the batch: its outputs and offsets in one transaction (exactly-once), or its
    /// outputs and then, once every one is acknowledged, its offsets (at-least-once).
    async fn write_batch(&self, handled: &mut Handled) -> Result<(), LoopError> {
        let (producer, refusals) = (&self.producer, self.shared.refusals.as_ref());
        let begun = std::mem::replace(&mut handled.begun, Ok(()));
        let stream = handled.stream.as_deref();
        let outputs = &handled.batch.outputs;
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &handled.batch.offsets {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(kafka("building offsets"))?;
        }
        match (begun, self.config.guarantee) {
            (Err(e), Guarantee::ExactlyOnce) => {
                abort_transaction(producer).await;
                Err(e)
            }
            (Err(e), Guarantee::AtLeastOnce) => Err(e),
            (Ok(()), Guarantee::ExactlyOnce) => {
                commit_transaction(
                    &self.consumer,
                    producer,
                    (outputs, stream, refusals),
                    &offsets,
                    |phase, since| self.shared.metrics.phase(&self.shared.group, phase, since),
                )
                .await
            }
            (Ok(()), Guarantee::AtLeastOnce) => {
                let (metrics, group) = (&self.shared.metrics, self.shared.group.as_str());
                let producing = Instant::now();
                produce_all(producer, outputs, stream, refusals, Reports::All).await?;
                metrics.phase(group, Phase::Produce, producing);
                if offsets.count() == 0 {
                    return Ok(());
                }
                let committing = Instant::now();
                self.consumer
                    .commit(&offsets, CommitMode::Sync)
                    .map_err(kafka("committing offsets"))?;
                metrics.phase(group, Phase::Offsets, committing);
                Ok(())
            }
        }
    }

    /// After the write: ends the batch (see [`Batch::end`]), then pauses a committed batch's
    /// retry partitions that are not due yet, or rewinds a batch that was not committed to
    /// its start (a fatal producer error, or a commit still unfinished, ends the loop
    /// instead).
    async fn settle(
        &mut self,
        handled: Handled,
        written: Result<(), LoopError>,
    ) -> Result<(), LoopError> {
        let group = self.shared.group.clone();
        self.shared
            .metrics
            .in_flight
            .with_label_values(&[&group])
            .set(0);
        match (handled.batch.end(&self.shared, written.is_ok()), written) {
            (Ended::Committed { offsets, to_pause }, _) => {
                if !self.shared.refusals.is_empty() {
                    for ((topic, partition), next) in &offsets {
                        self.shared.refusals.committed(topic, *partition, *next);
                    }
                }
                for ((topic, partition), offset, due) in to_pause {
                    pause_at(&self.consumer, &topic, partition, offset)?;
                    self.paused.insert((topic, partition), due);
                }
                self.shared
                    .metrics
                    .paused_partitions
                    .with_label_values(&[&group])
                    .set(self.paused.len() as i64);
                Ok(())
            }
            (Ended::Aborted { rewind }, Err(e)) => self.rewind(rewind, e).await,
            (Ended::Aborted { .. }, Ok(())) => unreachable!("a written batch ends committed"),
        }
    }

    /// Seeks every partition of an uncommitted batch back to where the batch started.
    async fn rewind(
        &self,
        firsts: Vec<(TopicPartition, i64)>,
        e: LoopError,
    ) -> Result<(), LoopError> {
        tracing::warn!(group = self.shared.group, error = %e, "batch not committed; rewinding to its start");
        if e.needs_restart() {
            return Err(e);
        }
        for ((topic, partition), first) in firsts {
            // A partition revoked meanwhile cannot be sought; its new owner resumes from the
            // committed offset.
            let _ = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(first),
                Duration::from_secs(5),
            );
        }
        // A refused record is dead-lettered on the next pass; anything else is given a
        // moment to clear.
        if !matches!(e, LoopError::Refused { .. }) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// Flushes what is still queued and leaves the group.
    fn stop(self) {
        tracing::info!(
            group = self.shared.group,
            "consumer loop stopping; flushing"
        );
        let p = self.producer.clone();
        let _ = blocking(move || p.flush(Duration::from_secs(10)));
        self.consumer.unsubscribe();
    }
}

/// Outputs handed to the producer as the partition tasks make them.
struct OutputStream {
    producer: FutureProducer,
    deliveries: std::sync::Mutex<Vec<Delivery>>,
    /// The first output the producer would not take: the batch then fails as a whole.
    refused: std::sync::Mutex<Option<LoopError>>,
    refusals: Arc<Refusals>,
}

/// An output handed to the producer: what it was, and its delivery report to come.
type Delivery = (Sent, DeliveryFuture);

/// What the loop keeps of an output in flight, to tell which record a refusal is about.
struct Sent {
    /// The record it was made for; `None` for batch-wide state writes.
    origin: Option<Origin>,
    topic: String,
    size: u64,
}

impl Sent {
    fn of(origin: Option<Origin>, o: &Output) -> Self {
        Self {
            origin,
            topic: o.topic.clone(),
            size: refusals::output_size(o),
        }
    }
}

impl OutputSink for OutputStream {
    fn send(&self, origin: Option<Origin>, o: &Output) {
        OutputStream::send(self, origin, o)
    }
}

impl OutputStream {
    fn new(producer: FutureProducer, refusals: Arc<Refusals>) -> Self {
        Self {
            producer,
            deliveries: Default::default(),
            refused: Default::default(),
            refusals,
        }
    }

    fn send(&self, origin: Option<Origin>, o: &Output) {
        match enqueue(&self.producer, o, origin.as_ref(), &self.refusals) {
            Ok(d) => self
                .deliveries
                .lock()
                .expect("deliveries")
                .push((Sent::of(origin, o), d)),
            Err(e) => {
                self.refused.lock().expect("refused").get_or_insert(e);
            }
        }
    }

    /// The batch's deliveries so far, or the first output the producer refused.
    fn finish(&self) -> Result<Vec<Delivery>, LoopError> {
        if let Some(e) = self.refused.lock().expect("refused").take() {
            return Err(e);
        }
        Ok(std::mem::take(
            &mut *self.deliveries.lock().expect("deliveries"),
        ))
    }
}

/// A batch's outputs: those still to produce, those already streamed, and where refusals go.
type Outputs<'a> = (
    &'a [(Option<Origin>, Output)],
    Option<&'a OutputStream>,
    &'a Refusals,
);

/// Produces the batch's outputs, adds its offsets and commits, timing each phase with
/// `timed(phase, since)`.
async fn commit_transaction(
    consumer: &StreamConsumer<LoopContext>,
    producer: &FutureProducer,
    (outputs, stream, refusals): Outputs<'_>,
    offsets: &TopicPartitionList,
    timed: impl Fn(Phase, Instant),
) -> Result<(), LoopError> {
    let result: Result<(), LoopError> = async {
        // Every output acknowledged before the commit: rdkafka's commit flushes first, and a
        // flush that finds messages in flight sleeps 100 ms per check, which would otherwise
        // be the price of every transaction.
        let started = Instant::now();
        produce_all(producer, outputs, stream, refusals, Reports::UntilFailure).await?;
        timed(Phase::Produce, started);
        let started = Instant::now();
        let metadata = consumer
            .group_metadata()
            .ok_or(LoopError::NoGroupMetadata)?;
        blocking(|| {
            resume_while_retriable("adding offsets to the transaction", || {
                producer.send_offsets_to_transaction(offsets, &metadata, Duration::from_secs(30))
            })
        })?;
        timed(Phase::Offsets, started);
        let started = Instant::now();
        blocking(|| {
            resume_while_retriable("committing the transaction", || {
                producer.commit_transaction(Duration::from_secs(60))
            })
        })?;
        timed(Phase::Commit, started);
        Ok(())
    }
    .await;
    if matches!(&result, Err(e) if !e.needs_restart()) {
        abort_transaction(producer).await;
    }
    result
}

/// [`sluice_runtime::kafka::resume_while_retriable`], its error as the loop's.
fn resume_while_retriable(
    what: &'static str,
    call: impl Fn() -> rdkafka::error::KafkaResult<()>,
) -> Result<(), LoopError> {
    sluice_runtime::kafka::resume_while_retriable(what, call).map_err(kafka(what))
}

/// Aborts the open transaction (see [`sluice_runtime::kafka::abort_transaction`]). Other
/// errors (nothing open, fenced) are for the next `begin_transaction` to report.
async fn abort_transaction(producer: &FutureProducer) {
    let _ = sluice_runtime::kafka::abort_transaction(producer, Duration::from_secs(30)).await;
}

/// Produces the batch's remaining `outputs` after those already streamed, and waits until
/// every one is acknowledged (an error when one failed; `reports` says how long it waits
/// after that), then until the producer holds no message at all (a delivery resolves
/// just before librdkafka lets go of its message).
async fn produce_all(
    producer: &FutureProducer,
    outputs: &[(Option<Origin>, Output)],
    stream: Option<&OutputStream>,
    refusals: &Refusals,
    reports: Reports,
) -> Result<(), LoopError> {
    let mut deliveries = match stream {
        Some(stream) => stream.finish()?,
        None => Vec::new(),
    };
    for (origin, o) in outputs {
        let d = enqueue(producer, o, origin.as_ref(), refusals)?;
        deliveries.push((Sent::of(origin.clone(), o), d));
    }
    let failed = reports.failures(deliveries).await;
    if !failed.is_empty() {
        return Err(delivery_failure(failed, refusals));
    }
    sluice_runtime::kafka::drained(producer, Duration::from_secs(1)).await;
    Ok(())
}

/// The error of a batch some of whose outputs failed, with refusals pinned on the records
/// they are about (see [`refusals::blame`]).
fn delivery_failure(failed: Vec<(Sent, KafkaError)>, refusals: &Refusals) -> LoopError {
    let blamed = refusals::blame(&failed, |s| {
        s.origin.as_ref().map(|_| (s.topic.as_str(), s.size))
    });
    let mut first = None;
    for (sent, e, class) in blamed {
        if let Some(origin) = &sent.origin {
            first.get_or_insert(LoopError::refused(refusals, origin, class, e.to_string()));
        }
    }
    let source = failed
        .into_iter()
        .next()
        .map_or(KafkaError::Canceled, |(_, e)| e);
    first.unwrap_or(LoopError::Kafka {
        what: "producing an output",
        source,
    })
}

fn enqueue(
    producer: &FutureProducer,
    o: &Output,
    origin: Option<&Origin>,
    refusals: &Refusals,
) -> Result<rdkafka::producer::DeliveryFuture, LoopError> {
    producer
        .send_result(o.record())
        .map_err(|(e, _)| produce_error("enqueuing an output", e, origin, refusals))
}

/// A refusal pinned on its record when the error is about the record itself, else the
/// Kafka error (the batch is retried as it is).
fn produce_error(
    what: &'static str,
    e: KafkaError,
    origin: Option<&Origin>,
    refusals: &Refusals,
) -> LoopError {
    match (RefusalClass::of(&e), origin) {
        (Some(class), Some(origin)) => LoopError::refused(refusals, origin, class, e.to_string()),
        _ => LoopError::Kafka { what, source: e },
    }
}

fn resume_due(
    consumer: &StreamConsumer<LoopContext>,
    paused: &mut BTreeMap<TopicPartition, i64>,
    metrics: &LoopMetrics,
    group: &str,
) -> Result<(), LoopError> {
    let now = now_ms();
    let due: Vec<TopicPartition> = paused
        .iter()
        .filter(|(_, d)| **d <= now)
        .map(|(tp, _)| tp.clone())
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for tp in &due {
        tpl.add_partition(&tp.0, tp.1);
        paused.remove(tp);
    }
    consumer
        .resume(&tpl)
        .map_err(kafka("resuming a retry partition"))?;
    metrics
        .paused_partitions
        .with_label_values(&[group])
        .set(paused.len() as i64);
    Ok(())
}

/// Holds a retry-tier partition at `offset` until its record is due: the partition is paused
/// (other partitions and the main topic keep flowing) and rewound so the record is fetched
/// again on resume.
fn pause_at(
    consumer: &StreamConsumer<LoopContext>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), LoopError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer
        .pause(&tpl)
        .map_err(kafka("pausing a retry partition"))?;
    // A seek can fail while the partition's fetcher is still starting; without it the
    // records after `offset` would be skipped, so try again before giving up (a restart
    // resumes from the committed offset, which is `offset`).
    let mut attempt = 0;
    loop {
        match consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(topic, partition, offset, error = %e, "rewinding a retry partition failed; trying again");
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            Err(e) => return Err(kafka("rewinding a retry partition")(e)),
        }
    }
}

/// How long the loop waits at start for its input topics to appear in the cluster metadata.
const TOPICS_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the broker's metadata has every input topic. A subscribed topic the group
/// leader does not see when the group forms is left out of the assignment until the next
/// metadata refresh, minutes later: a topic created just before the loop starts (a fresh
/// deployment, a new retry tier) would sit unread.
fn wait_for_topics(
    consumer: &StreamConsumer<LoopContext>,
    topics: &[&str],
    timeout: Duration,
) -> Result<(), LoopError> {
    let deadline = Instant::now() + timeout;
    loop {
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map_err(kafka("reading cluster metadata"))?;
        let missing: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| {
                !metadata
                    .topics()
                    .iter()
                    .any(|m| m.name() == *t && m.error().is_none() && !m.partitions().is_empty())
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LoopError::MissingTopics(missing.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Errors the consumer reports between messages (a topic whose metadata has not reached the
/// client yet, a broker connection that dropped) clear up on their own: librdkafka retries
/// them. Only a fatal error ends the loop; the rest are logged and the loop polls again.
fn consume_error(e: KafkaError, group: &str) -> Result<(), LoopError> {
    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
        return Err(LoopError::Kafka {
            what: "consuming",
            source: e,
        });
    }
    tracing::warn!(group, error = %e, "consumer reported an error; polling again");
    Ok(())
}

/// Runs a blocking librdkafka call without stalling the async runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub fn now_ms() -> i64 {
    sluice_schemas::metadata::now_ms()
}

/// The loop's consumer: `clients`' consumer settings, `assignor`, and the loop's read-ahead in
/// records unless `kafka.properties` sets `queued.min.messages`.
fn consumer_config(
    clients: &KafkaClients,
    config: &LoopConfig,
    assignor: &str,
) -> Result<rdkafka::ClientConfig, LoopError> {
    let mut c = clients.consumer_config("consumer", &config.group)?;
    c.set("partition.assignment.strategy", assignor);
    if let Some(records) = config.read_ahead_records {
        set_default(&mut c, "queued.min.messages", &records.to_string());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::config::KafkaConfig;

    #[test]
    fn the_read_ahead_in_records_applies_unless_kafka_properties_set_it() {
        let mut config = LoopConfig::new("g", "i", vec!["t".into()], Guarantee::ExactlyOnce);
        let clients = KafkaClients::new(KafkaConfig::default());
        let c = consumer_config(&clients, &config, "range").unwrap();
        assert_eq!(c.get("queued.min.messages"), None, "librdkafka's own");
        assert_eq!(c.get("partition.assignment.strategy"), Some("range"));

        config.read_ahead_records = Some(2_000);
        let c = consumer_config(&clients, &config, "range").unwrap();
        assert_eq!(c.get("queued.min.messages"), Some("2000"));

        let mut kafka = KafkaConfig::default();
        kafka
            .properties
            .insert("queued.min.messages".into(), "50000".into());
        let c = consumer_config(&KafkaClients::new(kafka), &config, "range").unwrap();
        assert_eq!(c.get("queued.min.messages"), Some("50000"));
    }
}
