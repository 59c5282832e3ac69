//! The checks behind every fuzz target, shared with `tests/it/fuzz_corpora.rs`, which replays
//! the committed corpora in `./scripts/test.sh`. Each check panics on a finding: a panic in
//! the code under test, or two decoders disagreeing.

use apache_avro::Schema;
use driftgate_core::codec::telemetry_avro::{decode_generic, TelemetryPlan};
use driftgate_core::model::telemetry::{Telemetry, TELEMETRY_AVSC};
use serde_json::{json, Value as Json};
use std::sync::OnceLock;

/// A check: panics on a finding.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name (each has `fuzz_targets/<name>.rs` and `corpus/<name>/`).
pub const TARGETS: [(&str, Check); 7] = [
    ("telemetry_avro", telemetry_avro),
    ("telemetry_json", telemetry_json),
    ("predicate", predicate),
    ("pact_yaml", pact_yaml),
    ("changelog", changelog),
    ("history_verify", history_verify),
    ("hist_v2", hist_v2),
];

/// Writer schemas a producer may use: ours, and three evolutions of it (extra fields of
/// every kind, reordered fields, bare optionals, reversed unions, no optional fields,
/// enum symbols reordered and added).
pub fn writer_schemas() -> &'static [Schema] {
    static CELL: OnceLock<Vec<Schema>> = OnceLock::new();
    CELL.get_or_init(|| {
        let ours: Json = serde_json::from_str(TELEMETRY_AVSC).expect("bundled schema");
        let fields = |v: &mut Json| v["fields"].as_array_mut().expect("fields").clone();
        let mut variants = vec![ours.clone()];
        // 1: extra fields, nested ones too.
        let mut v = ours.clone();
        let mut f = fields(&mut v);
        f.insert(0, json!({"name": "session_id", "type": ["null", "string"], "default": null}));
        f.insert(5, json!({"name": "tags", "type": {"type": "array", "items": "string"}}));
        f.push(json!({"name": "meta", "type": {"type": "record", "name": "Meta", "fields": [
            {"name": "seq", "type": "long"}, {"name": "ok", "type": "boolean"},
            {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": ["gold", "silver"]}},
            {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
            {"name": "extra", "type": {"type": "map", "values": ["null", "double", "bytes"]}}]}}));
        for x in f.iter_mut() {
            if x["name"] == "model" {
                x["type"]["fields"]
                    .as_array_mut()
                    .expect("model fields")
                    .insert(1, json!({"name": "region", "type": "string"}));
            }
        }
        v["fields"] = Json::Array(f);
        variants.push(v);
        // 2: reordered, bare optionals, reversed unions.
        let mut v = ours.clone();
        let mut f = fields(&mut v);
        f.reverse();
        for x in f.iter_mut() {
            // A default must match the (first) type, so the bare and reversed ones have none.
            if let Some(o) = x.as_object_mut() {
                o.remove("default");
            }
            match x["name"].as_str() {
                Some("latency_ms") => x["type"] = json!("double"),
                Some("pii_detected") => x["type"] = json!("boolean"),
                Some("citations") => {
                    let rec = x["type"][1].clone();
                    x["type"] = json!([rec, "null"]);
                }
                Some("attributes") => x["type"] = json!({"type": "map", "values": "string"}),
                _ => {}
            }
        }
        v["fields"] = Json::Array(f);
        variants.push(v);
        // 3: required fields only, a plain long time, enums in another order with a symbol
        // the reader lacks.
        let mut v = ours;
        let mut f = fields(&mut v);
        f.retain(|x| x.get("default").is_none());
        for x in f.iter_mut() {
            match x["name"].as_str() {
                Some("occurred_at") => x["type"] = json!("long"),
                Some("risk") => x["type"]["symbols"] = json!(["high", "critical", "low", "medium"]),
                _ => {}
            }
        }
        v["fields"] = Json::Array(f);
        variants.push(v);
        variants.iter().map(|v| Schema::parse_str(&v.to_string()).expect("variant parses")).collect()
    })
}

/// First byte: the writer schema; the rest: the datum. What the compiled plan accepts, the
/// generic decoder accepts with the same value.
pub fn telemetry_avro(data: &[u8]) {
    let Some((&which, datum)) = data.split_first() else { return };
    let schemas = writer_schemas();
    let writer = &schemas[which as usize % schemas.len()];
    let plan = TelemetryPlan::compile(writer).expect("every fuzzed writer schema has a plan");
    if let Ok(t) = plan.read(datum) {
        assert_eq!(
            decode_generic(writer, datum).ok().as_ref(),
            Some(&t),
            "the plan accepted what the generic path did not"
        );
    }
}

/// What the fast JSON path accepts, serde_json accepts with the same value; the entry point
/// gives serde_json's verdict.
pub fn telemetry_json(data: &[u8]) {
    let reference = Telemetry::from_json_reference(data);
    if let Some(t) = Telemetry::from_json_fast(data) {
        assert_eq!(reference.as_ref(), Ok(&t), "the fast path accepted what serde_json did not");
        // `==` on floats takes -0.0 for 0.0; their JSON spellings differ.
        let spelled = |t: &Telemetry| serde_json::to_string(t).ok();
        assert_eq!(reference.as_ref().ok().and_then(spelled), spelled(&t), "a float differs");
    }
    assert_eq!(Telemetry::from_json(data), reference);
}

fn sample() -> Telemetry {
    Telemetry::from_json_reference(include_bytes!("../tests/fixtures/telemetry-sample.json"))
        .expect("valid sample")
}

/// A predicate parses and type-checks or is refused; a compiled one evaluates.
pub fn predicate(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    if let Ok(c) = driftgate_core::pact::predicate::Compiled::compile(src) {
        let _ = c.eval(&sample());
    }
}

/// A pact document loads or is refused; a loaded one runs.
pub fn pact_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = driftgate_core::pact::parse_pact(text, "fuzz.yaml") {
        let mut e = driftgate_core::engine::Engine::new(Default::default(), vec![p]);
        e.push(sample().into());
        e.flush();
        let _ = e.drain();
    }
}

/// The pact the changelog check restores against.
const CHANGELOG_PACT: &str = include_str!("../benches/pacts/bench-five.yaml");

/// Changelog records, each `[kind: 0 agent | 1 meta][len: u16 LE][value]`, read back as a
/// restore does; a complete snapshot is restored into an engine, which then runs.
pub fn changelog(data: &[u8]) {
    use driftgate_core::codec::changelog::{Key, Restorer};
    let mut r = Restorer::default();
    let mut rest = data;
    let mut i = 0;
    while rest.len() >= 3 {
        let (kind, len) = (rest[0], u16::from_le_bytes([rest[1], rest[2]]) as usize);
        let value = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        let key =
            if kind % 2 == 0 { Key::Agent("t".into(), format!("agent-{i}")) } else { Key::Meta("t".into()) };
        i += 1;
        let _ = r.apply("t", &key.encode(), Some(value).filter(|v| !v.is_empty()));
    }
    let Ok(Some(snap)) = r.finish() else { return };
    let pact = driftgate_core::pact::parse_pact(CHANGELOG_PACT, "bench-five.yaml").expect("bench pact");
    let mut e =
        driftgate_core::engine::Engine::restore(Default::default(), vec![pact], snap.meta.meta, snap.agents);
    let mut t = sample();
    t.agent_id = "agent-0".into();
    e.push(t.into());
    e.flush();
    let _ = e.drain();
}

/// A quantile bound's stored histogram (V2 bytes): its own reader and hdrhistogram's give
/// the same verdict, and the same histogram when both read. The `changelog` target reaches
/// these bytes only inside a whole valid state record; this one mutates them directly.
pub fn hist_v2(data: &[u8]) {
    if let Err(why) = driftgate_detectors::fuzzing::hdr_v2_readers_agree(data) {
        panic!("the histogram readers disagree: {why}");
    }
}

/// `driftgate history verify` on any bytes: a verdict, never a panic.
pub fn history_verify(data: &[u8]) {
    let _ = driftgate_core::model::history::verify(data);
}
