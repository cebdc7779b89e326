//! Record sizes: whatever the gateway accepts can always be normalized or dead-lettered.
//!
//! A delivery travels as one Kafka record through up to four places: the source's raw topic
//! (the body plus the request's headers), the normalizer's retry tiers and its dead-letter
//! topic (the same record plus provenance and error headers), each written by a producer
//! whose `message.max.bytes` also caps it. If any of them is smaller than what the gateway
//! lets in, a delivery can be acknowledged with 202 and then fit nowhere: it can neither be
//! normalized nor dead-lettered. [`Topology::size_problems`] finds such a topology before
//! anything runs; each problem names the source, the topic and the numbers.

use crate::model::{TopicSpec, Topology};
use crate::naming;
use crate::validate::ValidationError;

/// What Kafka allows per record batch on a topic that sets no `max.message.bytes` (the
/// broker's `message.max.bytes` default).
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: u64 = 1_048_588;

/// The request headers the gateway copies into a raw record, at most (it answers 431 above
/// this).
pub const MAX_REQUEST_HEADER_BYTES: u64 = 16 * 1024;

/// Room for everything in a raw record besides its body: the copied request headers, the
/// gateway's own headers, the key and the batch framing.
pub const RAW_RECORD_OVERHEAD_BYTES: u64 = MAX_REQUEST_HEADER_BYTES + 8 * 1024;

/// Room a retry-tier or dead-letter copy adds to a raw record: provenance, the error class and
/// message (capped), the attempt history (capped).
pub const FAILURE_COPY_OVERHEAD_BYTES: u64 = 8 * 1024;

/// The body limit of a source that sets none: the largest body whose raw record and
/// dead-letter copy fit Kafka's default topic limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 =
    KAFKA_DEFAULT_MAX_MESSAGE_BYTES - RAW_RECORD_OVERHEAD_BYTES - FAILURE_COPY_OVERHEAD_BYTES;

/// The retry policy whose tiers and dead-letter topic take the normalizer's failures.
pub const NORMALIZER_POLICY: &str = "normalizer";

impl Topology {
    /// The most one record may take on `topic`: its `max.message.bytes` in the topology (a
    /// retry tier inherits its policy's dead-letter topic's), else Kafka's default.
    pub fn record_limit(&self, topic: &str) -> u64 {
        limit_in(&self.all_topics(), topic)
    }

    /// Every source whose largest accepted delivery would not fit its raw topic, the
    /// normalizer's retry tiers and dead-letter topic, or a producer capped at
    /// `producer_max_bytes` (`message.max.bytes`). Empty when the topology is consistent.
    pub fn size_problems(&self, producer_max_bytes: u64) -> Vec<ValidationError> {
        let topics = self.all_topics();
        let policy = self
            .retry_policies
            .iter()
            .find(|p| p.name == NORMALIZER_POLICY);
        let mut failure_topics: Vec<(String, String)> = Vec::new();
        if let Some(p) = policy {
            for tier in &p.tiers {
                let name = naming::retry_topic(&self.prefix, &p.name, tier.0);
                failure_topics.push((format!("retry tier {name}"), name));
            }
            failure_topics.push((
                format!("dead-letter topic {}", p.dlq_topic),
                p.dlq_topic.clone(),
            ));
        }
        let mut problems = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            let path = format!("sources[{i}].limits.max_body_bytes");
            let body = s.limits.max_body_bytes as u64;
            let raw_need = body + RAW_RECORD_OVERHEAD_BYTES;
            let copy_need = raw_need + FAILURE_COPY_OVERHEAD_BYTES;
            let mut check = |what: String, limit: u64, need: u64, fix: String| {
                if limit < need {
                    problems.push(ValidationError {
                        path: path.clone(),
                        message: format!(
                            "source `{}` accepts bodies up to {body} bytes, so a record of up to {need} bytes must fit {what}, which allows {limit}; {fix}",
                            s.name
                        ),
                    });
                }
            };
            let topic_fix = |t: &str| {
                format!("raise `max.message.bytes` of {t} in topics (Kafka's default is {KAFKA_DEFAULT_MAX_MESSAGE_BYTES}) or lower the source's max_body_bytes")
            };
            check(
                format!("raw topic {}", s.raw_topic),
                limit_in(&topics, &s.raw_topic),
                raw_need,
                topic_fix(&s.raw_topic),
            );
            for (what, topic) in &failure_topics {
                check(
                    what.clone(),
                    limit_in(&topics, topic),
                    copy_need,
                    topic_fix(topic),
                );
            }
            check(
                "the producers' message.max.bytes".into(),
                producer_max_bytes,
                copy_need,
                "raise kafka.properties.\"message.max.bytes\" or lower the source's max_body_bytes"
                    .into(),
            );
        }
        problems
    }
}

/// The record limit of `topic` among `topics` (declared and derived), else Kafka's default.
fn limit_in(topics: &[TopicSpec], topic: &str) -> u64 {
    topics
        .iter()
        .find(|t| t.name == topic)
        .and_then(|t| t.config.get("max.message.bytes"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn topology(raw: &str, dlq: &str, body: &str) -> Topology {
        let text = format!(
            "topics:\n  - {{name: sluice.raw.a, partitions: 1{raw}}}\n  - {{name: sluice.dlq.n, partitions: 1{dlq}}}\n  - {{name: sluice.state.held-normalizer, partitions: 1, config: {{cleanup.policy: compact}}}}\nsources:\n  - {{name: a, provider: {{type: github}}, secrets: [{{env: X}}], raw_topic: sluice.raw.a{body}}}\nretry_policies:\n  - {{name: normalizer, tiers: [5s], max_attempts: 2, dlq_topic: sluice.dlq.n}}\n"
        );
        // Unvalidated: `parse` would refuse the inconsistent ones this module judges.
        serde_yaml_ng::from_str(&text).unwrap()
    }

    #[test]
    fn loading_a_topology_refuses_a_dead_letter_topic_smaller_than_the_bodies() {
        let text = "topics:\n  - {name: sluice.raw.a, partitions: 1, config: {max.message.bytes: 27262976}}\n  - {name: sluice.dlq.n, partitions: 1}\nsources:\n  - {name: a, provider: {type: github}, secrets: [{env: X}], raw_topic: sluice.raw.a, limits: {max_body_bytes: 26214400}}\nretry_policies:\n  - {name: normalizer, tiers: [5s], max_attempts: 2, dlq_topic: sluice.dlq.n}\n";
        let err = Topology::parse("t.yaml", text, &BTreeSet::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dead-letter topic sluice.dlq.n"), "{err}");
    }

    #[test]
    fn the_default_body_limit_fits_kafka_s_default_topics() {
        let t = topology("", "", "");
        assert_eq!(
            t.sources[0].limits.max_body_bytes as u64,
            DEFAULT_MAX_BODY_BYTES
        );
        assert!(t.size_problems(1_000_000_000).is_empty());
    }

    #[test]
    fn a_body_limit_above_the_dead_letter_topic_s_is_named_with_its_numbers() {
        let big = ", config: {max.message.bytes: 27262976}";
        let t = topology(big, "", ", limits: {max_body_bytes: 26214400}");
        let problems = t.size_problems(33_554_432);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        // The raw topic is large enough; the tier (inheriting the DLQ's limit) and the DLQ
        // are not.
        assert_eq!(problems.len(), 2, "{text:#?}");
        assert!(
            text[0].contains("retry tier sluice.retry.normalizer.5s"),
            "{}",
            text[0]
        );
        assert!(
            text[1].contains("dead-letter topic sluice.dlq.n"),
            "{}",
            text[1]
        );
        assert!(text[1].contains("source `a` accepts bodies up to 26214400 bytes"));
        assert!(text[1].contains(&format!("which allows {KAFKA_DEFAULT_MAX_MESSAGE_BYTES}")));
        assert!(text[1].starts_with("sources[0].limits.max_body_bytes"));

        let t = topology(big, big, ", limits: {max_body_bytes: 26214400}");
        assert!(t.size_problems(33_554_432).is_empty());
        let producer = t.size_problems(1_000_000);
        assert_eq!(producer.len(), 1);
        assert!(producer[0].to_string().contains("message.max.bytes"));
    }

    #[test]
    fn tiers_inherit_the_dead_letter_topic_s_record_limit() {
        let t = topology("", ", config: {max.message.bytes: 5000000}", "");
        assert_eq!(t.record_limit("sluice.retry.normalizer.5s"), 5_000_000);
        assert_eq!(
            t.record_limit("sluice.raw.a"),
            KAFKA_DEFAULT_MAX_MESSAGE_BYTES
        );
    }
}
