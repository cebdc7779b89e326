//! Subject resolution: which registry subject an event type is written under, and whether
//! that subject holds the catalog's schema, so a process can write it.
//!
//! Schemas are registered at deploy time by `sluice schemas register`, never by a writer.
//! Every process that writes Avro (the normalizer, sagas, the publisher) checks at start-up,
//! once per (topic, event type), that the subject's latest registered schema is the catalog's
//! latest version, and gets back a [`SchemaWriter`] with the registry's id:
//!
//! ```no_run
//! # async fn run(catalog: &sluice_schemas::Catalog, registry: &sluice_schemas::RegistryClient)
//! # -> Result<(), sluice_schemas::subject::SubjectError> {
//! use sluice_schemas::subject::{self, SubjectNaming};
//!
//! let ready = subject::resolve(
//!     catalog,
//!     registry,
//!     SubjectNaming::TopicRecordName,
//!     "sluice.events.payments",
//!     "dev.sluice.events.payments.PaymentSucceeded",
//! )
//! .await?;
//! println!("{} is id {}", ready.subject, ready.writer.id());
//! # Ok(()) }
//! ```

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogEntry, CatalogError};
use crate::codec::{CodecError, SchemaWriter};
use crate::registry::{Registration, RegistryClient, RegistryError};

/// How a subject name is derived from a topic and a record's full name (the topology's
/// `subjects.naming`), as Confluent's serializers name them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectNaming {
    /// `<topic>-<record full name>`: several event types per topic (the default).
    #[default]
    TopicRecordName,
    /// `<topic>-value`: one event type per topic.
    TopicName,
    /// `<record full name>`: one subject per type across topics.
    RecordName,
}

impl SubjectNaming {
    pub fn subject(self, topic: &str, record_full_name: &str) -> String {
        match self {
            SubjectNaming::TopicRecordName => format!("{topic}-{record_full_name}"),
            SubjectNaming::TopicName => format!("{topic}-value"),
            SubjectNaming::RecordName => record_full_name.to_string(),
        }
    }
}

/// Why an event type cannot be written yet. Both messages tell the operator what to run.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    #[error("subject {subject} is not registered or not readable ({reason}); run `sluice schemas register`")]
    NotRegistered {
        subject: String,
        /// Boxed: registry and codec errors are large, and this travels in every `Result`.
        reason: Box<Unreadable>,
    },
    #[error("subject {subject}'s latest schema (id {id}) is not the catalog's {event_type} v{version}; run `sluice schemas register`")]
    OutOfDate {
        subject: String,
        /// The id of the schema the registry has as the subject's latest.
        id: u32,
        event_type: String,
        /// The catalog's latest version, which the registry does not have as latest.
        version: u32,
    },
}

/// What stood between a subject and a ready writer, short of it being out of date.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// The event type is not in this build's catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The registry could not be asked (down, refused, unparseable answer).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry has no such subject: `sluice schemas register` has not run.
    #[error("no such subject")]
    Missing,
    /// The catalog's schema could not be prepared for writing.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A subject whose latest registered schema is the catalog's, with a writer for it.
#[derive(Debug, Clone)]
pub struct Ready {
    pub subject: String,
    /// The catalog version the writer writes.
    pub version: u32,
    /// Writes the wire format with the registry's id; built once, reused for every record.
    pub writer: SchemaWriter<'static>,
}

/// Resolves the subject `event_type` is written under on `topic`, checks that its latest
/// registered schema is the catalog's latest version, and returns a writer for it.
///
/// Asks the registry once; call it at start-up, never per record.
pub async fn resolve(
    catalog: &Catalog,
    registry: &RegistryClient,
    naming: SubjectNaming,
    topic: &str,
    event_type: &str,
) -> Result<Ready, SubjectError> {
    let subject = naming.subject(topic, event_type);
    let entry = match catalog.latest(event_type) {
        Ok(entry) => entry,
        Err(e) => return Err(not_registered(subject, e)),
    };
    match registry.registration_of(&subject, &entry.schema).await {
        Ok(registration) => ready(subject, entry, registration),
        Err(e) => Err(not_registered(subject, e)),
    }
}

/// The writer for `entry` given what the registry says of `subject`.
pub fn ready(
    subject: String,
    entry: &CatalogEntry,
    registration: Registration,
) -> Result<Ready, SubjectError> {
    match registration {
        Registration::Current { id } => match SchemaWriter::new(id, entry.schema.clone()) {
            Ok(writer) => Ok(Ready {
                subject,
                version: entry.version,
                writer,
            }),
            Err(e) => Err(not_registered(subject, e)),
        },
        Registration::OutOfDate { id } => Err(SubjectError::OutOfDate {
            subject,
            id,
            event_type: entry.full_name.clone(),
            version: entry.version,
        }),
        Registration::Missing => Err(not_registered(subject, Unreadable::Missing)),
    }
}

fn not_registered(subject: String, reason: impl Into<Unreadable>) -> SubjectError {
    SubjectError::NotRegistered {
        subject,
        reason: Box::new(reason.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{split_header, RecordLocation};

    const EVENT: &str = "dev.sluice.events.payments.PaymentSucceeded";
    const SUBJECT: &str = "sluice.events.payments-dev.sluice.events.payments.PaymentSucceeded";

    fn latest() -> CatalogEntry {
        Catalog::embedded().unwrap().latest(EVENT).unwrap().clone()
    }

    #[test]
    fn subjects_are_named_as_confluent_serializers_name_them() {
        let (topic, name) = ("orders", "dev.sluice.events.commerce.OrderPlaced");
        assert_eq!(
            SubjectNaming::TopicRecordName.subject(topic, name),
            "orders-dev.sluice.events.commerce.OrderPlaced"
        );
        assert_eq!(
            SubjectNaming::TopicName.subject(topic, name),
            "orders-value"
        );
        assert_eq!(SubjectNaming::RecordName.subject(topic, name), name);
        assert_eq!(SubjectNaming::default(), SubjectNaming::TopicRecordName);
    }

    #[test]
    fn a_current_subject_gives_a_writer_with_the_registry_id() {
        let entry = latest();
        let ready = ready(SUBJECT.into(), &entry, Registration::Current { id: 513 }).unwrap();
        assert_eq!(ready.subject, SUBJECT);
        assert_eq!(ready.version, entry.version);
        assert_eq!(ready.writer.id(), 513);
        assert_eq!(
            ready.writer.schema().canonical_form(),
            entry.schema.canonical_form()
        );
        let (_, value) = crate::codec::tests::payment();
        let bytes = ready.writer.encode(value).unwrap();
        let (id, _) = split_header(&bytes, &RecordLocation::default()).unwrap();
        assert_eq!(id, 513);
    }

    #[test]
    fn an_out_of_date_subject_names_both_schemas_and_the_fix() {
        let entry = latest();
        let err = ready(SUBJECT.into(), &entry, Registration::OutOfDate { id: 9 }).unwrap_err();
        assert!(
            matches!(&err, SubjectError::OutOfDate { id: 9, version, event_type, .. }
                if *version == entry.version && event_type == EVENT),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "subject {SUBJECT}'s latest schema (id 9) is not the catalog's {EVENT} v{}; \
                 run `sluice schemas register`",
                entry.version
            )
        );
    }

    #[test]
    fn a_missing_subject_says_so_and_names_the_fix() {
        let err = ready(SUBJECT.into(), &latest(), Registration::Missing).unwrap_err();
        assert!(
            matches!(&err, SubjectError::NotRegistered { reason, .. }
                if matches!(**reason, Unreadable::Missing)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "subject {SUBJECT} is not registered or not readable (no such subject); \
                 run `sluice schemas register`"
            )
        );
    }

    /// The catalog is consulted before the registry, so an event type this build does not
    /// know is refused as such. The client points at a closed port: asking it would give a
    /// registry error instead.
    #[tokio::test]
    async fn an_unknown_event_type_is_refused_before_asking_the_registry() {
        let registry = RegistryClient::new(&sluice_runtime::config::RegistryConfig {
            url: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .unwrap();
        let err = resolve(
            &Catalog::embedded().unwrap(),
            &registry,
            SubjectNaming::TopicName,
            "orders",
            "dev.sluice.events.NoSuchThing",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, SubjectError::NotRegistered { subject, reason }
                if subject == "orders-value"
                    && matches!(**reason, Unreadable::Catalog(CatalogError::UnknownEventType(_)))),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "subject orders-value is not registered or not readable (unknown event type \
             `dev.sluice.events.NoSuchThing` (see `sluice schemas list --catalog`)); \
             run `sluice schemas register`"
        );
    }
}
