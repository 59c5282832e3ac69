//! The durable-state scenario shared by the broker tests: 40 agents of a finance fleet,
//! 5,000 events each, with five citation-drift incidents and one PII leak.

use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::telemetry::{Citations, Model, Outcome, Risk, Telemetry};
use std::collections::BTreeMap;

pub const T0: i64 = 1_772_409_600_000_000; // 2026-03-02T00:00:00Z, µs

pub const AGENTS: usize = 40;
pub const PER_AGENT: u64 = 5_000;

pub const PACTS: &str = r#"
pact: citations
version: 1
applies_to: { agents: ["fin-*"] }
clauses:
  - id: verified-citations
    metric: { kind: bernoulli, value: citations.verified > 0, when: citations.total > 0 }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-6, direction: decrease, reference_min: 300, reference_max: 1000 }
    severity: high
    consequence: degrade
  - id: no-pii
    metric: { kind: bernoulli, value: pii_detected }
    test: { kind: limit, zero_tolerance: true }
    severity: critical
    consequence: block
"#;

/// SplitMix64: a fixed-seed stream without an RNG crate.
pub(crate) use crate::support::test_rng::Rng as Mix;

/// 40 agents × 5,000 events, 10 s apart. Incidents: five agents' verified-citation rate
/// falls from 0.95 to 0.55 at staggered points; one agent leaks PII once.
pub fn scenario() -> Vec<Telemetry> {
    let mut rng = Mix(2026);
    let mut out = Vec::with_capacity(AGENTS * PER_AGENT as usize);
    for i in 0..PER_AGENT {
        for a in 0..AGENTS {
            let agent = format!("fin-{a:02}");
            let drift_at = match a {
                3 => Some(1_200),
                11 => Some(2_000),
                17 => Some(2_800),
                26 => Some(3_600),
                34 => Some(4_300),
                _ => None,
            };
            let p = if drift_at.is_some_and(|d| i >= d) { 0.55 } else { 0.95 };
            out.push(Telemetry {
                event_id: format!("{agent}-{i}").into(),
                agent_id: agent.into(),
                workflow: "finance".into(),
                model: Model { provider: "acme".into(), name: "ledger".into(), version: "v1".into() },
                occurred_at: T0 + (i as i64 * 10 + a as i64 % 10) * 1_000_000,
                risk: Risk::Low,
                outcome: Outcome::Ok,
                latency_ms: Some(700.0),
                citations: Some(Citations { total: 2, verified: (rng.unit() < p) as u32 }),
                pii_detected: Some(a == 21 && i == 3_000),
                tool_calls: vec![],
                attributes: Default::default(),
            });
        }
    }
    out
}

pub fn records(partitions: i32) -> Vec<(String, Vec<u8>, i64, i32)> {
    scenario()
        .iter()
        .map(|e| {
            let part = (e.agent_id.bytes().map(u32::from).sum::<u32>() % partitions as u32) as i32;
            (e.agent_id.to_string(), serde_json::to_vec(e).unwrap(), e.occurred_at / 1000, part)
        })
        .collect()
}

/// The effects the pipeline must produce, derived without Kafka: one engine per input
/// partition fed that partition's records in order (records still waiting for the
/// watermark at the end are not flushed, as a running pipeline does not flush them).
pub fn offline_effects(partitions: i32) -> BTreeMap<(String, u64), String> {
    use driftgate_core::engine::{Engine, EngineConfig, Input, Output};
    let pact = driftgate_core::pact::parse_pact(PACTS, "pacts.yaml").expect("the scenario's pact is valid");
    let mut engines: Vec<Engine> =
        (0..partitions).map(|_| Engine::new(EngineConfig::default(), vec![pact.clone()])).collect();
    let mut texts = Vec::new();
    for (offset, (_, value, _, part)) in records(partitions).into_iter().enumerate() {
        let e = &mut engines[part as usize];
        e.push_tagged(
            Input::Telemetry(serde_json::from_slice(&value).expect("scenario JSON")),
            offset as u64,
        );
        for out in e.drain() {
            if let Output::Enforcement(ev) = out {
                texts.push(serde_json::to_string(&ev).expect("serialisable"));
            }
        }
    }
    let (applied, dups) = dedup(texts);
    assert_eq!(dups, 0);
    applied
}

/// What a router applies: the first event of each `(agent, seq)`; duplicates must be
/// byte-identical. Returns the applied events and the number of duplicates dropped.
pub fn dedup(texts: impl IntoIterator<Item = String>) -> (BTreeMap<(String, u64), String>, usize) {
    let mut applied = BTreeMap::new();
    let mut dups = 0;
    for text in texts {
        let e: EnforcementEvent = serde_json::from_str(&text).unwrap();
        match applied.get(&(e.agent_id.to_string(), e.seq)) {
            Some(prev) => {
                assert_eq!(prev, &text, "a duplicate of seq {} for {} is not identical", e.seq, e.agent_id);
                dups += 1;
            }
            None => {
                applied.insert((e.agent_id, e.seq), text);
            }
        }
    }
    (applied, dups)
}

/// Fails naming the first `(agent, seq)` whose event differs, with both texts, so that
/// a difference is diagnosable from the CI log alone.
pub fn assert_same_effects(
    got: &BTreeMap<(String, u64), String>,
    want: &BTreeMap<(String, u64), String>,
    dups: usize,
) {
    let keys: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .take(3)
        .map(|k| format!("{k:?}\n  crash run: {:?}\n  clean run: {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(
        diffs.is_empty(),
        "after dedup by seq ({dups} duplicates dropped) the effects differ; first differences:\n{}",
        diffs.join("\n")
    );
}

/// Final lanes `(all, high_risk)` per agent, from the applied events.
pub fn final_lanes(applied: &BTreeMap<(String, u64), String>) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for text in applied.values() {
        let e: EnforcementEvent = serde_json::from_str(text).unwrap();
        out.insert((e.agent_id.to_string(), e.scope.as_str().to_string()), e.lane_to.as_str().to_string());
    }
    out
}
