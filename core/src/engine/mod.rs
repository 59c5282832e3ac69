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

pub use cause::CauseCode;
use cause::{Cause, CausedBy};

// The engine's jobs, one file each; all are `impl Engine` blocks over the state below.
mod agents;
mod buffer;
mod cause;
mod clause_map;
mod clauses;
mod dirty;
mod lanes;
mod override_rules;
mod persist;
mod recent;
pub mod registry;
mod scope;
mod time;
mod timers;
mod trace;
pub use trace::{ClauseTrace, TraceLimits, TracePoint, Tracer, Traces};

use crate::engine::state::{AgentState, ClauseKey, ClauseState, ModelChange};
use crate::model::enforcement::{
    event_id, Causation, Detection, EnforcementEvent, Evidence, OverrideInfo, Reason,
};
use crate::model::history::{Chain, Entry, Record, RecordKind};
use crate::model::lane::{ByScope, Lane, Scope};
use crate::model::overrides::{self, ActiveOverride, OverrideKind, OverrideRequest};
use crate::model::pact_change::PactChange;
use crate::model::telemetry::Telemetry;
use crate::pact::duration::Dur;
use crate::pact::predicate::Val;
use crate::pact::{Clause, Pact, Severity, Test};
use driftgate_detectors::{Alarm, AnyDetector, Detector, MetricKind, Observation};
use registry::{severe_clauses, RegistryMeta, Role, SlotInfo};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
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
///
/// Each kind is boxed: an input moves through the event-time buffer and the engine's
/// calls by value, and as 232 bytes inline (telemetry; the other kinds 184–192) it was
/// copied four or five times on the way, 4.5 % of the engine bench's instructions; a box
/// moves as a pointer. In the pipeline a decoder's helper thread allocates the telemetry's
/// box and the release thread frees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// Agent telemetry.
    Telemetry(Box<Telemetry>),
    /// An operator override.
    Override(Box<OverrideRequest>),
    /// A pact version enforced, shadowed, promoted or rolled back.
    Pact(Box<PactChange>),
}

impl From<Telemetry> for Input {
    fn from(t: Telemetry) -> Input {
        Input::Telemetry(Box::new(t))
    }
}

impl From<OverrideRequest> for Input {
    fn from(o: OverrideRequest) -> Input {
        Input::Override(Box::new(o))
    }
}

impl From<PactChange> for Input {
    fn from(c: PactChange) -> Input {
        Input::Pact(Box::new(c))
    }
}

impl Input {
    /// Event time (µs).
    pub fn time(&self) -> i64 {
        match self {
            Input::Telemetry(t) => t.occurred_at,
            Input::Override(o) => o.issued_at,
            Input::Pact(c) => c.issued_at,
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

/// An engine's outputs sorted by kind, each kind in order: for callers that handle the
/// kinds apart (the demo, replay, the demo's API). The Kafka emitter matches [`Output`]
/// itself, since a late record needs the input it came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// Enforcement events.
    pub events: Vec<EnforcementEvent>,
    /// History records.
    pub history: Vec<Record>,
    /// Late inputs.
    pub late: Vec<LateRecord>,
    /// Blast-radius cap trips.
    pub panics: Vec<PanicEvent>,
}

impl Collected {
    /// Sorts `outputs` in.
    pub fn take(&mut self, outputs: impl IntoIterator<Item = Output>) {
        for o in outputs {
            match o {
                Output::Enforcement(e) => self.events.push(e),
                Output::History(r) => self.history.push(r),
                Output::Late(l) => self.late.push(l),
                Output::Panic(p) => self.panics.push(p),
            }
        }
    }
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
    /// Scope-expansion triggers, by kind (`new_workflow`, `new_tool`, `first_high_risk`).
    #[serde(default)]
    pub scope_triggers: BTreeMap<String, u64>,
    /// Would-be enforcement events of shadow pact versions, by pact id.
    #[serde(default)]
    pub shadow_events: BTreeMap<String, u64>,
    /// Enforcement events citing a clause, by the clause's pact id.
    #[serde(default)]
    pub pact_events: BTreeMap<String, u64>,
    /// Pact changes applied, by mode.
    #[serde(default)]
    pub pact_changes: BTreeMap<String, u64>,
    /// Pact changes refused by the engine.
    #[serde(default)]
    pub pact_changes_refused: u64,
}

/// The engine's state besides its agents (see [`Engine::meta`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineMeta {
    /// Pacts in index order, as `(id, version)`: clause keys refer to these indexes.
    pub pacts: Vec<(String, u32)>,
    /// Inputs waiting for the watermark that have no source position: `(event time,
    /// arrival, input, tag)` (the tag is `None` in records written now).
    pub buffer: Vec<(i64, u64, Input, Option<u64>)>,
    /// Inputs waiting for the watermark, kept by their source position only: `(event time,
    /// arrival, tag)`. The source reads them again on restore ([`Engine::rebuffer`]), so the
    /// record stays small however much the buffer holds.
    #[serde(default)]
    pub by_reference: Vec<(i64, u64, u64)>,
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
    /// Pacts changed at run time.
    #[serde(default)]
    pub registry: RegistryMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Freshness(Arc<str>, ClauseKey),
    OverrideExpiry(Arc<str>, String),
    Ttl(Arc<str>),
}

impl Timer {
    /// The agent it is for.
    fn agent(&self) -> &Arc<str> {
        match self {
            Timer::Freshness(a, _) | Timer::OverrideExpiry(a, _) | Timer::Ttl(a) => a,
        }
    }
}

/// A map by name whose keys the engine's other indexes share: an agent's id is one
/// allocation, held by the agents map and by its timers, its workflow's sets and the changed
/// list; a workflow's name is one, held by the workflow index and its agents.
type NameMap<V> = hashbrown::HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Agents by id, each state boxed: a table's room grows in doublings, and a slot holding
/// the 168-byte state inline made each doubling cost 184 bytes per slot (in fleets of 2,000
/// and 4,000 agents, 507 B per agent against 369 B in fleets of 200 and 400). Boxed, a slot
/// is 24 bytes and the state is allocated once per agent.
type AgentMap = NameMap<Box<AgentState>>;

/// An agent's state by id, with the id the map holds (for [`Dirty::mark`]).
fn agent_entry<'a>(agents: &'a mut AgentMap, id: &str) -> Option<(&'a Arc<str>, &'a mut AgentState)> {
    agents.get_key_value_mut(id).map(|(id, a)| (id, &mut **a))
}

/// The key `map` holds for `name`, shared, or a new one when it holds none.
fn held_name<V>(map: &NameMap<V>, name: &str) -> Arc<str> {
    match map.get_key_value(name) {
        Some((held, _)) => held.clone(),
        None => name.into(),
    }
}

#[derive(Default, Clone)]
struct WorkflowStats {
    agents: BTreeSet<Arc<str>>,
    blocked: BTreeSet<Arc<str>>,
    /// Agents held at the fail mode by the cap.
    capped: BTreeSet<Arc<str>>,
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

/// The engine.
pub struct Engine {
    cfg: EngineConfig,
    /// Pact versions by slot (clause keys index them); see [`registry`].
    pacts: Vec<Pact>,
    /// Each slot's role and provenance.
    slots: Vec<SlotInfo>,
    /// Per pact id, the slots its active version replaced, newest last.
    previous: BTreeMap<String, Vec<u16>>,
    /// The newest change ids applied.
    applied: Vec<String>,
    protos: Vec<Vec<AnyDetector>>,
    /// foldhash: a per-process-seeded fast hash (std's SipHash was ~5 % of the engine's
    /// time); nothing iterates these maps, so output stays deterministic.
    agents: AgentMap,
    workflows: NameMap<WorkflowStats>,
    buffer: buffer::TimeBuffer,
    /// Restored buffer entries whose input the source has not read again yet, by tag: their
    /// `(event time, arrival)` in the buffer.
    awaited: BTreeMap<u64, (i64, u64)>,
    arrivals: u64,
    max_seen: Option<i64>,
    /// See [`Engine::tick`].
    tick_floor: Option<i64>,
    /// Per pact, its `critical` zero-tolerance clauses: a breach of one acts on arrival.
    severe: Vec<Vec<u16>>,
    /// Whether any pact has such a clause (most inputs need no further look).
    any_severe: bool,
    now: i64,
    timers: timers::Timers,
    chain: Chain,
    /// Agents changed since the last [`Engine::take_dirty`] (for the state changelog).
    dirty: dirty::Dirty,
    /// Where an event's segment is joined when a clause segments by more than one field:
    /// reused, so that joining allocates nothing per event. Holds nothing of meaning
    /// between two clauses.
    segment_buf: String,
    out: Vec<Output>,
    stats: Stats,
    activated: bool,
    /// Detector traces for reports; `None` unless [`Engine::enable_trace`] was called.
    trace: Option<Box<Tracer>>,
    /// Telemetry the engine is done with, kept for the caller to free (see
    /// [`Engine::retire_into`]); `None`: dropped where it is done with.
    /// The boxes themselves, as they arrived: unboxing would copy each record once more.
    #[allow(clippy::vec_box)]
    retired: Option<Vec<Box<Telemetry>>>,
}

/// Clause `c` of pact `p`, as clause keys index them. Keys are built from `pacts`, and a
/// restore remaps them to the loaded pacts, so the indexes are in range. A free function so
/// that callers can hold other fields of the engine mutably at the same time.
fn clause_at(pacts: &[Pact], p: u16, c: u16) -> (&Pact, &Clause) {
    let pact = &pacts[p as usize];
    (pact, &pact.doc.clauses[c as usize])
}

/// Chains a history record and outputs it. A free function so that a caller can hold the
/// pacts and an agent's state while it records.
fn record_history(
    chain: &mut Chain,
    out: &mut Vec<Output>,
    kind: RecordKind,
    at: i64,
    agent: Option<String>,
    clause: Option<(&Pact, &Clause)>,
    detail: serde_json::Value,
) {
    let rec = chain.append(Entry {
        kind,
        at_micros: at,
        agent_id: agent,
        pact_id: clause.map(|(p, _)| p.id().to_string()),
        pact_version: clause.map(|(p, _)| p.version()),
        clause_id: clause.map(|(_, c)| c.id.clone()),
        detail,
    });
    out.push(Output::History(rec));
}

fn clause_label(p: &Pact, c: &Clause) -> String {
    format!("{}/{}", p.id(), c.id)
}

impl Engine {
    /// An engine for these pacts.
    pub fn new(cfg: EngineConfig, pacts: Vec<Pact>) -> Engine {
        let protos = pacts.iter().map(|p| p.doc.clauses.iter().map(Pact::detector).collect()).collect();
        let severe: Vec<Vec<u16>> = pacts.iter().map(severe_clauses).collect();
        let any_severe = severe.iter().any(|c| !c.is_empty());
        Engine {
            cfg,
            slots: vec![SlotInfo::loaded(); pacts.len()],
            previous: BTreeMap::new(),
            applied: Vec::new(),
            pacts,
            protos,
            agents: AgentMap::default(),
            workflows: NameMap::default(),
            buffer: buffer::TimeBuffer::default(),
            awaited: BTreeMap::new(),
            arrivals: 0,
            max_seen: None,
            tick_floor: None,
            any_severe,
            severe,
            now: i64::MIN,
            timers: timers::Timers::default(),
            chain: Chain::default(),
            dirty: dirty::Dirty::default(),
            segment_buf: String::new(),
            out: Vec::new(),
            stats: Stats::default(),
            activated: false,
            trace: None,
            retired: None,
        }
    }

    /// Swaps where telemetry the engine is done with goes: into `sink` (`Some`), for the
    /// caller to free, or dropped (`None`, the default). Returns the previous sink.
    ///
    /// For callers that decode on another thread: a record freed by a thread other than
    /// the one that allocated it costs the allocator several times a local free, so the
    /// caller can hand the records back to be freed off its own thread.
    #[allow(clippy::vec_box)] // The boxes as they arrived (see `retired`).
    pub fn retire_into(&mut self, sink: Option<Vec<Box<Telemetry>>>) -> Option<Vec<Box<Telemetry>>> {
        std::mem::replace(&mut self.retired, sink)
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Every pact version loaded, by slot (clause keys index them), whatever its role.
    pub fn pacts(&self) -> &[Pact] {
        &self.pacts
    }

    /// The pact versions enforcing.
    pub fn active_pacts(&self) -> impl Iterator<Item = &Pact> {
        self.pacts.iter().zip(&self.slots).filter(|(_, s)| s.role == Role::Active).map(|(p, _)| p)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// An agent's state, if known.
    pub fn agent(&self, id: &str) -> Option<&AgentState> {
        self.agents.get(id).map(|a| &**a)
    }

    /// Number of agents with state.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Every agent with state.
    pub fn agents(&self) -> impl Iterator<Item = (&str, &AgentState)> {
        self.agents.iter().map(|(id, a)| (&**id, &**a))
    }

    /// Takes the outputs produced so far.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    fn history(
        &mut self,
        kind: RecordKind,
        at: i64,
        agent: Option<String>,
        clause: Option<(&Pact, &Clause)>,
        detail: serde_json::Value,
    ) {
        record_history(&mut self.chain, &mut self.out, kind, at, agent, clause, detail);
    }

    /// Processes one input; `in_order` (released by the watermark) first fires the timers due
    /// by its time. An input acting on arrival fires none: timers follow the watermark.
    fn process(&mut self, input: Input, in_order: bool) {
        let t = input.time();
        if !self.activated {
            self.activated = true;
            for i in 0..self.pacts.len() {
                if self.slots[i].role != Role::Active {
                    continue;
                }
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
        // Telemetry marks its agent changed in the lookup it makes anyway, and a pact
        // change the agents it changes.
        if let Input::Override(o) = &input {
            self.dirty.mark(&o.agent_id, agent_entry(&mut self.agents, &o.agent_id));
        }
        match input {
            Input::Telemetry(tel) => {
                self.on_telemetry(&tel);
                if let Some(retired) = self.retired.as_mut() {
                    retired.push(tel);
                }
            }
            Input::Override(o) => self.on_override(*o),
            Input::Pact(c) => self.on_pact_change(*c),
        }
    }
}

#[cfg(test)]
mod tests;
