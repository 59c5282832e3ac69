//! # driftgate-core
//!
//! The pure core of driftgate: pacts, the model of what flows in and out, and the
//! deterministic engine that judges every clause and chooses lanes. No Kafka, no async
//! runtime, no HTTP and no clock: the same inputs always give byte-identical outputs, so a
//! live run and a replay share this code path. The `driftgate` crate wraps it in adapters.
//!
//! - [`model`]: telemetry, lanes, enforcement events, overrides, history, router view,
//!   heartbeats;
//! - [`pact`]: pacts, clauses, predicates, durations;
//! - [`engine`]: event-time buffer and timers, keyed state, clause evaluation, lane choice;
//! - [`codec`]: Avro/JSON datums and the changelog format;
//! - [`timefmt`]: RFC 3339 formatting of event times.

#![warn(missing_docs)]

pub mod codec;
pub mod engine;
pub mod model;
pub mod pact;
pub mod timefmt;

#[cfg(test)]
mod test_rng;
