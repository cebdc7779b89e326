//! The publish API: backend services publish domain events as versioned Avro.
//!
//! Over HTTP, `POST /v1/events/{event_type}` on the gateway (see [`http`]); from Rust, a
//! [`Publisher`]. Both take the same path: the JSON is checked against the event type's
//! latest catalog schema (field-level errors), `event_id` / `occurred_at` / `source` are filled
//! in when absent, the value is encoded in the Confluent wire format with the schema id the
//! registry gave at start-up, and produced with CloudEvents headers (`ce_*`, `traceparent`)
//! to the topic the topology routes the type to, by the idempotent `acks=all` producer.
//!
//! ```no_run
//! use sluice_producers::publish::Publisher;
//! use sluice_runtime::kafka::KafkaClients;
//! use sluice_runtime::SluiceConfig;
//! use sluice_schemas::{Catalog, RegistryClient};
//! use sluice_topology::Topology;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = SluiceConfig::load(None)?;
//! let catalog = Catalog::embedded()?;
//! let types = catalog.event_types().map(str::to_string).collect();
//! let topology = Topology::load("topology/topology.yaml".as_ref(), &types)?;
//! let publisher = Publisher::new(
//!     &KafkaClients::new(config.kafka.clone()),
//!     &RegistryClient::new(&config.registry)?,
//!     &catalog,
//!     &topology,
//! )
//! .await?;
//! let published = publisher
//!     .publish(
//!         "dev.sluice.events.payments.PaymentSucceeded",
//!         serde_json::json!({
//!             "payment_id": "pi_123",
//!             "amount": {"amount": "20.00", "currency": "EUR"},
//!             "provider": "stripe"
//!         }),
//!     )
//!     .await?;
//! println!("{} at {}/{}@{}", published.event_id, published.topic, published.partition, published.offset);
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod http;
pub mod idempotency;
pub mod publisher;

pub use publisher::{
    PublishContext, PublishError, Published, Publisher, PublisherBuildError, PublisherOptions,
};
