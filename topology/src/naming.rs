//! The topic naming convention. Every topic sluice manages starts with the topology's
//! `prefix` (default `sluice`), then says what flows through it:
//!
//! | topic | carries |
//! |---|---|
//! | `<prefix>.raw.<source>` | verified webhook deliveries, exact request bytes |
//! | `<prefix>.events.<domain>` | normalized Avro events of one domain |
//! | `<prefix>.retry.<policy>.<delay>` | records waiting for retry tier `<delay>` of a policy |
//! | `<prefix>.dlq.<consumer>` | dead letters, with provenance headers |
//! | `<prefix>.state.<what>` | compacted state (dedup, sagas) |
//! | `<prefix>.state.held-<policy>` | keys held by a per-key ordered retry policy |
//! | `<prefix>.saga.<saga>.commands` / `.replies` | saga commands and participant replies |
//! | `<prefix>.state.saga-<saga>` | saga instances, keyed by saga id |
//! | `<prefix>.state.saga-participant-<role>` | command ids a saga participant has handled |
//! | `<prefix>.state.endpoints` | outbound webhook endpoints (subscriptions), keyed by endpoint id |
//! | `<prefix>.deliveries` | webhook delivery tasks, one per (event, endpoint), keyed by endpoint id |
//! | `<prefix>.deliveries.attempts` | every delivery attempt, keyed by endpoint id |
//! | `<prefix>.state.delivery-status` | latest status per (endpoint, event), compacted |
//! | `<prefix>.retry.deliveries.<delay>` / `<prefix>.dlq.deliveries` | delivery retry tiers and dead letters |

use std::time::Duration;

pub fn raw_topic(prefix: &str, source: &str) -> String {
    format!("{prefix}.raw.{source}")
}

pub fn events_topic(prefix: &str, domain: &str) -> String {
    format!("{prefix}.events.{domain}")
}

pub fn retry_topic(prefix: &str, policy: &str, delay: Duration) -> String {
    format!("{prefix}.retry.{policy}.{}", format_duration(delay))
}

pub fn dlq_topic(prefix: &str, consumer: &str) -> String {
    format!("{prefix}.dlq.{consumer}")
}

pub fn state_topic(prefix: &str, what: &str) -> String {
    format!("{prefix}.state.{what}")
}

/// The compacted topic of polling sources' cursors and seen (id, version) pairs.
pub fn poll_state_topic(prefix: &str) -> String {
    state_topic(prefix, "poll")
}

/// Polled items that cannot be raw records (larger than Kafka takes), with their identity.
pub fn poll_dlq_topic(prefix: &str) -> String {
    dlq_topic(prefix, "poll")
}

/// Held keys of retry policy `policy` under `ordering: per_key`, partitioned like the
/// consumer's input topics.
pub fn held_topic(prefix: &str, policy: &str) -> String {
    state_topic(prefix, &format!("held-{policy}"))
}

/// Commands of saga `saga` to its participants.
pub fn saga_commands_topic(prefix: &str, saga: &str) -> String {
    format!("{prefix}.saga.{saga}.commands")
}

/// Participant replies, and the orchestrator's own control messages, of saga `saga`: every
/// input of an instance after its trigger, keyed by saga id.
pub fn saga_replies_topic(prefix: &str, saga: &str) -> String {
    format!("{prefix}.saga.{saga}.replies")
}

/// Compacted instance state of saga `saga`, keyed by saga id, partitioned like its replies.
pub fn saga_state_topic(prefix: &str, saga: &str) -> String {
    state_topic(prefix, &format!("saga-{saga}"))
}

/// Compacted command-id dedup state of saga participant `role`.
pub fn saga_participant_state_topic(prefix: &str, role: &str) -> String {
    state_topic(prefix, &format!("saga-participant-{role}"))
}

/// Outbound webhook endpoints, one compacted record per endpoint id (a tombstone on delete).
pub fn endpoints_topic(prefix: &str) -> String {
    state_topic(prefix, "endpoints")
}

/// The retry policy (tiers and DLQ) of webhook delivery.
pub const DELIVERY_POLICY: &str = "deliveries";
/// The retry policy of the delivery fan-out's own failures (events it cannot read).
pub const DELIVERY_FANOUT_POLICY: &str = "delivery-fanout";

/// Webhook delivery tasks, one per (event, endpoint), keyed by endpoint id.
pub fn deliveries_topic(prefix: &str) -> String {
    format!("{prefix}.deliveries")
}

/// Every webhook delivery attempt, keyed by endpoint id.
pub fn delivery_attempts_topic(prefix: &str) -> String {
    format!("{prefix}.deliveries.attempts")
}

/// Webhook delivery's operational events (Avro, [`DELIVERY_EVENT_TYPES`]), keyed by endpoint id.
pub fn delivery_events_topic(prefix: &str) -> String {
    format!("{prefix}.deliveries.events")
}

/// The catalog event types written to [`delivery_events_topic`], registered under it.
pub const DELIVERY_EVENT_TYPES: [&str; 4] = [
    "dev.sluice.events.delivery.DeliveryFailing",
    "dev.sluice.events.delivery.DeliveryRecovered",
    "dev.sluice.events.delivery.DeliveryExhausted",
    "dev.sluice.events.delivery.EndpointDisabled",
];

/// Latest delivery status per (endpoint, event), keyed `<endpoint id>/<webhook id>`.
pub fn delivery_status_topic(prefix: &str) -> String {
    state_topic(prefix, "delivery-status")
}

/// Each endpoint's failing-since clock, keyed by endpoint id, partitioned like the tasks:
/// the automatic disable counts from the first failure across restarts and rebalances.
pub fn delivery_health_topic(prefix: &str) -> String {
    state_topic(prefix, "delivery-health")
}

/// Webhook delivery retry tier `delay`.
pub fn delivery_retry_topic(prefix: &str, delay: Duration) -> String {
    retry_topic(prefix, DELIVERY_POLICY, delay)
}

/// Deliveries whose retry schedule ran out, apart from system failures.
pub fn delivery_dlq_topic(prefix: &str) -> String {
    dlq_topic(prefix, DELIVERY_POLICY)
}

/// `90s` → `90s`, `60s` → `1m`, `3600s` → `1h`: the largest whole unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses `250ms`, `5s`, `1m`, `10m`, `2h`, `7d` (jiff's friendly duration format; a day is
/// 24 hours, and units with no fixed length, months and years, are refused).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` has no unit (use ms, s, m, h or d)"));
    }
    let span: jiff::Span = t
        .parse()
        .map_err(|e| format!("`{text}` is not a duration like 250ms, 5s, 1m, 2h or 7d: {e}"))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("`{text}`: unknown unit (use ms, s, m, h or d): {e}"))?;
    Duration::try_from(d).map_err(|_| format!("`{text}` is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_in_their_largest_unit() {
        for (text, canonical) in [
            ("5s", "5s"),
            ("60s", "1m"),
            ("10m", "10m"),
            ("7d", "7d"),
            ("250ms", "250ms"),
            ("90s", "90s"),
        ] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), canonical);
        }
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert_eq!(
            retry_topic("sluice", "normalizer", Duration::from_secs(60)),
            "sluice.retry.normalizer.1m"
        );
        assert_eq!(
            delivery_retry_topic("sluice", Duration::from_secs(300)),
            "sluice.retry.deliveries.5m"
        );
        assert_eq!(delivery_dlq_topic("sluice"), "sluice.dlq.deliveries");
        assert_eq!(
            delivery_status_topic("sluice"),
            "sluice.state.delivery-status"
        );
        assert_eq!(
            held_topic("sluice", "normalizer"),
            "sluice.state.held-normalizer"
        );
    }

    #[test]
    fn saga_topics_follow_the_convention() {
        assert_eq!(
            saga_commands_topic("sluice", "order-fulfillment"),
            "sluice.saga.order-fulfillment.commands"
        );
        assert_eq!(
            saga_replies_topic("sluice", "order-fulfillment"),
            "sluice.saga.order-fulfillment.replies"
        );
        assert_eq!(
            saga_state_topic("sluice", "order-fulfillment"),
            "sluice.state.saga-order-fulfillment"
        );
        assert_eq!(
            saga_participant_state_topic("sluice", "payments"),
            "sluice.state.saga-participant-payments"
        );
    }
}
