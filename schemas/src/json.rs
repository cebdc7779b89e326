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

/// Named types of a schema, so types used by name (`Schema::Ref`) are looked up. Resolved on
/// the first reference only: conversions run once per event, and most schemas never refer to
/// a type by name.
struct Names<'s> {
    schema: &'s Schema,
    named: std::cell::OnceCell<std::collections::HashMap<apache_avro::schema::Name, &'s Schema>>,
}

impl<'s> Names<'s> {
    fn of(schema: &'s Schema) -> Self {
        Self {
            schema,
            named: std::cell::OnceCell::new(),
        }
    }

    /// `schema`, or the type it names when it is a reference.
    fn deref(&self, schema: &'s Schema) -> &'s Schema {
        let Schema::Ref { name } = schema else {
            return schema;
        };
        self.named
            .get_or_init(|| {
                apache_avro::schema::ResolvedSchema::try_from(self.schema)
                    .map(|r| r.get_names().clone())
                    .unwrap_or_default()
            })
            .get(name)
            .copied()
            .unwrap_or(schema)
    }
}

/// Like [`to_json`], but uses the schema to print decimals with their scale.
pub fn to_json_with_schema(value: &Value, schema: &Schema) -> Json {
    to_json_named(value, schema, &Names::of(schema))
}

fn to_json_named<'s>(value: &Value, schema: &'s Schema, names: &Names<'s>) -> Json {
    let to_json_with_schema = |v: &Value, s: &'s Schema| to_json_named(v, s, names);
    match (value, names.deref(schema)) {
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
        digits
            .parse()
            .map_err(|_| format!("`{text}` is not a decimal number"))?
    };
    if negative {
        unscaled = -unscaled;
    }
    Ok(Decimal::from(sign_extend(
        unscaled.to_signed_bytes_be(),
        bytes_for_precision(precision),
    )))
}

/// A JSON value that does not fit the schema, with the dotted path of the field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Converts JSON to an Avro value of `schema`, collecting every mismatch with its field path
/// (`line_items[0].unit_price.amount`). Missing fields take their schema default.
pub fn from_json(json: &Json, schema: &Schema) -> Result<Value, Vec<FieldError>> {
    let mut errors = Vec::new();
    let value = convert(json, schema, Path::Root, &Names::of(schema), &mut errors);
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

/// Like [`from_json`] for a record, with `overlay`'s fields taking the place of the document's
/// (as if inserted into a copy of it, without copying it).
pub fn from_json_overlaid(
    json: &Json,
    overlay: &Map<String, Json>,
    schema: &Schema,
) -> Result<Value, Vec<FieldError>> {
    let names = Names::of(schema);
    let mut errors = Vec::new();
    let value = match (names.deref(schema), json.as_object()) {
        (Schema::Record(r), Some(obj)) => {
            record(r, obj, Some(overlay), Path::Root, &names, &mut errors)
        }
        // Not an object: nothing to overlay, and `convert` says what is wrong.
        _ => convert(json, schema, Path::Root, &names, &mut errors),
    };
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

fn record<'s>(
    r: &'s apache_avro::schema::RecordSchema,
    obj: &Map<String, Json>,
    overlay: Option<&Map<String, Json>>,
    path: Path<'_>,
    names: &Names<'s>,
    errors: &mut Vec<FieldError>,
) -> Value {
    let keys = obj.keys().chain(overlay.into_iter().flat_map(Map::keys));
    for key in keys {
        if !r.lookup.contains_key(key) {
            errors.push(FieldError {
                field: Path::Field(&path, key).to_string(),
                message: "unknown field".into(),
            });
        }
    }
    let fields = r
        .fields
        .iter()
        .map(|f| {
            let field_path = Path::Field(&path, &f.name);
            let given = overlay
                .and_then(|o| o.get(&f.name))
                .or_else(|| obj.get(&f.name));
            let v = match (given, &f.default) {
                (Some(v), _) => convert(v, &f.schema, field_path, names, errors),
                (None, Some(default)) => convert(default, &f.schema, field_path, names, errors),
                (None, None) => {
                    errors.push(FieldError {
                        field: field_path.to_string(),
                        message: "required field is missing".into(),
                    });
                    Value::Null
                }
            };
            (f.name.clone(), v)
        })
        .collect();
    Value::Record(fields)
}

fn convert<'s>(
    json: &Json,
    schema: &'s Schema,
    path: Path<'_>,
    names: &Names<'s>,
    errors: &mut Vec<FieldError>,
) -> Value {
    let schema = names.deref(schema);
    let mut fail = |message: String| {
        errors.push(FieldError {
            field: path.to_string(),
            message,
        });
        Value::Null
    };
    match schema {
        Schema::Null => match json {
            Json::Null => Value::Null,
            _ => fail("expected null".into()),
        },
        Schema::Boolean => match json.as_bool() {
            Some(b) => Value::Boolean(b),
            None => fail("expected boolean".into()),
        },
        Schema::Int => match json.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Value::Int(i),
            None => fail("expected 32-bit integer".into()),
        },
        Schema::Long => match json.as_i64() {
            Some(i) => Value::Long(i),
            None => fail("expected integer".into()),
        },
        Schema::TimestampMillis => match json {
            Json::Number(n) if n.is_i64() => Value::TimestampMillis(n.as_i64().unwrap_or_default()),
            Json::String(s) => match crate::metadata::parse_rfc3339_ms(s) {
                Some(ms) => Value::TimestampMillis(ms),
                None => fail("expected epoch milliseconds or an RFC 3339 UTC time".into()),
            },
            _ => fail("expected epoch milliseconds or an RFC 3339 UTC time".into()),
        },
        Schema::Float => match json.as_f64() {
            Some(f) => Value::Float(f as f32),
            None => fail("expected number".into()),
        },
        Schema::Double => match json.as_f64() {
            Some(f) => Value::Double(f),
            None => fail("expected number".into()),
        },
        Schema::String => match json.as_str() {
            Some(s) => Value::String(s.to_string()),
            None => fail("expected string".into()),
        },
        Schema::Decimal(DecimalSchema {
            precision, scale, ..
        }) => match json.as_str() {
            Some(s) => match parse_decimal(s, *precision, *scale) {
                Ok(d) => Value::Decimal(d),
                Err(e) => fail(e),
            },
            None => fail("expected decimal string".into()),
        },
        Schema::Enum(e) => match json.as_str() {
            Some(s) => match e.symbols.iter().position(|x| x == s) {
                Some(i) => Value::Enum(i as u32, s.to_string()),
                None => fail(format!("`{s}` is not one of {:?}", e.symbols)),
            },
            None => fail("expected string".into()),
        },
        Schema::Array(a) => match json.as_array() {
            Some(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| convert(item, &a.items, Path::Index(&path, i), names, errors))
                    .collect(),
            ),
            None => fail("expected array".into()),
        },
        Schema::Map(m) => match json.as_object() {
            Some(obj) => Value::Map(
                obj.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            convert(v, &m.types, Path::Field(&path, k), names, errors),
                        )
                    })
                    .collect(),
            ),
            None => fail("expected object".into()),
        },
        Schema::Union(u) => {
            if json.is_null() {
                if let Some(i) = u.variants().iter().position(|s| matches!(s, Schema::Null)) {
                    return Value::Union(i as u32, Box::new(Value::Null));
                }
            }
            for (i, branch) in u.variants().iter().enumerate() {
                if matches!(branch, Schema::Null) {
                    continue;
                }
                let mut branch_errors = Vec::new();
                let v = convert(json, branch, path, names, &mut branch_errors);
                if branch_errors.is_empty() {
                    return Value::Union(i as u32, Box::new(v));
                }
            }
            fail("matches no branch of the union".into())
        }
        Schema::Record(r) => match json.as_object() {
            Some(obj) => record(r, obj, None, path, names, errors),
            None => fail("expected object".into()),
        },
        other => fail(format!("unsupported schema type {other:?}")),
    }
}

/// Where in the document a value is (`line_items[0].unit_price.amount`; `$` for the root),
/// kept as links to the parent and written out only for an error.
#[derive(Debug, Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => f.write_str("$"),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(Path::Root, i) => write!(f, "[{i}]"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Bytes needed to hold any unscaled value of `precision` digits, as Avro's Java
/// implementation sizes them. Writing that width (rather than the minimal one) lets readers
/// that check the width against the precision, such as apache-avro's resolver, accept it.
pub fn bytes_for_precision(precision: usize) -> usize {
    (1..=64)
        .find(|n| ((8 * n - 1) as f64 * std::f64::consts::LOG10_2).floor() as usize >= precision)
        .unwrap_or(64)
}

fn sign_extend(bytes: Vec<u8>, width: usize) -> Vec<u8> {
    if bytes.len() >= width {
        return bytes;
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0x00
    };
    let mut out = vec![fill; width - bytes.len()];
    out.extend(bytes);
    out
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
        assert!(parse_decimal("1.23456", 20, 4)
            .unwrap_err()
            .contains("4 decimal places"));
        assert!(parse_decimal("12345678901234567", 20, 4)
            .unwrap_err()
            .contains("precision"));
        assert!(parse_decimal("1e5", 20, 4).is_err());
        assert!(parse_decimal("", 20, 4).is_err());
    }

    #[test]
    fn from_json_converts_a_catalog_event_and_reports_field_errors() {
        let catalog = crate::Catalog::embedded().unwrap();
        let entry = catalog
            .latest("dev.sluice.events.payments.PaymentSucceeded")
            .unwrap();
        let good = json!({
            "event_id": "e1", "occurred_at": 1_700_000_000_000i64, "source": "s",
            "payment_id": "pi_1", "amount": {"amount": "12.34", "currency": "EUR"},
            "provider": "stripe"
        });
        let v = from_json(&good, &entry.schema).unwrap();
        let back = to_json_with_schema(&v, &entry.schema);
        assert_eq!(back["amount"]["amount"], "12.3400");
        assert_eq!(back["subject"], Json::Null);

        let bad = json!({
            "event_id": 7, "occurred_at": "yesterday", "source": "s", "bogus": 1,
            "amount": {"amount": 12.34, "currency": "EUR"}, "provider": "stripe"
        });
        let errors = from_json(&bad, &entry.schema).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"event_id"), "{errors:?}");
        assert!(fields.contains(&"occurred_at"), "{errors:?}");
        assert!(fields.contains(&"bogus"), "{errors:?}");
        assert!(fields.contains(&"payment_id"), "{errors:?}");
        let amount = errors.iter().find(|e| e.field == "amount.amount").unwrap();
        assert_eq!(amount.message, "expected decimal string");
    }

    #[test]
    fn named_types_used_by_reference_convert_both_ways() {
        let catalog = crate::Catalog::embedded().unwrap();
        let entry = catalog
            .latest("dev.sluice.events.commerce.OrderPlaced")
            .unwrap();
        let order = json!({
            "event_id": "e", "occurred_at": 0, "source": "s", "order_id": "1",
            "total": {"amount": "2.50", "currency": "EUR"},
            "line_items": [{"title": "t", "quantity": 1, "unit_price": {"amount": "2.5", "currency": "EUR"}}],
            "provider": "shopify"
        });
        let v = from_json(&order, &entry.schema).unwrap_or_else(|e| panic!("{e:?}"));
        let back = to_json_with_schema(&v, &entry.schema);
        assert_eq!(back["line_items"][0]["unit_price"]["amount"], "2.5000");
        let mut bad = order.clone();
        bad["line_items"][0]["unit_price"]["amount"] = json!(2.5);
        let errors = from_json(&bad, &entry.schema).unwrap_err();
        assert_eq!(errors[0].field, "line_items[0].unit_price.amount");
    }

    #[test]
    fn an_overlay_converts_as_if_merged_into_the_document() {
        let catalog = crate::Catalog::embedded().unwrap();
        let schema = &catalog
            .latest("dev.sluice.events.payments.PaymentSucceeded")
            .unwrap()
            .schema;
        let doc = json!({
            "event_id": "theirs", "source": "s", "payment_id": "pi_1",
            "amount": {"amount": "12.34", "currency": "EUR"}, "provider": "stripe"
        });
        let overlay = json!({"event_id": "ours", "occurred_at": 5});
        let overlay = overlay.as_object().unwrap();
        let mut merged = doc.clone();
        merged.as_object_mut().unwrap().extend(overlay.clone());
        assert_eq!(
            from_json_overlaid(&doc, overlay, schema).unwrap(),
            from_json(&merged, schema).unwrap()
        );
        let stray = json!({"bogus": 1, "occurred_at": "later"});
        let errors = from_json_overlaid(&doc, stray.as_object().unwrap(), schema).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["bogus", "occurred_at"], "{errors:?}");
        let not_an_object = from_json_overlaid(&json!([1]), overlay, schema).unwrap_err();
        assert_eq!(not_an_object[0].field, "$");
    }

    #[test]
    fn decimals_are_written_at_the_width_their_precision_needs() {
        assert_eq!(bytes_for_precision(20), 9);
        assert_eq!(bytes_for_precision(9), 4);
        let d = parse_decimal("-0.01", 20, 4).unwrap();
        let bytes: Vec<u8> = Vec::try_from(d).unwrap();
        assert_eq!(bytes.len(), 9);
        assert_eq!(BigInt::from_signed_bytes_be(&bytes), BigInt::from(-100));
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
