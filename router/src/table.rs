//! The router's table: each agent's lane per scope, as driftgate last published it.
//!
//! Updates come from two topics that Kafka does not order against each other: enforcement
//! events (one scope's desired state) and agent snapshots (both scopes' state after an
//! event). So the table is a last-writer-wins register per agent and scope, ordered by the
//! key [`Version`] then [`Origin`]. Applying is commutative and idempotent: any interleaving,
//! duplication or reordering of the same updates leaves the same table (property-tested
//! below), and a router never needs to know which topic is ahead.

use driftgate_core::engine::CauseCode;
use driftgate_core::model::lane::{ByScope, Lane, Scope};
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::RwLock;

/// Which of an agent's engine states, and which of its events.
///
/// `seq` counts an agent's enforcement events and restarts when the engine drops an idle
/// agent's state (`engine.state_ttl`) and later sees the agent again. The incarnation (the
/// event time, µs, at which the engine created that state) tells the two lives apart, so a
/// returning agent's first events are not taken for duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// The engine state's creation time (µs of event time); 0 from engines that predate it.
    pub incarnation: i64,
    /// The agent's enforcement event `seq` within the incarnation.
    pub seq: u64,
}

/// Where a scope's state came from. An event outranks the snapshot of the same version: both
/// carry the same lane, but only the event carries its reason and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// An agent snapshot.
    Snapshot,
    /// An enforcement event.
    Event,
}

/// Why a lane is what it is, as a decision reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The engine's reason code of the event that set the lane.
    Engine(CauseCode),
    /// An engine reason code this router does not know (a newer engine).
    EngineOther,
    /// Known from a snapshot only (the bootstrap), which carries no reason.
    Snapshot,
    /// driftgate has never published anything for the agent.
    UnknownAgent,
    /// driftgate's view of the agent is stale; the fail-safe lane applies.
    StaleFallback,
}

impl Reason {
    /// The engine's reason from its code on the wire.
    pub fn from_code(code: &str) -> Reason {
        CauseCode::ALL.iter().find(|c| c.as_str() == code).map_or(Reason::EngineOther, |c| Reason::Engine(*c))
    }

    /// The code on the wire and in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Engine(c) => c.as_str(),
            Reason::EngineOther => "other",
            Reason::Snapshot => "snapshot",
            Reason::UnknownAgent => "unknown_agent",
            Reason::StaleFallback => "stale_fallback",
        }
    }
}

/// One scope's state for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeState {
    /// The update's version.
    pub version: Version,
    /// Event or snapshot.
    pub origin: Origin,
    /// The lane.
    pub lane: Lane,
    /// Why: the reason of the newest event of the scope seen in this incarnation.
    pub reason: Reason,
    /// Event time (µs) that event applies from.
    pub since: Option<i64>,
    /// That event's version; `None` while only snapshots covered the scope.
    pub reason_from: Option<Version>,
}

impl ScopeState {
    fn key(&self) -> (Version, Origin) {
        (self.version, self.origin)
    }
}

/// What the router knows of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The newest incarnation seen; scopes hold only its updates.
    pub incarnation: i64,
    /// Per scope; `None` until an update of the incarnation covers the scope (the engine
    /// starts every agent at `normal`).
    pub scopes: ByScope<Option<ScopeState>>,
    /// The input partition whose engine publishes the agent (for staleness), as a
    /// [`crate::Liveness`] id.
    pub source: Option<u32>,
}

impl Entry {
    /// The scope's lane (`normal` before any update covers it).
    pub fn lane(&self, scope: Scope) -> Lane {
        self.scope(scope).map_or(Lane::Normal, |s| s.lane)
    }

    /// The scope's state.
    pub fn scope(&self, scope: Scope) -> Option<&ScopeState> {
        match scope {
            Scope::All => self.scopes.all.as_ref(),
            Scope::HighRisk => self.scopes.high_risk.as_ref(),
        }
    }

    fn scope_mut(&mut self, scope: Scope) -> &mut Option<ScopeState> {
        match scope {
            Scope::All => &mut self.scopes.all,
            Scope::HighRisk => &mut self.scopes.high_risk,
        }
    }
}

/// What an update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An enforcement event: one scope's desired state.
    Event {
        /// The event's scope.
        scope: Scope,
        /// `lane_to`.
        lane: Lane,
        /// `reason.code`.
        reason: Reason,
        /// `effective_at` (µs).
        since: i64,
    },
    /// An agent snapshot: both scopes after its last event.
    Snapshot {
        /// `lane`, `high_risk_lane`.
        lanes: ByScope<Lane>,
    },
}

/// One update for one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The agent.
    pub agent: String,
    /// Its version.
    pub version: Version,
    /// The publishing partition's [`crate::Liveness`] id, if the record named it.
    pub source: Option<u32>,
    /// The content.
    pub change: Change,
}

/// The outcome of [`Table::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Newer than what the table held for at least one scope.
    Newer,
    /// Already covered by what the table holds (a duplicate, or overtaken by a newer update).
    Seen,
}

const SHARDS: usize = 16;
type Map = HashMap<Box<str>, Entry, foldhash::fast::FixedState>;

/// Agents by id, sharded so that the writer (one follower) holds a lock only briefly and the
/// many readers (one per request) rarely meet it. Reads copy the small entry out.
pub struct Table {
    shards: Box<[RwLock<Map>]>,
    hasher: foldhash::fast::FixedState,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS).map(|_| RwLock::new(Map::default())).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_d21f),
        }
    }
}

impl Table {
    fn shard(&self, agent: &str) -> &RwLock<Map> {
        let i = (self.hasher.hash_one(agent) as usize) % SHARDS;
        &self.shards[i]
    }

    /// Applies one update: per scope, the newest `(version, origin)` wins.
    pub fn apply(&self, u: &Update) -> Applied {
        let mut shard = self.shard(&u.agent).write().unwrap_or_else(|p| p.into_inner());
        let entry = shard.entry(u.agent.as_str().into()).or_insert(Entry {
            incarnation: u.version.incarnation,
            scopes: ByScope::both(None),
            source: None,
        });
        merge(entry, u)
    }

    /// A copy of the agent's entry.
    pub fn get(&self, agent: &str) -> Option<Entry> {
        self.with(agent, |e| e.copied())
    }

    /// Reads the agent's entry in place, under the shard's read lock: the per-request path,
    /// which touches only the fields it needs instead of copying the entry out.
    pub fn with<R>(&self, agent: &str, f: impl FnOnce(Option<&Entry>) -> R) -> R {
        f(self.shard(agent).read().unwrap_or_else(|p| p.into_inner()).get(agent))
    }

    /// Agents known.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// Whether no agent is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every agent's lanes, sorted: for comparisons and the sidecar's table dump.
    pub fn lanes(&self) -> BTreeMap<String, ByScope<Lane>> {
        let mut out = BTreeMap::new();
        for s in self.shards.iter() {
            for (k, e) in s.read().unwrap_or_else(|p| p.into_inner()).iter() {
                out.insert(
                    k.to_string(),
                    ByScope { all: e.lane(Scope::All), high_risk: e.lane(Scope::HighRisk) },
                );
            }
        }
        out
    }
}

/// The merge rule, kept apart from the locking so that the property tests exercise it alone.
fn merge(entry: &mut Entry, u: &Update) -> Applied {
    if u.version.incarnation < entry.incarnation {
        return Applied::Seen;
    }
    if u.version.incarnation > entry.incarnation {
        // A new life of the agent: its scopes start over.
        *entry =
            Entry { incarnation: u.version.incarnation, scopes: ByScope::both(None), source: entry.source };
    }
    let key = (u.version, origin_of(&u.change));
    let top = [entry.scopes.all, entry.scopes.high_risk].iter().flatten().map(ScopeState::key).max();
    let mut newer = false;
    match u.change {
        Change::Event { scope, lane, reason, since } => {
            let slot = entry.scope_mut(scope);
            match slot {
                Some(cur) if cur.key() >= key => {
                    // Overtaken (one step can publish several events and then a snapshot of
                    // the last one): the lane stands, but the newest event's reason is
                    // still the reason. Taking it whatever the arrival order keeps the
                    // merge order-free.
                    if cur.reason_from.is_none_or(|v| v < u.version) {
                        (cur.reason, cur.since, cur.reason_from) = (reason, Some(since), Some(u.version));
                    }
                }
                _ => {
                    let s = ScopeState {
                        version: u.version,
                        origin: Origin::Event,
                        lane,
                        reason,
                        since: Some(since),
                        reason_from: Some(u.version),
                    };
                    *slot = Some(s);
                    newer = true;
                }
            }
        }
        Change::Snapshot { lanes } => {
            for (scope, lane) in [(Scope::All, lanes.all), (Scope::HighRisk, lanes.high_risk)] {
                let slot = entry.scope_mut(scope);
                if slot.is_none_or(|cur| cur.key() < key) {
                    // A snapshot carries no reason: the newest event's stays.
                    let (reason, since, reason_from) =
                        slot.map_or((Reason::Snapshot, None, None), |c| (c.reason, c.since, c.reason_from));
                    *slot = Some(ScopeState {
                        version: u.version,
                        origin: Origin::Snapshot,
                        lane,
                        reason,
                        since,
                        reason_from,
                    });
                    newer = true;
                }
            }
        }
    }
    // The source follows the newest record about the agent.
    if let Some(src) = u.source.filter(|_| top.is_none_or(|t| t <= key)) {
        entry.source = Some(src);
    }
    if newer {
        Applied::Newer
    } else {
        Applied::Seen
    }
}

fn origin_of(c: &Change) -> Origin {
    match c {
        Change::Event { .. } => Origin::Event,
        Change::Snapshot { .. } => Origin::Snapshot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(agent: &str, inc: i64, seq: u64, scope: Scope, lane: Lane) -> Update {
        Update {
            agent: agent.into(),
            version: Version { incarnation: inc, seq },
            source: None,
            change: Change::Event {
                scope,
                lane,
                reason: Reason::Engine(CauseCode::DriftVerified),
                since: seq as i64,
            },
        }
    }

    fn snap(agent: &str, inc: i64, seq: u64, all: Lane, high_risk: Lane) -> Update {
        Update {
            agent: agent.into(),
            version: Version { incarnation: inc, seq },
            source: None,
            change: Change::Snapshot { lanes: ByScope { all, high_risk } },
        }
    }

    #[test]
    fn newer_seq_wins_and_older_is_seen() {
        let t = Table::default();
        assert_eq!(t.apply(&ev("a", 1, 2, Scope::All, Lane::Block)), Applied::Newer);
        assert_eq!(t.apply(&ev("a", 1, 1, Scope::All, Lane::Watch)), Applied::Seen);
        assert_eq!(t.apply(&ev("a", 1, 2, Scope::All, Lane::Block)), Applied::Seen);
        assert_eq!(t.get("a").map(|e| e.lane(Scope::All)), Some(Lane::Block));
        assert_eq!(t.get("a").map(|e| e.lane(Scope::HighRisk)), Some(Lane::Normal));
    }

    #[test]
    fn an_event_refines_the_snapshot_of_its_version() {
        let t = Table::default();
        assert_eq!(t.apply(&snap("a", 1, 3, Lane::Degrade, Lane::Review)), Applied::Newer);
        assert_eq!(t.get("a").and_then(|e| e.scopes.all).map(|s| s.reason), Some(Reason::Snapshot));
        assert_eq!(t.apply(&ev("a", 1, 3, Scope::All, Lane::Degrade)), Applied::Newer);
        let all = t.get("a").and_then(|e| e.scopes.all);
        assert_eq!(
            all.map(|s| (s.reason, s.since)),
            Some((Reason::Engine(CauseCode::DriftVerified), Some(3)))
        );
        // The high-risk scope still holds the snapshot's lane.
        assert_eq!(t.get("a").map(|e| e.lane(Scope::HighRisk)), Some(Lane::Review));
        // An older event of the other scope does not undo the snapshot's lane.
        assert_eq!(t.apply(&ev("a", 1, 2, Scope::HighRisk, Lane::Watch)), Applied::Seen);
        assert_eq!(t.get("a").map(|e| e.lane(Scope::HighRisk)), Some(Lane::Review));
    }

    #[test]
    fn a_step_that_publishes_two_events_keeps_each_scopes_reason() {
        // One step: `all` to block (seq 4), `high_risk` to block (seq 5), snapshot at 5.
        let block = |scope, seq, code: &str| Update {
            agent: "a".into(),
            version: Version { incarnation: 1, seq },
            source: None,
            change: Change::Event { scope, lane: Lane::Block, reason: Reason::from_code(code), since: 40 },
        };
        let u = [
            block(Scope::All, 4, "zero_tolerance_breach"),
            block(Scope::HighRisk, 5, "zero_tolerance_breach"),
            snap("a", 1, 5, Lane::Block, Lane::Block),
            block(Scope::All, 2, "limit_breached"),
        ];
        for order in [[0, 1, 2, 3], [2, 1, 0, 3], [3, 2, 0, 1], [2, 3, 1, 0]] {
            let t = Table::default();
            for i in order {
                t.apply(&u[i]);
            }
            let all = t.get("a").and_then(|e| e.scopes.all).unwrap();
            assert_eq!(
                (all.lane, all.reason.as_str(), all.since),
                (Lane::Block, "zero_tolerance_breach", Some(40)),
                "{order:?}"
            );
        }
    }

    #[test]
    fn a_new_incarnation_starts_over_and_an_old_one_is_ignored() {
        let t = Table::default();
        t.apply(&ev("a", 1, 40, Scope::HighRisk, Lane::Review));
        t.apply(&ev("a", 1, 41, Scope::All, Lane::Watch));
        // The agent expired and came back: seq restarts at 1.
        assert_eq!(t.apply(&ev("a", 9, 1, Scope::All, Lane::Block)), Applied::Newer);
        let e = t.get("a").unwrap();
        assert_eq!((e.lane(Scope::All), e.lane(Scope::HighRisk)), (Lane::Block, Lane::Normal));
        assert_eq!(t.apply(&ev("a", 1, 42, Scope::All, Lane::Normal)), Applied::Seen);
        assert_eq!(t.get("a").unwrap().lane(Scope::All), Lane::Block);
    }

    #[test]
    fn reasons_round_trip_their_codes() {
        for c in CauseCode::ALL {
            assert_eq!(Reason::from_code(c.as_str()), Reason::Engine(c));
        }
        assert_eq!(Reason::from_code("from_the_future"), Reason::EngineOther);
    }

    /// A valid stream: what an engine publishes for a few agents, with expiries.
    fn stream() -> impl Strategy<Value = Vec<Update>> {
        let step = (0..3usize, 0..8u8, 0..5usize, 0..5usize);
        prop::collection::vec(step, 1..60).prop_map(|steps| {
            let agents = ["a", "b", "c"];
            // (incarnation, seq, lanes) per agent.
            let mut st = [(1i64, 0u64, ByScope::both(Lane::Normal)); 3];
            let mut out = Vec::new();
            for (i, (a, what, l1, l2)) in steps.into_iter().enumerate() {
                let s = &mut st[a];
                if what == 0 {
                    // State expired; the next life begins later in event time.
                    *s = (s.0 + 1000 + i as i64, 0, ByScope::both(Lane::Normal));
                    continue;
                }
                // One engine step: one or two events, then the snapshot.
                let scopes: &[Scope] = match what % 3 {
                    0 => &[Scope::All],
                    1 => &[Scope::HighRisk],
                    _ => &[Scope::All, Scope::HighRisk],
                };
                for (scope, l) in scopes.iter().zip([l1, l2]) {
                    s.1 += 1;
                    match scope {
                        Scope::All => s.2.all = Lane::ALL[l],
                        Scope::HighRisk => s.2.high_risk = Lane::ALL[l],
                    }
                    out.push(ev(agents[a], s.0, s.1, *scope, Lane::ALL[l]));
                }
                out.push(snap(agents[a], s.0, s.1, s.2.all, s.2.high_risk));
            }
            out
        })
    }

    fn table_of(updates: &[Update]) -> BTreeMap<String, (i64, ByScope<Option<ScopeState>>)> {
        let t = Table::default();
        for u in updates {
            t.apply(u);
        }
        let mut out = BTreeMap::new();
        for s in t.shards.iter() {
            for (k, e) in s.read().unwrap().iter() {
                out.insert(k.to_string(), (e.incarnation, e.scopes));
            }
        }
        out
    }

    proptest! {
        /// Any interleaving, duplication or reordering of a valid stream gives the table
        /// that in-order delivery gives.
        #[test]
        fn order_and_duplicates_do_not_matter(
            updates in stream(),
            shuffle in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
            dups in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            prop_assume!(!updates.is_empty());
            let in_order = table_of(&updates);
            let mut mixed = updates.clone();
            for d in &dups {
                mixed.push(d.get(&updates).clone());
            }
            for (i, s) in shuffle.iter().enumerate() {
                let n = mixed.len();
                mixed.swap(i % n, s.index(n));
            }
            prop_assert_eq!(table_of(&mixed), in_order);
        }

        /// Only the enforcement topic, reordered: each scope still ends at its newest event.
        #[test]
        fn events_alone_converge(updates in stream(), seed in any::<u64>()) {
            let events: Vec<Update> = updates.into_iter().filter(|u| matches!(u.change, Change::Event { .. })).collect();
            let mut mixed = events.clone();
            let mut x = seed | 1;
            for i in (1..mixed.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                mixed.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(table_of(&mixed), table_of(&events));
        }
    }

    #[test]
    fn in_order_lanes_are_the_engines_lanes() {
        // The table's lanes after the in-order stream equal the last snapshot's, which is
        // the engine's state: checked on a fixed stream so the property above is not vacuous.
        let u = [
            ev("a", 1, 1, Scope::All, Lane::Watch),
            snap("a", 1, 1, Lane::Watch, Lane::Normal),
            ev("a", 1, 2, Scope::HighRisk, Lane::Review),
            ev("a", 1, 3, Scope::All, Lane::Degrade),
            snap("a", 1, 3, Lane::Degrade, Lane::Review),
        ];
        let t = Table::default();
        for x in u.iter().rev() {
            t.apply(x);
        }
        assert_eq!(t.lanes().get("a"), Some(&ByScope { all: Lane::Degrade, high_risk: Lane::Review }));
    }
}
