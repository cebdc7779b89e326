//! The transactional outbox.
//!
//! A service cannot write to its database and to Kafka atomically. With the outbox it does
//! not have to: it inserts its domain event into an outbox table in the same transaction as
//! its state change ([`OutboxWriter`]), and the relay ([`relay::Relay`]) publishes each row
//! as the Avro event of its type, exactly once and in order per aggregate.
//!
//! - [`ddl`]: the table, and why the relay reads only rows below the snapshot's xmin.
//! - [`writer`]: insert an event in the caller's transaction, checked against the catalog.
//! - [`sequencer`]: per-aggregate order and gaps, apart from I/O.
//! - [`position`]: a lane's position as records of a compacted topic.
//! - [`records`]: a row as its Kafka record (event or dead letter).
//! - [`lanes`]: how aggregates map to lanes and relays share them.
//! - [`relay`]: the loop.

pub mod ddl;
pub mod event;
pub mod lanes;
pub mod metrics;
pub mod position;
pub mod records;
pub mod relay;
pub mod sequencer;
pub mod writer;

pub use ddl::{create_statements, TableName};
pub use event::{OutboxEvent, OutboxRow, Position};
pub use writer::{OutboxWriter, WriteError};
