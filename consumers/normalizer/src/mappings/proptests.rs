//! Property tests and the `make fuzz` driver for every provider mapping: hostile bodies
//! built by mutating the real fixtures become mapped events or a typed [`MapError`],
//! never a panic.
//!
//! One set of strategies ([`case`]) serves both: the `proptest!` tests below run a few
//! dozen cases per provider in `make test`; [`fuzz_normalizers_for_a_set_time`]
//! (`#[ignore]`d, run by `make fuzz` in release mode) draws from the same strategies for
//! `FUZZ_SECONDS`, catching panics and saving each crashing input.
//!
//! What is mutated, starting from a real fixture (tests/fixtures/webhooks):
//! - JSON values at random nodes replaced by another type (string, number, bool, null,
//!   array, object), wrapped in an array or object, or removed;
//! - numbers no mapping expects: `1e308`, `-1e308`, `1e400`, `u64::MAX + 1`, `i64::MIN`,
//!   400-digit integers and decimals;
//! - odd strings: empty, 1 MiB, control characters, non-BMP, almost-dates, almost-money;
//! - nesting 128, 129, 10,000 and 100,000 levels deep (serde_json's recursion limit must
//!   answer, not the stack);
//! - at the byte level: invalid UTF-8 (lone lead bytes, surrogates, overlong forms), a
//!   BOM, truncation, flipped bytes, or an entirely random body;
//! - the delivery's metadata: a missing or foreign event type, and a body sent to another
//!   provider's mapping.
//!
//! Each input runs through everything that reads a raw body in the normalizer:
//! [`normalize::map`], [`generic::external_event`] (the `unmapped: generic` path) and, for
//! SendGrid, [`sendgrid::unmapped_elements`] with each element as an `ExternalEvent`.

use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value as Json};

use super::money::testing::{catalog, full_record};
use super::{generic, github, redact, sendgrid, shopify, stripe};
use super::{MapError, Mapped, RawDelivery};
use crate::mappings as normalize;

// ---------------------------------------------------------------------------------------
// Seeds: the real fixtures, with the provider and event type the gateway would record.
// ---------------------------------------------------------------------------------------

macro_rules! fixture {
    ($path:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/webhooks/",
            $path
        ))
    };
}

/// A seed delivery: provider type, the gateway's event type, body.
type Seed = (&'static str, Option<&'static str>, &'static str);

const SEEDS: &[Seed] = &[
    (
        "stripe",
        Some("payment_intent.succeeded"),
        fixture!("stripe/payment_intent.succeeded.json"),
    ),
    (
        "stripe",
        Some("payment_intent.payment_failed"),
        fixture!("stripe/payment_intent.payment_failed.json"),
    ),
    (
        "stripe",
        Some("charge.refunded"),
        fixture!("stripe/charge.refunded.json"),
    ),
    (
        "stripe",
        Some("customer.subscription.created"),
        fixture!("stripe/customer.subscription.created.json"),
    ),
    (
        "stripe",
        Some("customer.subscription.updated"),
        fixture!("stripe/customer.subscription.updated.json"),
    ),
    (
        "stripe",
        Some("customer.subscription.deleted"),
        fixture!("stripe/customer.subscription.deleted.json"),
    ),
    (
        "stripe",
        Some("invoice.paid"),
        fixture!("stripe/invoice.paid.json"),
    ),
    ("github", Some("push"), fixture!("github/push.json")),
    (
        "github",
        Some("push"),
        fixture!("github/push.with-new-branch.json"),
    ),
    (
        "github",
        Some("pull_request"),
        fixture!("github/pull_request.opened.json"),
    ),
    (
        "github",
        Some("pull_request"),
        fixture!("github/pull_request.closed.json"),
    ),
    (
        "github",
        Some("pull_request"),
        fixture!("github/pull_request.closed.merged.json"),
    ),
    (
        "github",
        Some("issues"),
        fixture!("github/issues.opened.json"),
    ),
    (
        "github",
        Some("issues"),
        fixture!("github/issues.closed.json"),
    ),
    (
        "shopify",
        Some("orders/create"),
        fixture!("shopify/orders.create.json"),
    ),
    (
        "shopify",
        Some("orders/paid"),
        fixture!("shopify/orders.paid.json"),
    ),
    (
        "shopify",
        Some("orders/cancelled"),
        fixture!("shopify/orders.cancelled.json"),
    ),
    ("sendgrid", None, fixture!("sendgrid/events.json")),
    (
        "slack",
        Some("event_callback.message"),
        fixture!("slack/event_callback.message.json"),
    ),
    (
        "slack",
        Some("url_verification"),
        fixture!("slack/url_verification.json"),
    ),
    // The Standard Webhooks spec's example payload.
    (
        "standard_webhooks",
        None,
        r#"{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"1f81eb52-5198-4599-803e-771906343485","type":"contact","name":"Jane"}}"#,
    ),
    (
        "generic_hmac",
        Some("thing.happened"),
        r#"{"id":"t_1","type":"thing.happened","amount":12.5,"tags":["a","b"],"nested":{"ok":true}}"#,
    ),
];

/// Every provider type the normalizer dispatches on.
const PROVIDERS: &[&str] = &[
    "stripe",
    "github",
    "shopify",
    "sendgrid",
    "slack",
    "standard_webhooks",
    "generic_hmac",
];

fn seeds_of(provider: &str) -> Vec<usize> {
    (0..SEEDS.len())
        .filter(|&i| SEEDS[i].0 == provider)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Mutations, as data: proptest shrinks them, the fuzz driver prints them.
// ---------------------------------------------------------------------------------------

/// What a chosen JSON node becomes.
#[derive(Debug, Clone)]
enum Replacement {
    Null,
    Bool(bool),
    Int(i64),
    U64(u64),
    Float(f64),
    Text(String),
    /// A string of `n` copies of a character.
    Long(char, usize),
    EmptyArray,
    EmptyObject,
    /// `[node]`: same content, another type.
    WrapInArray,
    /// `{"id": node}`: what an expanded reference looks like.
    WrapInObject,
    /// Number text `serde_json::Value` cannot hold, spliced into the serialised body.
    RawNumber(String),
    /// `depth` nested arrays (or objects), spliced into the serialised body.
    Deep {
        depth: usize,
        objects: bool,
    },
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replaces the `node`-th value (pre-order, the root is 0).
    Replace { node: Index, with: Replacement },
    /// Removes a member of the `node`-th array or object.
    Remove { node: Index, member: Index },
}

/// A change to the serialised body.
#[derive(Debug, Clone)]
enum ByteMutation {
    None,
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Flip(Index, u8),
    /// A UTF-8 byte order mark in front.
    Bom,
    /// The body is replaced outright.
    Random(Vec<u8>),
}

/// Which event type the delivery carries.
#[derive(Debug, Clone)]
enum EventType {
    AsSeed,
    Absent,
    Other(String),
}

/// One generated delivery: a seed, the provider whose mapping it is sent to, and the
/// mutations applied to it.
#[derive(Debug, Clone)]
struct Case {
    seed: usize,
    provider: &'static str,
    event_type: EventType,
    mutations: Vec<Mutation>,
    bytes: ByteMutation,
}

/// The delivery a [`Case`] builds.
#[derive(Debug, Clone)]
struct Input {
    provider: &'static str,
    event_type: Option<String>,
    body: Vec<u8>,
}

impl Input {
    fn delivery(&self) -> RawDelivery<'_> {
        RawDelivery {
            source: "fuzz",
            provider: self.provider,
            delivery_id: "fuzz-delivery",
            event_type: self.event_type.as_deref(),
            received_at_ms: 1_721_952_000_000,
            content_type: Some("application/json"),
            body: &self.body,
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("x".to_owned()),
        Just("usd".to_owned()),
        Just("KWD".to_owned()),
        Just("€UR".to_owned()),
        Just("12.5".to_owned()),
        Just("-0.0001".to_owned()),
        Just("1e5".to_owned()),
        Just("-".to_owned()),
        Just("2019-05-15T15:20:30+05:00".to_owned()),
        Just("9999-12-31T23:59:60-23:59".to_owned()),
        Just("0000-01-01T00:00:00.9999999999Z".to_owned()),
        Just("2019-05-15T15:20:30.".to_owned()),
        Just("event_callback".to_owned()),
        Just("payment_intent.succeeded".to_owned()),
        Just("closed".to_owned()),
        Just("delivered".to_owned()),
        Just("\u{0}\u{1f}\u{7f}\u{ffff}\u{10ffff}\u{fe0f}".to_owned()),
        any::<String>(),
    ]
}

fn raw_number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1e308".to_owned()),
        Just("-1e308".to_owned()),
        Just("1e400".to_owned()),
        Just("-1e400".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-0".to_owned()),
        Just("0.0".to_owned()),
        Just("4.9e-324".to_owned()),
        Just("1".repeat(400)),
        Just(format!("0.{}1", "0".repeat(399))),
        Just(format!("{}.{}", "9".repeat(200), "9".repeat(200))),
        Just(format!("1e{}", "9".repeat(40))),
        Just(format!("1.5e-{}", "9".repeat(40))),
    ]
}

fn replacement() -> impl Strategy<Value = Replacement> {
    prop_oneof![
        Just(Replacement::Null),
        any::<bool>().prop_map(Replacement::Bool),
        prop_oneof![
            any::<i64>(),
            Just(0i64),
            Just(-1),
            Just(i64::MIN),
            Just(i64::MAX),
            Just(i64::from(i32::MAX) + 1),
            Just(i64::MAX / 1000 + 1),
        ]
        .prop_map(Replacement::Int),
        prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(Replacement::U64),
        prop_oneof![
            Just(0.5f64),
            Just(-0.0),
            Just(1e308),
            Just(-1e308),
            Just(f64::MIN_POSITIVE),
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
        ]
        .prop_map(Replacement::Float),
        text().prop_map(Replacement::Text),
        (
            prop_oneof![Just('a'), Just('é'), Just('😀'), Just('"'), Just('\\')],
            // 1 MiB strings are rare: each costs milliseconds, the others microseconds.
            prop_oneof![8 => Just(256usize), 3 => Just(65_536), 1 => Just(1 << 20)],
        )
            .prop_map(|(c, n)| Replacement::Long(c, n)),
        Just(Replacement::EmptyArray),
        Just(Replacement::EmptyObject),
        Just(Replacement::WrapInArray),
        Just(Replacement::WrapInObject),
        raw_number().prop_map(Replacement::RawNumber),
        (
            prop_oneof![Just(128usize), Just(129), Just(10_000), Just(100_000)],
            any::<bool>()
        )
            .prop_map(|(depth, objects)| Replacement::Deep { depth, objects }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), replacement()).prop_map(|(node, with)| Mutation::Replace { node, with }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(node, member)| Mutation::Remove { node, member }),
    ]
}

fn invalid_utf8() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![0xff]),
        Just(vec![0xc3]),
        Just(vec![0xc0, 0xaf]),
        Just(vec![0xed, 0xa0, 0x80]),
        Just(vec![0xf4, 0x90, 0x80, 0x80]),
        Just(b"\\ud800".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..8),
    ]
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    prop_oneof![
        6 => Just(ByteMutation::None),
        1 => any::<Index>().prop_map(ByteMutation::Truncate),
        1 => (any::<Index>(), invalid_utf8()).prop_map(|(at, b)| ByteMutation::Insert(at, b)),
        1 => (any::<Index>(), 1..=255u8).prop_map(|(at, x)| ByteMutation::Flip(at, x)),
        1 => Just(ByteMutation::Bom),
        1 => proptest::collection::vec(any::<u8>(), 0..512).prop_map(ByteMutation::Random),
    ]
}

fn event_type() -> impl Strategy<Value = EventType> {
    prop_oneof![
        8 => Just(EventType::AsSeed),
        1 => Just(EventType::Absent),
        1 => prop_oneof![
            text(),
            proptest::sample::select(SEEDS).prop_map(|s| s.1.unwrap_or("").to_owned()),
        ]
        .prop_map(EventType::Other),
    ]
}

/// A mutated delivery of one of `seeds`, mostly sent to the seed's own provider.
fn case_from(seeds: Vec<usize>) -> impl Strategy<Value = Case> {
    (
        proptest::sample::select(seeds),
        prop_oneof![9 => Just(None), 1 => proptest::sample::select(PROVIDERS).prop_map(Some)],
        event_type(),
        proptest::collection::vec(mutation(), 0..4),
        byte_mutation(),
    )
        .prop_map(|(seed, other, event_type, mutations, bytes)| Case {
            seed,
            provider: other.unwrap_or(SEEDS[seed].0),
            event_type,
            mutations,
            bytes,
        })
}

/// A mutated delivery of any seed.
fn case() -> impl Strategy<Value = Case> {
    case_from((0..SEEDS.len()).collect())
}

// ---------------------------------------------------------------------------------------
// Building the input.
// ---------------------------------------------------------------------------------------

/// Values in pre-order (the root is 0) that satisfy `want`.
fn count(v: &Json, want: fn(&Json) -> bool) -> usize {
    let own = usize::from(want(v));
    own + match v {
        Json::Array(items) => items.iter().map(|i| count(i, want)).sum(),
        Json::Object(members) => members.values().map(|i| count(i, want)).sum(),
        _ => 0,
    }
}

/// The `n`-th value in pre-order that satisfies `want`.
fn nth_mut(v: &mut Json, n: usize, want: fn(&Json) -> bool) -> Option<&mut Json> {
    fn go<'a>(v: &'a mut Json, left: &mut usize, want: fn(&Json) -> bool) -> Option<&'a mut Json> {
        if want(v) {
            if *left == 0 {
                return Some(v);
            }
            *left -= 1;
        }
        match v {
            Json::Array(items) => items.iter_mut().find_map(|i| go(i, left, want)),
            Json::Object(members) => members.values_mut().find_map(|i| go(i, left, want)),
            _ => None,
        }
    }
    go(v, &mut { n }, want)
}

fn any_value(_: &Json) -> bool {
    true
}

fn non_empty_container(v: &Json) -> bool {
    match v {
        Json::Array(items) => !items.is_empty(),
        Json::Object(members) => !members.is_empty(),
        _ => false,
    }
}

/// A placeholder string swapped for raw text once the body is serialised.
fn marker(i: usize) -> String {
    format!("@@sluice-fuzz-raw-{i}@@")
}

fn replace(node: &mut Json, with: &Replacement, splices: &mut Vec<(String, String)>) {
    let mut splice = |text: String| {
        let m = marker(splices.len());
        splices.push((format!("\"{m}\""), text));
        Json::String(m)
    };
    *node = match with {
        Replacement::Null => Json::Null,
        Replacement::Bool(b) => json!(b),
        Replacement::Int(i) => json!(i),
        Replacement::U64(u) => json!(u),
        Replacement::Float(f) => json!(f),
        Replacement::Text(s) => json!(s),
        Replacement::Long(c, n) => Json::String(std::iter::repeat_n(*c, *n).collect()),
        Replacement::EmptyArray => json!([]),
        Replacement::EmptyObject => json!({}),
        Replacement::WrapInArray => json!([node.take()]),
        Replacement::WrapInObject => json!({"id": node.take()}),
        Replacement::RawNumber(text) => splice(text.clone()),
        Replacement::Deep { depth, objects } => splice(if *objects {
            format!("{}1{}", "{\"a\":".repeat(*depth), "}".repeat(*depth))
        } else {
            format!("{}1{}", "[".repeat(*depth), "]".repeat(*depth))
        }),
    };
}

fn apply(body: &mut Json, m: &Mutation, splices: &mut Vec<(String, String)>) {
    match m {
        Mutation::Replace { node, with } => {
            let n = node.index(count(body, any_value));
            if let Some(target) = nth_mut(body, n, any_value) {
                replace(target, with, splices);
            }
        }
        Mutation::Remove { node, member } => {
            let containers = count(body, non_empty_container);
            if containers == 0 {
                return;
            }
            match nth_mut(body, node.index(containers), non_empty_container) {
                Some(Json::Array(items)) => {
                    items.remove(member.index(items.len()));
                }
                Some(Json::Object(members)) => {
                    let key = members.keys().nth(member.index(members.len())).cloned();
                    if let Some(key) = key {
                        members.remove(&key);
                    }
                }
                _ => {}
            }
        }
    }
}

fn mutate_bytes(body: &mut Vec<u8>, m: &ByteMutation) {
    match m {
        ByteMutation::None => {}
        ByteMutation::Truncate(at) => body.truncate(at.index(body.len().max(1))),
        ByteMutation::Insert(at, bytes) => {
            let at = at.index(body.len() + 1);
            body.splice(at..at, bytes.iter().copied());
        }
        ByteMutation::Flip(at, x) => {
            if !body.is_empty() {
                let at = at.index(body.len());
                body[at] ^= x;
            }
        }
        ByteMutation::Bom => {
            body.splice(0..0, [0xef, 0xbb, 0xbf]);
        }
        ByteMutation::Random(bytes) => body.clone_from(bytes),
    }
}

/// The seeds parsed once: the driver clones them instead of re-parsing per execution.
fn parsed_seeds() -> &'static [Json] {
    static PARSED: std::sync::OnceLock<Vec<Json>> = std::sync::OnceLock::new();
    PARSED.get_or_init(|| {
        SEEDS
            .iter()
            .map(|(_, _, body)| serde_json::from_str(body).expect("seed is JSON"))
            .collect()
    })
}

impl Case {
    fn build(&self) -> Input {
        let (_, seed_type, seed_body) = SEEDS[self.seed];
        let mut body = if self.mutations.is_empty() {
            seed_body.as_bytes().to_vec()
        } else {
            let mut json = parsed_seeds()[self.seed].clone();
            let mut splices = Vec::new();
            for m in &self.mutations {
                apply(&mut json, m, &mut splices);
            }
            let mut text = json.to_string();
            for (marker, raw) in &splices {
                text = text.replacen(marker.as_str(), raw, 1);
            }
            text.into_bytes()
        };
        mutate_bytes(&mut body, &self.bytes);
        Input {
            provider: self.provider,
            event_type: match &self.event_type {
                EventType::AsSeed => seed_type.map(str::to_owned),
                EventType::Absent => None,
                EventType::Other(t) => Some(t.clone()),
            },
            body,
        }
    }
}

// ---------------------------------------------------------------------------------------
// What must hold for every input.
// ---------------------------------------------------------------------------------------

/// The events a provider's mapping may produce.
fn routed_types(provider: &str) -> &'static [&'static str] {
    match provider {
        "stripe" => &[
            stripe::PAYMENT_SUCCEEDED,
            stripe::PAYMENT_FAILED,
            stripe::PAYMENT_REFUNDED,
            stripe::SUBSCRIPTION_CHANGED,
            stripe::INVOICE_PAID,
        ],
        "github" => &[
            github::CODE_PUSHED,
            github::PULL_REQUEST_OPENED,
            github::PULL_REQUEST_CLOSED,
            github::PULL_REQUEST_MERGED,
            github::ISSUE_OPENED,
            github::ISSUE_CLOSED,
        ],
        "shopify" => &[
            shopify::ORDER_PLACED,
            shopify::ORDER_PAID,
            shopify::ORDER_CANCELLED,
        ],
        "sendgrid" => &[
            sendgrid::EMAIL_DELIVERED,
            sendgrid::EMAIL_BOUNCED,
            sendgrid::EMAIL_DROPPED,
            sendgrid::EMAIL_OPENED,
            sendgrid::EMAIL_CLICKED,
        ],
        _ => &[generic::EXTERNAL_EVENT],
    }
}

/// A mapped event is one of the provider's routed types, has a key, and encodes with the
/// catalog schema of its type (what the normalizer does next).
fn check_event(provider: &str, index: usize, m: &Mapped) -> Result<(), String> {
    if !routed_types(provider).contains(&m.event_type) {
        return Err(format!("{provider} produced {}", m.event_type));
    }
    if m.key.is_empty() {
        return Err(format!("{} with an empty key", m.event_type));
    }
    if !m.fields.is_object() {
        return Err(format!("{}: fields are not an object", m.event_type));
    }
    let entry = catalog()
        .latest(m.event_type)
        .map_err(|e| format!("{}: {e}", m.event_type))?;
    sluice_schemas::json::from_json(&full_record(m, index), &entry.schema)
        .map(|_| ())
        .map_err(|e| format!("{} does not encode: {e:?}", m.event_type))
}

/// An `ExternalEvent` carries JSON text without the provider's secret fields.
fn check_external(provider: &str, m: &Mapped) -> Result<(), String> {
    check_event("generic", 0, m)?;
    let payload = m.fields["payload"]
        .as_str()
        .ok_or("ExternalEvent payload is not a string")?;
    let mut parsed: Json =
        serde_json::from_str(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    if redact::redact(provider, &mut parsed) {
        return Err(format!("{provider} secret field left in an ExternalEvent"));
    }
    Ok(())
}

/// Runs `input` through every path that reads a raw body; `Err` names a broken invariant.
/// A panic is the caller's to catch.
fn exercise(input: &Input) -> Result<(), String> {
    let d = input.delivery();
    match normalize::map(&d) {
        Ok(events) => {
            for (i, m) in events.iter().enumerate() {
                check_event(d.provider, i, m)?;
                if m.event_type == generic::EXTERNAL_EVENT {
                    check_external(d.provider, m)?;
                }
            }
        }
        Err(e) => {
            // The error's texts are built too: they go to DLQ headers and logs.
            let _ = (e.class(), e.to_string());
        }
    }
    // `unmapped: generic`.
    match generic::external_event(&d) {
        Ok(m) => check_external(d.provider, &m)?,
        Err(MapError::InvalidJson { .. }) => {}
        Err(other) => return Err(format!("external_event: {other:?}")),
    }
    if d.provider == "sendgrid" {
        for (_, kind, element) in sendgrid::unmapped_elements(&d) {
            let one = RawDelivery {
                event_type: Some(&kind),
                body: element.as_bytes(),
                ..d
            };
            let m = generic::external_event(&one)
                .map_err(|e| format!("unmapped SendGrid element: {e}"))?;
            check_external(d.provider, &m)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `make test`: a few dozen cases per provider.
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn stripe_mutations_map_or_fail_typed(c in case_from(seeds_of("stripe"))) {
        exercise(&c.build()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn github_mutations_map_or_fail_typed(c in case_from(seeds_of("github"))) {
        exercise(&c.build()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn shopify_mutations_map_or_fail_typed(c in case_from(seeds_of("shopify"))) {
        exercise(&c.build()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn sendgrid_mutations_map_or_fail_typed(c in case_from(seeds_of("sendgrid"))) {
        exercise(&c.build()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn slack_mutations_map_or_fail_typed(c in case_from(seeds_of("slack"))) {
        exercise(&c.build()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn generic_mutations_map_or_fail_typed(
        c in case_from([seeds_of("standard_webhooks"), seeds_of("generic_hmac")].concat()),
    ) {
        exercise(&c.build()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_bytes_fail_typed_for_every_provider(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        event_type in proptest::option::of(text()),
    ) {
        for provider in PROVIDERS {
            let input = Input { provider, event_type: event_type.clone(), body: body.clone() };
            exercise(&input).map_err(TestCaseError::fail)?;
        }
    }
}

/// The brief's extremes, for every provider, deterministically: each is a typed error or
/// valid events.
#[test]
fn extreme_bodies_are_typed_errors_for_every_provider() {
    let deep_arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        deep_arrays.into_bytes(),
        deep_objects.into_bytes(),
        format!("[{}]", "1".repeat(400)).into_bytes(),
        b"1e400".to_vec(),
        b"{\"type\":\"a\xff\"}".to_vec(),
        b"{\"type\":\"\\ud800\"}".to_vec(),
        fixture!("stripe/invoice.paid.json").as_bytes()[..100].to_vec(),
        Vec::new(),
    ];
    for provider in PROVIDERS {
        for body in &bodies {
            for event_type in [None, Some("push"), Some("orders/create")] {
                let input = Input {
                    provider,
                    event_type: event_type.map(str::to_owned),
                    body: body.clone(),
                };
                let d = input.delivery();
                assert!(
                    matches!(normalize::map(&d), Err(MapError::InvalidJson { .. })),
                    "{provider} {event_type:?} {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(40)])
                );
                exercise(&input).unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// `make fuzz`: the same strategies for a set time.
// ---------------------------------------------------------------------------------------

/// Where crashing inputs go, and which one to replay.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Writes a crashing input as `<dir>/crash-<seed>-<n>.body` (the exact bytes) and `.txt`
/// (provider, event type, what failed, the generated case).
fn save_crash(dir: &str, seed: u64, n: u64, input: &Input, case: &Case, what: &str) -> String {
    let stem = format!("{dir}/crash-{seed}-{n}");
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(format!("{stem}.body"), &input.body);
    let mut txt = Vec::new();
    let _ = writeln!(txt, "provider: {}", input.provider);
    let _ = writeln!(
        txt,
        "event_type: {}",
        input.event_type.as_deref().unwrap_or("")
    );
    let _ = writeln!(txt, "failure: {what}");
    let _ = writeln!(txt, "case: {case:#?}");
    let _ = std::fs::write(format!("{stem}.txt"), txt);
    stem
}

/// Replays `<stem>.body` with the provider and event type from `<stem>.txt`, without
/// catching anything, so a panic shows its backtrace.
fn replay(stem: &str) {
    let body = std::fs::read(format!("{stem}.body")).expect("crash body");
    let txt = std::fs::read_to_string(format!("{stem}.txt")).expect("crash description");
    let field = |name: &str| {
        txt.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let provider = field("provider: ");
    let provider = PROVIDERS
        .iter()
        .find(|p| **p == provider)
        .expect("known provider");
    let event_type = Some(field("event_type: ")).filter(|t| !t.is_empty());
    let input = Input {
        provider,
        event_type,
        body,
    };
    exercise(&input).unwrap();
    println!("fuzz: replayed {stem}: no crash");
}

/// What one fuzzing thread did.
#[derive(Default)]
struct Tally {
    executions: u64,
    crashes: u64,
}

fn fuzz_thread(seed: u64, deadline: Instant, dir: &str, total: &AtomicU64) -> Tally {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::XorShift, &bytes),
    );
    let strategy = case();
    let mut tally = Tally::default();
    while tally.executions % 256 != 0 || Instant::now() < deadline {
        let case = strategy
            .new_tree(&mut runner)
            .expect("strategy generates")
            .current();
        let input = case.build();
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&input)));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(broken)) => Some(format!("invariant: {broken}")),
            Err(panic) => Some(format!(
                "panic: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(non-string payload)")
            )),
        };
        if let Some(what) = failure {
            let stem = save_crash(dir, seed, tally.executions, &input, &case, &what);
            eprintln!("fuzz: crash ({what}), input saved to {stem}.body/.txt");
            tally.crashes += 1;
        }
        tally.executions += 1;
        if tally.executions % 4096 == 0 {
            total.fetch_add(4096, Ordering::Relaxed);
        }
    }
    tally
}

/// `make fuzz`: mutated fixtures through every mapping for `FUZZ_SECONDS` (default 600)
/// on `FUZZ_THREADS` threads (default 1), seeded by `FUZZ_SEED` (default: the clock).
/// Crashing inputs are saved under `FUZZ_CRASH_DIR`; `FUZZ_REPLAY=<dir>/crash-…` (without
/// extension) replays one.
#[test]
#[ignore = "long-running; `make fuzz`"]
fn fuzz_normalizers_for_a_set_time() {
    if let Ok(stem) = std::env::var("FUZZ_REPLAY") {
        replay(&stem);
        return;
    }
    let seconds: u64 = env_or("FUZZ_SECONDS", "600").parse().expect("FUZZ_SECONDS");
    let threads: u64 = env_or("FUZZ_THREADS", "1").parse().expect("FUZZ_THREADS");
    let seed: u64 = match std::env::var("FUZZ_SEED") {
        Ok(s) => s.parse().expect("FUZZ_SEED"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let dir = env_or("FUZZ_CRASH_DIR", "fuzz-crashes");
    println!("fuzz: seed {seed}, {threads} thread(s), {seconds} s, crashes to {dir}/");
    parsed_seeds();
    // Panics are counted and saved, not printed one by one.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let total = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (dir, total) = (&dir, &total);
                s.spawn(move || fuzz_thread(seed.wrapping_add(t), deadline, dir, total))
            })
            .collect();
        s.spawn(|| {
            let mut next = Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if Instant::now() >= next {
                    println!(
                        "fuzz: {} executions after {} s",
                        total.load(Ordering::Relaxed),
                        started.elapsed().as_secs()
                    );
                    next += Duration::from_secs(60);
                }
            }
        });
        let tallies = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        tallies
    });
    let _ = std::panic::take_hook();
    let executions: u64 = tallies.iter().map(|t| t.executions).sum();
    let crashes: u64 = tallies.iter().map(|t| t.crashes).sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz: {executions} executions in {secs:.0} s ({:.0}/s), {crashes} crashes",
        executions as f64 / secs
    );
    assert_eq!(crashes, 0, "crashing inputs saved under {dir}/");
}
