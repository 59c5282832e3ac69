//! Scope expansion: an agent acting outside the scope it was verified in (a new workflow, a
//! new tool, its first high-risk action) is held until the pact's clauses re-verify on
//! traffic from the new scope. See [`crate::pact::ScopeRules`].

use super::clauses::EventCx;
use super::*;
use crate::engine::state::{ScopeChange, ScopeKind, ScopeState};
use crate::model::telemetry::Risk;

/// What one clause made of one event, for re-verification in an expanded scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Observed {
    /// The clause did not observe the event (filtered out, null, refused).
    Nothing,
    /// Observed without an alarm.
    Clean,
    /// Observed, and its detector alarmed.
    Alarm,
}

impl Engine {
    /// Checks the event against the agent's verified scope, under every covering pact with
    /// scope triggers: inside a pact's warm-up the scope is learned; after it, each new
    /// workflow, tool or first high-risk action opens a [`ScopeChange`], with a cause in
    /// `causes`. Whether any scope change awaits re-verification.
    pub(super) fn on_scope(
        cx: &mut EventCx<'_>,
        agent: &mut AgentState,
        tel: &Telemetry,
        now: i64,
        causation: &CausedBy<'_>,
        causes: &mut Vec<Cause>,
    ) -> bool {
        let EventCx { pacts, slots, stats, .. } = cx;
        // Shadow versions do not judge scope: their triggers would hold the agent.
        let active = |p: &u16| slots[*p as usize].role == Role::Active;
        // A change whose pact no longer covers the agent (it moved to a workflow the pact
        // does not apply to) could never re-verify: it is released, not held forever.
        if let Some(st) = agent.scope.as_mut() {
            let covered = &agent.pacts;
            let mut released = Vec::new();
            st.pending.retain(|ch| {
                let keep = covered.contains(&ch.pact);
                if !keep {
                    released.push(format!(
                        "{} `{}` of pact `{}`",
                        ch.kind.as_str(),
                        ch.value,
                        pacts[ch.pact as usize].id()
                    ));
                }
                keep
            });
            if !released.is_empty() {
                causes.push(Cause {
                    code: CauseCode::ScopeReleased,
                    text: format!(
                        "scope change released: {}; the pact no longer covers the agent in workflow `{}`",
                        released.join(", "),
                        tel.workflow
                    ),
                    clause: None,
                    detection: None,
                    causation: causation.owned(),
                    clean_at_decision: None,
                });
            }
        }
        if !agent.pacts.iter().any(|p| active(p) && pacts[*p as usize].doc.scope.is_some()) {
            return agent.scope.as_ref().is_some_and(|s| !s.pending.is_empty());
        }
        let st = agent.scope.get_or_insert_with(Box::default);
        st.events += 1;
        let mut found: Vec<(ScopeKind, &str)> = Vec::new();
        if !st.workflows.contains(tel.workflow.as_str()) {
            found.push((ScopeKind::NewWorkflow, &tel.workflow));
        }
        for t in &tel.tool_calls {
            if !st.tools.contains(t.as_str()) && !found.iter().any(|(_, v)| v == t) {
                found.push((ScopeKind::NewTool, t));
            }
        }
        if tel.risk == Risk::High && !st.high_risk {
            found.push((ScopeKind::FirstHighRisk, ""));
        }
        if found.is_empty() {
            return !st.pending.is_empty();
        }
        let opened = causes.len();
        let mut learn = false;
        for &p in agent.pacts.iter().filter(|p| active(p)) {
            let pact = &pacts[p as usize];
            let Some(r) = &pact.doc.scope else { continue };
            if st.events <= r.warm_up {
                learn = true;
                continue;
            }
            for &(kind, value) in &found {
                let lane = match kind {
                    ScopeKind::NewWorkflow => r.on_new_workflow,
                    ScopeKind::NewTool => r.on_new_tool,
                    ScopeKind::FirstHighRisk => r.on_first_high_risk,
                };
                let Some(lane) = lane else { continue };
                if st.pending.iter().any(|c| c.pact == p && c.kind == kind && c.value == value) {
                    continue;
                }
                if kind == ScopeKind::NewTool && st.tools.len() >= ScopeState::MAX_TOOLS {
                    continue;
                }
                let high_risk_only = r.holds == Scope::HighRisk;
                st.pending.push(ScopeChange {
                    kind,
                    value: value.to_string(),
                    pact: p,
                    since: now,
                    lane,
                    high_risk_only,
                    clean: BTreeMap::new(),
                });
                *stats.scope_triggers.entry(kind.as_str().to_string()).or_default() += 1;
                let (code, what) = match kind {
                    ScopeKind::NewWorkflow => (
                        CauseCode::ScopeNewWorkflow,
                        format!("served workflow `{value}`, which it has no verified history in"),
                    ),
                    ScopeKind::NewTool => (
                        CauseCode::ScopeNewTool,
                        format!("called tool `{value}`, which it never called before"),
                    ),
                    ScopeKind::FirstHighRisk => {
                        (CauseCode::ScopeFirstHighRisk, "took a high-risk action, its first".to_string())
                    }
                };
                causes.push(Cause {
                    code,
                    text: format!(
                        "scope expanded: the agent {what}; {} {} until every clause of pact `{}` observing that traffic re-verifies on {} clean events from it",
                        if high_risk_only { "high-risk actions held at" } else { "held at" },
                        lane.as_str(),
                        pact.id(),
                        r.reverify.clean_events
                    ),
                    clause: None,
                    detection: None,
                    causation: causation.owned(),
                    clean_at_decision: None,
                });
            }
        }
        if causes.len() == opened && learn {
            for (kind, value) in found {
                st.learn(kind, value);
            }
        }
        !st.pending.is_empty()
    }

    /// Counts one event's clause outcomes towards the re-verification of the agent's pending
    /// scope changes whose scope the event is in; closes those whose every observing clause
    /// has `reverify.clean_events` consecutive clean observations, after the dwell. The
    /// cause, if any closed.
    pub(super) fn count_scope(
        &mut self,
        tel: &Telemetry,
        observed: &[(u16, u16, Observed)],
        now: i64,
        causation: &CausedBy<'_>,
    ) -> Option<Cause> {
        let Engine { agents, pacts, .. } = self;
        let st = agents.get_mut(tel.agent_id.as_str())?.scope.as_mut()?;
        let mut closed = Vec::new();
        st.pending.retain_mut(|ch| {
            let in_scope = match ch.kind {
                ScopeKind::NewWorkflow => tel.workflow == ch.value,
                ScopeKind::NewTool => tel.tool_calls.iter().any(|t| *t == ch.value),
                ScopeKind::FirstHighRisk => tel.risk == Risk::High,
            };
            // A pact version without scope triggers releases its changes at activation.
            let Some(r) = pacts.get(ch.pact as usize).and_then(|p| p.doc.scope.as_ref()) else { return true };
            if !in_scope {
                return true;
            }
            for (_, c, o) in observed.iter().filter(|(p, _, _)| *p == ch.pact) {
                match o {
                    Observed::Clean => *ch.clean.entry(*c).or_default() += 1,
                    Observed::Alarm => {
                        ch.clean.insert(*c, 0);
                    }
                    Observed::Nothing => {}
                }
            }
            let need = r.reverify.clean_events;
            let done = !ch.clean.is_empty()
                && ch.clean.values().all(|n| *n >= need)
                && now >= ch.since.saturating_add(r.reverify.min_dwell.micros());
            if done {
                closed.push((ch.clone(), need, pacts[ch.pact as usize].id().to_string()));
            }
            !done
        });
        let mut texts = Vec::new();
        for (ch, need, pact) in closed {
            st.learn(ch.kind, &ch.value);
            let what = match ch.kind {
                ScopeKind::NewWorkflow => format!("workflow `{}`", ch.value),
                ScopeKind::NewTool => format!("tool `{}`", ch.value),
                ScopeKind::FirstHighRisk => "high-risk actions".to_string(),
            };
            texts.push(format!(
                "scope re-verified: {what} now in verified scope ({} clause(s) of pact `{pact}` saw {need} clean events from it)",
                ch.clean.len()
            ));
        }
        (!texts.is_empty()).then(|| Cause {
            code: CauseCode::ScopeReverified,
            text: texts.join("; "),
            clause: None,
            detection: None,
            causation: causation.owned(),
            clean_at_decision: None,
        })
    }
}

impl ScopeState {
    /// Takes `kind`/`value` into the verified scope.
    fn learn(&mut self, kind: ScopeKind, value: &str) {
        match kind {
            ScopeKind::NewWorkflow => {
                self.workflows.insert(value.to_string());
            }
            ScopeKind::NewTool => {
                if self.tools.len() < ScopeState::MAX_TOOLS {
                    self.tools.insert(value.to_string());
                }
            }
            ScopeKind::FirstHighRisk => self.high_risk = true,
        }
    }
}
