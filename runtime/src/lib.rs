//! Shared plumbing for every sluice process: configuration, Kafka client builders,
//! telemetry, the admin HTTP server, the limited HTTP serving both servers share, and graceful
//! shutdown.
//!
//! Nothing here knows about webhooks, schemas or sagas; those live in their own crates.

pub mod admin;
pub mod config;
pub mod kafka;
pub mod outbound;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

pub use config::{ConfigError, SecretRef, SluiceConfig};
pub use shutdown::Shutdown;
