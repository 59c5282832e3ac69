//! Keyed state: per agent, and per agent × pact × clause × segment.

pub use super::clause_map::ClauseMap;
pub use super::dirty::ListedIn;
pub use super::recent::Recent;
use crate::model::enforcement::Detection;
use crate::model::lane::{ByScope, Lane};
use crate::model::overrides::{ActiveOverride, OverrideKind};
use crate::pact::Freshness;
use compact_str::CompactString;
use driftgate_detectors::AnyDetector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use thin_vec::ThinVec;

/// Identifies a clause state within an agent: pact index, clause index, segment.
pub type ClauseKey = (u16, u16, Segment);

/// A segment value (`segment_by` fields joined with `|`; empty when unsegmented).
///
/// Ordered by length, then bytes: the unsegmented case (by far the most common) then
/// compares without a `memcmp` call, which showed up at ~10 % of the engine's time.
///
/// One pointer, none when empty: every clause state's key holds one, and most clauses are
/// unsegmented, so a `String` (24 bytes) and then a boxed `str` (16) cost every key of the
/// fleet what only segmented ones use. A segmented key pays one more small allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Segment(Option<Box<Box<str>>>);

impl Segment {
    /// The segment value, `""` when unsegmented.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().map_or("", |s| s)
    }

    /// Whether this is the unsegmented key.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether this is the segment `s` (`""` for the unsegmented key). The unsegmented case
    /// compares without touching a string.
    #[inline]
    pub fn is(&self, s: &str) -> bool {
        match &self.0 {
            None => s.is_empty(),
            Some(b) => ***b == *s,
        }
    }

    /// This segment's order against the segment `s`: that of [`Segment::cmp`] against
    /// `Segment::from(s)`, without building it.
    #[inline]
    pub fn cmp_str(&self, s: &str) -> std::cmp::Ordering {
        match &self.0 {
            None if s.is_empty() => std::cmp::Ordering::Equal,
            None => std::cmp::Ordering::Less,
            Some(a) => a.len().cmp(&s.len()).then_with(|| a.as_bytes().cmp(s.as_bytes())),
        }
    }
}

impl From<String> for Segment {
    fn from(s: String) -> Segment {
        Segment((!s.is_empty()).then(|| Box::new(s.into_boxed_str())))
    }
}

impl From<&str> for Segment {
    fn from(s: &str) -> Segment {
        Segment::from(s.to_owned())
    }
}

/// Stored as its string, as the `String` and boxed `str` before it were.
impl Serialize for Segment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Segment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Segment::from)
    }
}

impl Ord for Segment {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.cmp_str(o.as_str())
    }
}

impl PartialOrd for Segment {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// State of one clause for one agent and segment.
///
/// Stored with short field names, and without the fields at their defaults: a fleet holds
/// one per agent × clause, so every byte counts a million times. The long names of format
/// version 1 are read as aliases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClauseState {
    /// The clause's detector.
    #[serde(rename = "det", alias = "detector")]
    pub detector: AnyDetector,
    /// The lane this clause currently demands (`normal` when healthy).
    #[serde(rename = "dm", alias = "demand")]
    pub demand: Lane,
    /// How many times the clause escalated (the dwell grows with it).
    #[serde(rename = "esc", alias = "escalations", default, skip_serializing_if = "is_zero")]
    pub escalations: u32,
    /// No step down before this event time.
    #[serde(rename = "dw", alias = "min_dwell_until", default = "never", skip_serializing_if = "is_never")]
    pub min_dwell_until: i64,
    /// Observations without an alarm since the last alarm or step.
    #[serde(rename = "cl", alias = "clean")]
    pub clean: u64,
    /// Leaving `block` needs a human attestation (critical clauses).
    #[serde(rename = "att", alias = "needs_attestation", default, skip_serializing_if = "is_false")]
    pub needs_attestation: bool,
    /// Event times of the most recent observations (at most `min_events`).
    #[serde(rename = "rec", alias = "recent")]
    pub recent: Recent,
    /// Event time the state was created.
    #[serde(rename = "cr", alias = "created")]
    pub created: i64,
    /// Event time of the newest observation.
    #[serde(rename = "la", alias = "last_at")]
    pub last_at: i64,
    /// Smoothed gap between observations (µs), to place change points in event time.
    pub gap: f64,
    /// Whether the evidence is stale.
    #[serde(rename = "st", alias = "stale", default, skip_serializing_if = "is_false")]
    pub stale: bool,
    /// When the pending freshness check fires (see [`ClauseState::timer_at`]).
    #[serde(rename = "tm", alias = "timer_at", default, skip_serializing_if = "MaybeTime::is_none")]
    timer: MaybeTime,
    /// The last detection, for the audit trail.
    #[serde(rename = "ld", alias = "last_detection", default, skip_serializing_if = "Option::is_none")]
    pub last_detection: Option<Box<Detection>>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn never() -> i64 {
    i64::MIN
}

fn is_never(v: &i64) -> bool {
    *v == i64::MIN
}

/// When a pending check fires, if one is: `i64::MIN` stands for none, half the inline size
/// of an `Option<i64>`, which every clause state and agent would pay. Stored as the
/// optional time (`nil` for none, as version 1 wrote a clause's timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeTime(i64);

impl MaybeTime {
    /// No check pending.
    pub const NONE: MaybeTime = MaybeTime(i64::MIN);

    /// The time, if set.
    pub fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }

    /// Sets the time, or none. (A check at `i64::MIN` is set at the next instant, which
    /// fires as early.)
    pub fn set(&mut self, at: Option<i64>) {
        self.0 = at.map_or(i64::MIN, |t| t.max(i64::MIN + 1));
    }

    /// Whether no time is set.
    pub fn is_none(&self) -> bool {
        self.0 == i64::MIN
    }
}

impl Default for MaybeTime {
    fn default() -> Self {
        MaybeTime::NONE
    }
}

impl Serialize for MaybeTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for MaybeTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut t = MaybeTime::NONE;
        t.set(Option::<i64>::deserialize(d)?);
        Ok(t)
    }
}

impl ClauseState {
    /// A new state with a fresh detector.
    pub fn new(detector: AnyDetector, now: i64) -> Self {
        ClauseState {
            detector,
            demand: Lane::Normal,
            escalations: 0,
            min_dwell_until: i64::MIN,
            clean: 0,
            needs_attestation: false,
            recent: Recent::Empty,
            created: now,
            last_at: now,
            gap: 0.0,
            stale: false,
            timer: MaybeTime::NONE,
            last_detection: None,
        }
    }

    /// When the pending freshness check fires, if one is scheduled.
    pub fn timer_at(&self) -> Option<i64> {
        self.timer.get()
    }

    /// Schedules the freshness check at `at`, or none.
    pub fn set_timer_at(&mut self, at: Option<i64>) {
        self.timer.set(at);
    }

    /// Records an observation's event time.
    #[inline]
    pub fn observe(&mut self, t: i64, keep: usize) {
        if !self.recent.is_empty() {
            let g = t.saturating_sub(self.last_at).max(0) as f64;
            self.gap = if self.gap == 0.0 { g } else { 0.95 * self.gap + 0.05 * g };
        }
        self.last_at = self.last_at.max(t);
        // Most clauses keep one time (no freshness window): replaced in place.
        if keep <= 1 && self.recent.replace_one(t) {
            return;
        }
        self.remember(t, keep);
    }

    /// Adds `t` to the window of the newest `keep` times. Out of line, so that the common
    /// case above inlines.
    #[inline(never)]
    fn remember(&mut self, t: i64, keep: usize) {
        self.recent.push(t, keep);
    }

    /// Whether the evidence is fresh at `now`: `min_events` within `max_age`. A new state
    /// has a grace period of `max_age` to gather them.
    pub fn is_fresh(&self, now: i64, f: &Freshness) -> bool {
        let age = f.max_age.micros();
        // Saturating throughout: times come from stored state too.
        if now.saturating_sub(self.created) < age {
            return true;
        }
        self.recent.len() >= f.min_events as usize
            && self.recent.front().is_some_and(|t| t >= now.saturating_sub(age))
    }

    /// When the evidence would go stale if nothing more arrives.
    pub fn stale_deadline(&self, f: &Freshness) -> i64 {
        let age = f.max_age.micros();
        let grace = self.created.saturating_add(age);
        if self.recent.len() >= f.min_events as usize {
            grace.max(self.recent.front().unwrap_or(i64::MIN).saturating_add(age))
        } else {
            grace
        }
    }
}

/// A model-version change awaiting re-verification of the agent's drift clauses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelChange {
    /// Previous version.
    pub from: String,
    /// New version.
    pub to: String,
    /// Event time of the first event of the new version.
    pub since: i64,
    /// Lane while re-verifying.
    pub lane: Lane,
    /// Drift clauses not yet re-verified.
    pub pending: BTreeSet<ClauseKey>,
}

/// What made an agent's scope expand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    /// A workflow the agent has no verified history in.
    NewWorkflow,
    /// A tool the agent never called before.
    NewTool,
    /// A high-risk action, when none were seen before.
    FirstHighRisk,
}

impl ScopeKind {
    /// Every kind, as metrics label them.
    pub const ALL: [ScopeKind; 3] = [ScopeKind::NewWorkflow, ScopeKind::NewTool, ScopeKind::FirstHighRisk];

    /// The name used in reason codes and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::NewWorkflow => "new_workflow",
            ScopeKind::NewTool => "new_tool",
            ScopeKind::FirstHighRisk => "first_high_risk",
        }
    }
}

/// A scope expansion awaiting re-verification on traffic from the new scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeChange {
    /// What expanded.
    pub kind: ScopeKind,
    /// The new workflow or tool (empty for high-risk actions).
    pub value: String,
    /// Index of the pact whose trigger fired: its clauses re-verify.
    pub pact: u16,
    /// Event time of the trigger.
    pub since: i64,
    /// Lane while re-verifying.
    pub lane: Lane,
    /// Whether the lane holds every action or only high-risk ones.
    pub high_risk_only: bool,
    /// Consecutive clean observations from the new scope, per clause index of the pact that
    /// observed any (an alarm on in-scope traffic resets its count).
    pub clean: BTreeMap<u16, u64>,
}

/// The scope an agent has been verified in, kept only for agents a pact with `scope`
/// triggers covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeState {
    /// Events seen (the first `warm_up` establish the initial scope).
    pub events: u64,
    /// Workflows with verified history.
    pub workflows: BTreeSet<String>,
    /// Tools called in verified scope.
    pub tools: BTreeSet<String>,
    /// Whether high-risk actions are in verified scope.
    pub high_risk: bool,
    /// Expansions awaiting re-verification.
    pub pending: Vec<ScopeChange>,
}

impl ScopeState {
    /// Most tools remembered per agent: beyond it, new tools are not tracked (and do not
    /// trigger), so that an agent with unbounded tool names cannot grow its state unbounded.
    pub const MAX_TOOLS: usize = 256;
}

/// State of one agent.
///
/// Every agent of the fleet pays for this struct in the agents map, with the map's spare
/// room, so what most agents never hold (overrides, shadow lanes) takes one pointer, and
/// what many share (the workflow's name) is shared. Stored as it was when these were plain
/// vectors, maps and strings (a test compares the bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Sequence number of the last enforcement event.
    pub seq: u64,
    /// Last seen workflow: the engine's workflow index holds the same name.
    pub workflow: Arc<str>,
    /// Last seen model version (inline up to 24 bytes).
    pub model_version: CompactString,
    /// Indexes of the pacts covering the agent.
    pub pacts: Box<[u16]>,
    /// Event time first seen.
    pub first_seen: i64,
    /// Event time last seen.
    pub last_seen: i64,
    /// Clause states, in key order.
    pub clauses: ClauseMap,
    /// Overrides in force: one pointer, and no allocation while there are none.
    pub overrides: ThinVec<ActiveOverride>,
    /// Pending model-change re-verification. Boxed: an agent holds one only while a new
    /// model version re-verifies, and 88 bytes inline cost every agent of the fleet (more
    /// with the agents map's spare room).
    pub model_change: Option<Box<ModelChange>>,
    /// Lanes last published, per scope.
    pub published: ByScope<Lane>,
    /// When the pending TTL check fires (see [`AgentState::ttl_at`]).
    #[serde(rename = "ttl_at")]
    ttl: MaybeTime,
    /// Held at the fail mode by the blast-radius cap: re-evaluated on each of its events,
    /// so that it is blocked as soon as the cap lets it be.
    #[serde(default)]
    pub capped: bool,
    /// Verified scope and pending expansions (agents under scope triggers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Box<ScopeState>>,
    /// Would-be lanes under each shadow pact version (by slot), when not `normal`.
    #[serde(default, skip_serializing_if = "ShadowLanes::is_empty")]
    pub shadow: ShadowLanes,
    /// When the agent was last listed as changed: the engine's bookkeeping, not stored.
    #[serde(skip)]
    pub listed_in: ListedIn,
}

/// An agent's would-be lanes per shadow pact version (by slot): one pointer, none while the
/// agent has none (no pact of its is in shadow, or every one would leave it `normal`).
/// Stored as the map.
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(clippy::box_collection, reason = "one pointer inline where the map takes three")]
pub struct ShadowLanes(Option<Box<BTreeMap<u16, ByScope<Lane>>>>);

impl ShadowLanes {
    /// Whether no version has lanes for the agent.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The lanes under the version in `slot`.
    pub fn get(&self, slot: u16) -> Option<ByScope<Lane>> {
        self.0.as_ref()?.get(&slot).copied()
    }

    /// Sets the lanes under the version in `slot`.
    pub fn insert(&mut self, slot: u16, lanes: ByScope<Lane>) {
        self.0.get_or_insert_default().insert(slot, lanes);
    }

    /// Drops the lanes under the version in `slot`; returns whether there were any.
    pub fn remove(&mut self, slot: u16) -> bool {
        let Some(m) = self.0.as_mut() else { return false };
        let had = m.remove(&slot).is_some();
        if m.is_empty() {
            self.0 = None;
        }
        had
    }

    /// Keeps the versions whose slot `f` maps to one, under that slot (a restore's remap).
    pub fn remap(&mut self, f: impl Fn(u16) -> Option<u16>) {
        let m: BTreeMap<u16, ByScope<Lane>> =
            self.0.take().into_iter().flat_map(|m| *m).filter_map(|(p, l)| f(p).map(|p| (p, l))).collect();
        *self = ShadowLanes::from(m);
    }
}

impl From<BTreeMap<u16, ByScope<Lane>>> for ShadowLanes {
    fn from(m: BTreeMap<u16, ByScope<Lane>>) -> Self {
        ShadowLanes((!m.is_empty()).then(|| Box::new(m)))
    }
}

impl Serialize for ShadowLanes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(m) => m.serialize(s),
            None => BTreeMap::<u16, ByScope<Lane>>::new().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ShadowLanes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(ShadowLanes::from)
    }
}

impl AgentState {
    /// A new agent.
    pub fn new(workflow: Arc<str>, model_version: &str, pacts: Vec<u16>, now: i64) -> Self {
        AgentState {
            seq: 0,
            workflow,
            model_version: model_version.into(),
            pacts: pacts.into_boxed_slice(),
            first_seen: now,
            last_seen: now,
            clauses: ClauseMap::new(),
            overrides: ThinVec::new(),
            model_change: None,
            published: ByScope::both(Lane::Normal),
            ttl: MaybeTime::NONE,
            capped: false,
            scope: None,
            shadow: ShadowLanes::default(),
            listed_in: ListedIn::default(),
        }
    }

    /// When the pending TTL check fires, if one is scheduled.
    pub fn ttl_at(&self) -> Option<i64> {
        self.ttl.get()
    }

    /// Schedules the TTL check at `at`, or none.
    pub(crate) fn set_ttl_at(&mut self, at: Option<i64>) {
        self.ttl.set(at);
    }

    /// Whether an attestation for `clause_id` is in force.
    pub fn attested(&self, clause_id: &str) -> bool {
        self.overrides
            .iter()
            .any(|o| o.req.kind == OverrideKind::Attest && o.req.clause_id.as_deref() == Some(clause_id))
    }

    /// Records an event at `now`. When no state-TTL check is pending, sets one a `ttl` after
    /// the last event and returns its time, for the caller to schedule.
    pub(crate) fn seen(&mut self, now: i64, ttl: i64) -> Option<i64> {
        self.last_seen = self.last_seen.max(now);
        if !self.ttl.is_none() {
            return None;
        }
        let at = self.last_seen + ttl;
        self.set_ttl_at(Some(at));
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clause's detector, for states built by hand.
    fn detector() -> AnyDetector {
        let pact = include_str!("../../../tests/fixtures/lane-rules.yaml");
        let p = crate::pact::parse_pact(pact, "rules.yaml").unwrap();
        crate::engine::Engine::new(Default::default(), vec![p]).protos[0][0].clone()
    }

    #[test]
    fn a_clause_state_stays_small_whatever_its_detector() {
        // Every clause of a fleet pays for this much however small its own detector: it was
        // 752 bytes before the last detection was boxed, the auto configuration and the real
        // banks shared and the real detector's normal-score transform boxed (400), and 272
        // before the recent times, the timer, the banks' members and the rate bound's
        // processes shrank (232), and 232 before the real detector's baseline summary and the
        // rate bound's epoch start were derived rather than held (208).
        let size = std::mem::size_of::<ClauseState>();
        assert!(size <= 208, "ClauseState is {size} bytes");
        assert!(std::mem::size_of::<AnyDetector>() <= 128, "AnyDetector grew");
        // The key beside it in the agent's map: 40 bytes with a `String` segment, 24 with a
        // boxed `str`.
        assert!(std::mem::size_of::<ClauseKey>() <= 16, "ClauseKey grew");
    }

    #[test]
    fn an_agent_state_stays_small() {
        // Every agent pays for this once (boxed in the agents map): it was 304
        // bytes before the pending model change, held only while a new model version
        // re-verifies, was boxed.
        // 224 before the overrides and shadow lanes took a pointer, the TTL time lost its
        // `Option`'s tag and the workflow's name and the pacts their capacity.
        let size = std::mem::size_of::<AgentState>();
        assert!(size <= 168, "AgentState is {size} bytes");
    }

    /// An agent as it was stored while its fields were a `String`, a `Vec`, a map and an
    /// `Option`: the stored form must not change with their types.
    #[derive(Serialize)]
    struct StoredBefore {
        seq: u64,
        workflow: String,
        model_version: String,
        pacts: Vec<u16>,
        first_seen: i64,
        last_seen: i64,
        clauses: ClauseMap,
        overrides: Vec<ActiveOverride>,
        model_change: Option<Box<ModelChange>>,
        published: ByScope<Lane>,
        ttl_at: Option<i64>,
        capped: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<Box<ScopeState>>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        shadow: BTreeMap<u16, ByScope<Lane>>,
    }

    fn before(a: &AgentState, shadow: BTreeMap<u16, ByScope<Lane>>) -> StoredBefore {
        StoredBefore {
            seq: a.seq,
            workflow: a.workflow.to_string(),
            model_version: a.model_version.to_string(),
            pacts: a.pacts.to_vec(),
            first_seen: a.first_seen,
            last_seen: a.last_seen,
            clauses: a.clauses.clone(),
            overrides: a.overrides.to_vec(),
            model_change: a.model_change.clone(),
            published: a.published,
            ttl_at: a.ttl_at(),
            capped: a.capped,
            scope: a.scope.clone(),
            shadow,
        }
    }

    #[test]
    fn an_agent_is_stored_as_before_its_fields_were_slimmed() {
        let req: crate::model::overrides::OverrideRequest = serde_json::from_value(serde_json::json!({
            "override_id": "o1", "agent_id": "a", "kind": "tighten", "lane": "review",
            "principal": "p", "reason": "r", "ticket": "T-1", "issued_at": 5, "expires_at": 9,
        }))
        .unwrap();
        let lanes = ByScope { all: Lane::Watch, high_risk: Lane::Review };
        let plain = AgentState::new("support".into(), "model-v2", vec![0, 2], 7);
        let mut busy = plain.clone();
        busy.overrides.push(ActiveOverride { req, expires_at: 9 });
        busy.set_ttl_at(Some(1_000));
        busy.shadow.insert(3, lanes);
        busy.capped = true;
        let mut cleared = busy.clone();
        assert!(cleared.shadow.remove(3) && !cleared.shadow.remove(3));
        assert!(cleared.shadow.is_empty() && cleared.shadow == ShadowLanes::default());
        let cases =
            [(&plain, BTreeMap::new()), (&busy, BTreeMap::from([(3, lanes)])), (&cleared, BTreeMap::new())];
        for (a, shadow) in cases {
            let bytes = rmp_serde::to_vec_named(a).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec_named(&before(a, shadow)).unwrap());
            let back: AgentState = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(&back, a);
            assert_eq!((back.ttl_at(), back.shadow.get(3)), (a.ttl_at(), a.shadow.get(3)));
        }
        assert_eq!((plain.ttl_at(), busy.ttl_at()), (None, Some(1_000)));
        // No allocation for what an agent does not hold.
        assert!(plain.overrides.capacity() == 0 && plain.shadow.0.is_none());
    }

    /// Stored as the optional time it stands for, and read back from one; `i64::MIN` itself
    /// is the next instant, as none is taken by the sentinel.
    #[test]
    fn a_maybe_time_is_stored_as_an_optional_time() {
        for at in [None, Some(0), Some(-5), Some(1_772_409_600_000_000), Some(i64::MAX)] {
            let mut t = MaybeTime::NONE;
            t.set(at);
            assert_eq!((t.get(), t.is_none()), (at, at.is_none()));
            let bytes = rmp_serde::to_vec_named(&t).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec_named(&at).unwrap());
            assert_eq!(rmp_serde::from_slice::<MaybeTime>(&bytes).unwrap(), t);
        }
        let mut t = MaybeTime::default();
        t.set(Some(i64::MIN));
        assert_eq!(t.get(), Some(i64::MIN + 1));
    }

    #[test]
    fn shadow_lanes_remap_to_new_slots_and_drop_the_unmapped() {
        let l = |all| ByScope { all, high_risk: all };
        let mut s = ShadowLanes::default();
        s.insert(1, l(Lane::Watch));
        s.insert(4, l(Lane::Block));
        s.remap(|p| (p == 4).then_some(0));
        assert_eq!((s.get(0), s.get(1), s.get(4)), (Some(l(Lane::Block)), None, None));
        s.remap(|_| None);
        assert!(s.is_empty() && s.0.is_none());
    }

    #[test]
    fn segments_order_by_length_then_bytes_and_the_unsegmented_one_comes_first() {
        let s = Segment::from;
        let mut v = vec![s("bb"), s("a"), s(""), s("ab"), s("b"), s("")];
        v.sort();
        assert_eq!(v, [s(""), s(""), s("a"), s("b"), s("ab"), s("bb")]);
        assert!(s("z") < s("aa") && s("ab") < s("ac") && s("") < s("a"));
        assert_eq!(s("").partial_cmp(&s("")), Some(std::cmp::Ordering::Equal));
    }

    /// A segment is stored as its string, as the boxed `str` before it was, and reads back
    /// equal; the empty one holds no allocation, however it was made.
    #[test]
    fn a_segment_is_stored_as_its_string() {
        for text in ["", "search|eu", "x"] {
            let seg = Segment::from(text);
            assert_eq!(seg, Segment::from(text.to_string()));
            assert_eq!((seg.as_str(), seg.is_empty()), (text, text.is_empty()));
            let bytes = rmp_serde::to_vec_named(&seg).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec_named(&Box::<str>::from(text)).unwrap());
            let back: Segment = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, seg);
            assert_eq!(back.0.is_none(), text.is_empty());
        }
    }

    #[test]
    fn observations_keep_the_newest_times_and_a_smoothed_gap() {
        let mut st = ClauseState::new(detector(), 0);
        st.observe(100, 2);
        assert_eq!((st.gap, st.last_at), (0.0, 100), "no gap from one observation");
        st.observe(300, 2);
        assert_eq!(st.gap, 200.0, "the first gap is taken as it is");
        st.observe(1_300, 2);
        assert_eq!(st.gap, 0.95 * 200.0 + 0.05 * 1_000.0);
        // An older observation (out of order) adds a zero gap and leaves `last_at`.
        st.observe(1_000, 2);
        assert_eq!((st.gap, st.last_at), (0.95 * 240.0, 1_300));
        assert_eq!(st.recent.iter().collect::<Vec<_>>(), [1_300, 1_000], "at most `keep`, newest last");
        assert_eq!(st.recent.capacity(), 2, "room for exactly `keep`");
        st.observe(2_000, 0);
        assert_eq!(st.recent, Recent::One(2_000), "at least one is kept, inline");
        let mut one = ClauseState::new(detector(), 0);
        one.observe(100, 1);
        assert_eq!(one.recent.capacity(), 1);
    }

    #[test]
    fn evidence_is_fresh_with_min_events_within_max_age_after_a_grace_period_of_max_age() {
        let f = Freshness { max_age: crate::pact::duration::Dur(100), min_events: 2 };
        let mut st = ClauseState::new(detector(), 1_000);
        // Grace: a new state has `max_age` to gather its events.
        assert!(st.is_fresh(1_099, &f) && !st.is_fresh(1_100, &f));
        assert_eq!(st.stale_deadline(&f), 1_100);
        st.observe(1_050, 2);
        assert!(!st.is_fresh(1_120, &f), "one event of two");
        assert_eq!(st.stale_deadline(&f), 1_100, "still the grace period's end");
        st.observe(1_080, 2);
        // Fresh while the older of the two is within `max_age`.
        assert!(st.is_fresh(1_150, &f) && !st.is_fresh(1_151, &f));
        assert_eq!(st.stale_deadline(&f), 1_150);
    }
}
