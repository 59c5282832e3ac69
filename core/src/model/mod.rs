//! What flows in and out of the engine: telemetry, lanes, enforcement events, overrides,
//! the audit history, the router's per-agent view and the liveness heartbeat. Plain data
//! with its serialisation; no behaviour beyond validation and formatting.

pub mod enforcement;
pub mod heartbeat;
pub mod history;
pub mod lane;
pub mod overrides;
pub mod pact_change;
pub mod router_view;
pub mod telemetry;
