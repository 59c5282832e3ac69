//! Bytes of keyed state per agent × clause, by detector kind: the changelog encoding
//! (MessagePack behind a version byte) of one agent after 5,000 events, minus that of an
//! agent with no clauses. `cargo bench -p driftgate --bench state_size`

use driftgate_core::codec::changelog::encode_agent;
use driftgate_core::engine::{Engine, EngineConfig, Input};
use driftgate_core::model::telemetry::{Citations, Model, Outcome, Risk, Telemetry};
use driftgate_core::pact::parse_pact;
use std::collections::BTreeMap;

const KINDS: &[(&str, &str, &str)] = &[
    (
        "auto (bernoulli)",
        "{ kind: bernoulli, value: citations.verified > 0 }",
        "{ kind: drift, detector: auto, false_alarm_rate: 1.0e-6 }",
    ),
    (
        "auto (real)",
        "{ kind: real, value: latency_ms }",
        "{ kind: drift, detector: auto, false_alarm_rate: 1.0e-6 }",
    ),
    (
        "auto (categorical)",
        "{ kind: categorical, value: 'tool_calls[0]' }",
        "{ kind: drift, detector: auto, false_alarm_rate: 1.0e-6 }",
    ),
    (
        "cusum (bernoulli)",
        "{ kind: bernoulli, value: citations.verified > 0 }",
        "{ kind: drift, detector: cusum, p0: 0.95, p1: 0.8, false_alarm_rate: 1.0e-6 }",
    ),
    ("page-hinkley (real)", "{ kind: real, value: latency_ms }", "{ kind: drift, detector: page-hinkley }"),
    ("adwin (real)", "{ kind: real, value: latency_ms }", "{ kind: drift, detector: adwin }"),
    ("ks (real)", "{ kind: real, value: latency_ms }", "{ kind: drift, detector: ks }"),
    (
        "chi2 (categorical)",
        "{ kind: categorical, value: 'tool_calls[0]' }",
        "{ kind: drift, detector: chi2 }",
    ),
    ("psi (real)", "{ kind: real, value: latency_ms }", "{ kind: drift, detector: psi }"),
    (
        "limit: rate",
        "{ kind: bernoulli, value: outcome == \"refused\" }",
        "{ kind: limit, alpha: 1.0e-3, rate: { max: 0.02 } }",
    ),
    (
        "limit: quantile",
        "{ kind: real, value: latency_ms }",
        "{ kind: limit, alpha: 1.0e-3, quantile: { q: 0.95, max: 3000 } }",
    ),
    (
        "limit: zero tolerance",
        "{ kind: bernoulli, value: pii_detected }",
        "{ kind: limit, zero_tolerance: true }",
    ),
];

fn event(i: u64) -> Telemetry {
    let r = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    Telemetry {
        event_id: format!("e-{i}"),
        agent_id: "agent-1".into(),
        workflow: "w".into(),
        model: Model { provider: "p".into(), name: "m".into(), version: "v1".into() },
        occurred_at: 1_772_409_600_000_000 + i as i64 * 10_000_000,
        risk: Risk::Low,
        outcome: if r < 0.01 { Outcome::Refused } else { Outcome::Ok },
        latency_ms: Some(500.0 + 1000.0 * r),
        citations: Some(Citations { total: 1, verified: (r < 0.95) as u32 }),
        pii_detected: Some(false),
        tool_calls: vec![["search", "fetch", "calc", "answer"][(i % 4) as usize].into()],
        attributes: BTreeMap::new(),
    }
}

fn agent_bytes(pact: &str) -> usize {
    let pact = parse_pact(pact, "bench.yaml").unwrap_or_else(|e| panic!("{e}"));
    let mut e = Engine::new(EngineConfig::default(), vec![pact]);
    for i in 0..5_000 {
        e.push(Input::Telemetry(event(i)));
        e.drain();
    }
    e.flush();
    encode_agent(e.agent("agent-1").expect("agent")).len()
}

fn main() {
    let base = agent_bytes("pact: none\nversion: 1\napplies_to: { agents: [\"nobody\"] }\nclauses:\n  - id: c\n    metric: { kind: bernoulli, value: pii_detected }\n    test: { kind: limit, zero_tolerance: true }\n    severity: low\n    consequence: watch\n");
    println!(
        "bytes per agent x clause after 5,000 events (changelog encoding; agent overhead {base} B excluded)"
    );
    for (name, metric, test) in KINDS {
        let pact = format!("pact: p\nversion: 1\napplies_to: {{ agents: [\"*\"] }}\nclauses:\n  - id: c\n    metric: {metric}\n    test: {test}\n    severity: low\n    consequence: watch\n");
        let bytes = agent_bytes(&pact);
        println!("  {name:<24} {:>7} B", bytes.saturating_sub(base));
    }
}
