//! The Avro schemas: telemetry evolves compatibly through reader/writer resolution, and the
//! enforcement-event schema matches what the engine emits.

use apache_avro::{types::Value, Schema};
use driftgate_core::codec::avro_json::{read_datum, write_datum};

fn to_avro_datum(
    schema: &Schema,
    v: Value,
) -> Result<Vec<u8>, driftgate_core::codec::avro_json::AvroJsonError> {
    write_datum(schema, v)
}

fn from_avro_datum(
    writer: &Schema,
    bytes: &mut &[u8],
    reader: Option<&Schema>,
) -> Result<Value, driftgate_core::codec::avro_json::AvroJsonError> {
    read_datum(writer, reader, bytes)
}
use driftgate_core::codec::avro_json;
use driftgate_core::model::enforcement::{EnforcementEvent, ENFORCEMENT_AVSC};
use driftgate_core::model::history::{Record, RecordKind, HISTORY_AVSC};
use driftgate_core::model::overrides::{OverrideRequest, OVERRIDE_AVSC};
use driftgate_core::model::telemetry::{Telemetry, TELEMETRY_AVSC};

fn sample() -> Telemetry {
    Telemetry::from_json(include_bytes!("../fixtures/telemetry-sample.json")).unwrap()
}

/// v2 adds an optional field with a default, as a producer evolving compatibly would.
fn v2_schema() -> Schema {
    let mut v: serde_json::Value = serde_json::from_str(TELEMETRY_AVSC).unwrap();
    v["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "session_id", "type": ["null", "string"], "default": null}));
    Schema::parse_str(&v.to_string()).unwrap()
}

#[test]
fn avro_round_trip_preserves_every_field() {
    let schema = Schema::parse_str(TELEMETRY_AVSC).unwrap();
    let t = sample();
    let bytes = to_avro_datum(&schema, t.to_avro()).unwrap();
    let back = Telemetry::from_avro(from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap()).unwrap();
    assert_eq!(back, t);
}

#[test]
fn old_writer_new_reader_resolves_with_defaults() {
    let v1 = Schema::parse_str(TELEMETRY_AVSC).unwrap();
    let bytes = to_avro_datum(&v1, sample().to_avro()).unwrap();
    let v = from_avro_datum(&v1, &mut bytes.as_slice(), Some(&v2_schema())).unwrap();
    let Value::Record(fields) = &v else { panic!("record expected") };
    assert!(fields.iter().any(|(k, _)| k == "session_id"), "the new field gets its default");
    assert_eq!(Telemetry::from_avro(v).unwrap(), sample());
}

#[test]
fn new_writer_old_reader_ignores_the_new_field() {
    let v2 = v2_schema();
    let Value::Record(mut fields) = sample().to_avro() else { unreachable!() };
    fields.push(("session_id".into(), Value::Union(1, Box::new(Value::String("s-9".into())))));
    let bytes = to_avro_datum(&v2, Value::Record(fields)).unwrap();
    let v1 = Schema::parse_str(TELEMETRY_AVSC).unwrap();
    let v = from_avro_datum(&v2, &mut bytes.as_slice(), Some(&v1)).unwrap();
    assert_eq!(Telemetry::from_avro(v).unwrap(), sample());
}

#[test]
fn incompatible_reader_is_refused() {
    let mut v: serde_json::Value = serde_json::from_str(TELEMETRY_AVSC).unwrap();
    v["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "tenant", "type": "string"}));
    let bad = Schema::parse_str(&v.to_string()).unwrap();
    let v1 = Schema::parse_str(TELEMETRY_AVSC).unwrap();
    let bytes = to_avro_datum(&v1, sample().to_avro()).unwrap();
    assert!(
        from_avro_datum(&v1, &mut bytes.as_slice(), Some(&bad)).is_err(),
        "a new required field without default cannot resolve"
    );
}

#[test]
fn invalid_values_are_refused_with_the_field() {
    let mut t = sample();
    t.latency_ms = Some(f64::NAN);
    let schema = Schema::parse_str(TELEMETRY_AVSC).unwrap();
    let bytes = to_avro_datum(&schema, t.to_avro()).unwrap();
    let e = Telemetry::from_avro(from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap()).unwrap_err();
    assert!(e.to_string().contains("latency_ms"), "{e}");
    let e = Telemetry::from_json(br#"{"event_id":"e1"}"#).unwrap_err();
    assert!(e.to_string().contains("missing field"), "{e}");
}

/// Collects the field names of a record schema (recursively, by path).
fn schema_fields(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    let Some(fields) = v.get("fields").and_then(|f| f.as_array()) else { return };
    for f in fields {
        let name = format!("{prefix}{}", f["name"].as_str().unwrap());
        out.push(name.clone());
        let ty = &f["type"];
        let rec = match ty {
            serde_json::Value::Array(u) => {
                u.iter().find(|t| t.get("type") == Some(&serde_json::json!("record"))).cloned()
            }
            t if t.get("type") == Some(&serde_json::json!("record")) => Some(t.clone()),
            _ => None,
        };
        if let Some(r) = rec {
            schema_fields(&r, &format!("{name}."), out);
        }
    }
}

fn json_fields(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    let Some(obj) = v.as_object() else { return };
    for (k, val) in obj {
        let name = format!("{prefix}{k}");
        out.push(name.clone());
        if val.is_object() {
            json_fields(val, &format!("{name}."), out);
        }
    }
}

#[test]
fn enforcement_schema_matches_emitted_events() {
    let schema_json: serde_json::Value = serde_json::from_str(ENFORCEMENT_AVSC).unwrap();
    Schema::parse_str(ENFORCEMENT_AVSC).expect("valid Avro");
    let mut want = Vec::new();
    schema_fields(&schema_json, "", &mut want);
    want.sort();
    let run = driftgate::cli::demo::run();
    // The richest events: a detection (with evidence) and an override.
    let detection = run.events.iter().find(|e| e.detection.is_some() && e.evidence.is_some()).unwrap();
    let ovr = run.events.iter().find(|e| e.override_info.is_some()).unwrap();
    let mut got = Vec::new();
    json_fields(&serde_json::to_value(detection).unwrap(), "", &mut got);
    let mut o = Vec::new();
    json_fields(&serde_json::to_value(ovr).unwrap(), "", &mut o);
    got.extend(o.into_iter().filter(|f| f.starts_with("override")));
    got.sort();
    got.dedup();
    assert_eq!(got, want, "schemas/enforcement_event.avsc and EnforcementEvent disagree");
    // And every emitted event encodes under the schema.
    // And every emitted event encodes under the schema and decodes back unchanged.
    let schema = Schema::parse_str(ENFORCEMENT_AVSC).unwrap();
    for e in &run.events {
        let bytes = avro_json::encode_datum(e, &schema)
            .unwrap_or_else(|err| panic!("event {} does not encode: {err}", e.event_id));
        let back: EnforcementEvent =
            avro_json::decode(from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap()).unwrap();
        assert_eq!(&back, e);
    }
}

#[test]
fn history_and_override_schemas_match_emitted_records() {
    let run = driftgate::cli::demo::run();
    let schema = Schema::parse_str(HISTORY_AVSC).unwrap();
    assert!(!run.history.is_empty());
    for r in &run.history {
        let bytes = to_avro_datum(&schema, r.to_avro().unwrap())
            .unwrap_or_else(|err| panic!("record {} does not encode: {err}", r.position));
        let back = Record::from_avro(from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap()).unwrap();
        assert_eq!(&back, r);
    }
    // The demo's override, through the override schema.
    let schema = Schema::parse_str(OVERRIDE_AVSC).unwrap();
    let accepted: Vec<_> = run.history.iter().filter(|r| r.kind == RecordKind::OverrideAccepted).collect();
    assert!(!accepted.is_empty());
    for r in accepted {
        let req: OverrideRequest = serde_json::from_value(r.detail["override"].clone()).unwrap();
        let bytes = avro_json::encode_datum(&req, &schema).unwrap();
        let back: OverrideRequest =
            avro_json::decode(from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap()).unwrap();
        assert_eq!(back, req);
    }
}
