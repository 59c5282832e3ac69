//! The Kafka side: consume telemetry and overrides, drive the engine per partition, and
//! produce events, history, router snapshots and the changelog.
//!
//! - `pipeline`: the loop, rebalances and restore; its thread alone owns the tasks;
//! - `commands`: the API's and control topic's way in, as commands on a channel;
//! - `tasks`: per-partition engines and the durability protocol (snapshot, close, commit);
//! - `emitter`: engine outputs and dead letters as records;
//! - `sink`: the producer behind `OutputSink`, with acknowledgements;
//! - `decode` and `registry`: records to telemetry; `control_topic`: overrides by Kafka.

pub mod commands;
pub mod control_topic;
pub mod decode;
pub mod emitter;
pub mod pipeline;
pub mod registry;
pub mod sink;
pub mod tasks;
