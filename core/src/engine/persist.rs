//! What the changelog keeps: the engine's meta record and the agents changed since the last snapshot, and the restore from them.

use super::*;
use crate::engine::registry::{Role, SlotInfo};
use driftgate_detectors::Binding;

impl Engine {
    /// Agents changed since the last call, each with its state (`None`: it expired).
    pub fn take_dirty(&mut self) -> Vec<(String, Option<&AgentState>)> {
        self.dirty
            .take()
            .into_iter()
            .map(|id| {
                let s = self.agents.get(id.as_str()).map(|a| &**a);
                (id, s)
            })
            .collect()
    }

    /// Marks agents changed, so that the next [`Engine::take_dirty`] reports them (with
    /// their state, or `None` if they have none): used after a restore to supersede a torn
    /// snapshot's records.
    pub fn mark_dirty(&mut self, agents: impl IntoIterator<Item = String>) {
        for id in agents {
            self.dirty.mark(&id, agent_entry(&mut self.agents, &id));
        }
    }

    /// The lowest source position among restored buffer entries still to be read again
    /// (see [`Engine::rebuffer`]); the source must start reading there.
    pub fn first_awaited(&self) -> Option<u64> {
        self.awaited.keys().next().copied()
    }

    /// Whether the restored buffer waits for the input at source position `tag`.
    pub fn awaits(&self, tag: u64) -> bool {
        self.awaited.contains_key(&tag)
    }

    /// Puts back a restored buffer entry, read again from its source position `tag`, where
    /// it was in the buffer; processes nothing. False if no entry waits for `tag`.
    pub fn rebuffer(&mut self, tag: u64, input: Input) -> bool {
        let Some(key) = self.awaited.remove(&tag) else { return false };
        self.buffer.insert(key, (input, Some(tag)));
        true
    }

    /// Gives up the restored buffer entries not read again (their records are gone from the
    /// source, e.g. deleted by retention), returning how many. They are never processed.
    pub fn abandon_awaited(&mut self) -> usize {
        std::mem::take(&mut self.awaited).len()
    }

    /// The engine's own state besides the agents: the event-time buffer, clocks, the
    /// history chain's head and counters.
    pub fn meta(&self) -> EngineMeta {
        // Inputs from a source are kept by their position; the others (overrides) inline.
        let mut buffer = Vec::new();
        let mut by_reference: Vec<(i64, u64, u64)> =
            self.awaited.iter().map(|(tag, (t, arrival))| (*t, *arrival, *tag)).collect();
        for ((t, arrival), item) in self.buffer.entries() {
            match item.1 {
                Some(tag) => by_reference.push((t, arrival, tag)),
                None => buffer.push((t, arrival, item.0.clone(), None)),
            }
        }
        by_reference.sort_unstable();
        EngineMeta {
            pacts: self.pacts.iter().map(|p| (p.id().to_string(), p.version())).collect(),
            buffer,
            by_reference,
            arrivals: self.arrivals,
            max_seen: self.max_seen,
            now: self.now,
            chain: self.chain.clone(),
            stats: self.stats.clone(),
            activated: self.activated,
            panicked: self.workflows.iter().filter(|(_, w)| w.panicked).map(|(k, _)| k.to_string()).collect(),
            tick_floor: self.tick_floor,
            registry: self.registry_meta(),
        }
    }

    /// An engine continuing exactly where `meta` and `agents` left off. Clause states of
    /// pacts no longer loaded are dropped; pact indexes are remapped by id and version.
    pub fn restore(
        cfg: EngineConfig,
        pacts: Vec<Pact>,
        meta: EngineMeta,
        agents: Vec<(String, AgentState)>,
    ) -> Engine {
        // Pacts changed at run time keep the versions the registry recorded (a restart does
        // not undo an approved change); the others follow their files.
        let mut from_registry = Vec::new();
        for (old, slot) in &meta.registry.slots {
            match crate::pact::parse_pact(&slot.source, "<changelog>") {
                Ok(p) => from_registry.push((*old, p, slot.info.clone())),
                Err(err) => {
                    tracing::warn!(%err, "a pact version in the changelog no longer loads: the files' versions apply");
                    from_registry.clear();
                    break;
                }
            }
        }
        let changed: BTreeSet<String> = from_registry.iter().map(|(_, p, _)| p.id().to_string()).collect();
        for file in pacts.iter().filter(|p| changed.contains(p.id())) {
            let active = from_registry.iter().find(|(_, p, i)| p.id() == file.id() && i.role == Role::Active);
            if let Some((_, p, _)) = active.filter(|(_, p, _)| p.version() != file.version()) {
                tracing::warn!(
                    pact = %file.id(),
                    file_version = file.version(),
                    active_version = p.version(),
                    "the pact was changed at run time: the changelog's version stays active; activate the file's with SIGHUP or POST /v1/pacts"
                );
            }
        }
        let mut pacts: Vec<Pact> = pacts.into_iter().filter(|p| !changed.contains(p.id())).collect();
        let files = pacts.len();
        let mut infos = vec![SlotInfo::loaded(); files];
        let mut by_old: BTreeMap<u16, u16> = BTreeMap::new();
        for (old, p, info) in from_registry {
            by_old.insert(old, pacts.len() as u16);
            pacts.push(p);
            infos.push(info);
        }
        let mut e = Engine::new(cfg, pacts);
        for (i, info) in infos.into_iter().enumerate() {
            if info.role != Role::Active {
                e.severe[i].clear();
            }
            e.slots[i] = info;
        }
        e.any_severe = e.severe.iter().any(|c| !c.is_empty());
        e.previous = meta
            .registry
            .previous
            .iter()
            .filter(|(id, _)| changed.contains(*id))
            .map(|(id, v)| (id.clone(), v.iter().filter_map(|s| by_old.get(s).copied()).collect()))
            .collect();
        e.applied = meta.registry.applied.clone();
        let remap: Vec<Option<u16>> = meta
            .pacts
            .iter()
            .enumerate()
            .map(|(old, (id, v))| match by_old.get(&(old as u16)) {
                Some(new) => Some(*new),
                None if changed.contains(id) => None,
                None => {
                    e.pacts[..files].iter().position(|p| p.id() == id && p.version() == *v).map(|i| i as u16)
                }
            })
            .collect();
        let map = |i: u16| remap.get(i as usize).copied().flatten();
        for (t, arrival, input, tag) in meta.buffer {
            e.buffer.insert((t, arrival), (input, tag));
        }
        for (t, arrival, tag) in meta.by_reference {
            e.awaited.insert(tag, (t, arrival));
        }
        e.arrivals = meta.arrivals;
        e.max_seen = meta.max_seen;
        e.tick_floor = meta.tick_floor;
        e.now = meta.now;
        e.chain = meta.chain;
        e.stats = meta.stats;
        e.activated = meta.activated;
        let mut replaced = 0u64;
        for (id, mut a) in agents {
            let id: Arc<str> = id.into();
            a.pacts = a.pacts.iter().filter_map(|p| map(*p)).collect();
            a.shadow.remap(map);
            if let Some(sc) = a.scope.as_mut() {
                sc.pending.retain_mut(|ch| map(ch.pact).map(|p| ch.pact = p).is_some());
            }
            a.clauses = std::mem::take(&mut a.clauses)
                .into_iter()
                .filter_map(|((p, c, s), st)| map(p).map(|p| ((p, c, s), st)))
                .filter_map(|(k, mut st)| {
                    // Stored detectors leave out their configuration: the clause gives it back.
                    let proto = e.protos.get(k.0 as usize)?.get(k.1 as usize)?;
                    if st.detector.bind(proto) == Binding::Replaced {
                        replaced += 1;
                    }
                    Some((k, st))
                })
                .collect();
            if let Some(mc) = a.model_change.as_mut() {
                mc.pending = std::mem::take(&mut mc.pending)
                    .into_iter()
                    .filter_map(|(p, c, s)| map(p).map(|p| (p, c, s)))
                    .collect();
            }
            for (k, st) in a.clauses.iter() {
                if let Some(at) = st.timer_at() {
                    e.timers.insert(at, Timer::Freshness(id.clone(), k.clone()));
                }
            }
            for o in &a.overrides {
                e.timers.insert(o.expires_at, Timer::OverrideExpiry(id.clone(), o.req.override_id.clone()));
            }
            if let Some(at) = a.ttl_at() {
                e.timers.insert(at, Timer::Ttl(id.clone()));
            }
            // Restored agents share their workflow's name, as running ones do.
            a.workflow = held_name(&e.workflows, &a.workflow);
            let w = e.workflows.entry(a.workflow.clone()).or_default();
            w.agents.insert(id.clone());
            if a.published.all == Lane::Block {
                w.blocked.insert(id.clone());
            }
            if a.capped {
                w.capped.insert(id.clone());
            }
            e.agents.insert(id, Box::new(a));
        }
        if replaced > 0 {
            tracing::warn!(
                clause_states = replaced,
                "clause states stored under another detector configuration than their pact's were reset: they learn their baseline again"
            );
        }
        for wf in meta.panicked {
            e.workflows.entry(wf.into()).or_default().panicked = true;
        }
        // A pact file added (or whose coverage changed) since the snapshot covers the
        // restored agents it matches at once, not only after their next workflow move.
        e.recover_coverage();
        e.dirty.clear();
        e
    }
}
