//! The demo participants of the order-fulfillment saga — inventory, payments and shipping —
//! written with the [participant API](super::participant). They pretend: each "side effect"
//! is a log line (and, with an effects log, a line in a file tests read to count executions).
//!
//! Faults, to exercise compensation in the demo and in tests:
//! - by probability: `fail_rate` (an action fails), `timeout_rate` (an action gets no reply),
//!   `compensation_fail_rate` (a compensation fails, retryably);
//! - by rule: `fail_when` / `timeout_when` entries `CommandName=SUFFIX` hit the commands of
//!   that name (`ChargePayment`, `RefundPayment`, or `*`) whose correlation id ends in SUFFIX;
//! - by data: an order line with SKU `FAIL-<ROLE>` fails that role's action,
//!   `FAIL-<ROLE>-UNDO` its compensation, `TIMEOUT-<ROLE>` leaves its action without reply.
//!
//! The dice are a hash of the seed and the command id, so a run is reproducible and a
//! redelivered command meets the same fate (timeouts also hash the attempt: a lost message is
//! a per-delivery accident).

use crate::instance::Kind;
use sluice_stream::ErrorClass;
use std::io::Write;
use std::sync::Mutex;

use serde_json::{json, Value as Json};

use super::messages::Command;
use super::participant::{Outcome, Participant};
use sluice_stream::HandlerError;

/// A fault rule: commands named `command` (or `*`) whose correlation id ends in `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub command: String,
    pub suffix: String,
}

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (command, suffix) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected CommandName=SUFFIX, e.g. ChargePayment=-7"))?;
        if command.is_empty() || suffix.is_empty() {
            return Err(format!(
                "`{s}`: both the command name and the suffix are needed"
            ));
        }
        Ok(Rule {
            command: command.to_string(),
            suffix: suffix.to_string(),
        })
    }
}

impl Rule {
    fn hits(&self, command: &Command) -> bool {
        let name = super::machine::short_name(&command.event_type);
        (self.command == "*" || self.command == name)
            && command.correlation_id.ends_with(&self.suffix)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub fail_rate: f64,
    pub timeout_rate: f64,
    pub compensation_fail_rate: f64,
    pub fail_when: Vec<Rule>,
    pub timeout_when: Vec<Rule>,
    pub seed: u64,
}

impl Faults {
    /// A number in [0, 1) fixed by the seed and `what`.
    fn dice(&self, what: &str) -> f64 {
        let h = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}/{what}", self.seed).as_bytes(),
        );
        let n = u64::from_be_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
        (n >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One demo participant role.
pub struct DemoParticipant {
    role: String,
    faults: Faults,
    effects: Option<Mutex<std::fs::File>>,
}

impl std::fmt::Debug for DemoParticipant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoParticipant")
            .field("role", &self.role)
            .finish()
    }
}

impl DemoParticipant {
    /// `effects_log`: a file to append one line per executed command to.
    pub fn new(
        role: &str,
        faults: Faults,
        effects_log: Option<&std::path::Path>,
    ) -> std::io::Result<Self> {
        let effects = match effects_log {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
            None => None,
        };
        Ok(Self {
            role: role.to_string(),
            faults,
            effects,
        })
    }

    fn skus(command: &Command) -> Vec<String> {
        serde_json::from_str::<Json>(&command.data)
            .ok()
            .and_then(|d| d.get("line_items").and_then(Json::as_array).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l.get("sku").and_then(Json::as_str).map(str::to_uppercase))
            .collect()
    }

    fn decide(&self, command: &Command) -> Outcome {
        let role = self.role.to_uppercase();
        let skus = Self::skus(command);
        let sku = |s: String| skus.contains(&s);
        let f = &self.faults;
        let compensation = command.kind == Kind::Compensation;
        let id = &command.command_id;
        let timeout = !compensation
            && (f.timeout_when.iter().any(|r| r.hits(command))
                || sku(format!("TIMEOUT-{role}"))
                || f.dice(&format!("timeout/{id}/{}", command.attempt)) < f.timeout_rate);
        if timeout {
            return Outcome::NoReply {
                why: "simulated timeout".into(),
            };
        }
        let fail = f.fail_when.iter().any(|r| r.hits(command))
            || if compensation {
                sku(format!("FAIL-{role}-UNDO"))
                    || f.dice(&format!("fail/{id}/{}", command.attempt)) < f.compensation_fail_rate
            } else {
                sku(format!("FAIL-{role}")) || f.dice(&format!("fail/{id}")) < f.fail_rate
            };
        if fail {
            return Outcome::Failed {
                reason: format!("simulated {} failure", self.role),
                retryable: compensation,
            };
        }
        let token = &uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes())
            .simple()
            .to_string()[..12];
        let result = match (self.role.as_str(), compensation) {
            ("inventory", false) => json!({"reservation_id": format!("res_{token}")}),
            ("payments", false) => {
                let total = serde_json::from_str::<Json>(&command.data)
                    .ok()
                    .and_then(|d| d.get("total").cloned())
                    .unwrap_or(Json::Null);
                json!({"charge_id": format!("ch_{token}"), "amount": total})
            }
            ("shipping", false) => json!({"shipment_id": format!("shp_{token}")}),
            (_, true) => json!({"undone": command.compensates}),
            (_, false) => json!({"done": token}),
        };
        Outcome::Succeeded {
            result: Some(result),
        }
    }
}

impl Participant for DemoParticipant {
    async fn handle(&self, command: &Command) -> Result<Outcome, HandlerError> {
        let outcome = self.decide(command);
        let label = match &outcome {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::NoReply { .. } => "no_reply",
        };
        tracing::info!(
            role = self.role,
            command = command.event_type,
            command_id = command.command_id,
            saga_id = command.saga_id,
            outcome = label,
            "demo participant"
        );
        if let Some(file) = &self.effects {
            let line = format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                self.role,
                command.kind.as_str(),
                super::machine::short_name(&command.event_type),
                command.command_id,
                command.saga_id,
                command.attempt,
                label
            );
            file.lock()
                .expect("effects log")
                .write_all(line.as_bytes())
                .map_err(|e| HandlerError::transient(ErrorClass::EffectsLog, e.to_string()))?;
        }
        Ok(outcome)
    }
}

/// Settings of a [`scratch_topology`].
#[derive(Debug, Clone)]
pub struct Scratch<'a> {
    pub prefix: &'a str,
    pub partitions: i32,
    /// Reply timeout of every command, unless `timeouts` names the step.
    pub timeout: &'a str,
    pub timeouts: &'a [(&'a str, &'a str)],
    /// Retry policy of every step (inline YAML), or none.
    pub retry: Option<&'a str>,
    /// The saga's compensation retry policy (inline YAML).
    pub compensation_retry: &'a str,
}

/// A self-contained topology running saga `saga` of `reference` under another prefix, with
/// every topic it needs: for tests and benchmarks that must not share state with anything.
pub fn scratch_topology(
    reference: &sluice_topology::Topology,
    saga: &str,
    s: &Scratch<'_>,
) -> Result<String, super::SagaError> {
    use sluice_topology::model::{CommandSpec, SAGA_LIFECYCLE_TYPES};
    use std::fmt::Write;
    let spec = reference
        .sagas
        .iter()
        .find(|x| x.name == saga)
        .ok_or_else(|| super::SagaError::UnknownSaga(saga.to_string()))?;
    let (p, n) = (s.prefix, s.partitions);
    let from = format!("{}.", reference.prefix);
    let topic = |t: &str| match t.strip_prefix(&from) {
        Some(rest) => format!("{p}.{rest}"),
        None => t.to_string(),
    };
    let mut routes: Vec<(String, String)> =
        vec![(spec.trigger.event_type.clone(), topic(&spec.trigger.topic))];
    let events = format!("{p}.events.sagas");
    routes.extend(
        SAGA_LIFECYCLE_TYPES
            .iter()
            .map(|t| (t.to_string(), events.clone())),
    );
    if let Some(o) = &spec.outcome {
        for t in [&o.completed, &o.compensated] {
            let routed = reference
                .route_of(t)
                .map(topic)
                .unwrap_or_else(|| events.clone());
            routes.push((t.clone(), routed));
        }
    }
    let mut topics: Vec<String> = routes.iter().map(|(_, t)| t.clone()).collect();
    let name = &spec.name;
    for t in ["commands", "replies"] {
        topics.push(format!("{p}.saga.{name}.{t}"));
    }
    topics.sort();
    topics.dedup();
    let mut y = format!("prefix: {p}\ntopics:\n");
    for t in &topics {
        let _ = writeln!(y, "  - {{name: {t}, partitions: {n}}}");
    }
    let compacted = std::iter::once(format!("saga-{name}")).chain(
        spec.steps
            .iter()
            .map(|st| format!("saga-participant-{}", st.participant)),
    );
    let mut seen = std::collections::BTreeSet::new();
    for c in compacted.filter(|c| seen.insert(c.clone())) {
        let _ = writeln!(
            y,
            "  - {{name: {p}.state.{c}, partitions: {n}, config: {{cleanup.policy: compact}}}}"
        );
    }
    for d in ["sagas", "saga-participants"] {
        let _ = writeln!(y, "  - {{name: {p}.dlq.{d}, partitions: 1}}");
    }
    y.push_str("routes:\n");
    for (t, to) in &routes {
        let _ = writeln!(y, "  - {{event_type: {t}, topic: {to}}}");
    }
    let _ = write!(
        y,
        "sagas:\n  - name: {name}\n    trigger: {{event_type: {}, topic: {}}}\n    correlation_key: {}\n    compensation_retry: {}\n",
        spec.trigger.event_type,
        topic(&spec.trigger.topic),
        spec.correlation_key,
        s.compensation_retry
    );
    if let Some(o) = &spec.outcome {
        let _ = writeln!(
            y,
            "    outcome: {{completed: {}, compensated: {}}}",
            o.completed, o.compensated
        );
    }
    y.push_str("    steps:\n");
    let command = |y: &mut String, indent: &str, c: &CommandSpec, timeout: &str| {
        let _ = write!(
            y,
            "{indent}command: {{event_type: {}, topic: {}}}\n{indent}success: {}\n{indent}failure: {}\n{indent}timeout: {timeout}\n",
            c.command.event_type,
            topic(&c.command.topic),
            c.success,
            c.failure
        );
    };
    for st in &spec.steps {
        let timeout = s
            .timeouts
            .iter()
            .find(|(step, _)| *step == st.name)
            .map_or(s.timeout, |(_, t)| *t);
        let _ = write!(
            y,
            "      - name: {}\n        participant: {}\n        side_effects: {}\n",
            st.name, st.participant, st.side_effects
        );
        command(&mut y, "        ", &st.action(), timeout);
        if let Some(r) = s.retry {
            let _ = writeln!(y, "        retry: {r}");
        }
        if let Some(c) = &st.compensation {
            y.push_str("        compensation:\n");
            command(&mut y, "          ", c, s.timeout);
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(event_type: &str, kind: Kind, id: &str, data: Json) -> Command {
        Command {
            event_type: format!("dev.sluice.events.sagas.{event_type}"),
            saga_id: id.into(),
            saga_name: "order-fulfillment".into(),
            step: "charge-payment".into(),
            kind,
            compensates: None,
            attempt: 1,
            command_id: format!("{id}:charge-payment:do:1"),
            correlation_id: id.into(),
            reply_topic: "r".into(),
            data: data.to_string(),
            results: "{}".into(),
        }
    }

    #[test]
    fn a_scratch_topology_of_the_reference_saga_is_valid() {
        let catalog = sluice_schemas::Catalog::embedded().unwrap();
        let types = catalog.event_types().map(str::to_string).collect();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../topology/topology.yaml");
        let reference = sluice_topology::Topology::load(path.as_ref(), &types).unwrap();
        let yaml = scratch_topology(
            &reference,
            "order-fulfillment",
            &Scratch {
                prefix: "t1",
                partitions: 3,
                timeout: "3s",
                timeouts: &[("create-shipment", "4s")],
                retry: Some("{max_attempts: 2, backoff: 500ms}"),
                compensation_retry: "{max_attempts: 2, backoff: 300ms}",
            },
        )
        .unwrap();
        let t = sluice_topology::Topology::parse("scratch.yaml", &yaml, &types)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let saga = &t.sagas[0];
        assert_eq!(saga.steps.len(), 3);
        assert_eq!(saga.trigger.topic, "t1.events.commerce");
        assert_eq!(saga.steps[2].timeout.0, std::time::Duration::from_secs(4));
        assert_eq!(saga.steps[0].retry.as_ref().unwrap().max_attempts, 2);
        assert_eq!(
            t.route_of("dev.sluice.events.sagas.OrderConfirmed"),
            Some("t1.events.commerce")
        );
    }

    #[test]
    fn rules_skus_and_dice_decide_outcomes() {
        let p = DemoParticipant::new(
            "payments",
            Faults {
                fail_when: vec!["ChargePayment=-x".parse().unwrap()],
                ..Faults::default()
            },
            None,
        )
        .unwrap();
        let ok = command(
            "ChargePayment",
            Kind::Action,
            "o-1",
            json!({"total": {"amount": "1.0000", "currency": "EUR"}}),
        );
        assert!(matches!(p.decide(&ok), Outcome::Succeeded { .. }));
        let hit = command("ChargePayment", Kind::Action, "o-x", json!({}));
        assert!(matches!(
            p.decide(&hit),
            Outcome::Failed {
                retryable: false,
                ..
            }
        ));
        let sku = command(
            "ChargePayment",
            Kind::Action,
            "o-2",
            json!({"line_items": [{"sku": "fail-payments"}]}),
        );
        assert!(matches!(p.decide(&sku), Outcome::Failed { .. }));
        let undo = command(
            "RefundPayment",
            Kind::Compensation,
            "o-3",
            json!({"line_items": [{"sku": "FAIL-PAYMENTS-UNDO"}]}),
        );
        assert!(matches!(
            p.decide(&undo),
            Outcome::Failed {
                retryable: true,
                ..
            }
        ));
        assert!("nonsense".parse::<Rule>().is_err());

        let always = Faults {
            timeout_rate: 1.0,
            ..Faults::default()
        };
        let p = DemoParticipant::new("payments", always, None).unwrap();
        assert!(matches!(p.decide(&ok), Outcome::NoReply { .. }));
        let half = Faults {
            fail_rate: 0.5,
            seed: 7,
            ..Faults::default()
        };
        let failed = (0..1000)
            .filter(|i| half.dice(&format!("fail/{i}")) < 0.5)
            .count();
        assert!((400..600).contains(&failed), "{failed}");
    }
}
