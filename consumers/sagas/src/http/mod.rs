//! Saga steps that are HTTP calls (`http:` in `topology.yaml`), executed by a built-in
//! participant through the shared outbound client ([`sluice_runtime::outbound`]).
//!
//! - [`values`]: what the templates are filled in with, and how (URL-encoded, redacted).
//! - [`call`]: one prepared call: its request, and what a response means for the saga.
//! - [`participant`]: the [`Participant`](crate::participant::Participant) that runs them.
//! - [`uncertain`]: compensating an action whose answer never came.
//! - [`record`]: what an instance remembers of its calls, for operators.
//! - [`payments`]: the reference saga's payment step as such a call (demo, tests, bench).

pub mod call;
pub mod participant;
pub mod payments;
pub mod record;
pub mod uncertain;
pub mod values;

pub use call::{HttpCall, CALL_KEY};
pub use participant::HttpParticipant;
pub use record::{recorded_calls, RecordedCall};
