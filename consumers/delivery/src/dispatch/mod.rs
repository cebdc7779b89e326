//! Sending delivery tasks to their endpoints (see docs/delivery.md): per-endpoint queues
//! over a commit watermark, so no endpoint waits behind another.

pub mod dispatcher;
pub mod events;
pub mod health;
pub mod hot;
pub mod key_order;
pub mod metrics;
pub mod ops_events;
pub mod queues;
pub mod schedule;
pub mod settle;
pub mod tiers;

pub use dispatcher::{DispatchError, Dispatcher, DispatcherConfig, DEFAULT_DISABLE_AFTER};
pub use events::DeliveryEvent;
pub use metrics::DeliveryMetrics;
pub use queues::{EndpointId, Lanes, Order, Queued, Queues};
pub use settle::{DispatchTopics, Settled, Settlement, Settler};
pub use tiers::Tiers;
