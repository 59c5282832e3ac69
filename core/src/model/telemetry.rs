//! Agent telemetry: the event model, its JSON shape and its Avro decoding.

use apache_avro::types::Value as AvroValue;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

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

/// The model that produced the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Provider, e.g. `anthropic`.
    pub provider: String,
    /// Model name.
    pub name: String,
    /// Model version; a change of version is a scope change that needs re-verification.
    pub version: String,
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

/// A free-form signal value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Attr {
    /// A boolean.
    Bool(bool),
    /// A number.
    Num(f64),
    /// A string.
    Str(String),
}

/// One agent output event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Unique id (idempotency key).
    pub event_id: String,
    /// The agent.
    pub agent_id: String,
    /// The workflow, e.g. `finance`.
    pub workflow: String,
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
    pub tool_calls: Vec<String>,
    /// Free-form signals such as judge scores.
    #[serde(default)]
    pub attributes: BTreeMap<String, Attr>,
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
    pub fn from_json(bytes: &[u8]) -> Result<Telemetry, TelemetryError> {
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
                AvroValue::Enum(_, s) | AvroValue::String(s) => match s.as_str() {
                    "low" => Risk::Low,
                    "medium" => Risk::Medium,
                    "high" => Risk::High,
                    _ => {
                        return Err(TelemetryError::Invalid {
                            field: "risk",
                            reason: format!("unknown risk {s:?}"),
                        })
                    }
                },
                other => return Err(wrong("risk", &other)),
            },
            outcome: match unwrap_union(take(&mut f, "outcome")?) {
                AvroValue::Enum(_, s) | AvroValue::String(s) => match s.as_str() {
                    "ok" => Outcome::Ok,
                    "refused" => Outcome::Refused,
                    "error" => Outcome::Error,
                    _ => {
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
                None | Some(AvroValue::Null) => BTreeMap::new(),
                Some(AvroValue::Map(m)) => {
                    let mut out = BTreeMap::new();
                    for (k, v) in m {
                        let a = match unwrap_union(v) {
                            AvroValue::Double(d) => Attr::Num(d),
                            AvroValue::Float(d) => Attr::Num(d as f64),
                            AvroValue::Long(d) => Attr::Num(d as f64),
                            AvroValue::Int(d) => Attr::Num(d as f64),
                            AvroValue::Boolean(b) => Attr::Bool(b),
                            AvroValue::String(s) => Attr::Str(s),
                            other => return Err(wrong("attributes", &other)),
                        };
                        out.insert(k, a);
                    }
                    out
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
        let risk = match self.risk {
            Risk::Low => (0, "low"),
            Risk::Medium => (1, "medium"),
            Risk::High => (2, "high"),
        };
        let outcome = match self.outcome {
            Outcome::Ok => (0, "ok"),
            Outcome::Refused => (1, "refused"),
            Outcome::Error => (2, "error"),
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
            ("risk".into(), AvroValue::Enum(risk.0, risk.1.into())),
            ("outcome".into(), AvroValue::Enum(outcome.0, outcome.1.into())),
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
                                Attr::Str(t) => AvroValue::Union(1, Box::new(AvroValue::String(t.clone()))),
                                Attr::Bool(b) => AvroValue::Union(2, Box::new(AvroValue::Boolean(*b))),
                            };
                            (k.clone(), v)
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

fn string(v: AvroValue, field: &'static str) -> Result<String, TelemetryError> {
    match unwrap_union(v) {
        AvroValue::String(s) => Ok(s),
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
