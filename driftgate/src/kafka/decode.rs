//! Telemetry records off Kafka: Confluent-framed Avro (resolved from the writer's schema to
//! ours, so producers can evolve compatibly) or JSON; then the value checks.
//!
//! Avro takes a plan compiled once per writer schema, which decodes straight into the struct
//! (`driftgate_core::codec::telemetry_avro`); a datum it gives up on, and every datum of a
//! schema it cannot compile, takes apache-avro's generic path, which gives the verdict and the
//! dead-letter reason.
//!
//! A bad record is [`DecodeError::Rejected`] with a stable reason code for the dead-letter
//! headers. A registry outage is [`DecodeError::Unavailable`]: nothing is wrong with the
//! record, so it must be retried, never dead-lettered.

use crate::config::InputFormat;
use crate::kafka::registry::{RegistryError, SchemaSource};
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use driftgate_core::codec::telemetry_avro::TelemetryPlan;
use driftgate_core::model::telemetry::{Telemetry, TelemetryError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Stable reason codes, written to the `driftgate.reason` header of dead letters.
pub mod reason {
    /// The record has no value.
    pub const EMPTY: &str = "empty_payload";
    /// Not the Confluent wire format (magic byte 0 and a 4-byte schema id).
    pub const NOT_CONFLUENT: &str = "not_confluent_avro";
    /// The schema id is not registered.
    pub const UNKNOWN_SCHEMA_ID: &str = "unknown_schema_id";
    /// The registered writer schema does not parse.
    pub const BAD_SCHEMA: &str = "bad_writer_schema";
    /// The datum does not decode with its writer schema.
    pub const AVRO_DECODE: &str = "avro_decode_error";
    /// The writer schema cannot be resolved to the telemetry schema.
    pub const SCHEMA_MISMATCH: &str = "schema_mismatch";
    /// Not JSON, or not telemetry-shaped JSON.
    pub const INVALID_JSON: &str = "invalid_json";
    /// A required field is absent.
    pub const MISSING_FIELD: &str = "missing_field";
    /// A field has an invalid value (e.g. NaN latency).
    pub const INVALID_FIELD: &str = "invalid_field";
    /// `occurred_at` is further ahead of the Kafka timestamp than allowed.
    pub const FUTURE_TIMESTAMP: &str = "future_timestamp";
    /// Every code the decoder gives.
    pub const ALL: [&str; 10] = [
        EMPTY,
        NOT_CONFLUENT,
        UNKNOWN_SCHEMA_ID,
        BAD_SCHEMA,
        AVRO_DECODE,
        SCHEMA_MISMATCH,
        INVALID_JSON,
        MISSING_FIELD,
        INVALID_FIELD,
        FUTURE_TIMESTAMP,
    ];
}

/// Why a record did not decode.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    /// The record is bad; it goes to the dead-letter topic.
    #[error("{code}: {detail}")]
    Rejected {
        /// One of [`reason`].
        code: &'static str,
        /// What exactly.
        detail: String,
    },
    /// A dependency (the schema registry) is down; retry the record later.
    #[error("retry later: {0}")]
    Unavailable(String),
}

fn rejected(code: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::Rejected { code, detail: detail.into() }
}

impl From<TelemetryError> for DecodeError {
    fn from(e: TelemetryError) -> Self {
        let code = match &e {
            TelemetryError::Missing(_) => reason::MISSING_FIELD,
            TelemetryError::Invalid { .. } => reason::INVALID_FIELD,
            TelemetryError::Json(m) if m.starts_with("missing field") => reason::MISSING_FIELD,
            TelemetryError::Json(_) => reason::INVALID_JSON,
        };
        rejected(code, e.to_string())
    }
}

/// Datum readers for one writer schema, with its names resolved once.
struct Readers {
    /// Decodes straight into the struct; `None` for a writer schema it does not read. Any
    /// datum it gives up on takes the generic readers below, which decide.
    fast: Option<TelemetryPlan>,
    /// Reads the writer's datum as written (to name what is missing on a mismatch).
    plain: GenericDatumReader<'static>,
    /// Resolves to the telemetry schema; `None` when the writer schema is the same.
    resolving: Option<GenericDatumReader<'static>>,
}

/// A writer schema and the readers resolved from it.
type ReaderPair = (Arc<Schema>, Arc<Readers>);

/// The readers of the writer schema a thread decoded last: while its records keep that
/// schema, decoding touches no state shared with other threads.
///
/// Why: the shared cache is a mutex and reference counts, and a decode-ahead helper and the
/// pipeline thread decoding side by side made every record move their cache lines between
/// cores. A schema id names one schema for good (the registry's contract; the static map
/// does not change), so keeping its readers per thread changes no verdict. Only successes
/// are kept: an unknown id or an unreachable registry is asked again at the next record.
#[derive(Default)]
pub struct LastReaders(Option<(u32, Arc<Readers>)>);

/// Decodes and checks telemetry records.
pub struct Decoder {
    format: InputFormat,
    schemas: Option<Arc<dyn SchemaSource>>,
    reader: &'static Schema,
    /// By schema id. Building a reader resolves every name in both schemas, which took
    /// more time than decoding the datum, so it is done once per writer schema.
    readers: Mutex<HashMap<u32, ReaderPair>>,
    max_future_skew: i64,
}

/// Schemas live as long as the process: the readers borrow them, and there are as many as
/// distinct writer schemas the registry knows (a handful), so leaking them is bounded.
fn leak(schema: &Schema) -> &'static Schema {
    Box::leak(Box::new(schema.clone()))
}

impl Decoder {
    /// A decoder; Avro needs a schema source.
    pub fn new(
        format: InputFormat,
        schemas: Option<Arc<dyn SchemaSource>>,
        max_future_skew_micros: i64,
    ) -> Decoder {
        let reader = driftgate_core::codec::schemas::telemetry();
        Decoder {
            format,
            schemas,
            reader,
            readers: Mutex::new(HashMap::new()),
            max_future_skew: max_future_skew_micros,
        }
    }

    /// The readers of writer schema `id`, from the source and the shared cache.
    fn lookup(&self, id: u32) -> Result<Arc<Readers>, DecodeError> {
        let source = self
            .schemas
            .as_ref()
            .ok_or_else(|| rejected(reason::UNKNOWN_SCHEMA_ID, "no schema source configured"))?;
        let writer = source.schema(id).map_err(|e| match e {
            RegistryError::UnknownId(_) => rejected(reason::UNKNOWN_SCHEMA_ID, e.to_string()),
            RegistryError::BadSchema { .. } => rejected(reason::BAD_SCHEMA, e.to_string()),
            RegistryError::Unavailable(m) => DecodeError::Unavailable(m),
        })?;
        self.readers(id, &writer)
    }

    fn readers(&self, id: u32, writer: &Arc<Schema>) -> Result<Arc<Readers>, DecodeError> {
        let mut cache =
            self.readers.lock().map_err(|_| DecodeError::Unavailable("decoder cache poisoned".into()))?;
        if let Some((w, r)) = cache.get_mut(&id) {
            // Sources hand out one cached object per id; should one hand out another, an
            // equal schema reuses the readers (so nothing leaks again).
            if Arc::ptr_eq(w, writer) || **w == **writer {
                *w = writer.clone();
                return Ok(r.clone());
            }
        }
        let bad = |e: apache_avro::Error| rejected(reason::BAD_SCHEMA, format!("schema id {id}: {e}"));
        let w = leak(writer);
        let plain = GenericDatumReader::builder(w).build().map_err(bad)?;
        let resolving = if w.canonical_form() == self.reader.canonical_form() {
            None
        } else {
            Some(GenericDatumReader::builder(w).reader_schema(self.reader).build().map_err(bad)?)
        };
        let fast = TelemetryPlan::compile(w);
        if fast.is_none() {
            tracing::info!(schema_id = id, "writer schema has a shape the compiled decoder does not read; its records decode the generic way");
        }
        let r = Arc::new(Readers { fast, plain, resolving });
        cache.insert(id, (writer.clone(), r.clone()));
        Ok(r)
    }

    /// Decodes one record value. `record_time` is the Kafka timestamp (µs), the reference
    /// for the future-timestamp check (never the wall clock, so replays agree).
    pub fn decode(&self, payload: Option<&[u8]>, record_time: Option<i64>) -> Result<Telemetry, DecodeError> {
        self.decode_with(&mut LastReaders::default(), payload, record_time)
    }

    /// The same, for a thread that decodes many records: `last` keeps the readers of its
    /// last writer schema (one per thread; see [`LastReaders`]).
    pub fn decode_with(
        &self,
        last: &mut LastReaders,
        payload: Option<&[u8]>,
        record_time: Option<i64>,
    ) -> Result<Telemetry, DecodeError> {
        let bytes = payload
            .filter(|b| !b.is_empty())
            .ok_or_else(|| rejected(reason::EMPTY, "the record has no value"))?;
        let t = match self.format {
            InputFormat::Json => Telemetry::from_json(bytes)?,
            InputFormat::Avro => self.decode_avro(last, bytes)?,
        };
        if let Some(rt) = record_time {
            if t.occurred_at > rt.saturating_add(self.max_future_skew) {
                return Err(rejected(
                    reason::FUTURE_TIMESTAMP,
                    format!(
                        "occurred_at {} is {} s after the record timestamp {} (allowed {} s)",
                        driftgate_core::timefmt::rfc3339(t.occurred_at),
                        (t.occurred_at - rt) / 1_000_000,
                        driftgate_core::timefmt::rfc3339(rt),
                        self.max_future_skew / 1_000_000
                    ),
                ));
            }
        }
        Ok(t)
    }

    fn decode_avro(&self, last: &mut LastReaders, bytes: &[u8]) -> Result<Telemetry, DecodeError> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(rejected(
                reason::NOT_CONFLUENT,
                format!(
                    "{} bytes, first byte {:#04x}; expected magic byte 0 and a 4-byte schema id",
                    bytes.len(),
                    bytes[0]
                ),
            ));
        }
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let readers: &Readers = match &mut last.0 {
            Some((known, readers)) if *known == id => readers,
            slot => &slot.insert((id, self.lookup(id)?)).1,
        };
        if let Some(t) = readers.fast.as_ref().and_then(|plan| plan.read(&bytes[5..]).ok()) {
            return Ok(t);
        }
        let read = |r: &GenericDatumReader<'static>| {
            let mut datum = &bytes[5..];
            let v = r
                .read_value(&mut datum)
                .map_err(|e| rejected(reason::AVRO_DECODE, format!("schema id {id}: {e}")))?;
            if !datum.is_empty() {
                return Err(rejected(
                    reason::AVRO_DECODE,
                    format!("schema id {id}: {} trailing bytes", datum.len()),
                ));
            }
            Ok(v)
        };
        let Some(resolving) = &readers.resolving else {
            return Ok(Telemetry::from_avro(read(&readers.plain)?)?);
        };
        match read(resolving) {
            Ok(v) => Ok(Telemetry::from_avro(v)?),
            Err(resolve_err) => {
                // Tell a bad datum from a schema that does not resolve, and name the field
                // when the writer's record simply lacks one we require.
                let value = read(&readers.plain)?;
                let detail = match resolve_err {
                    DecodeError::Rejected { detail, .. } => detail,
                    DecodeError::Unavailable(d) => d,
                };
                match Telemetry::from_avro(value) {
                    Err(te @ TelemetryError::Missing(_)) => Err(te.into()),
                    _ => Err(rejected(
                        reason::SCHEMA_MISMATCH,
                        format!("schema id {id} does not resolve to the telemetry schema: {detail}"),
                    )),
                }
            }
        }
    }
}

/// Frames an Avro datum in the Confluent wire format.
pub fn confluent_frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(datum.len() + 5);
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::registry::StaticSchemas;

    fn sample() -> Telemetry {
        Telemetry::from_json(
            br#"{"event_id":"e1","agent_id":"a","workflow":"w","model":{"provider":"p","name":"m","version":"v1"},
                "occurred_at":1772409600000000,"risk":"low","outcome":"ok","latency_ms":10.0,"citations":null,
                "pii_detected":false,"tool_calls":[],"attributes":{}}"#,
        )
        .unwrap()
    }

    fn avro_decoder() -> (Decoder, Schema) {
        let schema = driftgate_core::codec::schemas::telemetry().clone();
        let src = Arc::new(StaticSchemas::new([(7, schema.clone())]));
        (Decoder::new(InputFormat::Avro, Some(src), 3_600_000_000), schema)
    }

    fn code(r: Result<Telemetry, DecodeError>) -> &'static str {
        match r {
            Err(DecodeError::Rejected { code, .. }) => code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn confluent_avro_round_trip_and_rejections() {
        let (d, schema) = avro_decoder();
        let datum = driftgate_core::codec::avro_json::write_datum(&schema, sample().to_avro()).unwrap();
        let ok = d.decode(Some(&confluent_frame(7, &datum)), Some(sample().occurred_at)).unwrap();
        assert_eq!(ok, sample());
        assert_eq!(code(d.decode(Some(b"garbage!"), None)), reason::NOT_CONFLUENT);
        assert_eq!(code(d.decode(Some(&confluent_frame(99, &datum)), None)), reason::UNKNOWN_SCHEMA_ID);
        assert_eq!(
            code(d.decode(Some(&confluent_frame(7, &datum[..datum.len() / 2])), None)),
            reason::AVRO_DECODE
        );
        assert_eq!(code(d.decode(None, None)), reason::EMPTY);
        assert_eq!(
            code(d.decode(Some(&confluent_frame(7, &datum)), Some(sample().occurred_at - 7_200_000_000))),
            reason::FUTURE_TIMESTAMP
        );
    }

    #[test]
    fn json_rejections_name_the_reason() {
        let d = Decoder::new(InputFormat::Json, None, 3_600_000_000);
        assert_eq!(code(d.decode(Some(b"{not json"), None)), reason::INVALID_JSON);
        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("agent_id");
        assert_eq!(code(d.decode(Some(v.to_string().as_bytes()), None)), reason::MISSING_FIELD);
        let text =
            serde_json::to_string(&sample()).unwrap().replace("\"latency_ms\":10.0", "\"latency_ms\":-5.0");
        assert_eq!(code(d.decode(Some(text.as_bytes()), None)), reason::INVALID_FIELD);
    }

    #[test]
    fn a_writer_schema_without_a_plan_decodes_the_generic_way() {
        // `event_id` as bytes: Avro resolution promotes it to a string; the plan does not.
        let mut v: serde_json::Value =
            serde_json::from_str(driftgate_core::model::telemetry::TELEMETRY_AVSC).unwrap();
        v["fields"][0]["type"] = serde_json::json!("bytes");
        let writer = Schema::parse_str(&v.to_string()).unwrap();
        assert!(TelemetryPlan::compile(&writer).is_none());
        let apache_avro::types::Value::Record(mut fields) = sample().to_avro() else { unreachable!() };
        fields[0].1 = apache_avro::types::Value::Bytes(b"e1".to_vec());
        let datum =
            driftgate_core::codec::avro_json::write_datum(&writer, apache_avro::types::Value::Record(fields))
                .unwrap();
        let src = Arc::new(StaticSchemas::new([(3, writer)]));
        let d = Decoder::new(InputFormat::Avro, Some(src), 3_600_000_000);
        assert_eq!(d.decode(Some(&confluent_frame(3, &datum)), None), Ok(sample()));
        // A datum the plan gives up on still gets the generic verdict and reason.
        let (d, schema) = avro_decoder();
        let mut datum = driftgate_core::codec::avro_json::write_datum(&schema, sample().to_avro()).unwrap();
        datum.push(0);
        assert_eq!(code(d.decode(Some(&confluent_frame(7, &datum)), None)), reason::AVRO_DECODE);
    }

    struct Down;
    impl SchemaSource for Down {
        fn schema(&self, _: u32) -> Result<Arc<Schema>, RegistryError> {
            Err(RegistryError::Unavailable("connection refused".into()))
        }
    }

    /// Schemas 7 (ours), 3 (`event_id` as bytes: the generic path) and 5 (ours, whose
    /// registry is down at the first request); counts the requests.
    struct Counting {
        schemas: StaticSchemas,
        calls: std::sync::atomic::AtomicUsize,
        five_down: std::sync::atomic::AtomicBool,
    }
    impl SchemaSource for Counting {
        fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if id == 5 && self.five_down.swap(false, SeqCst) {
                return Err(RegistryError::Unavailable("connection refused".into()));
            }
            self.schemas.schema(id)
        }
    }

    #[test]
    fn a_thread_keeps_the_readers_of_its_last_schema_and_every_verdict_is_the_same() {
        let ours = driftgate_core::codec::schemas::telemetry().clone();
        let mut v: serde_json::Value =
            serde_json::from_str(driftgate_core::model::telemetry::TELEMETRY_AVSC).unwrap();
        v["fields"][0]["type"] = serde_json::json!("bytes");
        let bytes_id = Schema::parse_str(&v.to_string()).unwrap();
        let apache_avro::types::Value::Record(mut fields) = sample().to_avro() else { unreachable!() };
        fields[0].1 = apache_avro::types::Value::Bytes(b"e1".to_vec());
        let evolved = driftgate_core::codec::avro_json::write_datum(
            &bytes_id,
            apache_avro::types::Value::Record(fields),
        )
        .unwrap();
        let datum = driftgate_core::codec::avro_json::write_datum(&ours, sample().to_avro()).unwrap();
        let source = Arc::new(Counting {
            schemas: StaticSchemas::new([(7, ours.clone()), (3, bytes_id), (5, ours)]),
            calls: Default::default(),
            five_down: std::sync::atomic::AtomicBool::new(true),
        });
        let d = Decoder::new(InputFormat::Avro, Some(source.clone()), 3_600_000_000);
        let mut last = LastReaders::default();
        let mut decode =
            |id: u32, datum: &[u8]| d.decode_with(&mut last, Some(&confluent_frame(id, datum)), None);
        assert_eq!(decode(7, &datum), Ok(sample()));
        assert_eq!(decode(7, &datum), Ok(sample()));
        assert_eq!(decode(3, &evolved), Ok(sample()), "another writer schema, the generic path");
        assert_eq!(decode(3, &evolved), Ok(sample()));
        assert_eq!(code(decode(99, &datum)), reason::UNKNOWN_SCHEMA_ID);
        assert_eq!(code(decode(99, &datum)), reason::UNKNOWN_SCHEMA_ID, "a failure is not kept");
        assert!(matches!(decode(5, &datum), Err(DecodeError::Unavailable(_))));
        assert_eq!(decode(5, &datum), Ok(sample()), "an outage is asked again");
        assert_eq!(code(decode(5, &datum[..datum.len() / 2])), reason::AVRO_DECODE);
        assert_eq!(
            code(decode(3, &evolved[..evolved.len() / 2])),
            reason::AVRO_DECODE,
            "the generic verdict"
        );
        assert_eq!(decode(7, &datum), Ok(sample()));
        // Asked at each change of schema id and after each failure: 7, 3, 99, 99, 5 (down), 5,
        // 3, 7; the repeats of a kept id were not asked.
        assert_eq!(source.calls.load(std::sync::atomic::Ordering::SeqCst), 8);
    }

    #[test]
    fn registry_outage_is_retry_not_dead_letter() {
        let d = Decoder::new(InputFormat::Avro, Some(Arc::new(Down)), 0);
        assert!(matches!(d.decode(Some(&confluent_frame(1, b"x")), None), Err(DecodeError::Unavailable(_))));
    }
}
