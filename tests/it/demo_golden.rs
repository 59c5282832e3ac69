//! The demo is deterministic: its enforcement events match a golden file, and it shows what
//! the product promises (drift degraded, PII blocked, stale evidence flagged, override
//! expiry re-evaluated, no healthy agent touched). Regenerate the golden file with
//! `UPDATE_GOLDEN=1 cargo test --profile test-release --test it -- demo_golden`.

use driftgate::cli::demo::{self, INCIDENT_AGENTS};
use driftgate_core::model::lane::{Lane, Scope};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/demo_events.jsonl");

#[test]
fn demo_events_match_golden_file() {
    let run = demo::run();
    let got: String = run.events.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN).expect("golden file exists (UPDATE_GOLDEN=1 to create)");
    assert_eq!(got, want, "demo events differ from the golden file");
}

#[test]
fn demo_shows_the_incidents_and_leaves_healthy_agents_alone() {
    let run = demo::run();
    let last = |agent: &str, scope: Scope| {
        run.events.iter().rev().find(|e| e.agent_id == agent && e.scope == scope).map(|e| e.lane_to)
    };
    assert_eq!(last("fin-07", Scope::All), Some(Lane::Degrade), "citation drift agent degraded");
    assert_eq!(last("sup-04", Scope::All), Some(Lane::Block), "PII agent blocked");
    assert_eq!(
        last("res-11", Scope::HighRisk),
        Some(Lane::Review),
        "silent agent's high-risk actions in review"
    );
    assert_eq!(last("res-11", Scope::All), None, "staleness does not touch low-risk actions");
    assert_eq!(last("fin-03", Scope::All), Some(Lane::Normal), "override expired and was re-evaluated");
    let healthy: Vec<_> =
        run.events.iter().filter(|e| !INCIDENT_AGENTS.contains(&e.agent_id.as_str())).collect();
    assert!(healthy.is_empty(), "healthy agents changed lane: {healthy:?}");
    // The drift was caught on the new model's traffic, with auditable evidence.
    let d = run.events.iter().find(|e| e.agent_id == "fin-07" && e.reason.code == "drift_verified").unwrap();
    let det = d.detection.as_ref().unwrap();
    assert!(d.effective_at > demo::MODEL_UPDATE_AT);
    assert!(det.statistic >= det.threshold);
    assert_eq!(det.false_alarm_rate, Some(1e-6));
    assert!(
        det.change_point_at >= demo::MODEL_UPDATE_AT - 3_600_000_000,
        "change point estimated near the update"
    );
    // The PII block is immediate: on the first PII event, which is sup-04's first event at or
    // after PII_AT.
    let first_pii = run.telemetry_times["sup-04"].iter().copied().find(|t| *t >= demo::PII_AT).unwrap();
    let b = run.events.iter().find(|e| e.agent_id == "sup-04" && e.lane_to == Lane::Block).unwrap();
    assert_eq!(
        b.effective_at, first_pii,
        "blocked at {} µs, the PII event was at {first_pii}",
        b.effective_at
    );
    assert_eq!((b.causation.kind.as_str(), b.causation.at), ("telemetry", first_pii));
    // The override holds fin-03 in watch from its issue time and expires at exactly its expiry.
    let fin03: Vec<_> =
        run.events.iter().filter(|e| e.agent_id == "fin-03" && e.scope == Scope::All).collect();
    let applied = fin03.iter().find(|e| e.reason.code == "override_applied").unwrap();
    assert_eq!(
        (applied.effective_at, applied.lane_from, applied.lane_to, applied.expires_at),
        (demo::OVERRIDE_FROM, Lane::Normal, Lane::Watch, Some(demo::OVERRIDE_UNTIL))
    );
    let expired = fin03.iter().find(|e| e.reason.code == "override_expired").unwrap();
    assert_eq!(
        (expired.effective_at, expired.lane_from, expired.lane_to),
        (demo::OVERRIDE_UNTIL, Lane::Watch, Lane::Normal)
    );
    // The first call to the new tool holds sup-09 in review at once; it is released, with
    // its own reason code, on the call that brings the pact's clause to 50 clean calls.
    let calls = &run.new_tool_calls;
    let sup09: Vec<_> =
        run.events.iter().filter(|e| e.agent_id == "sup-09" && e.scope == Scope::All).collect();
    let held = sup09.iter().find(|e| e.reason.code == "scope_new_tool").expect("held");
    assert_eq!((held.effective_at, held.lane_from, held.lane_to), (calls[0], Lane::Normal, Lane::Review));
    assert!(calls[0] >= demo::NEW_TOOL_AT, "no call before the incident");
    let released = sup09.iter().find(|e| e.reason.code == "scope_reverified").expect("released");
    assert_eq!(
        (released.effective_at, released.lane_to),
        (calls[49], Lane::Normal),
        "the 50th call releases it"
    );
    assert_eq!(sup09.len(), 2, "{sup09:?}");
    assert_eq!(run.engine.stats().scope_triggers.get("new_tool"), Some(&1), "one trigger in the fleet");
    // The report says so too.
    let report = demo::report(&run);
    assert!(report.contains("False alarms on healthy agents: 0"));
    assert!(report.contains("scope expansion  sup-09  first `refund` call at 11:00:10: review"), "{report}");
}

#[test]
fn demo_history_is_a_valid_chain_with_a_record_per_decision() {
    let run = demo::run();
    let text: String = run.history.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    let (n, _) = driftgate_core::model::history::verify(text.as_bytes()).unwrap();
    assert_eq!(n as usize, run.history.len());
    for e in &run.events {
        assert!(
            run.history
                .iter()
                .any(|r| r.detail.get("event_id").and_then(|v| v.as_str()) == Some(&e.event_id)),
            "no history record for {}",
            e.event_id
        );
    }
}
