//! Bounded time to control on a real broker: a critical breach acts on arrival, records
//! held behind the watermark are released by ticks once the input goes quiet, a silent
//! partition still turns stale evidence stale, routers get heartbeats, and the ticks are
//! recorded so that a replay, or a restore in the middle of an idle period, gives the same
//! effects.

use crate::support::kafka;
use crate::support::scrape;

use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::heartbeat::{EngineState, Heartbeat};
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::telemetry::{Model, Outcome, Risk, Telemetry};
use kafka::{produce, Broker, Engine, Rec, Tail, Topics};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PACT: &str = include_str!("../fixtures/live-breaches.yaml");

/// Settings under test: records are held 30 s for stragglers, so only a tick (or the fast
/// path) can act on the last records before a silence.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_EVENT_LAG: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_millis(500);
const FRESHNESS: Duration = Duration::from_secs(3);

fn write_config(dir: &Path, b: &Broker, t: &Topics, listen: &str) -> PathBuf {
    std::fs::write(dir.join("pact.yaml"), PACT).unwrap();
    let cfg = format!(
        r#"
pacts = ["pact.yaml"]
[kafka]
brokers = "{}"
group_id = "{}"
input_topics = ["{}"]
format = "json"
commit_interval = "200ms"
startup_timeout = "10s"
{}[kafka.properties]
"session.timeout.ms" = "6000"
[kafka.consumer_properties]
"fetch.wait.max.ms" = "10"
[kafka.producer_properties]
"linger.ms" = "0"
[engine]
max_out_of_orderness = "30s"
idle_timeout = "{}ms"
max_event_lag = "{}ms"
heartbeat_interval = "{}ms"
[http]
listen = "{listen}"
"#,
        b.bootstrap(),
        t.group,
        t.input,
        t.toml(),
        IDLE_TIMEOUT.as_millis(),
        MAX_EVENT_LAG.as_millis(),
        HEARTBEAT.as_millis()
    );
    let p = dir.join(format!("{}.toml", t.group));
    std::fs::write(&p, cfg).unwrap();
    p
}

fn wall_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

fn tel(agent: &str, i: u64, at: i64, risk: Risk, flag: &str, pii: bool) -> Telemetry {
    Telemetry {
        event_id: format!("{agent}-{i}").into(),
        agent_id: agent.into(),
        workflow: "live".into(),
        model: Model { provider: "acme".into(), name: "m".into(), version: "v1".into() },
        occurred_at: at,
        risk,
        outcome: Outcome::Ok,
        latency_ms: Some(10.0),
        citations: None,
        pii_detected: Some(pii),
        tool_calls: vec![],
        attributes: [("flag".to_string(), driftgate_core::model::telemetry::Attr::Str(flag.into()))]
            .into_iter()
            .collect(),
    }
}

/// A live burst, event times from the wall clock (10 ms apart): clean traffic of three
/// agents, high-risk traffic of `live-hr`, and at the end a held breach (`live-01`, flag
/// `bad`) and a critical one (`live-02`, PII). Then the input goes silent.
fn burst(t0: i64) -> Vec<Telemetry> {
    let mut out = Vec::new();
    for i in 0..30u64 {
        let at = t0 + i as i64 * 10_000;
        let agent = ["live-01", "live-02", "live-hr"][i as usize % 3];
        let risk = if agent == "live-hr" { Risk::High } else { Risk::Low };
        out.push(tel(agent, i, at, risk, "ok", false));
    }
    out.push(tel("live-01", 30, t0 + 300_000, Risk::Low, "bad", false));
    out.push(tel("live-02", 31, t0 + 310_000, Risk::Low, "ok", true));
    out
}

fn records(events: &[Telemetry]) -> Vec<(String, Vec<u8>, i64, i32)> {
    events
        .iter()
        .map(|e| (e.agent_id.to_string(), serde_json::to_vec(e).unwrap(), e.occurred_at / 1000, 0))
        .collect()
}

fn enforcement(seen: &[(Instant, Rec)]) -> Vec<(Instant, EnforcementEvent)> {
    seen.iter().map(|(at, r)| (*at, serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())).collect()
}

fn offset_of(seen: &[(Instant, Rec)], event_id: &str) -> Option<i64> {
    seen.iter().find(|(_, r)| r.header("driftgate.event_id") == Some(event_id)).map(|(_, r)| r.offset)
}

fn heartbeats(seen: &[(Instant, Rec)]) -> Vec<(Instant, Heartbeat)> {
    seen.iter()
        .filter(|(_, r)| r.header("driftgate.kind") == Some("heartbeat"))
        .map(|(at, r)| {
            assert!(
                r.key.as_deref().is_some_and(|k| k.starts_with(driftgate_core::model::heartbeat::KEY_PREFIX)),
                "heartbeat key {:?}",
                r.key
            );
            (*at, serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        })
        .collect()
}

fn find(
    evs: &[(Instant, EnforcementEvent)],
    agent: &str,
    scope: Scope,
    code: &str,
) -> Option<(Instant, EnforcementEvent)> {
    evs.iter().find(|(_, e)| e.agent_id == agent && e.scope == scope && e.reason.code == code).cloned()
}

/// The tests measure wall time: one at a time, so that two brokers and three engines do
/// not share the two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A producer that has its idempotent producer id already (the first produce waits for it).
fn warm_producer(b: &Broker) -> rdkafka::producer::BaseProducer {
    let warm = format!("warm-{}", kafka::rand_suffix());
    b.create_topics(&[(&warm, 1, false)]);
    let p = b.producer();
    produce(&p, &warm, &[("k".to_string(), b"warm".to_vec(), wall_micros() / 1000, 0)]);
    p
}

/// Waits until an engine has joined and assigned its partition (its first heartbeat).
fn wait_running(hb: &mut Tail) {
    hb.until(60, "the engine's first heartbeat", |seen| (!heartbeats(seen).is_empty()).then_some(()));
}

#[test]
fn the_last_records_before_a_silence_act_within_the_idle_timeout_and_replay_reproduces_the_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let b = Broker::shared();
    let t = Topics::create(b, "ttc", 1);
    let dir = tempfile::tempdir().unwrap();
    let port = kafka::free_port();
    let cfg = write_config(dir.path(), b, &t, &format!("127.0.0.1:{port}"));
    let engine = Engine::start(&cfg);
    let mut hb = Tail::new(b, &t.snapshot);
    wait_running(&mut hb);
    let mut out = Tail::new(b, &t.enforcement);

    let producer = warm_producer(b);
    let input = burst(wall_micros());
    let produced = Instant::now();
    produce(&producer, &t.input, &records(&input));

    // Critical breach: on arrival, although the watermark is 30 s behind it.
    let (at, block) = out.until(30, "the PII block", |s| {
        find(&enforcement(s), "live-02", Scope::All, "zero_tolerance_breach")
    });
    assert_eq!(
        (block.lane_to, block.causation.id.as_str()),
        (Lane::Block, "live-02-31"),
        "the block names its record"
    );
    let pii_latency = at.duration_since(produced);
    let block_offset = offset_of(&out.seen, &block.event_id).expect("the block's record");
    // The held breach: released by the first tick, once the partition has been quiet for
    // idle_timeout (the tick's clock then passes the record by more than max_event_lag).
    let (at, degrade) = out.until(30, "the held degrade", |s| {
        find(&enforcement(s), "live-01", Scope::All, "zero_tolerance_breach")
    });
    assert_eq!((degrade.lane_to, degrade.causation.id.as_str()), (Lane::Degrade, "live-01-30"));
    let held_latency = at.duration_since(produced);
    eprintln!("produced -> consumed: critical breach {pii_latency:?}, held breach {held_latency:?}");
    // The PII record was read last, after the held breach; only the fast path puts its block
    // first (a tick would release both in event-time order, the held breach first).
    let degrade_offset = offset_of(&out.seen, &degrade.event_id).expect("the degrade's record");
    assert!(
        block_offset < degrade_offset,
        "the block did not wait for the tick: offsets {block_offset:?} vs {degrade_offset:?}"
    );
    assert!(
        pii_latency <= IDLE_TIMEOUT + Duration::from_secs(1),
        "within idle_timeout + 1 s: {pii_latency:?}"
    );
    assert!(
        held_latency >= IDLE_TIMEOUT,
        "the held breach waited for the partition to go quiet: {held_latency:?}"
    );
    assert!(
        held_latency <= IDLE_TIMEOUT + Duration::from_secs(1),
        "within idle_timeout + 1 s: {held_latency:?}"
    );

    // Silence: `live-hr`'s high-risk evidence turns stale after its freshness window, with no
    // further input (the clause's freshness timer fires on a tick).
    let (at, stale) = out
        .until(30, "evidence_stale", |s| find(&enforcement(s), "live-hr", Scope::HighRisk, "evidence_stale"));
    assert_eq!((stale.lane_to, stale.causation.kind.as_str()), (Lane::Review, "timer"));
    let last_hr = input.iter().filter(|e| e.agent_id == "live-hr").map(|e| e.occurred_at).max().unwrap();
    assert_eq!(
        stale.effective_at,
        last_hr + FRESHNESS.as_micros() as i64 + 1,
        "stale 1 µs after the newest evidence is 3 s old"
    );
    let stale_latency = at.duration_since(produced);
    eprintln!("produced -> consumed: evidence_stale {stale_latency:?}");
    assert!(stale_latency >= FRESHNESS, "not before the window ends: {stale_latency:?}");
    assert!(
        stale_latency <= FRESHNESS + MAX_EVENT_LAG + IDLE_TIMEOUT + Duration::from_secs(1),
        "{stale_latency:?}"
    );

    // Heartbeats while idle, at the configured interval.
    hb.poll_for(HEARTBEAT * 4);
    let beats = heartbeats(&hb.seen);
    let gaps: Vec<Duration> = beats
        .windows(2)
        .map(|w| Duration::from_micros((w[1].1.wall_time - w[0].1.wall_time) as u64))
        .collect();
    // Gaps are read from the heartbeats' wall times (the system clock), while the loop keeps
    // time on the monotonic clock. NTP may slew the system clock by up to 500 ppm, 0.25 ms
    // per interval: 1 ms below the interval is still on time (a gap of 499.995 ms was seen).
    let slew = Duration::from_millis(1);
    assert!(
        gaps.iter().all(|g| *g >= HEARTBEAT - slew && *g <= HEARTBEAT + Duration::from_millis(300)),
        "heartbeat gaps {gaps:?}"
    );
    // Idle after the burst: every record read, nothing held.
    let idle: Vec<&Heartbeat> =
        beats.iter().map(|(_, h)| h).filter(|h| h.idle && h.position == Some(input.len() as i64)).collect();
    assert!(idle.len() >= 6, "heartbeats while idle: {}", idle.len());
    let last = idle.last().unwrap();
    assert_eq!(
        (last.source_topic.as_str(), last.source_partition, last.state, last.buffered),
        (t.input.as_str(), 0, EngineState::Running, 0)
    );
    assert_eq!((last.last_offset, last.position), (Some(input.len() as i64 - 1), Some(input.len() as i64)));
    assert!(
        last.watermark.is_some_and(|wm| wm >= stale.effective_at),
        "the watermark passed every decision: {:?}",
        last.watermark
    );

    // The time-keeping metrics.
    let text = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let m = scrape::samples(&text);
    let part = [format!("topic=\"{}\"", t.input), "partition=\"0\"".to_string()];
    let part: Vec<&str> = part.iter().map(String::as_str).collect();
    let get = |name: &str, labels: &[&str]| scrape::sum(&m, name, labels);
    assert_eq!(
        (get("driftgate_idle_partitions", &[]), get("driftgate_fast_path_inputs_total", &[])),
        (1.0, 1.0)
    );
    assert_eq!(get("driftgate_partition_buffered_records", &part), 0.0);
    assert!(text.contains("driftgate_partition_oldest_buffered_age_seconds{"), "{text}");
    let lag = get("driftgate_partition_watermark_lag_seconds", &part);
    assert!(lag > 0.0 && lag < 30.0, "the watermark follows a live partition's clock: {lag}");
    let applied = get("driftgate_ticks_applied_total", &[]);
    assert!(
        applied >= 2.0 && get("driftgate_ticks_fed_total", &[]) >= applied,
        "fed {} applied {applied}",
        get("driftgate_ticks_fed_total", &[])
    );
    assert!(get("driftgate_heartbeats_total", &[]) >= beats.len() as f64);

    // Stopped: a last heartbeat says so, then none.
    assert!(engine.stop().success());
    hb.poll_for(HEARTBEAT * 3);
    let beats = heartbeats(&hb.seen);
    let (stopped_at, final_beat) = beats.last().unwrap();
    assert_eq!(final_beat.state, EngineState::Stopped);
    assert!(stopped_at.elapsed() >= HEARTBEAT * 2, "no heartbeat after the stop");

    // Replay with the recorded ticks: byte-identical events and history.
    let events_topic: Vec<Vec<u8>> =
        b.read_all(&t.enforcement).into_iter().map(|r| r.value.unwrap()).collect();
    let history_topic: Vec<Vec<u8>> = b.read_all(&t.history).into_iter().map(|r| r.value.unwrap()).collect();
    let ticks: Vec<serde_json::Value> = history_topic
        .iter()
        .map(|v| serde_json::from_slice::<serde_json::Value>(v).unwrap())
        .filter(|r| r["kind"] == "tick")
        .collect();
    assert_eq!(ticks.len() as f64, applied, "every applied tick is a history record");
    let (input_file, history_file) = (dir.path().join("input.jsonl"), dir.path().join("history.jsonl"));
    let lines =
        |v: &[Vec<u8>]| v.iter().map(|x| format!("{}\n", String::from_utf8_lossy(x))).collect::<String>();
    let input_topic: Vec<Vec<u8>> = b.read_all(&t.input).into_iter().map(|r| r.value.unwrap()).collect();
    std::fs::write(&input_file, lines(&input_topic)).unwrap();
    std::fs::write(&history_file, lines(&history_topic)).unwrap();
    let (ev_out, hist_out) =
        (dir.path().join("replay-events.jsonl"), dir.path().join("replay-history.jsonl"));
    let replay = |extra: &[&Path]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_driftgate"));
        c.args(["replay", "--pact"])
            .arg(dir.path().join("pact.yaml"))
            .arg("--input")
            .arg(&input_file)
            .arg("--config")
            .arg(&cfg)
            .arg("--events-out")
            .arg(&ev_out);
        for pair in extra.chunks(2) {
            c.arg(pair[0]).arg(pair[1]);
        }
        assert!(c.status().unwrap().success());
    };
    replay(&[Path::new("--ticks"), &history_file, Path::new("--history-out"), &hist_out]);
    assert_eq!(std::fs::read_to_string(&ev_out).unwrap(), lines(&events_topic), "replayed events");
    assert_eq!(std::fs::read_to_string(&hist_out).unwrap(), lines(&history_topic), "replayed history");
    // Without the ticks the silence never happened: the stale evidence is not derived.
    replay(&[]);
    assert!(!std::fs::read_to_string(&ev_out).unwrap().contains("evidence_stale"));
}

/// A router's view after dedup: `(agent, scope, seq)` → `(from, to, reason, effective time)`.
type Deduped = BTreeMap<(String, Scope, u64), (Lane, Lane, String, i64)>;

fn deduped(evs: &[EnforcementEvent]) -> Deduped {
    evs.iter()
        .map(|e| {
            (
                (e.agent_id.to_string(), e.scope, e.seq),
                (e.lane_from, e.lane_to, e.reason.code.clone(), e.effective_at),
            )
        })
        .collect()
}

#[test]
fn a_crash_in_the_middle_of_an_idle_period_gives_the_same_effects_after_dedup() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let b = Broker::shared();
    let (ta, tb) = (Topics::create(b, "ttc-a", 1), Topics::create(b, "ttc-b", 1));
    let dir = tempfile::tempdir().unwrap();
    let (cfg_a, cfg_b) = (write_config(dir.path(), b, &ta, ""), write_config(dir.path(), b, &tb, ""));
    let (reference, crashing) = (Engine::start(&cfg_a), Engine::start(&cfg_b));
    let (mut hb_a, mut hb_b) = (Tail::new(b, &ta.snapshot), Tail::new(b, &tb.snapshot));
    wait_running(&mut hb_a);
    wait_running(&mut hb_b);
    let mut out_b = Tail::new(b, &tb.enforcement);

    let input = burst(wall_micros());
    let p = warm_producer(b);
    produce(&p, &ta.input, &records(&input));
    produce(&p, &tb.input, &records(&input));
    // Kill B after the first tick released the held breach, before the stale evidence (due
    // after FRESHNESS + MAX_EVENT_LAG of silence).
    out_b.until(30, "the held degrade on B", |s| {
        find(&enforcement(s), "live-01", Scope::All, "zero_tolerance_breach")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        find(&enforcement(&out_b.seen), "live-hr", Scope::HighRisk, "evidence_stale").is_none(),
        "killed before the stale evidence"
    );
    drop(crashing); // SIGKILL: no flush, no final snapshot
    let restarted = Engine::start(&cfg_b);
    // The restarted engine restores mid-idle and counts the silence again from there.
    out_b.until(60, "evidence_stale on B after the restart", |s| {
        find(&enforcement(s), "live-hr", Scope::HighRisk, "evidence_stale")
    });
    let mut out_a = Tail::new(b, &ta.enforcement);
    out_a.until(30, "evidence_stale on A", |s| {
        find(&enforcement(s), "live-hr", Scope::HighRisk, "evidence_stale")
    });
    let log = restarted.log_text();
    assert!(log.contains("state restored"), "the restart restored the changelog");
    assert!(!log.contains("ERROR"), "a restore reads the changelog to its end without errors:\n{log}");
    assert!(reference.stop().success() && restarted.stop().success());

    let read = |t: &Topics| {
        b.read_all(&t.enforcement)
            .iter()
            .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
            .collect::<Vec<EnforcementEvent>>()
    };
    let (a, bb) = (read(&ta), read(&tb));
    assert_eq!(a.len(), 5, "block and degrade (both scopes) and stale: {a:?}");
    assert_eq!(deduped(&bb), deduped(&a), "same effects after dedup by seq");
}
