//! Which events an endpoint takes: an enabled endpoint takes an event when one of its event
//! type patterns matches the event's type and every filter holds on its CloudEvents
//! attributes.

use super::model::{AttributeFilter, CeAttribute, Endpoint, EventTypePattern, FilterOp};

/// The CloudEvents attributes of one event (`ce_type`, `ce_source`, `ce_subject`).
#[derive(Debug, Clone, Copy)]
pub struct EventAttributes<'a> {
    pub event_type: &'a str,
    pub source: &'a str,
    pub subject: Option<&'a str>,
}

impl EventTypePattern {
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::Exact(name) => name == event_type,
            // The stored prefix ends with its dot: `a.b.*` takes `a.b.C`, never `a.bc.D`.
            Self::Prefix(prefix) => {
                event_type.len() > prefix.len() && event_type.starts_with(prefix.as_str())
            }
        }
    }
}

impl AttributeFilter {
    /// Whether the event's attribute satisfies this filter; an absent attribute never does.
    pub fn matches(&self, event: &EventAttributes<'_>) -> bool {
        let actual = match self.attribute {
            CeAttribute::Source => Some(event.source),
            CeAttribute::Subject => event.subject,
        };
        actual.is_some_and(|a| match self.op {
            FilterOp::Equals => a == self.value,
            FilterOp::Prefix => a.starts_with(self.value.as_str()),
        })
    }
}

impl Endpoint {
    /// Whether this endpoint should receive `event`.
    pub fn accepts(&self, event: &EventAttributes<'_>) -> bool {
        self.enabled && self.subscribes(event)
    }

    /// Whether `event` is one this endpoint subscribes to, enabled or not (a disabled
    /// endpoint's events are recorded as `endpoint_disabled`, to recover later).
    pub fn subscribes(&self, event: &EventAttributes<'_>) -> bool {
        self.event_types.iter().any(|p| p.matches(event.event_type))
            && self.filter.iter().all(|f| f.matches(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::model::EndpointSpec;

    const PAID: &str = "dev.sluice.events.payments.PaymentSucceeded";

    fn endpoint(json: serde_json::Value) -> Endpoint {
        let spec: EndpointSpec = serde_json::from_value(json).unwrap();
        Endpoint::create(spec, "ep_m".into(), jiff::Timestamp::UNIX_EPOCH)
            .unwrap()
            .0
    }

    fn event<'a>(
        event_type: &'a str,
        source: &'a str,
        subject: Option<&'a str>,
    ) -> EventAttributes<'a> {
        EventAttributes {
            event_type,
            source,
            subject,
        }
    }

    #[test]
    fn exact_names_and_prefix_patterns() {
        let e = endpoint(serde_json::json!({
            "url": "https://example.com/h",
            "event_types": [PAID, "dev.sluice.events.scm.*"],
        }));
        assert!(e.accepts(&event(PAID, "s", None)));
        assert!(!e.accepts(&event(
            "dev.sluice.events.payments.PaymentFailed",
            "s",
            None
        )));
        assert!(e.accepts(&event("dev.sluice.events.scm.CodePushed", "s", None)));
        assert!(e.accepts(&event("dev.sluice.events.scm.sub.Deeper", "s", None)));
        assert!(!e.accepts(&event("dev.sluice.events.scmx.CodePushed", "s", None)));
        assert!(!e.accepts(&event("dev.sluice.events.scm", "s", None)));
        assert!(!e.accepts(&event("dev.sluice.events.scm.", "s", None)));
        assert!(!e.accepts(&event(&PAID[..PAID.len() - 1], "s", None)));
    }

    #[test]
    fn every_filter_must_hold_and_absent_attributes_do_not_match() {
        let e = endpoint(serde_json::json!({
            "url": "https://example.com/h",
            "event_types": ["dev.sluice.events.*"],
            "filter": [
                {"attribute": "source", "op": "equals", "value": "sluice://publishers/billing"},
                {"attribute": "subject", "op": "prefix", "value": "pi_"},
            ],
        }));
        let billing = "sluice://publishers/billing";
        assert!(e.accepts(&event(PAID, billing, Some("pi_123"))));
        assert!(!e.accepts(&event(PAID, billing, Some("ch_123"))));
        assert!(!e.accepts(&event(PAID, billing, None)));
        assert!(!e.accepts(&event(PAID, "sluice://publishers/billing2", Some("pi_1"))));
        assert!(!e.accepts(&event(PAID, "sluice://publishers/bill", Some("pi_1"))));
    }

    #[test]
    fn a_disabled_endpoint_takes_nothing() {
        let e = endpoint(serde_json::json!({
            "url": "https://example.com/h",
            "event_types": [PAID],
            "enabled": false,
        }));
        assert!(!e.accepts(&event(PAID, "s", None)));
    }
}
