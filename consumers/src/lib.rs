//! sluice's consumers: the processing runtime every consumer shares, the normalizers that
//! turn raw webhook deliveries into canonical Avro events, and the operators' tools.

pub mod dlq;
pub mod lag;
pub mod normalize;
pub mod normalizer;
pub mod runtime;
pub mod saga;
