//! Property tests of the lane invariants over random telemetry and override sequences:
//! - `seq` strictly increases per agent;
//! - every enforcement event has a history record;
//! - no step down without re-verification (and one lane at a time), and no scope released
//!   before enough clean events from it;
//! - every accepted override expires;
//! - the effective lane is the maximum over the clauses (with overrides applied on top), checked
//!   after every step for both scopes while overrides are live, with the blast-radius cap on;
//! - no step down before the clause's dwell.
//!
//! The model-based test (`model.rs`) checks the exact lanes; this one runs the statistical
//! detectors, and counts that step-downs and live overrides actually happen.

use driftgate_core::engine::{Engine, EngineConfig, Input, Output};
use driftgate_core::model::history::RecordKind;
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::overrides::{self, OverrideKind, OverrideRequest};
use driftgate_core::model::telemetry::{Citations, Model, Outcome, Risk, Telemetry};
use driftgate_core::pact::parse_pact;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::cell::RefCell;
use std::collections::BTreeMap;

const PACT: &str = r#"
pact: prop
version: 1
applies_to: { agents: ["*"] }
scope:
  on_new_workflow: review
  on_new_tool: watch
  warm_up: 15
  reverify: { clean_events: 4 }
clauses:
  - id: refusals
    metric: { kind: bernoulli, value: outcome == "refused" }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-2, reference_min: 20, reference_max: 40 }
    severity: high
    consequence: degrade
    high_risk: true
    freshness: { max_age: 10m, min_events: 2 }
    recovery: { clean_events: 10, min_dwell: 1m }
  - id: pii
    metric: { kind: bernoulli, value: pii_detected }
    test: { kind: limit, zero_tolerance: true }
    severity: critical
    consequence: block
    recovery: { clean_events: 5, min_dwell: 1m }
  - id: latency
    metric: { kind: real, value: latency_ms }
    test: { kind: limit, alpha: 0.05, quantile: { q: 0.5, max: 100 } }
    severity: medium
    consequence: watch
    recovery: { min_dwell: 1m }
"#;

#[derive(Debug, Clone)]
enum Step {
    Event {
        agent: u8,
        dt: u32,
        refused: bool,
        pii: bool,
        latency: f64,
        new_model: bool,
        tool: u8,
        workflow: u8,
    },
    Override {
        agent: u8,
        dt: u32,
        kind: u8,
        lane: u8,
        ttl_s: u32,
        use_seq: bool,
        with_expiry: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => ((0u8..AGENTS, 1u32..90, any::<bool>(), prop::bool::weighted(0.02), 1.0f64..250.0, prop::bool::weighted(0.01)),
               (prop_oneof![6 => Just(0u8), 1 => 1u8..8], prop_oneof![12 => Just(0u8), 1 => 1u8..4]))
            .prop_map(|((agent, dt, refused, pii, latency, new_model), (tool, workflow))| Step::Event { agent, dt, refused, pii, latency, new_model, tool, workflow }),
        1 => (0u8..AGENTS, 1u32..90, 0u8..4, 0u8..5, 60u32..3600, prop::bool::weighted(0.8), prop::bool::weighted(0.9))
            .prop_map(|(agent, dt, kind, lane, ttl_s, use_seq, with_expiry)| Step::Override { agent, dt, kind, lane, ttl_s, use_seq, with_expiry }),
    ]
}

const S: i64 = 1_000_000;
const AGENTS: u8 = 6;

/// How often the interesting situations occurred over the run.
#[derive(Default)]
struct Seen {
    checks_with_live_override: u64,
    step_downs: u64,
    capped: u64,
    scope_releases: u64,
}

/// The effective lanes `[all, high_risk]` the rules give for an agent's state.
fn expected_lanes(engine: &Engine, agent: &driftgate_core::engine::state::AgentState) -> [Lane; 2] {
    let mut all = agent.clauses.values().map(|s| s.demand).max().unwrap_or(Lane::Normal);
    if let Some(mc) = &agent.model_change {
        all = all.max(mc.lane);
    }
    let pending = agent.scope.as_ref().map(|s| s.pending.clone()).unwrap_or_default();
    if let Some(l) = pending.iter().map(|c| c.lane).max() {
        all = all.max(l);
    }
    let stale_high_risk = agent
        .clauses
        .iter()
        .any(|(k, s)| s.stale && engine.pacts()[k.0 as usize].doc.clauses[k.1 as usize].high_risk);
    let mut high = if stale_high_risk { all.max(Lane::Review) } else { all };
    if agent.capped {
        all = Lane::Review;
        high = high.min(Lane::Review);
    }
    let eff_all = overrides::apply(all, Scope::All, &agent.overrides);
    [eff_all, overrides::apply(high, Scope::HighRisk, &agent.overrides).max(eff_all)]
}

fn run(steps: &[Step], seen: &mut Seen) -> Result<(Engine, Vec<Output>), TestCaseError> {
    let pact = parse_pact(PACT, "prop.yaml").unwrap();
    let cfg = EngineConfig { blast_radius_min_agents: 4, max_blocked_share: 0.2, ..EngineConfig::default() };
    let mut engine = Engine::new(cfg, vec![pact]);
    let mut out = Vec::new();
    let mut t = 1_700_000_000 * S;
    let mut versions = [1u32; AGENTS as usize];
    let mut n = 0u64;
    for s in steps {
        match s {
            Step::Event { agent, dt, refused, pii, latency, new_model, tool, workflow } => {
                t += *dt as i64 * S;
                n += 1;
                if *new_model {
                    versions[*agent as usize] += 1;
                }
                engine.push(Input::from(Telemetry {
                    event_id: format!("e{n}").into(),
                    agent_id: format!("a{agent}").into(),
                    workflow: format!("w{workflow}").into(),
                    model: Model {
                        provider: "p".into(),
                        name: "m".into(),
                        version: format!("v{}", versions[*agent as usize]).into(),
                    },
                    occurred_at: t,
                    risk: if n.is_multiple_of(3) { Risk::High } else { Risk::Low },
                    outcome: if *refused { Outcome::Refused } else { Outcome::Ok },
                    latency_ms: Some(*latency),
                    citations: Some(Citations { total: 1, verified: 1 }),
                    pii_detected: Some(*pii),
                    tool_calls: if *tool == 0 { vec![] } else { vec![format!("t{tool}").into()] },
                    attributes: Default::default(),
                }));
            }
            Step::Override { agent, dt, kind, lane, ttl_s, use_seq, with_expiry } => {
                t += *dt as i64 * S;
                n += 1;
                let id = format!("a{agent}");
                let seq = engine.agent(&id).map_or(0, |a| a.seq);
                let kind = [
                    OverrideKind::EmergencyKill,
                    OverrideKind::Tighten,
                    OverrideKind::Loosen,
                    OverrideKind::Attest,
                ][*kind as usize];
                engine.push(Input::from(OverrideRequest {
                    override_id: format!("o{n}"),
                    agent_id: id,
                    scope: if n.is_multiple_of(2) { Scope::All } else { Scope::HighRisk },
                    kind,
                    lane: Some(Lane::ALL[*lane as usize]),
                    clause_id: Some("pii".into()),
                    principal: "p".into(),
                    reason: "r".into(),
                    ticket: "t".into(),
                    issued_at: t,
                    expires_at: with_expiry.then_some(t + *ttl_s as i64 * S),
                    expected_seq: Some(if *use_seq { seq } else { seq + 7 }),
                }));
            }
        }
        out.extend(engine.drain());
        // After every step, while overrides are live: published = rules applied to the state.
        for a in 0..AGENTS {
            let Some(agent) = engine.agent(&format!("a{a}")) else { continue };
            seen.checks_with_live_override += !agent.overrides.is_empty() as u64;
            seen.capped += agent.capped as u64;
            prop_assert_eq!(
                <[Lane; 2]>::from(agent.published),
                expected_lanes(&engine, agent),
                "agent a{} after {:?}",
                a,
                s
            );
        }
    }
    // A last event far in the future: every timer (override expiry, freshness) comes due.
    engine.push(Input::from(Telemetry {
        event_id: "last".into(),
        agent_id: "a0".into(),
        workflow: "w0".into(),
        model: Model { provider: "p".into(), name: "m".into(), version: format!("v{}", versions[0]).into() },
        occurred_at: t + 30 * 24 * 3600 * S,
        risk: Risk::Low,
        outcome: Outcome::Ok,
        latency_ms: Some(10.0),
        citations: None,
        pii_detected: Some(false),
        tool_calls: vec![],
        attributes: Default::default(),
    }));
    engine.flush();
    out.extend(engine.drain());
    Ok((engine, out))
}

/// In-scope events of `agent` for a `kind` (`tool`/`workflow`) and `value`, in `(from, to]`
/// (event times, µs from the run's start).
fn in_scope_events(steps: &[Step], agent: &str, kind: &str, value: &str, from: i64, to: i64) -> usize {
    let mut t = 1_700_000_000 * S;
    let mut n = 0;
    for s in steps {
        let (a, dt) = match s {
            Step::Event { agent, dt, .. } | Step::Override { agent, dt, .. } => (*agent, *dt),
        };
        t += dt as i64 * S;
        let Step::Event { tool, workflow, .. } = s else { continue };
        let hit = match kind {
            "tool" => *tool != 0 && format!("t{tool}") == value,
            _ => format!("w{workflow}") == value,
        };
        n += (format!("a{a}") == agent && hit && t >= from && t <= to) as usize;
    }
    n
}

fn check(steps: &[Step], seen: &mut Seen) -> Result<(), TestCaseError> {
    let (engine, out) = run(steps, seen)?;
    let events: Vec<_> =
        out.iter().filter_map(|o| if let Output::Enforcement(e) = o { Some(e) } else { None }).collect();
    let history: Vec<_> =
        out.iter().filter_map(|o| if let Output::History(r) = o { Some(r) } else { None }).collect();

    // seq strictly increases per agent.
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &events {
        let prev = last.insert(&e.agent_id, e.seq);
        prop_assert!(prev.is_none_or(|p| e.seq > p), "seq did not increase for {}", e.agent_id);
    }
    // Every enforcement event has a history record.
    for e in &events {
        prop_assert!(
            history
                .iter()
                .any(|r| r.kind == RecordKind::Decision && r.detail["event_id"] == e.event_id.as_str()),
            "no history for {}",
            e.event_id
        );
    }
    // No step down without re-verification, one lane at a time, never before the dwell.
    let mut dwell: BTreeMap<(&str, Option<&str>), i64> = BTreeMap::new();
    for e in &events {
        let key = (e.agent_id.as_str(), e.clause_id.as_deref());
        if e.lane_to < e.lane_from {
            let code = e.reason.code.as_str();
            prop_assert!(
                [
                    "reverified",
                    "model_reverified",
                    "evidence_fresh",
                    "override_applied",
                    "override_expired",
                    "scope_reverified",
                    "scope_released"
                ]
                .contains(&code),
                "step down {:?} -> {:?} with reason {code}: {}",
                e.lane_from,
                e.lane_to,
                serde_json::to_string(e).unwrap()
            );
            // The high-risk scope also lifts the stale-evidence review when evidence is fresh
            // again, so the one-lane rule is about the agent-wide scope.
            if code == "reverified" && e.scope == Scope::All {
                seen.step_downs += 1;
                prop_assert!(
                    e.lane_to >= e.lane_from.step_down(),
                    "more than one lane at once: {}",
                    serde_json::to_string(e).unwrap()
                );
                let ev = e.evidence.as_ref().unwrap();
                if e.clause_id.as_deref() != Some("latency") {
                    prop_assert!(
                        ev.clean_events >= ev.required_clean_events,
                        "stepped down after {} of {} clean events",
                        ev.clean_events,
                        ev.required_clean_events
                    );
                }
                let until = dwell.get(&key).copied().unwrap_or(i64::MIN);
                prop_assert!(
                    e.effective_at >= until,
                    "stepped down at {} before the dwell ending {until}: {}",
                    e.effective_at,
                    serde_json::to_string(e).unwrap()
                );
            }
        }
        if let Some(until) = e.min_dwell_until {
            dwell.insert(key, until);
        }
    }
    // A scope is released only after `reverify.clean_events` (4) events from it since its
    // trigger: the triggering event and the next ones in its scope.
    let mut opened: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut released: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for e in &events {
        let code = e.reason.code.as_str();
        let named: Vec<&str> = e.reason.text.split('`').collect();
        if code == "scope_new_tool" || code == "scope_new_workflow" {
            let kind = if code == "scope_new_tool" { "tool" } else { "workflow" };
            opened.entry((e.agent_id.to_string(), kind.into(), named[1].into())).or_insert(e.effective_at);
        }
        if code == "scope_reverified" {
            seen.scope_releases += 1;
            // "scope re-verified: tool `t3` now in ...; workflow `w1` now in ..."
            for pair in named.chunks(2) {
                let [what, value] = pair else { continue };
                let kind = match () {
                    _ if what.ends_with("tool ") => "tool",
                    _ if what.ends_with("workflow ") => "workflow",
                    _ => continue,
                };
                let key = (e.agent_id.to_string(), kind.to_string(), value.to_string());
                // One release may be announced for both scopes, by events of one step.
                if released.get(&key) == Some(&e.effective_at) {
                    continue;
                }
                let since = opened.remove(&key);
                prop_assert!(since.is_some(), "released {key:?}, never opened: {}", e.reason.text);
                released.insert(key.clone(), e.effective_at);
                let n = in_scope_events(steps, &e.agent_id, kind, value, since.unwrap_or(0), e.effective_at);
                prop_assert!(n >= 4, "released {key:?} after {n} in-scope events: {}", e.reason.text);
            }
        }
    }
    // Every accepted override expires.
    for r in history.iter().filter(|r| r.kind == RecordKind::OverrideAccepted) {
        let id = r.detail["override"]["override_id"].as_str().unwrap();
        prop_assert!(
            history.iter().any(|x| x.kind == RecordKind::OverrideExpired && x.detail["override_id"] == id),
            "override {id} never expired"
        );
    }
    // Overrides without expiry were rejected, for that reason.
    for r in history.iter().filter(|r| r.kind == RecordKind::OverrideAccepted) {
        prop_assert!(r.detail["override"]["expires_at"].is_i64(), "accepted without expiry: {}", r.detail);
    }
    for r in history
        .iter()
        .filter(|r| r.kind == RecordKind::OverrideRejected && r.detail["override"]["expires_at"].is_null())
    {
        prop_assert_eq!(
            r.detail["reason"].as_str(),
            Some("`expires_at` is mandatory: every override expires")
        );
    }
    // After the last timers, the published lanes follow from the state.
    for a in 0..AGENTS {
        let Some(agent) = engine.agent(&format!("a{a}")) else { continue };
        prop_assert_eq!(
            <[Lane; 2]>::from(agent.published),
            expected_lanes(&engine, agent),
            "agent a{} at the end",
            a
        );
    }
    Ok(())
}

#[test]
fn lane_invariants_hold() {
    let config =
        Config { cases: cases(512), max_shrink_iters: 300, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[24u8; 32]));
    let seen = RefCell::new(Seen::default());
    let result =
        runner.run(&prop::collection::vec(step(), 50..600), |steps| check(&steps, &mut seen.borrow_mut()));
    if let Err(e) = result {
        panic!("{e}");
    }
    let seen = seen.into_inner();
    eprintln!(
        "checks with a live override: {}, step-downs: {}, capped agent checks: {}, scope releases: {}",
        seen.checks_with_live_override, seen.step_downs, seen.capped, seen.scope_releases
    );
    // A generator that never reaches these would make the checks above vacuous.
    assert!(
        seen.checks_with_live_override > 1000,
        "overrides were rarely live: {}",
        seen.checks_with_live_override
    );
    assert!(seen.step_downs > 100, "the run saw only {} step-downs", seen.step_downs);
    assert!(seen.capped > 0, "the blast-radius cap never held an agent");
    assert!(seen.scope_releases > 100, "the run saw only {} scope releases", seen.scope_releases);
}

/// `PROPTEST_CASES` overrides the number of cases (the mutation runs use fewer, since they
/// run unoptimised builds).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
