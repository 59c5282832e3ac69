//! Model-based test of the lane machine.
//!
//! `Model` below is a small reference implementation of the enforcement rules, written from
//! the README's rules rather than from the engine's code: lanes per scope, the maximum over
//! clauses, override precedence and expiry, dwell with multiplication, step-down one lane at
//! a time after re-verification, critical-block attestation, stale evidence, model change,
//! the blast-radius cap and state TTL. Every clause is deterministic (zero-tolerance limits,
//! and a drift clause on a constant metric), so the model needs no statistics.
//!
//! proptest generates abstract steps (clause alarm, clean event, time passing, override,
//! version change, evidence gap); after every step the engine's published lanes for both
//! scopes, its `seq` and its panic events must equal the model's. The run counts how often
//! each rule fired and fails if one never did, so the generators provably reach recovery,
//! dwell expiry, attestation and the cap.

use driftgate_core::engine::{Engine, EngineConfig, Input, Output};
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::overrides::{OverrideKind, OverrideRequest};
use driftgate_core::model::telemetry::{Attr, Model as ModelInfo, Outcome, Risk, Telemetry};
use driftgate_core::pact::parse_pact;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// The pact of the lane tests, shared with the engine's unit tests.
const PACT: &str = include_str!("../fixtures/lane-rules.yaml");

const S: i64 = 1_000_000;
const MIN: i64 = 60 * S;
const AGENTS: usize = 4;
const TTL: i64 = 2 * 3600 * S;
const MAX_OVERRIDE_TTL: i64 = 3600 * S;

fn config() -> EngineConfig {
    EngineConfig {
        max_out_of_orderness: driftgate_core::pact::duration::Dur(0),
        allowed_lateness: driftgate_core::pact::duration::Dur(0),
        state_ttl: driftgate_core::pact::duration::Dur(TTL),
        max_override_ttl: driftgate_core::pact::duration::Dur(MAX_OVERRIDE_TTL),
        max_blocked_share: 0.3,
        blast_radius_min_agents: 3,
        ..EngineConfig::default()
    }
}

/// The clause a flag trips (index into `CLAUSES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    None,
    Watch,
    Degrade,
    Block,
    Settle,
}

impl Flag {
    fn as_str(self) -> &'static str {
        match self {
            Flag::None => "none",
            Flag::Watch => "watch",
            Flag::Degrade => "degrade",
            Flag::Block => "block",
            Flag::Settle => "settle",
        }
    }
}

/// One abstract step. `dt_s` is the event-time gap before it, in seconds.
#[derive(Debug, Clone)]
enum Step {
    /// Telemetry for an agent; `flag` trips a clause (`None`: a clean event).
    Event { agent: u8, dt_s: u32, flag: Flag, high_risk: bool, new_model: bool },
    /// Time passes: an event from an agent no pact covers moves the clock.
    Tick { dt_s: u32 },
    /// An operator override; `fault` makes it invalid in one of several ways.
    Override {
        agent: u8,
        dt_s: u32,
        kind: OverrideKind,
        scope: Scope,
        lane: Lane,
        ttl_s: u32,
        fault: Option<Fault>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    StaleSeq,
    NoExpiry,
    ExpiredAlready,
    TtlTooLong,
    NoLane,
}

fn gap() -> impl Strategy<Value = u32> {
    prop_oneof![12 => 1u32..90, 3 => 90u32..900, 1 => 600u32..2400, 1 => 7000u32..9000]
}

fn step() -> impl Strategy<Value = Step> {
    let flag = prop_oneof![
        30 => Just(Flag::None),
        2 => Just(Flag::Watch),
        3 => Just(Flag::Degrade),
        1 => Just(Flag::Block),
        1 => Just(Flag::Settle),
    ];
    let kind = prop_oneof![
        1 => Just(OverrideKind::EmergencyKill),
        2 => Just(OverrideKind::Tighten),
        2 => Just(OverrideKind::Loosen),
        3 => Just(OverrideKind::Attest),
    ];
    let scope = prop_oneof![Just(Scope::All), Just(Scope::HighRisk)];
    let fault = prop_oneof![
        8 => Just(None),
        1 => prop_oneof![Just(Fault::StaleSeq), Just(Fault::NoExpiry), Just(Fault::ExpiredAlready), Just(Fault::TtlTooLong), Just(Fault::NoLane)].prop_map(Some),
    ];
    prop_oneof![
        20 => (0..AGENTS as u8, gap(), flag, prop::bool::weighted(0.5), prop::bool::weighted(0.03))
            .prop_map(|(agent, dt_s, flag, high_risk, new_model)| Step::Event { agent, dt_s, flag, high_risk, new_model }),
        2 => gap().prop_map(|dt_s| Step::Tick { dt_s }),
        3 => (0..AGENTS as u8, 1u32..120, kind, scope, prop::sample::select(Lane::ALL.to_vec()), 60u32..1800, fault)
            .prop_map(|(agent, dt_s, kind, scope, lane, ttl_s, fault)| Step::Override { agent, dt_s, kind, scope, lane, ttl_s, fault }),
    ]
}

// ---------------------------------------------------------------------------------------
// The reference model.

/// Clause indexes, in pact order (timers fire in this order when due together).
const WATCH: usize = 0;
const DEGRADE: usize = 1;
const BLOCK: usize = 2;
const SETTLE: usize = 3;
const DRIFT: usize = 4;

struct ClauseSpec {
    id: &'static str,
    /// The lane a breach demands (`None`: settle; drift never alarms here).
    lane: Option<Lane>,
    critical: bool,
    clean_events: u64,
    min_dwell: i64,
    multiplier: f64,
    max_dwell: i64,
}

const CLAUSES: [ClauseSpec; 5] = [
    ClauseSpec {
        id: "watch_c",
        lane: Some(Lane::Watch),
        critical: false,
        clean_events: 3,
        min_dwell: 2 * MIN,
        multiplier: 2.0,
        max_dwell: 10 * MIN,
    },
    ClauseSpec {
        id: "degrade_c",
        lane: Some(Lane::Degrade),
        critical: false,
        clean_events: 2,
        min_dwell: MIN,
        multiplier: 3.0,
        max_dwell: 20 * MIN,
    },
    ClauseSpec {
        id: "block_c",
        lane: Some(Lane::Block),
        critical: true,
        clean_events: 2,
        min_dwell: MIN,
        multiplier: 2.0,
        max_dwell: 24 * 60 * MIN,
    },
    ClauseSpec {
        id: "settle_c",
        lane: None,
        critical: false,
        clean_events: 200,
        min_dwell: 15 * MIN,
        multiplier: 2.0,
        max_dwell: 24 * 60 * MIN,
    },
    ClauseSpec {
        id: "drift_c",
        lane: None,
        critical: false,
        clean_events: 4,
        min_dwell: 3 * MIN,
        multiplier: 2.0,
        max_dwell: 24 * 60 * MIN,
    },
];
const FRESH_AGE: i64 = 10 * MIN;
const FRESH_MIN: usize = 2;

/// How often each rule fired over the whole run.
#[derive(Debug, Default)]
struct Fired(BTreeMap<&'static str, u64>);

impl Fired {
    fn hit(&mut self, rule: &'static str) {
        *self.0.entry(rule).or_default() += 1;
    }
}

#[derive(Debug, Clone, Default)]
struct MClause {
    demand: Option<Lane>,
    escalations: u32,
    dwell_until: i64,
    clean: u64,
    needs_attestation: bool,
    // Freshness (degrade_c only).
    created: i64,
    recent: Vec<i64>,
    stale: bool,
    check_at: Option<i64>,
}

impl MClause {
    fn demand(&self) -> Lane {
        self.demand.unwrap_or(Lane::Normal)
    }
    fn fresh(&self, now: i64) -> bool {
        now - self.created < FRESH_AGE
            || (self.recent.len() >= FRESH_MIN
                && self.recent[self.recent.len() - FRESH_MIN] >= now - FRESH_AGE)
    }
    /// When the evidence goes stale if nothing more arrives.
    fn deadline(&self) -> i64 {
        let grace = self.created + FRESH_AGE;
        if self.recent.len() >= FRESH_MIN {
            grace.max(self.recent[self.recent.len() - FRESH_MIN] + FRESH_AGE)
        } else {
            grace
        }
    }
}

#[derive(Debug, Clone)]
struct MOverride {
    id: String,
    kind: OverrideKind,
    scope: Scope,
    lane: Lane,
    clause: String,
}

#[derive(Debug, Clone)]
struct MAgent {
    seq: u64,
    /// Known to the workflow (it sent telemetry).
    in_workflow: bool,
    version: u32,
    last_seen: i64,
    clauses: [Option<MClause>; 5],
    overrides: Vec<MOverride>,
    /// A model change awaiting re-verification: since when.
    model_change: Option<i64>,
    published: [Lane; 2],
    ttl_at: Option<i64>,
    capped: bool,
}

impl MAgent {
    fn new(now: i64, version: u32, in_workflow: bool) -> Self {
        MAgent {
            seq: 0,
            in_workflow,
            version,
            last_seen: now,
            clauses: Default::default(),
            overrides: Vec::new(),
            model_change: None,
            published: [Lane::Normal; 2],
            ttl_at: None,
            capped: false,
        }
    }
    fn attested(&self, clause: &str) -> bool {
        self.overrides.iter().any(|o| o.kind == OverrideKind::Attest && o.clause == clause)
    }
}

/// Timers, ordered as the engine promises: by due time, then freshness < override expiry <
/// TTL, then agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum MTimer {
    Fresh(usize),
    Expiry(usize, String),
    Ttl(usize),
}

#[derive(Default)]
struct Model {
    agents: [Option<MAgent>; AGENTS],
    timers: BTreeSet<(i64, MTimer)>,
    panicked: bool,
    panics: u64,
}

fn dwell(c: &ClauseSpec, escalations: u32) -> i64 {
    let f = c.multiplier.powi(escalations.saturating_sub(1) as i32);
    ((c.min_dwell as f64 * f) as i64).min(c.max_dwell)
}

/// What one step asks for a scope-`all` event regardless of a lane change.
#[derive(Default)]
struct Extra {
    force: bool,
    settle: bool,
}

impl Model {
    fn fire_timers(&mut self, upto: i64, fired: &mut Fired) {
        while let Some((at, _)) = self.timers.first() {
            if *at > upto {
                break;
            }
            let (at, timer) = self.timers.pop_first().unwrap();
            match timer {
                MTimer::Fresh(a) => self.on_fresh_check(a, at, fired),
                MTimer::Expiry(a, id) => {
                    let Some(agent) = self.agents[a].as_mut() else { continue };
                    let Some(i) = agent.overrides.iter().position(|o| o.id == id) else { continue };
                    let o = agent.overrides.remove(i);
                    fired.hit("override_expired");
                    let live = agent.published;
                    self.settle_lanes(
                        a,
                        Extra { force: o.kind != OverrideKind::Attest, settle: false },
                        fired,
                    );
                    if self.agents[a].as_ref().unwrap().published != live {
                        fired.hit("override_expiry_changed_lane");
                    }
                }
                MTimer::Ttl(a) => {
                    let Some(agent) = self.agents[a].as_mut() else { continue };
                    agent.ttl_at = None;
                    let idle = at - agent.last_seen >= TTL;
                    let quiet = agent.published == [Lane::Normal; 2] && agent.overrides.is_empty();
                    if idle && quiet {
                        self.agents[a] = None;
                        self.end_panic_if_clear();
                        fired.hit("ttl_dropped");
                    } else {
                        let next = if idle { at + TTL } else { agent.last_seen + TTL };
                        if idle {
                            fired.hit("ttl_kept_not_quiet");
                        }
                        agent.ttl_at = Some(next);
                        self.timers.insert((next, MTimer::Ttl(a)));
                    }
                }
            }
        }
    }

    fn on_fresh_check(&mut self, a: usize, at: i64, fired: &mut Fired) {
        let Some(agent) = self.agents[a].as_mut() else { return };
        let Some(c) = agent.clauses[DEGRADE].as_mut() else { return };
        c.check_at = None;
        if c.fresh(at) {
            let next = c.deadline().max(at + 1);
            c.check_at = Some(next);
            self.timers.insert((next, MTimer::Fresh(a)));
            return;
        }
        if c.stale {
            return;
        }
        c.stale = true;
        fired.hit("evidence_stale");
        self.settle_lanes(a, Extra::default(), fired);
    }

    fn on_event(&mut self, a: usize, now: i64, flag: Flag, high_risk: bool, version: u32, fired: &mut Fired) {
        let agent = self.agents[a].get_or_insert_with(|| MAgent::new(now, version, true));
        if !agent.in_workflow {
            agent.in_workflow = true;
        }
        agent.last_seen = agent.last_seen.max(now);
        let mut extra = Extra::default();
        if agent.version != version {
            agent.version = version;
            if let Some(d) = agent.clauses[DRIFT].as_mut() {
                d.clean = 0;
                agent.model_change = Some(now);
                fired.hit("model_changed");
            }
        }
        if agent.ttl_at.is_none() {
            let at = agent.last_seen + TTL;
            agent.ttl_at = Some(at);
            self.timers.insert((at, MTimer::Ttl(a)));
        }
        let agent = self.agents[a].as_mut().unwrap();
        for (ci, spec) in CLAUSES.iter().enumerate() {
            if ci == DEGRADE && !high_risk {
                continue;
            }
            let attested = agent.attested(spec.id);
            let c = agent.clauses[ci].get_or_insert_with(|| MClause { created: now, ..MClause::default() });
            if ci == DEGRADE {
                c.recent.push(now);
                if c.stale && c.fresh(now) {
                    c.stale = false;
                    fired.hit("evidence_fresh");
                }
                if c.check_at.is_none() {
                    let at = c.deadline();
                    c.check_at = Some(at);
                    self.timers.insert((at, MTimer::Fresh(a)));
                }
            }
            let breach = match ci {
                WATCH => flag == Flag::Watch,
                DEGRADE => flag == Flag::Degrade,
                BLOCK => flag == Flag::Block,
                SETTLE => flag == Flag::Settle,
                _ => false,
            };
            if breach {
                c.clean = 0;
                let Some(lane) = spec.lane else {
                    extra.settle = true;
                    fired.hit("settle");
                    continue;
                };
                if c.demand() < lane {
                    c.demand = Some(lane);
                    c.escalations += 1;
                    fired.hit(match lane {
                        Lane::Watch => "escalate_watch",
                        Lane::Degrade => "escalate_degrade",
                        _ => "escalate_block",
                    });
                    if c.escalations >= 2 {
                        fired.hit("dwell_multiplied");
                    }
                }
                c.needs_attestation |= spec.critical;
                c.dwell_until = c.dwell_until.max(now + dwell(spec, c.escalations));
                continue;
            }
            c.clean += 1;
            if ci == DRIFT {
                if let Some(since) = agent.model_change {
                    if c.clean >= spec.clean_events && now >= since + spec.min_dwell {
                        agent.model_change = None;
                        fired.hit("model_reverified");
                    }
                }
                continue;
            }
            if c.demand() == Lane::Normal {
                continue;
            }
            if c.clean < spec.clean_events {
                continue;
            }
            if now < c.dwell_until {
                fired.hit("step_down_held_by_dwell");
                continue;
            }
            if c.demand() == Lane::Block && c.needs_attestation && !attested {
                fired.hit("step_down_held_for_attestation");
                continue;
            }
            if c.demand() == Lane::Block {
                fired.hit("step_down_from_block_attested");
            }
            c.demand = Some(c.demand().step_down());
            c.clean = 0;
            c.dwell_until = now + dwell(spec, c.escalations);
            if c.demand() == Lane::Normal {
                c.needs_attestation = false;
                fired.hit("recovered_to_normal");
            }
            fired.hit("step_down");
        }
        self.settle_lanes(a, extra, fired);
    }

    /// An override; returns whether it was accepted.
    fn on_override(&mut self, a: usize, now: i64, req: &OverrideRequest, fired: &mut Fired) -> bool {
        let seq = self.agents[a].as_ref().map_or(0, |x| x.seq);
        let valid = match req.expires_at {
            Some(exp) => {
                exp > now
                    && exp - now <= MAX_OVERRIDE_TTL
                    && req.expected_seq == Some(seq)
                    && (req.lane.is_some()
                        || !matches!(req.kind, OverrideKind::Tighten | OverrideKind::Loosen))
                    && (req.clause_id.is_some() || req.kind != OverrideKind::Attest)
            }
            None => false,
        };
        if !valid {
            fired.hit("override_rejected");
            return false;
        }
        fired.hit(match req.kind {
            OverrideKind::EmergencyKill => "override_kill",
            OverrideKind::Tighten => "override_tighten",
            OverrideKind::Loosen => "override_loosen",
            OverrideKind::Attest => "override_attest",
        });
        if self.agents[a].is_none() {
            // An agent first known by an override is not in the workflow yet, and its state
            // expires like any other.
            let mut x = MAgent::new(now, 0, false);
            x.ttl_at = Some(now + TTL);
            self.timers.insert((now + TTL, MTimer::Ttl(a)));
            self.agents[a] = Some(x);
            fired.hit("override_for_unknown_agent");
        }
        let agent = self.agents[a].as_mut().unwrap();
        let exp = req.expires_at.unwrap();
        agent.overrides.push(MOverride {
            id: req.override_id.clone(),
            kind: req.kind,
            scope: req.scope,
            lane: req.lane.unwrap_or(Lane::Normal),
            clause: req.clause_id.clone().unwrap_or_default(),
        });
        self.timers.insert((exp, MTimer::Expiry(a, req.override_id.clone())));
        self.settle_lanes(a, Extra { force: req.kind != OverrideKind::Attest, settle: false }, fired);
        true
    }

    /// Recomputes and publishes an agent's lanes.
    fn settle_lanes(&mut self, a: usize, extra: Extra, fired: &mut Fired) {
        let agent = self.agents[a].as_ref().unwrap();
        // Computed: the maximum over clauses, and the model-change lane.
        let mut all = agent.clauses.iter().flatten().map(MClause::demand).max().unwrap_or(Lane::Normal);
        if agent.model_change.is_some() {
            all = all.max(Lane::Review);
        }
        let stale = agent.clauses[DEGRADE].as_ref().is_some_and(|c| c.stale);
        let mut high = if stale { all.max(Lane::Review) } else { all };
        // Overrides: kill > tighten > loosen > computed.
        let apply = |lane: Lane, scope: Scope| {
            let here: Vec<&MOverride> = agent
                .overrides
                .iter()
                .filter(|o| o.scope == scope || o.kind == OverrideKind::EmergencyKill)
                .collect();
            if here.iter().any(|o| o.kind == OverrideKind::EmergencyKill) {
                return Lane::Block;
            }
            let mut l = lane;
            if let Some(m) = here.iter().filter(|o| o.kind == OverrideKind::Loosen).map(|o| o.lane).min() {
                l = l.min(m);
            }
            if let Some(m) = here.iter().filter(|o| o.kind == OverrideKind::Tighten).map(|o| o.lane).max() {
                l = l.max(m);
            }
            l
        };
        // The blast-radius cap holds back automatic blocks only: not one an operator ordered,
        // nor one a loosening override turns into a lesser lane.
        let automatic =
            apply(Lane::Block, Scope::All) == Lane::Block && apply(Lane::Review, Scope::All) != Lane::Block;
        let mut capped = false;
        if all == Lane::Block && agent.published[0] != Lane::Block && automatic {
            let members: Vec<&MAgent> = self.agents.iter().flatten().filter(|x| x.in_workflow).collect();
            let blocked = members.iter().filter(|x| x.published[0] == Lane::Block).count();
            if members.len() >= 3 && (blocked + 1) as f64 > 0.3 * members.len() as f64 {
                all = Lane::Review;
                high = high.min(Lane::Review);
                capped = true;
                fired.hit("blast_radius_capped");
                if !self.panicked {
                    self.panicked = true;
                    self.panics += 1;
                }
            }
        }
        let eff_all = apply(all, Scope::All);
        let eff_high = apply(high, Scope::HighRisk).max(eff_all);
        if eff_all < all {
            fired.hit("loosen_below_computed");
        }
        let agent = self.agents[a].as_mut().unwrap();
        // Events: a settle is its own event; a lane change, or a lane override, publishes.
        if extra.settle {
            agent.seq += 1;
        }
        let publish_all = eff_all != agent.published[0] || extra.force;
        if publish_all {
            agent.seq += 1;
        }
        if eff_high != agent.published[1] {
            agent.seq += 1;
            if eff_high > eff_all {
                fired.hit("high_risk_stricter");
            }
        }
        agent.published = [eff_all, eff_high];
        agent.capped = capped;
        self.end_panic_if_clear();
    }

    /// A panic episode lasts while some agent of the workflow is blocked or capped.
    fn end_panic_if_clear(&mut self) {
        if self
            .agents
            .iter()
            .flatten()
            .filter(|x| x.in_workflow)
            .all(|x| x.published[0] != Lane::Block && !x.capped)
        {
            self.panicked = false;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run.

fn telemetry(
    id: String,
    agent: String,
    workflow: &str,
    version: u32,
    t: i64,
    flag: Flag,
    high_risk: bool,
) -> Telemetry {
    Telemetry {
        event_id: id.into(),
        agent_id: agent.into(),
        workflow: workflow.into(),
        model: ModelInfo { provider: "p".into(), name: "m".into(), version: format!("v{version}").into() },
        occurred_at: t,
        risk: if high_risk { Risk::High } else { Risk::Low },
        outcome: Outcome::Ok,
        latency_ms: Some(10.0),
        citations: None,
        pii_detected: Some(false),
        tool_calls: vec![],
        attributes: [("flag".to_string(), Attr::Str(flag.as_str().into()))].into_iter().collect(),
    }
}

/// Runs the steps on the engine and the model side by side; `Err` names the first step
/// where they disagree.
fn check(steps: &[Step], fired: &mut Fired) -> Result<(), String> {
    let pact = parse_pact(PACT, "model.yaml").map_err(|e| e.to_string())?;
    let mut engine = Engine::new(config(), vec![pact]);
    let mut model = Model::default();
    let mut t = 1_700_000_000 * S;
    let mut versions = [1u32; AGENTS];
    for (n, s) in steps.iter().enumerate() {
        let dt = match s {
            Step::Event { dt_s, .. } | Step::Tick { dt_s } | Step::Override { dt_s, .. } => *dt_s as i64 * S,
        };
        t += dt;
        model.fire_timers(t, fired);
        match s {
            Step::Event { agent, flag, high_risk, new_model, .. } => {
                let a = *agent as usize;
                if *new_model {
                    versions[a] += 1;
                }
                model.on_event(a, t, *flag, *high_risk, versions[a], fired);
                engine.push(Input::from(telemetry(
                    format!("e{n}"),
                    format!("a{a}"),
                    "w",
                    versions[a],
                    t,
                    *flag,
                    *high_risk,
                )));
            }
            Step::Tick { .. } => {
                engine.push(Input::from(telemetry(
                    format!("e{n}"),
                    "clock".into(),
                    "other",
                    1,
                    t,
                    Flag::None,
                    false,
                )));
            }
            Step::Override { agent, kind, scope, lane, ttl_s, fault, .. } => {
                let a = *agent as usize;
                let seq = model.agents[a].as_ref().map_or(0, |x| x.seq);
                let mut req = OverrideRequest {
                    override_id: format!("o{n}"),
                    agent_id: format!("a{a}"),
                    scope: *scope,
                    kind: *kind,
                    lane: Some(*lane),
                    clause_id: Some("block_c".into()),
                    principal: "oncall".into(),
                    reason: "test".into(),
                    ticket: "T-1".into(),
                    issued_at: t,
                    expires_at: Some(t + *ttl_s as i64 * S),
                    expected_seq: Some(seq),
                };
                match fault {
                    None => {}
                    Some(Fault::StaleSeq) => req.expected_seq = Some(seq + 1),
                    Some(Fault::NoExpiry) => req.expires_at = None,
                    Some(Fault::ExpiredAlready) => req.expires_at = Some(t),
                    Some(Fault::TtlTooLong) => req.expires_at = Some(t + MAX_OVERRIDE_TTL + S),
                    Some(Fault::NoLane) => {
                        req.lane = None;
                        if *kind == OverrideKind::Attest {
                            req.clause_id = None;
                        }
                    }
                }
                model.on_override(a, t, &req, fired);
                engine.push(Input::from(req));
            }
        }
        let panics = engine.drain().iter().filter(|o| matches!(o, Output::Panic(_))).count() as u64;
        for a in 0..AGENTS {
            let got = engine.agent(&format!("a{a}")).map(|x| (<[Lane; 2]>::from(x.published), x.seq));
            let want = model.agents[a].as_ref().map(|x| (x.published, x.seq));
            if got != want {
                return Err(format!("after step {n} ({s:?}) at t+{} s, agent a{a}: engine (lanes [all, high_risk], seq) = {got:?}, model = {want:?}", (t - 1_700_000_000 * S) / S));
            }
        }
        if panics != std::mem::take(&mut model.panics) {
            return Err(format!("after step {n} ({s:?}): engine emitted {panics} panic event(s), the model expected otherwise"));
        }
    }
    Ok(())
}

#[test]
fn engine_follows_the_reference_model_and_every_rule_fires() {
    let config =
        Config { cases: cases(1000), max_shrink_iters: 2000, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let fired = RefCell::new(Fired::default());
    let result = runner.run(&prop::collection::vec(step(), 20..400), |steps| {
        let mut local = Fired::default();
        let r = check(&steps, &mut local);
        for (k, v) in local.0 {
            *fired.borrow_mut().0.entry(k).or_default() += v;
        }
        r.map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let fired = fired.into_inner();
    eprintln!("rule firings over the run: {:#?}", fired.0);
    let rules = [
        "escalate_watch",
        "escalate_degrade",
        "escalate_block",
        "dwell_multiplied",
        "step_down",
        "step_down_held_by_dwell",
        "step_down_held_for_attestation",
        "step_down_from_block_attested",
        "recovered_to_normal",
        "settle",
        "evidence_stale",
        "evidence_fresh",
        "high_risk_stricter",
        "model_changed",
        "model_reverified",
        "override_kill",
        "override_tighten",
        "override_loosen",
        "override_attest",
        "override_rejected",
        "override_expired",
        "override_expiry_changed_lane",
        "loosen_below_computed",
        "blast_radius_capped",
        "ttl_dropped",
        "override_for_unknown_agent",
        "ttl_kept_not_quiet",
    ];
    let never: Vec<_> = rules.iter().filter(|r| !fired.0.contains_key(*r)).collect();
    assert!(never.is_empty(), "rules the generators never reached: {never:?}");
}

/// `PROPTEST_CASES` overrides the number of cases (the mutation runs use fewer, since they
/// run unoptimised builds).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
