//! Outbound webhook delivery: companies' customers subscribe HTTP endpoints to event types,
//! and sluice delivers each matching event as a signed, retried POST.
//!
//! This crate holds what every part of that agrees on:
//! - [`endpoints`]: the endpoint (subscription) registry — the model with its validation,
//!   which events an endpoint takes ([`endpoints::matching`]), and the in-memory table kept
//!   from the compacted `<prefix>.state.endpoints` topic ([`endpoints::table`]);
//! - [`signing`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`), one `v1,` signature per secret still in force.
//!
//! - [`log`] and [`resend`]: reading an endpoint's delivery log back, and sending a delivery
//!   again rebuilt from its event (`sluice deliveries`, `/v1/endpoints/{id}/deliveries`).
//!
//! The gateway's `/v1/endpoints` API writes endpoint records; the delivery consumer reads
//! the same table to decide where each event goes.

pub mod attempt_log;
pub mod dispatch;
pub mod endpoints;
pub mod fanout;
pub mod log;
pub mod payload;
pub mod resend;
pub mod signing;
pub mod status;
pub mod task;
