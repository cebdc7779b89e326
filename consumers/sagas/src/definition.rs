//! A saga definition from `topology.yaml`, in the shape the state machine works with:
//! step positions, timeouts and backoffs in milliseconds, defaults filled in.

use sluice_topology::model::{CommandSpec, RetrySpec, SagaSpec};

/// One command and the replies that settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandDef {
    pub event_type: String,
    pub topic: String,
    pub success: String,
    pub failure: String,
    pub timeout_ms: i64,
}

impl From<&CommandSpec> for CommandDef {
    fn from(c: &CommandSpec) -> Self {
        Self {
            event_type: c.command.event_type.clone(),
            topic: c.command.topic.clone(),
            success: c.success.clone(),
            failure: c.failure.clone(),
            timeout_ms: c.timeout.0.as_millis() as i64,
        }
    }
}

/// Attempts in all (the first included) and the doubling delay between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub max_attempts: u32,
    pub backoff_ms: i64,
    pub max_backoff_ms: Option<i64>,
}

impl Retry {
    /// No retry: one attempt.
    pub const ONCE: Retry = Retry {
        max_attempts: 1,
        backoff_ms: 0,
        max_backoff_ms: None,
    };

    /// The wait after failed attempt `attempt` (1-based): backoff, 2×, 4×, … up to the cap.
    pub fn delay_ms(&self, attempt: u32) -> i64 {
        let doubled = self
            .backoff_ms
            .saturating_mul(1i64 << attempt.saturating_sub(1).min(30));
        self.max_backoff_ms.map_or(doubled, |cap| doubled.min(cap))
    }
}

impl From<&RetrySpec> for Retry {
    fn from(r: &RetrySpec) -> Self {
        Self {
            max_attempts: r.max_attempts,
            backoff_ms: r.backoff.0.as_millis() as i64,
            max_backoff_ms: r.max_backoff.map(|m| m.0.as_millis() as i64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDef {
    pub name: String,
    pub participant: String,
    pub action: CommandDef,
    pub retry: Retry,
    pub compensation: Option<CommandDef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaDef {
    pub name: String,
    pub trigger_type: String,
    pub trigger_topic: String,
    /// The correlation key's field path, split at `.`.
    pub correlation_key: Vec<String>,
    pub steps: Vec<StepDef>,
    pub compensation_retry: Retry,
    /// (completed, compensated) outcome event types.
    pub outcome: Option<(String, String)>,
}

impl From<&SagaSpec> for SagaDef {
    fn from(s: &SagaSpec) -> Self {
        Self {
            name: s.name.clone(),
            trigger_type: s.trigger.event_type.clone(),
            trigger_topic: s.trigger.topic.clone(),
            correlation_key: s.correlation_key.split('.').map(str::to_string).collect(),
            steps: s
                .steps
                .iter()
                .map(|st| StepDef {
                    name: st.name.clone(),
                    participant: st.participant.clone(),
                    action: CommandDef::from(&st.action()),
                    retry: st.retry.as_ref().map_or(Retry::ONCE, Retry::from),
                    compensation: st.compensation.as_ref().map(CommandDef::from),
                })
                .collect(),
            compensation_retry: Retry::from(&s.compensation_retry),
            outcome: s
                .outcome
                .as_ref()
                .map(|o| (o.completed.clone(), o.compensated.clone())),
        }
    }
}

impl SagaDef {
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The saga id in a trigger event: the correlation key's value, as text.
    pub fn correlation_value(&self, event: &serde_json::Value) -> Option<String> {
        let mut v = event;
        for segment in &self.correlation_key {
            v = v.get(segment)?;
        }
        match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let r = Retry {
            max_attempts: 6,
            backoff_ms: 100,
            max_backoff_ms: Some(350),
        };
        let delays: Vec<i64> = (1..=4).map(|a| r.delay_ms(a)).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
    }

    #[test]
    fn correlation_values_are_read_from_nested_paths() {
        let def = SagaDef {
            name: "s".into(),
            trigger_type: "t".into(),
            trigger_topic: "t".into(),
            correlation_key: vec!["customer".into(), "id".into()],
            steps: vec![],
            compensation_retry: Retry::ONCE,
            outcome: None,
        };
        let event = serde_json::json!({"customer": {"id": 42}});
        assert_eq!(def.correlation_value(&event).as_deref(), Some("42"));
        assert_eq!(
            def.correlation_value(&serde_json::json!({"customer": {}})),
            None
        );
    }
}
