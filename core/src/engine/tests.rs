//! Hand-written scenarios for each lane rule, with the exact events expected: scope, lanes,
//! `seq`, effective time and reason. Every clause is a zero-tolerance limit (one breach is
//! one verified alarm) or a drift clause on a constant metric, so the expectations follow
//! from the rules alone.

use super::*;
use crate::model::telemetry::{Attr, Model, Outcome, Risk};
use crate::pact::duration::Dur;
use crate::pact::parse_pact;

/// Shared with the model-based test (`tests/lanes/model.rs`).
const PACT: &str = include_str!("../../../tests/fixtures/lane-rules.yaml");

const S: i64 = 1_000_000;
const T0: i64 = 1_700_000_000 * S;

/// An engine with the default configuration but no out-of-orderness hold, judging `pact`.
fn engine_with(pact: &str, file: &str) -> Engine {
    let cfg = EngineConfig { max_out_of_orderness: Dur(0), ..EngineConfig::default() };
    Engine::new(cfg, vec![parse_pact(pact, file).expect("valid pact")])
}

fn engine() -> Engine {
    let cfg = EngineConfig {
        max_out_of_orderness: Dur(0),
        allowed_lateness: Dur(0),
        state_ttl: Dur(2 * 3600 * S),
        max_override_ttl: Dur(3600 * S),
        max_blocked_share: 0.3,
        blast_radius_min_agents: 3,
        enforce: true,
        ..EngineConfig::default()
    };
    Engine::new(cfg, vec![parse_pact(PACT, "rules.yaml").expect("valid pact")])
}

fn tel(agent: &str, at_s: i64, flag: &str, high_risk: bool, version: u32) -> Input {
    Input::from(Telemetry {
        event_id: format!("{agent}@{at_s}").into(),
        agent_id: agent.into(),
        workflow: "w".into(),
        model: Model { provider: "p".into(), name: "m".into(), version: format!("v{version}").into() },
        occurred_at: T0 + at_s * S,
        risk: if high_risk { Risk::High } else { Risk::Low },
        outcome: Outcome::Ok,
        latency_ms: Some(1.0),
        citations: None,
        pii_detected: Some(false),
        tool_calls: vec![],
        attributes: [("flag".to_string(), Attr::Str(flag.into()))].into_iter().collect(),
    })
}

fn ov(
    agent: &str,
    at_s: i64,
    kind: OverrideKind,
    scope: Scope,
    lane: Option<Lane>,
    ttl_s: i64,
    seq: u64,
) -> Input {
    Input::from(OverrideRequest {
        override_id: format!("o-{agent}@{at_s}"),
        agent_id: agent.into(),
        scope,
        kind,
        lane,
        clause_id: Some("block_c".into()),
        principal: "oncall".into(),
        reason: "test".into(),
        ticket: "T-1".into(),
        issued_at: T0 + at_s * S,
        expires_at: Some(T0 + (at_s + ttl_s) * S),
        expected_seq: Some(seq),
    })
}

/// An enforcement event as `(agent, scope, from, to, seq, effective second, reason)`.
type Ev = (String, Scope, Lane, Lane, u64, i64, String);

/// The enforcement events among `out`, in order.
fn enforcements(out: &[Output]) -> Vec<&EnforcementEvent> {
    out.iter().filter_map(|o| if let Output::Enforcement(e) = o { Some(e) } else { None }).collect()
}

fn events(out: &[Output]) -> Vec<Ev> {
    enforcements(out)
        .into_iter()
        .map(|e| {
            (
                e.agent_id.clone(),
                e.scope,
                e.lane_from,
                e.lane_to,
                e.seq,
                (e.effective_at - T0) / S,
                e.reason.code.clone(),
            )
        })
        .collect()
}

fn ev(agent: &str, scope: Scope, from: Lane, to: Lane, seq: u64, at_s: i64, code: &str) -> Ev {
    (agent.into(), scope, from, to, seq, at_s, code.into())
}

/// Pushes inputs and returns everything they produced.
fn outputs(e: &mut Engine, inputs: impl IntoIterator<Item = Input>) -> Vec<Output> {
    for i in inputs {
        e.push(i);
    }
    e.drain()
}

/// Pushes inputs and returns the enforcement events they produced.
fn step(e: &mut Engine, inputs: impl IntoIterator<Item = Input>) -> Vec<Ev> {
    events(&outputs(e, inputs))
}

use Lane::{Block, Degrade, Normal, Review, Watch};
use Scope::{All, HighRisk};

#[test]
fn a_breach_escalates_both_scopes_and_the_lane_is_the_maximum_over_clauses() {
    let mut e = engine();
    assert_eq!(step(&mut e, [tel("a0", 0, "none", false, 1)]), vec![]);
    assert_eq!(
        step(&mut e, [tel("a0", 10, "watch", false, 1)]),
        vec![
            ev("a0", All, Normal, Watch, 1, 10, "zero_tolerance_breach"),
            ev("a0", HighRisk, Normal, Watch, 2, 10, "zero_tolerance_breach")
        ]
    );
    assert_eq!(
        step(&mut e, [tel("a0", 20, "degrade", true, 1)]),
        vec![
            ev("a0", All, Watch, Degrade, 3, 20, "zero_tolerance_breach"),
            ev("a0", HighRisk, Watch, Degrade, 4, 20, "zero_tolerance_breach")
        ]
    );
    // watch_c re-verifies (3 clean events, dwell to 130 s), but degrade_c still demands more.
    assert_eq!(step(&mut e, [30, 40, 50, 130].map(|t| tel("a0", t, "none", false, 1))), vec![]);
    let watch_c = e.agent("a0").unwrap().clauses.iter().find(|(k, _)| k.1 == 0).unwrap().1;
    assert_eq!(watch_c.demand, Normal);
    // degrade_c: 2 clean high-risk events after its 1 min dwell; one lane down.
    assert_eq!(
        step(&mut e, [140, 150].map(|t| tel("a0", t, "none", true, 1))),
        vec![
            ev("a0", All, Degrade, Watch, 5, 150, "reverified"),
            ev("a0", HighRisk, Degrade, Watch, 6, 150, "reverified")
        ]
    );
    // The next step waits for a new dwell (150 + 60 s) and 2 new clean events.
    assert_eq!(step(&mut e, [160, 170].map(|t| tel("a0", t, "none", true, 1))), vec![]);
    assert_eq!(
        step(&mut e, [tel("a0", 210, "none", true, 1)]),
        vec![
            ev("a0", All, Watch, Normal, 7, 210, "reverified"),
            ev("a0", HighRisk, Watch, Normal, 8, 210, "reverified")
        ]
    );
}

#[test]
fn the_dwell_multiplies_with_each_escalation_up_to_its_cap() {
    let mut e = engine();
    let dwell_until = |e: &mut Engine, inputs: Vec<Input>| -> Vec<Option<i64>> {
        outputs(e, inputs)
            .iter()
            .filter_map(|o| {
                if let Output::Enforcement(x) = o {
                    Some(x.min_dwell_until.map(|t| (t - T0) / S))
                } else {
                    None
                }
            })
            .collect()
    };
    // First escalation: 1 min.
    assert_eq!(dwell_until(&mut e, vec![tel("a0", 0, "degrade", true, 1)]), vec![Some(60), Some(60)]);
    assert_eq!(step(&mut e, [60, 61].map(|t| tel("a0", t, "none", true, 1))).len(), 2);
    assert_eq!(
        step(&mut e, [121, 122].map(|t| tel("a0", t, "none", true, 1)))
            .iter()
            .map(|x| x.3)
            .collect::<Vec<_>>(),
        vec![Normal, Normal]
    );
    // Second: 1 min × 3.
    assert_eq!(dwell_until(&mut e, vec![tel("a0", 200, "degrade", true, 1)]), vec![Some(380), Some(380)]);
    assert_eq!(
        step(&mut e, [300, 310].map(|t| tel("a0", t, "none", true, 1))),
        vec![],
        "held by the 3 min dwell"
    );
    // Each step down waits for the current dwell again (3 min from 380 s).
    assert_eq!(dwell_until(&mut e, vec![tel("a0", 380, "none", true, 1)]), vec![Some(560), Some(560)]);
    assert_eq!(step(&mut e, [560, 561].map(|t| tel("a0", t, "none", true, 1))).len(), 2);
    // Third: 1 min × 9; fourth: 1 min × 27, capped at max_dwell (20 min).
    assert_eq!(dwell_until(&mut e, vec![tel("a0", 600, "degrade", true, 1)]), vec![Some(1140), Some(1140)]);
    assert_eq!(step(&mut e, [1140, 1141].map(|t| tel("a0", t, "none", true, 1))).len(), 2);
    assert_eq!(step(&mut e, [1681, 1682].map(|t| tel("a0", t, "none", true, 1))).len(), 2);
    assert_eq!(dwell_until(&mut e, vec![tel("a0", 2200, "degrade", true, 1)]), vec![Some(3400), Some(3400)]);
}

#[test]
fn leaving_block_after_a_critical_breach_needs_an_attestation() {
    let mut e = engine();
    assert_eq!(
        step(&mut e, [tel("a0", 0, "block", false, 1)]),
        vec![
            ev("a0", All, Normal, Block, 1, 0, "zero_tolerance_breach"),
            ev("a0", HighRisk, Normal, Block, 2, 0, "zero_tolerance_breach")
        ]
    );
    assert_eq!(
        step(&mut e, [60, 70, 80].map(|t| tel("a0", t, "none", false, 1))),
        vec![],
        "clean and past the dwell, but not attested"
    );
    assert_eq!(
        step(&mut e, [ov("a0", 90, OverrideKind::Attest, All, None, 600, 2)]),
        vec![],
        "an attestation changes no lane by itself"
    );
    let out = outputs(&mut e, [tel("a0", 100, "none", false, 1)]);
    assert_eq!(
        events(&out),
        vec![
            ev("a0", All, Block, Review, 3, 100, "reverified"),
            ev("a0", HighRisk, Block, Review, 4, 100, "reverified")
        ]
    );
    let first = enforcements(&out)[0];
    assert!(first.reason.text.contains("human attestation present"), "{}", first.reason.text);
}

/// Every index naming an agent holds the agents map's key for its id, not a copy: its
/// timers, its workflow's sets and the changed list, and a restored engine's too.
#[test]
fn an_agents_id_is_one_allocation_shared_by_every_index() {
    fn holders<'a>(e: &'a Engine, id: &str) -> (&'a Arc<str>, Vec<&'a Arc<str>>) {
        let (key, a) = e.agents.get_key_value(id).expect("agent");
        let w = &e.workflows[&a.workflow];
        let mut held: Vec<&Arc<str>> = e.timers.agents().filter(|a| &***a == id).collect();
        held.extend([w.agents.get(id), w.blocked.get(id)].into_iter().flatten());
        held.extend(e.dirty.listed().iter().filter(|a| &***a == id));
        (key, held)
    }
    let mut e = engine();
    step(&mut e, [tel("a0", 0, "block", false, 1), ov("a0", 1, OverrideKind::Attest, All, None, 600, 2)]);
    assert_eq!(e.agent("a0").unwrap().published.all, Block);
    let (key, held) = holders(&e, "a0");
    // Its TTL and override-expiry timers, its workflow's agents and blocked sets, and the
    // changed list.
    assert_eq!(held.len(), 5, "{held:?}");
    assert!(held.iter().all(|h| Arc::ptr_eq(h, key)));
    assert_eq!(Arc::strong_count(key), 6);
    let agents: Vec<(String, AgentState)> = e.agents().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut r =
        Engine::restore(e.config().clone(), vec![parse_pact(PACT, "rules.yaml").unwrap()], e.meta(), agents);
    r.mark_dirty(["a0".to_string()]);
    let (key, held) = holders(&r, "a0");
    assert_eq!(held.len(), 5, "{held:?}");
    assert!(held.iter().all(|h| Arc::ptr_eq(h, key)));
}

#[test]
fn stale_high_risk_evidence_sends_high_risk_actions_to_review_until_fresh_again() {
    let mut e = engine();
    assert_eq!(step(&mut e, [0, 60].map(|t| tel("a0", t, "none", true, 1))), vec![]);
    // Fresh while the older of the last 2 events is at most 10 min old; the check fires when
    // the next record passes it.
    let out = outputs(&mut e, [tel("a0", 700, "none", false, 1)]);
    assert_eq!(events(&out), vec![ev("a0", HighRisk, Normal, Review, 1, 600, "evidence_stale")]);
    let stale = enforcements(&out)[0];
    assert_eq!(stale.effective_at, T0 + 600 * S + 1, "stale 1 µs after the older event turns 10 min old");
    assert!(e.agent("a0").unwrap().clauses.values().any(|s| s.stale));
    // One new event is not enough: the window asks for 2 within 10 min.
    assert_eq!(step(&mut e, [tel("a0", 710, "none", true, 1)]), vec![]);
    assert_eq!(
        step(&mut e, [tel("a0", 720, "none", true, 1)]),
        vec![ev("a0", HighRisk, Review, Normal, 2, 720, "evidence_fresh")]
    );
    // 5 events, 4 of them high-risk; the one at 710 s was decided on stale evidence.
    let st = e.stats();
    assert_eq!((st.telemetry, st.high_risk_decisions, st.high_risk_fresh), (5, 4, 3));
}

#[test]
fn a_model_change_holds_the_agent_until_every_drift_clause_reverifies() {
    let mut e = engine();
    assert_eq!(step(&mut e, [tel("a0", 0, "none", false, 1)]), vec![]);
    assert_eq!(
        step(&mut e, [tel("a0", 10, "none", false, 2)]),
        vec![
            ev("a0", All, Normal, Review, 1, 10, "model_changed"),
            ev("a0", HighRisk, Normal, Review, 2, 10, "model_changed")
        ]
    );
    // 4 clean events, but the dwell runs to 10 + 180 s.
    assert_eq!(step(&mut e, [20, 30, 40, 100].map(|t| tel("a0", t, "none", false, 2))), vec![]);
    assert_eq!(
        step(&mut e, [tel("a0", 190, "none", false, 2)]),
        vec![
            ev("a0", All, Review, Normal, 3, 190, "model_reverified"),
            ev("a0", HighRisk, Review, Normal, 4, 190, "model_reverified")
        ]
    );
}

#[test]
fn a_settle_is_its_own_event_beside_a_lane_change_in_the_same_step() {
    let mut e = engine();
    step(&mut e, [tel("a0", 0, "none", false, 1)]);
    let out = outputs(&mut e, [tel("a0", 10, "settle", false, 2)]);
    assert_eq!(
        events(&out),
        vec![
            ev("a0", All, Normal, Normal, 1, 10, "settle"),
            ev("a0", All, Normal, Review, 2, 10, "model_changed"),
            ev("a0", HighRisk, Normal, Review, 3, 10, "model_changed")
        ]
    );
    let actions: Vec<_> = out
        .iter()
        .filter_map(|o| if let Output::Enforcement(x) = o { Some(x.action.as_str()) } else { None })
        .collect();
    assert_eq!(actions, ["settle", "require_human_review", "require_human_review"]);
    assert_eq!(e.agent("a0").unwrap().published, ByScope::both(Review));
}

#[test]
fn the_blast_radius_cap_applies_the_fail_mode_and_lifts_when_the_share_allows() {
    let mut e = engine();
    step(&mut e, ["a0", "a1", "a2"].map(|a| tel(a, 0, "none", false, 1)));
    // 1 of 3 blocked would exceed 30 %: fail mode (review) and one panic event.
    let out = outputs(&mut e, [tel("a0", 10, "block", false, 1)]);
    assert_eq!(
        events(&out),
        vec![
            ev("a0", All, Normal, Review, 1, 10, "zero_tolerance_breach"),
            ev("a0", HighRisk, Normal, Review, 2, 10, "zero_tolerance_breach")
        ]
    );
    let panics: Vec<_> =
        out.iter().filter_map(|o| if let Output::Panic(p) = o { Some(p.clone()) } else { None }).collect();
    assert_eq!(
        panics,
        vec![PanicEvent {
            workflow: "w".into(),
            would_block: 1,
            agents: 3,
            fail_mode: Review,
            at: T0 + 10 * S
        }]
    );
    // A second capped agent in the same episode: no second panic event.
    assert!(!outputs(&mut e, [tel("a1", 20, "block", false, 1)])
        .iter()
        .any(|o| matches!(o, Output::Panic(_))));
    // The workflow grows to 10 agents: 1 blocked of 10 is allowed, so a0's next event blocks it.
    step(&mut e, (3..10).map(|i| tel(&format!("a{i}"), 30, "none", false, 1)));
    assert_eq!(
        step(&mut e, [tel("a0", 40, "none", false, 1)]),
        vec![
            ev("a0", All, Review, Block, 3, 40, "blast_radius_recheck"),
            ev("a0", HighRisk, Review, Block, 4, 40, "blast_radius_recheck")
        ]
    );
    // 2 of 10 would exceed 30 %? No (0.2 < 0.3): a1 is blocked too; a third would be 3 > 3? No.
    assert_eq!(
        step(&mut e, [tel("a1", 41, "none", false, 1)]).iter().map(|x| x.3).collect::<Vec<_>>(),
        vec![Block, Block]
    );
    assert!(
        !outputs(&mut e, [tel("a2", 42, "block", false, 1)]).iter().any(|o| matches!(o, Output::Panic(_))),
        "3 of 10 is not more than 30 %"
    );
    // A fourth would be 4 of 10: capped, in the same episode (three agents are blocked).
    let out = outputs(&mut e, [tel("a3", 43, "block", false, 1)]);
    assert_eq!(
        events(&out),
        vec![
            ev("a3", All, Normal, Review, 1, 43, "zero_tolerance_breach"),
            ev("a3", HighRisk, Normal, Review, 2, 43, "zero_tolerance_breach")
        ]
    );
    assert_eq!(out.iter().filter(|o| matches!(o, Output::Panic(_))).count(), 0);
}

#[test]
fn a_panic_episode_ends_when_no_agent_is_blocked_or_capped() {
    let mut e = engine();
    step(&mut e, ["a0", "a1", "a2"].map(|a| tel(a, 0, "none", false, 1)));
    assert_eq!(
        outputs(&mut e, [tel("a0", 10, "block", false, 1)])
            .iter()
            .filter(|o| matches!(o, Output::Panic(_)))
            .count(),
        1
    );
    // a0 re-verifies out of its block demand while capped (attested): nothing is capped now.
    step(&mut e, [ov("a0", 20, OverrideKind::Attest, All, None, 600, 2)]);
    assert_eq!(
        step(&mut e, [80, 81].map(|t| tel("a0", t, "none", false, 1))),
        vec![],
        "demand block -> review; published review already"
    );
    assert!(!e.agent("a0").unwrap().capped);
    assert_eq!(
        outputs(&mut e, [tel("a1", 90, "block", false, 1)])
            .iter()
            .filter(|o| matches!(o, Output::Panic(_)))
            .count(),
        1
    );
}

#[test]
fn overrides_apply_by_precedence_and_expire_at_their_time() {
    let mut e = engine();
    step(&mut e, [tel("a0", 0, "degrade", true, 1)]);
    // Loosen (agent-wide) to normal: policy bypass; the high-risk scope keeps its lane.
    assert_eq!(
        step(&mut e, [ov("a0", 10, OverrideKind::Loosen, All, Some(Normal), 300, 2)]),
        vec![ev("a0", All, Degrade, Normal, 3, 10, "override_applied")]
    );
    assert_eq!(e.stats().overrides_bypass, 1);
    // Tighten the high-risk scope to block: both scopes publish (the agent-wide one unchanged).
    assert_eq!(
        step(&mut e, [ov("a0", 20, OverrideKind::Tighten, HighRisk, Some(Block), 100, 3)]),
        vec![
            ev("a0", All, Normal, Normal, 4, 20, "override_applied"),
            ev("a0", HighRisk, Degrade, Block, 5, 20, "override_applied")
        ]
    );
    // Kill outranks the loosening.
    assert_eq!(
        step(&mut e, [ov("a0", 30, OverrideKind::EmergencyKill, All, None, 60, 5)]),
        vec![ev("a0", All, Normal, Block, 6, 30, "override_applied")]
    );
    // Expiries fire at their own times (90, 120, 310 s), when a later record passes them.
    assert_eq!(
        step(&mut e, [tel("a0", 95, "none", false, 1)]),
        vec![ev("a0", All, Block, Normal, 7, 90, "override_expired")]
    );
    assert_eq!(
        step(&mut e, [tel("a0", 125, "none", false, 1)]),
        vec![
            ev("a0", All, Normal, Normal, 8, 120, "override_expired"),
            ev("a0", HighRisk, Block, Degrade, 9, 120, "override_expired")
        ]
    );
    assert_eq!(
        step(&mut e, [tel("a0", 320, "none", false, 1)]),
        vec![ev("a0", All, Normal, Degrade, 10, 310, "override_expired")]
    );
    assert!(e.agent("a0").unwrap().overrides.is_empty());
}

#[test]
fn invalid_overrides_are_rejected_with_their_reason_and_create_no_state() {
    let mut e = engine();
    step(&mut e, [tel("a0", 0, "none", false, 1)]);
    let mut bad = Vec::new();
    let Input::Override(mut r) = ov("ghost", 10, OverrideKind::Tighten, All, Some(Review), 60, 0) else {
        unreachable!()
    };
    r.expires_at = None;
    bad.push(r.clone());
    r.expires_at = Some(r.issued_at);
    bad.push(r.clone());
    r.expires_at = Some(r.issued_at + 3601 * S);
    bad.push(r.clone());
    r.expires_at = Some(r.issued_at + 60 * S);
    r.expected_seq = Some(4);
    bad.push(r.clone());
    r.expected_seq = Some(0);
    r.lane = None;
    bad.push(r.clone());
    let out = outputs(&mut e, bad.into_iter().map(Input::Override));
    let reasons: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Output::History(h) if h.kind == RecordKind::OverrideRejected => {
                h.detail["reason"].as_str().map(String::from)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "`expires_at` is mandatory: every override expires",
            "`expires_at` is not after `issued_at`: the override is already expired",
            "`expires_at` is beyond the maximum override TTL of 3600 s",
            "stale `expected_seq` 4: the agent's seq is 0",
            "`lane` is required for tighten and loosen",
        ]
    );
    assert_eq!(events(&out), vec![]);
    assert!(e.agent("ghost").is_none());
    assert_eq!(e.stats().overrides_rejected, 5);
}

#[test]
fn idle_agents_in_normal_expire_and_others_are_kept() {
    let mut e = engine();
    step(&mut e, [tel("a0", 0, "none", false, 1), tel("a1", 0, "degrade", true, 1)]);
    // An override for an agent never seen: its state expires too, once the override has.
    step(&mut e, [ov("a9", 0, OverrideKind::Tighten, All, Some(Watch), 600, 0)]);
    let out = outputs(&mut e, [tel("a2", 7300, "none", false, 1)]);
    let expired: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::History(h) if h.kind == RecordKind::StateExpired => {
                Some((h.agent_id.clone().unwrap(), (h.at_micros - T0) / S))
            }
            _ => None,
        })
        .collect();
    assert_eq!(expired, vec![("a0".to_string(), 7200), ("a9".to_string(), 7200)]);
    assert!(e.agent("a0").is_none() && e.agent("a9").is_none());
    assert!(e.agent("a1").is_some(), "a1 is idle but degraded: kept");
    assert_eq!(e.stats().states_expired, 2);
}

#[test]
fn records_behind_the_watermark_are_processed_within_the_allowed_lateness_and_set_aside_beyond_it() {
    let mut e = engine();
    e.cfg.allowed_lateness = Dur(60 * S);
    step(&mut e, [tel("a0", 100, "none", false, 1)]);
    // At the watermark itself (a tie with the latest event) is not behind it.
    step(&mut e, [tel("a1", 100, "none", false, 1)]);
    assert_eq!(e.stats().late_accepted, 0);
    // 10 s behind: within the allowed lateness, processed (and its breach acts).
    assert_eq!(
        step(&mut e, [tel("a0", 90, "watch", false, 1)]).iter().map(|x| (x.3, x.5)).collect::<Vec<_>>(),
        vec![(Watch, 90), (Watch, 90)]
    );
    // 90 s behind: set aside with its reason, and recorded in the history.
    let out = outputs(&mut e, [tel("a0", 10, "block", false, 1)]);
    let late: Vec<&LateRecord> =
        out.iter().filter_map(|o| if let Output::Late(l) = o { Some(l) } else { None }).collect();
    assert_eq!(late.len(), 1);
    assert_eq!(
        (late[0].id.as_str(), late[0].occurred_at, late[0].watermark),
        ("a0@10", T0 + 10 * S, T0 + 100 * S)
    );
    assert_eq!(late[0].reason, "event time is 90 s behind the watermark, beyond the allowed lateness of 1m");
    assert!(out.iter().any(|o| matches!(o, Output::History(h) if h.kind == RecordKind::Late)));
    assert_eq!(events(&out), vec![], "a late breach changes nothing");
    // Exactly at the cutoff (the watermark less the allowed lateness): still processed.
    assert_eq!(e.late_before(), Some(T0 + 40 * S));
    let out = outputs(&mut e, [tel("a0", 40, "none", false, 1)]);
    assert!(!out.iter().any(|o| matches!(o, Output::Late(_))));
    assert_eq!((e.stats().late, e.stats().late_accepted, e.stats().telemetry), (1, 2, 4));
    assert_eq!(e.max_event_time(), Some(T0 + 100 * S), "late inputs do not move the clock");
}

#[test]
fn buffered_inputs_keep_their_source_tags_in_the_meta_record_and_a_flush_processes_them() {
    let mut e = held_engine(30, 5);
    assert_eq!(e.max_event_time(), None);
    e.push_tagged(tel("a0", 0, "none", false, 1), 7);
    e.push_tagged(tel("a0", 10, "watch", false, 1), 8);
    e.push(tel("a0", 5, "none", false, 1));
    assert_eq!(e.max_event_time(), Some(T0 + 10 * S));
    // Tagged inputs are kept by reference, the others inline.
    let meta = e.meta();
    let inline: Vec<(i64, u64)> = meta.buffer.iter().map(|b| ((b.0 - T0) / S, b.1)).collect();
    let by_reference: Vec<(i64, u64, u64)> =
        meta.by_reference.iter().map(|b| ((b.0 - T0) / S, b.1, b.2)).collect();
    assert_eq!((inline, by_reference), (vec![(5, 2)], vec![(0, 0, 7), (10, 1, 8)]));
    assert_eq!(e.drain(), vec![], "held behind the watermark");
    // The end of the input: everything held is processed, in event-time order.
    e.flush();
    assert_eq!((e.buffered(), e.stats().telemetry), (0, 3));
    assert_eq!(
        events(&e.drain()),
        vec![
            ev("a0", All, Normal, Watch, 1, 10, "zero_tolerance_breach"),
            ev("a0", HighRisk, Normal, Watch, 2, 10, "zero_tolerance_breach")
        ]
    );
}

#[test]
fn a_segmented_clause_keeps_state_and_recovery_per_segment() {
    let pact = parse_pact(
        r#"
pact: seg
version: 1
applies_to: { agents: ["a*"] }
clauses:
  - id: by_risk
    metric: { kind: bernoulli, value: attributes.flag == "watch" }
    segment_by: [risk, model.name]
    test: { kind: limit, zero_tolerance: true }
    severity: medium
    consequence: watch
    recovery: { clean_events: 2, min_dwell: 1m }
"#,
        "seg.yaml",
    )
    .expect("valid pact");
    let mut e = Engine::new(engine().cfg.clone(), vec![pact]);
    let segments: Vec<Option<String>> = outputs(&mut e, [tel("a0", 0, "watch", true, 1)])
        .iter()
        .filter_map(|o| if let Output::Enforcement(x) = o { Some(x.segment.clone()) } else { None })
        .collect();
    assert_eq!(segments, vec![Some("high|m".to_string()); 2]);
    // Clean low-risk traffic is another segment: it does not re-verify the high-risk one.
    assert_eq!(step(&mut e, [70, 80, 90].map(|t| tel("a0", t, "none", false, 1))), vec![]);
    let keys: Vec<String> = e.agent("a0").unwrap().clauses.keys().map(|k| k.2.as_str().to_string()).collect();
    assert_eq!(keys, ["low|m", "high|m"], "ordered by length, then bytes");
    assert_eq!(
        step(&mut e, [100, 110].map(|t| tel("a0", t, "none", true, 1))),
        vec![
            ev("a0", All, Watch, Normal, 3, 110, "reverified"),
            ev("a0", HighRisk, Watch, Normal, 4, 110, "reverified")
        ]
    );
}

/// One segment field: the state is found by the field's value as the record holds it, and
/// each segment has its own breach and its own freshness check.
#[test]
fn a_clause_segmented_by_one_field_keeps_breaches_and_freshness_per_segment() {
    let pact = parse_pact(
        r#"
pact: seg1
version: 1
applies_to: { agents: ["a*"] }
clauses:
  - id: by_risk
    metric: { kind: bernoulli, value: attributes.flag == "watch" }
    segment_by: [risk]
    test: { kind: limit, zero_tolerance: true }
    severity: medium
    consequence: watch
    high_risk: true
    freshness: { max_age: 10m, min_events: 1 }
"#,
        "seg1.yaml",
    )
    .expect("valid pact");
    let mut e = Engine::new(engine().cfg.clone(), vec![pact]);
    assert_eq!(step(&mut e, [tel("a0", 0, "none", true, 1), tel("a0", 10, "none", false, 1)]), vec![]);
    let keys: Vec<String> = e.agent("a0").unwrap().clauses.keys().map(|k| k.2.as_str().to_string()).collect();
    assert_eq!(keys, ["low", "high"]);
    let segments_of = |out: &[Output], code: &str| -> Vec<Option<String>> {
        enforcements(out).iter().filter(|x| x.reason.code == code).map(|x| x.segment.clone()).collect()
    };
    let out = outputs(&mut e, [tel("a0", 20, "watch", false, 1)]);
    assert_eq!(segments_of(&out, "zero_tolerance_breach"), vec![Some("low".to_string()); 2]);
    // Low-risk traffic keeps only its own segment fresh: the high-risk one, last seen at 0 s,
    // turns stale 10 min later.
    let out = outputs(&mut e, [tel("a0", 300, "none", false, 1), tel("a0", 700, "none", false, 1)]);
    assert_eq!(segments_of(&out, "evidence_stale"), vec![Some("high".to_string())]);
    let stale: Vec<(String, bool)> =
        e.agent("a0").unwrap().clauses.iter().map(|(k, s)| (k.2.as_str().to_string(), s.stale)).collect();
    assert_eq!(stale, [("low".to_string(), false), ("high".to_string(), true)]);
}

#[test]
fn the_cap_allows_a_share_of_blocks_equal_to_the_limit() {
    // Shares exact in binary: 1 of 2 blocked is 50 %, not more than 50 %.
    let mut e = engine();
    e.cfg.max_blocked_share = 0.5;
    e.cfg.blast_radius_min_agents = 2;
    step(&mut e, ["a0", "a1"].map(|a| tel(a, 0, "none", false, 1)));
    assert_eq!(
        step(&mut e, [tel("a0", 10, "block", false, 1)]).iter().map(|x| x.3).collect::<Vec<_>>(),
        vec![Block, Block]
    );
    let out = outputs(&mut e, [tel("a1", 20, "block", false, 1)]);
    assert_eq!(
        events(&out).iter().map(|x| x.3).collect::<Vec<_>>(),
        vec![Review, Review],
        "2 of 2 is more than 50 %"
    );
    assert_eq!(out.iter().filter(|o| matches!(o, Output::Panic(_))).count(), 1);
}

#[test]
fn an_override_may_last_exactly_the_maximum_lifetime() {
    let mut e = engine();
    step(&mut e, [tel("a0", 0, "none", false, 1)]);
    assert_eq!(step(&mut e, [ov("a0", 10, OverrideKind::Tighten, All, Some(Watch), 3600, 0)]).len(), 2);
    assert_eq!(e.stats().overrides_accepted, 1);
}

/// An engine holding records `ooo_s` seconds for the watermark, with ticks allowed to move
/// it up to `lag_s` behind the source's clock.
fn held_engine(ooo_s: i64, lag_s: i64) -> Engine {
    let mut e = engine();
    e.cfg.max_out_of_orderness = Dur(ooo_s * S);
    e.cfg.allowed_lateness = Dur(60 * S);
    e.cfg.max_event_lag = Dur(lag_s * S);
    e
}

fn ticks(out: &[Output]) -> Vec<serde_json::Value> {
    out.iter()
        .filter_map(|o| {
            if let Output::History(h) = o {
                (h.kind == RecordKind::Tick).then(|| h.detail.clone())
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn a_tick_releases_what_waits_behind_the_watermark_and_is_recorded() {
    let mut e = held_engine(5, 5);
    // Held 5 s: the watch breach at 10 s waits for an event at 15 s that never comes.
    assert_eq!(step(&mut e, [tel("a0", 0, "none", false, 1), tel("a0", 10, "watch", false, 1)]), vec![]);
    assert_eq!((e.buffered(), e.watermark()), (1, Some(T0 + 5 * S)));
    // The source's clock at 14 s: the watermark may reach 9 s; nothing is due, nothing moves.
    assert!(!e.tick(T0 + 14 * S, 1));
    assert_eq!((e.drain(), e.buffered(), e.watermark()), (vec![], 1, Some(T0 + 5 * S)));
    // At 15 s the breach is due: released, and the tick recorded before its effects.
    assert!(e.tick(T0 + 15 * S, 2));
    let out = e.drain();
    assert_eq!(
        events(&out),
        vec![
            ev("a0", All, Normal, Watch, 1, 10, "zero_tolerance_breach"),
            ev("a0", HighRisk, Normal, Watch, 2, 10, "zero_tolerance_breach")
        ]
    );
    assert_eq!(
        ticks(&out),
        vec![
            serde_json::json!({"at": T0 + 15 * S, "wall_time": 2, "after_inputs": 2, "watermark_before": T0 + 5 * S, "watermark": T0 + 10 * S, "buffered": 1})
        ]
    );
    assert!(
        matches!(&out[0], Output::History(h) if h.kind == RecordKind::Tick),
        "the tick comes first in the history"
    );
    assert_eq!((e.buffered(), e.watermark(), e.stats().ticks), (0, Some(T0 + 10 * S), 1));
    // A tick never moves the watermark back.
    assert!(!e.tick(T0 + 12 * S, 3));
    assert_eq!(e.watermark(), Some(T0 + 10 * S));
}

#[test]
fn a_silent_partition_still_turns_stale_evidence_stale() {
    let mut e = held_engine(0, 5);
    assert_eq!(step(&mut e, [0, 60].map(|t| tel("a0", t, "none", true, 1))), vec![]);
    assert_eq!(e.take_dirty().len(), 1);
    // No further input. Evidence turns stale 1 µs after 600 s (the older of the last 2 events
    // is then 10 min old); the source's clock must pass that by the event lag.
    assert!(!e.tick(T0 + 604 * S, 1), "nothing due by 599 s");
    // The check due at 600 s finds the evidence exactly 10 min old, still fresh, and re-arms.
    assert!(e.tick(T0 + 605 * S, 2));
    assert_eq!(events(&e.drain()), vec![]);
    assert!(e.tick(T0 + 605 * S + 1, 3));
    let out = e.drain();
    assert_eq!(events(&out), vec![ev("a0", HighRisk, Normal, Review, 1, 600, "evidence_stale")]);
    let stale = enforcements(&out)[0];
    assert_eq!((stale.effective_at, stale.causation.kind.as_str()), (T0 + 600 * S + 1, "timer"));
    assert!(out.iter().any(|o| matches!(o, Output::History(h) if h.kind == RecordKind::Stale)));
    let dirty: Vec<String> = e.take_dirty().into_iter().map(|(id, _)| id).collect();
    assert_eq!(dirty, ["a0"], "a timer marks its agent for the changelog");
}

#[test]
fn timers_fire_when_the_watermark_passes_them_not_when_a_released_record_does() {
    let mut e = held_engine(30, 5);
    e.push(tel("a0", 0, "none", true, 1));
    e.push(tel("a0", 20, "none", true, 1));
    assert_eq!(e.drain(), vec![], "held: nothing released, not even the pact activation");
    // A record at 631 s moves the watermark to 601 s, past the stale deadline (600 s + 1 µs):
    // the two held records are released, then the timer fires; the new record stays held.
    let out = outputs(&mut e, [tel("a0", 631, "none", false, 1)]);
    assert_eq!(events(&out), vec![ev("a0", HighRisk, Normal, Review, 1, 600, "evidence_stale")]);
    // Two checks: at 600 s (exactly 10 min, still fresh; re-armed 1 µs later), then stale.
    assert_eq!((e.buffered(), e.stats().telemetry, e.stats().timers_fired), (1, 2, 2));
}

#[test]
fn a_critical_breach_acts_on_arrival_and_names_its_record() {
    let mut e = held_engine(30, 5);
    assert_eq!(step(&mut e, [tel("a0", 0, "none", false, 1), tel("a0", 5, "watch", false, 1)]), vec![]);
    // The block breach at 10 s is applied when it arrives, 30 s before the watermark would
    // pass it; the watch breach at 5 s, still held, comes after it.
    let out = outputs(&mut e, [tel("a0", 10, "block", false, 1)]);
    assert_eq!(
        events(&out),
        vec![
            ev("a0", All, Normal, Block, 1, 10, "zero_tolerance_breach"),
            ev("a0", HighRisk, Normal, Block, 2, 10, "zero_tolerance_breach")
        ]
    );
    let block = enforcements(&out)[0];
    assert_eq!((block.causation.kind.as_str(), block.causation.id.as_str()), ("telemetry", "a0@10"));
    assert_eq!((e.buffered(), e.stats().fast_path), (2, 1), "the other two records still wait");
    // When the watermark passes them, they are processed; the block stands.
    assert_eq!(step(&mut e, [tel("a0", 40, "none", false, 1)]), vec![]);
    assert_eq!(e.buffered(), 1);
    assert_eq!(e.agent("a0").unwrap().published, ByScope::both(Block));
    assert_eq!(e.stats().alarms.get("rules/watch_c"), Some(&1), "the held watch breach was judged");
    // A breach of a non-critical clause waits as before.
    assert_eq!(step(&mut e, [tel("a0", 41, "degrade", true, 1)]), vec![]);
    assert_eq!(e.stats().fast_path, 1);
}

#[test]
fn an_emergency_kill_acts_on_arrival() {
    let mut e = held_engine(30, 5);
    step(&mut e, [tel("a0", 0, "none", false, 1)]);
    let out = outputs(&mut e, [ov("a0", 5, OverrideKind::EmergencyKill, All, None, 600, 0)]);
    assert_eq!(
        events(&out),
        vec![
            ev("a0", All, Normal, Block, 1, 5, "override_applied"),
            ev("a0", HighRisk, Normal, Block, 2, 5, "override_applied")
        ]
    );
    // A tightening override still waits for the watermark.
    assert_eq!(step(&mut e, [ov("a1", 6, OverrideKind::Tighten, All, Some(Watch), 600, 0)]), vec![]);
    assert_eq!(e.buffered(), 2);
}

/// A run with ticks, for the determinism tests: inputs and ticks interleaved.
enum Step {
    In(Box<Input>),
    Tick(i64),
}

fn idle_run() -> Vec<Step> {
    use Step::{In, Tick};
    vec![
        In(Box::new(tel("a0", 0, "none", true, 1))),
        In(Box::new(tel("a1", 1, "none", true, 1))),
        In(Box::new(tel("a0", 60, "none", true, 1))),
        In(Box::new(tel("a1", 61, "watch", true, 1))),
        Tick(T0 + 70 * S),
        Tick(T0 + 400 * S),
        Tick(T0 + 700 * S),
        In(Box::new(tel("a0", 690, "none", true, 1))),
        In(Box::new(tel("a0", 700, "degrade", true, 1))),
        Tick(T0 + 720 * S),
        Tick(T0 + 3 * 3600 * S),
    ]
}

fn run_steps(e: &mut Engine, steps: &[Step]) -> Vec<Output> {
    for s in steps {
        match s {
            Step::In(i) => e.push((**i).clone()),
            Step::Tick(at) => {
                e.tick(*at, *at / 1000);
            }
        }
    }
    e.drain()
}

#[test]
fn ticks_replayed_at_their_recorded_positions_reproduce_the_run() {
    let run = idle_run();
    let mut live = held_engine(5, 5);
    let out = run_steps(&mut live, &run);
    assert!(ticks(&out).len() >= 4, "the run's ticks apply: {:?}", ticks(&out));
    assert!(events(&out).iter().any(|x| x.6 == "evidence_stale"), "a silent stretch turned evidence stale");
    // Replay: the same inputs, and each recorded tick before the input at its position.
    let recorded: Vec<(u64, i64, i64)> = ticks(&out)
        .iter()
        .map(|d| {
            (d["after_inputs"].as_u64().unwrap(), d["at"].as_i64().unwrap(), d["wall_time"].as_i64().unwrap())
        })
        .collect();
    let inputs: Vec<Input> =
        run.into_iter().filter_map(|s| if let Step::In(i) = s { Some(*i) } else { None }).collect();
    let mut replay = held_engine(5, 5);
    let mut pending = recorded.iter().peekable();
    for (n, i) in inputs.into_iter().enumerate() {
        while let Some((_, at, wall)) = pending.next_if(|(pos, _, _)| *pos == n as u64) {
            assert!(replay.tick(*at, *wall), "a recorded tick applies again");
        }
        replay.push(i);
    }
    for (_, at, wall) in pending {
        assert!(replay.tick(*at, *wall));
    }
    assert_eq!(
        serde_json::to_string(&replay.drain()).unwrap(),
        serde_json::to_string(&out).unwrap(),
        "byte-identical outputs"
    );
}

#[test]
fn a_restore_in_the_middle_of_an_idle_period_gives_the_same_effects() {
    let run = idle_run();
    let mut whole = held_engine(5, 5);
    let expected = run_steps(&mut whole, &run);
    // Stop after the first two ticks, restore from the engine's state, and go on.
    let mut first = held_engine(5, 5);
    let mut got = run_steps(&mut first, &run[..6]);
    let agents: Vec<(String, AgentState)> = first.agents().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut second = Engine::restore(first.config().clone(), first.pacts().to_vec(), first.meta(), agents);
    got.extend(run_steps(&mut second, &run[6..]));
    assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&expected).unwrap());
}

#[test]
fn pacts_are_activated_once_and_every_input_marks_its_agent_for_the_changelog() {
    let mut e = engine();
    assert_eq!((e.agent_count(), e.config().max_override_ttl), (0, Dur(3600 * S)));
    for (i, agent) in ["a0", "a1", "a0"].iter().enumerate() {
        e.push(tel(agent, i as i64, "ok", false, 1));
    }
    let out = e.drain();
    let activated =
        out.iter().filter(|o| matches!(o, Output::History(r) if r.kind == RecordKind::PactActivated)).count();
    assert_eq!(activated, 1, "one pact, activated by the first input only");
    assert_eq!(e.agent_count(), 2);
    let dirty: Vec<(String, bool)> = e.take_dirty().into_iter().map(|(id, s)| (id, s.is_some())).collect();
    assert_eq!(dirty, [("a0".to_string(), true), ("a1".to_string(), true)]);
    assert!(e.take_dirty().is_empty(), "taken");
    e.push(tel("a1", 3, "ok", false, 1));
    assert_eq!(e.take_dirty().into_iter().map(|(id, _)| id).collect::<Vec<_>>(), ["a1"]);
}

#[test]
fn collected_outputs_keep_each_kind_in_order() {
    let mut e = engine();
    e.push(tel("a0", 0, "ok", false, 1));
    e.push(tel("a0", 1, "block", false, 1));
    let out = e.drain();
    let mut c = Collected::default();
    c.take(out.clone());
    let history: Vec<Record> =
        out.iter().filter_map(|o| if let Output::History(r) = o { Some(r.clone()) } else { None }).collect();
    assert_eq!(c.history, history);
    assert_eq!(events(&out).len(), c.events.len());
    assert!(!c.events.is_empty() && c.late.is_empty() && c.panics.is_empty());
}

#[test]
fn an_agent_no_pact_covers_is_tracked_but_never_judged() {
    let mut e = engine();
    // The pact applies to `a*` agents only.
    e.push(tel("z0", 0, "block", false, 1));
    e.push(tel("a0", 1, "block", false, 1));
    let out = e.drain();
    let judged: Vec<(String, Scope, Lane)> = events(&out).into_iter().map(|ev| (ev.0, ev.1, ev.3)).collect();
    assert_eq!(judged, [("a0".into(), All, Block), ("a0".into(), HighRisk, Block)], "only the covered agent");
    let z = e.agent("z0").expect("tracked");
    assert!(z.pacts.is_empty() && z.clauses.is_empty(), "{z:?}");
}

/// Drift on each metric kind, and a metric of the wrong type.
const KINDS: &str = r#"
pact: kinds
version: 1
applies_to: { agents: ["k*"] }
clauses:
  - id: flag_rate
    metric: { kind: bernoulli, value: attributes.flag == "x" }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-3, reference_min: 200, reference_max: 200 }
    severity: medium
    consequence: watch
  - id: latency
    metric: { kind: real, value: latency_ms }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-3, reference_min: 200, reference_max: 200 }
    severity: medium
    consequence: watch
  - id: flag_mix
    metric: { kind: categorical, value: attributes.flag }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-3, reference_min: 200, reference_max: 200 }
    severity: medium
    consequence: watch
  - id: mistyped
    metric: { kind: categorical, value: attributes.size }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-3, reference_min: 200, reference_max: 200 }
    severity: medium
    consequence: watch
"#;

#[test]
fn drift_is_verified_on_every_metric_kind_and_dated_back_from_its_evidence() {
    let mut e = engine_with(KINDS, "kinds.yaml");
    // One event a second: 200 as the baseline (one in ten flagged, latency 1.0-2.0), then
    // every event flagged and 50 times slower.
    let n = 300;
    for i in 0..n {
        let drifted = i >= 200;
        let flag = if drifted || i % 10 == 0 { "x" } else { "ok" };
        let mut input = tel("k0", i, flag, false, 1);
        if let Input::Telemetry(t) = &mut input {
            t.latency_ms = Some(if drifted { 50.0 } else { 1.0 } + ((i * 7919) % 1000) as f64 / 1000.0);
            // Typed at run time: a number where the clause wants a category; a missing
            // attribute is no observation, and not an invalid one.
            if i % 50 != 7 {
                t.attributes.insert("size", Attr::Num(i as f64));
            }
            // A latency the detector refuses.
            if i == 3 {
                t.latency_ms = Some(f64::NAN);
            }
        }
        e.push(input);
    }
    let out = e.drain();
    let alarms = &e.stats().alarms;
    for clause in ["flag_rate", "latency", "flag_mix"] {
        assert!(alarms.get(&format!("kinds/{clause}")).is_some_and(|n| *n >= 1), "{clause}: {alarms:?}");
    }
    assert!(!alarms.contains_key("kinds/mistyped"));
    assert_eq!(
        e.stats().invalid_observations,
        (n - n / 50) as u64 + 1,
        "every size present is a number, not a category; and one latency is NaN"
    );
    // The first verified drift, dated back from its evidence at the observed one-second gap.
    let d = out
        .iter()
        .find_map(|o| match o {
            Output::Enforcement(ev) => ev.detection.clone(),
            _ => None,
        })
        .expect("a detection");
    assert!(d.n > 1, "{d:?}");
    assert_eq!(d.first_post_change_at, d.verified_at - (d.n as i64 - 1) * S, "{d:?}");
    assert_eq!(d.change_point_at, d.first_post_change_at - S / 2, "{d:?}");
    // `n` is the detector's estimate of the post-change run, so the dating is near the change,
    // not exact.
    assert!(d.verified_at >= T0 + 200 * S && d.first_post_change_at > T0 + 190 * S, "{d:?}");
}

const RATE: &str = r#"
pact: rate
version: 1
applies_to: { agents: ["r*"] }
clauses:
  - id: refusals
    metric: { kind: bernoulli, value: attributes.flag == "x" }
    test: { kind: limit, rate: { max: 0.05 }, alpha: 1.0e-3 }
    severity: high
    consequence: degrade
    recovery: { clean_events: 20, min_dwell: 1m }
"#;

#[test]
fn a_rate_limit_breach_is_verified_and_recovery_needs_compliance_verified_again_per_step() {
    let mut e = engine_with(RATE, "rate.yaml");
    // 100 compliant events, 100 at a 50 % rate, then compliant again; one a second.
    for i in 0..1200 {
        let flag = if (100..200).contains(&i) && i % 2 == 0 { "x" } else { "ok" };
        e.push(tel("r0", i, flag, false, 1));
    }
    let out = e.drain();
    let all: Vec<Ev> = events(&out).into_iter().filter(|ev| ev.1 == All).collect();
    // Exact for this input (the bound detector is deterministic), and by the rules: the
    // breach is verified during the 50 % stretch; compliance is verified again on traffic
    // after it, for each step down, one lane at a time and at least `min_dwell` apart.
    assert_eq!(
        all,
        vec![
            ev("r0", All, Normal, Degrade, 1, 140, "limit_breached"),
            ev("r0", All, Degrade, Watch, 3, 599, "reverified"),
            ev("r0", All, Watch, Normal, 5, 760, "reverified"),
        ]
    );
    assert!((100..200).contains(&all[0].5) && all[1].5 >= 200 && all[2].5 - all[1].5 >= 60);
}

/// Three clauses that breach together on one event: `up` breaches a watch clause, then a
/// degrade clause; `down` the degrade clause, then a watch clause; `pair` two watch clauses.
const TIES: &str = r#"
pact: ties
version: 1
applies_to: { agents: ["b*"] }
fail_mode: review
clauses:
  - id: watch_a
    metric: { kind: bernoulli, value: 'attributes.flag in ["up", "pair"]' }
    test: { kind: limit, zero_tolerance: true }
    severity: medium
    consequence: watch
  - id: degrade_b
    metric: { kind: bernoulli, value: 'attributes.flag in ["up", "down"]' }
    test: { kind: limit, zero_tolerance: true }
    severity: high
    consequence: degrade
  - id: watch_c
    metric: { kind: bernoulli, value: 'attributes.flag in ["pair", "down"]' }
    test: { kind: limit, zero_tolerance: true }
    severity: medium
    consequence: watch
"#;

/// The clause each enforcement event cites.
fn cited_clauses(out: &[Output]) -> Vec<Option<String>> {
    enforcements(out).into_iter().map(|x| x.clause_id.clone()).collect()
}

#[test]
fn of_several_breaches_in_one_step_the_event_cites_the_clause_demanding_most_then_the_first() {
    let cfg = engine().cfg;
    let mut e = Engine::new(cfg, vec![parse_pact(TIES, "ties.yaml").expect("valid pact")]);
    for (agent, flag, lane, clause) in [
        ("b1", "up", Degrade, "degrade_b"),
        ("b2", "down", Degrade, "degrade_b"),
        ("b3", "pair", Watch, "watch_a"),
    ] {
        let out = outputs(&mut e, [tel(agent, 0, flag, false, 1)]);
        assert_eq!(
            events(&out),
            vec![
                ev(agent, All, Normal, lane, 1, 0, "zero_tolerance_breach"),
                ev(agent, HighRisk, Normal, lane, 2, 0, "zero_tolerance_breach")
            ],
            "{flag}"
        );
        assert_eq!(cited_clauses(&out), vec![Some(clause.to_string()); 2], "{flag}");
    }
}

#[test]
fn a_step_cites_a_cause_that_moves_its_scope_the_way_the_lane_moves() {
    let mut e = engine();
    // watch_c re-verifies (3 clean events after its 2 min dwell) on the event that breaches
    // block_c: the lane rises, so the breach is cited, not the step down.
    step(&mut e, [tel("a0", 0, "watch", false, 1)]);
    step(&mut e, [10, 20].map(|t| tel("a0", t, "none", false, 1)));
    let out = outputs(&mut e, [tel("a0", 200, "block", false, 1)]);
    assert_eq!(
        events(&out),
        vec![
            ev("a0", All, Watch, Block, 3, 200, "zero_tolerance_breach"),
            ev("a0", HighRisk, Watch, Block, 4, 200, "zero_tolerance_breach")
        ]
    );
    assert_eq!(cited_clauses(&out), vec![Some("block_c".to_string()); 2]);
    let watch_c = e.agent("a0").unwrap().clauses.iter().find(|(k, _)| k.1 == 0).unwrap().1;
    assert_eq!(watch_c.demand, Normal, "watch_c did re-verify in that step");
    // Stale high-risk evidence turns fresh on the event that breaches degrade_c: the agent
    // rises to degrade, and its high-risk actions fall from review to degrade.
    let mut e = engine();
    step(&mut e, [0, 60].map(|t| tel("a1", t, "none", true, 1)));
    assert_eq!(
        step(&mut e, [tel("a1", 700, "none", true, 1)]),
        vec![ev("a1", HighRisk, Normal, Review, 1, 600, "evidence_stale")]
    );
    let out = outputs(&mut e, [tel("a1", 710, "degrade", true, 1)]);
    assert_eq!(
        events(&out),
        vec![
            ev("a1", All, Normal, Degrade, 2, 710, "zero_tolerance_breach"),
            ev("a1", HighRisk, Review, Degrade, 3, 710, "evidence_fresh")
        ]
    );
}

/// The override each enforcement event cites.
fn cited_overrides(out: &[Output]) -> Vec<Option<String>> {
    enforcements(out).into_iter().map(|x| x.override_info.as_ref().map(|i| i.override_id.clone())).collect()
}

#[test]
fn an_event_cites_the_latest_override_of_its_scope_or_an_emergency_kill_and_counts_itself() {
    let mut e = engine();
    step(&mut e, [tel("a0", 0, "degrade", true, 1)]);
    let loosen = outputs(&mut e, [ov("a0", 10, OverrideKind::Loosen, All, Some(Normal), 300, 2)]);
    assert_eq!(cited_overrides(&loosen), [Some("o-a0@10".to_string())]);
    // The high-risk tightening is issued later, but the agent-wide event cites the
    // agent-wide override.
    let tighten = outputs(&mut e, [ov("a0", 20, OverrideKind::Tighten, HighRisk, Some(Block), 100, 3)]);
    assert_eq!(cited_overrides(&tighten), [Some("o-a0@10".to_string()), Some("o-a0@20".to_string())]);
    let x = enforcements(&tighten)[0];
    assert_eq!(x.expires_at, Some(T0 + 310 * S));
    // A kill (agent-wide) is cited by both scopes' events.
    step(&mut e, [tel("a1", 21, "none", false, 1)]);
    let kill = outputs(&mut e, [ov("a1", 30, OverrideKind::EmergencyKill, All, None, 60, 0)]);
    assert_eq!(events(&kill).len(), 2);
    assert_eq!(cited_overrides(&kill), vec![Some("o-a1@30".to_string()); 2]);
    // Events that no override explains cite none, and a clause that never escalated has no dwell.
    let breach = outputs(&mut e, [tel("a2", 40, "watch", false, 1)]);
    assert_eq!(cited_overrides(&breach), [None, None]);
    assert_eq!(e.stats().enforcement_events, 2 + 1 + 2 + 2 + 2);
    step(&mut e, [0, 60].map(|t| tel("a3", 50 + t, "none", true, 1)));
    let stale = outputs(&mut e, [tel("a3", 800, "none", false, 1)]);
    let x = enforcements(&stale).into_iter().find(|x| x.agent_id == "a3").expect("a3's stale event");
    assert_eq!(
        (x.reason.code.as_str(), x.min_dwell_until, x.clause_id.as_deref()),
        ("evidence_stale", None, Some("degrade_c"))
    );
}

#[test]
fn a_restore_remaps_pacts_by_id_and_version_and_rebuilds_the_workflow_sets() {
    let mut e = engine();
    step(
        &mut e,
        [tel("a0", 0, "block", false, 1), tel("a1", 1, "watch", false, 1), tel("a2", 2, "none", false, 1)],
    );
    let agents =
        || -> Vec<(String, AgentState)> { e.agents().map(|(k, v)| (k.to_string(), v.clone())).collect() };
    let other = PACT.replace("pact: rules", "pact: other");
    let v2 = PACT.replace("version: 1", "version: 2");
    // Loaded again behind a pact of another id with the same version: found by id and version.
    let pacts = vec![parse_pact(&other, "other.yaml").unwrap(), parse_pact(PACT, "rules.yaml").unwrap()];
    let r = Engine::restore(e.config().clone(), pacts, e.meta(), agents());
    let a0 = r.agent("a0").unwrap();
    // The new pact covers the restored agent at once, with no state yet.
    assert_eq!(*a0.pacts, [0, 1]);
    assert!(!a0.clauses.is_empty() && a0.clauses.keys().all(|k| k.0 == 1));
    assert_eq!(a0.published, ByScope::both(Block));
    let w = &r.workflows["w"];
    assert_eq!(w.agents, ["a0", "a1", "a2"].map(Arc::from).into_iter().collect());
    assert_eq!(w.blocked, [Arc::from("a0")].into_iter().collect(), "only the blocked agent");
    // After a restore, agents are marked to supersede a torn snapshot: one that has no state
    // is reported as such.
    let mut r = r;
    assert!(r.take_dirty().is_empty());
    r.mark_dirty(["a1".to_string(), "gone".to_string()]);
    let dirty: Vec<(String, bool)> = r.take_dirty().into_iter().map(|(id, s)| (id, s.is_some())).collect();
    assert_eq!(dirty, [("a1".to_string(), true), ("gone".to_string(), false)]);
    // Another version of the same pact: its old clause states are dropped.
    let pacts = vec![parse_pact(&v2, "rules.yaml").unwrap()];
    let r = Engine::restore(e.config().clone(), pacts, e.meta(), agents());
    let a0 = r.agent("a0").unwrap();
    assert!(*a0.pacts == [0] && a0.clauses.is_empty(), "covered by version 2, with fresh state: {a0:?}");
}

const DRIFT_RECOVERY: &str = r#"
pact: recovery
version: 1
applies_to: { agents: ["d*"] }
clauses:
  - id: flag_rate
    metric: { kind: bernoulli, value: attributes.flag == "x" }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-3, reference_min: 200, reference_max: 200 }
    severity: medium
    consequence: watch
    recovery: { clean_events: 4, min_dwell: 1s }
"#;

#[test]
fn drift_recovery_waits_until_the_restarted_statistic_is_below_half_its_threshold() {
    let mut e = engine_with(DRIFT_RECOVERY, "recovery.yaml");
    // A baseline of one flag in ten, then one in two until the drift is verified (at 215 s),
    // and one more clean event.
    let flags = (0..200).map(|i| if i % 10 == 0 { "x" } else { "ok" }).chain((0..16).map(|i| {
        if i % 2 == 0 {
            "x"
        } else {
            "ok"
        }
    }));
    let inputs: Vec<Input> = flags.enumerate().map(|(i, f)| tel("d0", i as i64 + 1, f, false, 1)).collect();
    assert_eq!(
        step(&mut e, inputs),
        vec![
            ev("d0", All, Normal, Watch, 1, 215, "drift_verified"),
            ev("d0", HighRisk, Normal, Watch, 2, 215, "drift_verified")
        ]
    );
    // Four clean events (from 216 s) after the 1 s dwell, but three flags in a row build the restarted
    // statistic past half its threshold: held.
    assert_eq!(
        step(&mut e, [(217, "x"), (218, "x"), (219, "x")].map(|(t, f)| tel("d0", t, f, false, 1))),
        vec![]
    );
    let state = || e.agent("d0").unwrap().clauses.values().next().unwrap().clone();
    let (clean, view) = (state().clean, state().detector.view());
    assert_eq!(clean, 4);
    assert!(view.statistic > view.threshold / 2.0 && view.statistic < view.threshold, "{view:?}");
    // One more clean event takes it below half: re-verified.
    assert_eq!(
        step(&mut e, [tel("d0", 220, "ok", false, 1)]),
        vec![
            ev("d0", All, Watch, Normal, 3, 220, "reverified"),
            ev("d0", HighRisk, Watch, Normal, 4, 220, "reverified")
        ]
    );
}

/// A pact whose only clause blocks `c*` agents on a `block` flag, with the given fail mode.
fn blocking_pact(id: &str, fail_mode: &str) -> Pact {
    let yaml = format!(
        r#"
pact: {id}
version: 1
applies_to: {{ agents: ["c*"] }}
fail_mode: {fail_mode}
clauses:
  - id: blocks
    metric: {{ kind: bernoulli, value: attributes.flag == "block" }}
    test: {{ kind: limit, zero_tolerance: true }}
    severity: high
    consequence: block
"#
    );
    parse_pact(&yaml, &format!("{id}.yaml")).expect("valid pact")
}

#[test]
fn when_two_pacts_drive_a_capped_block_the_stricter_fail_mode_applies_in_either_order() {
    for order in [["lenient", "strict"], ["strict", "lenient"]] {
        let pacts = order.map(|id| blocking_pact(id, if id == "strict" { "review" } else { "degrade" }));
        let mut e = Engine::new(engine().cfg, pacts.to_vec());
        step(&mut e, ["c0", "c1", "c2"].map(|a| tel(a, 0, "none", false, 1)));
        // The first block is within the cap (1 of 3); the second is not (2 of 3 > 0.3).
        step(&mut e, [tel("c0", 1, "block", false, 1)]);
        let capped = step(&mut e, [tel("c1", 2, "block", false, 1)]);
        assert_eq!(
            capped,
            vec![
                ev("c1", All, Normal, Review, 1, 2, "zero_tolerance_breach"),
                ev("c1", HighRisk, Normal, Review, 2, 2, "zero_tolerance_breach")
            ],
            "{order:?}"
        );
    }
}

/// A critical clause for high-risk actions, in one workflow only.
const CRITICAL_IN_CRIT: &str = r#"
pact: crit
version: 1
applies_to: { agents: ["c*"], workflows: ["crit"] }
clauses:
  - id: kill_switch
    metric: { kind: bernoulli, value: attributes.flag == "block", when: risk == "high" }
    test: { kind: limit, zero_tolerance: true }
    severity: critical
    consequence: block
"#;

fn in_workflow(mut input: Input, workflow: &str) -> Input {
    if let Input::Telemetry(t) = &mut input {
        t.workflow = workflow.into();
    }
    input
}

#[test]
fn only_a_record_that_breaches_a_critical_clause_of_its_current_coverage_skips_the_hold() {
    let cfg = held_engine(30, 5).cfg;
    let mut e = Engine::new(cfg, vec![parse_pact(CRITICAL_IN_CRIT, "crit.yaml").expect("valid pact")]);
    // c0 is first seen in a workflow the pact does not cover (processed once the watermark
    // passes it).
    step(
        &mut e,
        [in_workflow(tel("c0", 0, "none", true, 1), "w"), in_workflow(tel("c9", 40, "none", false, 1), "w")],
    );
    assert!(e.agent("c0").is_some_and(|a| a.pacts.is_empty()));
    // The flag outside the clause's `when` (a low-risk action) waits like any record.
    assert_eq!(step(&mut e, [in_workflow(tel("c0", 41, "block", false, 1), "crit")]), vec![]);
    assert_eq!(e.stats().fast_path, 0);
    // Moved to the covered workflow, a high-risk breach acts on arrival.
    assert_eq!(
        step(&mut e, [in_workflow(tel("c0", 42, "block", true, 1), "crit")]),
        vec![
            ev("c0", All, Normal, Block, 1, 42, "zero_tolerance_breach"),
            ev("c0", HighRisk, Normal, Block, 2, 42, "zero_tolerance_breach")
        ]
    );
    assert_eq!(e.stats().fast_path, 1);
}

#[test]
fn a_restored_buffer_waits_for_its_inputs_read_again_and_then_runs_as_without_the_restart() {
    let inputs: Vec<Input> =
        (0..6).map(|i| tel("a0", i * 5, if i == 3 { "watch" } else { "none" }, false, 1)).collect();
    let mut whole = held_engine(30, 5);
    for (tag, i) in inputs.iter().enumerate() {
        whole.push_tagged(i.clone(), tag as u64);
    }
    whole.push_tagged(tel("a0", 100, "none", false, 1), 6);
    let expected = events(&whole.drain());
    assert_eq!(expected.len(), 2, "the watch breach, once released");
    // Stop with the six inputs held, and restore: they are awaited by their tags.
    let mut first = held_engine(30, 5);
    for (tag, i) in inputs.iter().enumerate() {
        first.push_tagged(i.clone(), tag as u64);
    }
    let agents: Vec<(String, AgentState)> = first.agents().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let meta = first.meta();
    assert!(meta.buffer.is_empty() && meta.by_reference.len() == 6);
    let mut second = Engine::restore(first.config().clone(), first.pacts().to_vec(), meta, agents.clone());
    assert_eq!((second.first_awaited(), second.buffered()), (Some(0), 6));
    assert!(!second.tick(T0 + 3600 * S, 0), "no tick while entries are awaited");
    // A snapshot taken meanwhile still names them.
    assert_eq!(second.meta().by_reference.len(), 6);
    // The source reads from the first awaited position again.
    assert!(!second.awaits(99) && !second.rebuffer(99, inputs[0].clone()), "nothing waits for 99");
    for (tag, i) in inputs.iter().enumerate() {
        assert!(second.awaits(tag as u64));
        assert!(second.rebuffer(tag as u64, i.clone()));
    }
    assert_eq!((second.first_awaited(), second.buffered(), second.drain()), (None, 6, vec![]));
    assert!(!second.awaits(0), "read again once");
    second.push_tagged(tel("a0", 100, "none", false, 1), 6);
    assert_eq!(events(&second.drain()), expected);
    // Entries whose records are gone are given up, and counted.
    let mut third = Engine::restore(first.config().clone(), first.pacts().to_vec(), first.meta(), agents);
    assert!(third.rebuffer(0, inputs[0].clone()));
    assert_eq!((third.abandon_awaited(), third.buffered(), third.first_awaited()), (5, 1, None));
}

const SCOPED: &str = r#"
pact: scoped
version: 1
applies_to: { agents: ["s*"] }
scope:
  on_new_workflow: review
  on_new_tool: watch
  on_first_high_risk: degrade
  warm_up: 3
  reverify: { clean_events: 2 }
clauses:
  - id: flag
    metric: { kind: bernoulli, value: attributes.flag == "bad" }
    test: { kind: limit, zero_tolerance: true }
    severity: medium
    consequence: watch
    recovery: { clean_events: 2, min_dwell: 1m }
"#;

/// `tel` in workflow `workflow`, calling `tools`.
fn scoped(agent: &str, at_s: i64, flag: &str, high_risk: bool, workflow: &str, tools: &[&str]) -> Input {
    let mut input = in_workflow(tel(agent, at_s, flag, high_risk, 1), workflow);
    if let Input::Telemetry(t) = &mut input {
        t.tool_calls = tools.iter().map(|t| (*t).into()).collect();
    }
    input
}

#[test]
fn a_new_tool_after_the_warm_up_holds_the_agent_until_its_clauses_reverify_on_calls_to_it() {
    let mut e = engine_with(SCOPED, "scoped.yaml");
    // The warm-up learns the workflow and the tools; nothing triggers.
    let warm = [
        scoped("s1", 0, "ok", false, "w", &["search"]),
        scoped("s1", 1, "ok", false, "w", &["fetch"]),
        scoped("s1", 2, "ok", false, "w", &[]),
    ];
    assert_eq!(step(&mut e, warm), vec![]);
    assert_eq!(step(&mut e, [scoped("s1", 3, "ok", false, "w", &["search", "fetch"])]), vec![]);
    // A new tool: watch, announced with its own code.
    assert_eq!(
        step(&mut e, [scoped("s1", 4, "ok", false, "w", &["search", "transfer"])]),
        vec![
            ev("s1", All, Normal, Watch, 1, 4, "scope_new_tool"),
            ev("s1", HighRisk, Normal, Watch, 2, 4, "scope_new_tool")
        ]
    );
    assert_eq!(e.stats().scope_triggers.get("new_tool"), Some(&1));
    // Traffic outside the new scope re-verifies nothing, however clean.
    let outside: Vec<Input> = (5..15).map(|t| scoped("s1", t, "ok", false, "w", &["search"])).collect();
    assert_eq!(step(&mut e, outside), vec![]);
    let snap = crate::model::router_view::AgentSnapshot::of(&e, "s1").expect("snapshot");
    let held = &snap.scope_changes;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].kind.as_str(), held[0].value.as_str(), held[0].lane),
        ("new_tool", "transfer", Watch)
    );
    assert_eq!(held[0].clean_events.get("flag"), Some(&1), "the triggering call counted");
    // The triggering call was the first clean observation from the new scope; an alarm on
    // the next call resets the count (and escalates as any breach does: already at watch).
    let breach = step(&mut e, [scoped("s1", 15, "bad", false, "w", &["transfer"])]);
    assert_eq!(breach, vec![], "already at watch: {breach:?}");
    assert_eq!(step(&mut e, [scoped("s1", 16, "ok", false, "w", &["transfer"])]), vec![]);
    // The second clean call after the alarm re-verifies the scope; the breach's own dwell
    // (1 min) still holds the clause at watch, so the release is announced at watch.
    assert_eq!(
        step(&mut e, [scoped("s1", 17, "ok", false, "w", &["transfer"])]),
        vec![ev("s1", All, Watch, Watch, 3, 17, "scope_reverified")]
    );
    // The agent's snapshot shows what holds it and how far re-verification got.
    let snap = crate::model::router_view::AgentSnapshot::of(&e, "s1").expect("snapshot");
    assert!(snap.scope_changes.is_empty(), "released: {:?}", snap.scope_changes);
    let a = e.agent("s1").expect("agent");
    let st = a.scope.as_ref().expect("scope state");
    assert!(st.pending.is_empty() && st.tools.contains("transfer"), "{st:?}");
    // Verified now: calling it again triggers nothing; the clause steps down after its dwell.
    assert_eq!(
        step(&mut e, [scoped("s1", 80, "ok", false, "w", &["transfer"])]),
        vec![
            ev("s1", All, Watch, Normal, 4, 80, "reverified"),
            ev("s1", HighRisk, Watch, Normal, 5, 80, "reverified")
        ]
    );
}

#[test]
fn a_new_workflow_and_a_first_high_risk_action_hold_until_reverified_each_in_its_own_scope() {
    let mut e = engine_with(SCOPED, "scoped.yaml");
    let warm: Vec<Input> = (0..3).map(|t| scoped("s1", t, "ok", false, "w", &[])).collect();
    assert_eq!(step(&mut e, warm), vec![]);
    // Both at once: a high-risk action in a new workflow; the strictest lane holds, and the
    // trigger that moved no lane is announced too.
    let out = step(&mut e, [scoped("s1", 3, "ok", true, "w2", &[])]);
    assert_eq!(
        out,
        vec![
            ev("s1", All, Normal, Review, 1, 3, "scope_new_workflow"),
            ev("s1", HighRisk, Normal, Review, 2, 3, "scope_new_workflow"),
            ev("s1", All, Review, Review, 3, 3, "scope_first_high_risk"),
        ]
    );
    assert_eq!(e.stats().scope_triggers.len(), 2, "{:?}", e.stats().scope_triggers);
    // The triggering event is the first clean observation from both new scopes. One more
    // clean high-risk action, in the old workflow, re-verifies high-risk actions, not w2.
    let out = step(&mut e, [scoped("s1", 4, "ok", true, "w", &[])]);
    assert_eq!(out, vec![ev("s1", All, Review, Review, 4, 4, "scope_reverified")]);
    // A low-risk event in the old workflow counts for neither.
    assert_eq!(step(&mut e, [scoped("s1", 5, "ok", false, "w", &[])]), vec![]);
    // One more clean event in w2 releases the agent.
    let out = step(&mut e, [scoped("s1", 6, "ok", false, "w2", &[])]);
    assert_eq!(
        out,
        vec![
            ev("s1", All, Review, Normal, 5, 6, "scope_reverified"),
            ev("s1", HighRisk, Review, Normal, 6, 6, "scope_reverified")
        ]
    );
    // Each trigger and release is a decision in the history.
    let st = e.agent("s1").and_then(|a| a.scope.as_ref()).expect("scope state");
    assert!(st.high_risk && st.workflows.contains("w2") && st.pending.is_empty());
}

#[test]
fn a_pact_may_hold_only_high_risk_actions_and_scope_rules_are_validated_with_their_place() {
    let high_only = SCOPED.replace("warm_up: 3", "warm_up: 3\n  holds: high_risk");
    let mut e = engine_with(&high_only, "scoped.yaml");
    let warm: Vec<Input> = (0..3).map(|t| scoped("s1", t, "ok", false, "w", &[])).collect();
    assert_eq!(step(&mut e, warm), vec![]);
    assert_eq!(
        step(&mut e, [scoped("s1", 3, "ok", false, "w", &["new"])]),
        vec![ev("s1", HighRisk, Normal, Watch, 1, 3, "scope_new_tool")]
    );
    // No trigger during the warm-up, for a workflow or a high-risk action either.
    let mut e = engine_with(SCOPED, "scoped.yaml");
    let warm = [scoped("s2", 0, "ok", false, "w", &[]), scoped("s2", 1, "ok", true, "w3", &["t"])];
    assert_eq!(step(&mut e, warm), vec![]);
    let block = SCOPED.replace("on_new_tool: watch", "on_new_tool: block");
    let err = parse_pact(&block, "s.yaml").unwrap_err();
    assert_eq!((err.line, err.column), (5, 1), "{err}");
    assert!(err.message.contains("`on_new_tool` must be `watch`, `degrade` or `review`"), "{err}");
    let none = SCOPED.replace("reverify: { clean_events: 2 }", "reverify: { clean_events: 0 }");
    assert!(parse_pact(&none, "s.yaml").unwrap_err().message.contains("clean_events` must be at least 1"));
    let empty = "pact: x\nversion: 1\napplies_to: { agents: [\"*\"] }\nscope: { warm_up: 5 }\nclauses:\n  - id: c\n    metric: { kind: bernoulli, value: pii_detected }\n    test: { kind: limit, zero_tolerance: true }\n    severity: low\n    consequence: watch\n";
    assert!(parse_pact(empty, "s.yaml").unwrap_err().message.contains("names no trigger"));
}

use crate::model::pact_change::{PactChange, PactMode};

fn change(id: &str, mode: PactMode, at_s: i64, document: Option<&str>) -> Input {
    Input::from(PactChange {
        change_id: id.into(),
        mode,
        pact_id: "recovery".into(),
        document: document.map(String::from),
        principal: "alice@trust".into(),
        reason: "tighten".into(),
        ticket: "CHG-1".into(),
        issued_at: T0 + at_s * S,
        channel: "test".into(),
    })
}

/// DRIFT_RECOVERY's version 2: `flag_rate` unchanged, plus a clause of its own.
fn recovery_v2() -> String {
    DRIFT_RECOVERY.replace("version: 1", "version: 2")
        + r#"  - id: blocked_flag
    metric: { kind: bernoulli, value: attributes.flag == "b" }
    test: { kind: limit, zero_tolerance: true }
    severity: high
    consequence: degrade
"#
}

/// `n` events of agent `d1` from second `from`: flag `x` one in ten, one in two from second
/// `drift_at` on.
fn drift_run(from: i64, n: i64, drift_at: i64) -> Vec<Input> {
    (from..from + n)
        .map(|t| {
            let x = if t >= drift_at { t % 2 == 0 } else { t % 10 == 0 };
            tel("d1", t, if x { "x" } else { "o" }, false, 1)
        })
        .collect()
}

fn history_kinds(out: &[Output]) -> Vec<RecordKind> {
    out.iter().filter_map(|o| if let Output::History(r) = o { Some(r.kind) } else { None }).collect()
}

fn alarm_record(out: &[Output]) -> Option<String> {
    enforcements(out).into_iter().find(|e| e.reason.code == "drift_verified").map(|e| e.causation.id.clone())
}

#[test]
fn an_invalid_pact_change_is_refused_with_its_place_recorded_and_the_version_in_force_stays() {
    let mut e = engine_with(DRIFT_RECOVERY, "recovery.yaml");
    let bad =
        DRIFT_RECOVERY.replace("version: 1", "version: 2").replace("severity: medium", "severity: urgent");
    let out = outputs(&mut e, [tel("d1", 0, "o", false, 1), change("c1", PactMode::Enforce, 1, Some(&bad))]);
    let refused: Vec<_> = out
        .iter()
        .filter_map(|o| if let Output::History(r) = o { Some(r) } else { None })
        .filter(|r| r.kind == RecordKind::PactRefused)
        .collect();
    assert_eq!(refused.len(), 1);
    let err = refused[0].detail["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("invalid pact: recovery.yaml:9:"), "{err}");
    assert_eq!(refused[0].detail["change"]["principal"], "alice@trust");
    assert_eq!(e.pact_versions()[0].active.as_ref().map(|v| v.version), Some(1));
    // Nothing to promote or roll back: refused as conflicts, recorded too.
    let out = outputs(
        &mut e,
        [change("c2", PactMode::Promote, 2, None), change("c3", PactMode::Rollback, 3, None)],
    );
    assert_eq!(history_kinds(&out), [RecordKind::PactRefused, RecordKind::PactRefused]);
    assert_eq!(e.stats().pact_changes_refused, 3);
    // A version number reused with another text is refused.
    let v1_changed = DRIFT_RECOVERY.replace("clean_events: 4", "clean_events: 5");
    let out = outputs(&mut e, [change("c4", PactMode::Shadow, 4, Some(&v1_changed))]);
    let rec = out.iter().find_map(|o| if let Output::History(r) = o { Some(r) } else { None });
    assert!(rec.is_some_and(|r| r.detail["error"].as_str().unwrap_or_default().contains("already published")));
}

#[test]
fn a_shadow_version_judges_beside_the_active_one_and_sends_nothing_to_routers() {
    let mut e = engine_with(DRIFT_RECOVERY, "recovery.yaml");
    let v2 = recovery_v2();
    let mut inputs = vec![tel("d1", 0, "o", false, 1), change("s1", PactMode::Shadow, 1, Some(&v2))];
    inputs.push(tel("d1", 2, "b", false, 1));
    let out = outputs(&mut e, inputs);
    assert_eq!(events(&out), vec![], "the shadow's breach reaches no router");
    let shadow: Vec<_> = out
        .iter()
        .filter_map(|o| if let Output::History(r) = o { Some(r) } else { None })
        .filter(|r| r.kind == RecordKind::ShadowDecision)
        .collect();
    assert_eq!(shadow.len(), 2, "both scopes would have moved");
    assert_eq!(
        (&shadow[0].detail["lane_to"], &shadow[0].detail["enforced"], shadow[0].pact_version),
        (&serde_json::json!("degrade"), &serde_json::json!(false), Some(2))
    );
    let v = &e.pact_versions()[0];
    assert_eq!(v.active.as_ref().map(|a| (a.version, a.events)), Some((1, 0)));
    assert_eq!(v.shadow.as_ref().map(|a| (a.version, a.events)), Some((2, 2)));
    assert_eq!(
        v.shadow.as_ref().and_then(|a| a.activation.as_ref()).map(|a| a.principal.as_str()),
        Some("alice@trust")
    );
    assert_eq!(e.agent("d1").map(|a| a.published), Some(ByScope::both(Normal)));
    let snap = crate::model::router_view::AgentSnapshot::of(&e, "d1").expect("snapshot");
    let shadowed: Vec<(u32, bool, Lane)> =
        snap.clauses.iter().map(|c| (c.pact_version, c.shadow, c.demand)).collect();
    assert!(
        shadowed.contains(&(2, true, Degrade)) && shadowed.iter().all(|(v, s, _)| (*v == 2) == *s),
        "{shadowed:?}"
    );
    // Rolling back discards the shadow and its states.
    let out = outputs(&mut e, [change("r1", PactMode::Rollback, 3, None)]);
    assert_eq!(history_kinds(&out), [RecordKind::PactRolledBack]);
    assert!(e.pact_versions()[0].shadow.is_none());
    assert!(e.agent("d1").is_some_and(|a| a.clauses.keys().all(|k| k.0 == 0) && a.shadow.is_empty()));
}

#[test]
fn a_promotion_keeps_unchanged_clauses_state_so_their_alarm_lands_on_the_same_record() {
    let v2 = recovery_v2();
    let plain = {
        let mut e = engine_with(DRIFT_RECOVERY, "recovery.yaml");
        outputs(&mut e, drift_run(0, 400, 300))
    };
    let mut e = engine_with(DRIFT_RECOVERY, "recovery.yaml");
    let mut inputs = drift_run(0, 250, 300);
    inputs.push(change("s1", PactMode::Shadow, 250, Some(&v2)));
    inputs.extend(drift_run(250, 10, 300));
    inputs.push(change("p1", PactMode::Promote, 260, None));
    inputs.extend(drift_run(260, 140, 300));
    let reloaded = outputs(&mut e, inputs);
    assert!(alarm_record(&plain).is_some(), "the drift is caught");
    assert_eq!(alarm_record(&reloaded), alarm_record(&plain), "same record with and without the reload");
    let promoted = reloaded
        .iter()
        .find_map(|o| {
            if let Output::History(r) = o {
                Some(r).filter(|r| r.kind == RecordKind::PactPromoted)
            } else {
                None
            }
        })
        .expect("promotion recorded");
    assert_eq!(promoted.detail["state_kept"], serde_json::json!(["flag_rate"]));
    assert_eq!(promoted.detail["change"]["principal"], "alice@trust");
    let v = &e.pact_versions()[0];
    assert_eq!((v.active.as_ref().map(|a| a.version), v.previous.clone()), (Some(2), vec![1]));
    // Rollback returns to version 1; the unchanged clause's state carries back too.
    let out = outputs(&mut e, [change("r1", PactMode::Rollback, 500, None)]);
    assert_eq!(history_kinds(&out).first(), Some(&RecordKind::PactRolledBack));
    let v = &e.pact_versions()[0];
    assert_eq!((v.active.as_ref().map(|a| a.version), v.previous.clone()), (Some(1), vec![]));
    assert!(e.agent("d1").is_some_and(|a| a.clauses.keys().all(|k| e.pacts()[k.0 as usize].version() == 1)));
}

#[test]
fn an_enforced_change_that_drops_a_demanding_clause_moves_the_lane_citing_the_change() {
    let v2 = recovery_v2();
    let mut e = engine_with(&v2, "recovery.yaml");
    let out = step(&mut e, [tel("d1", 0, "b", false, 1)]);
    assert_eq!(out.len(), 2, "degraded: {out:?}");
    let out = outputs(
        &mut e,
        [change("c1", PactMode::Enforce, 1, Some(&DRIFT_RECOVERY.replace("version: 1", "version: 3")))],
    );
    // The change's record comes first, then the decisions it caused.
    assert_eq!(history_kinds(&out), [RecordKind::PactActivated, RecordKind::Decision, RecordKind::Decision]);
    let out = events(&out);
    assert_eq!(
        out,
        vec![
            ev("d1", All, Degrade, Normal, 3, 1, "pact_activated"),
            ev("d1", HighRisk, Degrade, Normal, 4, 1, "pact_activated")
        ]
    );
    // A retry of the same change id is not applied twice.
    let out = outputs(
        &mut e,
        [change("c1", PactMode::Enforce, 2, Some(&DRIFT_RECOVERY.replace("version: 1", "version: 3")))],
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_restore_after_an_activation_keeps_the_activated_version_and_runs_as_without_the_restart() {
    let v2 = recovery_v2();
    let mut inputs = drift_run(0, 100, 10_000);
    inputs.push(change("s1", PactMode::Shadow, 100, Some(&v2)));
    inputs.extend(drift_run(100, 20, 10_000));
    inputs.push(change("p1", PactMode::Promote, 120, None));
    inputs.extend(drift_run(120, 200, 250));
    inputs.push(tel("d1", 400, "b", false, 1));
    let whole = {
        let mut e = engine_with(DRIFT_RECOVERY, "recovery.yaml");
        outputs(&mut e, inputs.clone())
    };
    for cut in [101, 122, 200] {
        let mut e = engine_with(DRIFT_RECOVERY, "recovery.yaml");
        let mut out = outputs(&mut e, inputs[..cut].iter().cloned());
        let agents: Vec<(String, AgentState)> = e.agents().map(|(k, v)| (k.to_string(), v.clone())).collect();
        // Restarted with the files as they were: version 1 only.
        let file = vec![parse_pact(DRIFT_RECOVERY, "recovery.yaml").expect("valid")];
        let mut r = Engine::restore(e.config().clone(), file, e.meta(), agents);
        out.extend(outputs(&mut r, inputs[cut..].iter().cloned()));
        assert_eq!(out, whole, "restored after {cut} inputs");
    }
    assert!(
        enforcements(&whole).iter().any(|e| e.clause_id.as_deref() == Some("blocked_flag")),
        "version 2 enforced"
    );
}

#[test]
fn a_scope_change_is_released_when_its_pact_no_longer_covers_the_agent() {
    let only_w = SCOPED
        .replace("applies_to: { agents: [\"s*\"] }", "applies_to: { agents: [\"s*\"], workflows: [w] }");
    let mut e = engine_with(&only_w, "scoped.yaml");
    let warm: Vec<Input> = (0..3).map(|t| scoped("s1", t, "ok", false, "w", &[])).collect();
    assert_eq!(step(&mut e, warm), vec![]);
    assert_eq!(
        step(&mut e, [scoped("s1", 3, "ok", false, "w", &["new"])]),
        vec![
            ev("s1", All, Normal, Watch, 1, 3, "scope_new_tool"),
            ev("s1", HighRisk, Normal, Watch, 2, 3, "scope_new_tool")
        ]
    );
    // Moved to a workflow the pact does not cover: the change could never re-verify there.
    assert_eq!(
        step(&mut e, [scoped("s1", 4, "ok", false, "x", &["new"])]),
        vec![
            ev("s1", All, Watch, Normal, 3, 4, "scope_released"),
            ev("s1", HighRisk, Watch, Normal, 4, 4, "scope_released")
        ]
    );
    assert!(e.agent("s1").and_then(|a| a.scope.as_ref()).is_some_and(|s| s.pending.is_empty()));
}

#[test]
fn retired_telemetry_comes_back_in_processing_order_and_changes_no_output() {
    // Breaches, a model change and clean events, some held by the watermark.
    let inputs: Vec<Input> = (0..40)
        .map(|i| {
            let flag = ["ok", "watch", "ok", "settle", "ok", "degrade"][i % 6];
            tel(["a0", "a1"][i % 2], i as i64, flag, i % 5 == 0, 1 + (i / 20) as u32)
        })
        .collect();
    let ids = |inputs: &[Input]| -> Vec<String> {
        inputs
            .iter()
            .map(|i| match i {
                Input::Telemetry(t) => t.event_id.to_string(),
                _ => String::new(),
            })
            .collect()
    };
    let mut plain = held_engine(2, 0);
    let mut expected = outputs(&mut plain, inputs.clone());
    plain.flush();
    expected.extend(plain.drain());
    assert!(!events(&expected).is_empty(), "the inputs move lanes");
    let mut kept = held_engine(2, 0);
    assert_eq!(kept.retire_into(Some(Vec::new())), None, "dropped by default");
    let mut got = Vec::new();
    let mut retired = Vec::new();
    for input in inputs.clone() {
        kept.push(input);
        got.extend(kept.drain());
        // Taken between inputs, as a pipeline does between batches.
        retired.extend(kept.retire_into(Some(Vec::new())).unwrap_or_default());
    }
    kept.flush();
    got.extend(kept.drain());
    retired.extend(kept.retire_into(None).unwrap_or_default());
    assert_eq!(got, expected, "keeping retired telemetry changes no output");
    // Every record comes back once, in event-time order, which here is input order.
    let back: Vec<String> = retired.iter().map(|t| t.event_id.to_string()).collect();
    assert_eq!(back, ids(&inputs));
    // Switched off, nothing is kept.
    kept.push(tel("a0", 100, "ok", false, 2));
    kept.flush();
    assert_eq!(kept.retire_into(None), None);
}
