//! Clause evaluation: one observation through a clause's detector, alarms, recovery, re-verification after a model change, and evidence freshness.

use super::scope::Observed;
use super::*;
use registry::SlotInfo;

/// What evaluating an event needs of the engine besides its agent's state (the model-version
/// and scope checks and every clause): borrowed apart from the agents, so that an event looks
/// its agent up once rather than once per step.
pub(super) struct EventCx<'a> {
    pub(super) pacts: &'a [Pact],
    pub(super) protos: &'a [Vec<AnyDetector>],
    pub(super) slots: &'a [SlotInfo],
    pub(super) stats: &'a mut Stats,
    pub(super) trace: Option<&'a mut Tracer>,
    pub(super) timers: &'a mut super::timers::Timers,
    pub(super) dirty: &'a mut super::dirty::Dirty,
    /// Where a segment of more than one field is joined (see [`Engine`]'s `segment_buf`).
    pub(super) segment_buf: &'a mut String,
}

impl Engine {
    /// Feeds one clause of `agent`; adds a cause to `causes` when its demand or freshness
    /// changed (both may change on one event). Causes are large, so they are pushed rather
    /// than returned. What the clause made of the event, for scope re-verification.
    ///
    /// Always inlined into its one caller, the loop over an event's clauses: the compiler's
    /// own choice moves with the size of the detectors' code, and out of line the call cost
    /// 3 % of the engine bench's instructions (callgrind).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn on_clause(
        cx: &mut EventCx<'_>,
        id: &Arc<str>,
        agent: &mut AgentState,
        tel: &Telemetry,
        p: u16,
        ci: u16,
        now: i64,
        causation: &CausedBy<'_>,
        causes: &mut Vec<Cause>,
    ) -> Observed {
        let (pact, clause) = clause_at(cx.pacts, p, ci);
        if let Some(w) = &clause.metric.when {
            if w.0.eval(tel) != Val::Bool(true) {
                return Observed::Nothing;
            }
        }
        let val = clause.metric.value.0.eval(tel);
        let obs = match (clause.metric.kind, val) {
            (_, Val::Null) => return Observed::Nothing,
            (MetricKind::Bernoulli, Val::Bool(b)) => Observation::Bool(b),
            (MetricKind::Real, Val::Num(x)) => Observation::Real(x),
            (MetricKind::Categorical, Val::Str(s)) => Observation::Category(s),
            // Attributes are typed at run time; a mismatch is an invalid observation.
            _ => {
                cx.stats.invalid_observations += 1;
                return Observed::Nothing;
            }
        };
        // The `segment_by` fields joined with `|` (a non-string field is empty): borrowed from
        // the record when there is one field, joined in the engine's buffer for more. The
        // state is found by its key's parts, so that an event builds no key: that took two
        // allocations per segmented clause and event, and the join two more.
        let field = |f: &crate::pact::SegmentField| match f.field().get(tel) {
            Val::Str(s) => s,
            _ => "",
        };
        let segment = match clause.segment_by.as_slice() {
            [] => "",
            [f] => field(f),
            fields => {
                let buf = &mut *cx.segment_buf;
                buf.clear();
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        buf.push('|');
                    }
                    buf.push_str(field(f));
                }
                buf.as_str()
            }
        };
        let keep = clause.freshness.as_ref().map_or(1, |f| f.min_events as usize);
        let (key, state) = agent.clauses.entry_or_insert_with(p, ci, segment, || {
            Box::new(ClauseState::new(cx.protos[p as usize][ci as usize].clone(), now))
        });
        state.observe(now, keep);
        let mut fresh_again = false;
        // One event is not enough when the window asks for more: stale until fresh again.
        if state.stale && clause.freshness.as_ref().is_none_or(|f| state.is_fresh(now, f)) {
            state.stale = false;
            fresh_again = clause.high_risk;
        }
        let need_timer =
            clause.freshness.as_ref().map(|f| state.stale_deadline(f)).filter(|_| state.timer_at().is_none());
        if let Some(at) = need_timer {
            state.set_timer_at(Some(at));
        }
        let result = state.detector.update(obs);
        if let Some(tr) = cx.trace.as_deref_mut() {
            // At an alarm the detector restarts, so the crossing values come from the alarm.
            let point = match &result {
                Ok(Some(a)) => Some((a.statistic, a.threshold)),
                Ok(None) => Some(state.detector.view()).map(|v| (v.statistic, v.threshold)),
                Err(_) => None,
            };
            if let Some((s, t)) = point {
                tr.record(&tel.agent_id, key, now, s, t);
            }
        }
        // Made before the outcome's causes, which may need the agent (and so its key as an
        // owned copy); pushed after them.
        let fresh = fresh_again.then(|| Cause {
            code: CauseCode::EvidenceFresh,
            text: format!("clause `{}` has fresh evidence again", clause.id),
            clause: Some(key.clone()),
            detection: None,
            causation: causation.owned(),
            clean_at_decision: None,
        });
        if let Some(at) = need_timer {
            cx.timers.insert(at, Timer::Freshness(id.clone(), key.clone()));
        }
        let observed = match &result {
            Err(_) => Observed::Nothing,
            Ok(Some(_)) => Observed::Alarm,
            Ok(None) => Observed::Clean,
        };
        // Causes are pushed where they arise. A clean event, the common case, builds none:
        // an `Option<Cause>` taken out of this match was copied on every event (272 bytes,
        // a twentieth of the engine's instructions).
        match result {
            Err(e) => {
                debug!(pact = %pact.id(), clause = %clause.id, error = %e, "observation refused");
                cx.stats.invalid_observations += 1;
            }
            Ok(Some(alarm)) => {
                if cx.slots[p as usize].role == Role::Active {
                    *cx.stats.alarms.entry(clause_label(pact, clause)).or_default() += 1;
                }
                causes.push(Self::on_alarm(state, pact, clause, &alarm, now, key, causation));
            }
            Ok(None) => {
                state.clean += 1;
                // The common case (nothing to recover, no model change) needs no more lookups.
                let recovering = state.demand != Lane::Normal;
                if recovering || agent.model_change.is_some() {
                    let (clean, key) = (state.clean, key.clone());
                    causes.extend(Self::after_clean(agent, &key, clean, recovering, clause, now, causation));
                }
            }
        }
        if let Some(fresh) = fresh {
            causes.push(fresh);
        }
        observed
    }

    pub(super) fn on_alarm(
        state: &mut ClauseState,
        pact: &Pact,
        clause: &Clause,
        alarm: &Alarm,
        now: i64,
        key: &ClauseKey,
        causation: &CausedBy<'_>,
    ) -> Cause {
        let critical = clause.severity == Severity::Critical;
        let target = if critical { Some(Lane::Block) } else { clause.consequence.lane() };
        let gap = state.gap;
        // Saturating: `gap` comes from stored state, which a corrupt record can make huge.
        let first_post = now.saturating_sub((alarm.n_current.saturating_sub(1) as f64 * gap) as i64);
        let detection = Detection {
            detector: alarm.detector.clone(),
            statistic: alarm.statistic,
            threshold: alarm.threshold,
            false_alarm_rate: alarm.false_alarm_rate,
            baseline: serde_json::to_string(&alarm.baseline).unwrap_or_default(),
            observed: serde_json::to_string(&alarm.current).unwrap_or_default(),
            n: alarm.n_current,
            change_point_at: first_post.saturating_sub((gap / 2.0) as i64),
            first_post_change_at: first_post,
            verified_at: now,
        };
        state.last_detection = Some(Box::new(detection.clone()));
        state.clean = 0;
        // Fresh evidence is needed for re-verification; drift detectors keep their baseline.
        state.detector.restart();
        let (code, what) = match &clause.test {
            Test::Drift(_) => (CauseCode::DriftVerified, "drift verified"),
            Test::Limit(l) if l.zero_tolerance => (CauseCode::ZeroToleranceBreach, "zero-tolerance breach"),
            Test::Limit(_) => (CauseCode::LimitBreached, "limit breach verified"),
        };
        let Some(lane) = target else {
            return Cause {
                code: CauseCode::Settle,
                text: format!("{what} on clause `{}` of pact `{}`: settle", clause.id, pact.id()),
                clause: Some(key.clone()),
                detection: Some(detection),
                causation: causation.owned(),
                clean_at_decision: None,
            };
        };
        if state.demand < lane {
            state.demand = lane;
            state.escalations += 1;
        }
        state.needs_attestation |= critical;
        state.min_dwell_until = state.min_dwell_until.max(now + dwell(clause, state.escalations));
        Cause {
            code,
            text: format!(
                "{what} on clause `{}` of pact `{}` (statistic {:.2} >= threshold {:.2}; baseline {} -> observed {} over {} events)",
                clause.id,
                pact.id(),
                alarm.statistic,
                alarm.threshold,
                detection.baseline,
                detection.observed,
                alarm.n_current
            ),
            clause: Some(key.clone()),
            detection: Some(detection),
            causation: causation.owned(),
            clean_at_decision: None,
        }
    }

    /// After a clean observation of a clause that is recovering, or whose agent's model
    /// change awaits re-verification: the cause, if either is done. Out of line, so that
    /// the common clean event never holds a cause.
    #[cold]
    #[inline(never)]
    fn after_clean(
        agent: &mut AgentState,
        key: &ClauseKey,
        clean: u64,
        recovering: bool,
        clause: &Clause,
        now: i64,
        causation: &CausedBy<'_>,
    ) -> Option<Cause> {
        let mc = if agent.model_change.is_some() {
            Self::check_model_reverified(agent, key, clean, clause, now, causation)
        } else {
            None
        };
        if !recovering {
            return mc;
        }
        let attested = agent.attested(&clause.id);
        agent
            .clauses
            .get_mut(key)
            .and_then(|state| Self::check_recovery(state, clause, attested, now, key, causation))
            .or(mc)
    }

    pub(super) fn check_model_reverified(
        agent: &mut AgentState,
        key: &ClauseKey,
        clean: u64,
        clause: &Clause,
        now: i64,
        causation: &CausedBy<'_>,
    ) -> Option<Cause> {
        let mc = agent.model_change.as_mut()?;
        if !mc.pending.contains(key)
            || clean < clause.recovery.clean_events
            || now < mc.since + clause.recovery.min_dwell.micros()
        {
            return None;
        }
        mc.pending.remove(key);
        if !mc.pending.is_empty() {
            return None;
        }
        let mc = agent.model_change.take()?;
        Some(Cause {
            code: CauseCode::ModelReverified,
            text: format!(
                "model {} re-verified: every drift clause saw {} clean events since the change",
                mc.to, clause.recovery.clean_events
            ),
            clause: None,
            detection: None,
            causation: causation.owned(),
            clean_at_decision: None,
        })
    }

    pub(super) fn check_recovery(
        state: &mut ClauseState,
        clause: &Clause,
        attested: bool,
        now: i64,
        key: &ClauseKey,
        causation: &CausedBy<'_>,
    ) -> Option<Cause> {
        if state.demand == Lane::Normal || now < state.min_dwell_until {
            return None;
        }
        let reverified = match &clause.test {
            Test::Limit(l) if !l.zero_tolerance => state.detector.verified_in_control_at().is_some(),
            Test::Limit(_) => state.clean >= clause.recovery.clean_events,
            // Drift: enough clean events, and the restarted change statistic is not building
            // up (below half its threshold). A quiet stretch alone is weak evidence, because
            // detection delays have long tails.
            Test::Drift(_) => {
                let v = state.detector.view();
                state.clean >= clause.recovery.clean_events
                    && (v.threshold <= 0.0 || v.statistic <= v.threshold / 2.0)
            }
        };
        if !reverified || (state.demand == Lane::Block && state.needs_attestation && !attested) {
            return None;
        }
        let from = state.demand;
        state.demand = from.step_down();
        let clean = state.clean;
        let view = state.detector.view();
        state.clean = 0;
        if matches!(&clause.test, Test::Limit(l) if !l.zero_tolerance) {
            // The next step needs a new verification of compliance.
            state.detector.reset();
        }
        state.min_dwell_until = now + dwell(clause, state.escalations);
        if state.demand == Lane::Normal {
            state.needs_attestation = false;
        }
        Some(Cause {
            code: CauseCode::Reverified,
            text: format!(
                "clause `{}` re-verified on fresh traffic ({clean} clean events, statistic {:.2} of threshold {:.2}{}); stepping down {} -> {}",
                clause.id,
                view.statistic,
                view.threshold,
                if attested && from == Lane::Block { ", human attestation present" } else { "" },
                from.as_str(),
                state.demand.as_str()
            ),
            clause: Some(key.clone()),
            detection: None,
            causation: causation.owned(),
            clean_at_decision: Some(clean),
        })
    }

    pub(super) fn on_freshness_timer(&mut self, agent_id: &Arc<str>, key: ClauseKey, at: i64) {
        let (_, clause) = clause_at(&self.pacts, key.0, key.1);
        let Some(f) = clause.freshness.clone() else { return };
        let high_risk = clause.high_risk;
        let Some(agent) = self.agents.get_mut(agent_id) else { return };
        let Some(state) = agent.clauses.get_mut(&key) else { return };
        state.set_timer_at(None);
        if state.is_fresh(at, &f) {
            let next = state.stale_deadline(&f).max(at + 1);
            state.set_timer_at(Some(next));
            self.schedule(next, Timer::Freshness(agent_id.clone(), key));
            return;
        }
        if state.stale {
            return;
        }
        state.stale = true;
        let last = state.last_at;
        let (pact, clause) = clause_at(&self.pacts, key.0, key.1);
        let text = format!(
            "clause `{}` has fewer than {} events within {} (last evidence at {}): evidence is stale",
            clause.id,
            f.min_events,
            f.max_age,
            crate::timefmt::rfc3339(last)
        );
        let detail = serde_json::json!({"reason": text, "last_evidence_at": last, "high_risk": high_risk});
        let (pact, clause) = (pact.clone(), clause.clone());
        self.history(RecordKind::Stale, at, Some(agent_id.to_string()), Some((&pact, &clause)), detail);
        if high_risk {
            let shadow = self.is_shadow(key.0);
            let cause = Cause {
                code: CauseCode::EvidenceStale,
                text,
                clause: Some(key),
                detection: None,
                causation: Causation { kind: "timer".into(), id: "freshness".into(), at },
                clean_at_decision: None,
            };
            if shadow {
                self.judge_shadows(agent_id, &[cause]);
            } else {
                self.reevaluate(agent_id, cause, false);
            }
        }
    }
}

/// The dwell after the `escalations`-th escalation: `min_dwell · multiplier^(n-1)`, capped.
pub(super) fn dwell(clause: &Clause, escalations: u32) -> i64 {
    let r = &clause.recovery;
    let f = r.dwell_multiplier.powi(escalations.saturating_sub(1).min(60) as i32);
    ((r.min_dwell.micros() as f64 * f) as i64).min(r.max_dwell.micros())
}
