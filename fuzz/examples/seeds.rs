//! Writes the seed corpora: `cargo run --release --example seeds` (from `fuzz/`). The seeds are
//! committed; the fuzzers grow the corpora from them.

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

use driftgate_core::codec::{avro_json, changelog};
use driftgate_core::engine::{Engine, Input, Output};
use driftgate_core::model::telemetry::Telemetry;
use serde_json::json;
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn telemetry(i: u64) -> Telemetry {
    let risk = ["low", "medium", "high"][i as usize % 3];
    let text = json!({"event_id": format!("e{i}"), "agent_id": format!("agent-{}", i % 3), "workflow": "finance",
        "model": {"provider": "acme", "name": "m", "version": if i > 40 { "v2" } else { "v1" }},
        "occurred_at": 1_772_409_600_000_000i64 + i as i64 * 10_000_000, "risk": risk,
        "outcome": if i % 17 == 0 { "refused" } else { "ok" }, "latency_ms": 800.0 + (i % 7) as f64 * 90.0,
        "citations": {"total": 2, "verified": u32::from(i % 5 != 0)}, "pii_detected": false,
        "tool_calls": ["search"], "attributes": {"judge_score": 4.5, "lang": "en", "escalated": i % 2 == 0}});
    Telemetry::from_json_reference(text.to_string().as_bytes()).expect("valid seed telemetry")
}

fn main() {
    // Avro: one datum per writer schema, from the same record spelled for that schema.
    let t = telemetry(1);
    let mut v = serde_json::to_value(&t).expect("serialisable");
    v["session_id"] = json!("s-1");
    v["tags"] = json!(["a", "b"]);
    v["meta"] =
        json!({"seq": 7, "ok": true, "tier": "silver", "hash": "abcd", "extra": {"x": 1.5, "y": null}});
    v["model"]["region"] = json!("eu");
    for (i, schema) in checks::writer_schemas().iter().enumerate() {
        let mut v = v.clone();
        if i == 2 {
            v["attributes"] = json!({"lang": "en"});
        }
        match avro_json::encode_datum(&v, schema) {
            Ok(datum) => {
                let mut seed = vec![i as u8];
                seed.extend(datum);
                write("telemetry_avro", &format!("schema-{i}"), &seed);
            }
            Err(e) => eprintln!("no Avro seed for writer schema {i}: {e}"),
        }
    }
    // JSON.
    write("telemetry_json", "sample", &serde_json::to_vec(&t).expect("json"));
    write("telemetry_json", "minimal", br#"{"event_id":"e","agent_id":"a\u00e9","workflow":"w","model":{"provider":"p","name":"n","version":"v"},"occurred_at":1,"risk":"low","outcome":"ok"}"#);
    // Predicates and pacts: every example pact, and each of its predicates.
    let mut n = 0;
    for dir in ["../examples", "../benches/pacts"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).expect("pact dir").flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
            let text = std::fs::read_to_string(f).expect("pact file");
            write("pact_yaml", &f.file_name().expect("name").to_string_lossy(), text.as_bytes());
            for line in text.lines() {
                for key in ["value: ", "when: "] {
                    if let Some(rest) = line.split(key).nth(1) {
                        let expr = rest.split([',', '}']).next().unwrap_or("").trim().trim_matches('"');
                        if !expr.is_empty() {
                            n += 1;
                            write("predicate", &format!("p{n:02}"), expr.as_bytes());
                        }
                    }
                }
            }
        }
    }
    // Changelog and history: a real engine's snapshot and history after drift, a model change
    // and a refusal burst.
    let pact = driftgate_core::pact::parse_pact(checks_pact(), "bench-five.yaml").expect("bench pact");
    let mut e = Engine::new(Default::default(), vec![pact]);
    let mut history = Vec::new();
    for i in 0..60 {
        e.push(Input::from(telemetry(i)));
        for o in e.drain() {
            if let Output::History(r) = o {
                history.push(r);
            }
        }
    }
    e.flush();
    for o in e.drain() {
        if let Output::History(r) = o {
            history.push(r);
        }
    }
    // The snapshot comes from a longer run, so that its `auto` detectors have built their
    // banks (1,000 events each); `snapshot-v1` and `snapshot-v2` are format versions 1's and
    // 2's, kept as they were.
    let history_engine = e;
    let pact = driftgate_core::pact::parse_pact(checks_pact(), "bench-five.yaml").expect("bench pact");
    let mut e = Engine::new(Default::default(), vec![pact]);
    for i in 0..3_100 {
        e.push(Input::from(telemetry(i)));
        e.drain();
    }
    e.flush();
    e.drain();
    drop(history_engine);
    let mut seed = Vec::new();
    for (_, s) in e.take_dirty() {
        let v = s.map(changelog::encode_agent).unwrap_or_default();
        seed.push(0u8);
        seed.extend((v.len() as u16).to_le_bytes());
        seed.extend(v);
    }
    let meta = changelog::encode_meta(&changelog::MetaRecord { position: 3_100, meta: e.meta() });
    seed.push(1);
    seed.extend((meta.len() as u16).to_le_bytes());
    seed.extend(meta);
    write("changelog", "snapshot", &seed);
    let mut log = Vec::new();
    driftgate_core::model::history::write_jsonl(&mut log, &history).expect("jsonl");
    write("history_verify", "log", &log);
    // Stored histograms: empty, one value, a latency-like spread, and values near the top
    // of the range (long runs of empty bins, the largest bins).
    let spread: Vec<u64> = (0..200u64).map(|i| 200_000 + i * i * 97).collect();
    for (name, values) in [
        ("empty", vec![]),
        ("one", vec![1_200]),
        ("spread", spread),
        ("edges", vec![1, 2, 255, 256, u64::MAX / 8, u64::MAX / 4]),
    ] {
        write("hist_v2", name, &driftgate_detectors::fuzzing::hdr_v2_sample(&values));
    }
    // Every seed passes its own check.
    for (name, check) in checks::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
        for f in std::fs::read_dir(dir).expect("corpus").flatten() {
            check(&std::fs::read(f.path()).expect("seed"));
        }
    }
}

fn checks_pact() -> &'static str {
    include_str!("../../benches/pacts/bench-five.yaml")
}
