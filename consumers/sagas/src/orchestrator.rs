//! `sluice saga run`: the orchestrator, a [`Handler`] of the exactly-once processing loop.
//!
//! For each input record it looks up the instance, applies the [state machine](super::machine)
//! and returns, as the loop's outputs, the new state record, the commands to send, and the
//! lifecycle and outcome events. The loop commits them in one transaction together with the
//! input's offset, so a transition happens completely or not at all, and a crash at any
//! moment replays the input against the last committed state.
//!
//! Inputs:
//! - a trigger on a trigger topic becomes a `start` control message on the saga's replies
//!   topic, in the partition of its saga id (the trigger topic is keyed and partitioned by
//!   whatever its producer chose, and may be shared by several sagas);
//! - records on a replies topic (participant replies, control messages) are applied to the
//!   instance; one that sits in another partition than its saga id's is moved there first.
//!
//! Instance state is written to the state topic partition numbered like the replies
//! partition, and read back from it when that replies partition is assigned. Memory holds
//! only what is committed (the batch's own changes are applied when it commits), which is
//! also what the [timer](super::timer) scans for deadlines.
//!
//! Memory follows [`Orchestrator::max_in_flight`], not the backlog: at that many running
//! instances, triggers wait unread in their partitions (see [`Handler::admit`]) while replies
//! keep flowing, so a restart on a million queued orders holds a bounded set of sagas.

use sluice_stream::ErrorClass;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::types::Value;
use serde_json::{json, Value as Json};
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::trace_context;
use sluice_schemas::json::to_json_with_schema;
use sluice_schemas::metadata::{self, TRACEPARENT};
use sluice_schemas::{AvroCodec, Catalog, RecordLocation, RegistryClient};
use sluice_topology::model::{SAGA_CONTROL_TYPE, SAGA_LIFECYCLE_TYPES};
use sluice_topology::{naming, Topology};
use tracing::Instrument;

use super::definition::SagaDef;
use super::instance::{Instance, Kind, ParkReason, Status, TimelineEvent, TriggerRef};
use super::machine::{self, Effect, Ignored, Input};
use super::messages::{
    self, opt_text, text, Action, Command, Control, Meta, Reply, SchemaBook, COMMAND_ID_HEADER,
    CORRELATION_HEADER, SAGA_ID_HEADER,
};
use super::metrics::SagaMetrics;
use super::store::{Due, Slot, Store};
use super::{home_partition, SagaError};
use sluice_stream::headers as routing;
use sluice_stream::state::kafka as compacted;
use sluice_stream::state::{restore_latest, KafkaStateLog, Ownership, SharedLog};
use sluice_stream::{Admit, Assigned, Handler, HandlerError, Output, Record};

mod admission;
use admission::Admission;

/// The orchestrator's consumer group for a topology prefix.
pub fn group(prefix: &str) -> String {
    format!("{prefix}-sagas")
}

/// The retry policy the orchestrator uses when the topology has one by this name.
pub const RETRY_POLICY: &str = "sagas";

/// One saga as the orchestrator runs it.
#[derive(Debug, Clone)]
pub struct SagaRuntime {
    pub def: SagaDef,
    pub replies_topic: String,
    pub state_topic: String,
    /// Partitions of the replies (and state) topic.
    pub partitions: i32,
    /// Partitions of each command topic: a saga's commands, and the word that it finished,
    /// go to its id's partition there, so the word follows the commands.
    command_partitions: BTreeMap<String, i32>,
    source: String,
    /// Lifecycle event type → its routed topic.
    lifecycle: HashMap<String, String>,
    /// (type, topic) of the completed and compensated outcome events.
    outcome: Option<((String, String), (String, String))>,
}

impl SagaRuntime {
    /// The distinct topics the saga's commands (actions and compensations) go to.
    fn command_topics(&self) -> impl Iterator<Item = &str> {
        self.command_partitions.keys().map(String::as_str)
    }

    /// The partition of `topic` (a command topic) that saga `id`'s commands go to.
    fn command_partition(&self, topic: &str, id: &str) -> i32 {
        let partitions = self.command_partitions.get(topic).copied().unwrap_or(1);
        home_partition(id.as_bytes(), partitions)
    }

    /// The lifecycle event type `dev.sluice.events.sagas.<short>` and its topic (every one is
    /// routed when the runtime is built).
    fn lifecycle_topic(&self, short: &str) -> Result<(String, &str), SagaError> {
        let t = format!("dev.sluice.events.sagas.{short}");
        match self.lifecycle.get(&t) {
            Some(topic) => Ok((t, topic.as_str())),
            None => Err(SagaError::Definition(format!(
                "saga `{}`: lifecycle event {t} is not routed",
                self.def.name
            ))),
        }
    }

    /// The name of step `step` (a position the machine took from this definition).
    fn step_name(&self, step: usize) -> Result<&str, SagaError> {
        self.def
            .steps
            .get(step)
            .map(|s| s.name.as_str())
            .ok_or_else(|| {
                SagaError::Definition(format!("saga `{}` has no step {step}", self.def.name))
            })
    }
}

/// What a batch counts, applied to the metrics only if it commits.
#[derive(Debug, Clone)]
enum Count {
    Event(usize, TimelineEvent),
    Ignored(usize, Ignored),
    Terminal(usize, Status, f64),
    Forwarded(usize),
    Skipped(String),
    Expired(usize),
}

/// Finished instances' state records are kept a week by default, like the normalizer's
/// dedup window: a trigger redelivered within it does not start the saga again.
pub const DEFAULT_KEEP_FINISHED_MS: i64 = 7 * 24 * 3_600_000;

/// Running instances unless configured. Draining 100,000 queued orders, the orchestrator
/// peaked near 290 MiB with it at about 2,900 sagas/s; 5,000 took 277 MiB at 2,700/s and
/// 2,000 about 240 MiB at 1,800/s (docs/benchmarks.md): fewer in flight means smaller
/// batches for the participants.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// How long a trigger partition waits before its next trigger is offered again at the cap.
const ADMIT_AGAIN_AFTER: Duration = Duration::from_millis(100);

pub struct Orchestrator {
    /// Where instances' state is read back from.
    state: SharedLog,
    codec: AvroCodec,
    book: SchemaBook,
    sagas: Vec<SagaRuntime>,
    by_replies: HashMap<String, usize>,
    by_trigger_topic: HashMap<String, Vec<usize>>,
    store: Store,
    /// Which state partitions of each saga (by index) this instance holds.
    owned: Vec<Ownership>,
    /// The batch's counts, applied to the metrics only if it commits.
    counts: Mutex<Vec<Count>>,
    /// Instances (saga, id) the batch finishes; the participants are told once per batch.
    finished: Mutex<Vec<(usize, String)>>,
    metrics: SagaMetrics,
    /// How long a finished instance stays in memory in full (a late reply is told from a
    /// duplicate against it) before only its status is kept.
    pub finished_retention_ms: i64,
    /// How long a finished instance's state record is kept. Until then a repeated trigger
    /// for the same saga id is recognised and ignored; after it the record is deleted (a
    /// tombstone), so the state topic and memory do not grow with every saga ever run.
    pub keep_finished_ms: i64,
    /// Most instances running or compensating at once; a trigger beyond it waits in its
    /// partition.
    pub max_in_flight: usize,
    admission: Admission,
}

/// What an orchestrator runs: its sagas, and the (topic, event type) pairs they read or
/// write, whose schemas it needs.
#[derive(Debug)]
pub struct Plan {
    pub sagas: Vec<SagaRuntime>,
    pub pairs: Vec<(String, String)>,
}

/// The sagas `only` names (every saga when empty), checked against the catalog;
/// `partitions_of` gives a replies or command topic's partition count.
pub fn plan(
    catalog: &Catalog,
    topology: &Topology,
    only: &[String],
    partitions_of: impl Fn(&str) -> Result<i32, SagaError>,
) -> Result<Plan, SagaError> {
    let mut sagas = Vec::new();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for spec in &topology.sagas {
        if !only.is_empty() && !only.contains(&spec.name) {
            continue;
        }
        let def = SagaDef::from(spec);
        let problems = messages::definition_problems(&def, catalog);
        if !problems.is_empty() {
            return Err(SagaError::Definition(problems.join("\n")));
        }
        let replies_topic = naming::saga_replies_topic(&topology.prefix, &def.name);
        let partitions = partitions_of(&replies_topic)?;
        let route = |t: &str| {
            topology
                .route_of(t)
                .map(str::to_string)
                .ok_or_else(|| SagaError::Definition(format!("`{t}` is not routed")))
        };
        let mut lifecycle = HashMap::new();
        for t in SAGA_LIFECYCLE_TYPES {
            let topic = route(t)?;
            pairs.push((topic.clone(), t.to_string()));
            lifecycle.insert(t.to_string(), topic);
        }
        let outcome = match &def.outcome {
            Some((done, undone)) => {
                let o = (
                    (done.clone(), route(done)?),
                    (undone.clone(), route(undone)?),
                );
                pairs.push((o.0 .1.clone(), done.clone()));
                pairs.push((o.1 .1.clone(), undone.clone()));
                Some(o)
            }
            None => None,
        };
        pairs.push((replies_topic.clone(), SAGA_CONTROL_TYPE.to_string()));
        pairs.push((def.trigger_topic.clone(), def.trigger_type.clone()));
        let mut command_partitions = BTreeMap::new();
        for step in &def.steps {
            for c in std::iter::once(&step.action).chain(step.compensation.as_ref()) {
                if !command_partitions.contains_key(&c.topic) {
                    command_partitions.insert(c.topic.clone(), partitions_of(&c.topic)?);
                }
                pairs.push((c.topic.clone(), c.event_type.clone()));
                // `finished` and `expire` go to the participants too (they forget the saga's
                // commands).
                pairs.push((c.topic.clone(), SAGA_CONTROL_TYPE.to_string()));
                pairs.push((replies_topic.clone(), c.success.clone()));
                pairs.push((replies_topic.clone(), c.failure.clone()));
            }
        }
        sagas.push(SagaRuntime {
            state_topic: naming::saga_state_topic(&topology.prefix, &def.name),
            source: format!("sluice://sagas/{}", def.name),
            def,
            replies_topic,
            partitions,
            command_partitions,
            lifecycle,
            outcome,
        });
    }
    if sagas.is_empty() {
        return Err(SagaError::Definition(
            "the topology declares no sagas".into(),
        ));
    }
    Ok(Plan { sagas, pairs })
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field(
                "sagas",
                &self.sagas.iter().map(|s| &s.def.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Orchestrator {
    /// Builds the orchestrator for `only` (every saga when empty), checking each saga against
    /// the catalog and resolving every schema it reads or writes from the registry.
    pub async fn new(
        clients: KafkaClients,
        registry: &RegistryClient,
        catalog: &Catalog,
        topology: &Topology,
        only: &[String],
        metrics_registry: &prometheus::Registry,
    ) -> Result<Self, SagaError> {
        for name in only {
            if !topology.sagas.iter().any(|s| &s.name == name) {
                return Err(SagaError::UnknownSaga(name.clone()));
            }
        }
        let codec = AvroCodec::new(registry.clone());
        let partitions_of = |topic: &str| {
            let clients = clients.clone();
            tokio::task::block_in_place(|| compacted::partition_count(&clients, topic))
                .map_err(SagaError::from)
        };
        let Plan { sagas, pairs } = plan(catalog, topology, only, partitions_of)?;
        let book =
            SchemaBook::resolve(registry, catalog, topology.subjects.naming, pairs, &codec).await?;
        let state: SharedLog = Arc::new(KafkaStateLog::new(clients));
        Ok(Self::with_parts(
            state,
            codec,
            book,
            sagas,
            SagaMetrics::new(metrics_registry)?,
        ))
    }

    /// An orchestrator from parts already resolved: the state log, the codec (with every
    /// schema the book holds in its cache), the schema book and the sagas' plans.
    pub fn with_parts(
        state: SharedLog,
        codec: AvroCodec,
        book: SchemaBook,
        sagas: Vec<SagaRuntime>,
        metrics: SagaMetrics,
    ) -> Self {
        let by_replies = sagas
            .iter()
            .enumerate()
            .map(|(i, s)| (s.replies_topic.clone(), i))
            .collect();
        let mut by_trigger_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in sagas.iter().enumerate() {
            by_trigger_topic
                .entry(s.def.trigger_topic.clone())
                .or_default()
                .push(i);
        }
        Self {
            state,
            codec,
            book,
            owned: sagas.iter().map(|_| Ownership::default()).collect(),
            sagas,
            by_replies,
            by_trigger_topic,
            store: Store::default(),
            counts: Mutex::default(),
            finished: Mutex::default(),
            metrics,
            finished_retention_ms: 60_000,
            keep_finished_ms: DEFAULT_KEEP_FINISHED_MS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            admission: Admission::default(),
        }
    }
    /// The topics the loop consumes: every saga's replies topic and trigger topic.
    pub fn input_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .by_replies
            .keys()
            .chain(self.by_trigger_topic.keys())
            .cloned()
            .collect();
        t.sort();
        t.dedup();
        t
    }

    pub fn sagas(&self) -> &[SagaRuntime] {
        &self.sagas
    }

    pub fn metrics(&self) -> &SagaMetrics {
        &self.metrics
    }

    fn location(record: &Record) -> RecordLocation {
        RecordLocation::new(&record.topic, record.partition, record.offset)
    }

    /// Decodes a wire-format value with its writer schema; returns (record full name, value).
    async fn decode(
        &self,
        record: &Record,
    ) -> Result<(String, Value, Arc<apache_avro::Schema>), HandlerError> {
        let location = Self::location(record);
        let payload = record.value.as_deref().unwrap_or_default();
        let undecodable = |e: sluice_schemas::CodecError| {
            if e.is_transient() {
                HandlerError::transient(ErrorClass::RegistryUnavailable, e.to_string())
            } else {
                HandlerError::permanent(ErrorClass::Undecodable, e.to_string())
            }
        };
        let decoded = self
            .codec
            .decode(payload, &location)
            .await
            .map_err(undecodable)?;
        let writer = self
            .codec
            .writer_schema(decoded.schema_id, &location)
            .await
            .map_err(undecodable)?;
        let name = match writer.as_ref() {
            apache_avro::Schema::Record(r) => r.name.fullname(None),
            _ => String::new(),
        };
        Ok((name, decoded.value, writer))
    }

    async fn on_trigger(
        &self,
        sagas: &[usize],
        record: &Record,
    ) -> Result<Vec<Output>, HandlerError> {
        let declared = record.header(metadata::CE_TYPE);
        let wanted: Vec<usize> = sagas
            .iter()
            .copied()
            .filter(|&s| declared.is_none_or(|t| t == self.sagas[s].def.trigger_type))
            .collect();
        if wanted.is_empty() {
            self.count(Count::Skipped(record.topic.clone()));
            return Ok(Vec::new());
        }
        let (event_type, value, writer) = self.decode(record).await?;
        let event = to_json_with_schema(&value, &writer);
        let (topic, partition, offset) = original_location(record);
        let mut outputs = Vec::new();
        for s in wanted {
            let saga = &self.sagas[s];
            if event_type != saga.def.trigger_type {
                self.count(Count::Skipped(record.topic.clone()));
                continue;
            }
            let id = saga.def.correlation_value(&event).ok_or_else(|| {
                HandlerError::permanent(
                    ErrorClass::MissingCorrelationKey,
                    format!(
                        "{event_type} at {topic}/{partition}@{offset} has no `{}` for saga `{}`",
                        saga.def.correlation_key.join("."),
                        saga.def.name
                    ),
                )
            })?;
            let mut control = Control::new(
                &saga.def.name,
                &id,
                Action::Start,
                &messages::event_id(&format!(
                    "start/{}/{topic}/{partition}/{offset}",
                    saga.def.name
                )),
            );
            control.data = Some(event.to_string());
            control.trigger_event_id = event
                .get("event_id")
                .and_then(Json::as_str)
                .map(str::to_string);
            control.trigger_type = Some(event_type.clone());
            control.trigger_location = Some(format!("{topic}/{partition}@{offset}"));
            let traceparent = trace_context::traceparent(&tracing::Span::current())
                .or_else(|| record.header(TRACEPARENT).map(str::to_string))
                .unwrap_or_else(|| {
                    messages::child_traceparent(None, &format!("{}/{id}", saga.def.name))
                });
            outputs.push(self.control_output(s, &control, &traceparent)?);
        }
        Ok(outputs)
    }

    /// A control message for instance `control.saga_id` of saga `s`, in its home partition.
    pub fn control_output(
        &self,
        s: usize,
        control: &Control,
        traceparent: &str,
    ) -> Result<Output, HandlerError> {
        let saga = &self.sagas[s];
        let meta = Meta {
            event_id: control.request_id.clone(),
            occurred_at: metadata::now_ms(),
            source: saga.source.clone(),
            subject: Some(control.saga_id.clone()),
        };
        let value = self
            .book
            .encode_fields(
                &saga.replies_topic,
                SAGA_CONTROL_TYPE,
                control.fields(&meta),
            )
            .map_err(encode_failed)?;
        Ok(Output {
            topic: saga.replies_topic.clone(),
            partition: Some(home_partition(control.saga_id.as_bytes(), saga.partitions)),
            key: Some(control.saga_id.clone().into_bytes()),
            value: Some(value),
            headers: meta.headers(
                SAGA_CONTROL_TYPE,
                traceparent,
                &[
                    (SAGA_ID_HEADER, &control.saga_id),
                    (CORRELATION_HEADER, &control.saga_id),
                ],
            ),
        })
    }

    async fn on_input(&self, s: usize, record: &Record) -> Result<Vec<Output>, HandlerError> {
        let saga = &self.sagas[s];
        let id = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                HandlerError::permanent(
                    ErrorClass::MissingKey,
                    "saga inputs must be keyed by saga id (UTF-8)",
                )
            })?
            .to_string();
        let home = home_partition(id.as_bytes(), saga.partitions);
        if record.topic != saga.replies_topic || record.partition != home {
            // Headers are kept as they are: a record back from a retry tier keeps its attempt
            // count, so a failure that lasts still ends in the dead-letter topic.
            self.count(Count::Forwarded(s));
            return Ok(vec![Output {
                topic: saga.replies_topic.clone(),
                partition: Some(home),
                key: record.key.clone(),
                value: record.value.clone(),
                headers: record.headers.clone(),
            }]);
        }
        let (event_type, value, _) = self.decode(record).await?;
        let bad = |e: String| {
            HandlerError::permanent(ErrorClass::InvalidSagaMessage, format!("{event_type}: {e}"))
        };
        let input = if event_type == SAGA_CONTROL_TYPE {
            let c = Control::from_value(&value).map_err(bad)?;
            match c.action {
                Action::Expire => return Ok(self.expire(s, home, &id, &c)),
                Action::Finished => {
                    self.count(Count::Ignored(s, Ignored::ForParticipants));
                    return Ok(Vec::new());
                }
                Action::Start => {
                    self.admission.applied();
                    Input::Start {
                        data: c.data.unwrap_or_else(|| "{}".into()),
                        trigger: TriggerRef {
                            event_id: c.trigger_event_id,
                            event_type: c.trigger_type.unwrap_or_default(),
                            location: c.trigger_location,
                        },
                        traceparent: record.header(TRACEPARENT).map(str::to_string),
                    }
                }
                Action::Deadline => Input::Deadline {
                    command_id: c.command_id.unwrap_or_default(),
                    due_at: c.due_at.unwrap_or_default(),
                },
                Action::Retry => Input::Retry {
                    request_id: c.request_id,
                    by: c.requested_by,
                },
                Action::Abort => Input::Abort {
                    request_id: c.request_id,
                    by: c.requested_by,
                    reason: c.reason,
                },
            }
        } else if saga.def.steps.iter().any(|st| {
            std::iter::once(&st.action)
                .chain(st.compensation.as_ref())
                .any(|c| c.success == event_type || c.failure == event_type)
        }) {
            let r = Reply::from_value(&event_type, &value).map_err(bad)?;
            Input::Reply {
                event_type: r.event_type,
                command_id: r.command_id,
                reason: r.reason,
                retryable: r.retryable,
                result: r.result,
            }
        } else {
            tracing::warn!(
                saga = saga.def.name,
                event_type,
                offset = record.offset,
                "not a reply of this saga; ignored"
            );
            self.count(Count::Ignored(s, Ignored::UnexpectedReply));
            return Ok(Vec::new());
        };

        let now = metadata::now_ms();
        let current = self.store.get(s, home, &id);
        let was_finished = current
            .as_ref()
            .and_then(super::store::finished_at)
            .is_some();
        let transition = match current {
            Some(Slot::Gone { status, .. }) => {
                let why = match input {
                    Input::Start { .. } => Ignored::DuplicateTrigger,
                    Input::Reply { .. } => Ignored::LateReply,
                    Input::Deadline { .. } => Ignored::StaleDeadline,
                    Input::Retry { .. } => Ignored::NotParked,
                    Input::Abort { .. } => Ignored::NotRunning,
                };
                tracing::debug!(
                    saga = saga.def.name,
                    id,
                    status = status.as_str(),
                    reason = why.as_str(),
                    "input for a finished instance ignored"
                );
                self.count(Count::Ignored(s, why));
                return Ok(Vec::new());
            }
            Some(Slot::Live(current)) => machine::apply(&saga.def, &id, Some(&current), input, now),
            None => machine::apply(&saga.def, &id, None, input, now),
        };
        if let Some(why) = transition.ignored {
            tracing::debug!(
                saga = saga.def.name,
                id,
                reason = why.as_str(),
                "input ignored"
            );
            self.count(Count::Ignored(s, why));
        }
        let Some(state) = transition.state else {
            return Ok(Vec::new());
        };
        let mut outputs = Vec::with_capacity(transition.effects.len() + 2);
        outputs.push(Output {
            topic: saga.state_topic.clone(),
            partition: Some(home),
            key: Some(id.clone().into_bytes()),
            value: Some(state.to_json()),
            headers: Vec::new(),
        });
        for (n, effect) in transition.effects.iter().enumerate() {
            outputs.extend(
                self.render(saga, &state, effect, n, now)
                    .map_err(encode_failed)?,
            );
        }
        for event in &transition.events {
            self.count(Count::Event(s, *event));
        }
        if state.status.is_terminal() {
            let seconds = (now - state.started_at).max(0) as f64 / 1000.0;
            self.count(Count::Terminal(s, state.status, seconds));
            if !was_finished {
                self.finished
                    .lock()
                    .expect("finished sagas")
                    .push((s, id.clone()));
            }
        }
        self.store.stage(s, home, id, Arc::new(state));
        Ok(outputs)
    }

    /// The records one effect writes.
    fn render(
        &self,
        saga: &SagaRuntime,
        state: &Instance,
        effect: &Effect,
        n: usize,
        now: i64,
    ) -> Result<Vec<Output>, SagaError> {
        let name = format!("{}/{}/{}/{n}", saga.def.name, state.id, state.seq);
        let meta = Meta {
            event_id: messages::event_id(&name),
            occurred_at: now,
            source: saga.source.clone(),
            subject: Some(state.id.clone()),
        };
        let traceparent = trace_context::traceparent(&tracing::Span::current())
            .unwrap_or_else(|| messages::child_traceparent(state.traceparent.as_deref(), &name));
        let output =
            |topic: &str, event_type: &str, value: Vec<u8>, extra: &[(&str, &str)]| Output {
                topic: topic.to_string(),
                partition: None,
                key: Some(state.id.clone().into_bytes()),
                value: Some(value),
                headers: meta.headers(event_type, &traceparent, extra),
            };
        let saga_header = [(SAGA_ID_HEADER, state.id.as_str())];
        let lifecycle = |short: &str, fields: Vec<(&str, Value)>| {
            let (t, topic) = saga.lifecycle_topic(short)?;
            let mut all = vec![
                ("saga_id", text(&state.id)),
                ("saga_name", text(&saga.def.name)),
                ("correlation_id", text(&state.id)),
            ];
            all.extend(fields);
            let value = self.book.encode_fields(topic, &t, meta.with(all))?;
            Ok::<Output, SagaError>(output(topic, &t, value, &saga_header))
        };
        let outcome = |which: Option<&(String, String)>, reason: Option<&str>| {
            which
                .map(|(t, topic)| {
                    let body = self.outcome_body(topic, t, state, &meta, reason);
                    let value = self.book.encode(topic, t, &body)?;
                    Ok::<Output, SagaError>(output(topic, t, value, &saga_header))
                })
                .transpose()
        };
        let steps = || Value::Array(saga.def.steps.iter().map(|s| text(&s.name)).collect());
        let duration = Value::Long(now - state.started_at);
        let started_at = Value::TimestampMillis(state.started_at);
        let mut out = Vec::with_capacity(2);
        match effect {
            Effect::Command {
                step,
                kind,
                command_id,
                attempt,
                compensates,
            } => {
                let st = saga.def.steps.get(*step).ok_or_else(|| {
                    SagaError::Definition(format!("saga `{}` has no step {step}", saga.def.name))
                })?;
                // The machine only sends commands the definition has; checked again rather
                // than trusted, so a mistake costs this input (dead-lettered), not the process.
                let c = match kind {
                    Kind::Action => &st.action,
                    Kind::Compensation => st.compensation.as_ref().ok_or_else(|| {
                        SagaError::Definition(format!(
                            "step `{}` of saga `{}` has no compensation",
                            st.name, saga.def.name
                        ))
                    })?,
                };
                let command = Command {
                    event_type: c.event_type.clone(),
                    saga_id: state.id.clone(),
                    saga_name: saga.def.name.clone(),
                    step: st.name.clone(),
                    kind: *kind,
                    compensates: compensates.clone(),
                    attempt: *attempt,
                    command_id: command_id.clone(),
                    correlation_id: state.id.clone(),
                    reply_topic: saga.replies_topic.clone(),
                    data: state.data.clone(),
                    results: results_json(state),
                };
                let value =
                    self.book
                        .encode_fields(&c.topic, &c.event_type, command.fields(&meta))?;
                let mut command = output(
                    &c.topic,
                    &c.event_type,
                    value,
                    &[
                        (SAGA_ID_HEADER, &state.id),
                        (COMMAND_ID_HEADER, command_id),
                        (CORRELATION_HEADER, &state.id),
                    ],
                );
                command.partition = Some(saga.command_partition(&c.topic, &state.id));
                out.push(command);
            }
            Effect::Started => out.push(lifecycle(
                "SagaStarted",
                vec![
                    (
                        "trigger_event_id",
                        opt_text(state.trigger.event_id.as_deref()),
                    ),
                    ("trigger_type", text(&state.trigger.event_type)),
                    ("steps", steps()),
                ],
            )?),
            Effect::StepCompleted {
                step,
                command_id,
                attempt,
                result,
            } => out.push(lifecycle(
                "SagaStepCompleted",
                vec![
                    ("step", text(saga.step_name(*step)?)),
                    ("step_index", Value::Int(*step as i32)),
                    ("command_id", text(command_id)),
                    ("attempt", Value::Int(*attempt as i32)),
                    ("result", opt_text(result.as_deref())),
                ],
            )?),
            Effect::Completed => {
                out.push(lifecycle(
                    "SagaCompleted",
                    vec![
                        ("started_at", started_at),
                        ("duration_ms", duration),
                        ("steps", steps()),
                    ],
                )?);
                out.extend(outcome(saga.outcome.as_ref().map(|o| &o.0), None)?);
            }
            Effect::Compensated => {
                let failure = state.failure.as_ref();
                let reason = failure.map_or("compensated", |f| f.reason.as_str());
                out.push(lifecycle(
                    "SagaCompensated",
                    vec![
                        ("started_at", started_at),
                        ("duration_ms", duration),
                        ("reason", text(reason)),
                        (
                            "failed_step",
                            opt_text(failure.and_then(|f| f.step.as_deref())),
                        ),
                        (
                            "failure_kind",
                            text(failure.map_or("failed", |f| f.kind.as_str())),
                        ),
                        (
                            "compensated_steps",
                            Value::Array(state.compensated.iter().map(|d| text(&d.step)).collect()),
                        ),
                    ],
                )?);
                out.extend(outcome(saga.outcome.as_ref().map(|o| &o.1), Some(reason))?);
            }
            Effect::Parked {
                step,
                reason,
                attempts,
                why,
            } => out.push(lifecycle(
                "SagaFailed",
                vec![
                    ("started_at", started_at),
                    (
                        "reason",
                        match why {
                            ParkReason::CompensationExhausted => text(reason),
                            ParkReason::DefinitionChanged => {
                                text(&format!("{}: {reason}", why.as_str()))
                            }
                        },
                    ),
                    ("step", text(step)),
                    ("attempts", Value::Int(*attempts as i32)),
                    ("state", text(Status::Parked.as_str())),
                ],
            )?),
        }
        Ok(out)
    }

    /// An outcome event: the trigger's fields the event has, plus the saga id and (when
    /// cancelled) why.
    fn outcome_body(
        &self,
        topic: &str,
        event_type: &str,
        state: &Instance,
        meta: &Meta,
        reason: Option<&str>,
    ) -> Json {
        let fields = self.book.field_names(topic, event_type);
        let mut body = match serde_json::from_str::<Json>(&state.data) {
            Ok(Json::Object(mut m)) => {
                m.retain(|k, _| fields.contains(k));
                Json::Object(m)
            }
            _ => json!({}),
        };
        merge(&mut body, json!({"saga_id": state.id}));
        if let Some(r) = reason {
            merge(&mut body, json!({"reason": r}));
        }
        if let Some(o) = body.as_object_mut() {
            o.retain(|k, _| fields.contains(k));
        }
        meta.fill(body)
    }

    fn count(&self, c: Count) {
        self.counts.lock().expect("saga counts").push(c);
    }

    fn apply_counts(&self, counts: Vec<Count>) {
        let name = |s: usize| self.sagas[s].def.name.as_str();
        for c in counts {
            match c {
                Count::Event(s, e) => self
                    .metrics
                    .transitions
                    .with_label_values(&[name(s), e.as_str()])
                    .inc(),
                Count::Ignored(s, why) => self
                    .metrics
                    .ignored
                    .with_label_values(&[name(s), why.as_str()])
                    .inc(),
                Count::Terminal(s, status, seconds) => {
                    self.metrics
                        .terminal
                        .with_label_values(&[name(s), status.as_str()])
                        .inc();
                    self.metrics
                        .duration
                        .with_label_values(&[name(s), status.as_str()])
                        .observe(seconds);
                }
                Count::Forwarded(s) => self.metrics.forwarded.with_label_values(&[name(s)]).inc(),
                Count::Expired(s) => self.metrics.expired.with_label_values(&[name(s)]).inc(),
                Count::Skipped(topic) => self.metrics.skipped.with_label_values(&[&topic]).inc(),
            }
        }
    }

    /// Pending commands whose deadline or backoff has passed at `now`.
    pub fn due(&self, now: i64) -> Vec<Due> {
        self.store.due(now)
    }

    /// Finished instances whose state may now be deleted (at most `limit`).
    pub fn expired(&self, now: i64, limit: usize) -> Vec<(usize, String)> {
        self.store
            .expired(now - self.keep_finished_ms, limit)
            .into_iter()
            .map(|(s, _, id)| (s, id))
            .collect()
    }

    /// Deletes a finished instance's state, if it is still finished and old enough (an
    /// expire message may be late or written twice): a tombstone in the state topic, in the
    /// batch's transaction.
    fn expire(&self, s: usize, home: i32, id: &str, control: &Control) -> Vec<Output> {
        let saga = &self.sagas[s];
        let before = metadata::now_ms() - self.keep_finished_ms;
        let expired = self
            .store
            .get(s, home, id)
            .as_ref()
            .and_then(super::store::finished_at)
            .is_some_and(|at| at < before);
        if !expired {
            self.count(Count::Ignored(s, Ignored::NotExpired));
            return Vec::new();
        }
        self.store.stage_delete(s, home, id.to_string());
        self.count(Count::Expired(s));
        let tombstone = Output {
            topic: saga.state_topic.clone(),
            partition: Some(home),
            key: Some(id.as_bytes().to_vec()),
            value: None,
            headers: Vec::new(),
        };
        let mut outputs = vec![tombstone];
        outputs.extend(self.tell_participants(s, control));
        outputs
    }

    /// The `expire` on each of the saga's command topics, in the partition its commands went
    /// to, so it follows them: participants forget the commands of the saga they handled
    /// from there, fences included.
    fn tell_participants(&self, s: usize, control: &Control) -> Vec<Output> {
        let saga = &self.sagas[s];
        saga.command_topics()
            .filter_map(|topic| {
                let partition = saga.command_partition(topic, &control.saga_id);
                self.to_participants(s, control, topic, partition)
            })
            .collect()
    }

    /// One `finished` per command topic partition for the instances this batch finishes
    /// (their ids in its `data`, a JSON array), after their commands there: participants
    /// forget the commands of those sagas they handled from there, fences kept. One message
    /// per partition and batch rather than per saga keeps it off the saga's own cost.
    fn finished_outputs(&self) -> Vec<Output> {
        let finished = std::mem::take(&mut *self.finished.lock().expect("finished sagas"));
        let mut groups: BTreeMap<(usize, &str, i32), Vec<String>> = BTreeMap::new();
        for (s, id) in finished {
            let saga = &self.sagas[s];
            for topic in saga.command_topics() {
                let partition = saga.command_partition(topic, &id);
                groups
                    .entry((s, topic, partition))
                    .or_default()
                    .push(id.clone());
            }
        }
        groups
            .into_iter()
            .filter_map(|((s, topic, partition), ids)| {
                let name = &self.sagas[s].def.name;
                let first = ids.first().cloned().unwrap_or_default();
                let request_id = format!("{name}/{first}/{}/finished", ids.len());
                let mut control = Control::new(name, "", Action::Finished, &request_id);
                control.data = Some(Json::from(ids).to_string());
                self.to_participants(s, &control, topic, partition)
            })
            .collect()
    }

    /// `control` as a record for the participants on `topic`; `None` (logged) if it cannot be
    /// encoded: the participants then keep those commands, which is safe.
    fn to_participants(
        &self,
        s: usize,
        control: &Control,
        topic: &str,
        partition: i32,
    ) -> Option<Output> {
        let saga = &self.sagas[s];
        let meta = Meta {
            event_id: messages::event_id(&format!("{}/participants", control.request_id)),
            occurred_at: metadata::now_ms(),
            source: saga.source.clone(),
            subject: Some(control.saga_id.clone()).filter(|id| !id.is_empty()),
        };
        let traceparent = messages::child_traceparent(None, &meta.event_id);
        let saga_header: Vec<(&str, &str)> = (!control.saga_id.is_empty())
            .then_some((SAGA_ID_HEADER, control.saga_id.as_str()))
            .into_iter()
            .collect();
        match self
            .book
            .encode_fields(topic, SAGA_CONTROL_TYPE, control.fields(&meta))
        {
            Ok(value) => Some(Output {
                topic: topic.to_string(),
                partition: Some(partition),
                key: Some(control.saga_id.clone().into_bytes()).filter(|k| !k.is_empty()),
                value: Some(value),
                headers: meta.headers(SAGA_CONTROL_TYPE, &traceparent, &saga_header),
            }),
            Err(error) => {
                tracing::error!(
                    saga = saga.def.name,
                    topic,
                    action = control.action.as_str(),
                    %error,
                    "participants are not told the saga is over; they keep its commands"
                );
                None
            }
        }
    }

    /// Updates the in-flight gauges and keeps only the status of instances finished more
    /// than `finished_retention_ms` ago.
    pub fn housekeeping(&self, now: i64) {
        let tallies = self
            .store
            .sweep(self.sagas.len(), now, now - self.finished_retention_ms);
        for (saga, tally) in self.sagas.iter().zip(tallies) {
            let name = saga.def.name.as_str();
            self.metrics
                .in_flight
                .with_label_values(&[name])
                .set(tally.in_flight);
            self.metrics
                .parked
                .with_label_values(&[name])
                .set(tally.parked);
            for step in saga
                .def
                .steps
                .iter()
                .map(|st| st.name.as_str())
                .chain(["-"])
            {
                let age = tally.oldest.get(step).copied().unwrap_or(0);
                self.metrics
                    .oldest_in_flight
                    .with_label_values(&[name, step])
                    .set(age as f64 / 1000.0);
            }
        }
    }

    /// Instances held in full in memory, for the benchmark.
    pub fn live_instances(&self) -> usize {
        self.store.live()
    }
}

impl Orchestrator {
    fn is_trigger(&self, record: &Record) -> bool {
        let topic = record
            .header(routing::ORIGINAL_TOPIC)
            .unwrap_or(&record.topic);
        self.by_trigger_topic.contains_key(topic)
    }

    /// Routes one record: a reply or control message to its instance, a trigger to the sagas
    /// it starts.
    async fn route(&self, record: &Record) -> Result<Vec<Output>, HandlerError> {
        let topic = record
            .header(routing::ORIGINAL_TOPIC)
            .unwrap_or(&record.topic)
            .to_string();
        if let Some(&s) = self.by_replies.get(&topic) {
            return self.on_input(s, record).await;
        }
        if let Some(sagas) = self.by_trigger_topic.get(&topic) {
            let starts = self.on_trigger(sagas, record).await;
            self.admission.made(starts.as_ref().map_or(0, Vec::len));
            return starts;
        }
        Err(HandlerError::permanent(
            ErrorClass::UnknownTopic,
            format!("no saga reads {topic}"),
        ))
    }
}

impl Orchestrator {
    /// Reads saga `s`'s state partition `p` back into the store: (records read, instances
    /// held in full, unreadable records).
    fn restore_partition(&self, s: usize, p: i32) -> Result<(usize, usize, usize), HandlerError> {
        let topic = &self.sagas[s].state_topic;
        let restored =
            tokio::task::block_in_place(|| restore_latest(&*self.state, topic, &[p], restore))
                .map_err(|e| {
                    HandlerError::transient(ErrorClass::SagaStateRestore, e.to_string())
                })?;
        for (p, key, why) in &restored.unreadable {
            let id = String::from_utf8_lossy(key);
            tracing::error!(topic, partition = p, %id, error = why, "unreadable saga state record; this instance cannot continue until it is repaired");
        }
        let mut live = 0;
        let slots = restored
            .partitions
            .into_values()
            .flatten()
            .map(|(id, slot)| {
                live += usize::from(matches!(slot, Slot::Live(_)));
                let id = String::from_utf8(id)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                (id, slot)
            });
        self.store.load(s, p, slots);
        Ok((restored.records, live, restored.unreadable.len()))
    }
}

impl Handler for Orchestrator {
    fn admit(&self, record: &Record) -> Admit {
        if !self.is_trigger(record) {
            return Admit::Now;
        }
        if self
            .admission
            .admit(self.store.moving(), self.max_in_flight)
        {
            Admit::Now
        } else {
            Admit::Later(ADMIT_AGAIN_AFTER)
        }
    }

    async fn handle(&self, record: &Record) -> Result<Vec<Output>, HandlerError> {
        // This hop's span: a child of the trigger's or reply's, the parent of what the
        // transition writes.
        let span =
            tracing::info_span!("saga.transition", topic = %record.topic, offset = record.offset);
        trace_context::follow(&span, record.header(TRACEPARENT));
        self.route(record).instrument(span).await
    }

    async fn on_assigned(&self, partitions: &Assigned) -> Result<(), HandlerError> {
        self.admission.rebalanced();
        for (s, saga) in self.sagas.iter().enumerate() {
            let needed = self.owned[s].assign(partitions, |t| t == saga.replies_topic);
            if needed.is_empty() {
                continue;
            }
            // One partition at a time: a restart holds one partition's keys at once, not
            // every finished saga of every partition it was given.
            let (mut records, mut live, mut unreadable) = (0, 0, 0);
            for p in &needed {
                let (r, l, u) = self.restore_partition(s, *p)?;
                (records, live, unreadable) = (records + r, live + l, unreadable + u);
            }
            self.owned[s].restored(&needed);
            tracing::info!(saga = saga.def.name, partitions = ?needed, records, live, unreadable, "saga instances restored");
        }
        Ok(())
    }

    fn on_revoked(&self, partitions: &Assigned) {
        self.admission.rebalanced();
        for (s, owned) in self.owned.iter().enumerate() {
            for p in owned.revoke(partitions) {
                self.store.drop_partition(s, p);
            }
        }
    }

    fn batch_outputs(&self) -> Vec<Output> {
        self.finished_outputs()
    }

    fn on_batch_end(&self, committed: bool) {
        self.finished.lock().expect("finished sagas").clear();
        self.store.finish(committed);
        self.admission.batch_end(committed);
        let counts = std::mem::take(&mut *self.counts.lock().expect("saga counts"));
        if committed {
            self.apply_counts(counts);
        }
    }
}

/// A state record read back. Finished instances are only peeked at (status and when they
/// finished): a restart neither parses every instance ever run nor holds the recently
/// finished in full (at thousands of sagas a second, a minute of them is hundreds of MiB);
/// a late reply to one is then counted as late rather than as a duplicate.
fn restore(value: &[u8]) -> Result<Slot, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Peek {
        status: Status,
        updated_at: i64,
    }
    let peek: Peek = serde_json::from_slice(value)?;
    if peek.status.is_terminal() {
        return Ok(Slot::Gone {
            status: peek.status,
            finished_at: peek.updated_at,
        });
    }
    Ok(Slot::Live(Arc::new(Instance::from_json(value)?)))
}

/// Completed steps' results by step name, as the JSON object commands carry.
fn results_json(state: &Instance) -> String {
    if state.completed.is_empty() {
        return "{}".into();
    }
    let results: serde_json::Map<String, Json> = state
        .completed
        .iter()
        .map(|d| {
            let r = d
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Json::Null);
            (d.step.clone(), r)
        })
        .collect();
    Json::Object(results).to_string()
}

/// Where a record was first read (its original location when it comes from a retry tier).
fn original_location(record: &Record) -> (String, i32, i64) {
    let topic = record
        .header(routing::ORIGINAL_TOPIC)
        .unwrap_or(&record.topic)
        .to_string();
    let partition = record
        .header_bytes(routing::ORIGINAL_PARTITION)
        .and_then(routing::read_int)
        .unwrap_or(record.partition);
    let offset = record
        .header_bytes(routing::ORIGINAL_OFFSET)
        .and_then(routing::read_long)
        .unwrap_or(record.offset);
    (topic, partition, offset)
}

fn merge(into: &mut Json, from: Json) {
    if let (Some(a), Json::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn encode_failed(e: SagaError) -> HandlerError {
    HandlerError::permanent(ErrorClass::EncodeFailed, e.to_string())
}

#[cfg(test)]
mod tests;
