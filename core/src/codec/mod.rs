//! Byte formats the engine's state and records travel in: Avro datums written from and
//! read into JSON values (`avro_json`), the bundled Avro schemas (`schemas`), the
//! changelog's snapshot records (`changelog`), and JSON lines (`jsonl`).

pub mod avro_json;
pub mod changelog;
pub mod jsonl;
pub mod schemas;
pub mod telemetry_avro;
