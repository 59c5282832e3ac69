//! The lane machine's tests against the pure core alone: a model-based test and property
//! tests. They live with `driftgate-core` (no Kafka, no HTTP), so a mutation run of the
//! engine rebuilds only the core.

mod model;
mod properties;
