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
//!
//! Command ids are `<saga id>:<step>:<do|undo>:<try>`: resends after a timeout keep the id so
//! the participant's dedup answers instead of repeating a side effect; after a failure reply
//! (the participant said nothing happened) the next try is a new command.

use super::definition::{CommandDef, SagaDef};
use super::instance::{
    Done, Entry, Failure, FailureKind, Instance, Kind, Pending, Status, TriggerRef, Undo, Wait,
};

/// Timeline events; also the `event` label of `sluice_saga_transitions_total`.
pub const EVENTS: &[&str] = &[
    "started",
    "command",
    "reply",
    "timeout",
    "backoff",
    "compensating",
    "completed",
    "compensated",
    "parked",
    "retry",
    "abort",
    "ignored",
];

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
    /// A compensation ran out of attempts; the instance is parked.
    Parked {
        step: usize,
        reason: String,
        attempts: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new state, when anything changed (the timeline counts).
    pub state: Option<Instance>,
    pub effects: Vec<Effect>,
    pub ignored: Option<Ignored>,
    /// Timeline events this transition added (see [`EVENTS`]), for metrics.
    pub events: Vec<&'static str>,
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

/// Applies `input` to instance `id` (absent when `current` is `None`).
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
                history: Vec::new(),
            };
            let mut run = Run::new(def, instance, now);
            run.note("started", None, None, None, None);
            run.effects.push(Effect::Started);
            run.send(0, Kind::Action, 1, 1, None);
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
    events: Vec<&'static str>,
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
        event: &'static str,
        step: Option<&str>,
        command_id: Option<&str>,
        attempt: Option<u32>,
        detail: Option<String>,
    ) {
        let entry = Entry {
            at: self.now,
            event: event.to_string(),
            step: step.map(str::to_string),
            command_id: command_id.map(str::to_string),
            attempt,
            detail,
        };
        self.instance.push(entry);
        self.events.push(event);
    }

    fn command(&self, step: usize, kind: Kind) -> Option<&'d CommandDef> {
        let s = &self.def.steps[step];
        match kind {
            Kind::Action => Some(&s.action),
            Kind::Compensation => s.compensation.as_ref(),
        }
    }

    fn index(&self, step: &str) -> Option<usize> {
        self.def.step_index(step)
    }

    /// Sends (or resends) the command of `step`, waiting for its reply until its timeout.
    fn send(
        &mut self,
        step: usize,
        kind: Kind,
        try_no: u32,
        attempt: u32,
        compensates: Option<String>,
    ) {
        let name = self.def.steps[step].name.clone();
        let command = self.command(step, kind).expect("sent commands exist");
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
            "command",
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
    }

    /// Applies an input to an existing instance; `Some` when it is ignored without a trace.
    fn input(&mut self, input: Input) -> Option<Ignored> {
        match input {
            Input::Start { .. } => Some(Ignored::DuplicateTrigger),
            Input::Reply {
                event_type,
                command_id,
                reason,
                retryable,
                result,
            } => self.reply(&event_type, &command_id, reason, retryable, result),
            Input::Deadline { command_id, due_at } => self.deadline(&command_id, due_at),
            Input::Retry { request_id, by } => {
                self.retry(&request_id, by);
                None
            }
            Input::Abort {
                request_id,
                by,
                reason,
            } => {
                self.abort(&request_id, by, reason);
                None
            }
        }
    }

    fn reply(
        &mut self,
        event_type: &str,
        command_id: &str,
        reason: Option<String>,
        retryable: bool,
        result: Option<String>,
    ) -> Option<Ignored> {
        let waiting = self
            .instance
            .pending
            .clone()
            .filter(|p| p.command_id == command_id && !matches!(p.wait, Wait::Operator));
        let Some(pending) = waiting else {
            let settled = self
                .instance
                .history
                .iter()
                .any(|e| e.event == "reply" && e.command_id.as_deref() == Some(command_id));
            return Some(if settled {
                Ignored::DuplicateReply
            } else {
                Ignored::LateReply
            });
        };
        let Some(step) = self.index(&pending.step) else {
            return Some(Ignored::UnexpectedReply);
        };
        let command = self
            .command(step, pending.kind)
            .expect("pending commands exist");
        let success = if event_type == command.success {
            true
        } else if event_type == command.failure {
            false
        } else {
            return Some(Ignored::UnexpectedReply);
        };
        let detail = match &reason {
            Some(r) => format!("{}: {r}", short_name(event_type)),
            None => short_name(event_type).to_string(),
        };
        self.note(
            "reply",
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
                if step + 1 < self.def.steps.len() {
                    self.send(step + 1, Kind::Action, 1, 1, None);
                } else {
                    self.instance.pending = None;
                    self.instance.status = Status::Completed;
                    self.note("completed", None, None, None, None);
                    self.effects.push(Effect::Completed);
                }
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
                    );
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
                self.next_compensation();
            }
            (Kind::Compensation, false) => {
                let retry = self.def.compensation_retry;
                if pending.attempt < retry.max_attempts {
                    self.back_off(&pending, true, retry.delay_ms(pending.attempt));
                } else {
                    self.park(&pending, step, true, reason);
                }
            }
        }
        None
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
            "backoff",
            Some(&pending.step),
            Some(&id),
            Some(pending.attempt),
            Some(format!("next attempt in {delay}ms")),
        );
    }

    fn deadline(&mut self, command_id: &str, due_at: i64) -> Option<Ignored> {
        let pending = match &self.instance.pending {
            Some(p) if p.command_id == command_id && p.due_at() == Some(due_at) => p.clone(),
            _ => return Some(Ignored::StaleDeadline),
        };
        let Some(step) = self.index(&pending.step) else {
            return Some(Ignored::StaleDeadline);
        };
        match pending.wait {
            Wait::Backoff { .. } => {
                self.send(
                    step,
                    pending.kind,
                    pending.try_no,
                    pending.attempt + 1,
                    pending.compensates.clone(),
                );
            }
            Wait::Reply { .. } => {
                let command = self
                    .command(step, pending.kind)
                    .expect("pending commands exist");
                let reason = format!(
                    "no reply to {} within {}ms (attempt {})",
                    short_name(&command.event_type),
                    command.timeout_ms,
                    pending.attempt
                );
                self.note(
                    "timeout",
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
                    );
                } else {
                    self.park(&pending, step, false, reason);
                }
            }
            Wait::Operator => return Some(Ignored::StaleDeadline),
        }
        None
    }

    /// Starts compensating: `uncertain` (a command that may have run) first, then the
    /// completed steps in reverse order, each only if it has a compensation.
    fn compensate(&mut self, failure: Failure, uncertain: Option<&Pending>) {
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
        let def = self.def;
        undo.retain(|u| {
            def.step_index(&u.step)
                .is_some_and(|i| def.steps[i].compensation.is_some())
        });
        let detail = format!("{}: {}", failure.kind.as_str(), failure.reason);
        self.instance.status = Status::Compensating;
        self.note(
            "compensating",
            failure.step.as_deref(),
            None,
            None,
            Some(detail),
        );
        self.instance.failure = Some(failure);
        self.instance.to_compensate = undo;
        self.next_compensation();
    }

    fn next_compensation(&mut self) {
        match self.instance.to_compensate.first().cloned() {
            None => {
                self.instance.pending = None;
                self.instance.status = Status::Compensated;
                self.note("compensated", None, None, None, None);
                self.effects.push(Effect::Compensated);
            }
            Some(undo) => {
                let step = self.index(&undo.step).expect("kept only known steps");
                self.send(step, Kind::Compensation, 1, 1, Some(undo.action_command_id));
            }
        }
    }

    fn park(&mut self, pending: &Pending, step: usize, failed: bool, reason: String) {
        let try_no = pending.try_no + u32::from(failed);
        self.instance.pending = Some(Pending {
            try_no,
            command_id: command_id(&self.instance.id, &pending.step, pending.kind, try_no),
            wait: Wait::Operator,
            ..pending.clone()
        });
        self.instance.status = Status::Parked;
        self.note(
            "parked",
            Some(&pending.step),
            None,
            Some(pending.attempt),
            Some(reason.clone()),
        );
        self.effects.push(Effect::Parked {
            step,
            reason,
            attempts: pending.attempt,
        });
    }

    fn retry(&mut self, request_id: &str, by: Option<String>) {
        let by = by.unwrap_or_else(|| "operator".into());
        let parked = self
            .instance
            .pending
            .clone()
            .filter(|_| self.instance.status == Status::Parked);
        let Some(pending) = parked else {
            let detail = format!(
                "retry {request_id} by {by} ignored: the saga is {}, not parked",
                self.instance.status.as_str()
            );
            self.note("ignored", None, None, None, Some(detail));
            self.ignored = Some(Ignored::NotParked);
            return;
        };
        let Some(step) = self.index(&pending.step) else {
            self.note(
                "ignored",
                None,
                None,
                None,
                Some(format!(
                    "retry {request_id}: step `{}` is no longer defined",
                    pending.step
                )),
            );
            self.ignored = Some(Ignored::NotParked);
            return;
        };
        self.instance.status = Status::Compensating;
        self.note(
            "retry",
            Some(&pending.step),
            None,
            None,
            Some(format!("retry {request_id} by {by}")),
        );
        self.send(step, pending.kind, pending.try_no, 1, pending.compensates);
    }

    fn abort(&mut self, request_id: &str, by: Option<String>, reason: Option<String>) {
        let by = by.unwrap_or_else(|| "operator".into());
        if self.instance.status != Status::Running {
            let detail = format!(
                "abort {request_id} by {by} ignored: the saga is {}, not running",
                self.instance.status.as_str()
            );
            self.note("ignored", None, None, None, Some(detail));
            self.ignored = Some(Ignored::NotRunning);
            return;
        }
        let reason = reason.unwrap_or_else(|| "aborted by an operator".into());
        self.note(
            "abort",
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
        );
    }
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
}
