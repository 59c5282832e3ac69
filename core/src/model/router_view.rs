//! The latest full state of one agent, as routers and operators see it: lanes per scope,
//! the `seq` of the last enforcement event, every clause's standing and evidence, and the
//! overrides in force. Written to the compacted snapshot topic (keyed by agent), so a
//! router can bootstrap without replaying enforcement events, and served by the HTTP API.

use crate::engine::Engine;
use crate::model::lane::Lane;
use crate::model::lane::Scope;
use crate::model::overrides::OverrideKind;
use driftgate_detectors::Detector;
use serde::{Deserialize, Serialize};

/// One clause's standing for the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClauseSnapshot {
    /// Pact id.
    pub pact_id: String,
    /// Pact version.
    pub pact_version: u32,
    /// Clause id.
    pub clause_id: String,
    /// Segment (empty when unsegmented).
    pub segment: String,
    /// Lane the clause demands.
    pub demand: Lane,
    /// Detector name.
    pub detector: String,
    /// Current statistic and its threshold.
    pub statistic: f64,
    /// See `statistic`.
    pub threshold: f64,
    /// Observations seen by the detector.
    pub n: u64,
    /// Clean observations since the last alarm or step.
    pub clean_events: u64,
    /// Whether the evidence is stale.
    pub stale: bool,
    /// Event time of the newest observation (µs).
    pub last_evidence_at: i64,
    /// No step down before this event time (µs).
    pub min_dwell_until: Option<i64>,
    /// A clause of a shadow pact version: its demand is a would-be lane, not enforced.
    #[serde(default)]
    pub shadow: bool,
}

/// A scope expansion holding the agent until re-verified (see the pact's `scope`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeChangeSnapshot {
    /// `new_workflow`, `new_tool` or `first_high_risk`.
    pub kind: String,
    /// The workflow or tool (empty for high-risk actions).
    pub value: String,
    /// The pact whose trigger fired.
    pub pact_id: String,
    /// Event time of the trigger (µs).
    pub since: i64,
    /// Lane held.
    pub lane: Lane,
    /// The scope the lane holds.
    pub holds: Scope,
    /// Clean observations from the new scope so far, per observing clause.
    pub clean_events: std::collections::BTreeMap<String, u64>,
}

/// An override in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverrideSnapshot {
    /// Override id.
    pub override_id: String,
    /// What it does.
    pub kind: OverrideKind,
    /// Its lane, if any.
    pub lane: Option<Lane>,
    /// Scope.
    pub scope: Scope,
    /// Who.
    pub principal: String,
    /// Ticket.
    pub ticket: String,
    /// Expiry (µs).
    pub expires_at: i64,
}

/// The full state of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    /// Agent.
    pub agent_id: String,
    /// `seq` of the last enforcement event.
    pub seq: u64,
    /// Which life of the agent's state `seq` counts in: the event time (µs) at which the
    /// engine created the state. `seq` restarts when an idle agent's state expires
    /// (`state_ttl`) and the agent returns, with a later incarnation; routers order updates
    /// by `(incarnation, seq)`. The same value is the `driftgate.incarnation` header of the
    /// agent's enforcement events.
    #[serde(default)]
    pub incarnation: i64,
    /// Effective lane for all actions.
    pub lane: Lane,
    /// Effective lane for high-risk actions.
    pub high_risk_lane: Lane,
    /// Last seen workflow.
    pub workflow: String,
    /// Last seen model version.
    pub model_version: String,
    /// A model change awaiting re-verification, as `from -> to`.
    pub model_change: Option<String>,
    /// Scope expansions awaiting re-verification.
    #[serde(default)]
    pub scope_changes: Vec<ScopeChangeSnapshot>,
    /// Event time last seen (µs).
    pub last_seen: i64,
    /// Every clause.
    pub clauses: Vec<ClauseSnapshot>,
    /// Overrides in force.
    pub overrides: Vec<OverrideSnapshot>,
}

impl AgentSnapshot {
    /// The agent's snapshot, if the engine knows it.
    pub fn of(engine: &Engine, agent_id: &str) -> Option<AgentSnapshot> {
        let a = engine.agent(agent_id)?;
        let pacts = engine.pacts();
        let clauses = a
            .clauses
            .iter()
            .filter_map(|((p, c, seg), s)| {
                let pact = pacts.get(*p as usize)?;
                let clause = pact.doc.clauses.get(*c as usize)?;
                let v = s.detector.view();
                Some(ClauseSnapshot {
                    pact_id: pact.id().to_string(),
                    pact_version: pact.version(),
                    clause_id: clause.id.clone(),
                    segment: seg.as_str().to_string(),
                    demand: s.demand,
                    detector: s.detector.name().to_string(),
                    statistic: if v.statistic.is_finite() { v.statistic } else { 0.0 },
                    threshold: if v.threshold.is_finite() { v.threshold } else { 0.0 },
                    n: v.n,
                    clean_events: s.clean,
                    stale: s.stale,
                    last_evidence_at: s.last_at,
                    min_dwell_until: (s.min_dwell_until > i64::MIN).then_some(s.min_dwell_until),
                    shadow: engine.is_shadow_slot(*p),
                })
            })
            .collect();
        Some(AgentSnapshot {
            agent_id: agent_id.to_string(),
            seq: a.seq,
            incarnation: a.first_seen,
            lane: a.published.all,
            high_risk_lane: a.published.high_risk,
            workflow: a.workflow.to_string(),
            model_version: a.model_version.to_string(),
            model_change: a.model_change.as_ref().map(|m| format!("{} -> {}", m.from, m.to)),
            scope_changes: a
                .scope
                .iter()
                .flat_map(|s| s.pending.iter())
                .filter_map(|c| {
                    let pact = pacts.get(c.pact as usize)?;
                    let clause = |i: &u16| {
                        pact.doc.clauses.get(*i as usize).map_or_else(String::new, |c| c.id.clone())
                    };
                    Some(ScopeChangeSnapshot {
                        kind: c.kind.as_str().to_string(),
                        value: c.value.clone(),
                        pact_id: pact.id().to_string(),
                        since: c.since,
                        lane: c.lane,
                        holds: if c.high_risk_only { Scope::HighRisk } else { Scope::All },
                        clean_events: c.clean.iter().map(|(i, n)| (clause(i), *n)).collect(),
                    })
                })
                .collect(),
            last_seen: a.last_seen,
            clauses,
            overrides: a
                .overrides
                .iter()
                .map(|o| OverrideSnapshot {
                    override_id: o.req.override_id.clone(),
                    kind: o.req.kind,
                    lane: o.req.lane,
                    scope: o.req.scope,
                    principal: o.req.principal.clone(),
                    ticket: o.req.ticket.clone(),
                    expires_at: o.expires_at,
                })
                .collect(),
        })
    }
}
