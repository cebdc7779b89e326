use super::*;

fn now() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn spec(json: serde_json::Value) -> Result<EndpointSpec, serde_json::Error> {
    serde_json::from_value(json)
}

fn create(json: serde_json::Value) -> Result<Endpoint, ValidationError> {
    Endpoint::create(spec(json).unwrap(), "ep_1".into(), now()).map(|(e, _)| e)
}

fn base() -> serde_json::Value {
    serde_json::json!({
        "url": "https://hooks.example.com/sluice",
        "event_types": ["dev.sluice.events.payments.PaymentSucceeded", "dev.sluice.events.scm.*"],
    })
}

fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut b = base();
    b[field] = value;
    b
}

#[test]
fn a_valid_spec_becomes_an_endpoint_with_defaults_and_one_secret() {
    let mut json = base();
    json["filter"] = serde_json::json!([{"attribute": "source", "op": "prefix", "value": "sluice://publishers/"}]);
    json["retry_schedule"] = serde_json::json!(["5s", "5m", "2h"]);
    json["rate_limit_per_sec"] = 10.into();
    let (e, secret) = Endpoint::create(spec(json).unwrap(), "ep_1".into(), now()).unwrap();
    assert_eq!(e.url, "https://hooks.example.com/sluice");
    assert_eq!(
        e.event_types,
        vec![
            EventTypePattern::Exact("dev.sluice.events.payments.PaymentSucceeded".into()),
            EventTypePattern::Prefix("dev.sluice.events.scm.".into()),
        ]
    );
    assert_eq!(e.ordering, Ordering::Unordered);
    assert!(e.enabled);
    assert_eq!(e.rate_limit_per_sec, Some(10));
    assert_eq!(
        e.retry_schedule.as_ref().unwrap().0,
        vec![
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(7200)
        ]
    );
    assert_eq!(e.signing_secrets(now()), vec![&secret]);
    // The stored record round-trips, secret included; the public view has no secret value.
    let record = serde_json::to_string(&e).unwrap();
    assert_eq!(serde_json::from_str::<Endpoint>(&record).unwrap(), e);
    assert!(record.contains(secret.expose()));
    let view = e.public_view().to_string();
    assert!(!view.contains(secret.expose()), "{view}");
    assert!(view.contains(&secret.fingerprint()), "{view}");
    assert!(view.contains("\"dev.sluice.events.scm.*\""), "{view}");
    assert!(view.contains("[\"5s\",\"5m\",\"2h\"]"), "{view}");
}

#[test]
fn bad_urls_are_refused_naming_the_field() {
    for (url, why) in [
        ("not a url", "absolute URL"),
        ("/relative/path", "absolute URL"),
        ("ftp://example.com/x", "http or https"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://example.com/#frag", "fragment"),
    ] {
        let e = create(with("url", url.into())).unwrap_err();
        assert_eq!((e.field.as_str(), e.code), ("url", "invalid_url"), "{url}");
        assert!(e.message.contains(why), "{url}: {e}");
    }
    let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
    assert_eq!(
        create(with("url", long.into())).unwrap_err().code,
        "invalid_url"
    );
}

#[test]
fn unknown_fields_are_refused_by_every_request_body() {
    let e = spec(with("colour", "blue".into())).unwrap_err().to_string();
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = serde_json::from_str::<EndpointPatch>(r#"{"enabeld": false}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `enabeld`"), "{e}");
    let e = serde_json::from_str::<RotateRequest>(r#"{"grace": "1h"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `grace`"), "{e}");
    let e = spec(with(
        "filter",
        serde_json::json!([{"attribute": "source", "op": "equals", "value": "x", "not": 1}]),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `not`"), "{e}");
}

#[test]
fn event_types_must_be_present_and_well_formed() {
    let e = create(with("event_types", serde_json::json!([]))).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.code),
        ("event_types", "invalid_event_types")
    );
    for bad in ["*", ".*", "a..b", "a.*.c", "a.b*", "a b", "a.b.", ""] {
        let e = create(with("event_types", serde_json::json!(["a.B", bad]))).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.code),
            ("event_types[1]", "invalid_event_types"),
            "{bad}"
        );
    }
    assert_eq!(
        EventTypePattern::parse("dev.sluice.*").unwrap().to_string(),
        "dev.sluice.*"
    );
}

#[test]
fn durations_limits_and_enums_are_checked_per_field() {
    let e = create(with("retry_schedule", serde_json::json!(["5s", "soon"]))).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.code),
        ("retry_schedule[1]", "invalid_retry_schedule")
    );
    assert!(e.message.contains("`soon`"), "{e}");
    let e = create(with("retry_schedule", serde_json::json!(["5"]))).unwrap_err();
    assert!(e.message.contains("no unit"), "{e}");
    let e = create(with("retry_schedule", serde_json::json!(["500ms"]))).unwrap_err();
    assert!(e.message.contains("outside 1s to 7d"), "{e}");
    let e = create(with("retry_schedule", serde_json::json!([]))).unwrap_err();
    assert_eq!(e.field, "retry_schedule");
    let e = create(with("rate_limit_per_sec", 0.into())).unwrap_err();
    assert_eq!(e.code, "invalid_rate_limit_per_sec");
    let e = create(with("max_in_flight", (-3).into())).unwrap_err();
    assert_eq!(e.code, "invalid_max_in_flight");
    let e = create(with("ordering", "fifo".into())).unwrap_err();
    assert_eq!(e.code, "invalid_ordering");
    let e = create(with(
        "filter",
        serde_json::json!([{"attribute": "time", "op": "equals", "value": "x"}]),
    ))
    .unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.code),
        ("filter[0].attribute", "invalid_filter")
    );
    let e = create(with("description", "a\u{7}b".into())).unwrap_err();
    assert_eq!(e.code, "invalid_description");
    let e = RotateRequest {
        grace_period: Some("90d".into()),
    }
    .grace_period()
    .unwrap_err();
    assert_eq!(e.code, "invalid_grace_period");
}

#[test]
fn a_patch_changes_only_what_it_names_and_null_clears() {
    let mut json = base();
    json["rate_limit_per_sec"] = 5.into();
    json["max_in_flight"] = 2.into();
    let e = create(json).unwrap();
    let later = now() + jiff::SignedDuration::from_secs(60);
    let patch: EndpointPatch = serde_json::from_str(
        r#"{"rate_limit_per_sec": null, "description": "billing", "ordering": "per_key"}"#,
    )
    .unwrap();
    let p = e.patched(patch, later).unwrap();
    assert_eq!(p.rate_limit_per_sec, None);
    assert_eq!(p.max_in_flight, Some(2), "absent: unchanged");
    assert_eq!(p.description, "billing");
    assert_eq!(p.ordering, Ordering::PerKey);
    assert_eq!((p.created_at, p.updated_at), (now(), later));
    assert_eq!(p.secrets, e.secrets);
    let bad: EndpointPatch = serde_json::from_str(r#"{"url": "mailto:x@example.com"}"#).unwrap();
    assert_eq!(e.patched(bad, later).unwrap_err().code, "invalid_url");
}

#[test]
fn rotation_signs_with_both_secrets_during_the_grace_period_then_only_the_new_one() {
    let mut e = create(base()).unwrap();
    let old = e.secrets[0].value.clone();
    let t0 = now() + jiff::SignedDuration::from_hours(1);
    let new = e.rotate_secret(t0, Duration::from_secs(3600));
    assert_ne!(old, new);
    assert_eq!(e.signing_secrets(t0), vec![&new, &old], "newest first");
    let during = t0 + jiff::SignedDuration::from_secs(3599);
    assert_eq!(e.signing_secrets(during), vec![&new, &old]);
    let after = t0 + jiff::SignedDuration::from_secs(3600);
    assert_eq!(e.signing_secrets(after), vec![&new]);
    assert_eq!(
        e.secrets[0].expires_at,
        Some(t0 + jiff::SignedDuration::from_secs(3600))
    );
    assert_eq!(e.secrets[1].expires_at, None);

    // A second rotation after the grace period drops the expired secret and shortens nobody
    // else's past the new grace; a grace of zero retires the current secret at once.
    let newer = e.rotate_secret(after, Duration::ZERO);
    assert_eq!(e.secrets.len(), 2, "the expired secret is dropped");
    assert_eq!(e.signing_secrets(after), vec![&newer]);
    assert!(!e.signing_secrets(after).contains(&&new));
}
