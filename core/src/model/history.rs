//! The contract history: an append-only, hash-chained log of every decision, override,
//! exception and pact activation.
//!
//! Each record carries the SHA-256 of the previous record, and its own hash over its
//! canonical JSON encoding (every field but `hash`, in declaration order, with the previous
//! hash first). Editing a record breaks its own hash; removing or reordering records breaks
//! the next record's `prev_hash` and the position counter. Truncating the tail cannot be seen
//! from the log alone: compare the last hash with one published elsewhere (the history topic
//! or the enforcement events carry it).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use thiserror::Error;

/// The Avro schema of a history record (`schemas/history_record.avsc`).
pub const HISTORY_AVSC: &str = include_str!("../../../schemas/history_record.avsc");

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a history record records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A lane change or other enforcement decision.
    Decision,
    /// An override that was accepted.
    OverrideAccepted,
    /// An override that was rejected (unauthenticated, forged, expired, stale `expected_seq`).
    OverrideRejected,
    /// An override that expired and was re-evaluated.
    OverrideExpired,
    /// An event that arrived after the allowed lateness.
    Late,
    /// Evidence for a high-risk clause went stale.
    Stale,
    /// State for an idle key expired.
    StateExpired,
    /// A pact version was activated.
    PactActivated,
    /// The blast-radius cap tripped.
    Panic,
    /// Wall time reached an idle source's engine and moved its watermark.
    Tick,
    /// A pact version started running in shadow.
    PactShadowed,
    /// A shadow pact version replaced the active one.
    PactPromoted,
    /// A shadow was discarded, or the active version gave way to the one it replaced.
    PactRolledBack,
    /// A pact change was refused (invalid document, conflict, failed authentication).
    PactRefused,
    /// A would-be lane change of a shadow pact version (not sent to routers).
    ShadowDecision,
}

/// One history record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Hash of the previous record ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// Position in the log, from 0.
    pub position: u64,
    /// What happened.
    pub kind: RecordKind,
    /// Event time of the decision, in microseconds since the Unix epoch.
    pub at_micros: i64,
    /// The agent concerned, if any.
    pub agent_id: Option<String>,
    /// The pact concerned, if any.
    pub pact_id: Option<String>,
    /// Its version.
    pub pact_version: Option<u32>,
    /// The clause concerned, if any.
    pub clause_id: Option<String>,
    /// The details (e.g. the enforcement event, or the rejected override and its reason).
    pub detail: serde_json::Value,
    /// SHA-256 over the canonical encoding of every field above.
    pub hash: String,
}

/// The fields that are hashed, borrowed, in the order that defines the canonical encoding.
#[derive(Serialize)]
struct Hashed<'a> {
    prev_hash: &'a str,
    position: u64,
    kind: RecordKind,
    at_micros: i64,
    agent_id: &'a Option<String>,
    pact_id: &'a Option<String>,
    pact_version: Option<u32>,
    clause_id: &'a Option<String>,
    detail: &'a serde_json::Value,
}

impl Record {
    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        let h = Hashed {
            prev_hash: &self.prev_hash,
            position: self.position,
            kind: self.kind,
            at_micros: self.at_micros,
            agent_id: &self.agent_id,
            pact_id: &self.pact_id,
            pact_version: self.pact_version,
            clause_id: &self.clause_id,
            detail: &self.detail,
        };
        // serde_json maps are BTreeMaps here (no preserve_order), so the encoding is canonical.
        let bytes = serde_json::to_vec(&h).expect("history records always serialise");
        hex(&Sha256::digest(&bytes))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

impl Record {
    /// As an Avro value of [`HISTORY_AVSC`]; `detail` travels as its JSON text, so the
    /// hash can be recomputed from the Avro record alone.
    pub fn to_avro(&self) -> Result<apache_avro::types::Value, crate::codec::avro_json::AvroJsonError> {
        let mut json = serde_json::to_value(self)?;
        json["detail"] = serde_json::Value::String(self.detail.to_string());
        Ok(apache_avro::types::Value::try_from(json)?.resolve(crate::codec::schemas::history())?)
    }

    /// From a decoded Avro value of [`HISTORY_AVSC`].
    pub fn from_avro(v: apache_avro::types::Value) -> Result<Record, crate::codec::avro_json::AvroJsonError> {
        let mut json = serde_json::Value::try_from(v)?;
        if let Some(d) = json.get_mut("detail") {
            let text = d.as_str().unwrap_or("null").to_string();
            *d = serde_json::from_str(&text)?;
        }
        Ok(serde_json::from_value(json)?)
    }
}

/// What a new record says, before it is chained.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// What happened.
    pub kind: RecordKind,
    /// Event time in microseconds.
    pub at_micros: i64,
    /// Agent.
    pub agent_id: Option<String>,
    /// Pact id.
    pub pact_id: Option<String>,
    /// Pact version.
    pub pact_version: Option<u32>,
    /// Clause id.
    pub clause_id: Option<String>,
    /// Details.
    pub detail: serde_json::Value,
}

/// Appends records to a chain, keeping the last hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    last_hash: String,
    next_position: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain { last_hash: GENESIS.to_string(), next_position: 0 }
    }
}

impl Chain {
    /// Continues a chain after the record with `last_hash` at `position - 1`.
    pub fn resume(last_hash: String, next_position: u64) -> Chain {
        Chain { last_hash, next_position }
    }

    /// The hash of the last record appended.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// Chains an entry into a record.
    pub fn append(&mut self, e: Entry) -> Record {
        let mut r = Record {
            prev_hash: std::mem::take(&mut self.last_hash),
            position: self.next_position,
            kind: e.kind,
            at_micros: e.at_micros,
            agent_id: e.agent_id,
            pact_id: e.pact_id,
            pact_version: e.pact_version,
            clause_id: e.clause_id,
            detail: e.detail,
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        self.last_hash = r.hash.clone();
        self.next_position += 1;
        r
    }
}

/// Why a history log failed verification: the first bad record.
#[derive(Debug, Error, PartialEq)]
pub enum VerifyError {
    /// A line is not a history record.
    #[error("line {line}: not a history record: {reason}")]
    Malformed {
        /// 1-based line.
        line: u64,
        /// Parser message.
        reason: String,
    },
    /// A record's content does not match its hash.
    #[error("line {line} (record {position}): edited: its content does not match its hash")]
    Edited {
        /// 1-based line.
        line: u64,
        /// The record's position field.
        position: u64,
    },
    /// A record does not follow the one before it.
    #[error("line {line} (record {position}): chain broken: a record before it was removed, inserted or reordered (expected position {expected}, prev_hash of the preceding record)")]
    Broken {
        /// 1-based line.
        line: u64,
        /// The record's position field.
        position: u64,
        /// The position it should have.
        expected: u64,
    },
    /// The log could not be read.
    #[error("cannot read history: {0}")]
    Io(String),
}

/// Verifies a JSONL history log; returns the number of records and the last hash.
pub fn verify(reader: impl BufRead) -> Result<(u64, String), VerifyError> {
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|e| VerifyError::Io(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(&line)
            .map_err(|e| VerifyError::Malformed { line: line_no, reason: e.to_string() })?;
        if r.compute_hash() != r.hash {
            return Err(VerifyError::Edited { line: line_no, position: r.position });
        }
        if r.prev_hash != prev || r.position != n {
            return Err(VerifyError::Broken { line: line_no, position: r.position, expected: n });
        }
        prev = r.hash;
        n += 1;
    }
    Ok((n, prev))
}

/// Writes records as JSON lines.
pub fn write_jsonl(w: impl Write, records: &[Record]) -> std::io::Result<()> {
    crate::codec::jsonl::write_all(w, records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> Vec<Record> {
        let mut c = Chain::default();
        (0..n)
            .map(|i| {
                c.append(Entry {
                    kind: RecordKind::Decision,
                    at_micros: 1_700_000_000_000_000 + i as i64,
                    agent_id: Some(format!("agent-{}", i % 3)),
                    pact_id: Some("finance".into()),
                    pact_version: Some(1),
                    clause_id: Some("citations".into()),
                    detail: serde_json::json!({"lane_from": "normal", "lane_to": "degrade", "i": i}),
                })
            })
            .collect()
    }

    fn lines(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| serde_json::to_string(r).unwrap()).collect()
    }

    fn check(lines: &[String]) -> Result<(u64, String), VerifyError> {
        verify(lines.join("\n").as_bytes())
    }

    #[test]
    fn intact_log_verifies() {
        let recs = log(10);
        let (n, last) = check(&lines(&recs)).unwrap();
        assert_eq!(n, 10);
        assert_eq!(last, recs[9].hash);
    }

    #[test]
    fn edited_record_is_named() {
        let mut l = lines(&log(10));
        l[4] = l[4].replace("degrade", "normal");
        assert_eq!(check(&l), Err(VerifyError::Edited { line: 5, position: 4 }));
    }

    #[test]
    fn edit_with_recomputed_hash_breaks_the_next_link() {
        let mut recs = log(10);
        recs[4].detail = serde_json::json!({"lane_to": "normal"});
        recs[4].hash = recs[4].compute_hash();
        assert_eq!(check(&lines(&recs)), Err(VerifyError::Broken { line: 6, position: 5, expected: 5 }));
    }

    #[test]
    fn removed_record_is_named() {
        let mut l = lines(&log(10));
        l.remove(3);
        assert_eq!(check(&l), Err(VerifyError::Broken { line: 4, position: 4, expected: 3 }));
    }

    #[test]
    fn swapped_pair_is_named() {
        let mut l = lines(&log(10));
        l.swap(6, 7);
        assert_eq!(check(&l), Err(VerifyError::Broken { line: 7, position: 7, expected: 6 }));
    }

    #[test]
    fn garbage_line_is_named() {
        let mut l = lines(&log(3));
        l.insert(1, "{not json".into());
        assert!(matches!(check(&l), Err(VerifyError::Malformed { line: 2, .. })));
    }
}
