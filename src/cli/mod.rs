//! Subcommands of the `sluice` binary. Each module is one command family; the libraries do
//! the work, these modules print.

pub mod demo;
pub mod doctor;

/// What to run when the local stack is not reachable.
pub const START_STACK_HINT: &str = "start the local stack with `make stack` (or `dev/stack up`)";
