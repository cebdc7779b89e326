//! The sluice event catalog and its schema registry integration.
//!
//! - [`catalog`]: the versioned `.avsc` files under `schemas/avro/`.
//! - [`registry`]: a client for a Confluent-compatible schema registry.
//! - [`codec`]: Avro in the Confluent wire format, with writer schemas cached by id and
//!   reader-schema resolution.
//! - [`subject`]: which subject an event type is written under, and the start-up check that
//!   it holds the catalog's schema, giving the one writer of the wire format.
//! - [`json`]: Avro values to and from JSON, with exact decimals.

pub mod catalog;
pub mod codec;
pub mod compat;
pub mod json;
pub mod metadata;
pub mod registry;
pub mod subject;
pub mod traceparent;

pub use catalog::{Catalog, CatalogEntry, CatalogError};
pub use codec::{AvroCodec, CodecError, RecordLocation};
pub use registry::{Registration, RegistryClient, RegistryError};
pub use subject::{SubjectError, SubjectNaming};
