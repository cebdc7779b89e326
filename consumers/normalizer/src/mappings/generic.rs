//! The generic mapping: a delivery no provider-specific mapping covers becomes a
//! `dev.sluice.events.external.ExternalEvent` carrying the raw body.
//!
//! Used for providers without a mapping (`standard_webhooks`, `generic_hmac`, …) and, via
//! [`external_event`], by the normalizer for a source configured `unmapped: generic` when
//! its provider's mapping answers [`MapError::Unmapped`].
//!
//! - key: the delivery id. Nothing in an arbitrary body names the business entity, so
//!   there is no ordering to keep beyond "a redelivery lands with the original".
//! - subject: none.
//! - occurred_at: when sluice received the delivery; for `standard_webhooks` the body's
//!   `timestamp` (RFC 3339, "when the event occurred" per the Standard Webhooks spec) when
//!   present and valid.
//!
//! This module also holds the small JSON readers every provider mapping uses
//! ([`Fields`], [`parse_rfc3339_ms`]); they would sit better in `normalize/mod.rs` or
//! a `normalize/fields.rs`.

use serde_json::{json, Value as Json};
use sluice_schemas::metadata::parse_rfc3339_ms;

use super::{money, redact};
use super::{parse_json, MapError, Mapped, RawDelivery};

/// Full Avro name of the generic event.
pub const EXTERNAL_EVENT: &str = "dev.sluice.events.external.ExternalEvent";

/// Maps any delivery to one `ExternalEvent`.
pub fn map(delivery: &RawDelivery<'_>) -> Result<Vec<Mapped>, MapError> {
    external_event(delivery).map(|m| vec![m])
}

/// The delivery as an `ExternalEvent`: `provider`, `source_instance`, `event_type` (the
/// gateway's, else the body's top-level string `type`), `delivery_id`, `received_at`,
/// `content_type` and the body as UTF-8 JSON text in `payload`, without the provider's
/// documented secret fields (see [`redact`]; Slack's `token` under `unmapped: generic`).
///
/// Fails with [`MapError::InvalidJson`] when the body is not UTF-8 JSON, since the
/// schema's `payload` is JSON text.
pub fn external_event(delivery: &RawDelivery<'_>) -> Result<Mapped, MapError> {
    let body = parse_json(delivery)?;
    let payload = std::str::from_utf8(delivery.body).map_err(|e| MapError::InvalidJson {
        provider: delivery.provider.to_string(),
        reason: format!("body is not UTF-8: {e}"),
    })?;
    let event_type = delivery
        .event_type
        .map(str::to_string)
        .or_else(|| body.get("type").and_then(Json::as_str).map(str::to_string));
    let occurred_at_ms = match delivery.provider {
        "standard_webhooks" => body
            .get("timestamp")
            .and_then(Json::as_str)
            .and_then(parse_rfc3339_ms)
            .unwrap_or(delivery.received_at_ms),
        _ => delivery.received_at_ms,
    };
    let payload = redact::redacted_payload(delivery.provider, body, payload);
    Ok(Mapped {
        event_type: EXTERNAL_EVENT,
        key: delivery.delivery_id.to_string(),
        subject: None,
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
    })
}

// ---------------------------------------------------------------------------------------
// Shared by the provider mappings.
// ---------------------------------------------------------------------------------------

/// Typed reads from a JSON body by path (`data.object.currency`, `items.data[0].price`,
/// `[3].email`), with [`MapError::Invalid`] errors that name the path.
///
/// JSON `null` counts as absent: `opt_*` readers return `None` for it, required readers
/// report the field as missing. A present value of the wrong type is always an error.
pub(crate) struct Fields<'j> {
    root: &'j Json,
    provider: String,
    event_type: String,
}

impl<'j> Fields<'j> {
    pub(crate) fn new(root: &'j Json, provider: &str, event_type: &str) -> Self {
        Self {
            root,
            provider: provider.to_string(),
            event_type: event_type.to_string(),
        }
    }

    /// An [`MapError::Invalid`] for this delivery.
    pub(crate) fn invalid(&self, reason: impl Into<String>) -> MapError {
        MapError::Invalid {
            provider: self.provider.clone(),
            event_type: self.event_type.clone(),
            reason: reason.into(),
        }
    }

    fn missing(&self, path: &str) -> MapError {
        self.invalid(format!("missing required field `{path}`"))
    }

    fn wrong_type(&self, path: &str, expected: &str, found: &Json) -> MapError {
        self.invalid(format!(
            "`{path}` must be {expected}, found {}",
            type_name(found)
        ))
    }

    /// The value at `path`, `None` when absent or null.
    pub(crate) fn get(&self, path: &str) -> Option<&'j Json> {
        lookup(self.root, path).filter(|v| !v.is_null())
    }

    pub(crate) fn opt_str(&self, path: &str) -> Result<Option<&'j str>, MapError> {
        match self.get(path) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(path, "a string", other)),
        }
    }

    pub(crate) fn str(&self, path: &str) -> Result<&'j str, MapError> {
        self.opt_str(path)?.ok_or_else(|| self.missing(path))
    }

    pub(crate) fn opt_i64(&self, path: &str) -> Result<Option<i64>, MapError> {
        match self.get(path) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(path, "an integer", v)),
        }
    }

    pub(crate) fn i64(&self, path: &str) -> Result<i64, MapError> {
        self.opt_i64(path)?.ok_or_else(|| self.missing(path))
    }

    /// A 32-bit integer (Avro `int`).
    pub(crate) fn i32(&self, path: &str) -> Result<i32, MapError> {
        let v = self.i64(path)?;
        i32::try_from(v)
            .map_err(|_| self.invalid(format!("`{path}` ({v}) does not fit a 32-bit int")))
    }

    pub(crate) fn opt_bool(&self, path: &str) -> Result<Option<bool>, MapError> {
        match self.get(path) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(path, "a boolean", other)),
        }
    }

    /// An identifier sent as a string or an integer (Shopify and GitHub ids are numbers),
    /// as a string.
    pub(crate) fn opt_id(&self, path: &str) -> Result<Option<String>, MapError> {
        match self.get(path) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(Json::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
            Some(other) => Err(self.wrong_type(path, "a string or integer id", other)),
        }
    }

    pub(crate) fn id(&self, path: &str) -> Result<String, MapError> {
        self.opt_id(path)?.ok_or_else(|| self.missing(path))
    }

    /// A reference that is either an id string or an expanded object with an `id`
    /// (Stripe's expandable fields, e.g. `customer`).
    pub(crate) fn opt_ref(&self, path: &str) -> Result<Option<String>, MapError> {
        match self.get(path) {
            Some(Json::Object(_)) => self.opt_id(&format!("{path}.id")),
            _ => self.opt_id(path),
        }
    }

    pub(crate) fn reference(&self, path: &str) -> Result<String, MapError> {
        self.opt_ref(path)?.ok_or_else(|| self.missing(path))
    }

    /// The array at `path`; empty when absent or null.
    pub(crate) fn opt_array(&self, path: &str) -> Result<&'j [Json], MapError> {
        match self.get(path) {
            None => Ok(&[]),
            Some(Json::Array(items)) => Ok(items),
            Some(other) => Err(self.wrong_type(path, "an array", other)),
        }
    }

    pub(crate) fn array(&self, path: &str) -> Result<&'j [Json], MapError> {
        match self.get(path) {
            None => Err(self.missing(path)),
            Some(_) => self.opt_array(path),
        }
    }

    /// Epoch seconds at `path` as epoch milliseconds.
    pub(crate) fn opt_secs_as_ms(&self, path: &str) -> Result<Option<i64>, MapError> {
        match self.opt_i64(path)? {
            None => Ok(None),
            Some(s) => s
                .checked_mul(1000)
                .map(Some)
                .ok_or_else(|| self.invalid(format!("`{path}` ({s}) is out of range"))),
        }
    }

    /// An RFC 3339 time at `path` (any offset) as epoch milliseconds.
    pub(crate) fn opt_rfc3339_ms(&self, path: &str) -> Result<Option<i64>, MapError> {
        match self.opt_str(path)? {
            None => Ok(None),
            Some(s) => parse_rfc3339_ms(s)
                .map(Some)
                .ok_or_else(|| self.invalid(format!("`{path}` (`{s}`) is not an RFC 3339 time"))),
        }
    }

    /// Money from an amount in minor units at `amount_path` and a currency code at
    /// `currency_path` (Stripe).
    pub(crate) fn money_minor(
        &self,
        amount_path: &str,
        currency_path: &str,
    ) -> Result<Json, MapError> {
        let amount = self.i64(amount_path)?;
        let currency = self.str(currency_path)?;
        money::currency_code(currency)
            .map_err(|e| self.invalid(format!("`{currency_path}`: {e}")))?;
        money::from_minor_units(amount, currency)
            .map_err(|e| self.invalid(format!("`{amount_path}`: {e}")))
    }

    /// Money from a decimal string at `amount_path` and a currency code at
    /// `currency_path` (Shopify).
    pub(crate) fn money_decimal(
        &self,
        amount_path: &str,
        currency_path: &str,
    ) -> Result<Json, MapError> {
        let amount = self.str(amount_path)?;
        let currency = self.str(currency_path)?;
        money::currency_code(currency)
            .map_err(|e| self.invalid(format!("`{currency_path}`: {e}")))?;
        money::from_decimal_string(amount, currency)
            .map_err(|e| self.invalid(format!("`{amount_path}`: {e}")))
    }
}

fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The value at a dotted path with `[index]` steps: `a.b[0].c`, `[3].email`.
fn lookup<'j>(root: &'j Json, path: &str) -> Option<&'j Json> {
    let mut cur = root;
    for segment in path.split('.') {
        let (name, mut rest) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            cur = cur.get(r[..end].parse::<usize>().ok()?)?;
            rest = &r[end + 1..];
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mappings::money::testing::{assert_valid, delivery, RECEIVED_AT_MS};

    const SLACK_URL_VERIFICATION: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/webhooks/slack/url_verification.json"
    ));
    const STRIPE_SUCCEEDED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/webhooks/stripe/payment_intent.succeeded.json"
    ));

    #[test]
    fn standard_webhooks_delivery_becomes_an_external_event() {
        let body = br#"{"type":"invoice.paid","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"in_1"}}"#;
        let d = RawDelivery {
            source: "standard-webhooks",
            provider: "standard_webhooks",
            delivery_id: "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            event_type: None,
            received_at_ms: RECEIVED_AT_MS,
            content_type: Some("application/json"),
            body,
        };
        let mapped = map(&d).unwrap();
        assert_valid(&mapped);
        let m = &mapped[0];
        assert_eq!(m.event_type, EXTERNAL_EVENT);
        assert_eq!(m.key, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
        assert_eq!(m.subject, None);
        assert_eq!(m.occurred_at_ms, 1_667_507_170_344);
        assert_eq!(m.fields["provider"], "standard_webhooks");
        assert_eq!(m.fields["source_instance"], "standard-webhooks");
        assert_eq!(m.fields["event_type"], "invoice.paid");
        assert_eq!(m.fields["delivery_id"], "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
        assert_eq!(m.fields["received_at"], RECEIVED_AT_MS);
        assert_eq!(m.fields["content_type"], "application/json");
        assert_eq!(m.fields["payload"], std::str::from_utf8(body).unwrap());
    }

    #[test]
    fn gateway_event_type_wins_and_received_at_is_the_default_time() {
        let d = RawDelivery {
            source: "generic",
            provider: "generic_hmac",
            delivery_id: "abc",
            event_type: Some("thing.happened"),
            received_at_ms: RECEIVED_AT_MS,
            content_type: None,
            body: br#"{"type":"other","timestamp":"2022-11-03T20:26:10Z"}"#,
        };
        let mapped = map(&d).unwrap();
        assert_valid(&mapped);
        assert_eq!(mapped[0].fields["event_type"], "thing.happened");
        assert_eq!(mapped[0].fields["content_type"], Json::Null);
        assert_eq!(mapped[0].occurred_at_ms, RECEIVED_AT_MS);
    }

    #[test]
    fn a_json_array_or_scalar_body_is_carried_without_an_event_type() {
        let d = delivery("generic_hmac", None, b"[1,2,3]");
        let mapped = map(&d).unwrap();
        assert_valid(&mapped);
        assert_eq!(mapped[0].fields["event_type"], Json::Null);
        assert_eq!(mapped[0].fields["payload"], "[1,2,3]");
    }

    #[test]
    fn unmapped_deliveries_of_any_provider_convert() {
        // What the normalizer does for `unmapped: generic`: a Slack url_verification and a
        // Stripe event, as sent except for their documented secrets.
        let d = delivery(
            "slack",
            Some("url_verification"),
            SLACK_URL_VERIFICATION.as_bytes(),
        );
        let m = external_event(&d).unwrap();
        assert_valid(std::slice::from_ref(&m));
        assert_eq!(m.fields["event_type"], "url_verification");
        let mut without_token: Json = serde_json::from_str(SLACK_URL_VERIFICATION).unwrap();
        without_token.as_object_mut().unwrap().shift_remove("token");
        assert_eq!(m.fields["payload"], without_token.to_string());

        let d = delivery("stripe", None, STRIPE_SUCCEEDED.as_bytes());
        let m = external_event(&d).unwrap();
        assert_valid(std::slice::from_ref(&m));
        assert_eq!(m.fields["event_type"], "payment_intent.succeeded");
        assert_eq!(m.fields["provider"], "stripe");
        // The PaymentIntent's client secret stays out; everything else is carried.
        let mut expected: Json = serde_json::from_str(STRIPE_SUCCEEDED).unwrap();
        let object = expected["data"]["object"].as_object_mut().unwrap();
        assert!(
            object.shift_remove("client_secret").is_some(),
            "fixture has one"
        );
        assert_eq!(m.fields["payload"], expected.to_string());
    }

    /// Under `unmapped: generic` a Slack envelope the mapping does not cover (here
    /// `app_rate_limited`; `url_verification` above) reached the events topic with the
    /// app's verification token.
    #[test]
    fn slack_token_does_not_reach_the_external_event() {
        let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","team_id":"T1","minute_rate_limited":1518467820,"api_app_id":"A1","type":"app_rate_limited"}"#;
        let m = external_event(&delivery("slack", Some("app_rate_limited"), body)).unwrap();
        assert_valid(std::slice::from_ref(&m));
        let payload = m.fields["payload"].as_str().unwrap();
        assert!(!payload.contains("Jhj5dZrVaK7ZwHHjRyZWjbDl"), "{payload}");
        assert_eq!(
            payload,
            r#"{"team_id":"T1","minute_rate_limited":1518467820,"api_app_id":"A1","type":"app_rate_limited"}"#
        );
    }

    #[test]
    fn stripe_client_secret_does_not_reach_the_external_event() {
        let body = br#"{"id":"evt_1","type":"payment_intent.created","data":{"object":{"id":"pi_1","client_secret":"pi_1_secret_xyz"}}}"#;
        let m = external_event(&delivery("stripe", None, body)).unwrap();
        let payload = m.fields["payload"].as_str().unwrap();
        assert!(!payload.contains("pi_1_secret_xyz"), "{payload}");
        assert!(payload.contains(r#""id":"pi_1""#), "{payload}");
    }

    #[test]
    fn generic_providers_keep_their_body_as_sent() {
        // No documented secrets for standard webhooks or generic HMAC: nothing is guessed.
        let body = br#"{"type":"x","token":"t","secret":"s","password":"p"}"#;
        for provider in ["standard_webhooks", "generic_hmac"] {
            let m = external_event(&delivery(provider, None, body)).unwrap();
            assert_eq!(m.fields["payload"], std::str::from_utf8(body).unwrap());
        }
    }

    #[test]
    fn non_json_and_non_utf8_bodies_are_invalid_json() {
        for body in [
            &b"not json"[..],
            b"",
            b"{\"a\":\"\xff\"}",
            b"\xef\xbb\xbf{}",
        ] {
            let d = delivery("generic_hmac", Some("x"), body);
            assert!(
                matches!(map(&d), Err(MapError::InvalidJson { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2019-05-15T15:20:30Z"),
            Some(1_557_933_630_000)
        );
        // Same instant, written with an offset.
        assert_eq!(
            parse_rfc3339_ms("2019-05-15T10:20:30-05:00"),
            Some(1_557_933_630_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2019-05-15T17:20:30.5+02:00"),
            Some(1_557_933_630_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2019-05-15T15:20:30.123456789z"),
            Some(1_557_933_630_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2008-01-10T11:00:00-0500"),
            Some(1_199_980_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        // RFC 3339 (5.6) lets applications write a space for the `T`.
        assert_eq!(
            parse_rfc3339_ms("2019-05-15 15:20:30Z"),
            parse_rfc3339_ms("2019-05-15T15:20:30Z")
        );
        for bad in [
            "",
            "2019-05-15",
            "2019-05-15T15:20:30",
            "2019-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2019-05-15T24:00:00Z",
            "2019-05-15T15:20:30.Z",
            "2019-05-15T15:20:30+5:00",
            "2019-05-15T15:20:30+05:00x",
            "2019-5-15T15:20:30Z",
            "１９７０-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fields_reader_names_paths_and_types() {
        let body = json!({"a": {"b": [{"c": "x"}, {"c": 7}], "n": null, "id": 42}});
        let f = Fields::new(&body, "p", "e");
        assert_eq!(f.str("a.b[0].c").unwrap(), "x");
        assert_eq!(f.opt_str("a.n").unwrap(), None);
        assert_eq!(f.opt_str("a.b[5].c").unwrap(), None);
        assert_eq!(f.id("a.id").unwrap(), "42");
        assert_eq!(f.id("a.b[0].c").unwrap(), "x");
        let reason = |e: MapError| match e {
            MapError::Invalid { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(f.str("a.b[1].c").unwrap_err()),
            "`a.b[1].c` must be a string, found a number"
        );
        assert_eq!(
            reason(f.str("a.n").unwrap_err()),
            "missing required field `a.n`"
        );
        assert_eq!(
            reason(f.array("a.missing").unwrap_err()),
            "missing required field `a.missing`"
        );
        let arr = json!([{"email": "x@example.com"}]);
        let f = Fields::new(&arr, "p", "e");
        assert_eq!(f.str("[0].email").unwrap(), "x@example.com");
        assert!(reason(f.str("[1].email").unwrap_err()).contains("`[1].email`"));
    }
}
