//! The orchestrator and its participants against state in a [`MemoryLog`], without a broker
//! or a registry: the reference topology's order-fulfillment saga, driven record by record.
//! A batch here is one record; committing it appends its outputs to the log (what
//! `read_committed` readers and restores would see) and queues them for their consumers,
//! aborting it drops them — as the loop's transaction does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::json;
use sluice_runtime::config::RegistryConfig;
use sluice_schemas::{AvroCodec, Catalog, RegistryClient};
use sluice_stream::state::MemoryLog;
use sluice_stream::{Handler, HandlerError, Output, Record};
use sluice_topology::Topology;

use super::*;
use crate::instance::Status;
use crate::messages::{Action, Command, Control, Meta, SchemaBook};
use crate::metrics::ParticipantMetrics;
use crate::participant::{Outcome, Participant, ParticipantHandler, RoleSpec};
use crate::store::Slot;

const PARTITIONS: i32 = 3;
const ORDERS: &str = "sluice.events.commerce";
const ORDER_PLACED: &str = "dev.sluice.events.commerce.OrderPlaced";

/// A participant that records what it executed and fails `ChargePayment` for orders whose
/// id says `declined`; with `answers_lost`, it leaves `ChargePayment` for orders whose id
/// says `lost` without an answer, as an HTTP call whose answer was lost (so it may have run).
#[derive(Debug, Clone, Default)]
struct Scripted {
    executed: Arc<Mutex<Vec<String>>>,
    answers_lost: bool,
}

impl Participant for Scripted {
    async fn handle(&self, command: &Command) -> Result<Outcome, HandlerError> {
        let name = command.event_type.rsplit('.').next().unwrap_or_default();
        self.executed
            .lock()
            .unwrap()
            .push(format!("{name} {}", command.correlation_id));
        if self.answers_lost && name == "ChargePayment" && command.correlation_id.contains("lost") {
            return Ok(Outcome::NoReply {
                why: "the answer was lost".into(),
            });
        }
        if name == "ChargePayment" && command.correlation_id.contains("declined") {
            return Ok(Outcome::Failed {
                reason: "card declined".into(),
                retryable: false,
            });
        }
        Ok(Outcome::Succeeded {
            result: Some(json!({"by": name})),
        })
    }

    fn unanswered_may_have_run(&self) -> bool {
        self.answers_lost
    }
}

fn catalog() -> Catalog {
    Catalog::embedded().unwrap()
}

fn topology(catalog: &Catalog) -> Topology {
    let types = catalog.event_types().map(str::to_string).collect();
    Topology::parse(
        "topology.yaml",
        include_str!("../../../../topology/topology.yaml"),
        &types,
    )
    .unwrap()
}

/// A codec that can only decode what it was given: any registry look-up fails at once.
fn offline_codec() -> AvroCodec {
    let config = RegistryConfig {
        url: "http://127.0.0.1:9/unreachable".into(),
        ..RegistryConfig::default()
    };
    AvroCodec::new(RegistryClient::new(&config).unwrap())
}

/// Who handles a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Orchestrator,
    Participant(usize),
}

/// One instance of the orchestrator and of every participant role, over a shared log.
struct World {
    log: Arc<MemoryLog>,
    orchestrator: Orchestrator,
    participants: Vec<ParticipantHandler<Scripted>>,
    executed: Arc<Mutex<Vec<String>>>,
    book: SchemaBook,
    /// Decodes whatever the book encodes.
    codec: AvroCodec,
    /// Next offset per topic partition.
    offsets: HashMap<(String, i32), i64>,
    /// Committed records not yet handled, in order.
    queue: VecDeque<(Who, Record)>,
    /// Every committed output.
    written: Vec<Output>,
}

impl World {
    async fn start(log: &Arc<MemoryLog>) -> Self {
        Self::start_with(log, false).await
    }

    /// [`World::start`] with participants that lose answers ([`Scripted::answers_lost`]).
    async fn start_with(log: &Arc<MemoryLog>, answers_lost: bool) -> Self {
        let catalog = catalog();
        let topology = topology(&catalog);
        let codec = offline_codec();
        let Plan { sagas, mut pairs } = plan(&catalog, &topology, &[], |_| Ok(PARTITIONS)).unwrap();
        let executed = Arc::new(Mutex::new(Vec::new()));
        let mut participants = Vec::new();
        for role in RoleSpec::roles(&topology) {
            let spec = RoleSpec::from_topology(&topology, &role).unwrap();
            let book = SchemaBook::offline(&catalog, spec.schema_pairs(), &codec);
            let metrics = ParticipantMetrics::new(&prometheus::Registry::new()).unwrap();
            let scripted = Scripted {
                executed: executed.clone(),
                answers_lost,
            };
            participants.push(ParticipantHandler::with_parts(
                spec,
                scripted,
                log.clone(),
                codec.clone(),
                book,
                metrics,
            ));
        }
        pairs.push((ORDERS.to_string(), ORDER_PLACED.to_string()));
        let book = SchemaBook::offline(&catalog, pairs, &codec);
        let metrics = SagaMetrics::new(&prometheus::Registry::new()).unwrap();
        let orchestrator =
            Orchestrator::with_parts(log.clone(), codec.clone(), book.clone(), sagas, metrics);
        let world = Self {
            log: log.clone(),
            orchestrator,
            participants,
            executed,
            book,
            codec,
            offsets: HashMap::new(),
            queue: VecDeque::new(),
            written: Vec::new(),
        };
        world.assign_everything().await;
        world
    }

    /// Gives every instance every partition of its inputs, restoring their state.
    async fn assign_everything(&self) {
        let all = |topics: &[String]| -> Vec<(String, i32)> {
            topics
                .iter()
                .flat_map(|t| (0..PARTITIONS).map(move |p| (t.clone(), p)))
                .collect()
        };
        let inputs = self.orchestrator.input_topics();
        self.orchestrator.on_assigned(&all(&inputs)).await.unwrap();
        for p in &self.participants {
            p.on_assigned(&all(&p.spec().command_topics)).await.unwrap();
        }
    }

    fn handlers_of(&self, topic: &str) -> Vec<Who> {
        let mut who = Vec::new();
        if self.orchestrator.input_topics().iter().any(|t| t == topic) {
            who.push(Who::Orchestrator);
        }
        for (i, p) in self.participants.iter().enumerate() {
            if p.spec().command_topics.iter().any(|t| t == topic) {
                who.push(Who::Participant(i));
            }
        }
        who
    }

    /// Handles `record` as a batch of its own, committed or not; returns its outputs.
    async fn handle(&mut self, who: Who, record: &Record, commit: bool) -> Vec<Output> {
        let handler: &dyn Turn = match who {
            Who::Orchestrator => &self.orchestrator,
            Who::Participant(i) => &self.participants[i],
        };
        let outputs = handler.turn(record, commit).await;
        if commit {
            self.log.commit(&outputs);
            for o in &outputs {
                self.publish(o);
            }
            self.written.extend(outputs.iter().cloned());
        }
        outputs
    }

    /// Queues a committed output for every consumer of its topic.
    fn publish(&mut self, o: &Output) {
        let partition = o.partition.unwrap_or_else(|| {
            crate::home_partition(o.key.as_deref().unwrap_or_default(), PARTITIONS)
        });
        let offset = self
            .offsets
            .entry((o.topic.clone(), partition))
            .or_default();
        let record = Record {
            topic: o.topic.clone(),
            partition,
            offset: *offset,
            timestamp_ms: Some(metadata::now_ms()),
            key: o.key.clone(),
            value: o.value.clone(),
            headers: o.headers.clone(),
        };
        *offset += 1;
        for who in self.handlers_of(&o.topic) {
            self.queue.push_back((who, record.clone()));
        }
    }

    /// Handles queued records, each committed, until none is left.
    async fn run_until_quiet(&mut self) {
        let mut turns = 0;
        while let Some((who, record)) = self.queue.pop_front() {
            self.handle(who, &record, true).await;
            turns += 1;
            assert!(turns < 1_000, "the saga never settles");
        }
    }

    /// Handles queued records, each committed, up to the first one of `event_type` (full
    /// name) for a handler `wanted` accepts, which it returns unhandled.
    async fn run_until(&mut self, event_type: &str, wanted: fn(Who) -> bool) -> (Who, Record) {
        loop {
            let (who, record) = self.queue.pop_front().expect("the record comes");
            if wanted(who) && record.header(metadata::CE_TYPE) == Some(event_type) {
                return (who, record);
            }
            self.handle(who, &record, true).await;
        }
    }

    /// Publishes an order, as the normalizer or a publishing service would.
    fn place_order(&mut self, id: &str) {
        let meta = Meta {
            event_id: format!("evt-{id}"),
            occurred_at: metadata::now_ms(),
            source: "sluice://sources/test".into(),
            subject: Some(id.into()),
        };
        let order = meta.fill(json!({
            "order_id": id,
            "total": {"amount": "10.0000", "currency": "EUR"},
            "line_items": [{"sku": "A-1", "title": "item", "quantity": 1,
                            "unit_price": {"amount": "10.0000", "currency": "EUR"}}],
            "provider": "test",
        }));
        let value = self.book.encode(ORDERS, ORDER_PLACED, &order).unwrap();
        self.publish(&Output {
            topic: ORDERS.into(),
            partition: None,
            key: Some(id.as_bytes().to_vec()),
            value: Some(value),
            headers: meta.headers(ORDER_PLACED, &messages::child_traceparent(None, id), &[]),
        });
    }

    /// Publishes a control message for saga `id`, as an operator or the timer would.
    fn control(&mut self, action: Action, id: &str) {
        let saga = self.orchestrator.sagas()[0].def.name.clone();
        let request_id = format!("{}-{id}", action.as_str());
        let control = Control::new(&saga, id, action, &request_id);
        let out = self
            .orchestrator
            .control_output(0, &control, &messages::child_traceparent(None, id))
            .unwrap();
        self.publish(&out);
    }

    fn executed(&self) -> Vec<String> {
        self.executed.lock().unwrap().clone()
    }

    /// The event types written to `topic` about saga `id`, in order.
    fn events_on(&self, topic: &str, id: &str) -> Vec<String> {
        self.written
            .iter()
            .filter(|o| o.topic == topic && o.key.as_deref() == Some(id.as_bytes()))
            .filter_map(|o| header(o, metadata::CE_TYPE))
            .map(|t| t.rsplit('.').next().unwrap_or_default().to_string())
            .collect()
    }

    /// The committed status of saga `id`'s instance.
    fn status(&self, id: &str) -> Option<Status> {
        let p = crate::home_partition(id.as_bytes(), PARTITIONS);
        match self.orchestrator.store.get(0, p, id)? {
            Slot::Live(i) => Some(i.status),
            Slot::Gone { status, .. } => Some(status),
        }
    }
}

/// The types of `outputs` whose type ends in `suffix`.
fn of_type(outputs: &[Output], suffix: &str) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| header(o, metadata::CE_TYPE))
        .filter(|t| t.ends_with(suffix))
        .collect()
}

fn header(o: &Output, name: &str) -> Option<String> {
    o.headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// One record through a handler as a batch of its own: handled, its batch-wide outputs
/// added, and the batch ended.
trait Turn {
    fn turn<'a>(
        &'a self,
        record: &'a Record,
        commit: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Output>> + 'a>>;
}

impl<H: Handler> Turn for H {
    fn turn<'a>(
        &'a self,
        record: &'a Record,
        commit: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Output>> + 'a>> {
        Box::pin(async move {
            let mut outputs = self.handle(record).await.expect("handled");
            outputs.extend(self.batch_outputs());
            self.on_batch_end(commit);
            outputs
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saga_runs_its_steps_in_order_once_each_and_completes() {
    let log = Arc::new(MemoryLog::default());
    let mut w = World::start(&log).await;
    w.place_order("o1");
    w.run_until_quiet().await;
    assert_eq!(
        w.executed(),
        [
            "ReserveInventory o1",
            "ChargePayment o1",
            "CreateShipment o1"
        ]
    );
    assert_eq!(w.status("o1"), Some(Status::Completed));
    let outcome = w.events_on(ORDERS, "o1");
    assert!(
        outcome.contains(&"OrderConfirmed".to_string()),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_step_compensates_the_completed_ones_and_the_saga_ends_compensated() {
    let log = Arc::new(MemoryLog::default());
    let mut w = World::start(&log).await;
    w.place_order("o-declined");
    w.run_until_quiet().await;
    assert_eq!(
        w.executed(),
        [
            "ReserveInventory o-declined",
            "ChargePayment o-declined",
            "ReleaseInventory o-declined"
        ],
        "only the completed step is undone, and nothing after the failure runs"
    );
    assert_eq!(w.status("o-declined"), Some(Status::Compensated));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_transition_is_redone_and_a_committed_one_ignores_its_duplicate() {
    let log = Arc::new(MemoryLog::default());
    let mut w = World::start(&log).await;
    w.place_order("o2");
    let (_, reply) = w
        .run_until("dev.sluice.events.sagas.InventoryReserved", |who| {
            who == Who::Orchestrator
        })
        .await;
    let next = |outputs: &[Output]| of_type(outputs, "ChargePayment");
    let aborted = w.handle(Who::Orchestrator, &reply, false).await;
    assert_eq!(next(&aborted).len(), 1, "the transition was made");
    assert_eq!(w.status("o2"), Some(Status::Running));

    let committed = w.handle(Who::Orchestrator, &reply, true).await;
    assert_eq!(
        next(&committed),
        next(&aborted),
        "made again, the same command comes out"
    );
    assert_eq!(
        header(&aborted[0], messages::COMMAND_ID_HEADER),
        header(&committed[0], messages::COMMAND_ID_HEADER),
        "with the same command id, so a participant can tell a resend"
    );
    let duplicate = w.handle(Who::Orchestrator, &reply, true).await;
    assert!(
        next(&duplicate).is_empty(),
        "a committed reply seen again changes nothing: {duplicate:?}"
    );
    w.run_until_quiet().await;
    assert_eq!(w.status("o2"), Some(Status::Completed));
    assert_eq!(w.executed().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn new_instances_restore_sagas_and_handled_commands_from_their_state_topics() {
    let log = Arc::new(MemoryLog::default());
    let mut first = World::start(&log).await;
    first.place_order("o3");
    // Up to the payment command: inventory reserved, the charge not yet executed.
    let (_, charge) = first
        .run_until("dev.sluice.events.sagas.ChargePayment", |_| true)
        .await;
    let reserve = first
        .written
        .iter()
        .find(|o| {
            header(o, metadata::CE_TYPE).as_deref()
                == Some("dev.sluice.events.sagas.ReserveInventory")
        })
        .cloned()
        .unwrap();

    // Everything restarts: new instances over the same log.
    let mut second = World::start(&log).await;
    assert_eq!(second.status("o3"), Some(Status::Running));
    second.offsets = first.offsets.clone();
    // The inventory command delivered again (a resend after a lost reply): answered from
    // the restored dedup state, not executed again.
    second.publish(&reserve);
    second.publish(&Output {
        topic: charge.topic.clone(),
        partition: Some(charge.partition),
        key: charge.key.clone(),
        value: charge.value.clone(),
        headers: charge.headers.clone(),
    });
    second.run_until_quiet().await;
    assert_eq!(first.executed(), ["ReserveInventory o3"]);
    assert_eq!(
        second.executed(),
        ["ChargePayment o3", "CreateShipment o3"],
        "each step ran once across both instances"
    );
    assert_eq!(second.status("o3"), Some(Status::Completed));
}

/// A restart reads finished instances back by status only, however recently they finished,
/// and still refuses a second trigger for them.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_holds_finished_sagas_by_status_and_still_refuses_their_triggers() {
    let log = Arc::new(MemoryLog::default());
    let mut first = World::start(&log).await;
    first.place_order("o5");
    first.run_until_quiet().await;
    assert_eq!(first.status("o5"), Some(Status::Completed));
    let p = crate::home_partition(b"o5", PARTITIONS);
    assert!(
        matches!(
            first.orchestrator.store.get(0, p, "o5"),
            Some(Slot::Live(_))
        ),
        "just finished: still held in full before the restart"
    );

    let mut second = World::start(&log).await;
    second.offsets = first.offsets.clone();
    assert!(matches!(
        second.orchestrator.store.get(0, p, "o5"),
        Some(Slot::Gone {
            status: Status::Completed,
            ..
        })
    ));
    second.place_order("o5");
    second.run_until_quiet().await;
    assert!(
        second.executed().is_empty(),
        "the second trigger started nothing: {:?}",
        second.executed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_participant_answers_a_resend_from_its_committed_state_only() {
    let log = Arc::new(MemoryLog::default());
    let mut w = World::start(&log).await;
    w.place_order("o4");
    let (who, command) = w
        .run_until("dev.sluice.events.sagas.ReserveInventory", |who| {
            matches!(who, Who::Participant(_))
        })
        .await;
    let replies = |outputs: &[Output]| of_type(outputs, "InventoryReserved");
    let aborted = w.handle(who, &command, false).await;
    assert_eq!(replies(&aborted).len(), 1);
    // The aborted batch's record of the command is gone: the command runs again.
    let committed = w.handle(who, &command, true).await;
    assert_eq!(replies(&committed).len(), 1);
    assert_eq!(w.executed(), ["ReserveInventory o4", "ReserveInventory o4"]);
    // Once committed, a resend is answered with the same reply and not executed.
    let resent = w.handle(who, &command, true).await;
    assert_eq!(replies(&resent).len(), 1);
    assert_eq!(w.executed().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_that_may_have_run_unanswered_is_marked_attempted_and_run_again_on_resend() {
    for answers_lost in [false, true] {
        let log = Arc::new(MemoryLog::default());
        let mut w = World::start_with(&log, answers_lost).await;
        w.place_order("o-lost");
        let (_, command) = w
            .run_until("dev.sluice.events.sagas.ChargePayment", |who| {
                matches!(who, Who::Participant(_))
            })
            .await;
        let roles = RoleSpec::roles(&topology(&catalog()));
        let who = Who::Participant(roles.iter().position(|r| r == "payments").unwrap());
        let first = w.handle(who, &command, true).await;
        let replies =
            of_type(&first, "PaymentCharged").len() + of_type(&first, "ChargeFailed").len();
        if answers_lost {
            // No reply, but the attempt is on record, in the batch that read the command.
            assert_eq!(replies, 0);
            assert_eq!(first.len(), 1, "{first:?}");
            let value =
                String::from_utf8_lossy(first[0].value.as_deref().unwrap_or_default()).to_string();
            assert!(value.contains("attempted"), "{value}");
        } else {
            assert_eq!(first.len(), 2, "a reply and its record: {first:?}");
        }
        // A resend of an attempt runs it again; of a settled command, answers from the record.
        w.handle(who, &command, true).await;
        let charges = w
            .executed()
            .iter()
            .filter(|e| e.starts_with("ChargePayment"))
            .count();
        assert_eq!(
            charges,
            if answers_lost { 2 } else { 1 },
            "{:?}",
            w.executed()
        );
    }
}

/// The participants' dedup keys written to their state topics, as records or tombstones.
fn dedup_keys(w: &World, tombstones: bool) -> std::collections::BTreeSet<String> {
    let state_topics: Vec<String> = w
        .participants
        .iter()
        .map(|p| p.spec().state_topic.clone())
        .collect();
    w.written
        .iter()
        .filter(|o| state_topics.contains(&o.topic) && o.value.is_none() == tombstones)
        .map(|o| String::from_utf8(o.key.clone().unwrap()).unwrap())
        .collect()
}

/// The keys among `keys` of saga `id`'s commands.
fn of_saga(keys: &std::collections::BTreeSet<String>, id: &str) -> Vec<String> {
    keys.iter()
        .filter(|k| crate::machine::saga_of_command(k) == Some(id))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn participants_forget_a_saga_s_commands_once_it_finishes() {
    let log = Arc::new(MemoryLog::default());
    let mut w = World::start(&log).await;
    let roles = RoleSpec::roles(&topology(&catalog()));
    assert_eq!(roles, ["inventory", "payments", "shipping"]);
    // "o7:x" shares the prefix of o7's command ids, and is held before its payment step.
    w.place_order("o7:x");
    let (payments, charge_x) = w
        .run_until("dev.sluice.events.sagas.ChargePayment", |who| {
            who == Who::Participant(1)
        })
        .await;
    for id in ["o7", "o8-declined"] {
        w.place_order(id);
    }
    w.run_until_quiet().await;
    assert_eq!(w.status("o7"), Some(Status::Completed));
    assert_eq!(w.status("o8-declined"), Some(Status::Compensated));

    let handled = dedup_keys(&w, false);
    let forgotten = dedup_keys(&w, true);
    assert_eq!(of_saga(&handled, "o7").len(), 3, "{handled:?}");
    assert_eq!(
        of_saga(&handled, "o8-declined").len(),
        3,
        "two steps and a compensation"
    );
    for id in ["o7", "o8-declined"] {
        assert_eq!(of_saga(&forgotten, id), of_saga(&handled, id), "{id}");
    }
    assert_eq!(of_saga(&handled, "o7:x").len(), 1, "{handled:?}");
    assert!(
        of_saga(&forgotten, "o7:x").is_empty(),
        "still running: {forgotten:?}"
    );

    // Restarted over the same log: o7's command is new again, o7:x's is still known.
    let mut again = World::start(&log).await;
    again.offsets = w.offsets.clone();
    for id in ["o7", "o7:x"] {
        let reserve = w
            .written
            .iter()
            .find(|o| {
                o.key.as_deref() == Some(id.as_bytes())
                    && header(o, metadata::CE_TYPE).as_deref()
                        == Some("dev.sluice.events.sagas.ReserveInventory")
            })
            .cloned()
            .unwrap();
        again.publish(&reserve);
    }
    let participants: Vec<(Who, Record)> = again
        .queue
        .drain(..)
        .filter(|(who, _)| *who != Who::Orchestrator)
        .collect();
    for (who, record) in participants {
        again.handle(who, &record, true).await;
    }
    assert_eq!(again.executed(), ["ReserveInventory o7"]);

    // o7:x goes on and finishes: forgotten too.
    w.handle(payments, &charge_x, true).await;
    w.run_until_quiet().await;
    assert_eq!(w.status("o7:x"), Some(Status::Completed));
    let forgotten = dedup_keys(&w, true);
    assert_eq!(of_saga(&forgotten, "o7:x").len(), 3, "{forgotten:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_batch_tells_each_command_partition_once_which_sagas_it_finished() {
    let log = Arc::new(MemoryLog::default());
    let mut w = World::start(&log).await;
    let ids: Vec<String> = (0..6).map(|i| format!("o-batch-{i}")).collect();
    for id in &ids {
        w.place_order(id);
    }
    // Each saga's last reply, held, then all handled in one batch.
    let mut last = Vec::new();
    for _ in &ids {
        let (_, reply) = w
            .run_until("dev.sluice.events.sagas.ShipmentCreated", |who| {
                who == Who::Orchestrator
            })
            .await;
        last.push(reply);
    }
    let mut outputs = Vec::new();
    for reply in &last {
        outputs.extend(w.orchestrator.handle(reply).await.unwrap());
    }
    outputs.extend(w.orchestrator.batch_outputs());
    w.orchestrator.on_batch_end(true);
    w.log.commit(&outputs);
    for o in &outputs {
        w.publish(o);
    }
    w.written.extend(outputs.iter().cloned());

    let commands = &w.orchestrator.sagas()[0].def.steps[0].action.topic;
    let finished: Vec<&Output> = outputs.iter().filter(|o| &o.topic == commands).collect();
    let partitions: std::collections::BTreeSet<i32> = ids
        .iter()
        .map(|id| crate::home_partition(id.as_bytes(), PARTITIONS))
        .collect();
    assert_eq!(
        finished.len(),
        partitions.len(),
        "one per partition: {finished:?}"
    );
    let mut told = Vec::new();
    for o in finished {
        let partition = o.partition.expect("an explicit partition");
        let decoded = w
            .codec
            .decode(
                o.value.as_deref().unwrap(),
                &RecordLocation::new(commands, partition, 0),
            )
            .await
            .unwrap();
        let control = Control::from_value(&decoded.value).unwrap();
        assert_eq!(control.action, Action::Finished);
        let these: Vec<String> = serde_json::from_str(control.data.as_deref().unwrap()).unwrap();
        for id in &these {
            assert_eq!(
                crate::home_partition(id.as_bytes(), PARTITIONS),
                partition,
                "{id}"
            );
        }
        told.extend(these);
    }
    told.sort();
    assert_eq!(told, ids);

    w.run_until_quiet().await;
    let forgotten = dedup_keys(&w, true);
    for id in &ids {
        assert_eq!(w.status(id), Some(Status::Completed));
        assert_eq!(of_saga(&forgotten, id).len(), 3, "{id}: {forgotten:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_whose_list_is_not_a_list_is_refused_as_an_invalid_command() {
    let log = Arc::new(MemoryLog::default());
    let mut w = World::start(&log).await;
    let saga = w.orchestrator.sagas()[0].def.name.clone();
    let commands = w.orchestrator.sagas()[0].def.steps[0].action.topic.clone();
    let mut forged = Control::new(&saga, "", Action::Finished, "forged");
    forged.data = Some(r#"{"saga_ids": "o1"}"#.into());
    let out = w
        .orchestrator
        .to_participants(0, &forged, &commands, 0)
        .unwrap();
    w.publish(&out);
    let (who, record) = w.queue.pop_front().unwrap();
    let Who::Participant(i) = who else {
        panic!("{who:?}")
    };
    let err = w.participants[i].handle(&record).await.unwrap_err();
    // Permanent: the loop dead-letters it with this reason and goes on with the next record.
    assert!(matches!(err, HandlerError::Permanent { .. }), "{err:?}");
    assert_eq!(err.class(), &sluice_stream::ErrorClass::InvalidCommand);
    assert!(
        err.message().contains("not a list of saga ids"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_outlives_its_finished_saga_until_the_saga_expires() {
    let log = Arc::new(MemoryLog::default());
    let mut w = World::start(&log).await;
    w.orchestrator.keep_finished_ms = 0;
    w.place_order("o9");
    // The reservation is held (late), and the saga aborted meanwhile.
    let (inventory, reserve) = w
        .run_until("dev.sluice.events.sagas.ReserveInventory", |who| {
            who == Who::Participant(0)
        })
        .await;
    w.control(Action::Abort, "o9");
    w.run_until_quiet().await;
    assert_eq!(w.status("o9"), Some(Status::Compensated));
    assert!(w.executed().is_empty(), "{:?}", w.executed());
    let fence = "o9:reserve-inventory:do:1".to_string();
    assert!(dedup_keys(&w, false).contains(&fence));
    assert_eq!(
        of_saga(&dedup_keys(&w, true), "o9"),
        ["o9:reserve-inventory:undo:1"],
        "the compensation's entry is forgotten, the fence kept"
    );

    // The late reservation (or a replay of it) is still refused.
    let refused = w.handle(inventory, &reserve, true).await;
    assert!(w.executed().is_empty(), "{:?}", w.executed());
    assert_eq!(of_type(&refused, "InventoryReservationFailed").len(), 1);

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    w.control(Action::Expire, "o9");
    w.run_until_quiet().await;
    assert_eq!(w.status("o9"), None, "the orchestrator's state is gone");
    assert!(
        dedup_keys(&w, true).contains(&fence),
        "gone with the expire"
    );
}
