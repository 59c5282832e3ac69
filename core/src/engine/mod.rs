//! The deterministic heart of driftgate: telemetry and overrides in, enforcement events,
//! history records and late records out.
//!
//! Inputs are processed in **event time**: they wait in a buffer until the watermark (the
//! largest event time seen minus the bounded out-of-orderness) passes them, and are released
//! in `(event time, arrival)` order. An input older than the watermark by more than the
//! allowed lateness goes to the late output with its reason. Timers (evidence freshness,
//! override expiry, state TTL) fire when the watermark passes them, in `(due time, timer)`
//! order.
//!
//! No wall-clock value is read, so the same input always yields byte-identical output. The
//! passage of wall time reaches the engine only as an input: a source that has been idle
//! feeds a [`Engine::tick`], which lets the watermark move on by the wall time elapsed;
//! every tick that changes anything is written to the history, so a replay given the same
//! ticks derives the same outputs.
//!
//! Two inputs do not wait for the watermark: a record that breaches a `critical`
//! zero-tolerance clause, and an emergency-kill override. They are processed on arrival, in
//! arrival (offset) order; see [`Engine::push`].

pub mod state;

use crate::engine::state::{AgentState, ClauseKey, ClauseState, ModelChange, Segment};
use crate::model::enforcement::{
    event_id, Causation, Detection, EnforcementEvent, Evidence, OverrideInfo, Reason,
};
use crate::model::history::{Chain, Entry, Record, RecordKind};
use crate::model::lane::{Lane, Scope};
use crate::model::overrides::{self, ActiveOverride, OverrideKind, OverrideRequest};
use crate::model::telemetry::Telemetry;
use crate::pact::duration::Dur;
use crate::pact::predicate::Val;
use crate::pact::{Clause, Pact, Severity, Test};
use driftgate_detectors::{Alarm, AnyDetector, Detector, MetricKind, Observation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tracing::{debug, debug_span};

/// Engine settings that are not part of any pact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How far out of order events may arrive and still be processed in event-time order.
    /// Zero (for in-order sources) processes each event as it arrives.
    #[serde(deserialize_with = "crate::pact::duration::zero_ok")]
    pub max_out_of_orderness: Dur,
    /// Events later than the watermark by more than this go to the late output.
    #[serde(deserialize_with = "crate::pact::duration::zero_ok")]
    pub allowed_lateness: Dur,
    /// State of agents unseen for this long (and in `normal`) is dropped.
    pub state_ttl: Dur,
    /// Longest override lifetime accepted.
    pub max_override_ttl: Dur,
    /// Blast-radius cap: at most this share of a workflow's agents may be blocked...
    pub max_blocked_share: f64,
    /// ...once the workflow has at least this many agents.
    pub blast_radius_min_agents: usize,
    /// False: observe only (events carry `enforced: false`).
    pub enforce: bool,
    /// Wall time a source partition may be silent before the pipeline feeds its engine a
    /// tick (see [`Engine::tick`]); zero: never (for backfills of old data).
    #[serde(deserialize_with = "crate::pact::duration::zero_ok")]
    pub idle_timeout: Dur,
    /// How much later than its event time a record may still arrive, beyond the source's own
    /// lag: after a partition has been silent for `d` of wall time, a tick lets the watermark
    /// reach `(largest event time seen) + d - max_event_lag`.
    #[serde(deserialize_with = "crate::pact::duration::zero_ok")]
    pub max_event_lag: Dur,
    /// Wall time between two heartbeats of a partition's engine; zero: none.
    #[serde(deserialize_with = "crate::pact::duration::zero_ok")]
    pub heartbeat_interval: Dur,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_out_of_orderness: Dur(5 * 1_000_000),
            allowed_lateness: Dur(60 * 1_000_000),
            state_ttl: Dur(7 * 24 * 3600 * 1_000_000),
            max_override_ttl: Dur(7 * 24 * 3600 * 1_000_000),
            max_blocked_share: 0.2,
            blast_radius_min_agents: 5,
            enforce: true,
            idle_timeout: Dur(5 * 1_000_000),
            max_event_lag: Dur(5 * 1_000_000),
            heartbeat_interval: Dur(5 * 1_000_000),
        }
    }
}

/// An input record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// Agent telemetry.
    Telemetry(Telemetry),
    /// An operator override.
    Override(OverrideRequest),
}

impl Input {
    /// Event time (µs).
    pub fn time(&self) -> i64 {
        match self {
            Input::Telemetry(t) => t.occurred_at,
            Input::Override(o) => o.issued_at,
        }
    }
}

/// An event that arrived too late, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    /// Telemetry event id or override id.
    pub id: String,
    /// Agent.
    pub agent_id: String,
    /// Its event time (µs).
    pub occurred_at: i64,
    /// The watermark when it arrived (µs).
    pub watermark: i64,
    /// Why it was set aside.
    pub reason: String,
}

/// The blast-radius cap tripped for a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PanicEvent {
    /// Workflow.
    pub workflow: String,
    /// Agents that would have been blocked, including this one.
    pub would_block: usize,
    /// Agents in the workflow.
    pub agents: usize,
    /// Lane applied instead of block.
    pub fail_mode: Lane,
    /// Event time (µs).
    pub at: i64,
}

/// A buffered input and its source position (see [`Engine::push_tagged`]).
type Tagged = (Input, Option<u64>);

/// Everything the engine emits, in order.
// Not boxed: an output is built once and moved to its sink, so a box per output would only
// add an allocation per event to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "output", rename_all = "snake_case")]
pub enum Output {
    /// For routers.
    Enforcement(EnforcementEvent),
    /// For the contract history.
    History(Record),
    /// For the late-data output.
    Late(LateRecord),
    /// The blast-radius cap tripped.
    Panic(PanicEvent),
}

/// Counters for metrics and summaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Inputs offered.
    pub inputs: u64,
    /// Telemetry events processed.
    pub telemetry: u64,
    /// Inputs set aside as late.
    pub late: u64,
    /// Inputs behind the watermark but within the allowed lateness (processed).
    pub late_accepted: u64,
    /// Observations a detector refused (e.g. an unseen category).
    pub invalid_observations: u64,
    /// Detector alarms, by `pact/clause`.
    pub alarms: BTreeMap<String, u64>,
    /// Enforcement events emitted.
    pub enforcement_events: u64,
    /// Overrides accepted.
    pub overrides_accepted: u64,
    /// Loosening overrides accepted (policy bypass).
    pub overrides_bypass: u64,
    /// Overrides rejected.
    pub overrides_rejected: u64,
    /// High-risk telemetry events, and those whose high-risk clauses had fresh evidence.
    pub high_risk_decisions: u64,
    /// See `high_risk_decisions`.
    pub high_risk_fresh: u64,
    /// Agents whose state expired.
    pub states_expired: u64,
    /// Ticks that moved the watermark (see [`Engine::tick`]).
    #[serde(default)]
    pub ticks: u64,
    /// Inputs processed on arrival, ahead of the watermark (severe breaches, kills).
    #[serde(default)]
    pub fast_path: u64,
    /// Timers fired.
    #[serde(default)]
    pub timers_fired: u64,
}

/// The engine's state besides its agents (see [`Engine::meta`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineMeta {
    /// Pacts in index order, as `(id, version)`: clause keys refer to these indexes.
    pub pacts: Vec<(String, u32)>,
    /// Inputs waiting for the watermark: `(event time, arrival, input, tag)`.
    pub buffer: Vec<(i64, u64, Input, Option<u64>)>,
    /// Inputs offered so far.
    pub arrivals: u64,
    /// Largest event time seen.
    pub max_seen: Option<i64>,
    /// The processing clock.
    pub now: i64,
    /// Head of the history chain.
    pub chain: Chain,
    /// Counters.
    pub stats: Stats,
    /// Whether the pact-activation records were written.
    pub activated: bool,
    /// Workflows whose blast-radius cap has tripped.
    pub panicked: Vec<String>,
    /// The watermark's floor set by the last applied tick.
    #[serde(default)]
    pub tick_floor: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Freshness(String, ClauseKey),
    OverrideExpiry(String, String),
    Ttl(String),
}

#[derive(Default, Clone)]
struct WorkflowStats {
    agents: BTreeSet<String>,
    blocked: BTreeSet<String>,
    /// Agents held at the fail mode by the cap.
    capped: BTreeSet<String>,
    /// A panic episode: from the first capped block until no agent is blocked or capped.
    panicked: bool,
}

impl WorkflowStats {
    fn remove(&mut self, agent: &str) {
        self.agents.remove(agent);
        self.blocked.remove(agent);
        self.capped.remove(agent);
        self.end_panic_if_clear();
    }

    fn end_panic_if_clear(&mut self) {
        if self.blocked.is_empty() && self.capped.is_empty() {
            self.panicked = false;
        }
    }
}

/// Why a re-evaluation happens: the reason, clause and evidence for any event it emits.
#[derive(Debug, Clone)]
struct Cause {
    code: &'static str,
    text: String,
    clause: Option<ClauseKey>,
    detection: Option<Detection>,
    causation: Causation,
    /// Clean events counted when the decision was taken (for re-verifications).
    clean_at_decision: Option<u64>,
}

/// The engine.
pub struct Engine {
    cfg: EngineConfig,
    pacts: Vec<Pact>,
    protos: Vec<Vec<AnyDetector>>,
    /// foldhash: a per-process-seeded fast hash (std's SipHash was ~5 % of the engine's
    /// time); nothing iterates these maps, so output stays deterministic.
    agents: HashMap<String, AgentState, foldhash::fast::RandomState>,
    workflows: HashMap<String, WorkflowStats, foldhash::fast::RandomState>,
    /// Boxed: B-tree nodes shift their values on insert and remove, and an input is large.
    buffer: BTreeMap<(i64, u64), Box<Tagged>>,
    arrivals: u64,
    max_seen: Option<i64>,
    /// See [`Engine::tick`].
    tick_floor: Option<i64>,
    /// Per pact, its `critical` zero-tolerance clauses: a breach of one acts on arrival.
    severe: Vec<Vec<u16>>,
    /// Whether any pact has such a clause (most inputs need no further look).
    any_severe: bool,
    now: i64,
    /// Ordered by due time, then by the timer itself (not by insertion), so timers rebuilt
    /// from restored state fire in the same order as the originals.
    timers: BTreeSet<(i64, Timer)>,
    chain: Chain,
    /// Agents changed since the last [`Engine::take_dirty`] (for the state changelog).
    dirty: BTreeSet<String>,
    out: Vec<Output>,
    stats: Stats,
    activated: bool,
}

fn clause_label(p: &Pact, c: &Clause) -> String {
    format!("{}/{}", p.id(), c.id)
}

impl Engine {
    /// An engine for these pacts.
    pub fn new(cfg: EngineConfig, pacts: Vec<Pact>) -> Engine {
        let protos = pacts.iter().map(|p| p.doc.clauses.iter().map(Pact::detector).collect()).collect();
        let severe: Vec<Vec<u16>> = pacts
            .iter()
            .map(|p| {
                let severe = |c: &Clause| {
                    c.severity == Severity::Critical && matches!(&c.test, Test::Limit(l) if l.zero_tolerance)
                };
                (0..p.doc.clauses.len()).filter(|i| severe(&p.doc.clauses[*i])).map(|i| i as u16).collect()
            })
            .collect();
        let any_severe = severe.iter().any(|c| !c.is_empty());
        Engine {
            cfg,
            pacts,
            protos,
            agents: HashMap::default(),
            workflows: HashMap::default(),
            buffer: BTreeMap::new(),
            arrivals: 0,
            max_seen: None,
            tick_floor: None,
            any_severe,
            severe,
            now: i64::MIN,
            timers: BTreeSet::new(),
            chain: Chain::default(),
            dirty: BTreeSet::new(),
            out: Vec::new(),
            stats: Stats::default(),
            activated: false,
        }
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The pacts in force.
    pub fn pacts(&self) -> &[Pact] {
        &self.pacts
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// An agent's state, if known.
    pub fn agent(&self, id: &str) -> Option<&AgentState> {
        self.agents.get(id)
    }

    /// Number of agents with state.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// The current watermark: the largest event time seen minus the out-of-orderness, or
    /// the floor set by the last applied tick, whichever is later.
    pub fn watermark(&self) -> Option<i64> {
        let seen = self.max_seen.map(|m| m.saturating_sub(self.cfg.max_out_of_orderness.micros()));
        match (seen, self.tick_floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The event time of the oldest input waiting for the watermark.
    pub fn oldest_buffered(&self) -> Option<i64> {
        self.buffer.first_key_value().map(|((t, _), _)| *t)
    }

    /// The earliest event time at which something waits: a buffered input or a timer.
    pub fn next_due(&self) -> Option<i64> {
        match (self.oldest_buffered(), self.timers.first().map(|(t, _)| *t)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The largest event time seen, if any.
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_seen
    }

    /// The passage of wall time, fed by a source whose partition has been idle. `at` is the
    /// source's event-time clock: the largest event time seen plus the wall time elapsed
    /// since the last record (the pipeline's rule, see the README). The watermark may
    /// reach `at - max_event_lag`, releasing buffered inputs and firing due timers.
    /// `wall_micros` is only recorded.
    ///
    /// A tick applies only if something is due by then (a buffered input or a timer);
    /// otherwise it changes nothing and returns false. An applied tick is written to the
    /// history (`tick`, with `at`, the wall time and the number of inputs offered before it),
    /// so that the same calls at the same input positions reproduce a run exactly.
    pub fn tick(&mut self, at: i64, wall_micros: i64) -> bool {
        let floor = at.saturating_sub(self.cfg.max_event_lag.micros());
        let before = self.watermark();
        if before.is_some_and(|wm| wm >= floor) {
            return false;
        }
        if self.next_due().is_none_or(|due| due > floor) {
            return false;
        }
        self.tick_floor = Some(floor);
        self.stats.ticks += 1;
        let detail = serde_json::json!({
            "at": at,
            "wall_time": wall_micros,
            "after_inputs": self.stats.inputs,
            "watermark_before": before,
            "watermark": floor,
            "buffered": self.buffer.len(),
        });
        self.history(RecordKind::Tick, floor, None, None, detail);
        self.advance();
        true
    }

    /// Agents changed since the last call, each with its state (`None`: it expired).
    pub fn take_dirty(&mut self) -> Vec<(String, Option<&AgentState>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|id| {
                let s = self.agents.get(&id);
                (id, s)
            })
            .collect()
    }

    /// Marks agents changed, so that the next [`Engine::take_dirty`] reports them (with
    /// their state, or `None` if they have none): used after a restore to supersede a torn
    /// snapshot's records.
    pub fn mark_dirty(&mut self, agents: impl IntoIterator<Item = String>) {
        self.dirty.extend(agents);
    }

    /// Every agent with state.
    pub fn agents(&self) -> impl Iterator<Item = (&String, &AgentState)> {
        self.agents.iter()
    }

    /// The engine's own state besides the agents: the event-time buffer, clocks, the
    /// history chain's head and counters.
    pub fn meta(&self) -> EngineMeta {
        EngineMeta {
            pacts: self.pacts.iter().map(|p| (p.id().to_string(), p.version())).collect(),
            buffer: self
                .buffer
                .iter()
                .map(|((t, arrival), item)| (*t, *arrival, item.0.clone(), item.1))
                .collect(),
            arrivals: self.arrivals,
            max_seen: self.max_seen,
            now: self.now,
            chain: self.chain.clone(),
            stats: self.stats.clone(),
            activated: self.activated,
            panicked: self.workflows.iter().filter(|(_, w)| w.panicked).map(|(k, _)| k.clone()).collect(),
            tick_floor: self.tick_floor,
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
        let mut e = Engine::new(cfg, pacts);
        let remap: Vec<Option<u16>> = meta
            .pacts
            .iter()
            .map(|(id, v)| e.pacts.iter().position(|p| p.id() == id && p.version() == *v).map(|i| i as u16))
            .collect();
        let map = |i: u16| remap.get(i as usize).copied().flatten();
        for (t, arrival, input, tag) in meta.buffer {
            e.buffer.insert((t, arrival), Box::new((input, tag)));
        }
        e.arrivals = meta.arrivals;
        e.max_seen = meta.max_seen;
        e.tick_floor = meta.tick_floor;
        e.now = meta.now;
        e.chain = meta.chain;
        e.stats = meta.stats;
        e.activated = meta.activated;
        for (id, mut a) in agents {
            a.pacts = a.pacts.iter().filter_map(|p| map(*p)).collect();
            a.clauses = std::mem::take(&mut a.clauses)
                .into_iter()
                .filter_map(|((p, c, s), st)| map(p).map(|p| ((p, c, s), st)))
                .collect();
            if let Some(mc) = a.model_change.as_mut() {
                mc.pending = std::mem::take(&mut mc.pending)
                    .into_iter()
                    .filter_map(|(p, c, s)| map(p).map(|p| (p, c, s)))
                    .collect();
            }
            for (k, st) in &a.clauses {
                if let Some(at) = st.timer_at {
                    e.timers.insert((at, Timer::Freshness(id.clone(), k.clone())));
                }
            }
            for o in &a.overrides {
                e.timers.insert((o.expires_at, Timer::OverrideExpiry(id.clone(), o.req.override_id.clone())));
            }
            if let Some(at) = a.ttl_at {
                e.timers.insert((at, Timer::Ttl(id.clone())));
            }
            let w = e.workflows.entry(a.workflow.clone()).or_default();
            w.agents.insert(id.clone());
            if a.published[0] == Lane::Block {
                w.blocked.insert(id.clone());
            }
            if a.capped {
                w.capped.insert(id.clone());
            }
            e.agents.insert(id, a);
        }
        for wf in meta.panicked {
            e.workflows.entry(wf).or_default().panicked = true;
        }
        e
    }

    /// Takes the outputs produced so far.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Offers one input; processes whatever the watermark releases.
    ///
    /// A telemetry record that breaches a `critical` zero-tolerance clause, and an
    /// emergency-kill override, skip the out-of-orderness hold: whatever their arrival moves
    /// the watermark past is processed, then they are, at once. Inputs still held (of any
    /// agent, including the same one) are processed after them, in event-time order, as
    /// they would be after a late input; they cannot undo the block, which needs an
    /// attestation to step down.
    pub fn push(&mut self, input: Input) {
        self.offer(input, None);
    }

    /// Offers one input tagged with its position in a source (a Kafka offset). The tag
    /// travels with the input while it waits for the watermark, into the changelog too, so
    /// a restored buffer still knows where each of its inputs came from.
    pub fn push_tagged(&mut self, input: Input, tag: u64) {
        self.offer(input, Some(tag));
    }

    /// Inputs waiting in the event-time buffer for the watermark.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    fn offer(&mut self, input: Input, tag: Option<u64>) {
        self.stats.inputs += 1;
        let t = input.time();
        if let Some(wm) = self.watermark() {
            if t < wm.saturating_sub(self.cfg.allowed_lateness.micros()) {
                self.late(input, wm);
                return;
            }
            if t < wm {
                self.stats.late_accepted += 1;
            }
        }
        self.max_seen = Some(self.max_seen.map_or(t, |m| m.max(t)));
        let arrival = self.arrivals;
        self.arrivals += 1;
        if self.acts_on_arrival(&input) {
            // It skips the hold, not the watermark: what its arrival releases comes first,
            // so with no out-of-orderness the order is the same as on the normal path.
            self.stats.fast_path += 1;
            self.advance();
            self.process(input, false);
        } else {
            self.buffer.insert((t, arrival), Box::new((input, tag)));
            self.advance();
        }
    }

    /// Whether an input must not wait for the watermark: an emergency kill, or telemetry
    /// that breaches a `critical` zero-tolerance clause of a pact covering its agent.
    fn acts_on_arrival(&self, input: &Input) -> bool {
        let tel = match input {
            Input::Override(o) => return o.kind == OverrideKind::EmergencyKill,
            Input::Telemetry(t) => t,
        };
        if !self.any_severe {
            return false;
        }
        let breaches = |pacts: &[u16]| {
            pacts.iter().any(|&p| {
                self.severe[p as usize].iter().any(|&c| {
                    let metric = &self.pacts[p as usize].doc.clauses[c as usize].metric;
                    metric.when.as_ref().is_none_or(|w| w.0.eval(tel) == Val::Bool(true))
                        && metric.value.0.eval(tel) == Val::Bool(true)
                })
            })
        };
        match self.agents.get(&tel.agent_id).filter(|a| a.workflow == tel.workflow) {
            Some(a) => breaches(&a.pacts),
            None => breaches(&self.covering(&tel.agent_id, &tel.workflow)),
        }
    }

    /// Releases every buffered input the watermark has passed, then fires due timers.
    fn advance(&mut self) {
        let wm = self.watermark().unwrap_or(i64::MIN);
        while let Some(entry) = self.buffer.first_entry() {
            if entry.key().0 > wm {
                break;
            }
            let (input, _tag) = *entry.remove();
            self.process(input, true);
        }
        self.fire_timers(wm);
    }

    /// Processes everything still buffered (end of input).
    pub fn flush(&mut self) {
        while let Some((_, item)) = self.buffer.pop_first() {
            let (input, _tag) = *item;
            self.process(input, true);
        }
    }

    fn late(&mut self, input: Input, wm: i64) {
        self.stats.late += 1;
        let (id, agent) = match &input {
            Input::Telemetry(t) => (t.event_id.clone(), t.agent_id.clone()),
            Input::Override(o) => (o.override_id.clone(), o.agent_id.clone()),
        };
        let rec = LateRecord {
            id: id.clone(),
            agent_id: agent.clone(),
            occurred_at: input.time(),
            watermark: wm,
            reason: format!(
                "event time is {} s behind the watermark, beyond the allowed lateness of {}",
                (wm - input.time()) / 1_000_000,
                self.cfg.allowed_lateness
            ),
        };
        let detail = serde_json::to_value(&rec).expect("serialisable");
        self.history(RecordKind::Late, wm, Some(agent), None, detail);
        self.out.push(Output::Late(rec));
    }

    fn history(
        &mut self,
        kind: RecordKind,
        at: i64,
        agent: Option<String>,
        clause: Option<(&Pact, &Clause)>,
        detail: serde_json::Value,
    ) {
        let rec = self.chain.append(Entry {
            kind,
            at_micros: at,
            agent_id: agent,
            pact_id: clause.map(|(p, _)| p.id().to_string()),
            pact_version: clause.map(|(p, _)| p.version()),
            clause_id: clause.map(|(_, c)| c.id.clone()),
            detail,
        });
        self.out.push(Output::History(rec));
    }

    fn schedule(&mut self, at: i64, timer: Timer) {
        self.timers.insert((at, timer));
    }

    /// Processes one input; `in_order` (released by the watermark) first fires the timers due
    /// by its time. An input acting on arrival fires none: timers follow the watermark.
    fn process(&mut self, input: Input, in_order: bool) {
        let t = input.time();
        if !self.activated {
            self.activated = true;
            for i in 0..self.pacts.len() {
                let p = &self.pacts[i];
                let detail = serde_json::json!({"pact": p.id(), "version": p.version(), "clauses": p.doc.clauses.iter().map(|c| c.id.clone()).collect::<Vec<_>>()});
                let (id, v) = (p.id().to_string(), p.version());
                let rec = self.chain.append(Entry {
                    kind: RecordKind::PactActivated,
                    at_micros: t,
                    agent_id: None,
                    pact_id: Some(id),
                    pact_version: Some(v),
                    clause_id: None,
                    detail,
                });
                self.out.push(Output::History(rec));
            }
        }
        if in_order {
            self.fire_timers(t);
        }
        self.now = self.now.max(t);
        let agent = match &input {
            Input::Telemetry(tel) => &tel.agent_id,
            Input::Override(o) => &o.agent_id,
        };
        if !self.dirty.contains(agent) {
            self.dirty.insert(agent.clone());
        }
        match input {
            Input::Telemetry(tel) => self.on_telemetry(tel),
            Input::Override(o) => self.on_override(o),
        }
    }

    fn fire_timers(&mut self, upto: i64) {
        while let Some((at, _)) = self.timers.first() {
            if *at > upto {
                break;
            }
            let Some((at, timer)) = self.timers.pop_first() else { break };
            let agent = match &timer {
                Timer::Freshness(a, _) | Timer::OverrideExpiry(a, _) | Timer::Ttl(a) => a,
            };
            if !self.dirty.contains(agent) {
                self.dirty.insert(agent.clone());
            }
            self.now = self.now.max(at);
            self.stats.timers_fired += 1;
            match timer {
                Timer::Freshness(agent, key) => self.on_freshness_timer(&agent, key, at),
                Timer::OverrideExpiry(agent, id) => self.on_override_expiry(&agent, &id, at),
                Timer::Ttl(agent) => self.on_ttl(&agent, at),
            }
        }
    }

    fn covering(&self, agent: &str, workflow: &str) -> Vec<u16> {
        (0..self.pacts.len()).filter(|i| self.pacts[*i].covers(agent, workflow)).map(|i| i as u16).collect()
    }

    fn on_telemetry(&mut self, tel: Telemetry) {
        self.stats.telemetry += 1;
        let now = tel.occurred_at;
        let span = debug_span!("telemetry", agent = %tel.agent_id, event = %tel.event_id);
        let _g = span.enter();
        let causation = Causation { kind: "telemetry".into(), id: tel.event_id.clone(), at: now };
        // Agent bookkeeping: creation, workflow moves, model-version changes.
        if !self.agents.contains_key(&tel.agent_id) {
            let pacts = self.covering(&tel.agent_id, &tel.workflow);
            self.agents.insert(
                tel.agent_id.clone(),
                AgentState::new(tel.workflow.clone(), tel.model.version.clone(), pacts, now),
            );
            self.workflows.entry(tel.workflow.clone()).or_default().agents.insert(tel.agent_id.clone());
        }
        let mut causes: Vec<Cause> = Vec::new();
        {
            let moved = self.agents[&tel.agent_id].workflow != tel.workflow;
            // Pact coverage depends on agent and workflow only: matched again on a move.
            let pacts = if moved { self.covering(&tel.agent_id, &tel.workflow) } else { Vec::new() };
            let agent = self.agents.get_mut(&tel.agent_id).expect("inserted above");
            agent.last_seen = agent.last_seen.max(now);
            if moved {
                let old = std::mem::replace(&mut agent.workflow, tel.workflow.clone());
                agent.pacts = pacts;
                if let Some(w) = self.workflows.get_mut(&old) {
                    w.remove(&tel.agent_id);
                }
                let (blocked, capped) = (agent.published[0] == Lane::Block, agent.capped);
                let w = self.workflows.entry(tel.workflow.clone()).or_default();
                w.agents.insert(tel.agent_id.clone());
                if blocked {
                    w.blocked.insert(tel.agent_id.clone());
                }
                if capped {
                    w.capped.insert(tel.agent_id.clone());
                }
            }
            let agent = self.agents.get_mut(&tel.agent_id).expect("present");
            if agent.model_version != tel.model.version {
                let from = std::mem::replace(&mut agent.model_version, tel.model.version.clone());
                let pending: BTreeSet<ClauseKey> = agent
                    .clauses
                    .keys()
                    .filter(|(p, c, _)| {
                        matches!(self.pacts[*p as usize].doc.clauses[*c as usize].test, Test::Drift(_))
                    })
                    .cloned()
                    .collect();
                if !pending.is_empty() {
                    let lane = pending
                        .iter()
                        .map(|(p, c, _)| self.pacts[*p as usize].doc.clauses[*c as usize].on_model_change)
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
                    agent.model_change =
                        Some(ModelChange { from, to: tel.model.version.clone(), since: now, lane, pending });
                    causes.push(Cause {
                        code: "model_changed",
                        text,
                        clause: None,
                        detection: None,
                        causation: causation.clone(),
                        clean_at_decision: None,
                    });
                }
            }
            if agent.ttl_at.is_none() {
                let at = agent.last_seen + self.cfg.state_ttl.micros();
                agent.ttl_at = Some(at);
                let timer = Timer::Ttl(tel.agent_id.clone());
                self.schedule(at, timer);
            }
        }
        // Clauses.
        // Borrowed out of the agent for the loop (on_clause does not change coverage).
        let pact_ids = std::mem::take(&mut self.agents.get_mut(&tel.agent_id).expect("present").pacts);
        let mut high_risk_fresh = true;
        let mut has_high_risk = false;
        for &p in &pact_ids {
            for ci in 0..self.pacts[p as usize].doc.clauses.len() {
                self.on_clause(&tel, p, ci as u16, now, &causation, &mut causes);
                let clause = &self.pacts[p as usize].doc.clauses[ci];
                if clause.high_risk && tel.risk == crate::model::telemetry::Risk::High {
                    has_high_risk = true;
                    let agent = &self.agents[&tel.agent_id];
                    let fresh = agent
                        .clauses
                        .iter()
                        .filter(|((pp, cc, _), _)| *pp == p && *cc as usize == ci)
                        .all(|(_, s)| !s.stale);
                    high_risk_fresh &= fresh;
                }
            }
        }
        let agent = self.agents.get_mut(&tel.agent_id).expect("present");
        agent.pacts = pact_ids;
        let capped = agent.capped;
        if has_high_risk {
            self.stats.high_risk_decisions += 1;
            self.stats.high_risk_fresh += high_risk_fresh as u64;
        }
        if causes.is_empty() && capped {
            causes.push(Cause {
                code: "blast_radius_recheck",
                text: "blast-radius cap re-checked: the agent's clauses demand block, and the cap no longer holds it at the fail mode".into(),
                clause: None,
                detection: None,
                causation,
                clean_at_decision: None,
            });
        }
        if !causes.is_empty() {
            self.reevaluate_all(&tel.agent_id, causes, false);
        }
    }

    /// Chooses, among one step's causes, the one that explains a scope's lane change: a
    /// step-down cause when the lane falls, an escalation when it rises; among those, the
    /// one whose clause now demands the most. A detection outranks a model change.
    fn pick_cause<'c>(&self, agent: &str, causes: &'c [Cause], from: Lane, to: Lane) -> &'c Cause {
        let a = &self.agents[agent];
        let down = |c: &Cause| {
            matches!(c.code, "reverified" | "model_reverified" | "evidence_fresh" | "override_expired")
        };
        let fits = |c: &Cause| {
            if to > from {
                !down(c)
            } else if to < from {
                down(c)
            } else {
                true
            }
        };
        let weight =
            |c: &Cause| c.clause.as_ref().and_then(|k| a.clauses.get(k)).map_or(Lane::Normal, |s| s.demand);
        let mut best = &causes[0];
        for c in &causes[1..] {
            let better = (fits(c) && !fits(best))
                || (fits(c) == fits(best)
                    && (weight(c) > weight(best) || (best.code == "model_changed" && c.detection.is_some())));
            if better {
                best = c;
            }
        }
        best
    }

    /// Feeds one clause; adds a cause to `causes` when its demand or freshness changed (both
    /// may change on one event). Causes are large, so they are pushed rather than returned.
    fn on_clause(
        &mut self,
        tel: &Telemetry,
        p: u16,
        ci: u16,
        now: i64,
        causation: &Causation,
        causes: &mut Vec<Cause>,
    ) {
        let pact = &self.pacts[p as usize];
        let clause = &pact.doc.clauses[ci as usize];
        if let Some(w) = &clause.metric.when {
            if w.0.eval(tel) != Val::Bool(true) {
                return;
            }
        }
        let val = clause.metric.value.0.eval(tel);
        let obs = match (clause.metric.kind, val) {
            (_, Val::Null) => return,
            (MetricKind::Bernoulli, Val::Bool(b)) => Observation::Bool(b),
            (MetricKind::Real, Val::Num(x)) => Observation::Real(x),
            (MetricKind::Categorical, Val::Str(s)) => Observation::Category(s),
            // Attributes are typed at run time; a mismatch is an invalid observation.
            _ => {
                self.stats.invalid_observations += 1;
                return;
            }
        };
        let segment = if clause.segment_by.is_empty() {
            String::new()
        } else {
            clause
                .segment_by
                .iter()
                .map(|f| match f.field().get(tel) {
                    Val::Str(s) => s.to_string(),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join("|")
        };
        let key: ClauseKey = (p, ci, Segment(segment));
        let keep = clause.freshness.as_ref().map_or(1, |f| f.min_events as usize);
        let agent = self.agents.get_mut(&tel.agent_id).expect("agent exists");
        let state = agent
            .clauses
            .entry(key.clone())
            .or_insert_with(|| ClauseState::new(self.protos[p as usize][ci as usize].clone(), now));
        state.observe(now, keep);
        let mut cause = None;
        // One event is not enough when the window asks for more: stale until fresh again.
        if state.stale && clause.freshness.as_ref().is_none_or(|f| state.is_fresh(now, f)) {
            state.stale = false;
            if clause.high_risk {
                cause = Some(Cause {
                    code: "evidence_fresh",
                    text: format!("clause `{}` has fresh evidence again", clause.id),
                    clause: Some(key.clone()),
                    detection: None,
                    causation: causation.clone(),
                    clean_at_decision: None,
                });
            }
        }
        let need_timer =
            clause.freshness.as_ref().map(|f| state.stale_deadline(f)).filter(|_| state.timer_at.is_none());
        if let Some(at) = need_timer {
            state.timer_at = Some(at);
        }
        let result = state.detector.update(obs);
        let outcome = match result {
            Err(e) => {
                debug!(pact = %pact.id(), clause = %clause.id, error = %e, "observation refused");
                self.stats.invalid_observations += 1;
                None
            }
            Ok(Some(alarm)) => {
                *self.stats.alarms.entry(clause_label(pact, clause)).or_default() += 1;
                Some(Self::on_alarm(state, pact, clause, &alarm, now, &key, causation))
            }
            Ok(None) => {
                state.clean += 1;
                let clean = state.clean;
                // The common case (nothing to recover, no model change) needs no more lookups.
                let recovering = state.demand != Lane::Normal;
                let mc = if agent.model_change.is_some() {
                    Self::check_model_reverified(agent, &key, clean, clause, now, causation)
                } else {
                    None
                };
                if recovering {
                    let attested = agent.attested(&clause.id);
                    let state = agent.clauses.get_mut(&key).expect("present");
                    Self::check_recovery(state, clause, attested, now, &key, causation).or(mc)
                } else {
                    mc
                }
            }
        };
        if let Some(at) = need_timer {
            self.schedule(at, Timer::Freshness(tel.agent_id.clone(), key));
        }
        causes.extend(outcome);
        causes.extend(cause);
    }

    fn on_alarm(
        state: &mut ClauseState,
        pact: &Pact,
        clause: &Clause,
        alarm: &Alarm,
        now: i64,
        key: &ClauseKey,
        causation: &Causation,
    ) -> Cause {
        let critical = clause.severity == Severity::Critical;
        let target = if critical { Some(Lane::Block) } else { clause.consequence.lane() };
        let gap = state.gap;
        let first_post = now - (alarm.n_current.saturating_sub(1) as f64 * gap) as i64;
        let detection = Detection {
            detector: alarm.detector.clone(),
            statistic: alarm.statistic,
            threshold: alarm.threshold,
            false_alarm_rate: alarm.false_alarm_rate,
            baseline: serde_json::to_string(&alarm.baseline).expect("serialisable"),
            observed: serde_json::to_string(&alarm.current).expect("serialisable"),
            n: alarm.n_current,
            change_point_at: first_post - (gap / 2.0) as i64,
            first_post_change_at: first_post,
            verified_at: now,
        };
        state.last_detection = Some(detection.clone());
        state.clean = 0;
        // Fresh evidence is needed for re-verification; drift detectors keep their baseline.
        state.detector.restart();
        let (code, what) = match &clause.test {
            Test::Drift(_) => ("drift_verified", "drift verified"),
            Test::Limit(l) if l.zero_tolerance => ("zero_tolerance_breach", "zero-tolerance breach"),
            Test::Limit(_) => ("limit_breached", "limit breach verified"),
        };
        let Some(lane) = target else {
            return Cause {
                code: "settle",
                text: format!("{what} on clause `{}` of pact `{}`: settle", clause.id, pact.id()),
                clause: Some(key.clone()),
                detection: Some(detection),
                causation: causation.clone(),
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
            causation: causation.clone(),
            clean_at_decision: None,
        }
    }

    fn check_model_reverified(
        agent: &mut AgentState,
        key: &ClauseKey,
        clean: u64,
        clause: &Clause,
        now: i64,
        causation: &Causation,
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
        let mc = agent.model_change.take().expect("present");
        Some(Cause {
            code: "model_reverified",
            text: format!(
                "model {} re-verified: every drift clause saw {} clean events since the change",
                mc.to, clause.recovery.clean_events
            ),
            clause: None,
            detection: None,
            causation: causation.clone(),
            clean_at_decision: None,
        })
    }

    fn check_recovery(
        state: &mut ClauseState,
        clause: &Clause,
        attested: bool,
        now: i64,
        key: &ClauseKey,
        causation: &Causation,
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
            code: "reverified",
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
            causation: causation.clone(),
            clean_at_decision: Some(clean),
        })
    }

    fn on_freshness_timer(&mut self, agent_id: &str, key: ClauseKey, at: i64) {
        let (p, c) = (key.0 as usize, key.1 as usize);
        let Some(f) = self.pacts[p].doc.clauses[c].freshness.clone() else { return };
        let high_risk = self.pacts[p].doc.clauses[c].high_risk;
        let Some(agent) = self.agents.get_mut(agent_id) else { return };
        let Some(state) = agent.clauses.get_mut(&key) else { return };
        state.timer_at = None;
        if state.is_fresh(at, &f) {
            let next = state.stale_deadline(&f).max(at + 1);
            state.timer_at = Some(next);
            self.schedule(next, Timer::Freshness(agent_id.to_string(), key));
            return;
        }
        if state.stale {
            return;
        }
        state.stale = true;
        let last = state.last_at;
        let (pact, clause) = (&self.pacts[p], &self.pacts[p].doc.clauses[c]);
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
            let cause = Cause {
                code: "evidence_stale",
                text,
                clause: Some(key),
                detection: None,
                causation: Causation { kind: "timer".into(), id: "freshness".into(), at },
                clean_at_decision: None,
            };
            self.reevaluate(agent_id, cause, false);
        }
    }

    fn on_override(&mut self, req: OverrideRequest) {
        let now = req.issued_at;
        let seq = self.agents.get(&req.agent_id).map_or(0, |a| a.seq);
        match overrides::validate(&req, seq, self.cfg.max_override_ttl.micros()) {
            Err(reason) => {
                self.stats.overrides_rejected += 1;
                let detail = serde_json::json!({"override": req, "reason": reason});
                self.history(RecordKind::OverrideRejected, now, Some(req.agent_id.clone()), None, detail);
            }
            Ok(expires_at) => {
                if !self.agents.contains_key(&req.agent_id) {
                    // Known only by this override (telemetry may follow): its state expires
                    // like any other, so overrides for unknown ids cannot pile up.
                    let mut agent = AgentState::new(String::new(), String::new(), Vec::new(), now);
                    let at = now.saturating_add(self.cfg.state_ttl.micros());
                    agent.ttl_at = Some(at);
                    self.agents.insert(req.agent_id.clone(), agent);
                    self.schedule(at, Timer::Ttl(req.agent_id.clone()));
                }
                self.stats.overrides_accepted += 1;
                if req.kind == OverrideKind::Loosen {
                    self.stats.overrides_bypass += 1;
                }
                let detail =
                    serde_json::json!({"override": req, "policy_bypass": req.kind == OverrideKind::Loosen});
                self.history(RecordKind::OverrideAccepted, now, Some(req.agent_id.clone()), None, detail);
                self.schedule(
                    expires_at,
                    Timer::OverrideExpiry(req.agent_id.clone(), req.override_id.clone()),
                );
                let agent_id = req.agent_id.clone();
                let kind = req.kind;
                let cause = Cause {
                    code: "override_applied",
                    text: format!(
                        "{:?} override `{}` by {} (ticket {}): {}",
                        kind, req.override_id, req.principal, req.ticket, req.reason
                    ),
                    clause: None,
                    detection: None,
                    causation: Causation { kind: "override".into(), id: req.override_id.clone(), at: now },
                    clean_at_decision: None,
                };
                self.agents
                    .get_mut(&agent_id)
                    .expect("present")
                    .overrides
                    .push(ActiveOverride { req, expires_at });
                // An attestation changes no lane by itself; lane overrides publish their state.
                self.reevaluate(&agent_id, cause, kind != OverrideKind::Attest);
            }
        }
    }

    fn on_override_expiry(&mut self, agent_id: &str, id: &str, at: i64) {
        let Some(agent) = self.agents.get_mut(agent_id) else { return };
        let Some(i) = agent.overrides.iter().position(|o| o.req.override_id == id) else { return };
        let o = agent.overrides.remove(i);
        let detail = serde_json::json!({"override_id": id, "kind": o.req.kind, "expired_at": at});
        self.history(RecordKind::OverrideExpired, at, Some(agent_id.to_string()), None, detail);
        let cause = Cause {
            code: "override_expired",
            text: format!("override `{id}` expired; lane re-evaluated from the clauses"),
            clause: None,
            detection: None,
            causation: Causation { kind: "timer".into(), id: format!("override_expiry:{id}"), at },
            clean_at_decision: None,
        };
        self.reevaluate(agent_id, cause, o.req.kind != OverrideKind::Attest);
    }

    fn on_ttl(&mut self, agent_id: &str, at: i64) {
        let ttl = self.cfg.state_ttl.micros();
        let Some(agent) = self.agents.get_mut(agent_id) else { return };
        agent.ttl_at = None;
        let idle = at - agent.last_seen >= ttl;
        let quiet = agent.published == [Lane::Normal, Lane::Normal] && agent.overrides.is_empty();
        if !(idle && quiet) {
            // Not idle: check again a TTL after the last event. Idle but not quiet (a lane
            // or an override still holds): state is kept, and checked again a TTL later.
            let next = if idle { at + ttl.max(1) } else { agent.last_seen + ttl };
            agent.ttl_at = Some(next);
            self.schedule(next, Timer::Ttl(agent_id.to_string()));
            return;
        }
        let agent = self.agents.remove(agent_id).expect("present");
        if let Some(w) = self.workflows.get_mut(&agent.workflow) {
            w.remove(agent_id);
        }
        self.stats.states_expired += 1;
        let detail = serde_json::json!({"last_seen": agent.last_seen, "ttl": self.cfg.state_ttl.to_string(), "clauses": agent.clauses.len(), "seq": agent.seq});
        self.history(RecordKind::StateExpired, at, Some(agent_id.to_string()), None, detail);
    }

    /// The lanes the clauses demand, before overrides: `[all, high_risk]`, and the fail mode
    /// of the pact whose clause drives the agent-wide lane (`review` when none does).
    fn computed(&self, agent: &AgentState) -> ([Lane; 2], Lane) {
        let mut all = Lane::Normal;
        let mut driver: Option<&ClauseKey> = None;
        for (k, s) in &agent.clauses {
            if s.demand > all {
                (all, driver) = (s.demand, Some(k));
            }
        }
        if let Some(mc) = &agent.model_change {
            if mc.lane > all {
                (all, driver) = (mc.lane, None);
            }
        }
        let stale_high_risk = agent
            .clauses
            .iter()
            .any(|(k, s)| s.stale && self.pacts[k.0 as usize].doc.clauses[k.1 as usize].high_risk);
        let high = if stale_high_risk { all.max(Lane::Review) } else { all };
        let fail_mode = driver.map_or(Lane::Review, |k| self.pacts[k.0 as usize].doc.fail_mode);
        ([all, high], fail_mode)
    }

    fn reevaluate(&mut self, agent_id: &str, cause: Cause, force: bool) {
        self.reevaluate_all(agent_id, vec![cause], force);
    }

    /// Recomputes the agent's lanes after one step, which may have several causes; each
    /// scope's event names the cause that explains its change.
    fn reevaluate_all(&mut self, agent_id: &str, causes: Vec<Cause>, force: bool) {
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
        if lanes[0] == Lane::Block && agent.published[0] != Lane::Block && automatic_block() {
            let w = self.workflows.entry(agent.workflow.clone()).or_default();
            let n = w.agents.len();
            let would = w.blocked.len() + 1;
            if n >= self.cfg.blast_radius_min_agents && would as f64 > self.cfg.max_blocked_share * n as f64 {
                capped = true;
                lanes[0] = fail_mode;
                lanes[1] = lanes[1].min(Lane::Review).max(fail_mode);
                if !w.panicked {
                    w.panicked = true;
                    let ev = PanicEvent {
                        workflow: agent.workflow.clone(),
                        would_block: would,
                        agents: n,
                        fail_mode,
                        at,
                    };
                    let detail = serde_json::to_value(&ev).expect("serialisable");
                    self.out.push(Output::Panic(ev));
                    self.history(RecordKind::Panic, at, Some(agent_id.to_string()), None, detail);
                }
            }
        }
        let agent = self.agents.get_mut(agent_id).expect("present");
        // The workflow's set follows the flag; touched only when it changes.
        if agent.capped != capped {
            agent.capped = capped;
            if let Some(w) = self.workflows.get_mut(&agent.workflow) {
                if capped {
                    w.capped.insert(agent_id.to_string());
                } else {
                    w.capped.remove(agent_id);
                }
            }
        }
        let agent = self.agents.get(agent_id).expect("present");
        let effective = [
            overrides::apply(lanes[0], Scope::All, &agent.overrides),
            overrides::apply(lanes[1], Scope::HighRisk, &agent.overrides),
        ];
        // High-risk actions are never less restricted than the agent as a whole.
        let effective = [effective[0], effective[1].max(effective[0])];
        // A settle is a side event of its own: it never stands in for a lane change that
        // happens in the same step, which must publish the new lane.
        let (settles, causes): (Vec<Cause>, Vec<Cause>) =
            causes.into_iter().partition(|c| c.code == "settle");
        for cause in settles.iter() {
            let lane = self.agents[agent_id].published[0];
            self.emit(agent_id, Scope::All, lane, lane, cause, true);
        }
        // Only settles: a lane that moves anyway (the blast-radius cap lifted) cites them.
        let causes = if causes.is_empty() { settles } else { causes };
        for (i, scope) in [Scope::All, Scope::HighRisk].into_iter().enumerate() {
            let agent = self.agents.get(agent_id).expect("present");
            let from = agent.published[i];
            let to = effective[i];
            if to == from && !(force && i == 0) {
                continue;
            }
            let cause = self.pick_cause(agent_id, &causes, from, to).clone();
            self.emit(agent_id, scope, from, to, &cause, false);
        }
        let workflow = &self.agents[agent_id].workflow;
        if let Some(w) = self.workflows.get_mut(workflow) {
            w.end_panic_if_clear();
        }
    }

    fn emit(&mut self, agent_id: &str, scope: Scope, from: Lane, to: Lane, cause: &Cause, settle: bool) {
        let enforced = self.cfg.enforce;
        let agent = self.agents.get_mut(agent_id).expect("present");
        agent.seq += 1;
        let seq = agent.seq;
        let i = if scope == Scope::All { 0 } else { 1 };
        if !settle {
            agent.published[i] = to;
        }
        let clause_ref = cause
            .clause
            .as_ref()
            .map(|k| (k, &self.pacts[k.0 as usize], &self.pacts[k.0 as usize].doc.clauses[k.1 as usize]));
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
            segment: clause_ref.map(|(k, _, _)| k.2 .0.clone()),
            lane_from: from,
            lane_to: to,
            action: if settle { "settle".into() } else { to.action().into() },
            scope,
            enforced,
            effective_at: cause.causation.at,
            expires_at: ov.map(|o| o.expires_at),
            min_dwell_until: state.map(|s| s.min_dwell_until).filter(|t| *t > i64::MIN),
            reason: Reason { code: cause.code.to_string(), text: cause.text.clone() },
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
        let workflow = agent.workflow.clone();
        if scope == Scope::All && !settle {
            let w = self.workflows.entry(workflow).or_default();
            if to == Lane::Block {
                w.blocked.insert(agent_id.to_string());
            } else {
                w.blocked.remove(agent_id);
            }
        }
        self.stats.enforcement_events += 1;
        let detail = serde_json::to_value(&event).expect("serialisable");
        let pc = clause_ref.map(|(_, p, c)| (p.clone(), c.clone()));
        self.history(
            RecordKind::Decision,
            event.effective_at,
            Some(agent_id.to_string()),
            pc.as_ref().map(|(p, c)| (p, c)),
            detail,
        );
        self.out.push(Output::Enforcement(event));
    }
}

/// The dwell after the `escalations`-th escalation: `min_dwell · multiplier^(n-1)`, capped.
fn dwell(clause: &Clause, escalations: u32) -> i64 {
    let r = &clause.recovery;
    let f = r.dwell_multiplier.powi(escalations.saturating_sub(1).min(60) as i32);
    ((r.min_dwell.micros() as f64 * f) as i64).min(r.max_dwell.micros())
}

#[cfg(test)]
mod tests;
