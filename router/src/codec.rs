//! driftgate's records on its snapshot and enforcement topics, read into table updates and
//! heartbeats. Pure: the Kafka adapter hands in the bytes and headers.

use crate::table::{Change, Reason, Update, Version};
use driftgate_core::model::enforcement::{EnforcementEvent, ENFORCEMENT_AVSC};
use driftgate_core::model::heartbeat::Heartbeat;
use driftgate_core::model::lane::ByScope;
use driftgate_core::model::router_view::AgentSnapshot;
use std::sync::OnceLock;

/// Header naming the record's kind: `enforcement`, `heartbeat`; none on agent snapshots.
pub const KIND: &str = "driftgate.kind";
/// Header naming the input partition whose engine published the record, `topic/partition`.
pub const SOURCE: &str = "driftgate.source";
/// Header carrying the agent's incarnation on enforcement events.
pub const INCARNATION: &str = "driftgate.incarnation";

/// Which of driftgate's topics a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// The compacted snapshot topic: agent snapshots and heartbeats.
    Snapshot,
    /// The enforcement topic.
    Enforcement,
}

impl TopicKind {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Snapshot => "snapshot",
            TopicKind::Enforcement => "enforcement",
        }
    }
}

/// The headers the router reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    /// `driftgate.kind`.
    pub kind: Option<String>,
    /// `driftgate.source`.
    pub source: Option<String>,
    /// `driftgate.incarnation`.
    pub incarnation: Option<String>,
}

/// A record, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// An agent's update, with the input partition that published it if named.
    Update(Update, Option<(String, i32)>),
    /// A partition engine's heartbeat.
    Heartbeat(Heartbeat),
    /// Nothing for a router (a tombstone).
    Ignored(&'static str),
}

/// Why a record was skipped. Skipped records never change a lane.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not valid JSON for its kind.
    #[error("invalid {what}: {source}")]
    Json {
        /// What was expected.
        what: &'static str,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// Not a valid Avro enforcement event.
    #[error("invalid Avro enforcement event: {0}")]
    Avro(String),
    /// The record key is not the agent the value names.
    #[error("key {key:?} does not match agent {agent:?}")]
    KeyMismatch {
        /// The record key.
        key: String,
        /// The value's agent id.
        agent: String,
    },
    /// A header is malformed.
    #[error("header {name}: {value:?} is not valid")]
    Header {
        /// The header.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A heartbeat on the enforcement topic, or similar.
    #[error("unexpected {kind:?} record on the {topic} topic")]
    Unexpected {
        /// The kind header.
        kind: String,
        /// The topic kind.
        topic: &'static str,
    },
}

fn enforcement_schema() -> Option<&'static apache_avro::Schema> {
    static S: OnceLock<Option<apache_avro::Schema>> = OnceLock::new();
    S.get_or_init(|| apache_avro::Schema::parse_str(ENFORCEMENT_AVSC).ok()).as_ref()
}

/// Reads one record of `topic`.
pub fn parse(
    topic: TopicKind,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &RecordHeaders,
) -> Result<Parsed, RecordError> {
    let Some(payload) = payload.filter(|p| !p.is_empty()) else {
        return Ok(Parsed::Ignored("tombstone"));
    };
    let source = headers.source.as_deref().map(parse_source).transpose()?;
    match (topic, headers.kind.as_deref()) {
        (TopicKind::Snapshot, Some("heartbeat")) => {
            let h: Heartbeat = serde_json::from_slice(payload)
                .map_err(|source| RecordError::Json { what: "heartbeat", source })?;
            Ok(Parsed::Heartbeat(h))
        }
        (TopicKind::Snapshot, None) => {
            let s: AgentSnapshot = serde_json::from_slice(payload)
                .map_err(|source| RecordError::Json { what: "agent snapshot", source })?;
            check_key(key, &s.agent_id)?;
            let u = Update {
                version: Version { incarnation: s.incarnation, seq: s.seq },
                source: None,
                change: Change::Snapshot { lanes: ByScope { all: s.lane, high_risk: s.high_risk_lane } },
                agent: s.agent_id,
            };
            Ok(Parsed::Update(u, source))
        }
        (TopicKind::Enforcement, None | Some("enforcement")) => {
            let e = enforcement_event(payload)?;
            check_key(key, &e.agent_id)?;
            let incarnation = match headers.incarnation.as_deref() {
                None => 0,
                Some(v) => {
                    v.parse().map_err(|_| RecordError::Header { name: INCARNATION, value: v.to_string() })?
                }
            };
            let u = Update {
                version: Version { incarnation, seq: e.seq },
                source: None,
                change: Change::Event {
                    scope: e.scope,
                    lane: e.lane_to,
                    reason: Reason::from_code(&e.reason.code),
                    since: e.effective_at,
                },
                agent: e.agent_id,
            };
            Ok(Parsed::Update(u, source))
        }
        (t, Some(k)) => Err(RecordError::Unexpected { kind: k.to_string(), topic: t.as_str() }),
    }
}

/// An enforcement event in JSON, or in Avro framed the Confluent way (magic byte 0, schema
/// id), as `output_format` chooses. The writer schema is the published one.
fn enforcement_event(payload: &[u8]) -> Result<EnforcementEvent, RecordError> {
    if payload.first() == Some(&0) {
        let datum =
            payload.get(5..).ok_or_else(|| RecordError::Avro("shorter than the 5-byte frame".into()))?;
        let schema = enforcement_schema().ok_or_else(|| RecordError::Avro("the published schema".into()))?;
        let v = driftgate_core::codec::avro_json::read_datum(schema, None, datum)
            .map_err(|e| RecordError::Avro(e.to_string()))?;
        return driftgate_core::codec::avro_json::decode(v).map_err(|e| RecordError::Avro(e.to_string()));
    }
    serde_json::from_slice(payload).map_err(|source| RecordError::Json { what: "enforcement event", source })
}

fn check_key(key: Option<&[u8]>, agent: &str) -> Result<(), RecordError> {
    match key {
        Some(k) if k != agent.as_bytes() => Err(RecordError::KeyMismatch {
            key: String::from_utf8_lossy(k).into_owned(),
            agent: agent.to_string(),
        }),
        _ => Ok(()),
    }
}

fn parse_source(v: &str) -> Result<(String, i32), RecordError> {
    let bad = || RecordError::Header { name: SOURCE, value: v.to_string() };
    let (topic, p) = v.rsplit_once('/').ok_or_else(bad)?;
    let p: i32 = p.parse().map_err(|_| bad())?;
    if topic.is_empty() || p < 0 {
        return Err(bad());
    }
    Ok((topic.to_string(), p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftgate_core::model::lane::{Lane, Scope};

    fn event_json(agent: &str, seq: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "event_id": "x", "seq": seq, "agent_id": agent, "pact_id": null, "pact_version": null,
            "clause_id": null, "segment": null, "lane_from": "normal", "lane_to": "block",
            "action": "block", "scope": "all", "enforced": true, "effective_at": 5,
            "expires_at": null, "min_dwell_until": null,
            "reason": {"code": "zero_tolerance_breach", "text": "t"},
            "detection": null, "evidence": null, "override": null,
            "causation": {"kind": "telemetry", "id": "e", "at": 5}
        }))
        .unwrap()
    }

    fn hdr(kind: Option<&str>, source: Option<&str>, inc: Option<&str>) -> RecordHeaders {
        RecordHeaders {
            kind: kind.map(String::from),
            source: source.map(String::from),
            incarnation: inc.map(String::from),
        }
    }

    #[test]
    fn an_event_becomes_an_update_with_its_source_and_incarnation() {
        let p = parse(
            TopicKind::Enforcement,
            Some(b"a"),
            Some(&event_json("a", 4)),
            &hdr(Some("enforcement"), Some("in/3"), Some("17")),
        )
        .unwrap();
        let Parsed::Update(u, src) = p else { panic!("{p:?}") };
        assert_eq!(u.version, Version { incarnation: 17, seq: 4 });
        assert_eq!(src, Some(("in".to_string(), 3)));
        assert!(matches!(u.change, Change::Event { scope: Scope::All, lane: Lane::Block, since: 5, .. }));
    }

    #[test]
    fn avro_events_decode_with_the_published_schema() {
        let json: EnforcementEvent = serde_json::from_slice(&event_json("a", 9)).unwrap();
        let schema = enforcement_schema().unwrap();
        let datum = driftgate_core::codec::avro_json::encode_datum(&json, schema).unwrap();
        let mut framed = vec![0, 0, 0, 0, 7];
        framed.extend_from_slice(&datum);
        let p = parse(TopicKind::Enforcement, Some(b"a"), Some(&framed), &RecordHeaders::default()).unwrap();
        assert!(matches!(
            p,
            Parsed::Update(Update { version: Version { incarnation: 0, seq: 9 }, .. }, None)
        ));
        assert!(matches!(
            parse(TopicKind::Enforcement, None, Some(&framed[..8]), &RecordHeaders::default()),
            Err(RecordError::Avro(_))
        ));
    }

    #[test]
    fn bad_records_are_errors_not_updates() {
        let e = |t, k: Option<&[u8]>, p: &[u8], h: RecordHeaders| {
            parse(t, k, Some(p), &h).unwrap_err().to_string()
        };
        assert!(e(TopicKind::Enforcement, None, b"{", hdr(None, None, None))
            .contains("invalid enforcement event"));
        assert!(e(TopicKind::Enforcement, Some(b"b"), &event_json("a", 1), hdr(None, None, None))
            .contains("does not match"));
        assert!(e(TopicKind::Enforcement, None, &event_json("a", 1), hdr(None, Some("nopartition"), None))
            .contains("driftgate.source"));
        assert!(e(TopicKind::Enforcement, None, &event_json("a", 1), hdr(None, None, Some("x")))
            .contains("driftgate.incarnation"));
        assert!(e(TopicKind::Enforcement, None, &event_json("a", 1), hdr(Some("heartbeat"), None, None))
            .contains("unexpected"));
        assert!(e(TopicKind::Snapshot, None, b"[]", hdr(None, None, None)).contains("invalid agent snapshot"));
        assert!(e(TopicKind::Snapshot, None, b"{}", hdr(Some("heartbeat"), None, None))
            .contains("invalid heartbeat"));
        assert_eq!(
            parse(TopicKind::Snapshot, Some(b"a"), None, &RecordHeaders::default()).unwrap(),
            Parsed::Ignored("tombstone")
        );
    }
}
