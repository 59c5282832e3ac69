//! Durable state on the real broker (tansu): a 200k-record scenario with several drift
//! incidents, run once without interruption and once with the engine SIGKILLed at five
//! points (fixed seed) and restarted each time. After router-style dedup by `seq`, the
//! effects and every agent's final lanes must be identical.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/proxy.rs"]
mod proxy;

use driftgate::enforcement::EnforcementEvent;
use driftgate::telemetry::{Citations, Model, Outcome, Risk, Telemetry};
use kafka::{produce, rand_suffix, wait_for, Broker, Engine};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T0: i64 = 1_772_409_600_000_000; // 2026-03-02T00:00:00Z, µs

/// These tests run one at a time: each drives a broker and up to two engines, and on two
/// cores running them together starves heartbeats into spurious rebalances.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
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
    run_topics_n(b, name, PARTITIONS)
}

fn run_topics_n(b: &Broker, name: &str, partitions: i32) -> Run {
    let s = format!("{name}-{}", rand_suffix());
    let r = Run {
        enforcement: format!("enforcement-{s}"),
        snapshot: format!("snapshot-{s}"),
        history: format!("history-{s}"),
        dlq: format!("dlq-{s}"),
        changelog: format!("changelog-{s}"),
    };
    b.create_topics(&[(&r.enforcement, 1, false), (&r.snapshot, 1, true), (&r.history, partitions, false), (&r.dlq, 1, false), (&r.changelog, partitions, true)]);
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
# tansu 0.6 skips the rest of a batch fetched mid-way (see the option's docs); test
# producers cap batches at 1,000 records.
resume_rewind = 5000
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
    committed_n(b, group, input, PARTITIONS)
}

fn committed_n(b: &Broker, group: &str, input: &str, partitions: i32) -> i64 {
    b.committed(group, input, partitions).iter().map(|c| c.unwrap_or(0)).sum()
}

fn records(partitions: i32) -> Vec<(String, Vec<u8>, i64, i32)> {
    scenario()
        .iter()
        .map(|e| {
            let part = (e.agent_id.bytes().map(u32::from).sum::<u32>() % partitions as u32) as i32;
            (e.agent_id.clone(), serde_json::to_vec(e).unwrap(), e.occurred_at / 1000, part)
        })
        .collect()
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

/// Fails naming the first `(agent, seq)` whose event differs, with both texts, so that
/// a difference is diagnosable from the CI log alone.
fn assert_same_effects(got: &BTreeMap<(String, u64), String>, want: &BTreeMap<(String, u64), String>, dups: usize) {
    let keys: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .take(3)
        .map(|k| format!("{k:?}\n  crash run: {:?}\n  clean run: {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(diffs.is_empty(), "after dedup by seq ({dups} duplicates dropped) the effects differ; first differences:\n{}", diffs.join("\n"));
}

/// Offset gaps an engine logged (the input topic has neither compaction nor transactions,
/// so any gap is a record the broker skipped).
fn no_gaps(e: &Engine) -> usize {
    let log = e.log_text();
    let gaps: Vec<&str> = log.lines().filter(|l| l.contains("offset gap")).collect();
    for g in &gaps {
        eprintln!("{g}");
    }
    gaps.len()
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
    let _serial = serial();
    let b = Broker::start();
    let input = format!("telemetry-{}", rand_suffix());
    b.create_topics(&[(&input, PARTITIONS, false)]);
    let records = records(PARTITIONS);
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
    let mut gaps = 0;
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
        gaps += no_gaps(&engine);
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
    gaps += no_gaps(&engine);
    assert!(engine.stop().success());
    assert_eq!(restored, 4, "every restart restored its state");
    assert_eq!(gaps, 0, "no engine saw an offset gap: the broker delivered every record after each resume");

    let (got, dups) = dedup(&b, &crash.enforcement);
    assert_same_effects(&got, &want, dups);
    assert_eq!(final_lanes(&got), final_lanes(&want));
    eprintln!("crash equivalence: {} effects, {dups} duplicates dropped by seq over 5 SIGKILLs at {points:?}", got.len());
}

/// Two instances in one group on a 4-partition input; one leaves mid-run and the other
/// takes its partitions over with their state restored from the changelog. The effects
/// equal a single instance's. The leaving instance gets SIGTERM: tansu 0.6 never expires a
/// SIGKILLed member's session, so after a SIGKILL its partitions would never be reassigned
/// on this broker (on Kafka they are, after `session.timeout.ms`; the restart path after a
/// SIGKILL is the one tested above).
#[test]
#[ignore = "tansu 0.6 intermittently never completes the rebalance after a member leaves (the survivor's partitions are revoked and never reassigned); run with --ignored"]
fn two_instances_share_the_work_and_a_survivor_takes_over_with_restored_state() {
    let _serial = serial();
    let parts = 4;
    let b = Broker::start();
    let input = format!("telemetry4-{}", rand_suffix());
    b.create_topics(&[(&input, parts, false)]);
    let records = records(parts);
    let total = records.len() as i64;
    let half = records.len() / 2;
    let dir = tempfile::tempdir().unwrap();

    // Reference: one instance.
    produce(&b.producer(), &input, &records);
    let single = run_topics_n(&b, "single", parts);
    let group = format!("single-{}", rand_suffix());
    let engine = Engine::start(&config(dir.path(), &b, &input, &single, &group));
    wait_for(300, "the single instance to finish", || (committed_n(&b, &group, &input, parts) >= total).then_some(()));
    assert!(engine.stop().success());
    let (want, _) = dedup(&b, &single.enforcement);

    // Two instances on a second copy of the input, fed in two halves.
    let input2 = format!("telemetry4b-{}", rand_suffix());
    b.create_topics(&[(&input2, parts, false)]);
    let pair = run_topics_n(&b, "pair", parts);
    let group = format!("pair-{}", rand_suffix());
    let cfg = config(dir.path(), &b, &input2, &pair, &group);
    let cfg_b = dir.path().join("second.toml");
    std::fs::copy(&cfg, &cfg_b).unwrap();
    produce(&b.producer(), &input2, &records[..half]);
    let first = Engine::start(&cfg);
    let second = Engine::start(&cfg_b);
    let owned = |e: &Engine| e.log_text().lines().filter(|l| l.contains("partitions assigned")).last().map(|l| l.contains("total=") && !l.contains("total=0")).unwrap_or(false);
    wait_for(120, "both instances to hold partitions", || (owned(&first) && owned(&second)).then_some(()));
    wait_for(300, "the first half to be committed", || (committed_n(&b, &group, &input2, parts) >= half as i64).then_some(()));
    let log = second.log_text();
    assert!(second.stop().success(), "{log}");
    produce(&b.producer(), &input2, &records[half..]);
    wait_for(300, "the survivor to finish", || (committed_n(&b, &group, &input2, parts) >= total).then_some(()));
    let log = first.log_text();
    assert!(log.contains("state restored"), "the survivor restored the partitions it took over:\n{log}");
    assert!(first.stop().success());

    let (got, dups) = dedup(&b, &pair.enforcement);
    assert_eq!(got, want, "two instances, one leaving, give the single instance's effects ({dups} duplicates dropped)");
    assert_eq!(final_lanes(&got), final_lanes(&want));
}

/// A network cut between the engine and the broker mid-run (a TCP proxy in front of tansu,
/// whose memory storage would not survive a real broker restart). `/readyz` reports the
/// outage; after the cut heals the engine resumes by itself, and the effects equal an
/// uninterrupted run's.
#[test]
fn a_network_cut_is_reported_and_survived() {
    let _serial = serial();
    let (broker_port, proxy_port) = (kafka::free_port(), kafka::free_port());
    let b = Broker::start_advertising(broker_port, proxy_port);
    let proxy = proxy::Proxy::start(proxy_port, broker_port);
    b.ready();
    let input = format!("telemetry-{}", rand_suffix());
    b.create_topics(&[(&input, PARTITIONS, false)]);
    let records = records(PARTITIONS);
    let total = records.len() as i64;
    let dir = tempfile::tempdir().unwrap();

    let clean = run_topics(&b, "clean");
    produce(&b.producer(), &input, &records);
    let group = format!("clean-{}", rand_suffix());
    let engine = Engine::start(&config(dir.path(), &b, &input, &clean, &group));
    wait_for(300, "the uninterrupted run", || (committed(&b, &group, &input) >= total).then_some(()));
    assert!(engine.stop().success());
    let (want, _) = dedup(&b, &clean.enforcement);

    let input2 = format!("telemetry-cut-{}", rand_suffix());
    b.create_topics(&[(&input2, PARTITIONS, false)]);
    let cut = run_topics(&b, "cut");
    let group = format!("cut-{}", rand_suffix());
    let port = kafka::free_port();
    let cfg = config(dir.path(), &b, &input2, &cut, &group);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    let text = text.replace("\"fetch.wait.max.ms\" = \"20\"", "\"fetch.wait.max.ms\" = \"20\"\n\"statistics.interval.ms\" = \"500\"");
    std::fs::write(&cfg, text).unwrap();
    let half = records.len() / 2;
    produce(&b.producer(), &input2, &records[..half]);
    let engine = Engine::start(&cfg);
    let http = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(5))).build().new_agent();
    let ready = || http.get(&format!("http://127.0.0.1:{port}/readyz")).call().map(|r| r.status().as_u16()).unwrap_or(0);
    wait_for(120, "ready", || (ready() == 200).then_some(()));
    wait_for(300, "the first half committed", || (committed(&b, &group, &input2) >= half as i64).then_some(()));

    proxy.cut();
    wait_for(60, "/readyz to report the outage", || (ready() == 503).then_some(()));
    std::thread::sleep(Duration::from_secs(8)); // past the session timeout
    assert_eq!(ready(), 503, "still unready while cut");
    proxy.heal();
    wait_for(120, "ready again after the cut heals", || (ready() == 200).then_some(()));
    produce(&b.producer(), &input2, &records[half..]);
    wait_for(300, "the rest committed", || (committed(&b, &group, &input2) >= total).then_some(()));
    let log = engine.log_text();
    assert!(engine.stop().success(), "{log}");

    let (got, dups) = dedup(&b, &cut.enforcement);
    assert_eq!(got, want, "after the cut, the same effects ({dups} duplicates dropped)");
    assert_eq!(final_lanes(&got), final_lanes(&want));
}
