//! Liveness for routers: every `engine.heartbeat_interval` of wall time, each input
//! partition's engine publishes a heartbeat on the snapshot topic, which routers already
//! read to bootstrap. Without it a router cannot tell "nothing changed" from "the engine is
//! down or behind".
//!
//! The record's key is `driftgate.heartbeat/<topic>/<partition>` (so a compacted snapshot
//! topic keeps the latest one per partition) and its header `driftgate.kind` is
//! `heartbeat`; agent snapshots carry no such header and are keyed by agent id. The value
//! is a JSON [`Heartbeat`], published as `schemas/heartbeat.schema.json`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Key prefix of heartbeat records on the snapshot topic.
pub const KEY_PREFIX: &str = "driftgate.heartbeat/";

/// The record key of a partition's heartbeat.
pub fn key(topic: &str, partition: i32) -> String {
    format!("{KEY_PREFIX}{topic}/{partition}")
}

/// Whether the engine is still running the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    /// Consuming; the next heartbeat is due within `interval_ms`.
    Running,
    /// Stopped cleanly (shutdown or partition revoked): expect no further heartbeat from this
    /// instance for the partition.
    Stopped,
}

/// One partition engine's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Always `heartbeat`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The input topic.
    pub source_topic: String,
    /// The input partition.
    pub source_partition: i32,
    /// The instance that runs it (process id and start time).
    pub instance: String,
    /// Running, or stopped cleanly.
    pub state: EngineState,
    /// Wall time it was published (µs since the Unix epoch).
    pub wall_time: i64,
    /// Wall time until the next heartbeat (ms). A router that sees none for a few intervals
    /// should treat the partition's lanes as unconfirmed.
    pub interval_ms: u64,
    /// The partition's watermark (µs of event time): every decision up to it is published.
    pub watermark: Option<i64>,
    /// The largest event time read (µs).
    pub max_event_time: Option<i64>,
    /// The last input offset the engine has read.
    pub last_offset: Option<i64>,
    /// The engine's position: the next input offset to read.
    pub position: Option<i64>,
    /// The last offset committed to the consumer group (outputs of everything before it are
    /// in Kafka).
    pub committed: Option<i64>,
    /// Inputs waiting behind the watermark.
    pub buffered: usize,
    /// Whether the partition has had no record for `engine.idle_timeout`.
    pub idle: bool,
}

/// The JSON Schema of heartbeats, as published in `schemas/heartbeat.schema.json`.
pub fn heartbeat_json_schema() -> String {
    let schema = schemars::schema_for!(Heartbeat);
    format!("{}\n", serde_json::to_string_pretty(&schema).expect("a schema serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_schema_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/heartbeat.schema.json");
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            published,
            heartbeat_json_schema(),
            "regenerate with: driftgate heartbeat-schema > schemas/heartbeat.schema.json"
        );
    }

    #[test]
    fn wire_form() {
        let h = Heartbeat {
            kind: "heartbeat".into(),
            source_topic: "t".into(),
            source_partition: 3,
            instance: "i".into(),
            state: EngineState::Running,
            wall_time: 7,
            interval_ms: 5000,
            watermark: Some(1),
            max_event_time: None,
            last_offset: Some(41),
            position: Some(42),
            committed: None,
            buffered: 0,
            idle: true,
        };
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["state"].as_str(), v["position"].as_i64(), v["committed"].is_null()),
            (Some("heartbeat"), Some("running"), Some(42), true)
        );
        assert_eq!(serde_json::from_value::<Heartbeat>(v).unwrap(), h);
        assert_eq!(key("agent-telemetry", 3), "driftgate.heartbeat/agent-telemetry/3");
    }
}
