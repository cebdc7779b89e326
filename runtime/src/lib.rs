//! Shared plumbing for every sluice process: configuration, Kafka client builders,
//! telemetry, the admin HTTP server, the limited HTTP serving both servers share, graceful
//! shutdown, and the outbound HTTP client every sender shares ([`outbound`]).
//!
//! Nothing here knows about webhooks, schemas or sagas; those live in their own crates. The
//! outbound client knows HTTP, addresses and endpoints, not what it carries.

pub mod admin;
pub mod causes;
pub mod config;
pub mod fingerprint;
pub mod kafka;
pub mod outbound;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

pub use config::{ConfigError, SecretRef, SluiceConfig};
pub use shutdown::Shutdown;
