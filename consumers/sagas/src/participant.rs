//! Writing a saga participant: implement [`Participant`] (a command in, an [`Outcome`] out)
//! and run a [`ParticipantHandler`] in the exactly-once processing loop. The handler does the
//! rest:
//!
//! - **Dedup by command id.** Every handled command id is recorded, with its outcome, in the
//!   role's compacted state topic, in the same transaction as the reply; the record goes to
//!   the partition numbered like the command's, and is read back when that partition is
//!   assigned. A redelivered command (the orchestrator resends after a timeout) is answered
//!   from the record without running the side effect again.
//! - **Compensations that only undo what ran.** A compensation names the action it undoes;
//!   when that action never ran here (it failed, or never arrived), the compensation is
//!   answered "nothing to undo" without calling the participant, and the action's id is
//!   fenced so that, should it still arrive, it is refused instead of executed. A
//!   participant whose unanswered work may still have taken effect (an HTTP call whose
//!   answer was lost) has every action it starts marked as attempted, in the batch that
//!   reads it; the compensation of an attempted action is passed to the participant, which
//!   finds out what happened ([`crate::http::uncertain`]).
//! - **Replies** go to the command's reply topic, keyed by saga id, with CloudEvents headers
//!   and a traceparent continuing the command's.
//! - **Slow work does not hold the loop back.** A participant with a
//!   [`patience`](Participant::patience) (the HTTP participant) has commands that take
//!   longer detached from their batch and answered in a later one ([`crate::detached`]), so
//!   one slow upstream does not stall the other commands of its partition and batch.
//!
//! ```no_run
//! use sluice_stream::HandlerError;
//! use sluice_sagas::instance::Kind;
//! use sluice_sagas::messages::Command;
//! use sluice_sagas::participant::{Outcome, Participant};
//!
//! struct Payments;
//!
//! impl Participant for Payments {
//!     async fn handle(&self, command: &Command) -> Result<Outcome, HandlerError> {
//!         // `command.command_id` is the idempotency key to pass to the payment provider.
//!         Ok(match command.kind {
//!             Kind::Action => Outcome::Succeeded { result: Some(serde_json::json!({"charge_id": "ch_1"})) },
//!             Kind::Compensation => Outcome::Succeeded { result: None },
//!         })
//!     }
//! }
//! ```

use sluice_stream::ErrorClass;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::trace_context;
use sluice_schemas::metadata::{self, TRACEPARENT};
use sluice_schemas::{AvroCodec, Catalog, RecordLocation, RegistryClient};
use sluice_topology::model::SAGA_CONTROL_TYPE;
use sluice_topology::{naming, Topology};
use tracing::Instrument;

use super::instance::Kind;
use super::machine::{parse_command_id, short_name};
use super::messages::{
    self, Action, Command, Control, Meta, Reply, SchemaBook, COMMAND_ID_HEADER, CORRELATION_HEADER,
    SAGA_ID_HEADER,
};
use super::metrics::ParticipantMetrics;
use super::SagaError;
use crate::detached::Detacher;
use sluice_stream::state::{KafkaStateLog, SharedLog, StateTable};
use sluice_stream::{Assigned, FailureRouter, Handler, HandlerError, Output, Record};

/// What a participant did with a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It took effect; `result` (JSON) goes back to the orchestrator and on to later steps.
    Succeeded { result: Option<Json> },
    /// It did not take effect. `retryable` says whether trying again may succeed.
    Failed { reason: String, retryable: bool },
    /// No reply at all, as if the command had been lost (the demo's simulated timeouts).
    /// Counted and logged; nothing is recorded, so a resend runs the participant again.
    NoReply { why: String },
}

/// A saga participant's business logic.
pub trait Participant: Send + Sync + 'static {
    /// Executes one command. Called at most once per command id that gets a reply (see the
    /// module docs). An error is dead-lettered with the command, and the saga times out.
    fn handle(
        &self,
        command: &Command,
    ) -> impl Future<Output = Result<Outcome, HandlerError>> + Send;

    /// How long a command may hold its batch before it is detached and answered in a later
    /// one (see [`crate::detached`]); `None`, the default: always answered in its batch.
    /// For participants whose work can be slow through no fault of the records behind it.
    fn patience(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether an action left without a reply may still have taken effect (`false`, the
    /// default: a participant that does not answer did nothing). When `true`, an action is
    /// marked attempted before it runs, and its compensation is never answered "nothing to
    /// undo" on the participant's behalf.
    fn unanswered_may_have_run(&self) -> bool {
        false
    }
}

/// How one command type is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub saga: String,
    pub step: String,
    pub kind: Kind,
    /// Where the command comes from.
    pub topic: String,
    pub reply_topic: String,
    pub success: String,
    pub failure: String,
}

/// What a participant role handles, from the topology: every command of every saga step
/// whose `participant` is the role.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    pub role: String,
    pub group: String,
    pub commands: HashMap<String, Route>,
    pub command_topics: Vec<String>,
    pub state_topic: String,
    pub dlq_topic: String,
}

impl RoleSpec {
    /// Every participant role named in the topology's sagas.
    pub fn roles(topology: &Topology) -> Vec<String> {
        let mut roles: Vec<String> = topology
            .sagas
            .iter()
            .flat_map(|s| s.steps.iter().map(|st| st.participant.clone()))
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    pub fn from_topology(topology: &Topology, role: &str) -> Result<Self, SagaError> {
        let mut commands = HashMap::new();
        for saga in &topology.sagas {
            let reply_topic = naming::saga_replies_topic(&topology.prefix, &saga.name);
            for step in saga.steps.iter().filter(|s| s.participant == role) {
                let both = std::iter::once((Kind::Action, step.action()))
                    .chain(step.compensation.clone().map(|c| (Kind::Compensation, c)));
                for (kind, c) in both {
                    commands.insert(
                        c.command.event_type.clone(),
                        Route {
                            saga: saga.name.clone(),
                            step: step.name.clone(),
                            kind,
                            topic: c.command.topic.clone(),
                            reply_topic: reply_topic.clone(),
                            success: c.success.clone(),
                            failure: c.failure.clone(),
                        },
                    );
                }
            }
        }
        if commands.is_empty() {
            return Err(SagaError::UnknownRole(role.to_string()));
        }
        let mut command_topics: Vec<String> = topology
            .sagas
            .iter()
            .flat_map(|s| s.steps.iter().filter(|st| st.participant == role))
            .flat_map(|st| {
                std::iter::once(st.command.topic.clone())
                    .chain(st.compensation.as_ref().map(|c| c.command.topic.clone()))
            })
            .collect();
        command_topics.sort();
        command_topics.dedup();
        Ok(Self {
            role: role.to_string(),
            group: format!("{}-saga-participant-{role}", topology.prefix),
            commands,
            command_topics,
            state_topic: naming::saga_participant_state_topic(&topology.prefix, role),
            dlq_topic: naming::dlq_topic(&topology.prefix, "saga-participants"),
        })
    }

    /// Failures of this role's handler go straight to the participants' dead-letter topic:
    /// there are no retry tiers, because a late command only makes its saga time out.
    pub fn failure_router(&self) -> FailureRouter {
        FailureRouter {
            group: self.group.clone(),
            tiers: Vec::new(),
            max_attempts: 1,
            dlq_topic: self.dlq_topic.clone(),
        }
    }

    pub(crate) fn schema_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for (command, r) in &self.commands {
            for t in [&r.success, &r.failure] {
                pairs.push((r.reply_topic.clone(), t.clone()));
            }
            for topic in &self.command_topics {
                pairs.push((topic.clone(), command.clone()));
            }
        }
        pairs
    }
}

/// How a command id was settled; what the dedup state records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Settled {
    Succeeded,
    Failed,
    /// Its compensation came first; refuse it if it arrives.
    Fenced,
    /// Started here, no answer yet: it may have taken effect. A resend runs it again; its
    /// compensation goes to the participant.
    Attempted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    outcome: Settled,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default)]
    retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    at: i64,
}

/// Runs a [`Participant`] for one role inside the processing loop.
pub struct ParticipantHandler<P> {
    spec: RoleSpec,
    participant: Arc<P>,
    /// Where the handled-command table is read back from.
    state: SharedLog,
    codec: AvroCodec,
    book: SchemaBook,
    /// Handled commands by id, per command partition.
    dedup: StateTable<Entry>,
    metrics: ParticipantMetrics,
    /// Runs commands with the participant's patience; `None` without one.
    detacher: Option<Detacher>,
}

impl<P> std::fmt::Debug for ParticipantHandler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantHandler")
            .field("role", &self.spec.role)
            .finish()
    }
}

impl<P: Participant> ParticipantHandler<P> {
    pub async fn new(
        spec: RoleSpec,
        participant: P,
        clients: KafkaClients,
        registry: &RegistryClient,
        catalog: &Catalog,
        topology: &Topology,
        metrics: ParticipantMetrics,
    ) -> Result<Self, SagaError> {
        let codec = AvroCodec::new(registry.clone());
        let book = SchemaBook::resolve(
            registry,
            catalog,
            topology.subjects.naming,
            spec.schema_pairs(),
            &codec,
        )
        .await?;
        let detacher = match participant.patience() {
            Some(patience) => {
                let waker = clients
                    .producer("saga-participant-wake")
                    .map_err(|e| SagaError::Definition(format!("the wake producer: {e}")))?;
                Some(Detacher::new(patience, waker))
            }
            None => None,
        };
        let mut handler = Self::with_parts(
            spec,
            participant,
            Arc::new(KafkaStateLog::new(clients)),
            codec,
            book,
            metrics,
        );
        handler.detacher = detacher;
        Ok(handler)
    }

    /// A handler from parts already resolved: the state log, the codec and the schema book.
    pub fn with_parts(
        spec: RoleSpec,
        participant: P,
        state: SharedLog,
        codec: AvroCodec,
        book: SchemaBook,
        metrics: ParticipantMetrics,
    ) -> Self {
        let dedup = StateTable::new(&spec.state_topic);
        Self {
            spec,
            participant: Arc::new(participant),
            state,
            codec,
            book,
            dedup,
            metrics,
            detacher: None,
        }
    }

    pub fn spec(&self) -> &RoleSpec {
        &self.spec
    }

    fn count(&self, command: &str, outcome: &str) {
        self.metrics
            .commands
            .with_label_values(&[&self.spec.role, short_name(command), outcome])
            .inc();
    }

    /// The reply to `command` from a settled entry, and (when new) the entry's state record.
    fn answer(
        &self,
        record: &Record,
        command: &Command,
        route: &Route,
        entry: &Entry,
    ) -> Result<Output, HandlerError> {
        let (event_type, reason) = match entry.outcome {
            Settled::Succeeded => (&route.success, None),
            // An attempt is never answered from its entry (it is run again); listed for
            // completeness.
            Settled::Failed | Settled::Fenced | Settled::Attempted => {
                (&route.failure, entry.reason.clone())
            }
        };
        let reply = Reply {
            event_type: event_type.clone(),
            saga_id: command.saga_id.clone(),
            saga_name: command.saga_name.clone(),
            step: command.step.clone(),
            command_id: command.command_id.clone(),
            attempt: command.attempt,
            reason,
            retryable: entry.retryable,
            result: entry.result.clone(),
        };
        let name = format!(
            "reply/{}/{}/{}",
            self.spec.role, command.command_id, command.attempt
        );
        let meta = Meta {
            event_id: messages::event_id(&name),
            occurred_at: metadata::now_ms(),
            source: format!("sluice://participants/{}", self.spec.role),
            subject: Some(command.saga_id.clone()),
        };
        let value = self
            .book
            .encode_fields(&route.reply_topic, event_type, reply.fields(&meta))
            .map_err(|e| HandlerError::permanent(ErrorClass::EncodeFailed, e.to_string()))?;
        let traceparent = trace_context::traceparent(&tracing::Span::current())
            .unwrap_or_else(|| messages::child_traceparent(record.header(TRACEPARENT), &name));
        Ok(Output {
            topic: route.reply_topic.clone(),
            // The default partitioner puts it in the saga id's partition of the replies topic.
            partition: None,
            key: Some(command.saga_id.clone().into_bytes()),
            value: Some(value),
            headers: meta.headers(
                event_type,
                &traceparent,
                &[
                    (SAGA_ID_HEADER, &command.saga_id),
                    (COMMAND_ID_HEADER, &command.command_id),
                    (CORRELATION_HEADER, &command.correlation_id),
                ],
            ),
        })
    }

    fn remember(&self, partition: i32, id: &str, entry: &Entry) -> Output {
        self.dedup.put(partition, id, entry.clone())
    }
}

impl<P: Participant> ParticipantHandler<P> {
    /// Runs one command (or recognises a re-delivered one), inside its hop span.
    async fn execute(&self, record: &Record) -> Result<Vec<Output>, HandlerError> {
        let declared = record.header(metadata::CE_TYPE).map(str::to_string);
        if declared
            .as_deref()
            .is_some_and(|t| t != SAGA_CONTROL_TYPE && !self.spec.commands.contains_key(t))
        {
            return Ok(Vec::new()); // another role's command
        }
        let location = RecordLocation::new(&record.topic, record.partition, record.offset);
        let decoded = self
            .codec
            .decode(record.value.as_deref().unwrap_or_default(), &location)
            .await
            .map_err(|e| {
                if e.is_transient() {
                    HandlerError::transient(ErrorClass::RegistryUnavailable, e.to_string())
                } else {
                    HandlerError::permanent(ErrorClass::Undecodable, e.to_string())
                }
            })?;
        let event_type = match declared {
            Some(t) => t,
            None => match self
                .codec
                .writer_schema(decoded.schema_id, &location)
                .await
                .map_err(|e| HandlerError::permanent(ErrorClass::Undecodable, e.to_string()))?
                .as_ref()
            {
                apache_avro::Schema::Record(r) => r.name.fullname(None),
                _ => String::new(),
            },
        };
        if event_type == SAGA_CONTROL_TYPE {
            return self.forget(&record.topic, record.partition, &decoded.value);
        }
        let Some(route) = self.spec.commands.get(&event_type) else {
            return Ok(Vec::new());
        };
        let command = Command::from_value(&event_type, &decoded.value).map_err(|e| {
            HandlerError::permanent(ErrorClass::InvalidCommand, format!("{event_type}: {e}"))
        })?;
        let partition = record.partition;
        let now = metadata::now_ms();

        match self.dedup.get(partition, &command.command_id) {
            // Its compensation came first: refuse it, for good.
            Some(entry) if entry.outcome == Settled::Fenced => {
                self.count(&event_type, "fenced");
                let refused = Entry {
                    outcome: Settled::Failed,
                    reason: Some("compensated before it ran".into()),
                    retryable: false,
                    result: None,
                    at: now,
                };
                let state = self.remember(partition, &command.command_id, &refused);
                return Ok(vec![self.answer(record, &command, route, &refused)?, state]);
            }
            // Started before without an answer: run it again (same id, same idempotency key).
            Some(entry) if entry.outcome == Settled::Attempted => {}
            // Seen before: the same answer again, without running anything.
            Some(entry) => {
                self.count(&event_type, "duplicate");
                return Ok(vec![self.answer(record, &command, route, &entry)?]);
            }
            None => {}
        }
        if let Some(d) = &self.detacher {
            if d.is_running(&command.command_id) {
                // A resend while the first run goes on: that run's reply answers both.
                self.count(&event_type, "in_flight");
                return Ok(Vec::new());
            }
        }

        if route.kind == Kind::Compensation {
            let undoes = command.compensates.clone().unwrap_or_default();
            let mut action = self.dedup.get(partition, &undoes);
            let unsettled = action
                .as_ref()
                .is_none_or(|e| e.outcome == Settled::Attempted);
            if let Some(d) = self.detacher.as_ref().filter(|_| unsettled) {
                if let Some(done) = d.finished_outcome(&undoes) {
                    // Done, its reply not yet written: decide on what it did.
                    action = entry_of(done, now).or(action);
                } else if d.is_running(&undoes) {
                    // Still running (an abort came early): no reply yet; the orchestrator
                    // sends the compensation again, and by then the action is settled.
                    self.count(&event_type, "action_in_flight");
                    return Ok(Vec::new());
                }
            }
            let may_have_run = matches!(
                action.as_ref().map(|e| e.outcome),
                Some(Settled::Succeeded | Settled::Attempted)
            );
            if !may_have_run {
                self.count(&event_type, "nothing_to_undo");
                let mut outputs = Vec::new();
                if action.is_none() && !undoes.is_empty() {
                    let fence = Entry {
                        outcome: Settled::Fenced,
                        reason: Some(format!(
                            "compensated by {} before it ran",
                            command.command_id
                        )),
                        retryable: false,
                        result: None,
                        at: now,
                    };
                    outputs.push(self.remember(partition, &undoes, &fence));
                }
                let done = Entry {
                    outcome: Settled::Succeeded,
                    reason: None,
                    retryable: false,
                    result: Some(r#"{"nothing_to_undo":true}"#.into()),
                    at: now,
                };
                outputs.push(self.answer(record, &command, route, &done)?);
                outputs.push(self.remember(partition, &command.command_id, &done));
                return Ok(outputs);
            }
        }

        // Written with this batch, so either the command is read again or its attempt is known.
        let attempted = (route.kind == Kind::Action && self.participant.unanswered_may_have_run())
            .then(|| {
                let entry = Entry {
                    outcome: Settled::Attempted,
                    reason: None,
                    retryable: false,
                    result: None,
                    at: now,
                };
                self.remember(partition, &command.command_id, &entry)
            });
        let outcome = match &self.detacher {
            None => self.participant.handle(&command).await?,
            Some(d) => {
                let (participant, c) = (self.participant.clone(), command.clone());
                let work = async move { participant.handle(&c).await.map_err(|e| e.to_string()) };
                match d.run(record, &command, route, work).await {
                    Some(outcome) => outcome.map_err(|e| {
                        HandlerError::permanent(ErrorClass::custom("ParticipantFailed"), e)
                    })?,
                    None => {
                        self.count(&event_type, "detached");
                        return Ok(attempted.into_iter().collect());
                    }
                }
            }
        };
        let settled = self.settle(record, &command, route, outcome, now)?;
        Ok(attempted.into_iter().chain(settled).collect())
    }

    /// The orchestrator says no command of some sagas comes again on `topic`, so the
    /// commands of them handled here that come from there are forgotten, with tombstones in
    /// the dedup topic; without this the table, in memory and on the topic, would grow with
    /// every command ever handled. It says so for the sagas a batch of its finished
    /// ([`Action::Finished`], their ids in `data`), and again for each one when it deletes its
    /// state after the keep period ([`Action::Expire`]).
    ///
    /// Only commands from the topic the message came on: it follows every command of those
    /// sagas sent there, but one sent to another topic may still be on its way. And fences
    /// are kept until the expire: a fenced action may still come back, replayed from a
    /// dead-letter topic by an operator, and must be refused then too.
    fn forget(
        &self,
        topic: &str,
        partition: i32,
        value: &apache_avro::types::Value,
    ) -> Result<Vec<Output>, HandlerError> {
        let invalid = |e: String| {
            HandlerError::permanent(
                ErrorClass::InvalidCommand,
                format!("{SAGA_CONTROL_TYPE}: {e}"),
            )
        };
        let control = Control::from_value(value).map_err(invalid)?;
        let (saga_ids, keep_fences) = match control.action {
            Action::Finished => {
                let ids: Vec<String> = match control.data.as_deref() {
                    Some(data) => serde_json::from_str(data)
                        .map_err(|e| invalid(format!("`data` is not a list of saga ids: {e}")))?,
                    None => vec![control.saga_id.clone()],
                };
                (ids, true)
            }
            Action::Expire => (vec![control.saga_id.clone()], false),
            _ => return Ok(Vec::new()),
        };
        let prefixes: Vec<String> = saga_ids.iter().map(|id| format!("{id}:")).collect();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let handled = self.dedup.keys_with_prefixes(partition, &prefixes);
        let mut tombstones = Vec::new();
        for (saga_id, ids) in saga_ids.iter().zip(handled) {
            for id in ids {
                if self.forgets(
                    &control.saga_name,
                    saga_id,
                    &id,
                    topic,
                    partition,
                    keep_fences,
                ) {
                    tombstones.push(self.dedup.delete(partition, &id));
                }
            }
        }
        if !tombstones.is_empty() {
            self.metrics
                .forgotten
                .with_label_values(&[&self.spec.role])
                .inc_by(tombstones.len() as u64);
        }
        Ok(tombstones)
    }

    /// Whether handled command `id` is one of saga `saga_id`'s (not merely sharing the
    /// prefix) that came from `topic`, and not a fence that is to be kept.
    fn forgets(
        &self,
        saga_name: &str,
        saga_id: &str,
        id: &str,
        topic: &str,
        partition: i32,
        keep_fences: bool,
    ) -> bool {
        let Some(of) = parse_command_id(id).filter(|c| c.saga_id == saga_id) else {
            return false;
        };
        let route = self
            .spec
            .commands
            .values()
            .find(|r| r.saga == saga_name && r.step == of.step && r.kind == of.kind);
        // A step the topology no longer has sends nothing: gone with the expire.
        let from_here = route.map_or(!keep_fences, |r| r.topic == topic);
        let fence = keep_fences
            && self
                .dedup
                .get(partition, id)
                .is_some_and(|e| e.outcome == Settled::Fenced);
        from_here && !fence
    }

    /// The reply and dedup record of a command the participant ran, and its count; nothing
    /// for one left without a reply.
    fn settle(
        &self,
        record: &Record,
        command: &Command,
        route: &Route,
        outcome: Outcome,
        now: i64,
    ) -> Result<Vec<Output>, HandlerError> {
        let counted = match &outcome {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::NoReply { .. } => "no_reply",
        };
        self.count(&command.event_type, counted);
        if let Outcome::NoReply { why } = &outcome {
            tracing::warn!(
                role = self.spec.role,
                command_id = command.command_id,
                why,
                "command left without a reply"
            );
        }
        let Some(entry) = entry_of(Ok(outcome), now) else {
            return Ok(Vec::new());
        };
        Ok(vec![
            self.answer(record, command, route, &entry)?,
            self.remember(record.partition, &command.command_id, &entry),
        ])
    }

    /// The replies of detached commands that finished, for the open batch.
    fn finished_outputs(&self, detacher: &Detacher) -> Vec<Output> {
        let now = metadata::now_ms();
        let mut outputs = Vec::new();
        for f in detacher.take(|p| self.dedup.holds(p)) {
            let settled = match f.outcome {
                Ok(outcome) => self.settle(&f.record, &f.command, &f.route, outcome, now),
                Err(e) => Err(HandlerError::permanent(
                    ErrorClass::custom("ParticipantFailed"),
                    e,
                )),
            };
            match settled {
                Ok(o) => outputs.extend(o),
                // Nothing to answer with: the step times out, and the resend runs it again.
                Err(e) => tracing::error!(
                    role = self.spec.role,
                    command_id = f.command.command_id,
                    error = e.message(),
                    "a detached command ended without an answer"
                ),
            }
        }
        outputs
    }
}

/// The dedup entry of an outcome; `None` for one that gets no reply (nothing is recorded,
/// so a resend runs the participant again).
fn entry_of(outcome: Result<Outcome, String>, now: i64) -> Option<Entry> {
    match outcome.ok()? {
        Outcome::Succeeded { result } => Some(Entry {
            outcome: Settled::Succeeded,
            reason: None,
            retryable: false,
            result: result.map(|r| r.to_string()),
            at: now,
        }),
        Outcome::Failed { reason, retryable } => Some(Entry {
            outcome: Settled::Failed,
            reason: Some(reason),
            retryable,
            result: None,
            at: now,
        }),
        Outcome::NoReply { .. } => None,
    }
}

impl<P: Participant> Handler for ParticipantHandler<P> {
    async fn handle(&self, record: &Record) -> Result<Vec<Output>, HandlerError> {
        // This hop's span: a child of the command's, the parent of the reply.
        let span = tracing::info_span!("saga.participant", role = %self.spec.role, topic = %record.topic, offset = record.offset);
        trace_context::follow(&span, record.header(TRACEPARENT));
        self.execute(record).instrument(span).await
    }

    async fn on_assigned(&self, partitions: &Assigned) -> Result<(), HandlerError> {
        let commands = &self.spec.command_topics;
        let report = tokio::task::block_in_place(|| {
            self.dedup.assign(&*self.state, partitions, |t| {
                commands.iter().any(|c| c == t)
            })
        })
        .map_err(|e| HandlerError::transient(ErrorClass::DedupRestore, e.to_string()))?;
        for (p, id, why) in &report.unreadable {
            tracing::error!(
                topic = self.dedup.topic(),
                partition = p,
                id,
                error = why,
                "unreadable dedup record; that command would run again"
            );
        }
        if !report.partitions.is_empty() {
            tracing::info!(role = self.spec.role, partitions = ?report.partitions, records = report.records, "participant dedup state restored");
        }
        Ok(())
    }

    fn on_revoked(&self, partitions: &Assigned) {
        self.dedup.revoke(partitions);
    }

    fn batch_outputs(&self) -> Vec<Output> {
        match &self.detacher {
            Some(d) => self.finished_outputs(d),
            None => Vec::new(),
        }
    }

    fn on_batch_end(&self, committed: bool) {
        self.dedup.finish(committed);
        if let Some(d) = &self.detacher {
            d.finish(committed);
        }
    }
}
