//! The dispatcher: reads delivery tasks (the tasks topic and the retry tiers) ahead, puts
//! each on its endpoint's queue, and sends from every endpoint in turn, each attempt in a
//! task of its own, so a slow, failing or hanging endpoint only ever waits behind itself.
//!
//! It is not the stream runtime's batch loop, which handles a partition's records in
//! order: here records of one partition settle out of order, and each partition's offset is
//! committed only up to the lowest task not yet settled (a [`Watermark`]). A task is settled
//! once every record its outcome wrote is acknowledged ([`Settler::write`]). So a crash
//! re-sends at most the unsettled tasks, with the same `webhook-id`.
//!
//! - **Read-ahead** is bounded: a partition with `max_pending` unsettled tasks is paused
//!   until half of them settle. An endpoint with more than `endpoint_share` waiting is
//!   *hot*: while it keeps delivering, the partition its latest task came from is paused
//!   until its backlog halves, so a burst waits unread in Kafka rather than taking a round
//!   trip through a retry tier. A pause holds back every endpoint behind it on that
//!   partition, so it lasts at most `hot_hold`; an endpoint that is not delivering, or did
//!   not drain within the bound, has the rest parked (written to the shortest tier with the
//!   attempt count unchanged) until it is idle again, and its partitions go on.
//! - **Retry tiers**: a tier partition whose head is not yet due is paused and rewound
//!   until it is (as the stream runtime does).
//! - **Breaker open** (or limits full): the endpoint is held in its queue, and under an
//!   open breaker its waiting tasks are parked: waiting burns no attempt.
//! - **Rebalances**: the consumer uses an eager assignor, so every rebalance hands every
//!   partition out afresh from its committed offset; what was read ahead is dropped and read
//!   again, and attempts still in flight settle nothing (their records may be duplicates,
//!   with the same `webhook-id`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::outbound::{
    Attempt, EndpointSettings, FailureReason, NotAdmitted, Outbound, OutboundRequest,
    RetrySchedule, Verdict,
};
use sluice_runtime::Shutdown;
use sluice_stream::watermark::Watermark;
use sluice_stream::{Output, Record};
use tokio::sync::mpsc;

use super::events::DeliveryEvent;
use super::health::{Change, Health, HealthRecord, Outcome};
use super::key_order::{KeyOrder, Slot, Turn};
use super::metrics::DeliveryMetrics;
use super::ops_events::{OpsEvent, OpsEventType, OpsEvents};
use super::queues::{EndpointId, Lanes, Order, Queues};
use super::settle::{DispatchTopics, Settled, Settlement, Settler};
use super::tiers::Tiers;
use crate::endpoints::{BreakerSettings, Endpoint, EndpointTable, Ordering};
use crate::signing::sign_delivery;
use crate::task::{DeliveryTask, TaskError};

use super::hot::{HotHolds, TopicPartition};

/// An endpoint's (in-flight cap, rate per second, breaker), as its outbound limits were
/// set up.
type LimitSettings = (Option<u32>, Option<u32>, Option<BreakerSettings>);

/// The dispatcher consumer's `fetch.wait.max.ms` unless configured: how long a partition
/// resumed while the others are idle may wait for its first fetch.
const RESUME_FETCH_WAIT_MS: &str = "10";

/// How long an endpoint may fail continuously before it is disabled: 5 days.
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);

/// How the dispatcher runs.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub group: String,
    pub topics: DispatchTopics,
    pub tiers: Tiers,
    /// The schedule of endpoints without their own.
    pub default_schedule: RetrySchedule,
    /// Unsettled tasks per partition before it is paused.
    pub max_pending: usize,
    /// Tasks an endpoint may have waiting in memory; more wait unread (its partitions
    /// paused) or are parked.
    pub endpoint_share: usize,
    /// How long an endpoint over its share may hold partitions paused while other endpoints
    /// may be behind it (they wait as long) before its surplus is parked instead; also how
    /// recently it must have delivered to hold them at all.
    pub hot_hold: Duration,
    pub commit_interval: Duration,
    /// An endpoint failing continuously this long is disabled.
    pub disable_after: Duration,
    /// Writers of the operational events (`<prefix>.deliveries.events`), when the topology
    /// declares their topic.
    pub ops_events: Option<OpsEvents>,
    /// Attempts in flight at once across all endpoints. Each holds a connection and its
    /// buffers (about 11 KiB), so 10,000 endpoints with a few deliveries each would otherwise
    /// open tens of thousands of sockets at once; an endpoint still never has more than its
    /// own `max_in_flight`, so one hanging endpoint holds few of these. Tasks beyond it
    /// wait in their endpoints' queues, not as spawned attempts.
    pub max_attempts_in_flight: usize,
}

impl DispatcherConfig {
    pub fn new(prefix: &str, group: &str, tiers: Tiers) -> Self {
        Self {
            group: group.to_string(),
            topics: DispatchTopics::for_prefix(prefix),
            tiers,
            default_schedule: RetrySchedule::webhook_default(),
            max_pending: 2_000,
            endpoint_share: 200,
            hot_hold: Duration::from_millis(500),
            commit_interval: Duration::from_secs(1),
            disable_after: DEFAULT_DISABLE_AFTER,
            ops_events: None,
            max_attempts_in_flight: 1_024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("starting the dispatcher: {0}")]
    Start(String),
}

/// Counts rebalances, so the loop knows when what it read ahead is void.
#[derive(Default)]
struct RebalanceCounter {
    generation: AtomicU64,
}

impl ClientContext for RebalanceCounter {}

impl ConsumerContext for RebalanceCounter {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Error(_)) {
            self.generation.fetch_add(1, AtomicOrdering::SeqCst);
        }
    }
}

/// A task read and not yet settled.
#[derive(Debug, Clone)]
struct Pending {
    task: DeliveryTask,
    /// The record it was read from, without its value.
    from: Record,
    generation: u64,
    /// Its place in its key's line, once it was let go under `ordering: per_key`.
    slot: Option<Slot>,
}

impl Pending {
    fn tp(&self) -> TopicPartition {
        (self.from.topic.clone(), self.from.partition)
    }
}

/// What a finished piece of work reports to the loop.
enum Done {
    /// An unordered endpoint's attempt has its answer: its in-flight slot is free while the
    /// outcome is still being written (the task settles later, with `in_flight: false`).
    Sent {
        endpoint: EndpointId,
        generation: u64,
        delivered: bool,
    },
    /// The task's outcome is written: its offset may be committed.
    Settled {
        pending: Pending,
        /// Whether it was handed out by the queues (and so holds a slot there).
        in_flight: bool,
        /// Whether an attempt was made, and delivered.
        attempted: Option<bool>,
    },
    /// The endpoint's breaker or limits did not let the attempt start.
    NotAdmitted {
        pending: Pending,
        refusal: NotAdmitted,
    },
    /// A record that is not a task was dead-lettered: its offset may be committed.
    Discarded {
        tp: TopicPartition,
        offset: i64,
        generation: u64,
    },
    /// The write was abandoned at shutdown.
    Abandoned,
}

/// What every attempt shares.
struct Shared {
    outbound: Outbound,
    settler: Settler,
    producer: FutureProducer,
    table: EndpointTable,
    shutdown: Shutdown,
    metrics: Option<DeliveryMetrics>,
    done: mpsc::UnboundedSender<Done>,
    /// The (in-flight cap, rate) each endpoint's outbound limits were set up with.
    limits: std::sync::Mutex<HashMap<String, LimitSettings>>,
    health: std::sync::Mutex<Health>,
    ops_events: Option<OpsEvents>,
    /// Held keys of `per_key` endpoints, when the held-key topic is declared.
    key_order: Option<std::sync::Mutex<KeyOrder>>,
    /// Where held keys are read back from on assignment.
    state_log: sluice_stream::state::kafka::KafkaStateLog,
    /// Permits for attempts in flight across all endpoints.
    attempts: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn key_order(&self) -> Option<std::sync::MutexGuard<'_, KeyOrder>> {
        self.key_order
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Shared {
    /// Records how an attempt went in the endpoint's health: disables an endpoint failing for
    /// too long (its record written last, like a 410's) and adds the operational events,
    /// when their topic is declared, to what `settled` writes.
    fn observe_health(
        &self,
        endpoint: &Endpoint,
        task: &DeliveryTask,
        partition: i32,
        status_code: Option<u16>,
        settled: &mut Settled,
        now: jiff::Timestamp,
    ) {
        let event = |event_type, failing_since, reason| OpsEvent {
            event_type,
            endpoint_id: endpoint.id.clone(),
            webhook_id: task.webhook_id.clone(),
            status_code,
            failing_since,
            reason,
            time: now,
        };
        let mut events = Vec::new();
        let mut clock = None;
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match settled.settlement {
            Settlement::Delivered => {
                let change = health.observe(&endpoint.id, Outcome::Success, now);
                clock = change.record(now);
                if let Change::Recovered { since } = change {
                    events.push(event(OpsEventType::Recovered, Some(since), None));
                }
            }
            Settlement::Retrying | Settlement::DeadLettered => {
                let change = health.observe(&endpoint.id, Outcome::Failure, now);
                clock = change.record(now);
                match change {
                    Change::StartedFailing => {
                        events.push(event(OpsEventType::Failing, Some(now), None));
                    }
                    Change::FailedTooLong { since } => {
                        let (off, record) = self.settler.disable(endpoint, now);
                        settled.outputs.push(record);
                        settled.disabled = Some(off);
                        events.push(event(OpsEventType::Disabled, Some(since), Some("failing")));
                    }
                    Change::Recovered { .. } | Change::Unchanged { .. } => {}
                }
                if settled.settlement == Settlement::DeadLettered {
                    events.push(event(OpsEventType::Exhausted, None, None));
                }
            }
            Settlement::Gone => {
                if health.forget(&endpoint.id) {
                    clock = Some(None);
                }
                events.push(event(OpsEventType::Disabled, None, Some("gone")));
            }
            Settlement::Parked | Settlement::EndpointDisabled => {}
        }
        drop(health);
        let mut outputs: Vec<Output> = Vec::new();
        if let (Some(topic), Some(record)) = (&self.settler.topics.health, clock) {
            outputs.push(Output {
                topic: topic.clone(),
                partition: Some(partition),
                key: Some(endpoint.id.as_bytes().to_vec()),
                value: record.map(|r| serde_json::to_vec(&r).expect("a health record serialises")),
                headers: Vec::new(),
            });
        }
        if let Some(ops) = &self.ops_events {
            outputs.extend(events.iter().filter_map(|e| {
                ops.output(e)
                    .map_err(|error| tracing::error!(%error, "an operational event is not written"))
                    .ok()
            }));
        }
        // The disabled endpoint's record stays last: its position is applied to the table.
        let at = settled.outputs.len() - usize::from(settled.disabled.is_some());
        settled.outputs.splice(at..at, outputs);
    }

    /// Gives the outbound client `endpoint`'s own in-flight cap, rate limit and breaker
    /// settings, the first time it is sent to and whenever they change (which also starts a
    /// fresh breaker).
    fn configure_limits(&self, endpoint: &Endpoint) {
        let wanted = (
            endpoint.max_in_flight,
            endpoint.rate_limit_per_sec,
            endpoint.breaker.clone(),
        );
        let mut seen = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(&endpoint.id) == Some(&wanted) {
            return;
        }
        seen.insert(endpoint.id.clone(), wanted);
        let mut settings = EndpointSettings::default();
        if let Some(n) = endpoint.max_in_flight {
            settings.limits.max_in_flight = n;
        }
        settings.limits.rate_per_sec = endpoint.rate_limit_per_sec;
        settings.breaker = endpoint.breaker.clone().unwrap_or_default().config();
        self.outbound.endpoints().configure(&endpoint.id, &settings);
    }
}

pub struct Dispatcher {
    consumer: StreamConsumer<RebalanceCounter>,
    shared: Arc<Shared>,
    config: DispatcherConfig,
    done_rx: mpsc::UnboundedReceiver<Done>,
    // The loop's state, reset on every rebalance.
    generation: u64,
    watermarks: HashMap<TopicPartition, Watermark>,
    committed: HashMap<TopicPartition, i64>,
    queues: Queues<Pending>,
    /// Tier partitions held until their head is due (epoch ms).
    waiting_for_due: BTreeMap<TopicPartition, i64>,
    /// Partitions paused because they have too much read ahead.
    full: HashSet<TopicPartition>,
    /// Partitions paused for endpoints over their share.
    hot: HotHolds,
    outstanding: usize,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Dispatcher {
    pub fn new(
        clients: &KafkaClients,
        outbound: Outbound,
        table: EndpointTable,
        config: DispatcherConfig,
        metrics: Option<DeliveryMetrics>,
        shutdown: Shutdown,
    ) -> Result<Self, DispatchError> {
        let fail = |e: String| DispatchError::Start(e);
        let consumer: StreamConsumer<RebalanceCounter> = consumer_config(clients, &config.group)
            .map_err(|e| fail(e.to_string()))?
            .create_with_context(RebalanceCounter::default())
            .map_err(|e| fail(format!("creating the consumer: {e}")))?;
        let mut topics = vec![config.topics.tasks.as_str()];
        topics.extend(config.tiers.topics());
        consumer
            .subscribe(&topics)
            .map_err(|e| fail(format!("subscribing to {topics:?}: {e}")))?;
        let producer: FutureProducer = clients
            .producer_config("deliver")
            .map_err(|e| fail(e.to_string()))?
            .set("acks", "all")
            .create()
            .map_err(|e| fail(format!("creating the producer: {e}")))?;
        let key_order = match &config.topics.held {
            Some(held) => {
                let mut co_located = topics.iter().map(|t| t.to_string()).collect::<Vec<_>>();
                co_located.push(held.clone());
                tokio::task::block_in_place(|| {
                    sluice_stream::ordering::check_partitions(&consumer, "deliveries", &co_located)
                })
                .map_err(|e| fail(e.to_string()))?;
                Some(std::sync::Mutex::new(KeyOrder::new(
                    held,
                    config.tiers.clone(),
                )))
            }
            None => None,
        };
        let (done, done_rx) = mpsc::unbounded_channel();
        let settler = Settler {
            topics: config.topics.clone(),
            tiers: config.tiers.clone(),
            group: config.group.clone(),
            default_schedule: config.default_schedule.clone(),
        };
        Ok(Self {
            consumer,
            shared: Arc::new(Shared {
                outbound,
                settler,
                producer,
                table,
                shutdown,
                metrics,
                done,
                limits: std::sync::Mutex::default(),
                health: std::sync::Mutex::new(Health::new(config.disable_after)),
                key_order,
                ops_events: config.ops_events.clone(),
                state_log: sluice_stream::state::kafka::KafkaStateLog::new(clients.clone()),
                attempts: Arc::new(tokio::sync::Semaphore::new(
                    config.max_attempts_in_flight.max(1),
                )),
            }),
            config,
            done_rx,
            generation: 0,
            watermarks: HashMap::new(),
            committed: HashMap::new(),
            queues: Queues::default(),
            waiting_for_due: BTreeMap::new(),
            full: HashSet::new(),
            hot: HotHolds::default(),
            outstanding: 0,
        })
    }

    /// Runs until shutdown, then lets attempts in flight settle (up to 10 s) and commits.
    pub async fn run(mut self) -> Result<(), DispatchError> {
        let shutdown = self.shared.shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_commit = Instant::now();
        tracing::info!(group = %self.config.group, "delivery dispatcher running");
        loop {
            self.notice_rebalance();
            self.dispatch_ready();
            tokio::select! {
                _ = shutdown.wait() => break,
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        let record = Record::from_message(&m);
                        drop(m);
                        self.notice_rebalance();
                        self.on_record(record);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading delivery tasks");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                Some(done) = self.done_rx.recv() => self.on_done(done),
                _ = tick.tick() => {
                    self.resume_due();
                    self.park_overdue();
                    if last_commit.elapsed() >= self.config.commit_interval {
                        self.commit(CommitMode::Async);
                        last_commit = Instant::now();
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.outstanding > 0 {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(done)) => self.on_done(done),
                _ => break,
            }
        }
        self.commit(CommitMode::Sync);
        Ok(())
    }

    /// After a rebalance every partition starts again from its committed offset: forget
    /// what was read ahead.
    fn notice_rebalance(&mut self) {
        let generation = self
            .consumer
            .context()
            .generation
            .load(AtomicOrdering::SeqCst);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        self.watermarks.clear();
        self.committed.clear();
        self.queues = Queues::default();
        self.waiting_for_due.clear();
        self.full.clear();
        self.hot.clear();
        if let Ok(assigned) = self.consumer.assignment() {
            let _ = self.consumer.resume(&assigned);
            self.restore_held_keys(&assigned);
            self.restore_health(&assigned);
        }
        tracing::info!(generation, "delivery partitions reassigned");
    }

    /// Reads the failing-since clocks of the endpoints of the owned task partitions back,
    /// when their topic is declared (a clock started afresh would put an endpoint's disable
    /// off by up to `disable_after`).
    fn restore_health(&mut self, assigned: &TopicPartitionList) {
        let Some(topic) = self.config.topics.health.clone() else {
            return;
        };
        let partitions = self.owned_task_partitions(assigned);
        let shared = Arc::clone(&self.shared);
        let restored = until_restored(&shared, "failing endpoints' clocks", || {
            sluice_stream::state::restore_latest(&shared.state_log, &topic, &partitions, |v| {
                serde_json::from_slice::<HealthRecord>(v)
            })
        });
        let Some(restored) = restored else {
            return;
        };
        for (p, endpoint, why) in &restored.unreadable {
            let endpoint = String::from_utf8_lossy(endpoint);
            tracing::error!(topic, partition = p, %endpoint, error = %why, "unreadable failing-since clock; that endpoint's starts again");
        }
        let clocks: Vec<(String, HealthRecord)> = restored
            .partitions
            .into_values()
            .flatten()
            .map(|(k, r)| (String::from_utf8_lossy(&k).into_owned(), r))
            .collect();
        let failing = clocks.len();
        let mut health = shared.health.lock().unwrap_or_else(|e| e.into_inner());
        health.load(clocks);
        tracing::info!(?partitions, failing, "failing endpoints' clocks restored");
    }

    /// The partitions of the tasks topic among `assigned`.
    fn owned_task_partitions(&self, assigned: &TopicPartitionList) -> Vec<i32> {
        assigned
            .elements()
            .iter()
            .filter(|e| e.topic() == self.config.topics.tasks)
            .map(|e| e.partition())
            .collect()
    }

    /// Reads the held keys of the owned task partitions back, so a restart or a new owner
    /// keeps a held key's later tasks behind the one waiting in a tier.
    fn restore_held_keys(&mut self, assigned: &TopicPartitionList) {
        let shared = Arc::clone(&self.shared);
        let Some(mut order) = shared.key_order() else {
            return;
        };
        let partitions = self.owned_task_partitions(assigned);
        let restored = until_restored(&shared, "held delivery keys", || {
            order.restore(&shared.state_log, &partitions)
        });
        if let Some(held) = restored {
            tracing::info!(?partitions, held, "held delivery keys restored");
        }
    }

    fn on_record(&mut self, record: Record) {
        let tp: TopicPartition = (record.topic.clone(), record.partition);
        if self.waiting_for_due.contains_key(&tp) {
            return; // fetched before the partition was paused; read again on resume
        }
        let task = match DeliveryTask::from_record(&record) {
            Ok(task) => task,
            Err(e) => {
                self.dead_letter_invalid(tp, record, &e);
                return;
            }
        };
        let due = task.due_at.filter(|due| *due > now_ms() + 20);
        let early = due.is_some() && self.config.tiers.contains(&record.topic);
        if let (true, Some(due)) = (early, due) {
            if self.hold_until_due(&tp, record.offset, due) {
                return;
            }
        }
        self.watermark(&tp).take(record.offset);
        let pending = Pending {
            task,
            from: Record {
                value: None,
                headers: Vec::new(),
                ..record
            },
            generation: self.generation,
            slot: None,
        };
        match due.filter(|_| early) {
            // The partition could not be held: wait in the tier again rather than skip it.
            Some(due) => {
                let now = jiff::Timestamp::now();
                let until = jiff::Timestamp::from_millisecond(due).unwrap_or(now);
                let settled = self.shared.settler.parked(&pending.task, until, now);
                self.spawn_write(pending, settled, false);
            }
            None => self.enqueue(pending),
        }
        if self.watermark(&tp).pending() >= self.config.max_pending && !self.full.contains(&tp) {
            // One paused already (a hot endpoint, a tier head not due) is only marked: it
            // now also waits until half its read-ahead settles.
            let paused = self.is_paused(&tp);
            self.full.insert(tp.clone());
            if !paused {
                self.pause(&tp, "pausing a full partition");
            }
        }
    }

    /// Not a task: nothing can be sent. It goes, with its reason, to the system DLQ, and
    /// the loop goes on; its offset is committed once the dead letter is acknowledged.
    fn dead_letter_invalid(&mut self, tp: TopicPartition, record: Record, error: &TaskError) {
        let letter = self
            .shared
            .settler
            .invalid(&record, error, jiff::Timestamp::now());
        tracing::error!(%error, dlq = %letter.topic, "dead-lettering a record that is not a delivery task");
        self.watermark(&tp).take(record.offset);
        self.outstanding += 1;
        let (shared, generation) = (Arc::clone(&self.shared), self.generation);
        tokio::spawn(async move {
            let mut settled = Settled {
                settlement: Settlement::DeadLettered,
                outputs: vec![letter],
                disabled: None,
                then: Vec::new(),
            };
            let written = shared
                .settler
                .write_settled(&shared.producer, &mut settled, None, &shared.shutdown)
                .await;
            let done = match written {
                Some(_) => Done::Discarded {
                    tp,
                    offset: record.offset,
                    generation,
                },
                None => Done::Abandoned,
            };
            let _ = shared.done.send(done);
        });
    }

    fn watermark(&mut self, tp: &TopicPartition) -> &mut Watermark {
        self.watermarks.entry(tp.clone()).or_default()
    }

    fn enqueue(&mut self, pending: Pending) {
        let endpoint_id: EndpointId = Arc::from(pending.task.endpoint_id.as_str());
        let Some(endpoint) = self.shared.table.get(&endpoint_id).filter(|e| e.enabled) else {
            let settled = self
                .shared
                .settler
                .endpoint_disabled(&pending.task, jiff::Timestamp::now());
            self.spawn_write(pending, settled, false);
            return;
        };
        let key = match endpoint.ordering {
            Ordering::PerKey => pending.task.event_key.clone(),
            Ordering::Unordered => None,
        };
        let tp = pending.tp();
        self.hot.read(&tp, &endpoint_id);
        self.queues
            .push(&endpoint_id, lanes(&endpoint), key, pending);
        if self.queues.waiting_for(&endpoint_id) > self.config.endpoint_share {
            self.over_share(&endpoint_id, &tp);
        }
        self.report_backlog(&endpoint_id);
    }

    /// `endpoint` has more than its share waiting, its latest task read from `tp`: while it
    /// keeps delivering, `tp` is paused until it drains (the rest of a burst waits unread);
    /// otherwise its surplus is parked.
    fn over_share(&mut self, endpoint: &EndpointId, tp: &TopicPartition) {
        let now = Instant::now();
        if !self.queues.keeps_up(endpoint, now, self.config.hot_hold) {
            self.park_surplus(endpoint);
            return;
        }
        let paused = self.is_paused(tp);
        if self.hot.hold(endpoint, tp, now) && !paused {
            self.pause(tp, "pausing a partition behind a hot endpoint");
        }
    }

    /// Parks `endpoint`'s tasks beyond its share, and its later surplus until it is idle;
    /// the partitions it held paused go on.
    fn park_surplus(&mut self, endpoint: &EndpointId) {
        self.queues.park_from_now(endpoint);
        let wait = self.config.tiers.shortest().delay;
        for queued in self.queues.surplus(endpoint, self.config.endpoint_share) {
            self.park(queued.task, wait);
        }
        self.release_hot(endpoint);
    }

    /// `endpoint` holds no partition paused any more.
    fn release_hot(&mut self, endpoint: &str) {
        for tp in self.hot.release(endpoint) {
            self.resume_if_free(&tp);
        }
    }

    /// Lets the partitions of hot endpoints whose backlog halved go on.
    fn release_drained(&mut self) {
        if self.hot.is_empty() {
            return;
        }
        let low = self.config.endpoint_share / 2;
        let drained: Vec<EndpointId> = self
            .hot
            .endpoints()
            .filter(|e| self.queues.waiting_for(e) <= low)
            .cloned()
            .collect();
        for endpoint in drained {
            self.release_hot(&endpoint);
        }
    }

    /// Hot endpoints that stopped delivering, or held their partitions for `hot_hold`
    /// without draining while other endpoints may be behind them, have their surplus
    /// parked; one that only held up other hot endpoints holds on.
    fn park_overdue(&mut self) {
        let now = Instant::now();
        let stalled: Vec<EndpointId> = self
            .hot
            .endpoints()
            .filter(|e| !self.queues.keeps_up(e, now, self.config.hot_hold))
            .cloned()
            .collect();
        for endpoint in stalled {
            tracing::debug!(%endpoint, "a hot endpoint stopped delivering; parking its surplus");
            self.park_surplus(&endpoint);
        }
        for endpoint in self.hot.overdue(now, self.config.hot_hold) {
            if self.hot.others_behind(&endpoint) {
                tracing::debug!(%endpoint, "a hot endpoint did not drain in time; parking its surplus");
                self.park_surplus(&endpoint);
            } else {
                self.hot.renew(&endpoint, now);
            }
        }
    }

    /// Whether `tp` is paused, for whatever reason.
    fn is_paused(&self, tp: &TopicPartition) -> bool {
        self.full.contains(tp)
            || self.waiting_for_due.contains_key(tp)
            || self.hot.holds_partition(tp)
    }

    /// Resumes `tp` unless something still holds it paused.
    fn resume_if_free(&mut self, tp: &TopicPartition) {
        if self.is_paused(tp) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "resuming a partition");
        }
    }

    fn report_backlog(&self, endpoint: &str) {
        DeliveryEvent::Backlog {
            endpoint,
            waiting: self.queues.waiting_for(endpoint),
        }
        .emit(self.shared.metrics.as_ref());
    }

    /// Writes `pending` to the shortest tier, due in `wait`, with its attempt count as is.
    fn park(&mut self, pending: Pending, wait: Duration) {
        let now = jiff::Timestamp::now();
        let until = jiff::SignedDuration::try_from(wait)
            .ok()
            .and_then(|d| now.checked_add(d).ok())
            .unwrap_or(now);
        let settled = self.shared.settler.parked(&pending.task, until, now);
        self.spawn_write(pending, settled, false);
    }

    fn spawn_write(&mut self, pending: Pending, settled: Settled, in_flight: bool) {
        self.outstanding += 1;
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let done = write_settled(&shared, pending, settled, in_flight).await;
            let _ = shared.done.send(done);
        });
    }

    /// Sends every task the queues hand out now, each in a task of its own, as long as
    /// attempts may start: one waiting for a permit would hold its request and its
    /// endpoint's turn, where the queues hold a task for a fraction of that.
    fn dispatch_ready(&mut self) {
        loop {
            let Ok(permit) = Arc::clone(&self.shared.attempts).try_acquire_owned() else {
                break;
            };
            let Some((endpoint_id, queued)) = self.queues.next(Instant::now()) else {
                break;
            };
            let mut pending = queued.task;
            if queued.key.is_some() {
                if let Some(waiting) = self.take_turn(&mut pending) {
                    self.spawn_write(pending, waiting, true);
                    continue;
                }
            }
            let Some(endpoint) = self.shared.table.get(&endpoint_id).filter(|e| e.enabled) else {
                let settled = self
                    .shared
                    .settler
                    .endpoint_disabled(&pending.task, jiff::Timestamp::now());
                self.spawn_write(pending, settled, true);
                continue;
            };
            self.outstanding += 1;
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let done = attempt(&shared, endpoint, pending, permit).await;
                let _ = shared.done.send(done);
            });
            self.report_backlog(&endpoint_id);
        }
        self.release_drained();
    }

    /// Under `per_key` with held keys: lets `pending` go (noting its place in its key's
    /// line), or, when its key is held, returns its settlement as a copy waiting behind the
    /// key's head, unsent.
    fn take_turn(&mut self, pending: &mut Pending) -> Option<Settled> {
        let mut order = self.shared.key_order()?;
        match order.turn(&pending.task, &pending.from) {
            Turn::Free => None,
            Turn::Go(slot) => {
                pending.slot = Some(slot);
                None
            }
            Turn::Wait { seq, tier } => {
                let tier = self.config.tiers.at(tier);
                let now = jiff::Timestamp::now();
                // Not due at once: a copy reached before its head is resolved goes round
                // again, and a tier's delay keeps that from spinning.
                let until = jiff::SignedDuration::try_from(tier.delay)
                    .ok()
                    .and_then(|d| now.checked_add(d).ok())
                    .unwrap_or(now);
                let mut task = pending.task.clone();
                task.key_seq = Some(seq);
                let mut settled = self
                    .shared
                    .settler
                    .parked_in(&task, &tier.topic, until, now);
                settled.then.extend(order.record_of(&task, &pending.from));
                DeliveryEvent::KeyHeld {
                    endpoint: &pending.task.endpoint_id,
                    held: order.held(),
                }
                .emit(self.shared.metrics.as_ref());
                Some(settled)
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        if let Done::Sent {
            endpoint,
            generation,
            delivered,
        } = done
        {
            // Not the end of a piece of work: its settlement follows.
            if generation == self.generation {
                self.queues.attempted(&endpoint, delivered, Instant::now());
                self.queues.finished(&endpoint, None);
            }
            return;
        }
        self.outstanding = self.outstanding.saturating_sub(1);
        match done {
            Done::Sent { .. } => {}
            Done::Abandoned => {}
            Done::Discarded {
                tp,
                offset,
                generation,
            } => {
                if generation == self.generation {
                    self.watermark(&tp).settle(offset);
                    self.resume_if_drained(&tp);
                }
            }
            Done::Settled { pending, .. } if pending.generation != self.generation => {}
            Done::NotAdmitted { pending, .. } if pending.generation != self.generation => {}
            Done::Settled {
                pending,
                in_flight,
                attempted,
            } => {
                let endpoint: EndpointId = Arc::from(pending.task.endpoint_id.as_str());
                if in_flight {
                    if let Some(delivered) = attempted {
                        self.queues.attempted(&endpoint, delivered, Instant::now());
                    }
                    self.queues.finished(&endpoint, self.order_key(&pending));
                }
                let tp = pending.tp();
                self.watermark(&tp).settle(pending.from.offset);
                self.resume_if_drained(&tp);
            }
            Done::NotAdmitted {
                mut pending,
                refusal,
            } => {
                let endpoint: EndpointId = Arc::from(pending.task.endpoint_id.as_str());
                self.queues.finished(&endpoint, self.order_key(&pending));
                let wait = refusal.retry_in().unwrap_or(Duration::from_millis(100));
                self.queues.hold(&endpoint, Instant::now() + wait);
                match refusal {
                    NotAdmitted::BreakerOpen(_) => {
                        // Waiting out the breaker in memory would hold the partitions'
                        // commits: park this task and everything waiting behind it.
                        let wait = wait.max(self.config.tiers.shortest().delay);
                        self.park(pending, wait);
                        for queued in self.queues.surplus(&endpoint, 0) {
                            self.park(queued.task, wait);
                        }
                    }
                    NotAdmitted::Limit(_) => {
                        // Its turn is taken again when it is handed out again.
                        pending.slot = None;
                        let key = self.order_key(&pending).map(<[u8]>::to_vec);
                        let lanes = self.shared.table.get(&endpoint).map_or(
                            Lanes {
                                max_in_flight: 1,
                                order: Order::Unordered,
                            },
                            |e| lanes(&e),
                        );
                        self.queues.push(&endpoint, lanes, key, pending);
                    }
                }
                self.report_backlog(&endpoint);
            }
        }
    }

    fn order_key<'p>(&self, pending: &'p Pending) -> Option<&'p [u8]> {
        let per_key = self
            .shared
            .table
            .get(&pending.task.endpoint_id)
            .is_some_and(|e| e.ordering == Ordering::PerKey);
        if per_key {
            pending.task.event_key.as_deref()
        } else {
            None
        }
    }

    fn resume_if_drained(&mut self, tp: &TopicPartition) {
        let pending = self.watermarks.get(tp).map_or(0, Watermark::pending);
        if pending <= self.config.max_pending / 2 && self.full.remove(tp) {
            self.resume_if_free(tp);
        }
    }

    /// Pauses tier partition `tp` and rewinds it to `offset`, whose task is due at `due`;
    /// `false` when the partition could not be rewound (it is resumed as it was).
    fn hold_until_due(&mut self, tp: &TopicPartition, offset: i64, due: i64) -> bool {
        if !self.pause(tp, "pausing a retry partition") {
            return false;
        }
        // A seek can fail while the partition's fetcher is still starting: try a few times.
        let mut last = None;
        for _ in 0..5 {
            match self
                .consumer
                .seek(&tp.0, tp.1, Offset::Offset(offset), Duration::from_secs(5))
            {
                Ok(()) => {
                    self.waiting_for_due.insert(tp.clone(), due);
                    return true;
                }
                Err(e) => last = Some(e),
            }
        }
        tracing::warn!(topic = %tp.0, partition = tp.1, error = ?last, "rewinding a retry partition failed; its task waits in the tier again");
        self.resume_if_free(tp);
        false
    }

    /// Pauses `tp`; `false` (with a warning saying `what` failed) when the consumer refuses.
    fn pause(&self, tp: &TopicPartition, what: &'static str) -> bool {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        match self.consumer.pause(&tpl) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "{what}");
                false
            }
        }
    }

    fn resume_due(&mut self) {
        let now = now_ms();
        let due: Vec<TopicPartition> = self
            .waiting_for_due
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in &due {
            self.waiting_for_due.remove(tp);
            self.resume_if_free(tp);
        }
    }

    /// Commits each partition's watermark where it moved.
    fn commit(&mut self, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for (tp, w) in &self.watermarks {
            let Some(offset) = w.committable() else {
                continue;
            };
            if self.committed.get(tp) == Some(&offset) {
                continue;
            }
            if tpl
                .add_partition_offset(&tp.0, tp.1, Offset::Offset(offset))
                .is_ok()
            {
                self.committed.insert(tp.clone(), offset);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::warn!(error = %e, "committing delivery offsets");
            self.committed.clear();
        }
    }
}

/// The dispatcher's consumer: eager rebalances (every partition restarts from its committed
/// offset), and a short long poll unless `kafka.properties` sets one. A resumed partition is
/// fetched only once the fetch in flight for the others returns, and with nothing new on
/// them that is librdkafka's long poll (500 ms): a hot endpoint's partition, resumed as its
/// backlog halves, sat idle that long while its queue ran dry.
fn consumer_config(
    clients: &KafkaClients,
    group: &str,
) -> Result<rdkafka::ClientConfig, sluice_runtime::config::ConfigError> {
    let mut c = clients.consumer_config("deliver", group)?;
    sluice_runtime::kafka::set_default(&mut c, "fetch.wait.max.ms", RESUME_FETCH_WAIT_MS);
    c.set("partition.assignment.strategy", "range");
    Ok(c)
}

fn lanes(endpoint: &Endpoint) -> Lanes {
    Lanes {
        max_in_flight: endpoint.max_in_flight.map_or(8, |n| n as usize),
        order: match endpoint.ordering {
            Ordering::PerKey => Order::PerKey,
            Ordering::Unordered => Order::Unordered,
        },
    }
}

/// One attempt of `pending` to `endpoint`, settled; `permit` is its place among the
/// attempts in flight, given back once it has its answer.
async fn attempt(
    shared: &Shared,
    endpoint: Endpoint,
    pending: Pending,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Done {
    let request = match request(&endpoint, &pending.task) {
        Ok(request) => request,
        Err(error) => {
            let now = jiff::Timestamp::now();
            let refused = Attempt {
                started_at: std::time::SystemTime::now(),
                latency: Duration::ZERO,
                status: None,
                verdict: Verdict::Rejected {
                    reason: FailureReason::Request,
                },
                error: Some(error),
                headers: HeaderMap::new(),
                body_prefix: bytes::Bytes::new(),
                truncated: false,
            };
            let mut settled =
                shared
                    .settler
                    .attempted(&pending.task, &pending.from, &endpoint, &refused, now);
            let partition = pending.from.partition;
            shared.observe_health(&endpoint, &pending.task, partition, None, &mut settled, now);
            return write_settled(shared, pending, settled, true).await;
        }
    };
    shared.configure_limits(&endpoint);
    let sent = shared.outbound.send(&endpoint.id, &request).await;
    drop(permit);
    match sent {
        Ok(attempt) => {
            let now = jiff::Timestamp::now();
            let mut settled =
                shared
                    .settler
                    .attempted(&pending.task, &pending.from, &endpoint, &attempt, now);
            let (partition, status) = (pending.from.partition, attempt.status);
            shared.observe_health(
                &endpoint,
                &pending.task,
                partition,
                status,
                &mut settled,
                now,
            );
            // An unordered endpoint's next attempt need not wait for this one's outcome to be
            // acknowledged by the broker (tens of ms under acks=all): free its slot now. Under
            // `per_key` the key's next event waits for the settlement, as ordering requires.
            let in_flight = endpoint.ordering == Ordering::PerKey;
            if !in_flight {
                let _ = shared.done.send(Done::Sent {
                    endpoint: Arc::from(endpoint.id.as_str()),
                    generation: pending.generation,
                    delivered: settled.settlement == Settlement::Delivered,
                });
            }
            write_settled(shared, pending, settled, in_flight).await
        }
        Err(refusal) => Done::NotAdmitted { pending, refusal },
    }
}

/// The signed POST of `task` to `endpoint`.
fn request(endpoint: &Endpoint, task: &DeliveryTask) -> Result<OutboundRequest, String> {
    let url = reqwest::Url::parse(&endpoint.url).map_err(|e| format!("the endpoint URL: {e}"))?;
    let signed = sign_delivery(
        endpoint,
        &task.webhook_id,
        jiff::Timestamp::now(),
        &task.body,
    );
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in signed.pairs() {
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("the `{name}` header is not a valid header value"))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok(OutboundRequest::post(url, task.body.clone()).with_headers(headers))
}

/// Runs a blocking state restore until it succeeds, backing off up to 5 s between tries:
/// going on without the state would break what it keeps (a held key's order, a failing
/// endpoint's clock). `None` only when shutdown began first.
fn until_restored<T, E: std::fmt::Display>(
    shared: &Shared,
    what: &str,
    mut restore: impl FnMut() -> Result<T, E>,
) -> Option<T> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match tokio::task::block_in_place(&mut restore) {
            Ok(restored) => return Some(restored),
            Err(e) if !shared.shutdown.is_triggered() => {
                tracing::warn!(error = %e, "restoring {what}; trying again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "restoring {what} at shutdown");
                return None;
            }
        }
    }
}

/// The held-key sequence number a settlement's tier copy carries, if it has one.
fn key_seq_of_tier_copy(tiers: &super::Tiers, settled: &Settled) -> Option<u64> {
    let copy = settled.outputs.iter().find(|o| tiers.contains(&o.topic))?;
    let (_, seq) = copy
        .headers
        .iter()
        .find(|(k, _)| k == crate::task::header::KEY_SEQ)?;
    std::str::from_utf8(seq).ok()?.parse().ok()
}

/// Writes `settled` and reports the task settled; a disabled endpoint is applied to the
/// table at once (its record's position keeps the follower from rolling it back).
async fn write_settled(
    shared: &Shared,
    pending: Pending,
    settled: Settled,
    in_flight: bool,
) -> Done {
    let mut settled = settled;
    if let (Some(slot), Some(mut order)) = (&pending.slot, shared.key_order()) {
        let record = order.settled(slot, &mut settled);
        settled.then.extend(record);
    }
    let copy_seq = key_seq_of_tier_copy(&shared.settler.tiers, &settled);
    let Some(positions) = shared
        .settler
        .write_settled(
            &shared.producer,
            &mut settled,
            Some((&pending.task, &pending.from)),
            &shared.shutdown,
        )
        .await
    else {
        return Done::Abandoned;
    };
    // A tier copy refused and dead-lettered instead no longer holds its key.
    if let (Some(seq), None, Some(slot)) = (
        copy_seq,
        key_seq_of_tier_copy(&shared.settler.tiers, &settled),
        &pending.slot,
    ) {
        if let Some(mut order) = shared.key_order() {
            settled.then = vec![order.copy_refused(slot, seq)];
        }
    }
    if !settled.then.is_empty()
        && Settler::write(&shared.producer, &settled.then, &shared.shutdown)
            .await
            .is_none()
    {
        return Done::Abandoned;
    }
    if let (Some(off), Some(at)) = (&settled.disabled, positions.last()) {
        if let Ok(bytes) = serde_json::to_vec(off) {
            let _ = shared.table.apply(&off.id, Some(&bytes), Some(*at));
        }
        let why = match settled.settlement {
            Settlement::Gone => "it answered 410 Gone",
            _ => "it failed continuously for the disable-after time",
        };
        tracing::warn!(endpoint = %off.id, why, "endpoint disabled");
    }
    let attempted = matches!(
        settled.settlement,
        Settlement::Delivered | Settlement::Retrying | Settlement::Gone | Settlement::DeadLettered
    );
    DeliveryEvent::Settled {
        endpoint: &pending.task.endpoint_id,
        settlement: settled.settlement,
        attempts: pending.task.attempts + u32::from(attempted),
    }
    .emit(shared.metrics.as_ref());
    Done::Settled {
        pending,
        in_flight,
        attempted: attempted.then_some(settled.settlement == Settlement::Delivered),
    }
}

#[cfg(test)]
mod tests {
    use sluice_runtime::config::KafkaConfig;

    use super::*;

    #[test]
    fn a_resumed_partition_waits_a_short_poll_unless_configured() {
        let c = consumer_config(&KafkaClients::new(KafkaConfig::default()), "g").unwrap();
        assert_eq!(c.get("fetch.wait.max.ms"), Some(RESUME_FETCH_WAIT_MS));
        assert_eq!(c.get("partition.assignment.strategy"), Some("range"));

        let mut cfg = KafkaConfig::default();
        cfg.properties
            .insert("fetch.wait.max.ms".into(), "250".into());
        let c = consumer_config(&KafkaClients::new(cfg), "g").unwrap();
        assert_eq!(c.get("fetch.wait.max.ms"), Some("250"));
    }
}
