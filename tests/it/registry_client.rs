//! The schema-registry client and the Avro decoder against a local server that speaks the
//! registry's API: caching, unknown ids, a schema that does not parse, one that does not
//! resolve to the telemetry schema, and the registry going down and coming back.

use crate::support::registry;

use driftgate::config::InputFormat;
use driftgate::kafka::decode::{confluent_frame, reason, DecodeError, Decoder};
use driftgate::kafka::registry::{HttpRegistry, RegistryError, SchemaSource};
use driftgate_core::codec::avro_json::write_datum;
use driftgate_core::model::telemetry::{Citations, Model, Outcome, Risk, Telemetry, TELEMETRY_AVSC};
use registry::Registry;
use std::sync::Arc;

fn telemetry() -> Telemetry {
    Telemetry {
        event_id: "e1".into(),
        agent_id: "fin-01".into(),
        workflow: "finance".into(),
        model: Model { provider: "acme".into(), name: "ledger".into(), version: "v1".into() },
        occurred_at: 1_772_409_600_000_000,
        risk: Risk::Low,
        outcome: Outcome::Ok,
        latency_ms: Some(800.0),
        citations: Some(Citations { total: 2, verified: 1 }),
        pii_detected: Some(false),
        tool_calls: vec![],
        attributes: Default::default(),
    }
}

fn frame(id: u32, schema: &str, value: apache_avro::types::Value) -> Vec<u8> {
    confluent_frame(id, &write_datum(&apache_avro::Schema::parse_str(schema).unwrap(), value).unwrap())
}

fn code(r: Result<Telemetry, DecodeError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(DecodeError::Rejected { code, .. }) => code.into(),
        Err(DecodeError::Unavailable(_)) => "unavailable".into(),
    }
}

#[test]
fn the_client_caches_schemas_and_remembers_unknown_ids() {
    let r = Registry::start([(1, TELEMETRY_AVSC.to_string()), (3, registry::BAD_SCHEMA.to_string())]);
    let client = HttpRegistry::new(&r.url);
    let s = client.schema(1).unwrap();
    assert_eq!(s.canonical_form(), apache_avro::Schema::parse_str(TELEMETRY_AVSC).unwrap().canonical_form());
    assert_eq!(r.requests(), 1);
    client.schema(1).unwrap();
    assert_eq!(r.requests(), 1, "served from the cache");
    assert_eq!(client.schema(9), Err(RegistryError::UnknownId(9)));
    assert_eq!(client.schema(9), Err(RegistryError::UnknownId(9)));
    assert_eq!(r.requests(), 2, "an unknown id is remembered for a while");
    assert!(matches!(client.schema(3), Err(RegistryError::BadSchema { id: 3, .. })));
}

#[test]
fn a_registry_outage_is_retryable_and_recovers() {
    let r = Registry::start([(1, TELEMETRY_AVSC.to_string())]);
    r.set_down(true);
    let decoder = Decoder::new(InputFormat::Avro, Some(Arc::new(HttpRegistry::new(&r.url))), 3_600_000_000);
    let record = frame(1, TELEMETRY_AVSC, telemetry().to_avro());
    // Down: nothing is wrong with the record, so it is not dead-lettered; it is retried.
    for _ in 0..3 {
        assert_eq!(code(decoder.decode(Some(&record), None)), "unavailable");
    }
    assert_eq!(r.requests(), 3, "each retry asks again (an outage is not cached)");
    r.set_down(false);
    assert_eq!(decoder.decode(Some(&record), None).unwrap(), telemetry());
}

#[test]
fn each_schema_fault_has_its_dead_letter_reason() {
    let r = Registry::start([
        (1, TELEMETRY_AVSC.to_string()),
        (3, registry::BAD_SCHEMA.to_string()),
        (4, registry::mismatched_schema()),
    ]);
    let decoder = Decoder::new(InputFormat::Avro, Some(Arc::new(HttpRegistry::new(&r.url))), 3_600_000_000);
    let good = telemetry().to_avro();
    let mut mismatched = good.clone();
    if let apache_avro::types::Value::Record(fields) = &mut mismatched {
        for (n, v) in fields.iter_mut() {
            if n == "occurred_at" {
                *v = apache_avro::types::Value::String("yesterday".into());
            }
        }
    }
    let cases = [
        (frame(1, TELEMETRY_AVSC, good.clone()), "ok"),
        (confluent_frame(3, b"\x02"), reason::BAD_SCHEMA),
        (frame(4, &registry::mismatched_schema(), mismatched), reason::SCHEMA_MISMATCH),
        (confluent_frame(9, b"\x02"), reason::UNKNOWN_SCHEMA_ID),
        (b"\x01\x00\x00\x00\x01".to_vec(), reason::NOT_CONFLUENT),
        (confluent_frame(1, b"\xff\xff"), reason::AVRO_DECODE),
    ];
    for (bytes, want) in cases {
        assert_eq!(code(decoder.decode(Some(&bytes), None)), want);
    }
    assert_eq!(code(decoder.decode(None, None)), reason::EMPTY);
}
