//! sluice's operator tooling: what operators run against the topics the loops write.
//!
//! - [`dlq`]: dead letters listed, shown, replayed at most once each, purged;
//! - [`lag`]: every consumer group's lag in offsets and time, with Burrow-style status.

pub mod dlq;
pub mod lag;
