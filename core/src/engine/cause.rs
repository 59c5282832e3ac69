//! Why the engine re-evaluates an agent's lanes, and the reason code an enforcement event
//! carries for it.

use crate::engine::state::ClauseKey;
use crate::model::enforcement::{Causation, Detection};

/// The machine code of a lane change's reason (`reason.code` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CauseCode {
    /// A drift clause's detector verified a change against its baseline.
    DriftVerified,
    /// A limit clause's detector verified a breach of its bound.
    LimitBreached,
    /// One event broke a zero-tolerance limit.
    ZeroToleranceBreach,
    /// A verified alarm on a clause whose consequence is `settle` (no lane of its own).
    Settle,
    /// A high-risk clause's evidence is fresh again.
    EvidenceFresh,
    /// A high-risk clause's evidence went stale.
    EvidenceStale,
    /// The agent's model version changed; drift clauses must re-verify.
    ModelChanged,
    /// Every drift clause re-verified on the new model.
    ModelReverified,
    /// A clause re-verified after its dwell: its demand steps down.
    Reverified,
    /// An override came into force.
    OverrideApplied,
    /// An override expired.
    OverrideExpired,
    /// The blast-radius cap was re-checked for an agent it held at the fail mode.
    BlastRadiusRecheck,
    /// The agent served a workflow it has no verified history in.
    ScopeNewWorkflow,
    /// The agent called a tool it never called before.
    ScopeNewTool,
    /// The agent took a high-risk action, and none before (after its warm-up).
    ScopeFirstHighRisk,
    /// Every observing clause re-verified on traffic from the expanded scope.
    ScopeReverified,
    /// A scope change was released because its pact no longer covers the agent (it moved
    /// to a workflow the pact does not apply to).
    ScopeReleased,
    /// A pact version was activated, promoted or rolled back, and the agent's lanes follow.
    PactActivated,
}

impl CauseCode {
    /// Every code, in the order of the list in `Reason::code`'s documentation.
    pub const ALL: [CauseCode; 18] = [
        CauseCode::DriftVerified,
        CauseCode::LimitBreached,
        CauseCode::ZeroToleranceBreach,
        CauseCode::Settle,
        CauseCode::EvidenceFresh,
        CauseCode::EvidenceStale,
        CauseCode::ModelChanged,
        CauseCode::ModelReverified,
        CauseCode::Reverified,
        CauseCode::OverrideApplied,
        CauseCode::OverrideExpired,
        CauseCode::BlastRadiusRecheck,
        CauseCode::ScopeNewWorkflow,
        CauseCode::ScopeNewTool,
        CauseCode::ScopeFirstHighRisk,
        CauseCode::ScopeReverified,
        CauseCode::ScopeReleased,
        CauseCode::PactActivated,
    ];

    /// The code as written in enforcement events and the history.
    pub fn as_str(self) -> &'static str {
        match self {
            CauseCode::DriftVerified => "drift_verified",
            CauseCode::LimitBreached => "limit_breached",
            CauseCode::ZeroToleranceBreach => "zero_tolerance_breach",
            CauseCode::Settle => "settle",
            CauseCode::EvidenceFresh => "evidence_fresh",
            CauseCode::EvidenceStale => "evidence_stale",
            CauseCode::ModelChanged => "model_changed",
            CauseCode::ModelReverified => "model_reverified",
            CauseCode::Reverified => "reverified",
            CauseCode::OverrideApplied => "override_applied",
            CauseCode::OverrideExpired => "override_expired",
            CauseCode::BlastRadiusRecheck => "blast_radius_recheck",
            CauseCode::ScopeNewWorkflow => "scope_new_workflow",
            CauseCode::ScopeNewTool => "scope_new_tool",
            CauseCode::ScopeFirstHighRisk => "scope_first_high_risk",
            CauseCode::ScopeReverified => "scope_reverified",
            CauseCode::ScopeReleased => "scope_released",
            CauseCode::PactActivated => "pact_activated",
        }
    }

    /// Whether the cause is a scope trigger or re-verification.
    pub fn is_scope(self) -> bool {
        matches!(
            self,
            CauseCode::ScopeNewWorkflow
                | CauseCode::ScopeNewTool
                | CauseCode::ScopeFirstHighRisk
                | CauseCode::ScopeReverified
                | CauseCode::ScopeReleased
        )
    }

    /// Whether the cause explains a lane falling (the others explain a rise).
    pub fn steps_down(self) -> bool {
        matches!(
            self,
            CauseCode::Reverified
                | CauseCode::ModelReverified
                | CauseCode::EvidenceFresh
                | CauseCode::OverrideExpired
                | CauseCode::ScopeReverified
                | CauseCode::ScopeReleased
        )
    }
}

/// What a cause would be traced to, borrowed from the input until a cause is made: most
/// events make none, and the owned [`Causation`] costs two allocations per event.
#[derive(Debug, Clone, Copy)]
pub(super) struct CausedBy<'a> {
    pub(super) kind: &'static str,
    pub(super) id: &'a str,
    pub(super) at: i64,
}

impl CausedBy<'_> {
    pub(super) fn owned(&self) -> Causation {
        Causation { kind: self.kind.to_string(), id: self.id.to_string(), at: self.at }
    }
}

/// Why a re-evaluation happens: the reason, clause and evidence for any event it emits.
#[derive(Debug, Clone)]
pub(super) struct Cause {
    pub(super) code: CauseCode,
    pub(super) text: String,
    pub(super) clause: Option<ClauseKey>,
    pub(super) detection: Option<Detection>,
    pub(super) causation: Causation,
    /// Clean events counted when the decision was taken (for re-verifications).
    pub(super) clean_at_decision: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::CauseCode;

    #[test]
    fn codes_are_distinct_snake_case_and_documented_on_the_wire_type() {
        let names: Vec<&str> = CauseCode::ALL.iter().map(|c| c.as_str()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')), "{names:?}");
        let doc = include_str!("../model/enforcement.rs");
        let listed: Vec<&str> = doc
            .split("/// Machine code")
            .nth(1)
            .and_then(|d| d.split("pub code").next())
            .map(|d| d.split('`').skip(3).step_by(2).collect())
            .unwrap_or_default();
        assert_eq!(listed, names, "Reason::code's documentation lists every code, in order");
    }

    #[test]
    fn only_recoveries_and_expiries_explain_a_step_down() {
        let down: Vec<&str> = CauseCode::ALL.iter().filter(|c| c.steps_down()).map(|c| c.as_str()).collect();
        assert_eq!(
            down,
            [
                "evidence_fresh",
                "model_reverified",
                "reverified",
                "override_expired",
                "scope_reverified",
                "scope_released"
            ]
        );
    }
}
