//! Durable state on the real broker (tansu): a 200k-record scenario with several drift
//! incidents, run once without interruption and once with the engine SIGKILLed at five
//! points (fixed seed) and restarted each time. After router-style dedup by `seq`, the
//! effects and every agent's final lanes must be identical.

#[path = "support/kafka.rs"]
mod kafka;

use driftgate::enforcement::EnforcementEvent;
use driftgate::telemetry::{Citations, Model, Outcome, Risk, Telemetry};
use kafka::{produce, rand_suffix, wait_for, Broker, Engine};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T0: i64 = 1_772_409_600_000_000; // 2026-03-02T00:00:00Z, µs
const AGENTS: usize = 40;
const PER_AGENT: u64 = 5_000;
const PARTITIONS: i32 = 2;

const PACTS: &str = r#"
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
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 40 agents × 5,000 events, 10 s apart. Incidents: five agents' verified-citation rate
/// falls from 0.95 to 0.55 at staggered points; one agent leaks PII once.
fn scenario() -> Vec<Telemetry> {
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
                event_id: format!("{agent}-{i}"),
                agent_id: agent,
                workflow: "finance".into(),
                model: Model { provider: "acme".into(), name: "ledger".into(), version: "v1".into() },
                occurred_at: T0 + (i as i64 * 10 + a as i64 % 10) * 1_000_000,
                risk: Risk::Low,
                outcome: Outcome::Ok,
                latency_ms: Some(700.0),
                citations: Some(Citations { total: 2, verified: (rng.unit() < p) as u32 }),
                pii_detected: Some(a == 21 && i == 3_000),
                tool_calls: vec![],
                attributes: BTreeMap::new(),
            });
        }
    }
    out
}

struct Run {
    enforcement: String,
    snapshot: String,
    history: String,
    dlq: String,
    changelog: String,
}

fn run_topics(b: &Broker, name: &str) -> Run {
    let s = format!("{name}-{}", rand_suffix());
    let r = Run {
        enforcement: format!("enforcement-{s}"),
        snapshot: format!("snapshot-{s}"),
        history: format!("history-{s}"),
        dlq: format!("dlq-{s}"),
        changelog: format!("changelog-{s}"),
    };
    b.create_topics(&[(&r.enforcement, 1, false), (&r.snapshot, 1, true), (&r.history, PARTITIONS, false), (&r.dlq, 1, false), (&r.changelog, PARTITIONS, true)]);
    r
}

fn config(dir: &Path, b: &Broker, input: &str, r: &Run, group: &str) -> PathBuf {
    std::fs::write(dir.join("pacts.yaml"), PACTS).unwrap();
    // Small fetches slow the engine to ~10k records/s, so that the kills land mid-stream.
    let text = format!(
        r#"
pacts = ["pacts.yaml"]
[kafka]
brokers = "{}"
group_id = "{group}"
input_topics = ["{input}"]
format = "json"
commit_interval = "200ms"
startup_timeout = "10s"
[kafka.topics]
enforcement = "{}"
snapshot = "{}"
history = "{}"
dead_letter = "{}"
changelog = "{}"
[kafka.properties]
"session.timeout.ms" = "6000"
"max.partition.fetch.bytes" = "65536"
"fetch.wait.max.ms" = "20"
[http]
listen = ""
"#,
        b.bootstrap(),
        r.enforcement,
        r.snapshot,
        r.history,
        r.dlq,
        r.changelog
    );
    let p = dir.join(format!("{group}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn committed(b: &Broker, group: &str, input: &str) -> i64 {
    b.committed(group, input, PARTITIONS).iter().map(|c| c.unwrap_or(0)).sum()
}

/// What a router applies: the first event of each `(agent, seq)`; duplicates must be
/// byte-identical. Returns the applied events and the number of duplicates dropped.
fn dedup(b: &Broker, topic: &str) -> (BTreeMap<(String, u64), String>, usize) {
    let mut applied = BTreeMap::new();
    let mut dups = 0;
    for r in b.read_all(topic) {
        let text = String::from_utf8(r.value.unwrap()).unwrap();
        let e: EnforcementEvent = serde_json::from_str(&text).unwrap();
        match applied.get(&(e.agent_id.clone(), e.seq)) {
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

/// Final lanes `(all, high_risk)` per agent, from the applied events.
fn final_lanes(applied: &BTreeMap<(String, u64), String>) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for text in applied.values() {
        let e: EnforcementEvent = serde_json::from_str(text).unwrap();
        out.insert((e.agent_id.clone(), e.scope.as_str().to_string()), e.lane_to.as_str().to_string());
    }
    out
}

#[test]
fn five_sigkills_give_the_same_effects_as_an_uninterrupted_run() {
    let b = Broker::start();
    let input = format!("telemetry-{}", rand_suffix());
    b.create_topics(&[(&input, PARTITIONS, false)]);
    let records: Vec<_> = scenario()
        .iter()
        .map(|e| {
            let part = (e.agent_id.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32;
            (e.agent_id.clone(), serde_json::to_vec(e).unwrap(), e.occurred_at / 1000, part)
        })
        .collect();
    let total = records.len() as i64;
    assert_eq!(total, 200_000);
    produce(&b.producer(), &input, &records);
    let dir = tempfile::tempdir().unwrap();

    // Uninterrupted.
    let clean = run_topics(&b, "clean");
    let group = format!("clean-{}", rand_suffix());
    let engine = Engine::start(&config(dir.path(), &b, &input, &clean, &group));
    wait_for(300, "the uninterrupted run to finish", || (committed(&b, &group, &input) >= total).then_some(()));
    assert!(engine.stop().success());
    let (want, clean_dups) = dedup(&b, &clean.enforcement);
    assert_eq!(clean_dups, 0, "an uninterrupted run emits no duplicates");
    let incidents = want.values().filter(|t| t.contains("\"drift_verified\"") || t.contains("\"zero_tolerance_breach\"")).count();
    assert!(incidents >= 6 * 2, "the scenario's incidents were detected (two scopes each): {incidents}");

    // The same records on a second input topic, fed in stages: at five fixed-seed points
    // the engine has committed everything so far, the next records arrive, and it is
    // SIGKILLed a fixed-seed moment later, in the middle of them. tansu 0.6 never expires a
    // killed member's session, so each restart joins a fresh group; start position and
    // state come from the changelog either way.
    let input2 = format!("telemetry-crash-{}", rand_suffix());
    b.create_topics(&[(&input2, PARTITIONS, false)]);
    let crash = run_topics(&b, "crash");
    let mut rng = Mix(7);
    let mut points: Vec<usize> = (0..5).map(|_| (total as f64 * (0.05 + 0.85 * rng.unit())) as usize).collect();
    points.sort();
    let producer = b.producer();
    let mut produced = 0;
    let mut restored = 0;
    for (i, point) in points.iter().enumerate() {
        let upto = (*point).max(produced);
        produce(&producer, &input2, &records[produced..upto]);
        produced = upto;
        let group = format!("crash-{i}-{}", rand_suffix());
        let mut engine = Engine::start(&config(dir.path(), &b, &input2, &crash, &group));
        wait_for(300, &format!("everything up to {produced} committed"), || (committed(&b, &group, &input2) >= produced as i64).then_some(()));
        if engine.log_text().contains("state restored") {
            restored += 1;
        }
        let burst = (produced + 10_000).min(records.len());
        produce(&producer, &input2, &records[produced..burst]);
        produced = burst;
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 400));
        engine.child.kill().unwrap();
        engine.child.wait().unwrap();
        drop(engine);
    }
    produce(&producer, &input2, &records[produced..]);
    let group = format!("crash-final-{}", rand_suffix());
    let engine = Engine::start(&config(dir.path(), &b, &input2, &crash, &group));
    wait_for(300, "the last restart to finish", || (committed(&b, &group, &input2) >= total).then_some(()));
    let log = engine.log_text();
    assert!(log.contains("state restored"), "{log}");
    assert!(engine.stop().success());
    assert_eq!(restored, 4, "every restart restored its state");

    let (got, dups) = dedup(&b, &crash.enforcement);
    assert_eq!(got.len(), want.len(), "{dups} duplicates dropped");
    assert_eq!(got, want, "after dedup by seq, the effects are identical ({dups} duplicates dropped)");
    assert_eq!(final_lanes(&got), final_lanes(&want));
    eprintln!("crash equivalence: {} effects, {dups} duplicates dropped by seq over 5 SIGKILLs at {points:?}", got.len());
}
