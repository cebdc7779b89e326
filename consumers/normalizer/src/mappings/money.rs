//! Money as the catalog's `dev.sluice.events.common.Money` JSON:
//! `{"amount": "<decimal string>", "currency": "<ISO-4217 upper case>"}`.
//!
//! Amounts are exact decimal strings, never floats; the schema stores them as
//! `decimal(20, 4)`, so at most 4 decimal places and 16 integer digits.

use serde_json::{json, Value as Json};

/// Currencies Stripe treats as zero-decimal: an API amount of `500` JPY is ¥500.
///
/// See <https://docs.stripe.com/currencies#zero-decimal>.
const ZERO_DECIMAL: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
];

/// Currencies Stripe treats as three-decimal: an API amount of `5120` KWD is 5.120 KWD.
///
/// See <https://docs.stripe.com/currencies#three-decimal>.
const THREE_DECIMAL: &[&str] = &["BHD", "JOD", "KWD", "OMR", "TND"];

/// Integer digits that fit `decimal(20, 4)`.
const MAX_INTEGER_DIGITS: usize = 16;
/// Fraction digits that fit `decimal(20, 4)`.
const MAX_FRACTION_DIGITS: usize = 4;

/// Validates an ISO-4217 code (three ASCII letters, any case) and returns it upper-cased.
pub fn currency_code(currency: &str) -> Result<String, String> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(currency.to_ascii_uppercase())
    } else {
        Err(format!(
            "`{currency}` is not an ISO-4217 currency code (three letters)"
        ))
    }
}

/// Decimal places of `currency`'s minor unit in Stripe's API (`currency` upper case).
///
/// Follows <https://docs.stripe.com/currencies#zero-decimal>: zero-decimal currencies have
/// no minor unit, the three-decimal ones divide by 1000, every other currency by 100.
/// Stripe's special cases (ISK, HUF, TWD) stay two-decimal in the API even where only
/// whole units can be charged or paid out, so they divide by 100 too.
pub fn minor_unit_digits(currency: &str) -> u32 {
    if ZERO_DECIMAL.contains(&currency) {
        0
    } else if THREE_DECIMAL.contains(&currency) {
        3
    } else {
        2
    }
}

/// Money from an amount in the currency's smallest unit, as Stripe sends it
/// (`2000` USD → `"20.00"`, `500` JPY → `"500"`, `5120` KWD → `"5.120"`).
///
/// The decimal places follow Stripe's currency table, see [`minor_unit_digits`] and
/// <https://docs.stripe.com/currencies#zero-decimal>. Negative amounts keep their sign.
pub fn from_minor_units(amount: i64, currency: &str) -> Result<Json, String> {
    let currency = currency_code(currency)?;
    let scale = minor_unit_digits(&currency) as usize;
    let digits = amount.unsigned_abs().to_string();
    let (int, frac) = if scale == 0 {
        (digits, String::new())
    } else if digits.len() > scale {
        let (i, f) = digits.split_at(digits.len() - scale);
        (i.to_string(), f.to_string())
    } else {
        ("0".to_string(), format!("{digits:0>scale$}"))
    };
    if int.len() > MAX_INTEGER_DIGITS {
        return Err(format!(
            "amount {amount} {currency} does not fit decimal(20,4)"
        ));
    }
    let sign = if amount < 0 { "-" } else { "" };
    let text = if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    };
    Ok(json!({"amount": text, "currency": currency}))
}

/// Money from a decimal string in major units, as Shopify sends it (`"199.00"`).
///
/// The amount must be a plain decimal: an optional `-`, digits, and optionally `.` and
/// 1 to 4 digits (no exponent, no `+`, no spaces, no thousands separators). It is kept
/// exactly as sent.
pub fn from_decimal_string(amount: &str, currency: &str) -> Result<Json, String> {
    let currency = currency_code(currency)?;
    let unsigned = amount.strip_prefix('-').unwrap_or(amount);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return Err(format!("`{amount}` is not a plain decimal number"));
    }
    if frac.is_some_and(|f| f.len() > MAX_FRACTION_DIGITS) {
        return Err(format!(
            "`{amount}` has more than {MAX_FRACTION_DIGITS} decimal places"
        ));
    }
    if int.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
        return Err(format!("`{amount}` does not fit decimal(20,4)"));
    }
    Ok(json!({"amount": amount, "currency": currency}))
}

/// Shared by the provider modules' tests: deliveries and validation of mapped events
/// against the real catalog schema.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::OnceLock;

    use serde_json::Value as Json;
    use sluice_schemas::Catalog;

    use crate::mappings::{event_id, MapError, Mapped, RawDelivery};

    /// `received_at` of every test delivery: 2024-07-26T00:00:00Z.
    pub(crate) const RECEIVED_AT_MS: i64 = 1_721_952_000_000;

    pub(crate) fn catalog() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| Catalog::embedded().expect("embedded catalog"))
    }

    /// A delivery of `body` from the source named like the provider.
    pub(crate) fn delivery<'a>(
        provider: &'a str,
        event_type: Option<&'a str>,
        body: &'a [u8],
    ) -> RawDelivery<'a> {
        RawDelivery {
            source: provider,
            provider,
            delivery_id: "d-1",
            event_type,
            received_at_ms: RECEIVED_AT_MS,
            content_type: Some("application/json"),
            body,
        }
    }

    /// The full record JSON: `fields` plus the four metadata fields, as the normalizer
    /// builds it.
    pub(crate) fn full_record(mapped: &Mapped, index: usize) -> Json {
        let mut full = serde_json::Map::new();
        full.insert(
            "event_id".into(),
            Json::String(event_id("test-source", "d-1", index)),
        );
        full.insert("occurred_at".into(), Json::from(mapped.occurred_at_ms));
        full.insert(
            "source".into(),
            Json::String("sluice://sources/test-source".into()),
        );
        full.insert(
            "subject".into(),
            mapped.subject.clone().map_or(Json::Null, Json::String),
        );
        let fields = mapped
            .fields
            .as_object()
            .unwrap_or_else(|| panic!("fields of {} are not an object", mapped.event_type));
        for (k, v) in fields {
            assert!(
                !full.contains_key(k),
                "{}: `fields` must not contain metadata field `{k}`",
                mapped.event_type
            );
            full.insert(k.clone(), v.clone());
        }
        Json::Object(full)
    }

    /// Asserts every mapped event converts with the latest catalog schema of its type
    /// (no unknown fields, every required field, exact decimals, timestamps as ms).
    pub(crate) fn assert_valid(mapped: &[Mapped]) {
        for (i, m) in mapped.iter().enumerate() {
            let entry = catalog()
                .latest(m.event_type)
                .unwrap_or_else(|e| panic!("{}: {e}", m.event_type));
            let full = full_record(m, i);
            if let Err(errors) = sluice_schemas::json::from_json(&full, &entry.schema) {
                panic!(
                    "{} (v{}) rejects mapped event {i}: {errors:?}\n{full:#}",
                    m.event_type, entry.version
                );
            }
        }
    }

    /// Maps with `map` and validates, returning the events.
    pub(crate) fn map_valid(
        map: fn(&RawDelivery<'_>) -> Result<Vec<Mapped>, MapError>,
        delivery: &RawDelivery<'_>,
    ) -> Vec<Mapped> {
        let mapped = map(delivery).unwrap_or_else(|e| panic!("{e}"));
        assert_valid(&mapped);
        mapped
    }

    /// The `reason` of an `Invalid` error, panicking on anything else.
    pub(crate) fn invalid_reason(result: Result<Vec<Mapped>, MapError>) -> String {
        match result {
            Err(MapError::Invalid { reason, .. }) => reason,
            other => panic!("expected MapError::Invalid, got {other:?}"),
        }
    }

    /// A JSON body with one change applied, as bytes.
    pub(crate) fn edited(fixture: &str, edit: impl FnOnce(&mut Json)) -> Vec<u8> {
        let mut json: Json = serde_json::from_str(fixture).expect("fixture is JSON");
        edit(&mut json);
        serde_json::to_vec(&json).expect("serialisable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(m: &Json) -> &str {
        m["amount"].as_str().unwrap()
    }

    #[test]
    fn two_decimal_currencies_divide_by_100() {
        let m = from_minor_units(2000, "usd").unwrap();
        assert_eq!(m, json!({"amount": "20.00", "currency": "USD"}));
        assert_eq!(amount(&from_minor_units(1099, "EUR").unwrap()), "10.99");
        assert_eq!(amount(&from_minor_units(5, "gbp").unwrap()), "0.05");
        assert_eq!(amount(&from_minor_units(0, "usd").unwrap()), "0.00");
        // Stripe's special cases stay two-decimal in the API.
        assert_eq!(amount(&from_minor_units(50000, "isk").unwrap()), "500.00");
        assert_eq!(amount(&from_minor_units(1000, "HUF").unwrap()), "10.00");
    }

    #[test]
    fn zero_decimal_currencies_have_no_minor_unit() {
        assert_eq!(
            from_minor_units(500, "jpy").unwrap(),
            json!({"amount": "500", "currency": "JPY"})
        );
        for c in ZERO_DECIMAL {
            assert_eq!(amount(&from_minor_units(1234, c).unwrap()), "1234", "{c}");
        }
        assert_eq!(amount(&from_minor_units(0, "krw").unwrap()), "0");
    }

    #[test]
    fn three_decimal_currencies_divide_by_1000() {
        assert_eq!(
            from_minor_units(5120, "kwd").unwrap(),
            json!({"amount": "5.120", "currency": "KWD"})
        );
        for c in THREE_DECIMAL {
            assert_eq!(amount(&from_minor_units(10, c).unwrap()), "0.010", "{c}");
        }
    }

    #[test]
    fn negative_amounts_keep_their_sign() {
        assert_eq!(amount(&from_minor_units(-2000, "usd").unwrap()), "-20.00");
        assert_eq!(amount(&from_minor_units(-5, "usd").unwrap()), "-0.05");
        assert_eq!(amount(&from_minor_units(-500, "jpy").unwrap()), "-500");
        assert_eq!(amount(&from_minor_units(-1, "bhd").unwrap()), "-0.001");
        assert_eq!(
            amount(&from_decimal_string("-12.5", "usd").unwrap()),
            "-12.5"
        );
    }

    #[test]
    fn amounts_beyond_decimal_20_4_are_rejected() {
        assert!(from_minor_units(i64::MAX, "usd").is_err());
        assert!(from_minor_units(i64::MIN, "jpy").is_err());
        // 16 integer digits still fit.
        assert_eq!(
            amount(&from_minor_units(999_999_999_999_999_999, "usd").unwrap()),
            "9999999999999999.99"
        );
    }

    #[test]
    fn invalid_currency_codes_are_rejected() {
        for bad in ["", "US", "USDD", "U5D", "€UR", " us"] {
            assert!(from_minor_units(1, bad).is_err(), "{bad:?}");
            assert!(from_decimal_string("1", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decimal_strings_are_kept_exactly_and_validated() {
        assert_eq!(
            from_decimal_string("199.00", "usd").unwrap(),
            json!({"amount": "199.00", "currency": "USD"})
        );
        assert_eq!(amount(&from_decimal_string("500", "JPY").unwrap()), "500");
        assert_eq!(
            amount(&from_decimal_string("1.2345", "USD").unwrap()),
            "1.2345"
        );
        for bad in [
            "",
            "-",
            "1.",
            ".5",
            "1.23456",
            "1e5",
            "+1",
            " 1",
            "1,000.00",
            "NaN",
            "1.2.3",
            "12345678901234567",
        ] {
            assert!(from_decimal_string(bad, "USD").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn money_validates_against_the_catalog_money_record() {
        // Every shape produced here must be accepted by decimal(20,4).
        for m in [
            from_minor_units(2000, "usd").unwrap(),
            from_minor_units(500, "jpy").unwrap(),
            from_minor_units(-5120, "kwd").unwrap(),
            from_decimal_string("199.00", "usd").unwrap(),
        ] {
            sluice_schemas::json::parse_decimal(amount(&m), 20, 4)
                .unwrap_or_else(|e| panic!("{m}: {e}"));
        }
    }
}
