//! SendGrid Event Webhook: the body is a JSON array of events, so one delivery fans out
//! to several events, in array order.
//!
//! | `event` | event |
//! |---|---|
//! | `delivered` | `EmailDelivered` |
//! | `bounce` | `EmailBounced` (`type` → `bounce_type`, `reason`, `status`) |
//! | `dropped` | `EmailDropped` (`reason`) |
//! | `open` | `EmailOpened` (`useragent`, `ip`) |
//! | `click` | `EmailClicked` (`useragent`, `ip`, `url`) |
//!
//! Every event carries `email`, `message_id` (`sg_message_id`), `provider_event_id`
//! (`sg_event_id`) and `category` (a string or an array, always an array here). Key: the
//! recipient address; subject: `sg_message_id`; `occurred_at`: `timestamp` (seconds) in
//! ms, or the delivery's `received_at` if absent.
//!
//! # Kinds without a mapping (`processed`, `deferred`, `spamreport`, `unsubscribe`,
//! `group_unsubscribe`, `group_resubscribe`, …)
//!
//! - A batch made ONLY of such kinds is [`MapError::Unmapped`] as a whole, with the
//!   distinct kinds joined by `,` as its event type (`processed,deferred`), so the
//!   source's `unmapped` policy applies to it (dead-letter, or the whole batch as one
//!   `ExternalEvent`).
//! - In a MIXED batch [`map`] maps the mapped kinds, and [`unmapped_elements`] lists the
//!   others, to which the normalizer applies the source's `unmapped` policy element by
//!   element (`generic`: one `ExternalEvent` each; `dlq`: the delivery is also
//!   dead-lettered with the unmapped kinds as its reason). Returning `Unmapped` for the
//!   whole batch instead would dead-letter (or genericise) the deliveries and bounces too,
//!   and nearly every real batch contains `processed` events.
//!
//! An event of a mapped kind that lacks a required field (`email`, a click's `url`) fails
//! the whole delivery with [`MapError::Invalid`] naming the element (`[3].email`), so
//! nothing is lost silently. An empty array maps to no events.
//!
//! Event ids come from the position in the returned list, which is deterministic for a
//! given body, so redeliveries still get the same ids.

use serde_json::{json, Value as Json};

use super::generic::Fields;
use super::{parse_json, MapError, Mapped, RawDelivery};

pub const EMAIL_DELIVERED: &str = "dev.sluice.events.email.EmailDelivered";
pub const EMAIL_BOUNCED: &str = "dev.sluice.events.email.EmailBounced";
pub const EMAIL_DROPPED: &str = "dev.sluice.events.email.EmailDropped";
pub const EMAIL_OPENED: &str = "dev.sluice.events.email.EmailOpened";
pub const EMAIL_CLICKED: &str = "dev.sluice.events.email.EmailClicked";

/// The catalog event for a SendGrid `event` value, if it has one.
pub fn event_type_for(kind: &str) -> Option<&'static str> {
    match kind {
        "delivered" => Some(EMAIL_DELIVERED),
        "bounce" => Some(EMAIL_BOUNCED),
        "dropped" => Some(EMAIL_DROPPED),
        "open" => Some(EMAIL_OPENED),
        "click" => Some(EMAIL_CLICKED),
        _ => None,
    }
}

/// The elements of a batch whose kind has no mapping: (position, kind, element as JSON).
pub fn unmapped_elements(delivery: &RawDelivery<'_>) -> Vec<(usize, String, String)> {
    let Ok(Json::Array(items)) = serde_json::from_slice::<Json>(delivery.body) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let kind = item
                .get("event")
                .and_then(Json::as_str)
                .unwrap_or("(no event)");
            event_type_for(kind)
                .is_none()
                .then(|| (i, kind.to_string(), item.to_string()))
        })
        .collect()
}

/// Maps one Event Webhook batch.
pub fn map(delivery: &RawDelivery<'_>) -> Result<Vec<Mapped>, MapError> {
    let body = parse_json(delivery)?;
    let Some(events) = body.as_array() else {
        return Err(MapError::InvalidJson {
            provider: delivery.provider.to_string(),
            reason: "expected a JSON array of events".into(),
        });
    };
    let f = Fields::new(&body, delivery.provider, "batch");
    let mut mapped = Vec::with_capacity(events.len());
    let mut unmapped_kinds: Vec<&str> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if !event.is_object() {
            return Err(f.invalid(format!("`[{i}]` must be an object")));
        }
        let kind = f.str(&format!("[{i}].event"))?;
        match event_type_for(kind) {
            Some(event_type) => {
                let f = Fields::new(&body, delivery.provider, kind);
                mapped.push(map_event(&f, i, event_type, delivery)?);
            }
            None if !unmapped_kinds.contains(&kind) => unmapped_kinds.push(kind),
            None => {}
        }
    }
    if mapped.is_empty() && !unmapped_kinds.is_empty() {
        return Err(MapError::Unmapped {
            provider: delivery.provider.to_string(),
            event_type: unmapped_kinds.join(","),
        });
    }
    Ok(mapped)
}

fn map_event(
    f: &Fields<'_>,
    i: usize,
    event_type: &'static str,
    delivery: &RawDelivery<'_>,
) -> Result<Mapped, MapError> {
    let at = |field: &str| format!("[{i}].{field}");
    let email = f.str(&at("email"))?;
    let message_id = f.opt_str(&at("sg_message_id"))?;
    let mut fields = json!({
        "email": email,
        "message_id": message_id,
        "provider_event_id": f.opt_str(&at("sg_event_id"))?,
        "category": categories(f, &at("category"))?,
    });
    let extra = match event_type {
        EMAIL_BOUNCED => json!({
            "bounce_type": f.opt_str(&at("type"))?,
            "reason": f.opt_str(&at("reason"))?,
            "status": f.opt_str(&at("status"))?,
        }),
        EMAIL_DROPPED => json!({"reason": f.opt_str(&at("reason"))?}),
        EMAIL_OPENED => json!({
            "user_agent": f.opt_str(&at("useragent"))?,
            "ip": f.opt_str(&at("ip"))?,
        }),
        EMAIL_CLICKED => json!({
            "user_agent": f.opt_str(&at("useragent"))?,
            "ip": f.opt_str(&at("ip"))?,
            "url": f.str(&at("url"))?,
        }),
        _ => json!({}),
    };
    if let (Some(fields), Json::Object(extra)) = (fields.as_object_mut(), extra) {
        fields.extend(extra);
    }
    Ok(Mapped {
        event_type,
        key: email.to_string(),
        subject: message_id.map(str::to_string),
        occurred_at_ms: f
            .opt_secs_as_ms(&at("timestamp"))?
            .unwrap_or(delivery.received_at_ms),
        fields,
    })
}

/// `category` as an array: SendGrid sends a string for one category, an array for several.
fn categories(f: &Fields<'_>, path: &str) -> Result<Vec<String>, MapError> {
    match f.get(path) {
        None => Ok(Vec::new()),
        Some(Json::String(s)) => Ok(vec![s.clone()]),
        Some(Json::Array(items)) => (0..items.len())
            .map(|j| f.str(&format!("{path}[{j}]")).map(str::to_string))
            .collect(),
        Some(_) => Err(f.invalid(format!("`{path}` must be a string or an array of strings"))),
    }
}

#[cfg(test)]
mod unmapped_tests {
    use super::*;
    use crate::mappings::money::testing::delivery;

    #[test]
    fn unmapped_elements_are_listed_with_their_position_and_kind() {
        let body = br#"[{"event":"processed","email":"a@x"},{"event":"delivered","email":"a@x","timestamp":1},{"event":"deferred","email":"b@x"}]"#;
        let d = delivery("sendgrid", None, body);
        let listed = unmapped_elements(&d);
        let kinds: Vec<(usize, &str)> = listed.iter().map(|(i, k, _)| (*i, k.as_str())).collect();
        assert_eq!(kinds, vec![(0, "processed"), (2, "deferred")]);
        assert!(listed[1].2.contains("b@x"));
        assert_eq!(map(&d).unwrap().len(), 1);
    }

    /// The normalizer copies each unmapped element into an `ExternalEvent` (under
    /// `unmapped: generic`) through the shared redaction; SendGrid documents no secret
    /// fields, so the element is carried as listed, nothing guessed away.
    #[test]
    fn unmapped_elements_become_external_events_through_the_shared_redaction() {
        let body = br#"[{"event":"processed","email":"a@x","token":"t"},{"event":"delivered","email":"a@x"}]"#;
        let d = delivery("sendgrid", None, body);
        let (_, kind, element) = unmapped_elements(&d).remove(0);
        let one = RawDelivery {
            event_type: Some(&kind),
            body: element.as_bytes(),
            ..d
        };
        let m = crate::mappings::generic::external_event(&one).unwrap();
        assert_eq!(m.fields["event_type"], "processed");
        assert_eq!(
            m.fields["payload"],
            r#"{"event":"processed","email":"a@x","token":"t"}"#
        );
        let mut element: Json = serde_json::from_str(&element).unwrap();
        assert!(!crate::mappings::redact::redact("sendgrid", &mut element));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mappings::money::testing::{
        delivery, edited, invalid_reason, map_valid, RECEIVED_AT_MS,
    };

    const EVENTS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/webhooks/sendgrid/events.json"
    ));
    const MESSAGE_ID: &str = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0";
    const AT_MS: i64 = 1_513_299_569_000;
    const UA: &str =
        "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; .NET CLR 2.0.50727)";

    fn d(body: &[u8]) -> RawDelivery<'_> {
        delivery("sendgrid", None, body)
    }

    #[test]
    fn documented_batch_maps_the_five_kinds_in_order() {
        let mapped = map_valid(map, &d(EVENTS.as_bytes()));
        let types: Vec<&str> = mapped.iter().map(|m| m.event_type).collect();
        // 11 events: processed, deferred, spamreport, unsubscribe, group_unsubscribe
        // and group_resubscribe have no mapping.
        assert_eq!(
            types,
            [
                EMAIL_DELIVERED,
                EMAIL_OPENED,
                EMAIL_CLICKED,
                EMAIL_BOUNCED,
                EMAIL_DROPPED
            ]
        );
        for m in &mapped {
            assert_eq!(m.key, "example@test.com");
            assert_eq!(m.subject.as_deref(), Some(MESSAGE_ID));
            assert_eq!(m.occurred_at_ms, AT_MS);
            assert_eq!(m.fields["email"], "example@test.com");
            assert_eq!(m.fields["message_id"], MESSAGE_ID);
        }
        assert_eq!(
            mapped[0].fields,
            json!({
                "email": "example@test.com",
                "message_id": MESSAGE_ID,
                "provider_event_id": "JldC9f3XVTlK_oXSX9Iuyw==",
                "category": ["cat facts"],
            })
        );
        assert_eq!(
            mapped[1].fields["provider_event_id"],
            "8X4kQX4tQK_6OBP-XAJD2A=="
        );
        assert_eq!(mapped[1].fields["user_agent"], UA);
        assert_eq!(mapped[1].fields["ip"], "255.255.255.255");
        assert_eq!(mapped[2].fields["url"], "http://www.sendgrid.com/");
        assert_eq!(
            mapped[2].fields["category"],
            json!(["cat facts", "newsletter"])
        );
        assert_eq!(mapped[3].fields["bounce_type"], "bounce");
        assert_eq!(mapped[3].fields["reason"], "500 unknown recipient");
        assert_eq!(mapped[3].fields["status"], "5.0.0");
        assert_eq!(mapped[4].fields["reason"], "Bounced Address");
        assert!(mapped[4].fields.get("status").is_none());
    }

    #[test]
    fn a_batch_of_only_unmapped_kinds_is_unmapped() {
        let body = edited(EVENTS, |j| {
            let keep = |e: &Json| matches!(e["event"].as_str(), Some("processed" | "deferred"));
            let only: Vec<Json> = j
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| keep(e))
                .cloned()
                .collect();
            let mut twice = only.clone();
            twice.extend(only);
            *j = Json::Array(twice);
        });
        assert_eq!(
            map(&d(&body)),
            Err(MapError::Unmapped {
                provider: "sendgrid".into(),
                event_type: "processed,deferred".into()
            })
        );
    }

    #[test]
    fn empty_batch_maps_to_nothing() {
        assert_eq!(map(&d(b"[]")), Ok(vec![]));
    }

    #[test]
    fn missing_category_message_id_and_timestamp() {
        let body = br#"[{"email":"a@example.com","event":"dropped","reason":"Invalid"}]"#;
        let mapped = map_valid(map, &d(body));
        assert_eq!(mapped[0].fields["category"], json!([]));
        assert_eq!(mapped[0].fields["message_id"], Json::Null);
        assert_eq!(mapped[0].subject, None);
        assert_eq!(mapped[0].occurred_at_ms, RECEIVED_AT_MS);
    }

    #[test]
    fn non_json_and_non_array_bodies_are_invalid_json() {
        for body in [&b"email=a"[..], br#"{"event":"delivered"}"#] {
            assert!(
                matches!(map(&d(body)), Err(MapError::InvalidJson { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_mapped_event_missing_a_required_field_fails_the_batch_with_its_index() {
        let body = edited(EVENTS, |j| {
            j[4].as_object_mut().unwrap().remove("url");
        });
        let reason = invalid_reason(map(&d(&body)));
        assert!(reason.contains("`[4].url`"), "{reason}");

        let body = edited(EVENTS, |j| {
            j[2].as_object_mut().unwrap().remove("email");
        });
        let reason = invalid_reason(map(&d(&body)));
        assert!(reason.contains("`[2].email`"), "{reason}");

        let body = edited(EVENTS, |j| j[0]["event"] = Json::Null);
        let reason = invalid_reason(map(&d(&body)));
        assert!(reason.contains("`[0].event`"), "{reason}");

        let reason = invalid_reason(map(&d(b"[1]")));
        assert!(reason.contains("`[0]` must be an object"), "{reason}");

        let body = br#"[{"email":"a@example.com","event":"open","category":[1]}]"#;
        let reason = invalid_reason(map(&d(body)));
        assert!(reason.contains("`[0].category[0]`"), "{reason}");
    }
}
