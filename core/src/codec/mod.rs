//! Byte formats the engine's state and records travel in: Avro datums written from and
//! read into JSON values (`avro_json`), the bundled Avro schemas (`schemas`), the
//! changelog's snapshot records (`changelog`), JSON lines (`jsonl`), and the fast telemetry
//! decoders for Avro (`telemetry_avro`) and JSON (`telemetry_json`).

pub mod avro_json;
pub mod changelog;
pub mod jsonl;
pub mod schemas;
pub mod telemetry_avro;
pub mod telemetry_json;
