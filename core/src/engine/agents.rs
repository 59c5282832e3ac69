//! Agent bookkeeping: coverage, the per-event walk over an agent's clauses, model changes and the state TTL.

use super::clauses::EventCx;
use super::scope::Observed;
use super::*;

/// What walking an event through its agent found, for what follows it in `on_telemetry`.
struct Walked {
    /// Causes for a re-evaluation of the agent's lanes.
    causes: Vec<Cause>,
    /// Each clause's outcome, gathered only while a scope change waits (`scope_pending`).
    observed: Vec<(u16, u16, Observed)>,
    /// Whether every high-risk clause the event fed had fresh evidence.
    high_risk_fresh: bool,
    /// Whether the event was high-risk and fed a high-risk clause.
    has_high_risk: bool,
    /// The agent is held at its fail mode by the blast-radius cap.
    capped: bool,
    /// A scope change waits for re-verification.
    scope_pending: bool,
}

impl Engine {
    /// The active and shadow pact versions covering an agent in a workflow.
    pub(super) fn covering(&self, agent: &str, workflow: &str) -> Vec<u16> {
        (0..self.pacts.len())
            .filter(|i| self.slots[*i].role != Role::Retired && self.pacts[*i].covers(agent, workflow))
            .map(|i| i as u16)
            .collect()
    }

    /// The engine's parts an event's walk borrows: the agents, and the rest apart from them.
    fn split(&mut self) -> (&mut AgentMap, EventCx<'_>) {
        let Engine { agents, pacts, protos, slots, stats, trace, timers, dirty, segment_buf, .. } = self;
        (
            agents,
            EventCx { pacts, protos, slots, stats, trace: trace.as_deref_mut(), timers, dirty, segment_buf },
        )
    }

    /// Evaluates one telemetry record. Borrowed: the record is large, and the caller keeps
    /// it to retire (see [`Engine::retire_into`]).
    pub(super) fn on_telemetry(&mut self, tel: &Telemetry) {
        self.stats.telemetry += 1;
        let now = tel.occurred_at;
        let span = debug_span!("telemetry", agent = %tel.agent_id, event = %tel.event_id);
        let _g = span.enter();
        let causation = CausedBy { kind: "telemetry", id: &tel.event_id, at: now };
        let ttl = self.cfg.state_ttl.micros();
        // Almost every event: a known agent, still in its workflow, looked up once for
        // everything that follows. Others go through `place_agent` first.
        let (agents, mut cx) = self.split();
        let walked = match agents.get_key_value_mut(tel.agent_id.as_str()) {
            Some((id, agent)) if *agent.workflow == *tel.workflow => {
                Some(Self::walk(&mut cx, id, agent, tel, ttl, &causation))
            }
            _ => None,
        };
        let walked = match walked {
            Some(w) => w,
            None => {
                self.place_agent(tel, now);
                let (agents, mut cx) = self.split();
                // Present: `place_agent` has just created it if it was not.
                let Some((id, agent)) = agents.get_key_value_mut(tel.agent_id.as_str()) else { return };
                Self::walk(&mut cx, id, agent, tel, ttl, &causation)
            }
        };
        let Walked { mut causes, observed, high_risk_fresh, has_high_risk, capped, scope_pending } = walked;
        if scope_pending {
            causes.extend(self.count_scope(tel, &observed, now, &causation));
        }
        // Shadow versions' causes are judged apart and never reach the published lanes.
        if causes.iter().any(|c| c.clause.as_ref().is_some_and(|k| self.is_shadow(k.0))) {
            let (shadow, active): (Vec<Cause>, Vec<Cause>) =
                causes.into_iter().partition(|c| c.clause.as_ref().is_some_and(|k| self.is_shadow(k.0)));
            self.judge_shadows(&tel.agent_id, &shadow);
            causes = active;
        }
        if has_high_risk {
            self.stats.high_risk_decisions += 1;
            self.stats.high_risk_fresh += high_risk_fresh as u64;
        }
        if causes.is_empty() && capped {
            causes.push(Cause {
                code: CauseCode::BlastRadiusRecheck,
                text: "blast-radius cap re-checked: the agent's clauses demand block, and the cap no longer holds it at the fail mode".into(),
                clause: None,
                detection: None,
                causation: causation.owned(),
                clean_at_decision: None,
            });
        }
        if !causes.is_empty() {
            self.reevaluate_all(&tel.agent_id, causes, false);
        }
    }

    /// Creates the agent on its first event, or follows it to a new workflow (coverage, and
    /// the workflow sets the blast-radius cap counts): the rare path of an event, before its
    /// walk. A known agent that stays in its workflow needs neither.
    #[cold]
    #[inline(never)]
    fn place_agent(&mut self, tel: &Telemetry, now: i64) {
        if self.agents.get(tel.agent_id.as_str()).is_some_and(|a| *a.workflow == *tel.workflow) {
            return;
        }
        // Pact coverage depends on agent and workflow only: matched on creation, and again
        // on a move.
        let pacts = self.covering(&tel.agent_id, &tel.workflow);
        let workflow = held_name(&self.workflows, &tel.workflow);
        let id = held_name(&self.agents, &tel.agent_id);
        let Some(agent) = self.agents.get_mut(&id) else {
            self.workflows.entry(workflow.clone()).or_default().agents.insert(id.clone());
            self.agents.insert(id, Box::new(AgentState::new(workflow, &tel.model.version, pacts, now)));
            return;
        };
        let old = std::mem::replace(&mut agent.workflow, workflow.clone());
        agent.pacts = pacts.into_boxed_slice();
        if let Some(w) = self.workflows.get_mut(&old) {
            w.remove(tel.agent_id.as_str());
        }
        let (blocked, capped) = (agent.published.all == Lane::Block, agent.capped);
        let w = self.workflows.entry(workflow).or_default();
        w.agents.insert(id.clone());
        if blocked {
            w.blocked.insert(id.clone());
        }
        if capped {
            w.capped.insert(id);
        }
    }

    /// Walks one event through its agent: marks it changed, records it seen (scheduling its
    /// state TTL, a `ttl` on, if none is pending), then the model-version and scope checks
    /// and every clause of every pact covering the agent.
    fn walk(
        cx: &mut EventCx<'_>,
        id: &Arc<str>,
        agent: &mut AgentState,
        tel: &Telemetry,
        ttl: i64,
        causation: &CausedBy<'_>,
    ) -> Walked {
        let now = tel.occurred_at;
        cx.dirty.mark(id, Some((id, &mut *agent)));
        if let Some(at) = agent.seen(now, ttl) {
            cx.timers.insert(at, Timer::Ttl(id.clone()));
        }
        let mut causes: Vec<Cause> = Vec::new();
        let mut observed = Vec::new();
        let mut high_risk_fresh = true;
        let mut has_high_risk = false;
        if agent.model_version != tel.model.version {
            Self::on_model_version(cx, agent, tel, now, causation, &mut causes);
        }
        // Scope re-verification needs each clause's outcome; gathered only while one waits.
        let scope_pending = Self::on_scope(cx, agent, tel, now, causation, &mut causes);
        // Clauses. on_clause does not change the agent's coverage, so it is read once.
        // Copied out (on the stack for up to 8 pacts, not cloned per event) so that the
        // clauses may borrow the agent mutably.
        let mut inline = [0u16; 8];
        let heap: Vec<u16>;
        let covered: &[u16] = if agent.pacts.len() <= inline.len() {
            inline[..agent.pacts.len()].copy_from_slice(&agent.pacts);
            &inline[..agent.pacts.len()]
        } else {
            heap = agent.pacts.to_vec();
            &heap
        };
        let pacts = cx.pacts;
        for &p in covered {
            for ci in 0..pacts[p as usize].doc.clauses.len() as u16 {
                let o = Self::on_clause(cx, id, agent, tel, p, ci, now, causation, &mut causes);
                if scope_pending {
                    observed.push((p, ci, o));
                }
                let (_, clause) = clause_at(pacts, p, ci);
                if clause.high_risk && tel.risk == crate::model::telemetry::Risk::High {
                    has_high_risk = true;
                    high_risk_fresh &= agent
                        .clauses
                        .iter()
                        .filter(|((pp, cc, _), _)| *pp == p && *cc == ci)
                        .all(|(_, s)| !s.stale);
                }
            }
        }
        Walked { causes, observed, high_risk_fresh, has_high_risk, capped: agent.capped, scope_pending }
    }

    /// A new model version: drift clauses must re-verify on it, and the agent waits in the
    /// clauses' `on_model_change` lane meanwhile. Adds the cause, if any clause has to.
    #[cold]
    #[inline(never)]
    fn on_model_version(
        cx: &EventCx<'_>,
        agent: &mut AgentState,
        tel: &Telemetry,
        now: i64,
        causation: &CausedBy<'_>,
        causes: &mut Vec<Cause>,
    ) {
        let (pacts, slots) = (cx.pacts, cx.slots);
        let from = std::mem::replace(&mut agent.model_version, tel.model.version.clone()).to_string();
        let pending: BTreeSet<ClauseKey> = agent
            .clauses
            .keys()
            .filter(|(p, _, _)| slots[*p as usize].role == Role::Active)
            .filter(|(p, c, _)| matches!(clause_at(pacts, *p, *c).1.test, Test::Drift(_)))
            .cloned()
            .collect();
        if pending.is_empty() {
            return;
        }
        let lane = pending
            .iter()
            .map(|(p, c, _)| clause_at(pacts, *p, *c).1.on_model_change)
            .max()
            .unwrap_or(Lane::Watch);
        for k in &pending {
            if let Some(s) = agent.clauses.get_mut(k) {
                s.clean = 0;
            }
        }
        let text = format!(
            "model version changed {from} -> {}: drift baselines kept; {} clause(s) must re-verify on the new model",
            tel.model.version,
            pending.len()
        );
        agent.model_change = Some(Box::new(ModelChange {
            from,
            to: tel.model.version.to_string(),
            since: now,
            lane,
            pending,
        }));
        causes.push(Cause {
            code: CauseCode::ModelChanged,
            text,
            clause: None,
            detection: None,
            causation: causation.owned(),
            clean_at_decision: None,
        });
    }

    pub(super) fn on_ttl(&mut self, agent_id: &Arc<str>, at: i64) {
        let ttl = self.cfg.state_ttl.micros();
        let Some(agent) = self.agents.get_mut(agent_id) else { return };
        agent.set_ttl_at(None);
        let idle = at - agent.last_seen >= ttl;
        let quiet = agent.published == ByScope::both(Lane::Normal) && agent.overrides.is_empty();
        if !(idle && quiet) {
            // Not idle: check again a TTL after the last event. Idle but not quiet (a lane
            // or an override still holds): state is kept, and checked again a TTL later.
            let next = if idle { at + ttl.max(1) } else { agent.last_seen + ttl };
            agent.set_ttl_at(Some(next));
            self.schedule(next, Timer::Ttl(agent_id.clone()));
            return;
        }
        let Some(agent) = self.agents.remove(agent_id) else { return };
        if let Some(w) = self.workflows.get_mut(&agent.workflow) {
            w.remove(agent_id);
        }
        self.stats.states_expired += 1;
        let detail = serde_json::json!({"last_seen": agent.last_seen, "ttl": self.cfg.state_ttl.to_string(), "clauses": agent.clauses.len(), "seq": agent.seq});
        self.history(RecordKind::StateExpired, at, Some(agent_id.to_string()), None, detail);
    }
}
