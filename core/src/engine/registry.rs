//! Pact versions at run time: each loaded version is a slot (clause keys index slots, so a
//! slot never moves while the engine runs), with a role: `active` (enforcing), `shadow`
//! (judging beside the active version, its would-be events recorded but never sent to
//! routers) or `retired` (kept for a rollback). A [`PactChange`] moves versions between
//! roles; agents' clause states follow by clause id, kept when the clause's metric, test
//! and segmentation are unchanged.

use super::*;
use crate::model::pact_change::{PactChange, PactChangeError, PactMode};

/// The role of a pact version in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Enforcing.
    Active,
    /// Judging beside the active version of its pact; events to the history only.
    Shadow,
    /// Replaced; kept so that a rollback can return to it.
    Retired,
}

/// Who put a pact version in its role, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    /// The change's id.
    pub change_id: String,
    /// What the change did.
    pub mode: PactMode,
    /// Who asked for it.
    pub principal: String,
    /// Why.
    pub reason: String,
    /// Change ticket.
    pub ticket: String,
    /// Where it came from.
    pub channel: String,
    /// Event time it took effect (µs).
    pub at: i64,
}

/// One pact slot's bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Its role.
    pub role: Role,
    /// The change that put it in its role (`None`: loaded from a file at start-up).
    pub activation: Option<Activation>,
    /// For a shadow: the active version's enforcement events and the pact's shadow events
    /// when it started, so that both are counted from the same moment.
    #[serde(default)]
    pub baseline_events: (u64, u64),
}

impl SlotInfo {
    /// A version loaded at start-up.
    pub fn loaded() -> SlotInfo {
        SlotInfo { role: Role::Active, activation: None, baseline_events: (0, 0) }
    }
}

/// A pact version as the registry keeps it in the changelog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotMeta {
    /// The pact's text.
    pub source: String,
    /// Its bookkeeping.
    pub info: SlotInfo,
}

/// The registry's part of the engine's meta record: the versions of every pact changed at
/// run time (those never changed follow their files), and the change ids applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryMeta {
    /// Slots of pacts changed at run time, by their index in this engine.
    pub slots: Vec<(u16, SlotMeta)>,
    /// Per pact id, the slots its active version replaced, newest last.
    pub previous: BTreeMap<String, Vec<u16>>,
    /// The newest change ids applied (a retry is answered without applying it again).
    pub applied: Vec<String>,
}

/// A pact's versions, for `GET /v1/pacts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PactVersions {
    /// Pact id.
    pub pact: String,
    /// The enforcing version.
    pub active: Option<VersionInfo>,
    /// A version running in shadow, if any.
    pub shadow: Option<VersionInfo>,
    /// Versions a rollback would return to, newest first.
    pub previous: Vec<u32>,
}

/// One version's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version.
    pub version: u32,
    /// Description.
    pub description: Option<String>,
    /// Clause ids.
    pub clauses: Vec<String>,
    /// Who put it in its role (`None`: loaded from its file at start-up).
    pub activation: Option<Activation>,
    /// Enforcement events (the active version: since the shadow started, if one runs; a
    /// shadow: would-be events since it started).
    pub events: u64,
}

/// How many applied change ids the registry remembers.
const APPLIED_KEPT: usize = 256;

/// How a clause of one version relates to the clause with the same id in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kinship {
    /// Same metric, test and segmentation: the state carries over.
    Same(u16),
    /// Changed: the detector starts fresh; the lane it demands carries over.
    Changed(u16),
}

/// For each clause of `old`, its kin in `new` (by id), if any.
fn kinship(old: &Pact, new: &Pact) -> Vec<Option<Kinship>> {
    old.doc
        .clauses
        .iter()
        .map(|c| {
            let (i, n) = new.doc.clauses.iter().enumerate().find(|(_, n)| n.id == c.id)?;
            let same = n.metric == c.metric && n.test == c.test && n.segment_by == c.segment_by;
            Some(if same { Kinship::Same(i as u16) } else { Kinship::Changed(i as u16) })
        })
        .collect()
}

impl Engine {
    /// The slot's role.
    pub(super) fn role(&self, slot: u16) -> Role {
        self.slots.get(slot as usize).map_or(Role::Retired, |s| s.role)
    }

    /// Whether the slot is a shadow version.
    pub(super) fn is_shadow(&self, slot: u16) -> bool {
        self.role(slot) == Role::Shadow
    }

    fn slot_of(&self, id: &str, role: Role) -> Option<u16> {
        (0..self.pacts.len())
            .find(|i| self.slots[*i].role == role && self.pacts[*i].id() == id)
            .map(|i| i as u16)
    }

    /// Whether the pact slot (a clause key's first index) holds a shadow version.
    pub fn is_shadow_slot(&self, slot: u16) -> bool {
        self.is_shadow(slot)
    }

    /// Whether a pact change with this id was applied.
    pub fn has_applied(&self, change_id: &str) -> bool {
        self.applied.iter().any(|c| c == change_id)
    }

    /// The change ids applied, oldest first (the newest 256).
    pub fn applied_changes(&self) -> &[String] {
        &self.applied
    }

    /// An engine with this one's pact versions and registry, and nothing else: to validate
    /// changes and answer `GET /v1/pacts` where no partition's engine is at hand.
    pub fn registry_view(&self) -> Engine {
        let mut e = Engine::new(self.cfg.clone(), self.pacts.clone());
        e.slots = self.slots.clone();
        e.severe = self.severe.clone();
        e.any_severe = self.any_severe;
        e.previous = self.previous.clone();
        e.applied = self.applied.clone();
        e.activated = true;
        e
    }

    /// Every pact's versions, in the order of their active slots.
    pub fn pact_versions(&self) -> Vec<PactVersions> {
        let mut ids: Vec<&str> = Vec::new();
        for (i, p) in self.pacts.iter().enumerate() {
            if self.slots[i].role != Role::Retired && !ids.contains(&p.id()) {
                ids.push(p.id());
            }
        }
        ids.into_iter()
            .map(|id| {
                let count = |m: &BTreeMap<String, u64>| m.get(id).copied().unwrap_or(0);
                let shadow = self.slot_of(id, Role::Shadow);
                let (active_base, shadow_base) =
                    shadow.map_or((0, 0), |s| self.slots[s as usize].baseline_events);
                let info = |slot: u16, events: u64| {
                    let p = &self.pacts[slot as usize];
                    VersionInfo {
                        version: p.version(),
                        description: p.doc.description.clone(),
                        clauses: p.doc.clauses.iter().map(|c| c.id.clone()).collect(),
                        activation: self.slots[slot as usize].activation.clone(),
                        events,
                    }
                };
                PactVersions {
                    pact: id.to_string(),
                    active: self
                        .slot_of(id, Role::Active)
                        .map(|s| info(s, count(&self.stats.pact_events).saturating_sub(active_base))),
                    shadow: shadow
                        .map(|s| info(s, count(&self.stats.shadow_events).saturating_sub(shadow_base))),
                    previous: self
                        .previous
                        .get(id)
                        .map(|v| v.iter().rev().map(|s| self.pacts[*s as usize].version()).collect())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Checks a pact change against the pacts in force, as [`Engine`] will when it
    /// processes it (at its event time, the answer may differ if another change comes first).
    pub fn check_change(&self, ch: &PactChange) -> Result<(), PactChangeError> {
        let doc = ch.check()?;
        self.plan(ch, doc.as_ref()).map(|_| ())
    }

    /// What the change does, slot by slot: `(slot to activate or shadow, slot it replaces)`.
    fn plan(
        &self,
        ch: &PactChange,
        doc: Option<&Pact>,
    ) -> Result<(Option<u16>, Option<u16>), PactChangeError> {
        let id = ch.pact_id.as_str();
        let active = self.slot_of(id, Role::Active);
        let shadow = self.slot_of(id, Role::Shadow);
        let conflict = |m: String| Err(PactChangeError::Conflict(m));
        if let Some(doc) = doc {
            // `pact` + `version` is immutable once published.
            for (i, p) in self.pacts.iter().enumerate() {
                if p.id() == id && p.version() == doc.version() && p.doc != doc.doc {
                    let role = format!("{:?}", self.slots[i].role).to_lowercase();
                    return conflict(format!(
                        "version {} of pact `{id}` was already published ({role}) with a different text; publish it as a new version",
                        doc.version()
                    ));
                }
            }
            if let Some(a) = active.filter(|a| self.pacts[*a as usize].version() == doc.version()) {
                let _ = a;
                return conflict(format!("version {} of pact `{id}` is already active", doc.version()));
            }
        }
        match ch.mode {
            PactMode::Enforce | PactMode::Shadow => Ok((None, active)),
            PactMode::Promote => match shadow {
                Some(s) => Ok((Some(s), active)),
                None => conflict(format!("pact `{id}` has no shadow version to promote")),
            },
            PactMode::Rollback => match (shadow, self.previous.get(id).and_then(|v| v.last())) {
                (Some(s), _) => Ok((Some(s), None)),
                (None, Some(p)) => Ok((Some(*p), active)),
                (None, None) => conflict(format!(
                    "pact `{id}` has no shadow version to discard and no previous version to return to"
                )),
            },
        }
    }

    /// Applies a pact change (an input): refused changes are recorded with their reason,
    /// and the versions in force stay.
    pub(super) fn on_pact_change(&mut self, ch: PactChange) {
        if self.applied.contains(&ch.change_id) {
            return;
        }
        let at = ch.issued_at;
        let result = ch.check().and_then(|doc| self.plan(&ch, doc.as_ref()).map(|plan| (doc, plan)));
        let who = serde_json::json!({"change_id": ch.change_id, "principal": ch.principal, "reason": ch.reason, "ticket": ch.ticket, "channel": ch.channel, "mode": ch.mode.as_str()});
        let (doc, (target, replaced)) = match result {
            Ok(r) => r,
            Err(e) => {
                self.stats.pact_changes_refused += 1;
                let detail = serde_json::json!({"change": who, "pact": ch.pact_id, "error": e.to_string(), "code": e.code()});
                self.history(RecordKind::PactRefused, at, None, None, detail);
                return;
            }
        };
        self.applied.push(ch.change_id.clone());
        if self.applied.len() > APPLIED_KEPT {
            self.applied.remove(0);
        }
        let activation = Activation {
            change_id: ch.change_id.clone(),
            mode: ch.mode,
            principal: ch.principal.clone(),
            reason: ch.reason.clone(),
            ticket: ch.ticket.clone(),
            channel: ch.channel.clone(),
            at,
        };
        let id = ch.pact_id.clone();
        let causation = Causation { kind: "pact_change".into(), id: ch.change_id.clone(), at };
        // The slot enforcement moved from, if it moved.
        let mut switched = None;
        let (kind, detail) = match ch.mode {
            PactMode::Shadow => {
                let Some(pact) = doc else { return };
                // A newer shadow replaces the running one.
                if let Some(old) = self.slot_of(&id, Role::Shadow) {
                    self.discard_shadow(old);
                }
                let slot = self.add_slot(pact, Role::Shadow, activation);
                let baseline = (
                    self.stats.pact_events.get(&id).copied().unwrap_or(0),
                    self.stats.shadow_events.get(&id).copied().unwrap_or(0),
                );
                self.slots[slot as usize].baseline_events = baseline;
                self.recover_coverage();
                (RecordKind::PactShadowed, self.change_detail(&who, slot, replaced, None))
            }
            PactMode::Enforce => {
                let Some(pact) = doc else { return };
                let slot = self.add_slot(pact, Role::Active, activation);
                switched = replaced;
                let carried = replaced.map(|old| self.switch(old, slot, None));
                (RecordKind::PactActivated, self.change_detail(&who, slot, replaced, carried))
            }
            PactMode::Promote => {
                let Some(slot) = target else { return };
                self.slots[slot as usize].role = Role::Active;
                self.slots[slot as usize].activation = Some(activation);
                switched = replaced;
                let carried = replaced.map(|old| self.switch(old, slot, Some(slot)));
                (RecordKind::PactPromoted, self.change_detail(&who, slot, replaced, carried))
            }
            PactMode::Rollback => {
                let Some(slot) = target else { return };
                if replaced.is_none() {
                    // The shadow is discarded; the active version never changed.
                    let detail = self.change_detail(&who, slot, None, None);
                    self.discard_shadow(slot);
                    (RecordKind::PactRolledBack, detail)
                } else {
                    if let Some(v) = self.previous.get_mut(&id) {
                        v.pop();
                    }
                    self.slots[slot as usize].role = Role::Active;
                    self.slots[slot as usize].activation = Some(activation);
                    switched = replaced;
                    let carried = replaced.map(|old| self.switch(old, slot, None));
                    // A rollback does not stack the version it leaves.
                    if let Some(v) = self.previous.get_mut(&id) {
                        v.pop();
                    }
                    (RecordKind::PactRolledBack, self.change_detail(&who, slot, replaced, carried))
                }
            }
        };
        let mut detail = detail;
        if let (Some(doc), Some(obj)) = (&ch.document, detail.as_object_mut()) {
            // The exact text, so that the history alone shows what was put in force.
            obj.insert("document".into(), serde_json::Value::String(doc.clone()));
        }
        let slot =
            self.slot_of(&id, if kind == RecordKind::PactShadowed { Role::Shadow } else { Role::Active });
        let clause = slot.map(|s| &self.pacts[s as usize]);
        let rec = self.chain.append(Entry {
            kind,
            at_micros: at,
            agent_id: None,
            pact_id: Some(id.clone()),
            pact_version: clause.map(|p| p.version()),
            clause_id: None,
            detail,
        });
        self.out.push(Output::History(rec));
        *self.stats.pact_changes.entry(ch.mode.as_str().to_string()).or_default() += 1;
        // The lanes follow, after the record of the change that moves them.
        if let (Some(old), Some(new)) = (switched, slot) {
            self.publish_switch(old, new, &causation);
        }
    }

    fn change_detail(
        &self,
        who: &serde_json::Value,
        slot: u16,
        replaced: Option<u16>,
        carried: Option<(Vec<String>, Vec<String>, Vec<String>)>,
    ) -> serde_json::Value {
        let p = &self.pacts[slot as usize];
        let mut detail = serde_json::json!({
            "change": who,
            "pact": p.id(),
            "version": p.version(),
            "replaced_version": replaced.map(|r| self.pacts[r as usize].version()),
            "clauses": p.doc.clauses.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        });
        // Only a change of the enforcing version moves state.
        if let (Some((kept, fresh, dropped)), Some(obj)) = (carried, detail.as_object_mut()) {
            obj.insert("state_kept".into(), kept.into());
            obj.insert("state_fresh".into(), fresh.into());
            obj.insert("state_dropped".into(), dropped.into());
        }
        detail
    }

    fn add_slot(&mut self, pact: Pact, role: Role, activation: Activation) -> u16 {
        let slot = self.pacts.len() as u16;
        self.protos.push(pact.doc.clauses.iter().map(Pact::detector).collect());
        self.severe.push(if role == Role::Shadow { Vec::new() } else { severe_clauses(&pact) });
        self.any_severe |= !self.severe[slot as usize].is_empty();
        self.pacts.push(pact);
        self.slots.push(SlotInfo { role, activation: Some(activation), baseline_events: (0, 0) });
        slot
    }

    /// Re-matches every agent's coverage against the slots in force.
    pub(super) fn recover_coverage(&mut self) {
        // Sorted: the agents' map iterates in a per-process order, and outputs must not.
        let mut ids: Vec<Arc<str>> = self.agents.keys().cloned().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(wf) = self.agents.get(&id).map(|a| a.workflow.clone()) else { continue };
            let pacts = self.covering(&id, &wf);
            if let Some(a) = self.agents.get_mut(&id) {
                if *a.pacts != *pacts {
                    a.pacts = pacts.into_boxed_slice();
                    self.dirty.mark(&id, Some((&id, a)));
                }
            }
        }
    }

    /// Drops a shadow slot and the states it kept.
    fn discard_shadow(&mut self, slot: u16) {
        self.slots[slot as usize].role = Role::Retired;
        self.severe[slot as usize].clear();
        for (id, a) in self.agents.iter_mut() {
            let before = a.clauses.len();
            a.clauses.retain(|k, _| k.0 != slot);
            let had = a.shadow.remove(slot);
            if a.clauses.len() != before || had || a.pacts.contains(&slot) {
                a.pacts = a.pacts.iter().copied().filter(|p| *p != slot).collect();
                self.dirty.mark(id, Some((id, a)));
            }
        }
        self.timers.retain_other(|(_, t)| !matches!(t, Timer::Freshness(_, k) if k.0 == slot));
    }

    /// Moves enforcement from slot `old` to slot `new`: `old` retires (onto the pact's
    /// rollback stack) and agents' clause states move by clause id ([`Engine::publish_switch`]
    /// then announces the lanes that change). With `shadow` (a promotion), a changed clause
    /// keeps the state the shadow built; unchanged ones keep the active version's. The clause
    /// ids whose state was kept, started fresh and dropped.
    fn switch(&mut self, old: u16, new: u16, shadow: Option<u16>) -> (Vec<String>, Vec<String>, Vec<String>) {
        self.slots[old as usize].role = Role::Retired;
        self.severe[old as usize].clear();
        self.severe[new as usize] = severe_clauses(&self.pacts[new as usize]);
        self.any_severe = self.severe.iter().any(|c| !c.is_empty());
        let id = self.pacts[old as usize].id().to_string();
        self.previous.entry(id).or_default().push(old);
        let kin = kinship(&self.pacts[old as usize], &self.pacts[new as usize]);
        let (mut kept, mut fresh, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
        for (i, k) in kin.iter().enumerate() {
            let cid = self.pacts[old as usize].doc.clauses[i].id.clone();
            match k {
                Some(Kinship::Same(_)) => kept.push(cid),
                Some(Kinship::Changed(_)) => fresh.push(cid),
                None => dropped.push(cid),
            }
        }
        let new_pact = &self.pacts[new as usize];
        let new_has_scope = new_pact.doc.scope.is_some();
        let remap = |c: u16| kin.get(c as usize).copied().flatten();
        // Sorted: the agents' map iterates in a per-process order, and outputs must not.
        let mut ids: Vec<Arc<str>> = self.agents.keys().cloned().collect();
        ids.sort_unstable();
        let mut timers = Vec::new();
        for agent_id in &ids {
            let Some(a) = self.agents.get_mut(agent_id) else { continue };
            let states = std::mem::take(&mut a.clauses);
            let mut moved = state::ClauseMap::new();
            let mut shadow_states = BTreeMap::new();
            for (k, st) in states {
                if Some(k.0) == shadow {
                    shadow_states.insert((k.1, k.2.clone()), st);
                } else if k.0 != old {
                    moved.insert(k, st);
                } else {
                    match remap(k.1) {
                        Some(Kinship::Same(c)) => {
                            moved.insert((new, c, k.2), st);
                        }
                        Some(Kinship::Changed(c)) => {
                            // Lane bookkeeping carries over: a changed clause must re-verify
                            // on its new detector before the agent steps down.
                            let mut s =
                                ClauseState::new(self.protos[new as usize][c as usize].clone(), st.last_at);
                            s.demand = st.demand;
                            s.escalations = st.escalations;
                            s.min_dwell_until = st.min_dwell_until;
                            s.needs_attestation = st.needs_attestation;
                            s.recent = st.recent;
                            s.last_at = st.last_at;
                            s.gap = st.gap;
                            moved.insert((new, c, k.2), Box::new(s));
                        }
                        None => {}
                    }
                }
            }
            // A promoted shadow's states: those of changed or new clauses replace the ones
            // carried over; unchanged clauses keep the active version's.
            for ((c, seg), st) in shadow_states {
                let unchanged = kin.contains(&Some(Kinship::Same(c)));
                let key = (new, c, seg);
                if !(unchanged && moved.get(&key).is_some()) {
                    moved.insert(key, st);
                }
            }
            for (k, st) in moved.iter() {
                if k.0 == new {
                    if let Some(t) = st.timer_at() {
                        timers.push((t, Timer::Freshness(agent_id.clone(), k.clone())));
                    }
                }
            }
            a.clauses = moved;
            if let Some(s) = shadow {
                a.shadow.remove(s);
            }
            if let Some(mc) = a.model_change.as_mut() {
                mc.pending = std::mem::take(&mut mc.pending)
                    .into_iter()
                    .filter_map(|(p, c, seg)| match (p == old, remap(c)) {
                        (false, _) => Some((p, c, seg)),
                        (true, Some(Kinship::Same(c) | Kinship::Changed(c))) => Some((new, c, seg)),
                        (true, None) => None,
                    })
                    .collect();
            }
            if let Some(sc) = a.scope.as_mut() {
                sc.pending.retain_mut(|ch| {
                    if ch.pact != old {
                        return true;
                    }
                    ch.pact = new;
                    ch.clean = std::mem::take(&mut ch.clean)
                        .into_iter()
                        .filter_map(|(c, n)| match remap(c) {
                            Some(Kinship::Same(c)) => Some((c, n)),
                            _ => None,
                        })
                        .collect();
                    new_has_scope
                });
            }
            self.dirty.mark(agent_id, Some((agent_id, a)));
        }
        self.timers
            .retain_other(|(_, t)| !matches!(t, Timer::Freshness(_, k) if k.0 == old || Some(k.0) == shadow));
        for (at, t) in timers {
            self.timers.insert(at, t);
        }
        self.recover_coverage();
        (kept, fresh, dropped)
    }

    /// After a switch from slot `old` to slot `new` (and its history record): every agent
    /// whose lanes now differ from those published gets an event citing the change, and the
    /// new version's clause demanding the most, if one demands a lane.
    fn publish_switch(&mut self, old: u16, new: u16, causation: &Causation) {
        // Sorted: the agents' map iterates in a per-process order, and outputs must not.
        let mut ids: Vec<Arc<str>> = self.agents.keys().cloned().collect();
        ids.sort_unstable();
        for agent_id in ids {
            let Some(a) = self.agents.get(&agent_id) else { continue };
            let (lanes, _) = self.computed(a);
            if lanes == a.published {
                continue;
            }
            let clause = a
                .clauses
                .iter()
                .filter(|(k, s)| k.0 == new && s.demand > Lane::Normal)
                .max_by_key(|(_, s)| s.demand)
                .map(|(k, _)| k.clone());
            let p = &self.pacts[new as usize];
            let cause = Cause {
                code: CauseCode::PactActivated,
                text: format!(
                    "pact `{}` version {} now in force (was version {}); lanes re-evaluated",
                    p.id(),
                    p.version(),
                    self.pacts[old as usize].version()
                ),
                clause,
                detection: None,
                causation: causation.clone(),
                clean_at_decision: None,
            };
            self.reevaluate(&agent_id, cause, false);
        }
    }

    /// Judges an agent's shadow versions after one step: each shadow's lanes are the
    /// maximum its own clauses demand (stale high-risk evidence sends its high-risk lane to
    /// review); a change is a would-be event, recorded in the history, never sent.
    pub(super) fn judge_shadows(&mut self, agent_id: &str, causes: &[Cause]) {
        let Some(agent) = self.agents.get(agent_id) else { return };
        let shadows: Vec<u16> = agent.pacts.iter().copied().filter(|p| self.is_shadow(*p)).collect();
        for slot in shadows {
            let Some(agent) = self.agents.get(agent_id) else { return };
            let (all, stale) = {
                let mine = agent.clauses.iter().filter(|(k, _)| k.0 == slot);
                let all = mine.clone().map(|(_, s)| s.demand).max().unwrap_or(Lane::Normal);
                (all, mine.clone().any(|(k, s)| s.stale && clause_at(&self.pacts, k.0, k.1).1.high_risk))
            };
            let lanes = ByScope { all, high_risk: if stale { all.max(Lane::Review) } else { all } };
            let before = agent.shadow.get(slot).unwrap_or(ByScope::both(Lane::Normal));
            if lanes == before {
                continue;
            }
            let Some(cause) = causes.iter().find(|c| c.clause.as_ref().is_some_and(|k| k.0 == slot)) else {
                continue;
            };
            let (pact, clause) = match &cause.clause {
                Some(k) => clause_at(&self.pacts, k.0, k.1),
                None => continue,
            };
            let mut detail = Vec::new();
            for scope in Scope::BOTH {
                if lanes[scope] != before[scope] {
                    detail.push(serde_json::json!({
                        "agent_id": agent_id, "scope": scope.as_str(), "lane_from": before[scope], "lane_to": lanes[scope],
                        "pact_id": pact.id(), "pact_version": pact.version(), "clause_id": clause.id,
                        "reason": {"code": cause.code.as_str(), "text": cause.text}, "detection": cause.detection,
                        "causation": cause.causation, "enforced": false, "shadow": true,
                    }));
                }
            }
            let (pact, clause) = (pact.clone(), clause.clone());
            let at = cause.causation.at;
            for d in detail {
                *self.stats.shadow_events.entry(pact.id().to_string()).or_default() += 1;
                self.history(
                    RecordKind::ShadowDecision,
                    at,
                    Some(agent_id.to_string()),
                    Some((&pact, &clause)),
                    d,
                );
            }
            if let Some(a) = self.agents.get_mut(agent_id) {
                a.shadow.insert(slot, lanes);
            }
        }
    }

    /// The registry's part of the meta record: slots of pacts changed at run time.
    pub(super) fn registry_meta(&self) -> RegistryMeta {
        let changed: BTreeSet<&str> = self
            .pacts
            .iter()
            .zip(&self.slots)
            .filter(|(_, s)| s.activation.is_some())
            .map(|(p, _)| p.id())
            .collect();
        RegistryMeta {
            slots: self
                .pacts
                .iter()
                .zip(&self.slots)
                .enumerate()
                .filter(|(_, (p, _))| changed.contains(p.id()))
                .map(|(i, (p, s))| (i as u16, SlotMeta { source: p.source().to_string(), info: s.clone() }))
                .collect(),
            previous: self.previous.clone(),
            applied: self.applied.clone(),
        }
    }
}

/// A pact's `critical` zero-tolerance clauses: a breach of one acts on arrival.
pub(super) fn severe_clauses(p: &Pact) -> Vec<u16> {
    let severe = |c: &Clause| {
        c.severity == Severity::Critical && matches!(&c.test, Test::Limit(l) if l.zero_tolerance)
    };
    (0..p.doc.clauses.len()).filter(|i| severe(&p.doc.clauses[*i])).map(|i| i as u16).collect()
}
