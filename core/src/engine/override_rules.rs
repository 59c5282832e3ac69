//! Overrides: accepted, applied, expired.

use super::*;

impl Engine {
    pub(super) fn on_override(&mut self, req: OverrideRequest) {
        let now = req.issued_at;
        let seq = self.agents.get(req.agent_id.as_str()).map_or(0, |a| a.seq);
        match overrides::validate(&req, seq, self.cfg.max_override_ttl.micros()) {
            Err(reason) => {
                self.stats.overrides_rejected += 1;
                let detail = serde_json::json!({"override": req, "reason": reason.to_string()});
                self.history(RecordKind::OverrideRejected, now, Some(req.agent_id.clone()), None, detail);
            }
            Ok(expires_at) => {
                let id = held_name(&self.agents, &req.agent_id);
                if !self.agents.contains_key(&id) {
                    // Known only by this override (telemetry may follow): its state expires
                    // like any other, so overrides for unknown ids cannot pile up.
                    let mut agent = AgentState::new(held_name(&self.workflows, ""), "", Vec::new(), now);
                    let at = now.saturating_add(self.cfg.state_ttl.micros());
                    agent.set_ttl_at(Some(at));
                    self.agents.insert(id.clone(), Box::new(agent));
                    self.schedule(at, Timer::Ttl(id.clone()));
                }
                self.stats.overrides_accepted += 1;
                if req.kind == OverrideKind::Loosen {
                    self.stats.overrides_bypass += 1;
                }
                let detail =
                    serde_json::json!({"override": req, "policy_bypass": req.kind == OverrideKind::Loosen});
                self.history(RecordKind::OverrideAccepted, now, Some(req.agent_id.clone()), None, detail);
                self.schedule(expires_at, Timer::OverrideExpiry(id, req.override_id.clone()));
                let agent_id = req.agent_id.clone();
                let kind = req.kind;
                let cause = Cause {
                    code: CauseCode::OverrideApplied,
                    text: format!(
                        "{:?} override `{}` by {} (ticket {}): {}",
                        kind, req.override_id, req.principal, req.ticket, req.reason
                    ),
                    clause: None,
                    detection: None,
                    causation: Causation { kind: "override".into(), id: req.override_id.clone(), at: now },
                    clean_at_decision: None,
                };
                let Some(agent) = self.agents.get_mut(agent_id.as_str()) else { return };
                agent.overrides.push(ActiveOverride { req, expires_at });
                // An attestation changes no lane by itself; lane overrides publish their state.
                self.reevaluate(&agent_id, cause, kind != OverrideKind::Attest);
            }
        }
    }

    pub(super) fn on_override_expiry(&mut self, agent_id: &str, id: &str, at: i64) {
        let Some(agent) = self.agents.get_mut(agent_id) else { return };
        let Some(i) = agent.overrides.iter().position(|o| o.req.override_id == id) else { return };
        let o = agent.overrides.remove(i);
        let detail = serde_json::json!({"override_id": id, "kind": o.req.kind, "expired_at": at});
        self.history(RecordKind::OverrideExpired, at, Some(agent_id.to_string()), None, detail);
        let cause = Cause {
            code: CauseCode::OverrideExpired,
            text: format!("override `{id}` expired; lane re-evaluated from the clauses"),
            clause: None,
            detection: None,
            causation: Causation { kind: "timer".into(), id: format!("override_expiry:{id}"), at },
            clean_at_decision: None,
        };
        self.reevaluate(agent_id, cause, o.req.kind != OverrideKind::Attest);
    }
}
