//! Observability: the Prometheus registry and the `driftgate_*` metrics.

pub mod metrics;
