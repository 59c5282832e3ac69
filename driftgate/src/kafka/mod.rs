//! The Kafka side: consume telemetry and overrides, drive the engine per partition, and
//! produce events, history, router snapshots and the changelog.

pub mod control_topic;
pub mod decode;
pub mod pipeline;
pub mod registry;
pub mod sink;
