//! Byte formats the engine's state and records travel in: Avro datums written from and
//! read into JSON values (`avro_json`), and the changelog's snapshot records (`changelog`).

pub mod avro_json;
pub mod changelog;
