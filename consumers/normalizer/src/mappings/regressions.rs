//! Regression tests for what the property tests and `make fuzz` check (see `proptests.rs`),
//! each with the exact input.

use super::money::testing::{delivery, edited};
use super::{map, MapError};

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/webhooks/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn assert_empty_key_is_invalid(provider: &str, event_type: Option<&str>, body: &[u8]) {
    match map(&delivery(provider, event_type, body)) {
        Err(MapError::Invalid { reason, .. }) => {
            assert!(reason.contains("empty key"), "{provider}: {reason}")
        }
        other => panic!("{provider}: expected an empty-key error, got {other:?}"),
    }
}

/// An entity id sent as `""` became an event with an empty Kafka key; the property tests
/// state "every event has a key" and replace values with `Text("")`.
#[test]
fn empty_entity_ids_are_invalid_not_events_with_an_empty_key() {
    let stripe = edited(&fixture("stripe/payment_intent.succeeded.json"), |j| {
        j["data"]["object"]["id"] = "".into()
    });
    assert_empty_key_is_invalid("stripe", None, &stripe);
    let github = edited(&fixture("github/push.json"), |j| {
        j["repository"]["full_name"] = "".into()
    });
    assert_empty_key_is_invalid("github", Some("push"), &github);
    let shopify = edited(&fixture("shopify/orders.paid.json"), |j| {
        j["id"] = "".into()
    });
    assert_empty_key_is_invalid("shopify", Some("orders/paid"), &shopify);
    let sendgrid = br#"[{"event":"delivered","email":""}]"#;
    assert_empty_key_is_invalid("sendgrid", None, sendgrid);
    let slack = edited(&fixture("slack/event_callback.message.json"), |j| {
        j["team_id"] = "".into()
    });
    assert_empty_key_is_invalid("slack", Some("event_callback.message"), &slack);
}
