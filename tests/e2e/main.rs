//! End-to-end tests against the real local stack: an Apache Kafka broker and an Apicurio
//! schema registry started by `dev/stack up` (which `make test` runs first).
//!
//! One test binary, as in Svix: shared set-up lives in `support`, each area in its own module.
//! When the stack is not running, every test fails with a message naming the command to run;
//! none of them skips.

mod chaos;
mod cli;
mod compose;
mod deliver;
mod dlq;
mod docs;
mod endpoints;
mod faults;
mod fencing;
mod gateway;
mod intake;
mod interop;
mod lag;
mod normalizer;
mod observability;
mod ordering;
mod outbox;
mod poll;
mod publish;
mod retry;
mod roundtrip;
mod saga;
mod saga_http;
mod scale;
mod schemas;
mod support;
mod tail;
mod topology;
mod trace;
