//! Loading and cross-checking `topology.yaml`. Every error names the file and the path inside
//! it, and all problems are reported at once rather than one per run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::model::{TopicSpec, Topology};
use crate::naming;

/// Provider types the gateway knows; their options are checked by the gateway itself.
pub const PROVIDER_TYPES: &[&str] = &[
    "stripe",
    "github",
    "shopify",
    "sendgrid",
    "slack",
    "standard_webhooks",
    "generic_hmac",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path inside the file, e.g. `topics[3].partitions`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file} is invalid:\n{}", list(.errors))]
    Invalid {
        file: String,
        errors: Vec<ValidationError>,
    },
}

fn list(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Topology {
    /// Reads and validates `path`; `event_types` are the catalog's full record names.
    pub fn load(path: &Path, event_types: &BTreeSet<String>) -> Result<Self, TopologyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text, event_types)
    }

    pub fn parse(
        file: &str,
        text: &str,
        event_types: &BTreeSet<String>,
    ) -> Result<Self, TopologyError> {
        let topology: Topology =
            serde_yaml_ng::from_str(text).map_err(|e| TopologyError::Parse {
                file: file.to_string(),
                message: e.to_string(),
            })?;
        let errors = topology.validate(event_types);
        if errors.is_empty() {
            Ok(topology)
        } else {
            Err(TopologyError::Invalid {
                file: file.to_string(),
                errors,
            })
        }
    }

    /// Every problem in the topology, empty when it is valid.
    pub fn validate(&self, event_types: &BTreeSet<String>) -> Vec<ValidationError> {
        let mut errors = Vec::new();
        let mut err =
            |path: String, message: String| errors.push(ValidationError { path, message });

        let mut topics: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, t) in self.topics.iter().enumerate() {
            let path = format!("topics[{i}]");
            if let Some(problem) = topic_name_problem(&t.name) {
                err(format!("{path}.name"), problem);
            } else if !t.name.starts_with(&format!("{}.", self.prefix)) {
                err(
                    format!("{path}.name"),
                    format!("`{}` must start with the prefix `{}.`", t.name, self.prefix),
                );
            }
            if let Some(first) = topics.insert(&t.name, i) {
                err(
                    format!("{path}.name"),
                    format!("`{}` is already declared at topics[{first}]", t.name),
                );
            }
            if t.partitions < 1 {
                err(
                    format!("{path}.partitions"),
                    format!("must be at least 1, got {}", t.partitions),
                );
            }
            if t.replication_factor < 1 {
                err(
                    format!("{path}.replication_factor"),
                    format!("must be at least 1, got {}", t.replication_factor),
                );
            }
            if let Some(policy) = t.config.get("cleanup.policy") {
                if !policy
                    .split(',')
                    .all(|p| matches!(p.trim(), "delete" | "compact"))
                {
                    err(
                        format!("{path}.config.cleanup.policy"),
                        format!("`{policy}` is not delete, compact or compact,delete"),
                    );
                }
            }
        }
        let declared = |name: &str| topics.contains_key(name);

        let mut sources = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let path = format!("sources[{i}]");
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                err(
                    format!("{path}.name"),
                    format!(
                        "`{}` must be non-empty letters, digits, `-` or `_` (it is a URL segment)",
                        s.name
                    ),
                );
            }
            if !sources.insert(&s.name) {
                err(
                    format!("{path}.name"),
                    format!("source `{}` is declared twice", s.name),
                );
            }
            match s.provider_type() {
                Some(t) if PROVIDER_TYPES.contains(&t) => {}
                Some(t) => err(
                    format!("{path}.provider.type"),
                    format!(
                        "unknown provider `{t}`; known: {}",
                        PROVIDER_TYPES.join(", ")
                    ),
                ),
                None => err(format!("{path}.provider.type"), "missing".into()),
            }
            if s.secrets.is_empty() {
                err(
                    format!("{path}.secrets"),
                    "at least one secret is required".into(),
                );
            }
            if !declared(&s.raw_topic) {
                err(
                    format!("{path}.raw_topic"),
                    format!("topic `{}` is not declared in topics", s.raw_topic),
                );
            }
            if s.limits.max_body_bytes == 0 {
                err(
                    format!("{path}.limits.max_body_bytes"),
                    "must be more than 0".into(),
                );
            }
            if s.limits.rate_per_sec == Some(0) {
                err(
                    format!("{path}.limits.rate_per_sec"),
                    "must be more than 0".into(),
                );
            }
        }

        let mut routed = BTreeMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if !event_types.contains(&r.event_type) {
                err(
                    format!("{path}.event_type"),
                    format!("`{}` is not an event type in the catalog", r.event_type),
                );
            }
            if !declared(&r.topic) {
                err(
                    format!("{path}.topic"),
                    format!("topic `{}` is not declared in topics", r.topic),
                );
            }
            if let Some(first) = routed.insert(&r.event_type, i) {
                err(
                    format!("{path}.event_type"),
                    format!("`{}` is already routed at routes[{first}]", r.event_type),
                );
            }
        }

        if self.subjects.naming == crate::model::SubjectNaming::TopicName {
            let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, r) in self.routes.iter().enumerate() {
                if let Some(first) = per_topic.insert(&r.topic, i) {
                    err(
                        format!("routes[{i}].topic"),
                        format!(
                            "subjects.naming is topic_name, which allows one event type per topic, but `{}` already carries routes[{first}]",
                            r.topic
                        ),
                    );
                }
            }
        }

        for name in self.subjects.compatibility.keys() {
            if !event_types.contains(name) {
                err(
                    format!("subjects.compatibility.{name}"),
                    "not an event type in the catalog".into(),
                );
            }
        }

        let mut policies = BTreeSet::new();
        for (i, p) in self.retry_policies.iter().enumerate() {
            let path = format!("retry_policies[{i}]");
            if !policies.insert(&p.name) {
                err(
                    format!("{path}.name"),
                    format!("policy `{}` is declared twice", p.name),
                );
            }
            if p.tiers.is_empty() {
                err(
                    format!("{path}.tiers"),
                    "at least one tier is required".into(),
                );
            }
            for (j, tier) in p.tiers.iter().enumerate() {
                if tier.0.is_zero() {
                    err(
                        format!("{path}.tiers[{j}]"),
                        "a tier delay must be more than 0".into(),
                    );
                }
            }
            if p.max_attempts < 1 {
                err(format!("{path}.max_attempts"), "must be at least 1".into());
            }
            if !declared(&p.dlq_topic) {
                err(
                    format!("{path}.dlq_topic"),
                    format!("topic `{}` is not declared in topics", p.dlq_topic),
                );
            }
        }
        errors
    }

    /// Declared topics plus the retry tier topics derived from each retry policy (sized like
    /// the policy's DLQ topic).
    pub fn all_topics(&self) -> Vec<TopicSpec> {
        let mut out = self.topics.clone();
        for p in &self.retry_policies {
            let dlq = self.topics.iter().find(|t| t.name == p.dlq_topic);
            for tier in &p.tiers {
                let name = naming::retry_topic(&self.prefix, &p.name, tier.0);
                if out.iter().any(|t| t.name == name) {
                    continue; // declared explicitly, with its own settings
                }
                out.push(TopicSpec {
                    name,
                    partitions: dlq.map_or(1, |d| d.partitions),
                    replication_factor: dlq.map_or(1, |d| d.replication_factor),
                    config: BTreeMap::new(),
                });
            }
        }
        out
    }

    pub fn route_of(&self, event_type: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.event_type == event_type)
            .map(|r| r.topic.as_str())
    }
}

/// Kafka's rules for topic names.
fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 249 {
        return Some(format!("`{name}` is longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Some(format!("`{name}` is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "`{name}` contains `{c}`; use letters, digits, `.`, `_` or `-`"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> BTreeSet<String> {
        ["dev.sluice.events.payments.PaymentSucceeded".to_string()].into()
    }

    const GOOD: &str = r#"
topics:
  - {name: sluice.raw.stripe, partitions: 3, config: {retention.ms: 604800000}}
  - {name: sluice.events.payments, partitions: 3}
  - {name: sluice.dlq.normalizer, partitions: 3}
sources:
  - name: stripe
    provider: {type: stripe}
    secrets: [{env: STRIPE_SECRET}]
    raw_topic: sluice.raw.stripe
routes:
  - {event_type: dev.sluice.events.payments.PaymentSucceeded, topic: sluice.events.payments}
retry_policies:
  - {name: normalizer, tiers: [5s, 1m], max_attempts: 3, dlq_topic: sluice.dlq.normalizer}
"#;

    #[test]
    fn a_good_topology_loads_and_derives_retry_topics() {
        let t = Topology::parse("t.yaml", GOOD, &types()).unwrap();
        let names: Vec<String> = t.all_topics().into_iter().map(|t| t.name).collect();
        assert!(names.contains(&"sluice.retry.normalizer.5s".to_string()));
        assert!(names.contains(&"sluice.retry.normalizer.1m".to_string()));
        assert_eq!(t.topics[0].config["retention.ms"], "604800000");
        assert_eq!(
            t.route_of("dev.sluice.events.payments.PaymentSucceeded"),
            Some("sluice.events.payments")
        );
    }

    #[test]
    fn unknown_key_names_file_and_path() {
        let bad = GOOD.replace(
            "partitions: 3}\n  - {name: sluice.dlq",
            "partitons: 3}\n  - {name: sluice.dlq",
        );
        let err = Topology::parse("t.yaml", &bad, &types())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.yaml: topics[1]: unknown field `partitons`"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_paths() {
        let bad = GOOD
            .replace(
                "{name: sluice.events.payments, partitions: 3}",
                "{name: sluice.events.payments, partitions: 0}",
            )
            .replace(
                "dlq_topic: sluice.dlq.normalizer",
                "dlq_topic: sluice.dlq.nope",
            )
            .replace("type: stripe", "type: stripey")
            .replace(
                "topic: sluice.events.payments}",
                "topic: sluice.events.missing}",
            );
        let err = Topology::parse("t.yaml", &bad, &types())
            .unwrap_err()
            .to_string();
        for expected in [
            "topics[1].partitions: must be at least 1, got 0",
            "retry_policies[0].dlq_topic: topic `sluice.dlq.nope` is not declared",
            "sources[0].provider.type: unknown provider `stripey`",
            "routes[0].topic: topic `sluice.events.missing` is not declared",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
    }

    #[test]
    fn unknown_event_types_and_bad_topic_names_are_rejected() {
        let bad = GOOD
            .replace(
                "event_type: dev.sluice.events.payments.PaymentSucceeded",
                "event_type: dev.sluice.events.payments.Nope",
            )
            .replace(
                "name: sluice.raw.stripe, partitions",
                "name: other.raw, partitions",
            );
        let err = Topology::parse("t.yaml", &bad, &types())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "routes[0].event_type: `dev.sluice.events.payments.Nope` is not an event type"
            ),
            "{err}"
        );
        assert!(
            err.contains("topics[0].name: `other.raw` must start with the prefix `sluice.`"),
            "{err}"
        );
    }
}
