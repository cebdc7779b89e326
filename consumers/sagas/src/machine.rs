//! The saga state machine: a pure function from (definition, current state, input, now) to
//! the new state and the effects to emit. No Kafka, no clock, no randomness, so every rule
//! below is unit-tested, and the orchestrator only turns a [`Transition`] into records that
//! commit in one transaction with the input's offset.
//!
//! Rules:
//! - A trigger starts an instance and sends the first step's command; a second trigger for the
//!   same saga id is a duplicate.
//! - A step's success reply records it and sends the next command, or completes the saga.
//! - A failure reply marked retryable, or a timeout, is retried while the step's retry policy
//!   allows (after its backoff); otherwise compensation starts.
//! - Compensation runs the completed steps' compensations in reverse order. A step that timed
//!   out (or was in flight when an operator aborted) may have run, so its compensation runs
//!   first; participants answer "nothing to undo" for a command they never executed.
//! - A compensation that fails or times out is retried with the saga's compensation backoff;
//!   when the attempts run out the instance is parked until an operator retries it.
//! - Replies are matched by command id: a reply for an already settled command is a
//!   duplicate, one for a command the instance no longer waits on is late; both are ignored.
//! - Stored state is never trusted to fit the definition, which may have changed since it
//!   was written: when the next step or compensation an instance needs is not in the
//!   definition, the instance is parked with [`ParkReason::DefinitionChanged`]. An
//!   operator's retry then continues under the current definition (forward from the first
//!   step not done, or with the compensations it still has); an abort compensates what it
//!   can. Nothing here panics on what an instance holds.
//!
//! Command ids are `<saga id>:<step>:<do|undo>:<try>`: resends after a timeout keep the id so
//! the participant's dedup answers instead of repeating a side effect; after a failure reply
//! (the participant said nothing happened) the next try is a new command.

use super::definition::{CommandDef, SagaDef};
use super::instance::{
    Done, Entry, Failure, FailureKind, Instance, Kind, ParkReason, Parked, Pending, Status,
    TimelineEvent, TriggerRef, Undo, Wait,
};

/// An input of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The trigger arrived.
    Start {
        data: String,
        trigger: TriggerRef,
        traceparent: Option<String>,
    },
    /// A participant answered.
    Reply {
        event_type: String,
        command_id: String,
        reason: Option<String>,
        retryable: bool,
        result: Option<String>,
    },
    /// The timer saw the pending command's deadline (or backoff) pass.
    Deadline { command_id: String, due_at: i64 },
    /// An operator resumes a parked instance.
    Retry {
        request_id: String,
        by: Option<String>,
    },
    /// An operator compensates a running instance now.
    Abort {
        request_id: String,
        by: Option<String>,
        reason: Option<String>,
    },
}

/// Why an input changed nothing (or only the timeline). Labels of
/// `sluice_saga_ignored_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    DuplicateTrigger,
    DuplicateReply,
    LateReply,
    UnexpectedReply,
    UnknownInstance,
    StaleDeadline,
    NotParked,
    NotRunning,
    /// An expire request for an instance that is not finished, or not long enough.
    NotExpired,
    /// A message for the participants (a `finished`) on the orchestrator's input.
    ForParticipants,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::DuplicateTrigger => "duplicate_trigger",
            Ignored::DuplicateReply => "duplicate_reply",
            Ignored::LateReply => "late_reply",
            Ignored::UnexpectedReply => "unexpected_reply",
            Ignored::UnknownInstance => "unknown_instance",
            Ignored::StaleDeadline => "stale_deadline",
            Ignored::NotParked => "not_parked",
            Ignored::NotRunning => "not_running",
            Ignored::NotExpired => "not_expired",
            Ignored::ForParticipants => "for_participants",
        }
    }
}

/// Something to write besides the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a command to a participant.
    Command {
        step: usize,
        kind: Kind,
        command_id: String,
        attempt: u32,
        compensates: Option<String>,
    },
    Started,
    StepCompleted {
        step: usize,
        command_id: String,
        attempt: u32,
        result: Option<String>,
    },
    /// Terminal: every step succeeded.
    Completed,
    /// Terminal: the compensations ran.
    Compensated,
    /// The instance is parked: a compensation ran out of attempts, or the definition no
    /// longer fits it. `step` is a name because it may be one the definition lacks.
    Parked {
        step: String,
        reason: String,
        attempts: u32,
        why: ParkReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new state, when anything changed (the timeline counts).
    pub state: Option<Instance>,
    pub effects: Vec<Effect>,
    pub ignored: Option<Ignored>,
    /// Timeline events this transition added, for metrics.
    pub events: Vec<TimelineEvent>,
}

impl Transition {
    fn ignored(why: Ignored) -> Self {
        Self {
            state: None,
            effects: Vec::new(),
            ignored: Some(why),
            events: Vec::new(),
        }
    }
}

/// The id of a command; see the module docs.
pub fn command_id(saga_id: &str, step: &str, kind: Kind, try_no: u32) -> String {
    let verb = match kind {
        Kind::Action => "do",
        Kind::Compensation => "undo",
    };
    format!("{saga_id}:{step}:{verb}:{try_no}")
}

/// What a [`command_id`] was made from, but its try number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandOf<'a> {
    pub saga_id: &'a str,
    pub step: &'a str,
    pub kind: Kind,
}

/// Splits a [`command_id`]. Step names are slugs (no `:`), so the saga id is what precedes
/// the last three fields, even when it contains `:` itself.
pub fn parse_command_id(command_id: &str) -> Option<CommandOf<'_>> {
    let mut fields = command_id.rsplitn(4, ':');
    let (try_no, verb, step) = (fields.next()?, fields.next()?, fields.next()?);
    let saga_id = fields.next()?;
    let kind = match verb {
        "do" => Kind::Action,
        "undo" => Kind::Compensation,
        _ => return None,
    };
    try_no.parse::<u32>().ok()?;
    Some(CommandOf {
        saga_id,
        step,
        kind,
    })
}

/// The saga id a [`command_id`] was made from.
pub fn saga_of_command(command_id: &str) -> Option<&str> {
    parse_command_id(command_id).map(|c| c.saga_id)
}

/// What a stored instance needs that the running definition lacks: the topology changed
/// under an unfinished saga. The machine parks such an instance
/// ([`ParkReason::DefinitionChanged`]) instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error("step `{0}` is not in the current definition")]
    UnknownStep(String),
    #[error("step `{0}` has no compensation in the current definition")]
    NoCompensation(String),
    #[error("the definition has no step at position {0}")]
    NoStepAt(usize),
}

/// Applies `input` to instance `id` (absent when `current` is `None`).
///
/// Never panics on stored state: whatever the instance holds is checked against `def`
/// where it is used, and an instance the definition no longer fits is parked.
pub fn apply(
    def: &SagaDef,
    id: &str,
    current: Option<&Instance>,
    input: Input,
    now: i64,
) -> Transition {
    let mut run = match (current, input) {
        (
            None,
            Input::Start {
                data,
                trigger,
                traceparent,
            },
        ) => {
            let instance = Instance {
                saga: def.name.clone(),
                id: id.to_string(),
                status: Status::Running,
                started_at: now,
                updated_at: now,
                seq: 0,
                data,
                trigger,
                traceparent,
                completed: Vec::new(),
                pending: None,
                failure: None,
                to_compensate: Vec::new(),
                compensated: Vec::new(),
                parked: None,
                history: Vec::new(),
            };
            let mut run = Run::new(def, instance, now);
            run.note(TimelineEvent::Started, None, None, None, None);
            run.effects.push(Effect::Started);
            if let Err(m) = run.send(0, Kind::Action, 1, 1, None) {
                run.park_changed(m);
            }
            run
        }
        (Some(_), Input::Start { .. }) => return Transition::ignored(Ignored::DuplicateTrigger),
        (None, _) => return Transition::ignored(Ignored::UnknownInstance),
        (Some(current), input) => {
            let mut run = Run::new(def, current.clone(), now);
            if let Some(why) = run.input(input) {
                return Transition::ignored(why);
            }
            run
        }
    };
    run.instance.seq += 1;
    run.instance.updated_at = now;
    Transition {
        state: Some(run.instance),
        effects: run.effects,
        ignored: run.ignored,
        events: run.events,
    }
}

/// One transition in progress.
struct Run<'d> {
    def: &'d SagaDef,
    instance: Instance,
    effects: Vec<Effect>,
    /// Set when the input was ignored but the timeline still records it (operator requests).
    ignored: Option<Ignored>,
    events: Vec<TimelineEvent>,
    now: i64,
}

impl<'d> Run<'d> {
    fn new(def: &'d SagaDef, instance: Instance, now: i64) -> Self {
        Self {
            def,
            instance,
            effects: Vec::new(),
            ignored: None,
            events: Vec::new(),
            now,
        }
    }

    fn note(
        &mut self,
        event: TimelineEvent,
        step: Option<&str>,
        command_id: Option<&str>,
        attempt: Option<u32>,
        detail: Option<String>,
    ) {
        let entry = Entry {
            at: self.now,
            event,
            step: step.map(str::to_string),
            command_id: command_id.map(str::to_string),
            attempt,
            detail,
        };
        self.instance.push(entry);
        self.events.push(event);
    }

    /// The position of step `name` in the current definition.
    fn index(&self, name: &str) -> Result<usize, Misfit> {
        self.def
            .step_index(name)
            .ok_or_else(|| Misfit::UnknownStep(name.to_string()))
    }

    /// The command of step `name` of this kind, and the step's position.
    fn command(&self, name: &str, kind: Kind) -> Result<(usize, &'d CommandDef), Misfit> {
        let step = self.index(name)?;
        let s = &self.def.steps[step];
        match kind {
            Kind::Action => Ok((step, &s.action)),
            Kind::Compensation => s
                .compensation
                .as_ref()
                .map(|c| (step, c))
                .ok_or_else(|| Misfit::NoCompensation(name.to_string())),
        }
    }

    /// Whether step `name` can be compensated under the current definition.
    fn compensable(&self, name: &str) -> bool {
        self.command(name, Kind::Compensation).is_ok()
    }

    /// The first step of the definition, in order, that has not succeeded yet.
    fn next_step(&self) -> Option<usize> {
        self.def
            .steps
            .iter()
            .position(|s| !self.instance.completed.iter().any(|d| d.step == s.name))
    }

    /// Sends (or resends) the command of `step`, waiting for its reply until its timeout.
    fn send(
        &mut self,
        step: usize,
        kind: Kind,
        try_no: u32,
        attempt: u32,
        compensates: Option<String>,
    ) -> Result<(), Misfit> {
        let name = match self.def.steps.get(step) {
            Some(s) => s.name.clone(),
            None => return Err(Misfit::NoStepAt(step)),
        };
        let command = match self.command(&name, kind) {
            Ok((_, c)) => c,
            Err(m) => {
                self.unsent(&name, kind);
                return Err(m);
            }
        };
        let id = command_id(&self.instance.id, &name, kind, try_no);
        let deadline = self.now + command.timeout_ms;
        let short = short_name(&command.event_type).to_string();
        self.instance.pending = Some(Pending {
            step: name.clone(),
            kind,
            try_no,
            attempt,
            command_id: id.clone(),
            compensates: compensates.clone(),
            sent_at: self.now,
            wait: Wait::Reply { deadline },
        });
        self.note(
            TimelineEvent::Command,
            Some(&name),
            Some(&id),
            Some(attempt),
            Some(short),
        );
        self.effects.push(Effect::Command {
            step,
            kind,
            command_id: id,
            attempt,
            compensates,
        });
        Ok(())
    }

    /// A command of `name` could not be sent. Keeps a pending command it would have repeated
    /// (what an operator sees as stuck); any other one is settled and must not look pending.
    fn unsent(&mut self, name: &str, kind: Kind) {
        let resend = self
            .instance
            .pending
            .as_ref()
            .is_some_and(|p| p.step == name && p.kind == kind);
        if !resend {
            self.instance.pending = None;
        }
    }

    /// Applies an input to an existing instance; `Some` when it is ignored without a trace.
    fn input(&mut self, input: Input) -> Option<Ignored> {
        let applied = match input {
            Input::Start { .. } => Ok(Some(Ignored::DuplicateTrigger)),
            Input::Reply {
                event_type,
                command_id,
                reason,
                retryable,
                result,
            } => self.reply(&event_type, &command_id, reason, retryable, result),
            Input::Deadline { command_id, due_at } => self.deadline(&command_id, due_at),
            Input::Retry { request_id, by } => self.retry(&request_id, by).map(|()| None),
            Input::Abort {
                request_id,
                by,
                reason,
            } => self.abort(&request_id, by, reason).map(|()| None),
        };
        applied.unwrap_or_else(|misfit| {
            self.park_changed(misfit);
            None
        })
    }

    fn reply(
        &mut self,
        event_type: &str,
        command_id: &str,
        reason: Option<String>,
        retryable: bool,
        result: Option<String>,
    ) -> Result<Option<Ignored>, Misfit> {
        let waiting = self
            .instance
            .pending
            .clone()
            .filter(|p| p.command_id == command_id && !matches!(p.wait, Wait::Operator));
        let Some(pending) = waiting else {
            let settled = self.instance.history.iter().any(|e| {
                e.event == TimelineEvent::Reply && e.command_id.as_deref() == Some(command_id)
            });
            return Ok(Some(if settled {
                Ignored::DuplicateReply
            } else {
                Ignored::LateReply
            }));
        };
        // The reply answers the command the instance waits on, but the definition no longer
        // knows that command: there is no telling what the reply means.
        let (step, command) = self.command(&pending.step, pending.kind)?;
        let success = if event_type == command.success {
            true
        } else if event_type == command.failure {
            false
        } else {
            return Ok(Some(Ignored::UnexpectedReply));
        };
        let detail = match &reason {
            Some(r) => format!("{}: {r}", short_name(event_type)),
            None => short_name(event_type).to_string(),
        };
        self.note(
            TimelineEvent::Reply,
            Some(&pending.step),
            Some(command_id),
            Some(pending.attempt),
            Some(detail),
        );
        let reason = reason.unwrap_or_else(|| short_name(event_type).to_string());
        match (pending.kind, success) {
            (Kind::Action, true) => {
                self.instance.completed.push(Done {
                    step: pending.step.clone(),
                    command_id: command_id.to_string(),
                    attempt: pending.attempt,
                    result: result.clone(),
                    at: self.now,
                });
                self.effects.push(Effect::StepCompleted {
                    step,
                    command_id: command_id.to_string(),
                    attempt: pending.attempt,
                    result,
                });
                self.forward()?;
            }
            (Kind::Action, false) => {
                let retry = self.def.steps[step].retry;
                if retryable && pending.attempt < retry.max_attempts {
                    self.back_off(&pending, true, retry.delay_ms(pending.attempt));
                } else {
                    self.compensate(
                        Failure {
                            kind: FailureKind::Failed,
                            step: Some(pending.step.clone()),
                            reason,
                            at: self.now,
                        },
                        None,
                    )?;
                }
            }
            (Kind::Compensation, true) => {
                self.instance.compensated.push(Done {
                    step: pending.step.clone(),
                    command_id: command_id.to_string(),
                    attempt: pending.attempt,
                    result,
                    at: self.now,
                });
                if !self.instance.to_compensate.is_empty() {
                    self.instance.to_compensate.remove(0);
                }
                self.next_compensation()?;
            }
            (Kind::Compensation, false) => {
                let retry = self.def.compensation_retry;
                if pending.attempt < retry.max_attempts {
                    self.back_off(&pending, true, retry.delay_ms(pending.attempt));
                } else {
                    self.park(&pending, true, reason);
                }
            }
        }
        Ok(None)
    }

    /// Sends the next step that has not succeeded, or completes the saga.
    fn forward(&mut self) -> Result<(), Misfit> {
        match self.next_step() {
            Some(next) => self.send(next, Kind::Action, 1, 1, None),
            None => {
                self.instance.pending = None;
                self.instance.status = Status::Completed;
                self.note(TimelineEvent::Completed, None, None, None, None);
                self.effects.push(Effect::Completed);
                Ok(())
            }
        }
    }

    /// Waits `delay` before sending `pending` again; a new command id after a failure reply.
    fn back_off(&mut self, pending: &Pending, failed: bool, delay: i64) {
        let try_no = pending.try_no + u32::from(failed);
        let id = command_id(&self.instance.id, &pending.step, pending.kind, try_no);
        let until = self.now + delay;
        self.instance.pending = Some(Pending {
            try_no,
            command_id: id.clone(),
            wait: Wait::Backoff { until },
            ..pending.clone()
        });
        self.note(
            TimelineEvent::Backoff,
            Some(&pending.step),
            Some(&id),
            Some(pending.attempt),
            Some(format!("next attempt in {delay}ms")),
        );
    }

    fn deadline(&mut self, command_id: &str, due_at: i64) -> Result<Option<Ignored>, Misfit> {
        let pending = match &self.instance.pending {
            Some(p) if p.command_id == command_id && p.due_at() == Some(due_at) => p.clone(),
            _ => return Ok(Some(Ignored::StaleDeadline)),
        };
        let (step, command) = self.command(&pending.step, pending.kind)?;
        match pending.wait {
            Wait::Backoff { .. } => {
                self.send(
                    step,
                    pending.kind,
                    pending.try_no,
                    pending.attempt + 1,
                    pending.compensates.clone(),
                )?;
            }
            Wait::Reply { .. } => {
                let reason = format!(
                    "no reply to {} within {}ms (attempt {})",
                    short_name(&command.event_type),
                    command.timeout_ms,
                    pending.attempt
                );
                self.note(
                    TimelineEvent::Timeout,
                    Some(&pending.step),
                    Some(command_id),
                    Some(pending.attempt),
                    Some(reason.clone()),
                );
                let retry = match pending.kind {
                    Kind::Action => self.def.steps[step].retry,
                    Kind::Compensation => self.def.compensation_retry,
                };
                if pending.attempt < retry.max_attempts {
                    self.back_off(&pending, false, retry.delay_ms(pending.attempt));
                } else if pending.kind == Kind::Action {
                    // The command may have run: compensate it too.
                    self.compensate(
                        Failure {
                            kind: FailureKind::TimedOut,
                            step: Some(pending.step.clone()),
                            reason,
                            at: self.now,
                        },
                        Some(&pending),
                    )?;
                } else {
                    self.park(&pending, false, reason);
                }
            }
            Wait::Operator => return Ok(Some(Ignored::StaleDeadline)),
        }
        Ok(None)
    }

    /// Starts compensating: `uncertain` (a command that may have run) first, then the
    /// completed steps in reverse order, each only if it has a compensation.
    fn compensate(&mut self, failure: Failure, uncertain: Option<&Pending>) -> Result<(), Misfit> {
        let undo = self.undo_plan(uncertain);
        let detail = format!("{}: {}", failure.kind.as_str(), failure.reason);
        self.instance.status = Status::Compensating;
        self.note(
            TimelineEvent::Compensating,
            failure.step.as_deref(),
            None,
            None,
            Some(detail),
        );
        self.instance.failure = Some(failure);
        self.instance.to_compensate = undo;
        self.next_compensation()
    }

    /// The compensations to run, next first: `uncertain` (a command that may have run), then
    /// the completed steps in reverse order. A step the definition has without compensation
    /// is left out (it has no side effects to undo); a step the definition does not have at
    /// all stays in, so the saga parks when it gets there instead of silently not undoing
    /// something that may have had side effects.
    fn undo_plan(&self, uncertain: Option<&Pending>) -> Vec<Undo> {
        let mut undo: Vec<Undo> = Vec::new();
        if let Some(p) = uncertain {
            undo.push(Undo {
                step: p.step.clone(),
                action_command_id: p.command_id.clone(),
            });
        }
        for done in self.instance.completed.iter().rev() {
            undo.push(Undo {
                step: done.step.clone(),
                action_command_id: done.command_id.clone(),
            });
        }
        undo.retain(|u| self.def.step_index(&u.step).is_none() || self.compensable(&u.step));
        undo
    }

    /// Sends the next compensation still to run, or ends the saga compensated. A pending
    /// compensation of the same step is sent again under its own try (its command id).
    fn next_compensation(&mut self) -> Result<(), Misfit> {
        match self.instance.to_compensate.first().cloned() {
            None => {
                self.instance.pending = None;
                self.instance.status = Status::Compensated;
                self.note(TimelineEvent::Compensated, None, None, None, None);
                self.effects.push(Effect::Compensated);
                Ok(())
            }
            Some(undo) => match self.def.step_index(&undo.step) {
                Some(step) => {
                    self.send(step, Kind::Compensation, 1, 1, Some(undo.action_command_id))
                }
                None => {
                    self.unsent(&undo.step, Kind::Compensation);
                    Err(Misfit::UnknownStep(undo.step))
                }
            },
        }
    }

    /// Parks after a compensation ran out of attempts.
    fn park(&mut self, pending: &Pending, failed: bool, reason: String) {
        let try_no = pending.try_no + u32::from(failed);
        self.instance.pending = Some(Pending {
            try_no,
            command_id: command_id(&self.instance.id, &pending.step, pending.kind, try_no),
            wait: Wait::Operator,
            ..pending.clone()
        });
        self.instance.status = Status::Parked;
        self.instance.parked = Some(Parked {
            reason: ParkReason::CompensationExhausted,
            detail: reason.clone(),
            was: Status::Compensating,
            at: self.now,
        });
        self.note(
            TimelineEvent::Parked,
            Some(&pending.step),
            None,
            Some(pending.attempt),
            Some(reason.clone()),
        );
        self.effects.push(Effect::Parked {
            step: pending.step.clone(),
            reason,
            attempts: pending.attempt,
            why: ParkReason::CompensationExhausted,
        });
    }

    /// Parks an instance the current definition does not fit, until an operator decides.
    /// Whatever it waited on stays visible, but nothing is sent and no deadline runs.
    fn park_changed(&mut self, misfit: Misfit) {
        let was = match (self.instance.status, &self.instance.parked) {
            (Status::Parked, Some(p)) => p.was,
            (Status::Parked, None) => Status::Compensating,
            (s, _) => s,
        };
        let detail = misfit.to_string();
        if let Some(p) = &mut self.instance.pending {
            p.wait = Wait::Operator;
        }
        let pending = self.instance.pending.clone();
        self.instance.status = Status::Parked;
        self.instance.parked = Some(Parked {
            reason: ParkReason::DefinitionChanged,
            detail: detail.clone(),
            was,
            at: self.now,
        });
        let step = pending.as_ref().map(|p| p.step.clone()).or(match &misfit {
            Misfit::UnknownStep(s) | Misfit::NoCompensation(s) => Some(s.clone()),
            Misfit::NoStepAt(_) => None,
        });
        self.note(
            TimelineEvent::Parked,
            step.as_deref(),
            pending.as_ref().map(|p| p.command_id.as_str()),
            pending.as_ref().map(|p| p.attempt),
            Some(format!(
                "{}: {detail}",
                ParkReason::DefinitionChanged.as_str()
            )),
        );
        self.effects.push(Effect::Parked {
            step: step.unwrap_or_else(|| "-".into()),
            reason: detail,
            attempts: pending.as_ref().map_or(0, |p| p.attempt),
            why: ParkReason::DefinitionChanged,
        });
    }

    fn retry(&mut self, request_id: &str, by: Option<String>) -> Result<(), Misfit> {
        let by = by.unwrap_or_else(|| "operator".into());
        if self.instance.status != Status::Parked {
            let detail = format!(
                "retry {request_id} by {by} ignored: the saga is {}, not parked",
                self.instance.status.as_str()
            );
            self.note(TimelineEvent::Ignored, None, None, None, Some(detail));
            self.ignored = Some(Ignored::NotParked);
            return Ok(());
        }
        let parked = self.instance.parked.take();
        let reason = parked
            .as_ref()
            .map_or(ParkReason::CompensationExhausted, |p| p.reason);
        let pending = self.instance.pending.clone();
        match reason {
            ParkReason::CompensationExhausted => {
                self.instance.status = Status::Compensating;
                self.note(
                    TimelineEvent::Retry,
                    pending.as_ref().map(|p| p.step.as_str()),
                    None,
                    None,
                    Some(format!("retry {request_id} by {by}")),
                );
                match pending {
                    Some(p) => {
                        let (step, _) = self.command(&p.step, p.kind)?;
                        self.send(step, p.kind, p.try_no, 1, p.compensates)
                    }
                    None => self.next_compensation(),
                }
            }
            ParkReason::DefinitionChanged => {
                let was = parked.map_or(Status::Compensating, |p| p.was);
                self.resume(request_id, &by, TimelineEvent::Retry, was)
            }
        }
    }

    /// Continues a saga parked because its definition changed, under the current
    /// definition: forward from the first step it has that has not succeeded (the step
    /// that was in flight is sent again under the same command id, so a participant that
    /// ran it answers from its dedup), or, when it was compensating, with the compensations
    /// still to run that the definition still has; the others are skipped and named in the
    /// timeline.
    fn resume(
        &mut self,
        request_id: &str,
        by: &str,
        verb: TimelineEvent,
        was: Status,
    ) -> Result<(), Misfit> {
        let pending = self.instance.pending.clone();
        if was == Status::Compensating {
            let (keep, skip): (Vec<Undo>, Vec<Undo>) =
                std::mem::take(&mut self.instance.to_compensate)
                    .into_iter()
                    .partition(|u| self.compensable(&u.step));
            self.instance.to_compensate = keep;
            self.instance.status = Status::Compensating;
            self.note(
                verb,
                None,
                None,
                None,
                Some(resumed(request_id, by, "compensating", &skip)),
            );
            return match (self.instance.to_compensate.first().cloned(), pending) {
                (Some(undo), Some(p)) if p.kind == Kind::Compensation && p.step == undo.step => {
                    let (step, _) = self.command(&p.step, p.kind)?;
                    self.send(step, p.kind, p.try_no, 1, p.compensates)
                }
                _ => self.next_compensation(),
            };
        }
        self.instance.status = Status::Running;
        self.note(
            verb,
            None,
            None,
            None,
            Some(resumed(request_id, by, "running", &[])),
        );
        match (self.next_step(), pending) {
            (Some(next), Some(p))
                if p.kind == Kind::Action && self.def.steps[next].name == p.step =>
            {
                self.send(next, p.kind, p.try_no, 1, None)
            }
            _ => self.forward(),
        }
    }

    fn abort(
        &mut self,
        request_id: &str,
        by: Option<String>,
        reason: Option<String>,
    ) -> Result<(), Misfit> {
        let by = by.unwrap_or_else(|| "operator".into());
        let changed = self.instance.park_reason() == Some(ParkReason::DefinitionChanged);
        if self.instance.status != Status::Running && !changed {
            let detail = format!(
                "abort {request_id} by {by} ignored: the saga is {}, not running",
                self.instance.status.as_str()
            );
            self.note(TimelineEvent::Ignored, None, None, None, Some(detail));
            self.ignored = Some(Ignored::NotRunning);
            return Ok(());
        }
        let reason = reason.unwrap_or_else(|| "aborted by an operator".into());
        if let Some(parked) = self.instance.parked.take() {
            // Parked because the definition changed: the operator has seen what is missing,
            // so compensate what the current definition can undo and skip (and name) the
            // rest, rather than park again on it.
            if parked.was == Status::Running {
                let in_flight = self
                    .instance
                    .pending
                    .clone()
                    .filter(|p| p.kind == Kind::Action);
                self.instance.to_compensate = self.undo_plan(in_flight.as_ref());
                self.instance.failure = Some(Failure {
                    kind: FailureKind::Aborted,
                    step: in_flight.map(|p| p.step),
                    reason: reason.clone(),
                    at: self.now,
                });
            }
            return self.resume(
                request_id,
                &format!("{by}: {reason}"),
                TimelineEvent::Abort,
                Status::Compensating,
            );
        }
        self.note(
            TimelineEvent::Abort,
            None,
            None,
            None,
            Some(format!("abort {request_id} by {by}: {reason}")),
        );
        let in_flight = self
            .instance
            .pending
            .clone()
            .filter(|p| p.kind == Kind::Action);
        self.compensate(
            Failure {
                kind: FailureKind::Aborted,
                step: in_flight.as_ref().map(|p| p.step.clone()),
                reason,
                at: self.now,
            },
            in_flight.as_ref(),
        )
    }
}

/// The timeline detail of a resumed saga: who asked, and what the definition skips.
fn resumed(request_id: &str, by: &str, direction: &str, skipped: &[Undo]) -> String {
    let mut detail = format!("{request_id} by {by}: {direction} under the current definition");
    if !skipped.is_empty() {
        let names: Vec<&str> = skipped.iter().map(|u| u.step.as_str()).collect();
        detail.push_str(&format!(
            "; not compensated (no compensation in it): {}",
            names.join(", ")
        ));
    }
    detail
}

/// `dev.sluice.events.sagas.ChargePayment` → `ChargePayment`.
pub fn short_name(event_type: &str) -> &str {
    event_type.rsplit('.').next().unwrap_or(event_type)
}

#[cfg(test)]
mod tests {
    use super::super::definition::{CommandDef, Retry, StepDef};
    use super::*;

    const T: i64 = 1_000;

    #[test]
    fn a_command_id_gives_back_its_saga_id() {
        for saga_id in ["order-1", "tenant:7:order-1", ""] {
            for kind in [Kind::Action, Kind::Compensation] {
                let id = command_id(saga_id, "charge-payment", kind, 12);
                assert_eq!(saga_of_command(&id), Some(saga_id), "{id}");
            }
        }
        for not_one in [
            "order-1",
            "order-1:charge:do",
            "o:charge:redo:1",
            "o:charge:do:x",
        ] {
            assert_eq!(saga_of_command(not_one), None, "{not_one}");
        }
    }

    fn command(name: &str, timeout_ms: i64) -> CommandDef {
        CommandDef {
            event_type: format!("x.{name}"),
            topic: "cmds".into(),
            success: format!("x.{name}Ok"),
            failure: format!("x.{name}Failed"),
            timeout_ms,
        }
    }

    fn def() -> SagaDef {
        let step = |name: &str, action: &str, undo: &str| StepDef {
            name: name.into(),
            participant: name.into(),
            action: command(action, 5_000),
            retry: Retry::ONCE,
            compensation: Some(command(undo, 5_000)),
        };
        SagaDef {
            name: "orders".into(),
            trigger_type: "x.OrderPlaced".into(),
            trigger_topic: "events".into(),
            correlation_key: vec!["order_id".into()],
            steps: vec![
                step("reserve", "Reserve", "Release"),
                step("charge", "Charge", "Refund"),
                step("ship", "Ship", "Cancel"),
            ],
            compensation_retry: Retry {
                max_attempts: 2,
                backoff_ms: 100,
                max_backoff_ms: None,
            },
            outcome: None,
        }
    }

    /// Drives one instance through inputs, keeping its state and every effect.
    struct Driver {
        def: SagaDef,
        state: Option<Instance>,
        effects: Vec<Effect>,
        ignored: Vec<Ignored>,
        now: i64,
    }

    impl Driver {
        fn new(def: SagaDef) -> Self {
            let mut d = Self {
                def,
                state: None,
                effects: Vec::new(),
                ignored: Vec::new(),
                now: T,
            };
            d.input(Input::Start {
                data: r#"{"order_id":"o1"}"#.into(),
                trigger: TriggerRef::default(),
                traceparent: None,
            });
            d
        }

        fn input(&mut self, input: Input) -> Transition {
            self.now += 10;
            let t = apply(&self.def, "o1", self.state.as_ref(), input, self.now);
            if let Some(s) = &t.state {
                self.state = Some(s.clone());
            }
            self.effects.extend(t.effects.clone());
            self.ignored.extend(t.ignored);
            t
        }

        fn state(&self) -> &Instance {
            self.state.as_ref().unwrap()
        }

        fn pending(&self) -> Pending {
            self.state().pending.clone().unwrap()
        }

        /// Answers the pending command with its success (`true`) or failure reply.
        fn answer(&mut self, success: bool) -> Transition {
            let p = self.pending();
            let step = self.def.step_index(&p.step).unwrap();
            let c = match p.kind {
                Kind::Action => &self.def.steps[step].action,
                Kind::Compensation => self.def.steps[step].compensation.as_ref().unwrap(),
            };
            let event_type = if success { &c.success } else { &c.failure }.clone();
            self.input(Input::Reply {
                event_type,
                command_id: p.command_id,
                reason: (!success).then(|| "no".to_string()),
                retryable: false,
                result: success.then(|| "{}".to_string()),
            })
        }

        fn expire(&mut self) -> Transition {
            let p = self.pending();
            let due_at = p.due_at().unwrap();
            self.now = due_at;
            self.input(Input::Deadline {
                command_id: p.command_id,
                due_at,
            })
        }

        /// Commands sent, as `<step>:<do|undo>` in order.
        fn commands(&self) -> Vec<String> {
            self.effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Command { step, kind, .. } => Some(format!(
                        "{}:{}",
                        self.def.steps[*step].name,
                        match kind {
                            Kind::Action => "do",
                            Kind::Compensation => "undo",
                        }
                    )),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn happy_path_runs_every_step_in_order_then_completes() {
        let mut d = Driver::new(def());
        assert_eq!(d.effects[0], Effect::Started);
        for _ in 0..3 {
            d.answer(true);
        }
        assert_eq!(d.commands(), ["reserve:do", "charge:do", "ship:do"]);
        assert_eq!(d.state().status, Status::Completed);
        assert_eq!(d.state().pending, None);
        assert_eq!(d.state().completed.len(), 3);
        assert_eq!(d.effects.last(), Some(&Effect::Completed));
        let steps_completed = d
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::StepCompleted { .. }))
            .count();
        assert_eq!(steps_completed, 3);
        assert_eq!(d.state().seq, 4, "one transition per input");
        assert!(d.ignored.is_empty());
    }

    #[test]
    fn a_failure_at_each_step_compensates_exactly_the_completed_steps_in_reverse() {
        let expected: [&[&str]; 3] = [
            &["reserve:do"],
            &["reserve:do", "charge:do", "reserve:undo"],
            &[
                "reserve:do",
                "charge:do",
                "ship:do",
                "charge:undo",
                "reserve:undo",
            ],
        ];
        for (failing, expected) in expected.iter().enumerate() {
            let mut d = Driver::new(def());
            for _ in 0..failing {
                d.answer(true);
            }
            d.answer(false);
            while d.state().status == Status::Compensating {
                d.answer(true);
            }
            assert_eq!(d.commands(), *expected, "failure at step {failing}");
            assert_eq!(d.state().status, Status::Compensated);
            assert_eq!(d.effects.last(), Some(&Effect::Compensated));
            let failure = d.state().failure.clone().unwrap();
            assert_eq!(failure.kind, FailureKind::Failed);
            assert_eq!(
                failure.step.as_deref(),
                Some(d.def.steps[failing].name.as_str())
            );
            // Each compensation names the action it undoes.
            for (undo, done) in d
                .state()
                .compensated
                .iter()
                .zip(d.state().completed.iter().rev())
            {
                assert_eq!(undo.step, done.step);
            }
        }
    }

    #[test]
    fn a_timeout_compensates_the_timed_out_step_too_then_the_rest_in_reverse() {
        let mut d = Driver::new(def());
        d.answer(true);
        d.answer(true);
        let ship = d.pending();
        d.expire();
        assert_eq!(d.state().status, Status::Compensating);
        let first_undo = d.pending();
        assert_eq!(
            first_undo.compensates.as_deref(),
            Some(ship.command_id.as_str())
        );
        while d.state().status == Status::Compensating {
            d.answer(true);
        }
        assert_eq!(
            d.commands(),
            [
                "reserve:do",
                "charge:do",
                "ship:do",
                "ship:undo",
                "charge:undo",
                "reserve:undo"
            ]
        );
        assert_eq!(
            d.state().failure.as_ref().unwrap().kind,
            FailureKind::TimedOut
        );
        // The timed-out command answering now is late.
        let t = d.input(Input::Reply {
            event_type: "x.ShipOk".into(),
            command_id: ship.command_id,
            reason: None,
            retryable: false,
            result: None,
        });
        assert_eq!(t.ignored, Some(Ignored::LateReply));
        assert_eq!(t.state, None, "ignored replies write nothing");
    }

    #[test]
    fn timeouts_are_retried_with_the_same_command_id_and_failures_with_a_new_one() {
        let mut def = def();
        def.steps[0].retry = Retry {
            max_attempts: 3,
            backoff_ms: 200,
            max_backoff_ms: None,
        };
        let mut d = Driver::new(def);
        let first = d.pending();
        d.expire();
        let waiting = d.pending();
        assert_eq!(waiting.wait, Wait::Backoff { until: d.now + 200 });
        assert_eq!(
            waiting.command_id, first.command_id,
            "a timeout keeps the id"
        );
        d.expire();
        let resent = d.pending();
        assert_eq!(resent.attempt, 2);
        assert_eq!(resent.command_id, first.command_id);
        // A retryable failure reply: backoff, then a new command id.
        d.input(Input::Reply {
            event_type: "x.ReserveFailed".into(),
            command_id: resent.command_id.clone(),
            reason: Some("busy".into()),
            retryable: true,
            result: None,
        });
        let after_failure = d.pending();
        assert_eq!(after_failure.wait, Wait::Backoff { until: d.now + 400 });
        assert_eq!(after_failure.command_id, "o1:reserve:do:2");
        d.expire();
        assert_eq!(d.pending().attempt, 3);
        // Out of attempts: the next failure compensates (nothing completed, so it ends).
        d.answer(false);
        assert_eq!(d.state().status, Status::Compensated);
        assert_eq!(d.commands(), ["reserve:do", "reserve:do", "reserve:do"]);
    }

    #[test]
    fn duplicate_and_unexpected_replies_and_stale_deadlines_are_ignored() {
        let mut d = Driver::new(def());
        let reserve = d.pending();
        d.answer(true);
        let dup = d.input(Input::Reply {
            event_type: "x.ReserveOk".into(),
            command_id: reserve.command_id.clone(),
            reason: None,
            retryable: false,
            result: None,
        });
        assert_eq!(dup.ignored, Some(Ignored::DuplicateReply));
        assert_eq!(dup.state, None);
        let charge = d.pending();
        let wrong = d.input(Input::Reply {
            event_type: "x.ReserveOk".into(),
            command_id: charge.command_id.clone(),
            reason: None,
            retryable: false,
            result: None,
        });
        assert_eq!(wrong.ignored, Some(Ignored::UnexpectedReply));
        let stale = d.input(Input::Deadline {
            due_at: reserve.due_at().unwrap(),
            command_id: reserve.command_id,
        });
        assert_eq!(stale.ignored, Some(Ignored::StaleDeadline));
        let t = d.input(Input::Start {
            data: "{}".into(),
            trigger: TriggerRef::default(),
            traceparent: None,
        });
        assert_eq!(t.ignored, Some(Ignored::DuplicateTrigger));
        let unknown = apply(
            &d.def,
            "nobody",
            None,
            Input::Deadline {
                command_id: "x".into(),
                due_at: 1,
            },
            T,
        );
        assert_eq!(unknown.ignored, Some(Ignored::UnknownInstance));
        assert_eq!(d.state().status, Status::Running);
    }

    #[test]
    fn a_failing_compensation_is_retried_then_parked_until_an_operator_retries() {
        let mut d = Driver::new(def());
        d.answer(true);
        d.answer(false); // charge fails: release the reservation
        let undo = d.pending();
        assert_eq!(undo.kind, Kind::Compensation);
        d.answer(false);
        assert!(matches!(d.pending().wait, Wait::Backoff { .. }));
        d.expire();
        assert_eq!(d.pending().attempt, 2);
        let t = d.answer(false);
        assert_eq!(d.state().status, Status::Parked);
        assert!(matches!(
            t.effects[..],
            [Effect::Parked { attempts: 2, .. }]
        ));
        assert_eq!(d.pending().wait, Wait::Operator);
        assert_eq!(d.pending().due_at(), None, "a parked saga has no deadline");

        // Retrying something that is not parked is recorded but changes nothing else.
        let mut running = Driver::new(def());
        let t = running.input(Input::Retry {
            request_id: "r0".into(),
            by: None,
        });
        assert_eq!(t.ignored, Some(Ignored::NotParked));
        assert!(t
            .state
            .unwrap()
            .history
            .last()
            .unwrap()
            .detail
            .as_ref()
            .unwrap()
            .contains("not parked"));

        d.input(Input::Retry {
            request_id: "r1".into(),
            by: Some("ops".into()),
        });
        assert_eq!(d.state().status, Status::Compensating);
        let again = d.pending();
        assert_eq!(again.attempt, 1);
        assert_eq!(
            again.command_id, "o1:reserve:undo:3",
            "a new try after failures"
        );
        d.answer(true);
        assert_eq!(d.state().status, Status::Compensated);
        assert_eq!(
            d.commands(),
            [
                "reserve:do",
                "charge:do",
                "reserve:undo",
                "reserve:undo",
                "reserve:undo"
            ]
        );
    }

    #[test]
    fn an_abort_compensates_the_in_flight_step_and_the_completed_ones() {
        let mut d = Driver::new(def());
        d.answer(true);
        let charge = d.pending();
        d.input(Input::Abort {
            request_id: "a1".into(),
            by: Some("ops".into()),
            reason: Some("customer called".into()),
        });
        assert_eq!(d.state().status, Status::Compensating);
        assert_eq!(d.pending().compensates, Some(charge.command_id.clone()));
        while d.state().status == Status::Compensating {
            d.answer(true);
        }
        assert_eq!(
            d.commands(),
            ["reserve:do", "charge:do", "charge:undo", "reserve:undo"]
        );
        let failure = d.state().failure.clone().unwrap();
        assert_eq!(failure.kind, FailureKind::Aborted);
        assert_eq!(failure.reason, "customer called");
        let t = d.input(Input::Abort {
            request_id: "a2".into(),
            by: None,
            reason: None,
        });
        assert_eq!(t.ignored, Some(Ignored::NotRunning));
        assert_eq!(t.state.unwrap().status, Status::Compensated);
    }

    #[test]
    fn steps_without_compensation_are_skipped_when_compensating() {
        let mut def = def();
        def.steps[0].compensation = None;
        let mut d = Driver::new(def);
        d.answer(true);
        d.answer(true);
        d.answer(false);
        while d.state().status == Status::Compensating {
            d.answer(true);
        }
        assert_eq!(
            d.commands(),
            ["reserve:do", "charge:do", "ship:do", "charge:undo"]
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut d = Driver::new(def());
        d.answer(true);
        d.expire();
        let json = d.state().to_json();
        assert_eq!(&Instance::from_json(&json).unwrap(), d.state());
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains(r#""status":"compensating""#), "{text}");
    }

    /// The reported crash: a saga compensating `reserve` (its compensation failing and
    /// being retried) meets a definition where `reserve` has no compensation.
    fn compensating_reserve_with_a_failing_undo() -> Driver {
        let mut def = def();
        def.compensation_retry.max_attempts = 10;
        let mut d = Driver::new(def);
        d.answer(true);
        d.answer(false); // charge fails: release the reservation
        d.answer(false); // the release fails: backoff, then a resend
        assert_eq!(d.state().status, Status::Compensating);
        assert!(matches!(d.pending().wait, Wait::Backoff { .. }));
        d
    }

    #[test]
    fn a_compensation_the_definition_dropped_parks_the_saga_definition_changed() {
        let mut d = compensating_reserve_with_a_failing_undo();
        let before = d.pending();
        d.def.steps[0].compensation = None;
        let sent = d.commands().len();
        let t = d.expire();
        assert_eq!(d.state().status, Status::Parked);
        assert_eq!(d.state().park_reason(), Some(ParkReason::DefinitionChanged));
        let parked = d.state().parked.clone().unwrap();
        assert_eq!(parked.was, Status::Compensating);
        assert!(
            parked.detail.contains("`reserve` has no compensation"),
            "{parked:?}"
        );
        // What it waited on stays visible, without a deadline; nothing was sent.
        let p = d.pending();
        assert_eq!((p.step.as_str(), p.kind), ("reserve", Kind::Compensation));
        assert_eq!(p.command_id, before.command_id);
        assert_eq!(p.due_at(), None);
        assert_eq!(d.commands().len(), sent);
        assert!(matches!(
            &t.effects[..],
            [Effect::Parked { step, why: ParkReason::DefinitionChanged, .. }] if step == "reserve"
        ));
        let last = d.state().history.last().unwrap();
        assert_eq!(last.event, TimelineEvent::Parked);
        assert!(last
            .detail
            .as_deref()
            .unwrap()
            .starts_with("definition_changed: "));
    }

    #[test]
    fn retrying_a_changed_compensating_saga_skips_what_the_definition_cannot_undo() {
        let mut d = compensating_reserve_with_a_failing_undo();
        d.def.steps[0].compensation = None;
        d.expire();
        let t = d.input(Input::Retry {
            request_id: "r1".into(),
            by: Some("ops".into()),
        });
        assert_eq!(t.ignored, None);
        assert_eq!(d.state().status, Status::Compensated);
        assert_eq!(d.state().parked, None);
        assert_eq!(d.effects.last(), Some(&Effect::Compensated));
        let retry = d
            .state()
            .history
            .iter()
            .find(|e| e.event == TimelineEvent::Retry)
            .unwrap();
        assert!(
            retry
                .detail
                .as_deref()
                .unwrap()
                .contains("not compensated (no compensation in it): reserve"),
            "{retry:?}"
        );
    }

    #[test]
    fn aborting_a_changed_compensating_saga_ends_it_compensated_once() {
        let mut def = def();
        def.compensation_retry.max_attempts = 10;
        let mut d = Driver::new(def);
        d.answer(true);
        d.answer(true);
        d.answer(false); // ship fails: refund, then release
        d.answer(false); // the refund fails: backoff
        d.def.steps[1].compensation = None; // charge: no refund any more
        d.expire();
        assert_eq!(d.state().park_reason(), Some(ParkReason::DefinitionChanged));
        d.input(Input::Abort {
            request_id: "a1".into(),
            by: None,
            reason: Some("give up".into()),
        });
        // The release still exists: it runs, then the saga is compensated.
        assert_eq!(d.state().status, Status::Compensating);
        assert_eq!(d.pending().step, "reserve");
        d.answer(true);
        assert_eq!(d.state().status, Status::Compensated);
        let terminal = d
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Compensated | Effect::Completed))
            .count();
        assert_eq!(terminal, 1);
        assert_eq!(
            d.commands(),
            [
                "reserve:do",
                "charge:do",
                "ship:do",
                "charge:undo",
                "reserve:undo"
            ]
        );
    }

    #[test]
    fn a_running_saga_whose_step_was_removed_parks_then_resumes_or_compensates() {
        let removed = || {
            let mut d = Driver::new(def());
            d.answer(true); // reserve done; charge in flight
            d.def.steps.remove(1);
            d.expire();
            assert_eq!(d.state().park_reason(), Some(ParkReason::DefinitionChanged));
            assert_eq!(d.state().parked.as_ref().unwrap().was, Status::Running);
            assert!(d
                .state()
                .parked
                .as_ref()
                .unwrap()
                .detail
                .contains("`charge` is not in"));
            d
        };
        // Retry: forward from the first step not done under the new definition.
        let mut d = removed();
        d.input(Input::Retry {
            request_id: "r1".into(),
            by: None,
        });
        assert_eq!(d.state().status, Status::Running);
        assert_eq!(d.pending().step, "ship");
        assert_eq!(d.pending().command_id, "o1:ship:do:1");
        d.answer(true);
        assert_eq!(d.state().status, Status::Completed);

        // Abort: the steps it can undo are undone (charge is unknown now).
        let mut d = removed();
        d.input(Input::Abort {
            request_id: "a1".into(),
            by: None,
            reason: None,
        });
        assert_eq!(d.state().status, Status::Compensating);
        assert_eq!(d.pending().step, "reserve");
        d.answer(true);
        assert_eq!(d.state().status, Status::Compensated);
        assert_eq!(
            d.state().failure.as_ref().unwrap().kind,
            FailureKind::Aborted
        );
    }

    #[test]
    fn retry_resends_the_step_in_flight_under_its_command_id() {
        let mut d = Driver::new(def());
        d.answer(true); // charge in flight
        let charge = d.pending();
        d.def.steps[2].compensation = None; // ship: irrelevant while running forward...
        d.def.steps.remove(0); // ...but reserve is gone from the definition
                               // The deadline of charge still fits; the reply to charge completes it, and the
                               // next step is ship.
        d.answer(true);
        assert_eq!(d.state().status, Status::Running);
        assert_eq!(d.pending().step, "ship");
        // A reply to a command whose step the definition lost parks the saga.
        let mut d = Driver::new(def());
        d.answer(true);
        d.def.steps.remove(1);
        let t = d.input(Input::Reply {
            event_type: "x.ChargeOk".into(),
            command_id: charge.command_id.clone(),
            reason: None,
            retryable: false,
            result: None,
        });
        assert_eq!(t.ignored, None);
        assert_eq!(d.state().park_reason(), Some(ParkReason::DefinitionChanged));
        // Put the step back: retry sends charge again with the same id (dedup answers).
        d.def = def();
        d.input(Input::Retry {
            request_id: "r1".into(),
            by: None,
        });
        assert_eq!(d.pending().command_id, charge.command_id);
        assert_eq!(d.pending().attempt, 1);
    }

    #[test]
    fn an_exhausted_compensation_retried_without_its_definition_parks_definition_changed() {
        let mut d = Driver::new(def());
        d.answer(true);
        d.answer(false);
        d.answer(false);
        d.expire();
        d.answer(false);
        assert_eq!(
            d.state().park_reason(),
            Some(ParkReason::CompensationExhausted)
        );
        // Only a running saga or a definition_changed one can be aborted.
        let t = d.input(Input::Abort {
            request_id: "a0".into(),
            by: None,
            reason: None,
        });
        assert_eq!(t.ignored, Some(Ignored::NotRunning));
        d.def.steps[0].compensation = None;
        d.input(Input::Retry {
            request_id: "r1".into(),
            by: None,
        });
        assert_eq!(d.state().park_reason(), Some(ParkReason::DefinitionChanged));
        assert_eq!(d.pending().wait, Wait::Operator);
    }

    /// Every state a saga reaches under the full definition, met by every definition with
    /// a step or a compensation removed, and every input: the machine never panics, and an
    /// instance left running or compensating always waits on a command the definition has.
    #[test]
    fn no_stored_state_makes_the_machine_panic_under_a_changed_definition() {
        let mut states: Vec<Instance> = Vec::new();
        for script in [
            "", "s", "ss", "sss", "f", "sf", "ssf", "sfs", "sff", "sffe", "sffef", "ssfff", "e",
            "se", "ssee",
        ] {
            let mut def = def();
            def.steps[1].retry = Retry {
                max_attempts: 2,
                backoff_ms: 10,
                max_backoff_ms: None,
            };
            let mut d = Driver::new(def);
            for c in script.chars() {
                if d.state().pending.is_none() || d.state().status.is_terminal() {
                    break;
                }
                if d.pending().due_at().is_none() {
                    break;
                }
                match c {
                    's' => d.answer(true),
                    'f' => d.answer(false),
                    _ => d.expire(),
                };
                states.push(d.state().clone());
            }
            states.push(d.state().clone());
        }
        let mut defs = Vec::new();
        for i in 0..3 {
            let mut removed = def();
            removed.steps.remove(i);
            defs.push(removed);
            let mut uncompensated = def();
            uncompensated.steps[i].compensation = None;
            defs.push(uncompensated);
        }
        let mut empty = def();
        empty.steps.clear();
        defs.push(empty);
        let full = def();
        for state in &states {
            let p = state.pending.clone();
            let mut inputs = vec![
                Input::Retry {
                    request_id: "r".into(),
                    by: None,
                },
                Input::Abort {
                    request_id: "a".into(),
                    by: None,
                    reason: None,
                },
            ];
            if let Some(p) = &p {
                if let Some(due_at) = p.due_at() {
                    inputs.push(Input::Deadline {
                        command_id: p.command_id.clone(),
                        due_at,
                    });
                }
                let i = full.step_index(&p.step).unwrap();
                let c = match p.kind {
                    Kind::Action => &full.steps[i].action,
                    Kind::Compensation => full.steps[i].compensation.as_ref().unwrap(),
                };
                for event_type in [&c.success, &c.failure] {
                    inputs.push(Input::Reply {
                        event_type: event_type.clone(),
                        command_id: p.command_id.clone(),
                        reason: None,
                        retryable: true,
                        result: None,
                    });
                }
            }
            for def in &defs {
                for input in &inputs {
                    let mut now = state.updated_at + 1_000_000;
                    let mut current = state.clone();
                    // Apply the input, then a retry and an abort on whatever it left.
                    for next in [
                        input.clone(),
                        Input::Retry {
                            request_id: "r2".into(),
                            by: None,
                        },
                        Input::Abort {
                            request_id: "a2".into(),
                            by: None,
                            reason: None,
                        },
                    ] {
                        now += 1;
                        let t = apply(def, "o1", Some(&current), next, now);
                        if let Some(s) = t.state {
                            current = s;
                        }
                        if current.status == Status::Parked {
                            assert!(current.parked.is_some());
                        }
                    }
                    // A live instance waits on a command; if the definition lacks it, its
                    // deadline parks the instance (it is not sent, and nothing panics).
                    if matches!(current.status, Status::Running | Status::Compensating) {
                        let p = current.pending.clone().expect("a live saga waits");
                        let fits = def.step_index(&p.step).is_some_and(|i| {
                            p.kind == Kind::Action || def.steps[i].compensation.is_some()
                        });
                        if !fits {
                            let due_at = p.due_at().expect("a live saga has a deadline");
                            let t = apply(
                                def,
                                "o1",
                                Some(&current),
                                Input::Deadline {
                                    command_id: p.command_id,
                                    due_at,
                                },
                                due_at,
                            );
                            let s = t.state.expect("parked");
                            assert_eq!(s.park_reason(), Some(ParkReason::DefinitionChanged));
                        }
                    }
                }
            }
        }
        assert!(states.len() > 20);
    }

    #[test]
    fn a_completed_step_the_definition_lost_parks_the_compensation_instead_of_skipping_it() {
        let mut d = Driver::new(def());
        d.answer(true);
        d.answer(true);
        // reserve (done) leaves the definition while ship runs; ship fails.
        d.def.steps.remove(0);
        d.answer(false);
        assert_eq!(d.pending().step, "charge");
        d.answer(true);
        // The release cannot be sent: parked, not silently skipped.
        assert_eq!(d.state().park_reason(), Some(ParkReason::DefinitionChanged));
        assert!(d
            .state()
            .parked
            .as_ref()
            .unwrap()
            .detail
            .contains("`reserve` is not in"));
        assert_eq!(d.state().pending, None, "the settled refund is not pending");
        d.input(Input::Retry {
            request_id: "r1".into(),
            by: None,
        });
        assert_eq!(d.state().status, Status::Compensated);
        assert_eq!(d.state().compensated.len(), 1);
    }
}
