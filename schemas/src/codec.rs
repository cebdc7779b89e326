//! Avro in the Confluent wire format: magic byte `0`, the writer schema's id as a 4-byte
//! big-endian integer, then the Avro binary datum. [`SchemaWriter`] writes it;
//! [`AvroCodec`] reads it.
//!
//! Writer schemas are fetched from the registry once per id and cached, so the registry is
//! hit once per schema, not once per message. Decoding against a reader schema reads the
//! datum with the writer schema (`read_value`) and then resolves it, the path apache-avro
//! supports without panicking.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::registry::{RegistryClient, RegistryError};

/// The Confluent wire format's magic byte.
pub const MAGIC_BYTE: u8 = 0;
const HEADER_LEN: usize = 5;

/// Where an undecodable record came from, so errors point at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordLocation {
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

impl RecordLocation {
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        Self {
            topic: Some(topic.to_string()),
            partition: Some(partition),
            offset: Some(offset),
        }
    }
}

impl fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.topic, self.partition, self.offset) {
            (Some(t), Some(p), Some(o)) => write!(f, "{t}/{p}@{o}"),
            (Some(t), _, _) => write!(f, "{t}"),
            _ => write!(f, "unknown location"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{location}: payload of {len} bytes is shorter than the 5-byte wire-format header")]
    Truncated {
        location: RecordLocation,
        len: usize,
    },
    #[error("{location}: wrong magic byte {byte:#04x}, expected 0x00 (not Confluent wire format)")]
    WrongMagicByte { location: RecordLocation, byte: u8 },
    #[error("{location}: schema id {id} is not known to the registry: {source}")]
    UnknownSchemaId {
        location: RecordLocation,
        id: u32,
        source: RegistryError,
    },
    #[error("{location}: schema id {id} from the registry is not valid Avro: {reason}")]
    InvalidWriterSchema {
        location: RecordLocation,
        id: u32,
        reason: String,
    },
    #[error("{location}: cannot decode datum written with schema id {id}: {reason}")]
    Decode {
        location: RecordLocation,
        id: u32,
        reason: String,
    },
    #[error("{location}: data written with schema id {id} cannot be read as {reader}: {reason}")]
    Resolve {
        location: RecordLocation,
        id: u32,
        reader: String,
        reason: String,
    },
    #[error("reader schema {reader} is not usable: {reason}")]
    InvalidReaderSchema { reader: String, reason: String },
    #[error("cannot encode value with schema id {id}: {reason}")]
    Encode { id: u32, reason: String },
}

impl CodecError {
    /// Registry outages are worth retrying; malformed bytes never are.
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::UnknownSchemaId { source, .. } if source.is_transient())
    }
}

/// A decoded record: the writer schema id and the value (resolved when a reader schema
/// was given).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub schema_id: u32,
    pub value: Value,
}

/// A schema to resolve decoded data into, with its named types indexed once rather than on
/// every record. Build one per event type and version a consumer reads, and reuse it.
#[derive(Clone)]
pub struct ReaderSchema {
    inner: Arc<(Schema, HashMap<Name, Schema>)>,
    /// Writer ids whose schema is this one exactly, so resolution can be skipped, as
    /// Confluent's deserializers do.
    same_as_writer: Arc<RwLock<HashMap<u32, bool>>>,
    name: Arc<str>,
    /// Decimals shorter than this may be refused by apache-avro's resolver (see [`resolve`]).
    min_decimal_len: usize,
}

impl fmt::Debug for ReaderSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReaderSchema({})", self.name)
    }
}

impl ReaderSchema {
    pub fn new(schema: Schema) -> Result<Self, CodecError> {
        let name = schema_name(&schema);
        let names: HashMap<Name, Schema> = ResolvedSchema::try_from(&schema)
            .map_err(|e| CodecError::InvalidReaderSchema {
                reader: name.clone(),
                reason: e.to_string(),
            })?
            .get_names()
            .iter()
            .map(|(k, v)| (k.clone(), (*v).clone()))
            .collect();
        let precision = std::iter::once(&schema)
            .chain(names.values())
            .map(max_decimal_precision)
            .max()
            .unwrap_or(0);
        Ok(Self {
            inner: Arc::new((schema, names)),
            same_as_writer: Arc::default(),
            name: name.into(),
            min_decimal_len: crate::json::bytes_for_precision(precision),
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.inner.0
    }

    /// Whether data written with writer `id` already has this exact shape.
    fn is_same_as(&self, id: u32, writer: &Schema) -> bool {
        if let Some(same) = self.same_as_writer.read().expect("reader cache").get(&id) {
            return *same;
        }
        let same = writer.canonical_form() == self.schema().canonical_form();
        self.same_as_writer
            .write()
            .expect("reader cache")
            .insert(id, same);
        same
    }

    /// Avro schema resolution of `value` into this schema. Tries apache-avro's resolver first
    /// and falls back to [`resolve`]'s decimal widening when a writer used minimal-width
    /// decimals.
    fn resolve(&self, value: Value) -> apache_avro::AvroResult<Value> {
        let names = &self.inner.1;
        if has_short_decimal(&value, self.min_decimal_len) {
            let widened = map_decimals(value, widen)?;
            map_decimals(widened.resolve_with_names(self.schema(), names)?, shrink)
        } else {
            value.resolve_with_names(self.schema(), names)
        }
    }
}

/// A writer schema and a datum reader over it, built once per schema id.
///
/// apache-avro's reader borrows its schema, so both are given a `'static` lifetime by leaking
/// them: the cache never evicts, and the number of writer schemas a process meets is bounded
/// by the registry's ids, so this is the cache's memory, not a leak that grows per record.
struct Writer {
    schema: Arc<Schema>,
    reader: &'static GenericDatumReader<'static>,
}

#[derive(Clone)]
pub struct AvroCodec {
    registry: RegistryClient,
    writers: Arc<RwLock<HashMap<u32, Arc<Writer>>>>,
}

impl fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AvroCodec")
            .field("registry", &self.registry)
            .finish()
    }
}

impl AvroCodec {
    pub fn new(registry: RegistryClient) -> Self {
        Self {
            registry,
            writers: Arc::default(),
        }
    }

    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// Decodes a wire-format payload with its writer schema.
    pub async fn decode(
        &self,
        payload: &[u8],
        location: &RecordLocation,
    ) -> Result<Decoded, CodecError> {
        self.decode_inner(payload, None, location).await
    }

    /// Decodes a wire-format payload and resolves it against `reader` (Avro schema
    /// resolution: defaults for added fields, promotions, dropped fields).
    pub async fn decode_as(
        &self,
        payload: &[u8],
        reader: &ReaderSchema,
        location: &RecordLocation,
    ) -> Result<Decoded, CodecError> {
        self.decode_inner(payload, Some(reader), location).await
    }

    async fn decode_inner(
        &self,
        payload: &[u8],
        reader: Option<&ReaderSchema>,
        location: &RecordLocation,
    ) -> Result<Decoded, CodecError> {
        if let Some(decoded) = self.decode_cached(payload, reader, location)? {
            return Ok(decoded);
        }
        let (id, _) = split_header(payload, location)?;
        self.writer_schema(id, location).await?;
        Ok(self
            .decode_cached(payload, reader, location)?
            .expect("writer schema was just cached"))
    }

    /// The synchronous hot path: decodes (and resolves against `reader`, when given) if the
    /// writer schema is already cached; `Ok(None)` means it must be fetched first.
    pub fn decode_cached(
        &self,
        payload: &[u8],
        reader: Option<&ReaderSchema>,
        location: &RecordLocation,
    ) -> Result<Option<Decoded>, CodecError> {
        let (id, mut body) = split_header(payload, location)?;
        let Some(writer) = self.writers.read().expect("schema cache").get(&id).cloned() else {
            return Ok(None);
        };
        let decode_error = |reason: String| CodecError::Decode {
            location: location.clone(),
            id,
            reason,
        };
        let value = writer
            .reader
            .read_value(&mut body)
            .map_err(|e| decode_error(e.to_string()))?;
        if !body.is_empty() {
            return Err(decode_error(format!(
                "{} bytes left over after the datum",
                body.len()
            )));
        }
        let value = match reader {
            Some(reader) if reader.is_same_as(id, &writer.schema) => value,
            Some(reader) => reader.resolve(value).map_err(|e| CodecError::Resolve {
                location: location.clone(),
                id,
                reader: reader.name.to_string(),
                reason: e.to_string(),
            })?,
            None => value,
        };
        Ok(Some(Decoded {
            schema_id: id,
            value,
        }))
    }

    /// Puts a schema known from deploy-time registration into the cache, so the first
    /// record with that id needs no registry round trip.
    pub fn preload(&self, id: u32, schema: Schema) -> Result<Arc<Schema>, CodecError> {
        let schema_static: &'static Schema = Box::leak(Box::new(schema.clone()));
        let reader = GenericDatumReader::builder(schema_static)
            .build()
            .map_err(|e| CodecError::InvalidWriterSchema {
                location: RecordLocation::default(),
                id,
                reason: e.to_string(),
            })?;
        let writer = Arc::new(Writer {
            schema: Arc::new(schema),
            reader: Box::leak(Box::new(reader)),
        });
        let schema = writer.schema.clone();
        self.writers
            .write()
            .expect("schema cache")
            .insert(id, writer);
        Ok(schema)
    }

    /// The writer schema for `id`, from the cache or (once) from the registry.
    pub async fn writer_schema(
        &self,
        id: u32,
        location: &RecordLocation,
    ) -> Result<Arc<Schema>, CodecError> {
        if let Some(w) = self.writers.read().expect("schema cache").get(&id) {
            return Ok(w.schema.clone());
        }
        let registered =
            self.registry
                .schema_by_id(id)
                .await
                .map_err(|source| CodecError::UnknownSchemaId {
                    location: location.clone(),
                    id,
                    source,
                })?;
        let schema =
            Schema::parse_str(&registered.schema).map_err(|e| CodecError::InvalidWriterSchema {
                location: location.clone(),
                id,
                reason: e.to_string(),
            })?;
        self.preload(id, schema).map_err(|e| match e {
            CodecError::InvalidWriterSchema { id, reason, .. } => CodecError::InvalidWriterSchema {
                location: location.clone(),
                id,
                reason,
            },
            other => other,
        })
    }

    /// Number of writer schemas held; lets tests prove the registry is hit once per id.
    pub fn cached_schemas(&self) -> usize {
        self.writers.read().expect("schema cache").len()
    }
}

/// Writes values of one registered schema in the Confluent wire format: magic byte `0`, the
/// schema's registry id as a 4-byte big-endian integer, then the Avro binary datum.
///
/// This is the one place sluice writes Avro. apache-avro's datum writer borrows its schema
/// and indexes the schema's names when built, which costs more than encoding a small record,
/// so a writer is prepared once and reused:
///
/// - [`SchemaWriter::new`] owns its schema for the rest of the process: build one per
///   (topic, event type) a process writes, at start-up (see [`crate::subject::resolve`]).
/// - [`SchemaWriter::borrowing`] borrows a schema, for a one-off record.
///
/// ```
/// use apache_avro::{types::Value, Schema};
/// use sluice_schemas::codec::SchemaWriter;
///
/// let schema = Schema::parse_str(r#"{"type":"record","name":"Ping","fields":[{"name":"n","type":"long"}]}"#).unwrap();
/// let writer = SchemaWriter::new(42, schema).unwrap();
/// let bytes = writer.encode(Value::Record(vec![("n".into(), Value::Long(1))])).unwrap();
/// assert_eq!(bytes, [0, 0, 0, 0, 42, 2]);
/// ```
#[derive(Clone)]
pub struct SchemaWriter<'s> {
    id: u32,
    schema: &'s Schema,
    /// Shared so that copies of a process's writers (a cloned saga book) share one encoder.
    writer: Arc<GenericDatumWriter<'s>>,
}

impl fmt::Debug for SchemaWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SchemaWriter({} id {})",
            schema_name(self.schema),
            self.id
        )
    }
}

impl SchemaWriter<'static> {
    /// A writer for schema `id` that lives as long as the process.
    ///
    /// The schema is given a `'static` lifetime by leaking it, as [`AvroCodec`] does for its
    /// readers: a process builds one writer per schema it writes, at start-up, so this is the
    /// writers' memory, not a leak that grows per record.
    pub fn new(id: u32, schema: Schema) -> Result<Self, CodecError> {
        Self::borrowing(id, Box::leak(Box::new(schema)))
    }
}

impl<'s> SchemaWriter<'s> {
    /// A writer for schema `id` that borrows `schema`; for a one-off record.
    pub fn borrowing(id: u32, schema: &'s Schema) -> Result<Self, CodecError> {
        let writer =
            GenericDatumWriter::builder(schema)
                .build()
                .map_err(|e| CodecError::Encode {
                    id,
                    reason: e.to_string(),
                })?;
        Ok(Self {
            id,
            schema,
            writer: Arc::new(writer),
        })
    }

    /// The registry id written in every record's header.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn schema(&self) -> &'s Schema {
        self.schema
    }

    /// Encodes `value` in the Confluent wire format, validating it against the schema first.
    pub fn encode(&self, value: Value) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(128);
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&self.id.to_be_bytes());
        self.writer
            .write_value(&mut out, value)
            .map_err(|e| CodecError::Encode {
                id: self.id,
                reason: e.to_string(),
            })?;
        Ok(out)
    }
}

/// Encodes one record with schema `schema_id` without a registry round trip, preparing a
/// writer for it alone. For one-off records (a demo, a test); anything that writes more than
/// once keeps a [`SchemaWriter`].
pub fn encode_with(schema_id: u32, schema: &Schema, value: Value) -> Result<Vec<u8>, CodecError> {
    SchemaWriter::borrowing(schema_id, schema)?.encode(value)
}

/// Splits the wire-format header from the datum.
pub fn split_header<'a>(
    payload: &'a [u8],
    location: &RecordLocation,
) -> Result<(u32, &'a [u8]), CodecError> {
    if payload.len() < HEADER_LEN {
        return Err(CodecError::Truncated {
            location: location.clone(),
            len: payload.len(),
        });
    }
    if payload[0] != MAGIC_BYTE {
        return Err(CodecError::WrongMagicByte {
            location: location.clone(),
            byte: payload[0],
        });
    }
    let id = u32::from_be_bytes(payload[1..HEADER_LEN].try_into().expect("4 bytes"));
    Ok((id, &payload[HEADER_LEN..]))
}

/// Avro schema resolution that tolerates minimal-width decimals.
///
/// apache-avro refuses to resolve a decimal whose byte length could not hold the schema's
/// full precision, but writers such as Java's `BigDecimal` emit the minimal two's-complement
/// width (`-1` is the single byte `0xff`). Sign-extending every decimal first, and shrinking it
/// back afterwards, keeps the value exact and lets resolution proceed.
pub fn resolve(value: Value, reader: &Schema) -> apache_avro::AvroResult<Value> {
    map_decimals(map_decimals(value, widen)?.resolve(reader)?, shrink)
}

const WIDE_DECIMAL_BYTES: usize = 32;

fn widen(bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() >= WIDE_DECIMAL_BYTES {
        return bytes;
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0x00
    };
    let mut out = vec![fill; WIDE_DECIMAL_BYTES - bytes.len()];
    out.extend(bytes);
    out
}

fn shrink(bytes: Vec<u8>) -> Vec<u8> {
    num_bigint::BigInt::from_signed_bytes_be(&bytes).to_signed_bytes_be()
}

fn map_decimals(value: Value, f: fn(Vec<u8>) -> Vec<u8>) -> apache_avro::AvroResult<Value> {
    Ok(match value {
        Value::Decimal(d) => {
            let bytes: Vec<u8> = Vec::try_from(d)?;
            Value::Decimal(apache_avro::Decimal::from(f(bytes)))
        }
        Value::Union(i, inner) => Value::Union(i, Box::new(map_decimals(*inner, f)?)),
        Value::Record(fields) => Value::Record(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, map_decimals(v, f)?)))
                .collect::<apache_avro::AvroResult<_>>()?,
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| map_decimals(v, f))
                .collect::<apache_avro::AvroResult<_>>()?,
        ),
        Value::Map(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| Ok((k, map_decimals(v, f)?)))
                .collect::<apache_avro::AvroResult<_>>()?,
        ),
        other => other,
    })
}

fn max_decimal_precision(schema: &Schema) -> usize {
    match schema {
        Schema::Decimal(d) => d.precision,
        Schema::Record(r) => r
            .fields
            .iter()
            .map(|f| max_decimal_precision(&f.schema))
            .max()
            .unwrap_or(0),
        Schema::Array(a) => max_decimal_precision(&a.items),
        Schema::Map(m) => max_decimal_precision(&m.types),
        Schema::Union(u) => u
            .variants()
            .iter()
            .map(max_decimal_precision)
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

/// Whether `value` holds a decimal narrower than `min_len` bytes.
fn has_short_decimal(value: &Value, min_len: usize) -> bool {
    match value {
        // apache-avro exposes a decimal's width only through a copy of its bytes.
        Value::Decimal(d) => Vec::<u8>::try_from(d).map_or(true, |b| b.len() < min_len),
        Value::Union(_, inner) => has_short_decimal(inner, min_len),
        Value::Record(fields) => fields.iter().any(|(_, v)| has_short_decimal(v, min_len)),
        Value::Array(items) => items.iter().any(|v| has_short_decimal(v, min_len)),
        Value::Map(m) => m.values().any(|v| has_short_decimal(v, min_len)),
        _ => false,
    }
}

fn schema_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A codec whose registry is never called: every schema is preloaded.
    fn offline_codec() -> AvroCodec {
        AvroCodec::new(RegistryClient::new(&Default::default()).unwrap())
    }

    const SCHEMA: &str =
        r#"{"type":"record","name":"Ping","namespace":"t","fields":[{"name":"n","type":"long"}]}"#;

    #[test]
    fn header_errors_are_typed_and_located() {
        let loc = RecordLocation::new("orders", 2, 41);
        let err = split_header(&[0, 1], &loc).unwrap_err();
        assert!(matches!(err, CodecError::Truncated { len: 2, .. }));
        assert!(err.to_string().contains("orders/2@41"), "{err}");
        let err = split_header(&[7, 0, 0, 0, 1, 2], &loc).unwrap_err();
        assert!(matches!(err, CodecError::WrongMagicByte { byte: 7, .. }));
    }

    #[test]
    fn encode_writes_magic_byte_and_big_endian_id() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let value = Value::Record(vec![("n".into(), Value::Long(300))]);
        let bytes = encode_with(0x01020304, &schema, value.clone()).unwrap();
        assert_eq!(&bytes[..5], &[0, 1, 2, 3, 4]);
        let (id, _) = split_header(&bytes, &RecordLocation::default()).unwrap();
        assert_eq!(id, 0x01020304);
        let codec = offline_codec();
        let at = RecordLocation::default();
        assert!(
            codec.decode_cached(&bytes, None, &at).unwrap().is_none(),
            "not cached yet"
        );
        codec.preload(id, schema).unwrap();
        assert_eq!(
            codec
                .decode_cached(&bytes, None, &at)
                .unwrap()
                .unwrap()
                .value,
            value
        );
    }

    /// A normalized event with a negative decimal, a nested record and optional fields.
    pub(crate) fn payment() -> (Schema, Value) {
        let catalog = crate::Catalog::embedded().unwrap();
        let entry = catalog
            .latest("dev.sluice.events.payments.PaymentSucceeded")
            .unwrap();
        let json = serde_json::json!({
            "event_id": "e1", "occurred_at": 1_649_367_553_123i64, "source": "s",
            "subject": "pi_1", "payment_id": "pi_1", "description": null,
            "amount": {"amount": "-2000.05", "currency": "EUR"}, "provider": "stripe"
        });
        let value = crate::json::from_json(&json, &entry.schema).unwrap();
        (entry.schema.clone(), value)
    }

    /// What each writer sluice had before [`SchemaWriter`] served them all produced (the
    /// publisher's per-call writer, the saga book's, the normalizer's): the magic byte, the id
    /// big-endian, then apache-avro's datum.
    fn header_then_datum(id: u32, schema: &Schema, value: Value) -> Vec<u8> {
        let mut out = vec![MAGIC_BYTE];
        out.extend_from_slice(&id.to_be_bytes());
        let datum = GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        out.extend(datum);
        out
    }

    #[test]
    fn every_writer_writes_the_same_wire_bytes() {
        let (schema, value) = payment();
        let id = 0x0A0B_0C0D;
        let expected = header_then_datum(id, &schema, value.clone());
        assert_eq!(&expected[..5], &[0, 0x0a, 0x0b, 0x0c, 0x0d]);

        let process = SchemaWriter::new(id, schema.clone()).unwrap();
        assert_eq!(process.id(), id);
        assert_eq!(process.encode(value.clone()).unwrap(), expected);
        let copy = process.clone();
        assert_eq!(copy.encode(value.clone()).unwrap(), expected);
        // The writer is reusable: a second record encodes the same way.
        assert_eq!(process.encode(value.clone()).unwrap(), expected);
        let one_off = SchemaWriter::borrowing(id, &schema).unwrap();
        assert_eq!(one_off.encode(value.clone()).unwrap(), expected);
        assert_eq!(encode_with(id, &schema, value).unwrap(), expected);
    }

    #[test]
    fn written_records_decode_back_with_the_codec() {
        let (schema, value) = payment();
        let bytes = SchemaWriter::new(77, schema.clone())
            .unwrap()
            .encode(value.clone())
            .unwrap();
        let codec = offline_codec();
        codec.preload(77, schema.clone()).unwrap();
        let at = RecordLocation::default();
        let decoded = codec.decode_cached(&bytes, None, &at).unwrap().unwrap();
        assert_eq!(decoded.schema_id, 77);
        assert_eq!(decoded.value, value);
        let reader = ReaderSchema::new(schema).unwrap();
        let resolved = codec
            .decode_cached(&bytes, Some(&reader), &at)
            .unwrap()
            .unwrap();
        assert_eq!(resolved.value, value);
    }

    #[test]
    fn encode_rejects_a_value_that_does_not_match() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let value = Value::Record(vec![("n".into(), Value::String("x".into()))]);
        assert!(matches!(
            encode_with(1, &schema, value.clone()),
            Err(CodecError::Encode { id: 1, .. })
        ));
        let writer = SchemaWriter::new(2, schema).unwrap();
        let err = writer.encode(value).unwrap_err();
        assert!(matches!(err, CodecError::Encode { id: 2, .. }), "{err}");
    }

    #[test]
    fn resolution_accepts_minimal_width_decimals_and_fills_defaults() {
        let v2 = Schema::parse_str(r#"{"type":"record","name":"P","fields":[
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":2}},
            {"name":"note","type":["null","string"],"default":null}]}"#).unwrap();
        // -1.00 as Java writes it: unscaled -100 in one byte.
        let written = Value::Record(vec![(
            "amount".into(),
            Value::Decimal(apache_avro::Decimal::from(vec![0x9cu8])),
        )]);
        assert!(
            written.clone().resolve(&v2).is_err(),
            "apache-avro alone rejects this"
        );
        let resolved = resolve(written.clone(), &v2).unwrap();
        let json = crate::json::to_json_with_schema(&resolved, &v2);
        assert_eq!(json, serde_json::json!({"amount": "-1.00", "note": null}));
        let reader = ReaderSchema::new(v2.clone()).unwrap();
        assert_eq!(reader.resolve(written).unwrap(), resolved);
    }

    #[test]
    fn trailing_bytes_are_a_decode_error() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let codec = offline_codec();
        codec.preload(1, schema).unwrap();
        let err = codec
            .decode_cached(&[0, 0, 0, 0, 1, 2, 9], None, &RecordLocation::default())
            .unwrap_err();
        assert!(matches!(err, CodecError::Decode { .. }), "{err}");
    }
}
