//! Observability: the Prometheus registry and the `driftgate_*` metrics (`metrics`), and the
//! named internal events that log and count what happens on the Kafka side (`events`).

pub mod events;
pub mod metrics;
