//! Topology as code: `topology.yaml` declares the topics, webhook sources, event routes,
//! retry tiers, dead-letter topics, schema subjects and sagas of a sluice deployment.
//!
//! - [`model`]: the file's structure; unknown keys are errors.
//! - [`validate`]: cross-references (routes to declared topics, retry policies to DLQs, …),
//!   each error naming the file and the path inside it (`topics[3].partitions`).
//! - [`naming`]: the topic naming convention.
//! - [`sizes`]: record limits that let every accepted delivery be normalized or dead-lettered.
//! - [`plan`] / [`apply`]: the diff against a live cluster and its idempotent application.
//! - [`poll`]: sources fed by polling a list API (`sources[].poll`).
//! - [`asyncapi`]: an AsyncAPI 3.0 document for data teams.

pub mod alerts;
pub mod apply;
pub mod asyncapi;
pub mod http_step;
pub mod model;
pub mod naming;
pub mod plan;
pub mod poll;
pub mod sizes;
pub mod template;
pub mod validate;

pub use model::Topology;
pub use validate::{TopologyError, ValidationError};
