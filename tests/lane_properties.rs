//! Property tests of the lane invariants over random telemetry and override sequences:
//! - `seq` strictly increases per agent;
//! - every enforcement event has a history record;
//! - no step down without re-verification (and one lane at a time);
//! - every accepted override expires;
//! - the effective lane is the maximum over the clauses (with overrides applied on top).

use driftgate::engine::{Engine, EngineConfig, Input, Output};
use driftgate::history::RecordKind;
use driftgate::lane::{Lane, Scope};
use driftgate::overrides::{self, OverrideKind, OverrideRequest};
use driftgate::pact::parse_pact;
use driftgate::telemetry::{Citations, Model, Outcome, Risk, Telemetry};
use proptest::prelude::*;
use std::collections::BTreeMap;

const PACT: &str = r#"
pact: prop
version: 1
applies_to: { agents: ["*"] }
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
    Event { agent: u8, dt: u32, refused: bool, pii: bool, latency: f64, new_model: bool },
    Override { agent: u8, dt: u32, kind: u8, lane: u8, ttl_s: u32, use_seq: bool, with_expiry: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => (0u8..3, 1u32..90, any::<bool>(), prop::bool::weighted(0.02), 1.0f64..250.0, prop::bool::weighted(0.01))
            .prop_map(|(agent, dt, refused, pii, latency, new_model)| Step::Event { agent, dt, refused, pii, latency, new_model }),
        1 => (0u8..3, 1u32..90, 0u8..4, 0u8..5, 60u32..3600, prop::bool::weighted(0.8), prop::bool::weighted(0.9))
            .prop_map(|(agent, dt, kind, lane, ttl_s, use_seq, with_expiry)| Step::Override { agent, dt, kind, lane, ttl_s, use_seq, with_expiry }),
    ]
}

const S: i64 = 1_000_000;

fn run(steps: &[Step]) -> (Engine, Vec<Output>) {
    let pact = parse_pact(PACT, "prop.yaml").unwrap();
    let cfg = EngineConfig { blast_radius_min_agents: 1000, ..EngineConfig::default() };
    let mut engine = Engine::new(cfg, vec![pact]);
    let mut out = Vec::new();
    let mut t = 1_700_000_000 * S;
    let mut versions = [1u32; 3];
    let mut n = 0u64;
    for s in steps {
        match s {
            Step::Event { agent, dt, refused, pii, latency, new_model } => {
                t += *dt as i64 * S;
                n += 1;
                if *new_model {
                    versions[*agent as usize] += 1;
                }
                engine.push(Input::Telemetry(Telemetry {
                    event_id: format!("e{n}"),
                    agent_id: format!("a{agent}"),
                    workflow: "w".into(),
                    model: Model { provider: "p".into(), name: "m".into(), version: format!("v{}", versions[*agent as usize]) },
                    occurred_at: t,
                    risk: if n % 3 == 0 { Risk::High } else { Risk::Low },
                    outcome: if *refused { Outcome::Refused } else { Outcome::Ok },
                    latency_ms: Some(*latency),
                    citations: Some(Citations { total: 1, verified: 1 }),
                    pii_detected: Some(*pii),
                    tool_calls: vec![],
                    attributes: BTreeMap::new(),
                }));
            }
            Step::Override { agent, dt, kind, lane, ttl_s, use_seq, with_expiry } => {
                t += *dt as i64 * S;
                n += 1;
                let id = format!("a{agent}");
                let seq = engine.agent(&id).map_or(0, |a| a.seq);
                let kind = [OverrideKind::EmergencyKill, OverrideKind::Tighten, OverrideKind::Loosen, OverrideKind::Attest][*kind as usize];
                engine.push(Input::Override(OverrideRequest {
                    override_id: format!("o{n}"),
                    agent_id: id,
                    scope: if n % 2 == 0 { Scope::All } else { Scope::HighRisk },
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
    }
    // A last event far in the future: every timer (override expiry, freshness) comes due.
    engine.push(Input::Telemetry(Telemetry {
        event_id: "last".into(),
        agent_id: "a0".into(),
        workflow: "w".into(),
        model: Model { provider: "p".into(), name: "m".into(), version: format!("v{}", versions[0]) },
        occurred_at: t + 30 * 24 * 3600 * S,
        risk: Risk::Low,
        outcome: Outcome::Ok,
        latency_ms: Some(10.0),
        citations: None,
        pii_detected: Some(false),
        tool_calls: vec![],
        attributes: BTreeMap::new(),
    }));
    engine.flush();
    out.extend(engine.drain());
    (engine, out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, max_shrink_iters: 300, rng_seed: proptest::test_runner::RngSeed::Fixed(20261124), ..ProptestConfig::default() })]

    #[test]
    fn lane_invariants_hold(steps in prop::collection::vec(step(), 50..600)) {
        let (engine, out) = run(&steps);
        let events: Vec<_> = out.iter().filter_map(|o| if let Output::Enforcement(e) = o { Some(e) } else { None }).collect();
        let history: Vec<_> = out.iter().filter_map(|o| if let Output::History(r) = o { Some(r) } else { None }).collect();

        // seq strictly increases per agent.
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &events {
            let prev = last.insert(&e.agent_id, e.seq);
            prop_assert!(prev.is_none_or(|p| e.seq > p), "seq did not increase for {}", e.agent_id);
        }
        // Every enforcement event has a history record.
        for e in &events {
            prop_assert!(history.iter().any(|r| r.kind == RecordKind::Decision && r.detail["event_id"] == e.event_id.as_str()), "no history for {}", e.event_id);
        }
        // No step down without re-verification, one lane at a time.
        for e in events.iter().filter(|e| e.lane_to < e.lane_from) {
            let code = e.reason.code.as_str();
            prop_assert!(
                ["reverified", "model_reverified", "evidence_fresh", "override_applied", "override_expired"].contains(&code),
                "step down {:?} -> {:?} with reason {code}: {}", e.lane_from, e.lane_to, serde_json::to_string(e).unwrap()
            );
            // The high-risk scope also lifts the stale-evidence review when evidence is fresh
            // again, so the one-lane rule is about the agent-wide scope.
            if code == "reverified" && e.scope == Scope::All {
                prop_assert!(e.lane_to >= e.lane_from.step_down(), "more than one lane at once: {}", serde_json::to_string(e).unwrap());
                let ev = e.evidence.as_ref().unwrap();
                if e.clause_id.as_deref() != Some("latency") {
                    prop_assert!(ev.clean_events >= ev.required_clean_events, "stepped down after {} of {} clean events", ev.clean_events, ev.required_clean_events);
                }
            }
        }
        // Every accepted override expires.
        for r in history.iter().filter(|r| r.kind == RecordKind::OverrideAccepted) {
            let id = r.detail["override"]["override_id"].as_str().unwrap();
            prop_assert!(history.iter().any(|x| x.kind == RecordKind::OverrideExpired && x.detail["override_id"] == id), "override {id} never expired");
        }
        // Overrides without expiry were rejected.
        for r in history.iter().filter(|r| r.kind == RecordKind::OverrideRejected) {
            prop_assert!(r.detail["reason"].as_str().is_some());
        }
        // The effective lane is the max over clauses, with overrides on top.
        for a in 0..3 {
            let Some(agent) = engine.agent(&format!("a{a}")) else { continue };
            let mut computed = agent.clauses.values().map(|s| s.demand).max().unwrap_or(Lane::Normal);
            if let Some(mc) = &agent.model_change {
                computed = computed.max(mc.lane);
            }
            prop_assert_eq!(agent.published[0], overrides::apply(computed, Scope::All, &agent.overrides), "agent a{}", a);
        }
    }
}
