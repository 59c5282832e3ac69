//! Differential tests: the compiled plan against apache-avro's generic decoding (the path the
//! pipeline falls back to), on generated writer schemas that evolve ours, on generated
//! values, and on corrupted datums.

use super::*;
use crate::codec::avro_json::write_datum;
use apache_avro::types::Value;
use serde_json::{json, Value as Json};

use super::decode_generic as generic;
use crate::test_rng::Rng;

/// Test values in several spellings.
trait Values {
    fn text(&mut self) -> String;
    fn double(&mut self) -> f64;
}

impl Values for Rng {
    fn text(&mut self) -> String {
        const WORDS: [&str; 8] = ["fin-01", "agent", "résumé", "", "a\"b", "工具", "search", "x"];
        (0..1 + self.below(2)).map(|_| WORDS[self.below(WORDS.len())]).collect()
    }
    fn double(&mut self) -> f64 {
        match self.below(8) {
            0 => f64::NAN,
            1 => -1.5,
            2 => 0.0,
            3 => f64::INFINITY,
            _ => (self.next() % 1_000_000) as f64 / 100.0,
        }
    }
}

/// One writer field: its schema and its value for a record.
struct Field {
    name: String,
    schema: Json,
    value: Value,
}

fn field(name: &str, schema: Json, value: Value) -> Field {
    Field { name: name.to_string(), schema, value }
}

/// An optional field: left out, bare (when present), or a union with null in either order.
fn optional(r: &mut Rng, name: &str, ty: Json, v: Option<Value>, out: &mut Vec<Field>) {
    match (r.below(4), v) {
        (0, _) => {}
        (1, Some(v)) => out.push(field(name, ty, v)),
        (2, v) => {
            let value = v.map_or(Value::Union(1, Box::new(Value::Null)), |v| Value::Union(0, Box::new(v)));
            out.push(field(name, json!([ty, "null"]), value));
        }
        (_, v) => {
            let value = v.map_or(Value::Union(0, Box::new(Value::Null)), |v| Value::Union(1, Box::new(v)));
            out.push(field(name, json!(["null", ty]), value));
        }
    }
}

/// A field our schema does not have, of an assorted type.
fn extra(r: &mut Rng, i: usize) -> Field {
    let name = format!("extra_{i}");
    let (schema, value) = match r.below(11) {
        0 => (json!("string"), Value::String(r.text())),
        1 => (json!("long"), Value::Long(r.next() as i64)),
        2 => (json!("int"), Value::Int(r.next() as i32)),
        3 => (json!({"type": "array", "items": "int"}), Value::Array(vec![Value::Int(3), Value::Int(-9)])),
        4 => (
            json!({"type": "map", "values": "string"}),
            Value::Map([("k".to_string(), Value::String(r.text()))].into()),
        ),
        5 => (
            json!({"type": "record", "name": format!("Extra{i}"), "fields": [{"name": "a", "type": "boolean"}, {"name": "b", "type": "double"}]}),
            Value::Record(vec![("a".into(), Value::Boolean(true)), ("b".into(), Value::Double(2.5))]),
        ),
        6 => (
            json!({"type": "enum", "name": format!("Tier{i}"), "symbols": ["gold", "silver"]}),
            Value::Enum(1, "silver".into()),
        ),
        7 => (
            json!({"type": "fixed", "name": format!("Hash{i}"), "size": 4}),
            Value::Fixed(4, vec![1, 2, 3, 4]),
        ),
        8 => (json!(["null", "string"]), Value::Union(1, Box::new(Value::String(r.text())))),
        9 => (json!("bytes"), Value::Bytes(vec![0, 255, 7])),
        _ => (
            json!({"type": "long", "logicalType": "timestamp-millis"}),
            Value::TimestampMillis(1_700_000_000_000),
        ),
    };
    field(&name, schema, value)
}

/// An enum in the writer's own symbol order, maybe with a symbol ours lacks, and its value.
fn enum_field(r: &mut Rng, name: &str, type_name: &str, ours: &[&str], value: &str) -> Field {
    let mut symbols: Vec<&str> = ours.to_vec();
    if r.chance(0.3) {
        symbols.push("unknown_to_us");
    }
    r.shuffle(&mut symbols);
    let written = if symbols.contains(&"unknown_to_us") && r.chance(0.2) { "unknown_to_us" } else { value };
    let i = symbols.iter().position(|s| *s == written).unwrap_or(0);
    field(
        name,
        json!({"type": "enum", "name": type_name, "symbols": symbols}),
        Value::Enum(i as u32, written.to_string()),
    )
}

/// A record with the named string fields in shuffled order, plus maybe an extra one.
fn string_record(r: &mut Rng, type_name: &str, fields: &[(&str, String)]) -> (Json, Value) {
    let mut fs: Vec<(String, Json, Value)> =
        fields.iter().map(|(n, v)| (n.to_string(), json!("string"), Value::String(v.clone()))).collect();
    if r.chance(0.3) {
        fs.push(("note".into(), json!("long"), Value::Long(42)));
    }
    r.shuffle(&mut fs);
    let schema = json!({"type": "record", "name": type_name,
        "fields": fs.iter().map(|(n, s, _)| json!({"name": n, "type": s})).collect::<Vec<_>>()});
    (schema, Value::Record(fs.into_iter().map(|(n, _, v)| (n, v)).collect()))
}

/// A writer schema that evolves ours in ways a producer may, and a datum of it.
fn variant(r: &mut Rng) -> (Schema, Vec<u8>) {
    let mut out = Vec::new();
    for (name, v) in [("event_id", r.text()), ("agent_id", r.text()), ("workflow", r.text())] {
        out.push(field(name, json!("string"), Value::String(v)));
    }
    let model = [("provider", r.text()), ("name", r.text()), ("version", r.text())];
    let (schema, value) = string_record(r, "Model", &model);
    out.push(field("model", schema, value));
    let at = r.next() as i64 >> r.below(40);
    out.push(if r.chance(0.5) {
        field(
            "occurred_at",
            json!({"type": "long", "logicalType": "timestamp-micros"}),
            Value::TimestampMicros(at),
        )
    } else {
        field("occurred_at", json!("long"), Value::Long(at))
    });
    let risk = ["low", "medium", "high"][r.below(3)];
    out.push(enum_field(r, "risk", "Risk", &["low", "medium", "high"], risk));
    let outcome = ["ok", "refused", "error"][r.below(3)];
    out.push(enum_field(r, "outcome", "Outcome", &["ok", "refused", "error"], outcome));
    let latency = r.chance(0.7).then(|| Value::Double(r.double()));
    optional(r, "latency_ms", json!("double"), latency, &mut out);
    let citations = r.chance(0.6).then(|| {
        let total = r.below(5) as i32 - i32::from(r.chance(0.05));
        let verified = r.below(6) as i32;
        let mut fs = vec![("total", Value::Int(total)), ("verified", Value::Int(verified))];
        if r.chance(0.3) {
            fs.push(("sources", Value::Array(vec![Value::String(r.text())])));
        }
        r.shuffle(&mut fs);
        fs
    });
    let cit_schema = |fs: &[(&str, Value)]| {
        json!({"type": "record", "name": "Citations", "fields": fs.iter().map(|(n, _)| match *n {
            "sources" => json!({"name": n, "type": {"type": "array", "items": "string"}}),
            _ => json!({"name": n, "type": "int"}),
        }).collect::<Vec<_>>()})
    };
    let default_fields = [("total", Value::Int(0)), ("verified", Value::Int(0))];
    let schema = cit_schema(citations.as_deref().unwrap_or(&default_fields));
    let value = citations.map(|fs| Value::Record(fs.into_iter().map(|(n, v)| (n.to_string(), v)).collect()));
    optional(r, "citations", schema, value, &mut out);
    let pii = r.chance(0.7).then(|| Value::Boolean(r.chance(0.5)));
    optional(r, "pii_detected", json!("boolean"), pii, &mut out);
    if r.chance(0.8) {
        let tools = (0..r.below(4)).map(|_| Value::String(r.text())).collect();
        out.push(field("tool_calls", json!({"type": "array", "items": "string"}), Value::Array(tools)));
    }
    if r.chance(0.8) {
        let mut kinds = vec!["double", "string", "boolean"];
        r.shuffle(&mut kinds);
        kinds.truncate(1 + r.below(3));
        let bare = kinds.len() == 1 && r.chance(0.5);
        let mut map = std::collections::HashMap::new();
        for i in 0..r.below(4) {
            let k = r.below(kinds.len());
            let v = match kinds[k] {
                "double" => Value::Double(r.double()),
                "string" => Value::String(r.text()),
                _ => Value::Boolean(r.chance(0.5)),
            };
            map.insert(format!("attr{}", i % 3), if bare { v } else { Value::Union(k as u32, Box::new(v)) });
        }
        let values = if bare { json!(kinds[0]) } else { json!(kinds) };
        out.push(field("attributes", json!({"type": "map", "values": values}), Value::Map(map)));
    }
    for i in 0..r.below(4) {
        let at = r.below(out.len() + 1);
        out.insert(at, extra(r, i));
    }
    // Producers reorder fields too.
    if r.chance(0.3) {
        r.shuffle(&mut out);
    }
    let (name, ns) =
        if r.chance(0.8) { ("AgentTelemetry", "io.driftgate.telemetry") } else { ("Telemetry", "com.acme") };
    let schema = json!({"type": "record", "name": name, "namespace": ns,
        "fields": out.iter().map(|f| json!({"name": f.name, "type": f.schema})).collect::<Vec<_>>()});
    let schema = Schema::parse_str(&schema.to_string()).expect("generated schema parses");
    let value = Value::Record(out.into_iter().map(|f| (f.name, f.value)).collect());
    let datum = write_datum(&schema, value).expect("generated value fits its schema");
    (schema, datum)
}

fn same(a: &Telemetry, b: &Telemetry) -> bool {
    // NaN never reaches a `Telemetry` (validation refuses it), so equality is exact.
    a == b
}

#[test]
fn our_own_schema_decodes_exactly_like_the_generic_path() {
    let ours = crate::codec::schemas::telemetry();
    let plan = TelemetryPlan::compile(ours).expect("our schema has a plan");
    let t = Telemetry::from_json(
        br#"{"event_id":"e1","agent_id":"fin-01","workflow":"finance","model":{"provider":"acme","name":"m","version":"v1"},
            "occurred_at":1772409600000000,"risk":"high","outcome":"refused","latency_ms":812.5,
            "citations":{"total":3,"verified":2},"pii_detected":false,"tool_calls":["search","calc"],
            "attributes":{"judge_score":4.5,"lang":"en","escalated":false}}"#,
    )
    .expect("valid sample");
    let datum = write_datum(ours, t.to_avro()).expect("encodes");
    assert_eq!(plan.read(&datum), Ok(t.clone()));
    assert_eq!(generic(ours, &datum), Ok(t));
}

/// A map's entries as a writer may put them: out of name order, over two blocks, with a name
/// given twice (which apache-avro's generic map reads as its last value). The plan sorts them
/// once at the end; it must agree with the generic path, entry for entry.
#[test]
fn attributes_out_of_order_and_repeated_decode_like_the_generic_path() {
    let ours = crate::codec::schemas::telemetry();
    let plan = TelemetryPlan::compile(ours).expect("our schema has a plan");
    let mut t = Telemetry::from_json(
        br#"{"event_id":"e1","agent_id":"a","workflow":"w","model":{"provider":"p","name":"n","version":"v"},
            "occurred_at":1,"risk":"low","outcome":"ok"}"#,
    )
    .expect("valid sample");
    let mut datum = write_datum(ours, t.to_avro()).expect("encodes");
    // `attributes` is the schema's last field: an empty map is its final byte, a zero count.
    assert_eq!(datum.pop(), Some(0));
    let zigzag = |n: i64| ((n << 1) ^ (n >> 63)) as u8;
    let key = |out: &mut Vec<u8>, k: &str| {
        out.push(zigzag(k.len() as i64));
        out.extend_from_slice(k.as_bytes());
    };
    let double = |out: &mut Vec<u8>, k: &str, v: f64| {
        key(out, k);
        out.push(zigzag(0));
        out.extend_from_slice(&v.to_le_bytes());
    };
    let text = |out: &mut Vec<u8>, k: &str, v: &str| {
        key(out, k);
        out.push(zigzag(1));
        key(out, v);
    };
    datum.push(zigzag(3));
    double(&mut datum, "zeta", 1.0);
    text(&mut datum, "beta", "first, and long enough not to be inline");
    double(&mut datum, "alpha", 2.0);
    datum.push(zigzag(2));
    text(&mut datum, "beta", "last");
    key(&mut datum, "flag");
    datum.extend([zigzag(2), 1]);
    datum.push(zigzag(0));
    t.attributes = [
        ("alpha", Attr::Num(2.0)),
        ("beta", Attr::Str("last".into())),
        ("flag", Attr::Bool(true)),
        ("zeta", Attr::Num(1.0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(generic(ours, &datum), Ok(t.clone()));
    assert_eq!(plan.read(&datum), Ok(t));
}

#[test]
fn evolved_writer_schemas_decode_exactly_like_the_generic_path() {
    let (mut accepted, mut rejected) = (0, 0);
    for seed in 0..3000 {
        let mut r = Rng(seed);
        let (schema, datum) = variant(&mut r);
        let plan = TelemetryPlan::compile(&schema)
            .unwrap_or_else(|| panic!("seed {seed}: no plan for {}", schema.canonical_form()));
        let fast = plan.read(&datum);
        let slow = generic(&schema, &datum);
        match (&fast, &slow) {
            (Ok(a), Ok(b)) if same(a, b) => accepted += 1,
            (Err(_), Err(_)) => rejected += 1,
            _ => panic!("seed {seed}: plan {fast:?}, generic {slow:?}\nschema {}", schema.canonical_form()),
        }
    }
    // Both verdicts are exercised: values that fail validation (NaN latency, empty ids,
    // verified > total) and symbols we lack are rejected by both paths.
    assert!(accepted > 1000 && rejected > 300, "accepted {accepted}, rejected {rejected}");
}

#[test]
fn corrupted_datums_are_never_accepted_by_the_plan_alone() {
    let (mut both_ok, mut plan_declined) = (0, 0);
    for seed in 0..4000 {
        let mut r = Rng(seed ^ 0xdead_beef);
        let (schema, mut datum) = variant(&mut r);
        let plan = TelemetryPlan::compile(&schema).expect("generated schemas have plans");
        for _ in 0..1 + r.below(3) {
            match r.below(5) {
                0 if !datum.is_empty() => {
                    let i = r.below(datum.len());
                    datum[i] ^= 1 << r.below(8);
                }
                1 if !datum.is_empty() => datum.truncate(r.below(datum.len())),
                2 => {
                    let i = r.below(datum.len() + 1);
                    datum.insert(i, r.next() as u8);
                }
                3 if !datum.is_empty() => {
                    let i = r.below(datum.len());
                    datum[i] = [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff][r.below(6)];
                }
                _ if !datum.is_empty() => {
                    let i = r.below(datum.len());
                    datum.remove(i);
                }
                _ => {}
            }
        }
        match plan.read(&datum) {
            Ok(fast) => {
                let slow = generic(&schema, &datum);
                assert_eq!(
                    slow.as_ref(),
                    Ok(&fast),
                    "seed {seed}: the plan accepted what the generic path did not"
                );
                both_ok += 1;
            }
            Err(FastReadError) => plan_declined += 1,
        }
    }
    assert!(both_ok > 100 && plan_declined > 1000, "both {both_ok}, declined {plan_declined}");
}

#[test]
fn shapes_the_plan_does_not_read_have_no_plan() {
    let ours: Json = serde_json::from_str(crate::model::telemetry::TELEMETRY_AVSC).expect("bundled");
    let with = |name: &str, ty: Json| {
        let mut v = ours.clone();
        for f in v["fields"].as_array_mut().expect("fields") {
            if f["name"] == name {
                f["type"] = ty.clone();
            }
        }
        Schema::parse_str(&v.to_string()).expect("variant parses")
    };
    for (name, ty) in [
        // Promotions the generic path applies (bytes to string, int to long, float to double).
        ("event_id", json!("bytes")),
        ("occurred_at", json!("int")),
        ("latency_ms", json!(["null", "float"])),
        // A union with a branch that is neither null nor the value.
        ("pii_detected", json!(["null", "boolean", "string"])),
        ("tool_calls", json!(["null", {"type": "array", "items": "string"}])),
        ("attributes", json!({"type": "map", "values": ["double", "long"]})),
    ] {
        assert!(TelemetryPlan::compile(&with(name, ty.clone())).is_none(), "{name}: {ty}");
    }
    // A required field the writer lacks: the generic path names it.
    let mut v = ours.clone();
    v["fields"].as_array_mut().expect("fields").retain(|f| f["name"] != "workflow");
    assert!(TelemetryPlan::compile(&Schema::parse_str(&v.to_string()).expect("parses")).is_none());
    // A named type used by reference.
    let mut v = ours;
    v["fields"].as_array_mut().expect("fields").push(json!({"name": "backup_model", "type": "Model"}));
    assert!(TelemetryPlan::compile(&Schema::parse_str(&v.to_string()).expect("parses")).is_none());
}

/// Every varint the cursor reads, one byte or more, reads as apache-avro reads a `long`; an
/// encoding it refuses (cut short, or past ten bytes) the cursor refuses too.
#[test]
fn varints_read_like_apache_avro_longs() {
    let long = Schema::Long;
    let reader = crate::codec::avro_json::datum_reader(&long, None).unwrap();
    let reference = |bytes: &[u8]| -> Option<(i64, usize)> {
        let mut rest = bytes;
        match reader.read_value(&mut rest) {
            Ok(Value::Long(v)) => Some((v, bytes.len() - rest.len())),
            _ => None,
        }
    };
    let ours = |bytes: &[u8]| -> Option<(i64, usize)> {
        let mut c = Cursor { buf: bytes };
        c.long().ok().map(|v| (v, bytes.len() - c.buf.len()))
    };
    let mut cases: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for v in [0i64, -1, 1, 63, -64, 64, -65, 8191, -8192, 8192, i32::MAX as i64, i64::MAX, i64::MIN] {
        let mut enc = write_datum(&long, Value::Long(v)).unwrap();
        enc.push(0x55); // A byte after it, left unread.
        cases.push(enc);
    }
    cases.push(vec![0x80]); // Cut short.
    cases.push(vec![]);
    cases.push(vec![0xff; 11]); // Past ten bytes.
    let mut rng = Rng(0x5eed_0da7);
    for _ in 0..20_000 {
        let len = 1 + rng.below(12);
        // Mostly continuation bytes, so that long encodings are common.
        cases.push(
            (0..len)
                .map(|_| if rng.below(4) == 0 { (rng.next() & 0x7f) as u8 } else { 0x80 | rng.next() as u8 })
                .collect(),
        );
    }
    let mut read = 0;
    for bytes in &cases {
        let want = reference(bytes);
        // apache-avro reads at most ten bytes, as we do; where it accepts, we agree exactly.
        if let Some(w) = want {
            assert_eq!(ours(bytes), Some(w), "{bytes:02x?}");
            read += 1;
        } else {
            assert_eq!(ours(bytes), None, "{bytes:02x?}: apache-avro refuses it");
        }
    }
    assert!(read > 10_000, "most cases are valid varints ({read})");
    for b in 0..=0x7fu8 {
        assert_eq!(ours(&[b]), Some((unzigzag(u64::from(b)), 1)));
    }
    assert_eq!((unzigzag(0), unzigzag(1), unzigzag(2), unzigzag(u64::MAX)), (0, -1, 1, i64::MIN));
}
