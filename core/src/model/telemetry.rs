//! Agent telemetry: the event model, its JSON shape and its Avro decoding.

use apache_avro::types::Value as AvroValue;
/// Telemetry's strings: ids, names and tools are short, and held inline up to 24 bytes they
/// cost no allocation to decode or to free (freeing a record's eight strings was a sixth of
/// the engine's time per event).
pub use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod attributes;
pub use attributes::{Attr, Attributes};

/// The Avro schema of [`Telemetry`], as published in `schemas/agent_telemetry.avsc`.
pub const TELEMETRY_AVSC: &str = include_str!("../../../schemas/agent_telemetry.avsc");

/// Risk class of the action the agent took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Low risk.
    Low,
    /// Medium risk.
    Medium,
    /// High risk: guarded by the high-risk scope.
    High,
}

impl Risk {
    /// Every class with its name, as the JSON and Avro encodings spell it.
    pub const NAMED: [(&'static str, Risk); 3] =
        [("low", Risk::Low), ("medium", Risk::Medium), ("high", Risk::High)];

    /// The class `name` spells, if any.
    pub fn from_name(name: &str) -> Option<Risk> {
        Self::NAMED.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    /// Its name; [`Risk::NAMED`] is in declaration order, which is also the Avro symbols'.
    pub fn name(self) -> &'static str {
        Self::NAMED[self as usize].0
    }
}

/// Outcome of the agent's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Refused to answer.
    Refused,
    /// Failed.
    Error,
}

impl Outcome {
    /// Every outcome with its name, as the JSON and Avro encodings spell it.
    pub const NAMED: [(&'static str, Outcome); 3] =
        [("ok", Outcome::Ok), ("refused", Outcome::Refused), ("error", Outcome::Error)];

    /// The outcome `name` spells, if any.
    pub fn from_name(name: &str) -> Option<Outcome> {
        Self::NAMED.iter().find(|(n, _)| *n == name).map(|(_, o)| *o)
    }

    /// Its name; [`Outcome::NAMED`] is in declaration order, which is also the Avro symbols'.
    pub fn name(self) -> &'static str {
        Self::NAMED[self as usize].0
    }
}

/// The model that produced the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Provider, e.g. `anthropic`.
    pub provider: CompactString,
    /// Model name.
    pub name: CompactString,
    /// Model version; a change of version is a scope change that needs re-verification.
    pub version: CompactString,
}

/// Citation counts of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Citations {
    /// Citations given.
    pub total: u32,
    /// Citations verified against a source.
    pub verified: u32,
}

/// One agent output event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Unique id (idempotency key).
    pub event_id: CompactString,
    /// The agent.
    pub agent_id: CompactString,
    /// The workflow, e.g. `finance`.
    pub workflow: CompactString,
    /// The model.
    pub model: Model,
    /// Event time, microseconds since the Unix epoch.
    pub occurred_at: i64,
    /// Risk class.
    pub risk: Risk,
    /// Outcome.
    pub outcome: Outcome,
    /// Latency in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Citation counts.
    #[serde(default)]
    pub citations: Option<Citations>,
    /// Whether PII was found in the output.
    #[serde(default)]
    pub pii_detected: Option<bool>,
    /// Tools called, in order.
    #[serde(default)]
    pub tool_calls: Vec<CompactString>,
    /// Free-form signals such as judge scores.
    #[serde(default)]
    pub attributes: Attributes,
}

/// Why a record is not valid telemetry.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TelemetryError {
    /// A required field is absent.
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong type or an invalid value.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// Field path.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Not JSON telemetry.
    #[error("invalid JSON telemetry: {0}")]
    Json(String),
}

impl Telemetry {
    /// Parses and validates the JSON encoding.
    ///
    /// A parser written for this one shape reads first (`codec::telemetry_json`, about
    /// twice as fast as serde_json through sonic-rs). It is only an accelerator: a record it
    /// refuses, or that fails validation, is parsed again by serde_json, which gives the
    /// verdict and the error. So the two may differ in what they refuse, but not in what is
    /// accepted (see the differential tests).
    pub fn from_json(bytes: &[u8]) -> Result<Telemetry, TelemetryError> {
        match Self::from_json_fast(bytes) {
            Some(t) => Ok(t),
            None => Self::from_json_reference(bytes),
        }
    }

    /// The fast path alone: a valid record, or `None` for anything it does not accept.
    /// Public for the differential tests and fuzz targets.
    #[doc(hidden)]
    pub fn from_json_fast(bytes: &[u8]) -> Option<Telemetry> {
        crate::codec::telemetry_json::read(bytes).filter(|t| t.validate().is_ok())
    }

    /// The reference JSON decoding (serde_json), which decides every record the fast parser
    /// does not accept.
    pub fn from_json_reference(bytes: &[u8]) -> Result<Telemetry, TelemetryError> {
        let t: Telemetry = serde_json::from_slice(bytes).map_err(|e| TelemetryError::Json(e.to_string()))?;
        t.validate()?;
        Ok(t)
    }

    /// Checks values that the types alone do not: finite latency, sane citation counts,
    /// non-empty ids.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        let invalid =
            |field, reason: &str| Err(TelemetryError::Invalid { field, reason: reason.to_string() });
        if self.event_id.is_empty() {
            return invalid("event_id", "must not be empty");
        }
        if self.agent_id.is_empty() {
            return invalid("agent_id", "must not be empty");
        }
        if let Some(l) = self.latency_ms {
            if !l.is_finite() || l < 0.0 {
                return invalid("latency_ms", &format!("must be a finite non-negative number, got {l}"));
            }
        }
        if let Some(c) = self.citations {
            if c.verified > c.total {
                return invalid("citations.verified", "exceeds citations.total");
            }
        }
        for (k, v) in &self.attributes {
            if let Attr::Num(x) = v {
                if !x.is_finite() {
                    return Err(TelemetryError::Invalid {
                        field: "attributes",
                        reason: format!("`{k}` is not finite"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Converts a decoded Avro record (already resolved to [`TELEMETRY_AVSC`]).
    pub fn from_avro(v: AvroValue) -> Result<Telemetry, TelemetryError> {
        let mut f = record_fields(v, "record")?;
        let model = record_fields(take(&mut f, "model")?, "model")?;
        let mut model = model;
        let t = Telemetry {
            event_id: string(take(&mut f, "event_id")?, "event_id")?,
            agent_id: string(take(&mut f, "agent_id")?, "agent_id")?,
            workflow: string(take(&mut f, "workflow")?, "workflow")?,
            model: Model {
                provider: string(take(&mut model, "provider")?, "model.provider")?,
                name: string(take(&mut model, "name")?, "model.name")?,
                version: string(take(&mut model, "version")?, "model.version")?,
            },
            occurred_at: match unwrap_union(take(&mut f, "occurred_at")?) {
                AvroValue::TimestampMicros(t) | AvroValue::Long(t) => t,
                AvroValue::TimestampMillis(t) => t.saturating_mul(1000),
                other => return Err(wrong("occurred_at", &other)),
            },
            risk: match unwrap_union(take(&mut f, "risk")?) {
                AvroValue::Enum(_, s) | AvroValue::String(s) => match Risk::from_name(&s) {
                    Some(r) => r,
                    None => {
                        return Err(TelemetryError::Invalid {
                            field: "risk",
                            reason: format!("unknown risk {s:?}"),
                        })
                    }
                },
                other => return Err(wrong("risk", &other)),
            },
            outcome: match unwrap_union(take(&mut f, "outcome")?) {
                AvroValue::Enum(_, s) | AvroValue::String(s) => match Outcome::from_name(&s) {
                    Some(o) => o,
                    None => {
                        return Err(TelemetryError::Invalid {
                            field: "outcome",
                            reason: format!("unknown outcome {s:?}"),
                        })
                    }
                },
                other => return Err(wrong("outcome", &other)),
            },
            latency_ms: match f.remove("latency_ms").map(unwrap_union) {
                None | Some(AvroValue::Null) => None,
                Some(AvroValue::Double(d)) => Some(d),
                Some(AvroValue::Float(d)) => Some(d as f64),
                Some(AvroValue::Long(d)) => Some(d as f64),
                Some(AvroValue::Int(d)) => Some(d as f64),
                Some(other) => return Err(wrong("latency_ms", &other)),
            },
            citations: match f.remove("citations").map(unwrap_union) {
                None | Some(AvroValue::Null) => None,
                Some(v) => {
                    let mut c = record_fields(v, "citations")?;
                    Some(Citations {
                        total: count(take(&mut c, "total")?, "citations.total")?,
                        verified: count(take(&mut c, "verified")?, "citations.verified")?,
                    })
                }
            },
            pii_detected: match f.remove("pii_detected").map(unwrap_union) {
                None | Some(AvroValue::Null) => None,
                Some(AvroValue::Boolean(b)) => Some(b),
                Some(other) => return Err(wrong("pii_detected", &other)),
            },
            tool_calls: match f.remove("tool_calls").map(unwrap_union) {
                None | Some(AvroValue::Null) => Vec::new(),
                Some(AvroValue::Array(items)) => {
                    items.into_iter().map(|i| string(i, "tool_calls")).collect::<Result<_, _>>()?
                }
                Some(other) => return Err(wrong("tool_calls", &other)),
            },
            attributes: match f.remove("attributes").map(unwrap_union) {
                None | Some(AvroValue::Null) => Attributes::new(),
                Some(AvroValue::Map(m)) => {
                    let mut out = Vec::with_capacity(m.len());
                    for (k, v) in m {
                        let a = match unwrap_union(v) {
                            AvroValue::Double(d) => Attr::Num(d),
                            AvroValue::Float(d) => Attr::Num(d as f64),
                            AvroValue::Long(d) => Attr::Num(d as f64),
                            AvroValue::Int(d) => Attr::Num(d as f64),
                            AvroValue::Boolean(b) => Attr::Bool(b),
                            AvroValue::String(s) => Attr::Str(s.into()),
                            other => return Err(wrong("attributes", &other)),
                        };
                        out.push((k.into(), a));
                    }
                    Attributes::from_entries(out)
                }
                Some(other) => return Err(wrong("attributes", &other)),
            },
        };
        t.validate()?;
        Ok(t)
    }

    /// Encodes as an Avro value of [`TELEMETRY_AVSC`] (used by tests, the demo and tools).
    pub fn to_avro(&self) -> AvroValue {
        let s = |v: &str| AvroValue::String(v.to_string());
        let opt = |v: Option<AvroValue>| match v {
            None => AvroValue::Union(0, Box::new(AvroValue::Null)),
            Some(v) => AvroValue::Union(1, Box::new(v)),
        };
        AvroValue::Record(vec![
            ("event_id".into(), s(&self.event_id)),
            ("agent_id".into(), s(&self.agent_id)),
            ("workflow".into(), s(&self.workflow)),
            (
                "model".into(),
                AvroValue::Record(vec![
                    ("provider".into(), s(&self.model.provider)),
                    ("name".into(), s(&self.model.name)),
                    ("version".into(), s(&self.model.version)),
                ]),
            ),
            ("occurred_at".into(), AvroValue::TimestampMicros(self.occurred_at)),
            ("risk".into(), AvroValue::Enum(self.risk as u32, self.risk.name().into())),
            ("outcome".into(), AvroValue::Enum(self.outcome as u32, self.outcome.name().into())),
            ("latency_ms".into(), opt(self.latency_ms.map(AvroValue::Double))),
            (
                "citations".into(),
                opt(self.citations.map(|c| {
                    AvroValue::Record(vec![
                        ("total".into(), AvroValue::Int(c.total as i32)),
                        ("verified".into(), AvroValue::Int(c.verified as i32)),
                    ])
                })),
            ),
            ("pii_detected".into(), opt(self.pii_detected.map(AvroValue::Boolean))),
            ("tool_calls".into(), AvroValue::Array(self.tool_calls.iter().map(|t| s(t)).collect())),
            (
                "attributes".into(),
                AvroValue::Map(
                    self.attributes
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                Attr::Num(d) => AvroValue::Union(0, Box::new(AvroValue::Double(*d))),
                                Attr::Str(t) => {
                                    AvroValue::Union(1, Box::new(AvroValue::String(t.to_string())))
                                }
                                Attr::Bool(b) => AvroValue::Union(2, Box::new(AvroValue::Boolean(*b))),
                            };
                            (k.to_string(), v)
                        })
                        .collect(),
                ),
            ),
        ])
    }
}

fn unwrap_union(v: AvroValue) -> AvroValue {
    match v {
        AvroValue::Union(_, inner) => *inner,
        other => other,
    }
}

/// A record's fields, taken out by name. A linear scan over a dozen fields beats building
/// a map per record (the map was a fifth of the pipeline's time).
struct Fields(Vec<(String, AvroValue)>);

impl Fields {
    fn remove(&mut self, name: &str) -> Option<AvroValue> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.swap_remove(i).1)
    }
}

fn record_fields(v: AvroValue, field: &'static str) -> Result<Fields, TelemetryError> {
    match unwrap_union(v) {
        AvroValue::Record(fields) => Ok(Fields(fields)),
        other => Err(wrong(field, &other)),
    }
}

fn take(f: &mut Fields, name: &'static str) -> Result<AvroValue, TelemetryError> {
    match f.remove(name) {
        None | Some(AvroValue::Null) => Err(TelemetryError::Missing(name)),
        Some(AvroValue::Union(_, b)) if *b == AvroValue::Null => Err(TelemetryError::Missing(name)),
        Some(v) => Ok(v),
    }
}

fn string(v: AvroValue, field: &'static str) -> Result<CompactString, TelemetryError> {
    match unwrap_union(v) {
        AvroValue::String(s) => Ok(s.into()),
        other => Err(wrong(field, &other)),
    }
}

fn count(v: AvroValue, field: &'static str) -> Result<u32, TelemetryError> {
    match unwrap_union(v) {
        AvroValue::Int(i) if i >= 0 => Ok(i as u32),
        AvroValue::Long(i) if i >= 0 && i <= u32::MAX as i64 => Ok(i as u32),
        other => Err(wrong(field, &other)),
    }
}

fn wrong(field: &'static str, v: &AvroValue) -> TelemetryError {
    TelemetryError::Invalid { field, reason: format!("unexpected Avro value {v:?}") }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn the_names_are_serdes_spellings_and_read_back() {
        for (name, r) in Risk::NAMED {
            assert_eq!(serde_json::to_value(r).unwrap(), name);
            assert_eq!(Risk::from_name(name), Some(r));
            assert_eq!(r.name(), name);
        }
        for (name, o) in Outcome::NAMED {
            assert_eq!(serde_json::to_value(o).unwrap(), name);
            assert_eq!(Outcome::from_name(name), Some(o));
            assert_eq!(o.name(), name);
        }
        assert_eq!((Risk::from_name("High"), Outcome::from_name("")), (None, None));
    }
}

#[cfg(test)]
mod json_tests {
    //! Differential tests of the fast JSON path against the reference (serde_json): on
    //! generated texts in many spellings, and on corrupted ones, whatever the fast path
    //! accepts the reference accepts, with the same value.

    use super::*;

    use crate::test_rng::Rng;

    trait Spell {
        fn spell(&mut self, valid: &[&str], invalid: &[&str]) -> String;
    }

    impl Spell for Rng {
        /// One of `valid`, or one time in 25 one of `invalid`.
        fn spell(&mut self, valid: &[&str], invalid: &[&str]) -> String {
            if self.below(25) == 0 {
                self.pick(invalid).to_string()
            } else {
                self.pick(valid).to_string()
            }
        }
    }

    /// A JSON string literal in one of several spellings (escapes, surrogates, raw UTF-8).
    fn string(r: &mut Rng) -> String {
        r.spell(
            &[
                r#""fin-01""#,
                r#""r\u00e9sum\u00e9""#,
                r#""résumé""#,
                r#""a\"b\\c\n""#,
                r#""\ud83d\ude00""#,
                r#""工具""#,
                r#""\/x""#,
            ],
            &[r#""""#, r#""\ud800""#, "\"tab\tin\"", r#""\x""#],
        )
    }

    fn number(r: &mut Rng) -> String {
        r.spell(
            &[
                "812.5",
                "0",
                "-0",
                "-0.0",
                "1e3",
                "1E-2",
                "12",
                "3.0000000000000001",
                "18446744073709551616",
                "4.2",
            ],
            &["-5", "1e400", "01", "1.", ".5", "NaN"],
        )
    }

    fn ws(r: &mut Rng) -> &'static str {
        ["", " ", "\n", "\t ", "\r\n"][r.below(5)]
    }

    /// An object from `(key, value)` members in a random order, sometimes with an extra
    /// member (unknown or duplicate).
    fn object(r: &mut Rng, mut members: Vec<(String, String)>) -> String {
        match r.below(40) {
            0 => members.push(("\"unknown\"".into(), "1".into())),
            1 if !members.is_empty() => {
                let dup = members[r.below(members.len())].clone();
                members.push(dup);
            }
            _ => {}
        }
        for i in (1..members.len()).rev() {
            members.swap(i, r.below(i + 1));
        }
        let body: Vec<String> =
            members.into_iter().map(|(k, v)| format!("{}{k}{}:{}{v}", ws(r), ws(r), ws(r))).collect();
        format!("{{{}{}}}", body.join(","), ws(r))
    }

    fn array(r: &mut Rng, items: Vec<String>) -> String {
        format!("[{}]", items.join(&format!(",{}", ws(r))))
    }

    fn attr(r: &mut Rng) -> String {
        match r.below(25) {
            0..=3 => "true".into(),
            4..=7 => "false".into(),
            8..=15 => number(r),
            16..=23 => string(r),
            _ => r.pick(&["null", "[]", "{}"]).to_string(),
        }
    }

    fn text(r: &mut Rng) -> String {
        let mut m: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| m.push((format!("\"{k}\""), v));
        for k in ["event_id", "agent_id", "workflow"] {
            put(k, string(r));
        }
        let model = ["provider", "name", "version"].iter().map(|k| (format!("\"{k}\""), string(r))).collect();
        put("model", object(r, model));
        put(
            "occurred_at",
            r.spell(&["1772409600000000", "-1", "0"], &["1.5e15", "9223372036854775808", "\"1\""]),
        );
        put("risk", r.spell(&["\"low\"", "\"medium\"", "\"high\""], &["\"HIGH\"", "1"]));
        put("outcome", r.spell(&["\"ok\"", "\"refused\"", "\"error\""], &["\"fine\""]));
        if r.below(4) > 0 {
            put("latency_ms", if r.below(5) == 0 { "null".into() } else { number(r) });
        }
        if r.below(3) > 0 {
            let v = if r.below(5) == 0 {
                "null".into()
            } else {
                let c = vec![
                    ("\"total\"".to_string(), r.spell(&["3", "4", "2"], &["-1", "4294967296", "2.0"])),
                    ("\"verified\"".to_string(), r.spell(&["2", "0", "1"], &["5"])),
                ];
                object(r, c)
            };
            put("citations", v);
        }
        if r.below(3) > 0 {
            put("pii_detected", r.spell(&["true", "false", "null"], &["0"]));
        }
        if r.below(3) > 0 {
            let items =
                (0..r.below(4)).map(|_| if r.below(40) == 0 { "1".into() } else { string(r) }).collect();
            put("tool_calls", array(r, items));
        }
        if r.below(3) > 0 {
            let members = (0..r.below(4)).map(|i| (format!("\"k{i}\""), attr(r))).collect();
            put("attributes", object(r, members));
        }
        object(r, m)
    }

    /// Checks one text; counts `[fast path accepted, fast path refused]`.
    fn check(bytes: &[u8], counts: &mut [u32; 2]) {
        let fast = Telemetry::from_json_fast(bytes);
        let reference = Telemetry::from_json_reference(bytes);
        match fast {
            Some(t) => {
                assert_eq!(
                    reference.as_ref(),
                    Ok(&t),
                    "fast path accepted {:?}",
                    String::from_utf8_lossy(bytes)
                );
                // `==` on floats takes -0.0 for 0.0; their JSON spellings differ.
                assert_eq!(
                    serde_json::to_string(&t).ok(),
                    reference.ok().and_then(|r| serde_json::to_string(&r).ok()),
                    "{:?}",
                    String::from_utf8_lossy(bytes)
                );
                counts[0] += 1;
            }
            None => counts[1] += 1,
        }
        // What the public entry point returns is always the reference's verdict.
        assert_eq!(Telemetry::from_json(bytes), Telemetry::from_json_reference(bytes));
    }

    #[test]
    fn the_fast_json_path_accepts_nothing_the_reference_refuses() {
        let mut counts = [0u32; 2];
        for seed in 0..6000 {
            let t = text(&mut Rng(seed));
            check(t.as_bytes(), &mut counts);
        }
        assert!(counts[0] > 1000 && counts[1] > 1000, "accepted {}, refused {}", counts[0], counts[1]);
    }

    #[test]
    fn corrupted_json_is_never_accepted_by_the_fast_path_alone() {
        let mut counts = [0u32; 2];
        for seed in 0..6000 {
            let mut r = Rng(seed ^ 0x5eed);
            let mut b = text(&mut r).into_bytes();
            for _ in 0..1 + r.below(2) {
                let i = r.below(b.len());
                match r.below(4) {
                    0 => b[i] ^= 1 << r.below(8),
                    1 => b.truncate(i),
                    2 => b.insert(i, [b'"', b'\\', b',', b'}', 0xff, b'0'][r.below(6)]),
                    _ => {
                        b.remove(i);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            check(&b, &mut counts);
        }
        assert!(counts[0] > 100, "accepted {}, refused {}", counts[0], counts[1]);
    }

    #[test]
    fn attributes_keep_their_json_type() {
        let t = Telemetry::from_json(
            br#"{"event_id":"e","agent_id":"a","workflow":"w","model":{"provider":"p","name":"n","version":"v"},
                "occurred_at":1,"risk":"low","outcome":"ok","attributes":{"b":true,"n":3,"f":-2.5,"s":"x"}}"#,
        )
        .expect("valid");
        let want: Attributes = [
            ("b", Attr::Bool(true)),
            ("n", Attr::Num(3.0)),
            ("f", Attr::Num(-2.5)),
            ("s", Attr::Str("x".into())),
        ]
        .into_iter()
        .collect();
        assert_eq!(t.attributes, want);
        let err = Telemetry::from_json(
            br#"{"event_id":"e","agent_id":"a","workflow":"w","model":{"provider":"p","name":"n","version":"v"},
                "occurred_at":1,"risk":"low","outcome":"ok","attributes":{"x":null}}"#,
        );
        assert!(matches!(err, Err(TelemetryError::Json(_))), "{err:?}");
    }
}
