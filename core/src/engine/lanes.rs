//! Lane choice: the lanes an agent's clauses and overrides demand, the cause that explains a change, and the enforcement event that announces it.

use super::*;

impl Engine {
    /// The lanes the clauses demand, before overrides, and the fail mode the blast-radius cap
    /// would apply: that of the pact whose clause drives the agent-wide lane, the strictest
    /// when clauses of several pacts drive it together, and `review` for a model change.
    pub(super) fn computed(&self, agent: &AgentState) -> (ByScope<Lane>, Lane) {
        let fail_mode = |k: &ClauseKey| clause_at(&self.pacts, k.0, k.1).0.doc.fail_mode;
        // Shadow versions' states keep would-be lanes only (see `judge_shadows`).
        let enforcing = |k: &&ClauseKey| !self.is_shadow(k.0);
        let clauses =
            agent.clauses.iter().filter(|(k, _)| enforcing(k)).map(|(k, s)| (s.demand, fail_mode(k)));
        let model = agent.model_change.as_ref().map(|mc| (mc.lane, Lane::Review));
        let scope = agent.scope.as_ref().map_or(&[][..], |s| &s.pending[..]);
        let scope_all = scope.iter().filter(|c| !c.high_risk_only).map(|c| (c.lane, Lane::Review));
        // By the lane, then the fail mode: ties go to the stricter, whatever the pacts' order.
        let (all, fail_mode) =
            clauses.chain(model).chain(scope_all).max().unwrap_or((Lane::Normal, Lane::Review));
        let stale_high_risk = agent
            .clauses
            .iter()
            .filter(|(k, _)| enforcing(k))
            .any(|(k, s)| s.stale && clause_at(&self.pacts, k.0, k.1).1.high_risk);
        let high = if stale_high_risk { all.max(Lane::Review) } else { all };
        let scope_high = scope.iter().filter(|c| c.high_risk_only).map(|c| c.lane).max();
        let high = high.max(scope_high.unwrap_or(Lane::Normal));
        (ByScope { all, high_risk: high }, fail_mode)
    }

    pub(super) fn reevaluate(&mut self, agent_id: &str, cause: Cause, force: bool) {
        self.reevaluate_all(agent_id, vec![cause], force);
    }

    /// Recomputes the agent's lanes after one step, which may have several causes; each
    /// scope's event names the cause that explains its change.
    pub(super) fn reevaluate_all(&mut self, agent_id: &str, causes: Vec<Cause>, force: bool) {
        let Some(agent) = self.agents.get(agent_id) else { return };
        let Some(first) = causes.first() else { return };
        let at = first.causation.at;
        let (mut lanes, fail_mode) = self.computed(agent);
        let mut capped = false;
        // Blast-radius cap: a new automatic block beyond the workflow's share applies the
        // fail mode. Blocks an operator ordered (kill, tighten) are not capped, and a loosened
        // agent that would not be blocked does not count.
        let automatic_block = || {
            overrides::apply(Lane::Block, Scope::All, &agent.overrides) == Lane::Block
                && overrides::apply(fail_mode, Scope::All, &agent.overrides) != Lane::Block
        };
        if lanes.all == Lane::Block && agent.published.all != Lane::Block && automatic_block() {
            let w = self.workflows.entry(agent.workflow.clone()).or_default();
            let n = w.agents.len();
            let would = w.blocked.len() + 1;
            if n >= self.cfg.blast_radius_min_agents && would as f64 > self.cfg.max_blocked_share * n as f64 {
                capped = true;
                lanes.all = fail_mode;
                lanes.high_risk = lanes.high_risk.min(Lane::Review).max(fail_mode);
                if !w.panicked {
                    w.panicked = true;
                    let ev = PanicEvent {
                        workflow: agent.workflow.to_string(),
                        would_block: would,
                        agents: n,
                        fail_mode,
                        at,
                    };
                    let detail = serde_json::to_value(&ev).unwrap_or_default();
                    self.out.push(Output::Panic(ev));
                    self.history(RecordKind::Panic, at, Some(agent_id.to_string()), None, detail);
                }
            }
        }
        let Some((id, agent)) = self.agents.get_key_value_mut(agent_id) else { return };
        // The workflow's set follows the flag; touched only when it changes.
        if agent.capped != capped {
            agent.capped = capped;
            if let Some(w) = self.workflows.get_mut(&agent.workflow) {
                if capped {
                    w.capped.insert(id.clone());
                } else {
                    w.capped.remove(agent_id);
                }
            }
        }
        let all = overrides::apply(lanes.all, Scope::All, &agent.overrides);
        // High-risk actions are never less restricted than the agent as a whole.
        let high_risk = overrides::apply(lanes.high_risk, Scope::HighRisk, &agent.overrides).max(all);
        let effective = ByScope { all, high_risk };
        // A settle is a side event of its own: it never stands in for a lane change that
        // happens in the same step, which must publish the new lane.
        let (settles, causes): (Vec<Cause>, Vec<Cause>) =
            causes.into_iter().partition(|c| c.code == CauseCode::Settle);
        let published = |e: &Engine| e.agents.get(agent_id).map(|a| a.published);
        for cause in settles.iter() {
            let Some(lane) = published(self) else { return };
            self.emit(agent_id, Scope::All, lane.all, lane.all, cause, true);
        }
        // Only settles: a lane that moves anyway (the blast-radius cap lifted) cites them.
        let causes = if causes.is_empty() { settles } else { causes };
        let mut cited = Vec::new();
        for scope in Scope::BOTH {
            let Some(agent) = self.agents.get(agent_id) else { return };
            let from = agent.published[scope];
            let to = effective[scope];
            if to == from && !(force && scope == Scope::All) {
                continue;
            }
            let cause = Self::pick_cause(agent, &causes, from, to).clone();
            cited.push(cause.text.clone());
            self.emit(agent_id, scope, from, to, &cause, false);
        }
        // Every scope trigger and release is announced, even when no lane moved for it (a
        // stricter lane already holds the agent) or another cause explained the move.
        for cause in causes.iter().filter(|c| c.code.is_scope() && !cited.contains(&c.text)) {
            let Some(lane) = published(self) else { return };
            self.emit(agent_id, Scope::All, lane.all, lane.all, cause, false);
        }
        let Engine { agents, workflows, .. } = self;
        if let Some(w) = agents.get(agent_id).and_then(|a| workflows.get_mut(&a.workflow)) {
            w.end_panic_if_clear();
        }
    }

    /// Chooses, among one step's causes, the one that explains a scope's lane change: a
    /// step-down cause when the lane falls, an escalation when it rises; among those, the
    /// one whose clause now demands the most. A detection outranks a model change.
    ///
    /// A step has several causes only on telemetry, whose lanes are published only when
    /// they change; a forced publication of an unchanged lane has one cause.
    pub(super) fn pick_cause<'c>(a: &AgentState, causes: &'c [Cause], from: Lane, to: Lane) -> &'c Cause {
        let fits = |c: &Cause| c.code.steps_down() == (to < from);
        let weight =
            |c: &Cause| c.clause.as_ref().and_then(|k| a.clauses.get(k)).map_or(Lane::Normal, |s| s.demand);
        let mut best = &causes[0];
        for c in &causes[1..] {
            let better = (fits(c) && !fits(best))
                || (fits(c) == fits(best)
                    && (weight(c) > weight(best)
                        || (best.code == CauseCode::ModelChanged && c.detection.is_some())));
            if better {
                best = c;
            }
        }
        best
    }

    pub(super) fn emit(
        &mut self,
        agent_id: &str,
        scope: Scope,
        from: Lane,
        to: Lane,
        cause: &Cause,
        settle: bool,
    ) {
        let Engine { cfg, pacts, agents, workflows, stats, chain, out, trace, .. } = self;
        let Some((id, agent)) = agents.get_key_value_mut(agent_id) else { return };
        agent.seq += 1;
        let seq = agent.seq;
        if !settle {
            agent.published[scope] = to;
        }
        let clause_ref = cause.clause.as_ref().map(|k| {
            let (pact, clause) = clause_at(pacts, k.0, k.1);
            (k, pact, clause)
        });
        let state = cause.clause.as_ref().and_then(|k| agent.clauses.get(k));
        let ov = agent
            .overrides
            .iter()
            .filter(|o| o.req.scope == scope || o.req.kind == OverrideKind::EmergencyKill)
            .max_by_key(|o| o.req.issued_at);
        let event = EnforcementEvent {
            event_id: event_id(agent_id, seq, scope),
            seq,
            agent_id: agent_id.to_string(),
            pact_id: clause_ref.map(|(_, p, _)| p.id().to_string()),
            pact_version: clause_ref.map(|(_, p, _)| p.version()),
            clause_id: clause_ref.map(|(_, _, c)| c.id.clone()),
            segment: clause_ref.map(|(k, _, _)| k.2.as_str().to_string()),
            lane_from: from,
            lane_to: to,
            action: if settle { "settle".into() } else { to.action().into() },
            scope,
            enforced: cfg.enforce,
            effective_at: cause.causation.at,
            expires_at: ov.map(|o| o.expires_at),
            min_dwell_until: state.map(|s| s.min_dwell_until).filter(|t| *t > i64::MIN),
            reason: Reason { code: cause.code.as_str().to_string(), text: cause.text.clone() },
            detection: cause.detection.clone(),
            evidence: state.map(|s| Evidence {
                fresh_as_of: s.last_at,
                stale: s.stale,
                clean_events: cause.clean_at_decision.unwrap_or(s.clean),
                required_clean_events: clause_ref.map_or(0, |(_, _, c)| c.recovery.clean_events),
            }),
            override_info: ov.map(|o| OverrideInfo {
                override_id: o.req.override_id.clone(),
                kind: serde_json::to_value(o.req.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                principal: o.req.principal.clone(),
                ticket: o.req.ticket.clone(),
                expires_at: o.expires_at,
            }),
            causation: cause.causation.clone(),
        };
        if scope == Scope::All && !settle {
            let w = workflows.entry(agent.workflow.clone()).or_default();
            if to == Lane::Block {
                w.blocked.insert(id.clone());
            } else {
                w.blocked.remove(agent_id);
            }
        }
        stats.enforcement_events += 1;
        if let (Some(tr), Some(k)) = (trace.as_deref_mut(), cause.clause.as_ref()) {
            tr.mark(agent_id, k, &event.event_id);
        }
        if let Some((_, p, _)) = clause_ref {
            *stats.pact_events.entry(p.id().to_string()).or_default() += 1;
        }
        let detail = serde_json::to_value(&event).unwrap_or_default();
        record_history(
            chain,
            out,
            RecordKind::Decision,
            event.effective_at,
            Some(agent_id.to_string()),
            clause_ref.map(|(_, p, c)| (p, c)),
            detail,
        );
        out.push(Output::Enforcement(event));
    }
}
