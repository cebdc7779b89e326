//! Sending delivery tasks to their endpoints (see docs/delivery.md): per-endpoint queues
//! over a commit watermark, so no endpoint waits behind another.

pub mod queues;

pub use queues::{EndpointId, Lanes, Order, Queued, Queues};
