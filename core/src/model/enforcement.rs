//! Enforcement events: the level-triggered desired state a router applies for a key.

use crate::model::lane::{Lane, Scope};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The Avro schema of [`EnforcementEvent`], as published in `schemas/enforcement_event.avsc`.
pub const ENFORCEMENT_AVSC: &str = include_str!("../../../schemas/enforcement_event.avsc");

/// Why the lane is what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Machine code (the engine's `CauseCode`): `drift_verified`, `limit_breached`,
    /// `zero_tolerance_breach`, `settle`, `evidence_fresh`, `evidence_stale`, `model_changed`,
    /// `model_reverified`, `reverified`, `override_applied`, `override_expired`,
    /// `blast_radius_recheck`, `scope_new_workflow`, `scope_new_tool`,
    /// `scope_first_high_risk`, `scope_reverified`, `scope_released`, `pact_activated`.
    pub code: String,
    /// Plain words for a person.
    pub text: String,
}

/// The statistical evidence behind a detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Detector name.
    pub detector: String,
    /// Statistic at the alarm.
    pub statistic: f64,
    /// Threshold crossed.
    pub threshold: f64,
    /// False-alarm rate (or alpha) the threshold was derived from.
    pub false_alarm_rate: Option<f64>,
    /// Baseline estimate (JSON).
    pub baseline: String,
    /// Observed estimate since the change (JSON).
    pub observed: String,
    /// Observations since the estimated change point.
    pub n: u64,
    /// Estimated event time of the change point (µs).
    pub change_point_at: i64,
    /// Estimated event time of the first post-change event (µs).
    pub first_post_change_at: i64,
    /// Event time of the verifying event (µs).
    pub verified_at: i64,
}

/// Evidence freshness of the clause behind the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Event time of the newest evidence (µs).
    pub fresh_as_of: i64,
    /// Whether the evidence is stale.
    pub stale: bool,
    /// Clean events since the last alarm (re-verification progress).
    pub clean_events: u64,
    /// Clean events that re-verification needs.
    pub required_clean_events: u64,
}

/// An operator override in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverrideInfo {
    /// Override id.
    pub override_id: String,
    /// `emergency_kill`, `tighten`, `loosen` or `attest`.
    pub kind: String,
    /// Who.
    pub principal: String,
    /// Ticket.
    pub ticket: String,
    /// Expiry (µs).
    pub expires_at: i64,
}

/// What caused the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Causation {
    /// `telemetry`, `override` or `timer`.
    pub kind: String,
    /// The telemetry `event_id`, the override id, or the timer name.
    pub id: String,
    /// Its event time (µs).
    pub at: i64,
}

/// A change of an agent's enforcement lane in one scope, carrying the full desired state, so
/// a router can apply it knowing nothing else. Routers drop events whose `seq` they have seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnforcementEvent {
    /// Deterministic id: the same input always yields the same id.
    pub event_id: String,
    /// Per-agent, strictly increasing.
    pub seq: u64,
    /// The agent.
    pub agent_id: String,
    /// Pact behind the decision, if one.
    pub pact_id: Option<String>,
    /// Its version.
    pub pact_version: Option<u32>,
    /// Clause behind the decision, if one.
    pub clause_id: Option<String>,
    /// Segment of the clause state (`""` when unsegmented).
    pub segment: Option<String>,
    /// Lane before.
    pub lane_from: Lane,
    /// Lane now (the desired state).
    pub lane_to: Lane,
    /// What the router does (`allow`, `route_lower_trust`, ..., or `settle`).
    pub action: String,
    /// Scope of the lane.
    pub scope: Scope,
    /// False in observe-only mode.
    pub enforced: bool,
    /// Event time at which the lane applies (µs).
    pub effective_at: i64,
    /// When an override behind this lane expires (µs).
    pub expires_at: Option<i64>,
    /// No step down before this (µs).
    pub min_dwell_until: Option<i64>,
    /// Why.
    pub reason: Reason,
    /// Statistical evidence, for detections.
    pub detection: Option<Detection>,
    /// Freshness of the evidence.
    pub evidence: Option<Evidence>,
    /// The override in force, if any.
    #[serde(rename = "override")]
    pub override_info: Option<OverrideInfo>,
    /// Which input caused it.
    pub causation: Causation,
}

/// The deterministic id of an agent's `seq`-th event.
pub fn event_id(agent_id: &str, seq: u64, scope: Scope) -> String {
    let mut h = Sha256::new();
    h.update(agent_id.as_bytes());
    h.update([0]);
    h.update(seq.to_be_bytes());
    h.update(scope.as_str().as_bytes());
    let d = h.finalize();
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}
