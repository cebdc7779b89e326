//! The state of one saga instance: the record the orchestrator writes to the saga's compacted
//! state topic (keyed by saga id) after every transition, and rebuilds its memory from.
//!
//! Everything the orchestrator needs to continue is here, deadlines included, so nothing is
//! held only in memory. Steps are stored by name rather than position, so a stored instance
//! stays readable when a definition gains steps. Values are JSON, so operators can read them
//! with any Kafka tool.

use serde::{Deserialize, Serialize};

/// Where an instance is in its life. `completed` and `compensated` are terminal; `parked`
/// waits for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Compensating,
    Completed,
    Compensated,
    Parked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Compensated => "compensated",
            Status::Parked => "parked",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated)
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Status::Running,
            Status::Compensating,
            Status::Completed,
            Status::Compensated,
            Status::Parked,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Whether a command is a step's own or the one undoing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Action,
    Compensation,
}

impl Kind {
    /// The kind a command's `kind` field names, if it names one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "action" => Some(Kind::Action),
            "compensation" => Some(Kind::Compensation),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Action => "action",
            Kind::Compensation => "compensation",
        }
    }
}

/// Where the trigger was read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRef {
    pub event_id: Option<String>,
    pub event_type: String,
    /// `topic/partition@offset`.
    pub location: Option<String>,
}

/// A settled command: a step that succeeded, or a compensation that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    pub step: String,
    pub command_id: String,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    pub at: i64,
}

/// A compensation still to run, and the action command it undoes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Undo {
    pub step: String,
    pub action_command_id: String,
}

/// What the pending command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "for")]
pub enum Wait {
    /// Its reply, until `deadline` (epoch ms); then it has timed out.
    Reply { deadline: i64 },
    /// Nothing: it is sent again at `until` (backoff after a timeout or a retryable failure).
    Backoff { until: i64 },
    /// An operator (`sluice saga retry`); no deadline.
    Operator,
}

/// The command the instance is waiting on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub step: String,
    pub kind: Kind,
    /// Increments after a failure reply, which changes the command id (the participant said
    /// nothing happened, so the next attempt is a new command); a resend after a timeout
    /// keeps it, so the participant's dedup answers if the first one did run.
    pub try_no: u32,
    /// Sends so far in this round (the first is 1).
    pub attempt: u32,
    pub command_id: String,
    /// For a compensation: the action command it undoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensates: Option<String>,
    pub sent_at: i64,
    pub wait: Wait,
}

impl Pending {
    /// When the timer must act on it, if ever.
    pub fn due_at(&self) -> Option<i64> {
        match self.wait {
            Wait::Reply { deadline } => Some(deadline),
            Wait::Backoff { until } => Some(until),
            Wait::Operator => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Failed,
    TimedOut,
    Aborted,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Failed => "failed",
            FailureKind::TimedOut => "timed_out",
            FailureKind::Aborted => "aborted",
        }
    }
}

/// Why an instance is compensating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub kind: FailureKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub reason: String,
    pub at: i64,
}

/// What happened to an instance, as its timeline and the `event` label of transition
/// metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimelineEvent {
    Started,
    Command,
    Reply,
    Timeout,
    Backoff,
    Compensating,
    Completed,
    Compensated,
    Parked,
    Retry,
    Abort,
    Ignored,
}

impl TimelineEvent {
    pub const ALL: [TimelineEvent; 12] = [
        TimelineEvent::Started,
        TimelineEvent::Command,
        TimelineEvent::Reply,
        TimelineEvent::Timeout,
        TimelineEvent::Backoff,
        TimelineEvent::Compensating,
        TimelineEvent::Completed,
        TimelineEvent::Compensated,
        TimelineEvent::Parked,
        TimelineEvent::Retry,
        TimelineEvent::Abort,
        TimelineEvent::Ignored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TimelineEvent::Started => "started",
            TimelineEvent::Command => "command",
            TimelineEvent::Reply => "reply",
            TimelineEvent::Timeout => "timeout",
            TimelineEvent::Backoff => "backoff",
            TimelineEvent::Compensating => "compensating",
            TimelineEvent::Completed => "completed",
            TimelineEvent::Compensated => "compensated",
            TimelineEvent::Parked => "parked",
            TimelineEvent::Retry => "retry",
            TimelineEvent::Abort => "abort",
            TimelineEvent::Ignored => "ignored",
        }
    }
}

impl std::fmt::Display for TimelineEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of an instance's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub at: i64,
    pub event: TimelineEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why an instance is parked: what an operator looks at before `sluice saga retry|abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkReason {
    /// A compensation failed or timed out on every attempt the saga's compensation retry
    /// allows. `retry` tries it again.
    CompensationExhausted,
    /// The stored state names a step or compensation the running definition no longer has
    /// (the topology changed under an unfinished saga), so the machine cannot take its next
    /// step. `retry` continues under the current definition, `abort` compensates what the
    /// current definition can compensate.
    DefinitionChanged,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::CompensationExhausted => "compensation_exhausted",
            ParkReason::DefinitionChanged => "definition_changed",
        }
    }
}

/// Why and from where an instance was parked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parked {
    pub reason: ParkReason,
    /// What exactly is missing or failed, for humans.
    pub detail: String,
    /// `running` or `compensating`: the direction the saga was going when it stopped, which
    /// is the one `retry` resumes.
    pub was: Status,
    pub at: i64,
}

/// Timeline entries kept per instance; older ones (after the first) are dropped, so a saga
/// retried by hand for weeks cannot grow without bound.
pub const MAX_HISTORY: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub saga: String,
    pub id: String,
    pub status: Status,
    pub started_at: i64,
    pub updated_at: i64,
    /// Transitions applied; names the records each transition writes (deterministic ids).
    pub seq: u64,
    /// The trigger event as JSON.
    pub data: String,
    pub trigger: TriggerRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Steps that succeeded, in order.
    pub completed: Vec<Done>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Compensations still to run, the next first.
    #[serde(default)]
    pub to_compensate: Vec<Undo>,
    /// Compensations that ran, in the order they ran.
    #[serde(default)]
    pub compensated: Vec<Done>,
    /// Set while `status` is `parked`. Records written before reasons existed have none;
    /// they were all [`ParkReason::CompensationExhausted`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Parked>,
    pub history: Vec<Entry>,
}

impl Instance {
    /// The step the instance is on, for listings: the pending command's step.
    pub fn current_step(&self) -> Option<&str> {
        self.pending.as_ref().map(|p| p.step.as_str())
    }

    /// Why the instance is parked; `None` unless it is.
    pub fn park_reason(&self) -> Option<ParkReason> {
        (self.status == Status::Parked).then(|| {
            self.parked
                .as_ref()
                .map_or(ParkReason::CompensationExhausted, |p| p.reason)
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an instance always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub(crate) fn push(&mut self, entry: Entry) {
        self.history.push(entry);
        if self.history.len() > MAX_HISTORY {
            self.history.remove(1);
        }
    }
}
