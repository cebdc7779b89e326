//! The built-in HTTP participant: executes the commands of `http:` saga steps as calls
//! through sluice's one outbound client, so a saga drives a third-party API without anyone
//! writing a participant.
//!
//! It runs inside the ordinary [`ParticipantHandler`](crate::participant::ParticipantHandler),
//! so it inherits its exactly-once dedup by command id; the command id is also sent as
//! `Idempotency-Key`, so a command executed again after a crash (its reply never committed)
//! asks the provider for the same effect, which a provider honouring the header performs
//! once. The orchestrator stays free of network calls.
//!
//! - A transient failure (network, timeout, 408, 429, 5xx) is retried inline, with
//!   exponential backoff and jitter, honouring `Retry-After`, within 80% of the step's
//!   timeout; while the upstream's circuit breaker is open the call waits. Out of time, the
//!   command gets no reply: the orchestrator resends it (same id, same key) when the step
//!   times out, and its retry policy decides from there.
//! - A permanent failure (other 4xx, or a status the step lists as permanent) fails the
//!   step, and the saga compensates.
//! - The compensation of an action that never answered (the orchestrator compensates it in
//!   case it took effect) first asks the action again with its own key, for the result the
//!   compensation needs ([`super::uncertain`]).
//! - An unknown answer (1xx, 3xx, a 2xx the step does not accept) is logged and left
//!   without a reply, so it is retried no faster than the step's timeout.
//! - Calls do not wait for each other: each is detached from the batch that read it
//!   ([`crate::detached`], no patience), so a partition's calls run side by side (up to the
//!   upstream's `max_in_flight`) and a slow upstream, a rate-limit wait or an open breaker
//!   holds back neither the commands behind it nor the other partitions' batch. A reply is
//!   written by the first batch to end after its call did.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use sluice_runtime::outbound::{
    send_with_retries_while, BreakerConfig, EndpointSettings, LimitsConfig, Outbound, RetrySchedule,
};
use sluice_stream::HandlerError;
use sluice_topology::model::UpstreamSpec;
use sluice_topology::Topology;

use super::call::HttpCall;
use super::uncertain::{unanswered_action, with_result, Recovery};
use super::values::Values;
use crate::instance::Kind;
use crate::messages::Command;
use crate::participant::{Outcome, Participant};
use crate::SagaError;

/// Waits between attempts of one call: doubling from 100 ms, jittered ±20%.
pub const CALL_SCHEDULE: &str = "0s, 100ms, 200ms, 400ms, 800ms, 1600ms, 3200ms, 6400ms";

/// How long a call may hold its batch before it is detached: not at all. Even a fast
/// upstream's round trip, taken one command after another, made a partition's calls the
/// saga's bottleneck (`sluice bench saga-http`: 0.54 of the Kafka participant's rate).
pub const PATIENCE: Duration = Duration::ZERO;

/// Executes one role's HTTP steps.
#[derive(Debug, Clone)]
pub struct HttpParticipant {
    /// By (saga, step, kind).
    calls: Arc<HashMap<(String, String, Kind), HttpCall>>,
    outbound: Outbound,
    schedule: RetrySchedule,
}

impl HttpParticipant {
    /// The calls of every `http:` step whose participant is `role`.
    pub fn from_topology(
        topology: &Topology,
        role: &str,
        outbound: Outbound,
    ) -> Result<Self, SagaError> {
        let mut calls = HashMap::new();
        for saga in &topology.sagas {
            for step in saga.steps.iter().filter(|s| s.participant == role) {
                let both = std::iter::once((Kind::Action, step.action()))
                    .chain(step.compensation.clone().map(|c| (Kind::Compensation, c)));
                for (kind, c) in both {
                    let Some(spec) = &c.http else { continue };
                    let call = HttpCall::new(spec, c.timeout.0).map_err(|e| {
                        SagaError::Definition(format!(
                            "saga `{}`, step `{}`: {e}",
                            saga.name, step.name
                        ))
                    })?;
                    calls.insert((saga.name.clone(), step.name.clone(), kind), call);
                }
            }
        }
        if calls.is_empty() {
            return Err(SagaError::UnknownRole(role.to_string()));
        }
        Ok(Self::from_calls(calls, outbound))
    }

    /// A participant for `calls`, by (saga, step, kind).
    pub fn from_calls(
        calls: HashMap<(String, String, Kind), HttpCall>,
        outbound: Outbound,
    ) -> Self {
        Self {
            calls: Arc::new(calls),
            outbound,
            schedule: RetrySchedule::parse(CALL_SCHEDULE).expect("the call schedule parses"),
        }
    }

    /// Gives every upstream the topology declares its own rate limit and breaker in
    /// `outbound` (the others get the client's defaults). Once per process, before calls.
    pub fn configure_upstreams(topology: &Topology, outbound: &Outbound) {
        for u in &topology.upstreams {
            outbound
                .endpoints()
                .configure(&u.name, &upstream_settings(u));
        }
    }

    /// Whether `role` runs `http:` steps (and so is this participant's, not a written one).
    pub fn is_http_role(topology: &Topology, role: &str) -> bool {
        topology
            .sagas
            .iter()
            .flat_map(|s| &s.steps)
            .any(|s| s.participant == role && s.is_http())
    }

    /// Replaces the retry schedule (tests use short ones).
    pub fn with_schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Makes `command`'s call, retrying transient failures within its budget. The
    /// compensation of an action that never answered first asks the action again
    /// ([`super::uncertain`]), within half the budget.
    pub async fn call(&self, command: &Command) -> Outcome {
        let Some(call) = self.call_of(command) else {
            return Outcome::Failed {
                reason: format!(
                    "no HTTP call is declared for the {} of step `{}`",
                    command.kind.as_str(),
                    command.step
                ),
                retryable: false,
            };
        };
        let started = std::time::Instant::now();
        let recovered = match self.ask_unanswered_action(command, call.budget / 2).await {
            None => None,
            Some(Recovery::Performed(result)) => Some(with_result(command, result)),
            Some(Recovery::Settled(outcome)) => return outcome,
        };
        let command = recovered.as_ref().unwrap_or(command);
        self.execute(call, command, call.budget.saturating_sub(started.elapsed()))
            .await
    }

    fn call_of(&self, command: &Command) -> Option<&HttpCall> {
        let key = (
            command.saga_name.clone(),
            command.step.clone(),
            command.kind,
        );
        self.calls.get(&key)
    }

    /// For the compensation of an action that left no result: the action asked again with
    /// its own `Idempotency-Key`, and what its answer means.
    async fn ask_unanswered_action(&self, command: &Command, budget: Duration) -> Option<Recovery> {
        let action = unanswered_action(command)?;
        let call = self.call_of(&action)?;
        tracing::info!(
            saga = command.saga_name,
            step = command.step,
            command_id = action.command_id,
            "compensating an action that never answered: asking it again with its own Idempotency-Key"
        );
        Some(Recovery::from_replay(
            self.execute(call, &action, budget).await,
        ))
    }

    /// Renders and sends `command`'s call, retrying transient failures within `budget`.
    async fn execute(&self, call: &HttpCall, command: &Command, budget: Duration) -> Outcome {
        let rendered = Values::of(command).and_then(|values| call.request(&values));
        let (request, shown) = match rendered {
            Ok(r) => r,
            Err(e) => {
                // Nothing was sent: the data lacks what the call needs, or a secret is
                // unreadable. An operator fixes it and retries the saga.
                return Outcome::Failed {
                    reason: format!("cannot build the HTTP call: {e}"),
                    retryable: false,
                };
            }
        };
        let run = send_with_retries_while(
            &self.outbound,
            &shown.upstream,
            &request,
            &self.schedule,
            budget,
            seed(&command.command_id),
            |attempt| call.policy().retries(attempt),
        )
        .await;
        let outcome = call.outcome(&shown, &run);
        if let Outcome::NoReply { why } = &outcome {
            tracing::warn!(
                saga = command.saga_name,
                step = command.step,
                command_id = command.command_id,
                upstream = shown.upstream,
                why,
                "HTTP step left without a reply; the step's timeout decides"
            );
        }
        outcome
    }
}

impl Participant for HttpParticipant {
    async fn handle(&self, command: &Command) -> Result<Outcome, HandlerError> {
        Ok(self.call(command).await)
    }

    fn patience(&self) -> Option<Duration> {
        Some(PATIENCE)
    }

    /// A call whose answer was lost may have charged.
    fn unanswered_may_have_run(&self) -> bool {
        true
    }
}

/// An upstream's declared limits and breaker, over the outbound defaults.
pub fn upstream_settings(u: &UpstreamSpec) -> EndpointSettings {
    let defaults = EndpointSettings::default();
    EndpointSettings {
        limits: LimitsConfig {
            max_in_flight: u.max_in_flight,
            rate_per_sec: u.rate_per_sec,
            burst: u.burst,
            ..defaults.limits
        },
        breaker: BreakerConfig {
            consecutive_failures: u.breaker.consecutive_failures,
            cool_down: u.breaker.cool_down.0,
            close_after: u.breaker.close_after,
            ..defaults.breaker
        },
    }
}

/// A stable jitter seed per command, so a resend waits like the first run did.
fn seed(command_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    command_id.hash(&mut h);
    h.finish()
}
