//! The Kafka side: consume telemetry and overrides, drive the engine per partition, and
//! produce events, history, router snapshots and the changelog.
//!
//! - `pipeline`: the loop; its thread alone owns the tasks; `batch`: a turn's records,
//!   evaluated one partition per worker;
//! - `rebalance`: the consumer's callbacks (assign, revoke, commits); `restore`: state
//!   from the changelog; `records`: the input through librdkafka's batch API;
//! - `commands`: the API's and control topic's way in, as commands on a channel;
//! - `tasks`: per-partition engines and the durability protocol (snapshot, close, commit);
//! - `emitter`: engine outputs and dead letters as records;
//! - `sink`: the producer behind `OutputSink`, with acknowledgements;
//! - `decode` and `registry`: records to telemetry; `control_topic`: overrides by Kafka.

mod batch;
pub mod commands;
pub mod control_topic;
pub mod decode;
pub mod emitter;
pub mod pipeline;
pub mod rebalance;
pub mod records;
pub mod registry;
pub mod restore;
pub mod sink;
pub mod tasks;
