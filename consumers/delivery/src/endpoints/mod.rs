//! The endpoint registry: one [`Endpoint`] per subscription, kept as one JSON record per
//! endpoint (keyed by its id, a tombstone on delete) in the compacted topic
//! `<prefix>.state.endpoints` ([`topic`]).

pub mod breaker;
pub mod matching;
pub mod model;
pub mod secret;
pub mod table;

pub use breaker::BreakerSettings;
pub use matching::EventAttributes;
pub use model::{
    new_id, AttributeFilter, CeAttribute, Endpoint, EndpointPatch, EndpointSpec, EventTypePattern,
    FilterOp, Ordering, RetrySchedule, RotateRequest, ValidationError, DEFAULT_GRACE_PERIOD,
};
pub use secret::{EndpointSecret, SecretValue};
pub use table::{EndpointTable, Follower, TableError};

/// The compacted topic holding every endpoint of a deployment with topic prefix `prefix`.
pub fn topic(prefix: &str) -> String {
    sluice_topology::naming::endpoints_topic(prefix)
}
