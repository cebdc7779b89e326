//! The Avro messages of sagas: commands, replies, control messages, lifecycle and outcome
//! events, with the schema ids the registry gave them at deploy time.
//!
//! Every command and every reply has the same fields whatever its record name, so the
//! orchestrator and participants read and write them generically; the record name (the
//! `ce_type` header) says which command or reply it is.

use crate::instance::Kind;
use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;
use sluice_schemas::codec::{CodecError, SchemaWriter};
use sluice_schemas::json::from_json;
use sluice_schemas::metadata::EventMetadata;
use sluice_schemas::subject::{self, SubjectError, SubjectNaming};
use sluice_schemas::{AvroCodec, Catalog, RegistryClient};

use super::SagaError;

/// Header naming the saga instance on every saga record.
pub const SAGA_ID_HEADER: &str = "sluice_saga_id";
/// Header carrying a command's idempotency key.
pub const COMMAND_ID_HEADER: &str = "sluice_command_id";
/// Header carrying the correlation id (the trigger's correlation key value).
pub const CORRELATION_HEADER: &str = "sluice_correlation_id";

/// Schema ids of every (topic, event type) a process writes, resolved once at start-up from
/// subjects `sluice schemas register` created, and checked against the catalog.
#[derive(Debug, Clone, Default)]
pub struct SchemaBook {
    entries: HashMap<(String, String), SchemaWriter<'static>>,
}

impl SchemaBook {
    /// Looks every pair's subject up; the writer schemas are also put in `codec`'s cache, so
    /// decoding this process's own messages never waits on the registry.
    pub async fn resolve(
        registry: &RegistryClient,
        catalog: &Catalog,
        naming: SubjectNaming,
        pairs: impl IntoIterator<Item = (String, String)>,
        codec: &AvroCodec,
    ) -> Result<Self, SagaError> {
        let mut entries = HashMap::new();
        for (topic, event_type) in pairs {
            if entries.contains_key(&(topic.clone(), event_type.clone())) {
                continue;
            }
            let ready = subject::resolve(catalog, registry, naming, &topic, &event_type).await?;
            codec
                .preload(ready.writer.id(), ready.writer.schema().clone())
                .map_err(|e| SubjectError::NotRegistered {
                    subject: ready.subject,
                    reason: Box::new(e.into()),
                })?;
            entries.insert((topic, event_type), ready.writer);
        }
        Ok(Self { entries })
    }

    /// The field names of the schema `event_type` is written with on `topic`.
    pub fn field_names(&self, topic: &str, event_type: &str) -> Vec<String> {
        match self
            .entries
            .get(&(topic.to_string(), event_type.to_string()))
            .map(SchemaWriter::schema)
        {
            Some(Schema::Record(r)) => r.fields.iter().map(|f| f.name.clone()).collect(),
            _ => Vec::new(),
        }
    }

    fn entry(&self, topic: &str, event_type: &str) -> Result<&SchemaWriter<'static>, SagaError> {
        self.entries
            .get(&(topic.to_string(), event_type.to_string()))
            .ok_or_else(|| SagaError::Unresolved {
                topic: topic.to_string(),
                event_type: event_type.to_string(),
            })
    }

    fn write(
        &self,
        writer: &SchemaWriter<'_>,
        event_type: &str,
        value: Value,
    ) -> Result<Vec<u8>, SagaError> {
        writer.encode(value).map_err(|e| SagaError::Encode {
            event_type: event_type.to_string(),
            reason: match e {
                CodecError::Encode { reason, .. } => reason,
                other => other.to_string(),
            },
        })
    }

    /// Encodes a record of `event_type` for `topic` from its fields by name, in the
    /// Confluent wire format. Optional (`["null", T]`) fields may be left out or given as
    /// plain values; the writer validates the result against the schema.
    pub fn encode_fields(
        &self,
        topic: &str,
        event_type: &str,
        fields: Vec<(&str, Value)>,
    ) -> Result<Vec<u8>, SagaError> {
        let r = self.entry(topic, event_type)?;
        let Schema::Record(record) = r.schema() else {
            return Err(SagaError::Encode {
                event_type: event_type.to_string(),
                reason: "not a record schema".into(),
            });
        };
        let mut given: Vec<Option<(&str, Value)>> = fields.into_iter().map(Some).collect();
        let mut values = Vec::with_capacity(record.fields.len());
        for f in &record.fields {
            let v = given
                .iter_mut()
                .find(|g| g.as_ref().is_some_and(|(name, _)| *name == f.name))
                .and_then(Option::take)
                .map_or(Value::Null, |(_, v)| v);
            let v = match (&f.schema, v) {
                (Schema::Union(u), v) if !matches!(v, Value::Union(..)) => {
                    let null = u.variants().iter().position(|s| matches!(s, Schema::Null));
                    let other = u.variants().iter().position(|s| !matches!(s, Schema::Null));
                    let index = if v == Value::Null { null } else { other };
                    Value::Union(index.unwrap_or(0) as u32, Box::new(v))
                }
                (_, v) => v,
            };
            values.push((f.name.clone(), v));
        }
        if let Some((extra, _)) = given.into_iter().flatten().next() {
            return Err(SagaError::Encode {
                event_type: event_type.to_string(),
                reason: format!("`{extra}` is not a field"),
            });
        }
        self.write(r, event_type, Value::Record(values))
    }

    /// Encodes `value` (JSON) as `event_type` for `topic`, in the Confluent wire format; for
    /// events built from other events' JSON (outcome events).
    pub fn encode(
        &self,
        topic: &str,
        event_type: &str,
        value: &Json,
    ) -> Result<Vec<u8>, SagaError> {
        let r = self.entry(topic, event_type)?;
        let avro = from_json(value, r.schema()).map_err(|errors| SagaError::Encode {
            event_type: event_type.to_string(),
            reason: errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        self.write(r, event_type, avro)
    }
}

#[cfg(test)]
impl SchemaBook {
    /// A book of the catalog's latest schemas, put in `codec`'s cache, each with an id that
    /// stands for its event type in every book (its place in the catalog), as a registry
    /// would give: for unit tests, which run without a registry.
    pub(crate) fn offline(
        catalog: &Catalog,
        pairs: impl IntoIterator<Item = (String, String)>,
        codec: &AvroCodec,
    ) -> Self {
        let mut entries = HashMap::new();
        for (topic, event_type) in pairs {
            let place = catalog.event_types().position(|t| t == event_type);
            let id = place.expect("in the catalog") as u32 + 1;
            let schema = catalog
                .latest(&event_type)
                .expect("in the catalog")
                .schema
                .clone();
            codec.preload(id, schema.clone()).expect("a valid schema");
            entries.insert(
                (topic, event_type),
                SchemaWriter::new(id, schema).expect("a record"),
            );
        }
        Self { entries }
    }
}

/// An Avro string.
pub fn text(s: &str) -> Value {
    Value::String(s.to_string())
}

/// An optional Avro string.
pub fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, text)
}

/// The four metadata fields every event starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub event_id: String,
    pub occurred_at: i64,
    pub source: String,
    pub subject: Option<String>,
}

impl Meta {
    /// Sets the four metadata fields on a JSON message body.
    pub fn fill(&self, mut body: Json) -> Json {
        if let Some(o) = body.as_object_mut() {
            o.insert("event_id".into(), self.event_id.clone().into());
            o.insert("occurred_at".into(), self.occurred_at.into());
            o.insert("source".into(), self.source.clone().into());
            o.insert("subject".into(), self.subject.clone().into());
        }
        body
    }

    /// The four metadata fields, followed by `fields`, for [`SchemaBook::encode_fields`].
    pub fn with<'a>(&self, fields: Vec<(&'a str, Value)>) -> Vec<(&'a str, Value)> {
        let mut all = vec![
            ("event_id", text(&self.event_id)),
            ("occurred_at", Value::TimestampMillis(self.occurred_at)),
            ("source", text(&self.source)),
            ("subject", opt_text(self.subject.as_deref())),
        ];
        all.extend(fields);
        all
    }

    /// CloudEvents headers (plus `traceparent`) for a record of `event_type`, and sluice's
    /// saga headers.
    pub fn headers(
        &self,
        event_type: &str,
        traceparent: &str,
        extra: &[(&str, &str)],
    ) -> Vec<(String, Vec<u8>)> {
        let meta = EventMetadata {
            id: self.event_id.clone(),
            source: self.source.clone(),
            event_type: event_type.to_string(),
            time_ms: self.occurred_at,
            subject: self.subject.clone(),
            traceparent: Some(traceparent.to_string()),
        };
        let mut h: Vec<(String, Vec<u8>)> = meta
            .headers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_bytes()))
            .collect();
        h.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
        );
        h
    }
}

/// A deterministic event id: the same transition always writes the same ids, so a consumer
/// can deduplicate on `event_id` even across an orchestrator's retried transaction.
pub fn event_id(name: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("sluice:saga:{name}").as_bytes(),
    )
    .to_string()
}

/// A W3C traceparent continuing `parent`'s trace (or starting one named by `seed`), with a
/// span id derived from `seed`.
pub fn child_traceparent(parent: Option<&str>, seed: &str) -> String {
    let hash = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes())
        .simple()
        .to_string();
    let trace = parent
        .and_then(sluice_schemas::traceparent::trace_id)
        .map_or_else(|| hash.clone(), str::to_string);
    let mut span = hash[16..32].to_string();
    if span.bytes().all(|b| b == b'0') {
        span = "0000000000000001".into();
    }
    format!("00-{trace}-{span}-01")
}

/// A command to a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub event_type: String,
    pub saga_id: String,
    pub saga_name: String,
    pub step: String,
    /// An action, or the compensation of one.
    pub kind: Kind,
    /// For a compensation: the action command it undoes.
    pub compensates: Option<String>,
    pub attempt: u32,
    pub command_id: String,
    pub correlation_id: String,
    pub reply_topic: String,
    /// The trigger event, JSON.
    pub data: String,
    /// Completed steps' results by step name, JSON object.
    pub results: String,
}

impl Command {
    pub fn fields(&self, meta: &Meta) -> Vec<(&'static str, Value)> {
        meta.with(vec![
            ("saga_id", text(&self.saga_id)),
            ("saga_name", text(&self.saga_name)),
            ("step", text(&self.step)),
            ("kind", text(self.kind.as_str())),
            ("compensates", opt_text(self.compensates.as_deref())),
            ("attempt", Value::Int(self.attempt as i32)),
            ("command_id", text(&self.command_id)),
            ("correlation_id", text(&self.correlation_id)),
            ("reply_topic", text(&self.reply_topic)),
            ("data", text(&self.data)),
            ("results", text(&self.results)),
        ])
    }

    pub fn from_value(event_type: &str, value: &Value) -> Result<Self, String> {
        let f = Fields::new(value)?;
        Ok(Self {
            event_type: event_type.to_string(),
            saga_id: f.string("saga_id")?,
            saga_name: f.string("saga_name")?,
            step: f.string("step")?,
            kind: Kind::parse(&f.string("kind")?)
                .ok_or("field `kind` is neither `action` nor `compensation`")?,
            compensates: f.opt_string("compensates"),
            attempt: f.int("attempt")? as u32,
            command_id: f.string("command_id")?,
            correlation_id: f.string("correlation_id")?,
            reply_topic: f.string("reply_topic")?,
            data: f.string("data")?,
            results: f.string("results")?,
        })
    }
}

/// A participant's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub event_type: String,
    pub saga_id: String,
    pub saga_name: String,
    pub step: String,
    pub command_id: String,
    pub attempt: u32,
    pub reason: Option<String>,
    pub retryable: bool,
    pub result: Option<String>,
}

impl Reply {
    pub fn fields(&self, meta: &Meta) -> Vec<(&'static str, Value)> {
        meta.with(vec![
            ("saga_id", text(&self.saga_id)),
            ("saga_name", text(&self.saga_name)),
            ("step", text(&self.step)),
            ("command_id", text(&self.command_id)),
            ("attempt", Value::Int(self.attempt as i32)),
            ("reason", opt_text(self.reason.as_deref())),
            ("retryable", Value::Boolean(self.retryable)),
            ("result", opt_text(self.result.as_deref())),
        ])
    }

    pub fn from_value(event_type: &str, value: &Value) -> Result<Self, String> {
        let f = Fields::new(value)?;
        Ok(Self {
            event_type: event_type.to_string(),
            saga_id: f.string("saga_id")?,
            saga_name: f.string("saga_name")?,
            step: f.string("step")?,
            command_id: f.string("command_id")?,
            attempt: f.int("attempt")? as u32,
            reason: f.opt_string("reason"),
            retryable: f.bool("retryable").unwrap_or(false),
            result: f.opt_string("result"),
        })
    }
}

/// What a [`Control`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Deadline,
    Retry,
    Abort,
    /// Delete a long-finished instance's state (a tombstone in the state topic). Also sent
    /// to each command topic, whose participants then forget every command of the saga they
    /// handled from there, fences included.
    Expire,
    /// To the participants only, once per command topic partition and batch, listing the
    /// sagas the batch finished (their ids in `data`): no command of them comes again, so
    /// the participants forget the ones they handled from there, keeping fences until
    /// [`Action::Expire`].
    Finished,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Deadline => "deadline",
            Action::Retry => "retry",
            Action::Abort => "abort",
            Action::Expire => "expire",
            Action::Finished => "finished",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Action::Start,
            Action::Deadline,
            Action::Retry,
            Action::Abort,
            Action::Expire,
            Action::Finished,
        ]
        .into_iter()
        .find(|a| a.as_str() == text)
    }
}

/// An input of an instance that is not a participant's reply (see `SagaControl.v1.avsc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub saga_id: String,
    pub saga_name: String,
    pub action: Action,
    pub request_id: String,
    pub command_id: Option<String>,
    pub due_at: Option<i64>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub data: Option<String>,
    pub trigger_event_id: Option<String>,
    pub trigger_type: Option<String>,
    pub trigger_location: Option<String>,
}

impl Control {
    pub fn new(saga_name: &str, saga_id: &str, action: Action, request_id: &str) -> Self {
        Self {
            saga_id: saga_id.to_string(),
            saga_name: saga_name.to_string(),
            action,
            request_id: request_id.to_string(),
            command_id: None,
            due_at: None,
            reason: None,
            requested_by: None,
            data: None,
            trigger_event_id: None,
            trigger_type: None,
            trigger_location: None,
        }
    }

    pub fn fields(&self, meta: &Meta) -> Vec<(&'static str, Value)> {
        meta.with(vec![
            ("saga_id", text(&self.saga_id)),
            ("saga_name", text(&self.saga_name)),
            ("action", text(self.action.as_str())),
            ("request_id", text(&self.request_id)),
            ("command_id", opt_text(self.command_id.as_deref())),
            (
                "due_at",
                self.due_at.map_or(Value::Null, Value::TimestampMillis),
            ),
            ("reason", opt_text(self.reason.as_deref())),
            ("requested_by", opt_text(self.requested_by.as_deref())),
            ("data", opt_text(self.data.as_deref())),
            (
                "trigger_event_id",
                opt_text(self.trigger_event_id.as_deref()),
            ),
            ("trigger_type", opt_text(self.trigger_type.as_deref())),
            (
                "trigger_location",
                opt_text(self.trigger_location.as_deref()),
            ),
        ])
    }

    pub fn from_value(value: &Value) -> Result<Self, String> {
        let f = Fields::new(value)?;
        let action = f.string("action")?;
        Ok(Self {
            saga_id: f.string("saga_id")?,
            saga_name: f.string("saga_name")?,
            action: Action::parse(&action)
                .ok_or_else(|| format!("unknown control action `{action}`"))?,
            request_id: f.string("request_id")?,
            command_id: f.opt_string("command_id"),
            due_at: f.long("due_at"),
            reason: f.opt_string("reason"),
            requested_by: f.opt_string("requested_by"),
            data: f.opt_string("data"),
            trigger_event_id: f.opt_string("trigger_event_id"),
            trigger_type: f.opt_string("trigger_type"),
            trigger_location: f.opt_string("trigger_location"),
        })
    }
}

/// Field access on a decoded record, looking through unions.
struct Fields<'v>(&'v [(String, Value)]);

impl<'v> Fields<'v> {
    fn new(value: &'v Value) -> Result<Self, String> {
        match value {
            Value::Record(fields) => Ok(Self(fields)),
            other => Err(format!("expected a record, got {other:?}")),
        }
    }

    fn get(&self, name: &str) -> Option<&'v Value> {
        let v = self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)?;
        match v {
            Value::Union(_, inner) => Some(inner.as_ref()),
            v => Some(v),
        }
    }

    fn opt_string(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn string(&self, name: &str) -> Result<String, String> {
        self.opt_string(name)
            .ok_or_else(|| format!("field `{name}` is missing or not a string"))
    }

    fn int(&self, name: &str) -> Result<i32, String> {
        match self.get(name) {
            Some(Value::Int(i)) => Ok(*i),
            _ => Err(format!("field `{name}` is missing or not an int")),
        }
    }

    fn long(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(Value::Long(i) | Value::TimestampMillis(i)) => Some(*i),
            _ => None,
        }
    }

    fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Some(Value::Boolean(b)) => Some(*b),
            _ => None,
        }
    }
}

/// Problems that make a saga unusable with the catalog's schemas: a correlation key that is
/// not a string or number field of the trigger, or an outcome event with a required field
/// that neither the trigger nor the saga can fill.
pub fn definition_problems(def: &super::definition::SagaDef, catalog: &Catalog) -> Vec<String> {
    let mut problems = Vec::new();
    let of = format!("saga `{}`", def.name);
    let Ok(trigger) = catalog.latest(&def.trigger_type) else {
        return vec![format!("{of}: unknown trigger type `{}`", def.trigger_type)];
    };
    let mut schema = &trigger.schema;
    let names = named(&trigger.schema);
    for (i, segment) in def.correlation_key.iter().enumerate() {
        let field = match deref(schema, &names) {
            Schema::Record(r) => r.lookup.get(segment).map(|&i| &r.fields[i].schema),
            _ => None,
        };
        let Some(field) = field else {
            problems.push(format!(
                "{of}: correlation key `{}` is not a field of {}",
                def.correlation_key.join("."),
                def.trigger_type
            ));
            return problems;
        };
        schema = non_null(deref(field, &names));
        if i + 1 == def.correlation_key.len()
            && !matches!(schema, Schema::String | Schema::Long | Schema::Int)
        {
            problems.push(format!(
                "{of}: correlation key `{}` must be a string or an integer field",
                def.correlation_key.join(".")
            ));
        }
    }
    if let Some((completed, compensated)) = &def.outcome {
        let Schema::Record(trigger_record) = &trigger.schema else {
            return problems;
        };
        for t in [completed, compensated] {
            let Ok(entry) = catalog.latest(t) else {
                problems.push(format!("{of}: unknown outcome event type `{t}`"));
                continue;
            };
            let Schema::Record(r) = &entry.schema else {
                continue;
            };
            for f in r.fields.iter().skip(4) {
                let fillable = f.name == "saga_id"
                    || f.name == "reason"
                    || trigger_record.lookup.contains_key(&f.name)
                    || f.default.is_some();
                if !fillable {
                    problems.push(format!(
                        "{of}: outcome event {t} needs field `{}`, which {} does not have",
                        f.name, def.trigger_type
                    ));
                }
            }
        }
    }
    problems
}

fn named(schema: &Schema) -> HashMap<apache_avro::schema::Name, Schema> {
    apache_avro::schema::ResolvedSchema::try_from(schema)
        .map(|r| {
            r.get_names()
                .iter()
                .map(|(k, v)| (k.clone(), (*v).clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn deref<'s>(
    schema: &'s Schema,
    names: &'s HashMap<apache_avro::schema::Name, Schema>,
) -> &'s Schema {
    match schema {
        Schema::Ref { name } => names.get(name).unwrap_or(schema),
        s => s,
    }
}

fn non_null(schema: &Schema) -> &Schema {
    match schema {
        Schema::Union(u) => u
            .variants()
            .iter()
            .find(|v| !matches!(v, Schema::Null))
            .unwrap_or(schema),
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_topology::model::SAGA_CONTROL_TYPE;

    fn schema(t: &str) -> Schema {
        Catalog::embedded()
            .unwrap()
            .latest(t)
            .unwrap()
            .schema
            .clone()
    }

    /// Encodes through a book holding `t` (as the registry would give it id 7), decodes back.
    fn roundtrip(t: &str, fields: Vec<(&str, Value)>) -> Value {
        let s = schema(t);
        let book = SchemaBook {
            entries: [(
                ("topic".to_string(), t.to_string()),
                SchemaWriter::new(7, s.clone()).unwrap(),
            )]
            .into(),
        };
        let bytes = book.encode_fields("topic", t, fields).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&s)
            .build()
            .unwrap();
        reader.read_value(&mut &bytes[5..]).unwrap()
    }

    fn meta() -> Meta {
        Meta {
            event_id: event_id("x"),
            occurred_at: 1_700_000_000_000,
            source: "sluice://sagas/order-fulfillment".into(),
            subject: Some("o1".into()),
        }
    }

    #[test]
    fn commands_replies_and_controls_round_trip_through_their_schemas() {
        let command = Command {
            event_type: "dev.sluice.events.sagas.ChargePayment".into(),
            saga_id: "o1".into(),
            saga_name: "order-fulfillment".into(),
            step: "charge-payment".into(),
            kind: Kind::Action,
            compensates: None,
            attempt: 2,
            command_id: "o1:charge-payment:do:1".into(),
            correlation_id: "o1".into(),
            reply_topic: "sluice.saga.order-fulfillment.replies".into(),
            data: r#"{"order_id":"o1"}"#.into(),
            results: "{}".into(),
        };
        let v = roundtrip(&command.event_type, command.fields(&meta()));
        assert_eq!(
            Command::from_value(&command.event_type, &v).unwrap(),
            command
        );

        let reply = Reply {
            event_type: "dev.sluice.events.sagas.PaymentChargeFailed".into(),
            saga_id: "o1".into(),
            saga_name: "order-fulfillment".into(),
            step: "charge-payment".into(),
            command_id: "o1:charge-payment:do:1".into(),
            attempt: 2,
            reason: Some("card declined".into()),
            retryable: false,
            result: None,
        };
        let v = roundtrip(&reply.event_type, reply.fields(&meta()));
        assert_eq!(Reply::from_value(&reply.event_type, &v).unwrap(), reply);

        let mut control = Control::new("order-fulfillment", "o1", Action::Deadline, "r1");
        control.command_id = Some("o1:charge-payment:do:1".into());
        control.due_at = Some(1_700_000_005_000);
        let v = roundtrip(SAGA_CONTROL_TYPE, control.fields(&meta()));
        assert_eq!(Control::from_value(&v).unwrap(), control);
    }

    #[test]
    fn the_reference_saga_fits_the_catalog_and_a_bad_key_is_named() {
        let catalog = Catalog::embedded().unwrap();
        let types = catalog.event_types().map(str::to_string).collect();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../topology/topology.yaml");
        let topology = sluice_topology::Topology::load(path.as_ref(), &types).unwrap();
        let mut def = super::super::definition::SagaDef::from(&topology.sagas[0]);
        assert_eq!(definition_problems(&def, &catalog), Vec::<String>::new());
        def.correlation_key = vec!["total".into()];
        let problems = definition_problems(&def, &catalog);
        assert!(
            problems[0].contains("correlation key `total` must be a string or an integer"),
            "{problems:?}"
        );
        def.correlation_key = vec!["nope".into()];
        assert!(definition_problems(&def, &catalog)[0].contains("is not a field of"));
    }

    #[test]
    fn traceparents_continue_the_trace_with_a_new_span() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let child = child_traceparent(Some(parent), "o1/1/0");
        assert!(
            child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{child}"
        );
        assert_ne!(child, parent);
        assert_eq!(
            child,
            child_traceparent(Some(parent), "o1/1/0"),
            "deterministic"
        );
        let fresh = child_traceparent(None, "o1");
        assert_eq!(fresh.len(), 55);
        assert_eq!(event_id("a"), event_id("a"));
        assert_ne!(event_id("a"), event_id("b"));
    }
}
