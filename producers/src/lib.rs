//! sluice producers: the webhook gateway, provider signature verifiers and
//! the publish API.
//!
//! - [`verify`]: one signature scheme per provider, with stable error codes.
//! - [`gateway`]: the HTTP server (`sluice gateway`): `POST /webhooks/{source}` writes each
//!   verified delivery durably to its raw topic before acknowledging, and serves the publish
//!   API on the same port.
//! - [`publish`]: domain events validated against the catalog and produced as Avro, over
//!   HTTP (`POST /v1/events/{event_type}`) or from Rust ([`publish::Publisher`]).
//! - [`produce`]: the durable write both share: produce, wait for the delivery report.
//! - [`sign`]: providers' signing schemes, for sending test deliveries.
//! - [`traceparent`]: W3C trace context, re-exported from `sluice_schemas` where every hop
//!   shares it.

pub mod endpoints;
pub mod gateway;
pub mod produce;
pub mod publish;
pub mod sign;
pub use sluice_schemas::traceparent;
pub mod verify;
