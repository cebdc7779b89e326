//! Avro values as JSON, for `sluice tail`, the publish API and the demo.
//!
//! Decimals print as exact decimal strings (`"12.3400"`), never floats; timestamps as
//! epoch milliseconds; bytes as base16 strings; unions as the bare branch value.

use apache_avro::schema::{DecimalSchema, Schema};
use apache_avro::types::Value;
use apache_avro::Decimal;
use num_bigint::BigInt;
use serde_json::{json, Map, Value as Json};

/// Converts a decoded Avro value to JSON.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => json!(i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Double(f) => json!(f),
        Value::String(s) | Value::Enum(_, s) => json!(s),
        Value::Uuid(u) => json!(u.to_string()),
        Value::Bytes(b) | Value::Fixed(_, b) => json!(hex(b)),
        Value::Union(_, inner) => to_json(inner),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        // Without the schema the scale is unknown; `to_json_with_schema` prints decimals.
        Value::Decimal(d) => json!(BigInt::from(d.clone()).to_string()),
        other => json!(format!("{other:?}")),
    }
}

/// Like [`to_json`], but uses the schema to print decimals with their scale.
pub fn to_json_with_schema(value: &Value, schema: &Schema) -> Json {
    match (value, schema) {
        (Value::Decimal(d), Schema::Decimal(DecimalSchema { scale, .. })) => {
            json!(format_decimal(&BigInt::from(d.clone()), *scale))
        }
        (Value::Union(i, inner), Schema::Union(u)) => match u.variants().get(*i as usize) {
            Some(branch) => to_json_with_schema(inner, branch),
            None => to_json(inner),
        },
        (Value::Record(fields), Schema::Record(r)) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    let field_schema = r.lookup.get(k).map(|&i| &r.fields[i].schema);
                    let j = match field_schema {
                        Some(s) => to_json_with_schema(v, s),
                        None => to_json(v),
                    };
                    (k.clone(), j)
                })
                .collect(),
        ),
        (Value::Array(items), Schema::Array(a)) => Json::Array(
            items
                .iter()
                .map(|v| to_json_with_schema(v, &a.items))
                .collect(),
        ),
        (Value::Map(m), Schema::Map(ms)) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), to_json_with_schema(v, &ms.types)))
                .collect(),
        ),
        _ => to_json(value),
    }
}

/// Formats an unscaled integer with `scale` digits after the point: (12340, 4) → "1.2340".
pub fn format_decimal(unscaled: &BigInt, scale: usize) -> String {
    let negative = unscaled.sign() == num_bigint::Sign::Minus;
    let digits = unscaled.magnitude().to_string();
    let s = if scale == 0 {
        digits
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        format!("{int}.{frac}")
    } else {
        format!("0.{}{digits}", "0".repeat(scale - digits.len()))
    };
    if negative {
        format!("-{s}")
    } else {
        s
    }
}

/// Parses a decimal string to an Avro decimal at `scale`, refusing values that would lose
/// digits or exceed `precision`.
pub fn parse_decimal(text: &str, precision: usize, scale: usize) -> Result<Decimal, String> {
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(format!("`{text}` is not a decimal number"));
    }
    if frac.len() > scale && frac[scale..].chars().any(|c| c != '0') {
        return Err(format!("`{text}` has more than {scale} decimal places"));
    }
    let mut digits = String::from(int);
    let frac = &frac[..frac.len().min(scale)];
    digits.push_str(frac);
    digits.push_str(&"0".repeat(scale - frac.len()));
    let digits = digits.trim_start_matches('0');
    if digits.len() > precision {
        return Err(format!("`{text}` exceeds precision {precision}"));
    }
    let mut unscaled: BigInt = if digits.is_empty() {
        BigInt::from(0)
    } else {
        digits.parse().map_err(|_| format!("`{text}` is not a decimal number"))?
    };
    if negative {
        unscaled = -unscaled;
    }
    Ok(Decimal::from(unscaled.to_signed_bytes_be()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_trip_exactly_including_negative_and_zero_decimal_currencies() {
        for (text, expected) in [
            ("12.34", "12.3400"),
            ("500", "500.0000"),
            ("-0.5", "-0.5000"),
            ("0", "0.0000"),
            ("1.2340", "1.2340"),
        ] {
            let d = parse_decimal(text, 20, 4).unwrap();
            assert_eq!(format_decimal(&BigInt::from(d), 4), expected, "{text}");
        }
    }

    #[test]
    fn decimals_that_lose_digits_or_overflow_are_rejected() {
        assert!(parse_decimal("1.23456", 20, 4).unwrap_err().contains("4 decimal places"));
        assert!(parse_decimal("12345678901234567", 20, 4).unwrap_err().contains("precision"));
        assert!(parse_decimal("1e5", 20, 4).is_err());
        assert!(parse_decimal("", 20, 4).is_err());
    }

    #[test]
    fn minimal_width_negative_bytes_from_java_are_sign_extended() {
        // Java's BigDecimal.unscaledValue().toByteArray() for -1 is the single byte 0xff.
        let d = Decimal::from(vec![0xffu8]);
        assert_eq!(format_decimal(&BigInt::from(d), 2), "-0.01");
        let d = Decimal::from(vec![0x80u8, 0x00]);
        assert_eq!(BigInt::from(d), BigInt::from(-32768));
    }
}
