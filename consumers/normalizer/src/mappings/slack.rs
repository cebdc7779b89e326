//! Slack Events API: an `event_callback` envelope
//! `{type: "event_callback", team_id, event_id, event_time, event: {type, …}}` becomes the
//! generic `dev.sluice.events.external.ExternalEvent` (the catalog has no Slack schema).
//!
//! - `event_type`: `event_callback.<event.type>` (as the gateway names it, e.g.
//!   `event_callback.message`); `payload`: the raw body.
//! - key: `team_id` (else `enterprise_id`, else `api_app_id`, else the source), so one
//!   workspace's events stay in order;
//! - subject: the inner event's channel id when it has one (`event.channel`, as an id or
//!   a channel object);
//! - `occurred_at`: `event_time` (seconds) in ms, else the delivery's `received_at`.
//!
//! Any other envelope `type` (`url_verification`, which the gateway answers itself,
//! `app_rate_limited`, …) is [`MapError::Unmapped`]. Form-encoded bodies (slash commands,
//! interactivity) are not Events API deliveries and fail as [`MapError::InvalidJson`].

use serde_json::{json, Value as Json};

use super::generic::{Fields, EXTERNAL_EVENT};
use super::{parse_json, redact, MapError, Mapped, RawDelivery};

/// Maps one Events API delivery.
pub fn map(delivery: &RawDelivery<'_>) -> Result<Vec<Mapped>, MapError> {
    let body = parse_json(delivery)?;
    let Json::Object(_) = body else {
        return Err(MapError::InvalidJson {
            provider: delivery.provider.to_string(),
            reason: "expected an Events API envelope object".into(),
        });
    };
    let outer = Fields::new(&body, delivery.provider, "unknown");
    let envelope_type = outer.str("type")?;
    if envelope_type != "event_callback" {
        return Err(MapError::Unmapped {
            provider: delivery.provider.to_string(),
            event_type: envelope_type.to_string(),
        });
    }
    let inner_type = Fields::new(&body, delivery.provider, envelope_type).str("event.type")?;
    let event_type = format!("event_callback.{inner_type}");
    let f = Fields::new(&body, delivery.provider, &event_type);
    let mut key = delivery.source;
    for path in ["team_id", "enterprise_id", "api_app_id"] {
        if let Some(id) = f.opt_str(path)? {
            key = id;
            break;
        }
    }
    let raw = std::str::from_utf8(delivery.body).map_err(|e| MapError::InvalidJson {
        provider: delivery.provider.to_string(),
        reason: format!("body is not UTF-8: {e}"),
    })?;
    let key = key.to_string();
    let subject = f.opt_ref("event.channel")?;
    let occurred_at_ms = f
        .opt_secs_as_ms("event_time")?
        .unwrap_or(delivery.received_at_ms);
    // Slack's envelope carries the app's legacy verification `token`: a credential, which
    // stays in the raw topic and is not copied to the widely read events topic.
    let payload = redact::redacted_payload(delivery.provider, body, raw);
    Ok(vec![Mapped {
        event_type: EXTERNAL_EVENT,
        key,
        subject,
        occurred_at_ms,
        fields: json!({
            "provider": delivery.provider,
            "source_instance": delivery.source,
            "event_type": event_type,
            "delivery_id": delivery.delivery_id,
            "received_at": delivery.received_at_ms,
            "content_type": delivery.content_type,
            "payload": payload,
        }),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mappings::money::testing::{
        delivery, edited, invalid_reason, map_valid, RECEIVED_AT_MS,
    };

    const MESSAGE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/webhooks/slack/event_callback.message.json"
    ));
    const URL_VERIFICATION: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/webhooks/slack/url_verification.json"
    ));

    fn d(body: &[u8]) -> RawDelivery<'_> {
        RawDelivery {
            delivery_id: "Ev08MFMKH6",
            ..delivery("slack", Some("event_callback.message"), body)
        }
    }

    #[test]
    fn event_callback_becomes_an_external_event() {
        let mapped = map_valid(map, &d(MESSAGE.as_bytes()));
        assert_eq!(mapped.len(), 1);
        let m = &mapped[0];
        assert_eq!(m.event_type, EXTERNAL_EVENT);
        assert_eq!(m.key, "T123ABC456");
        assert_eq!(m.subject.as_deref(), Some("C123ABC456"));
        assert_eq!(m.occurred_at_ms, 1_355_517_523_000);
        // The payload is the body without Slack's verification token.
        let payload: serde_json::Value =
            serde_json::from_str(m.fields["payload"].as_str().unwrap()).unwrap();
        let mut expected: serde_json::Value = serde_json::from_str(MESSAGE).unwrap();
        assert_eq!(expected["token"], "XXYYZZ", "the fixture carries a token");
        expected.as_object_mut().unwrap().shift_remove("token");
        assert_eq!(payload, expected);
        let mut fields = m.fields.clone();
        fields["payload"] = json!("(checked above)");
        assert_eq!(
            fields,
            json!({
                "provider": "slack",
                "source_instance": "slack",
                "event_type": "event_callback.message",
                "delivery_id": "Ev08MFMKH6",
                "received_at": RECEIVED_AT_MS,
                "content_type": "application/json",
                "payload": "(checked above)",
            })
        );
    }

    #[test]
    fn channel_objects_and_missing_team_or_time() {
        let body = edited(MESSAGE, |j| {
            let o = j.as_object_mut().unwrap();
            o.remove("team_id");
            o.remove("event_time");
            o["event"]["type"] = json!("channel_created");
            o["event"]["channel"] = json!({"id": "C024BE91L", "name": "fun"});
        });
        let mapped = map_valid(map, &d(&body));
        let m = &mapped[0];
        assert_eq!(m.key, "A123ABC456");
        assert_eq!(m.subject.as_deref(), Some("C024BE91L"));
        assert_eq!(m.occurred_at_ms, RECEIVED_AT_MS);
        assert_eq!(m.fields["event_type"], "event_callback.channel_created");
    }

    #[test]
    fn url_verification_and_other_envelopes_are_unmapped() {
        assert_eq!(
            map(&d(URL_VERIFICATION.as_bytes())),
            Err(MapError::Unmapped {
                provider: "slack".into(),
                event_type: "url_verification".into()
            })
        );
        let rate_limited = br#"{"token":"x","type":"app_rate_limited","team_id":"T1","minute_rate_limited":1518467820,"api_app_id":"A1"}"#;
        assert!(matches!(
            map(&d(rate_limited)),
            Err(MapError::Unmapped { event_type, .. }) if event_type == "app_rate_limited"
        ));
    }

    #[test]
    fn form_encoded_and_non_object_bodies_are_invalid_json() {
        for body in [&b"command=%2Fweather&text=94070"[..], b"[]"] {
            assert!(
                matches!(map(&d(body)), Err(MapError::InvalidJson { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn missing_types_name_their_path() {
        let body = edited(MESSAGE, |j| {
            j["event"].as_object_mut().unwrap().remove("type");
        });
        let reason = invalid_reason(map(&d(&body)));
        assert!(reason.contains("`event.type`"), "{reason}");
        let reason = invalid_reason(map(&d(br#"{"event":{"type":"message"}}"#)));
        assert!(reason.contains("`type`"), "{reason}");
    }
}
