//! Saga metrics, all prefixed `sluice_saga_`. Labels are bounded: saga, step, role and
//! command names come from the topology; events, reasons and outcomes from fixed sets.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct SagaMetrics {
    /// Timeline events applied, by saga and event (see `instance::TimelineEvent`).
    pub transitions: IntCounterVec,
    /// Inputs that changed nothing: duplicate or late replies, stale deadlines, …
    pub ignored: IntCounterVec,
    /// Instances that reached a terminal state, by state.
    pub terminal: IntCounterVec,
    /// Instances parked until an operator retries them; alert on > 0.
    pub parked: IntGaugeVec,
    /// Instances running, compensating or parked.
    pub in_flight: IntGaugeVec,
    /// Age of the oldest in-flight instance, by the step it is on.
    pub oldest_in_flight: GaugeVec,
    /// Start to terminal state.
    pub duration: HistogramVec,
    /// Inputs that arrived on another partition than their instance's and were moved.
    pub forwarded: IntCounterVec,
    pub expired: IntCounterVec,
    /// Deadline control messages the timer wrote.
    pub deadlines: IntCounterVec,
    /// Records on a trigger topic that are not a trigger (other event types).
    pub skipped: IntCounterVec,
}

impl SagaMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["saga"]);
        let m = Self {
            transitions: counter(
                "sluice_saga_transitions_total",
                "Saga timeline events applied (started, command, reply, timeout, compensating, …).",
                &["saga", "event"],
            )?,
            ignored: counter(
                "sluice_saga_ignored_total",
                "Saga inputs recognised and ignored, by reason (duplicate_reply, late_reply, duplicate_trigger, stale_deadline, …).",
                &["saga", "reason"],
            )?,
            terminal: counter(
                "sluice_saga_terminal_total",
                "Saga instances that reached a terminal state (completed, compensated).",
                &["saga", "state"],
            )?,
            parked: gauge(
                "sluice_saga_parked",
                "Saga instances parked after a compensation ran out of retries; they wait for `sluice saga retry`.",
            )?,
            in_flight: gauge(
                "sluice_saga_in_flight",
                "Saga instances running, compensating or parked.",
            )?,
            oldest_in_flight: GaugeVec::new(
                Opts::new(
                    "sluice_saga_oldest_in_flight_seconds",
                    "Age of the oldest in-flight saga instance, by the step it waits on.",
                ),
                &["saga", "step"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_saga_duration_seconds",
                    "Saga instance duration from start to its terminal state.",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]),
                &["saga", "state"],
            )?,
            forwarded: counter(
                "sluice_saga_forwarded_total",
                "Saga inputs moved to their instance's partition of the replies topic.",
                &["saga"],
            )?,
            expired: counter(
                "sluice_saga_expired_total",
                "Finished saga instances whose state record was deleted after the keep period.",
                &["saga"],
            )?,
            deadlines: counter(
                "sluice_saga_deadlines_total",
                "Deadline control messages written by the saga timer.",
                &["saga"],
            )?,
            skipped: counter(
                "sluice_saga_skipped_records_total",
                "Records on a trigger topic that are not a saga trigger.",
                &["topic"],
            )?,
        };
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.ignored.clone()))?;
        registry.register(Box::new(m.terminal.clone()))?;
        registry.register(Box::new(m.parked.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.oldest_in_flight.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.expired.clone()))?;
        registry.register(Box::new(m.deadlines.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        Ok(m)
    }
}

#[derive(Debug, Clone)]
pub struct ParticipantMetrics {
    /// Commands handled, by outcome: succeeded, failed, duplicate, nothing_to_undo,
    /// fenced, no_reply.
    pub commands: IntCounterVec,
    /// Handled commands forgotten because their saga's state was deleted.
    pub forgotten: IntCounterVec,
}

impl ParticipantMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            commands: IntCounterVec::new(
                Opts::new(
                    "sluice_saga_participant_commands_total",
                    "Saga commands handled by a participant, by outcome (succeeded, failed, duplicate, nothing_to_undo, fenced, no_reply).",
                ),
                &["role", "command", "outcome"],
            )?,
            forgotten: IntCounterVec::new(
                Opts::new(
                    "sluice_saga_participant_forgotten_total",
                    "Handled commands a participant forgot (dedup entries deleted) because the orchestrator deleted their saga's state after its keep period.",
                ),
                &["role"],
            )?,
        };
        registry.register(Box::new(m.commands.clone()))?;
        registry.register(Box::new(m.forgotten.clone()))?;
        Ok(m)
    }
}
