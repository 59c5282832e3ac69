//! The state changelog: per-agent state and per-partition engine state, encoded for a
//! compacted topic co-partitioned with the input, and rebuilt from it.
//!
//! Records of one snapshot are written agent first and engine state ("meta") last, to the
//! same changelog partition, so the meta record closes a snapshot. On restore, agent records
//! are held until the meta that closes them; a torn snapshot after the last meta (a crash
//! mid-write) is discarded, and the input resumes from the meta's position. The state is
//! then exactly "every record before that position", and reprocessing re-derives
//! byte-identical outputs.
//!
//! Values are MessagePack with field names (self-describing, so fields can be added with
//! defaults), behind a format-version byte: a newer engine reads older versions.

use crate::engine::state::AgentState;
use crate::engine::EngineMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// The state format written by this engine.
///
/// Version 2 stores the `auto` detectors without their configuration and derived bank
/// (see `driftgate_detectors::AnyDetector::bind`). Version 3 stores each bank member's
/// change-point statistics (`D`, `C`) as 32-bit floats, scaled by a power of two of its `R`,
/// which stays 64-bit. Records of versions 1 and 2 still decode.
pub const STATE_VERSION: u8 = 3;

/// A changelog record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    /// Empty value where state was expected.
    #[error("empty state record")]
    Empty,
    /// Written by a newer engine.
    #[error("state format version {0} is newer than this engine's ({STATE_VERSION}); upgrade driftgate")]
    TooNew(u8),
    /// Version 0: no driftgate ever wrote it, so the record is not driftgate state.
    #[error("state format version 0 was never written by driftgate: not a driftgate state record")]
    NoVersion,
    /// Corrupt.
    #[error("state record does not decode: {0}")]
    Decode(String),
    /// The key is not a changelog key.
    #[error("unknown changelog key")]
    Key,
}

/// A changelog key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// One agent's state, for a source topic.
    Agent(String, String),
    /// The engine state of a source topic's partition.
    Meta(String),
}

impl Key {
    /// Encoded: `a\0topic\0agent` or `m\0topic`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::Agent(t, a) => [b"a\0", t.as_bytes(), b"\0", a.as_bytes()].concat(),
            Key::Meta(t) => [b"m\0", t.as_bytes()].concat(),
        }
    }
    /// Decoded.
    pub fn decode(b: &[u8]) -> Result<Key, StateError> {
        let s = std::str::from_utf8(b).map_err(|_| StateError::Key)?;
        let mut parts = s.splitn(3, '\0');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("a"), Some(t), Some(a)) => Ok(Key::Agent(t.to_string(), a.to_string())),
            (Some("m"), Some(t), None) => Ok(Key::Meta(t.to_string())),
            _ => Err(StateError::Key),
        }
    }
}

/// Engine state plus the input position it corresponds to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaRecord {
    /// The next input offset to read: the state reflects every record before it.
    pub position: i64,
    /// The engine state.
    pub meta: EngineMeta,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![STATE_VERSION];
    // Serialising our own types into a Vec cannot fail.
    rmp_serde::encode::write_named(&mut out, v).expect("state serialises");
    out
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StateError> {
    check_header(b)?;
    rmp_serde::from_slice(&b[1..]).map_err(|e| StateError::Decode(e.to_string()))
}

/// Encodes an agent's state.
pub fn encode_agent(a: &AgentState) -> Vec<u8> {
    encode(a)
}

/// Decodes an agent's state.
pub fn decode_agent(b: &[u8]) -> Result<AgentState, StateError> {
    decode(b)
}

/// Encodes engine state at a position.
pub fn encode_meta(m: &MetaRecord) -> Vec<u8> {
    encode(m)
}

/// Decodes engine state.
pub fn decode_meta(b: &[u8]) -> Result<MetaRecord, StateError> {
    decode(b)
}

/// Checks the header of a state record (present, a version this engine reads) without
/// decoding it.
fn check_header(b: &[u8]) -> Result<(), StateError> {
    match b.first() {
        None => Err(StateError::Empty),
        Some(0) => Err(StateError::NoVersion),
        Some(1..=STATE_VERSION) => Ok(()),
        Some(&v) => Err(StateError::TooNew(v)),
    }
}

/// An agent record kept undecoded: where it was read (see [`Restorer::apply_at`]), and its
/// bytes.
type Raw = (i64, Vec<u8>);

/// Rebuilds one source partition's state from its changelog records, in log order.
///
/// Agent records are kept as bytes and decoded only in [`Restorer::finish`]: a changelog
/// that has not been compacted yet holds several versions of most agents, and decoding was
/// most of a restore's time (about 2.4 records per agent in the restore bench).
#[derive(Default)]
pub struct Restorer {
    agents: BTreeMap<String, Raw>,
    pending: Vec<(String, Option<Raw>)>,
    meta: Option<MetaRecord>,
    /// Records read.
    pub records: u64,
}

/// A record of the last complete snapshot that does not decode.
#[derive(Debug, Error, PartialEq)]
#[error("the state of agent `{agent}` (record at {at}): {source}")]
pub struct RecordError {
    /// The agent.
    pub agent: String,
    /// Where the record was read (the position given to [`Restorer::apply_at`]).
    pub at: i64,
    /// Why it does not decode.
    pub source: StateError,
}

impl Restorer {
    /// Applies one record of `topic`'s state (records of other source topics are ignored);
    /// its position is the number of records applied before it.
    pub fn apply(&mut self, topic: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        self.apply_at(topic, key, value, self.records as i64)
    }

    /// Applies one record read at `at` (an offset, say), which errors of [`Self::finish`]
    /// name. The key, meta records and the header of agent records are checked here; agent
    /// records are decoded by `finish`, and only those of the last complete snapshot.
    pub fn apply_at(
        &mut self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
        at: i64,
    ) -> Result<(), StateError> {
        self.records += 1;
        match Key::decode(key)? {
            Key::Agent(t, _) | Key::Meta(t) if t != topic => Ok(()),
            Key::Agent(_, a) => {
                if let Some(v) = value {
                    check_header(v)?;
                }
                self.pending.push((a, value.map(|v| (at, v.to_vec()))));
                Ok(())
            }
            Key::Meta(_) => {
                let Some(v) = value else { return Ok(()) };
                self.meta = Some(decode_meta(v)?);
                for (a, s) in self.pending.drain(..) {
                    match s {
                        Some(s) => {
                            self.agents.insert(a, s);
                        }
                        None => {
                            self.agents.remove(&a);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The last complete snapshot, if any, with its agents decoded.
    pub fn finish(self) -> Result<Option<Snapshot>, RecordError> {
        let Some(meta) = self.meta else { return Ok(None) };
        let mut torn: Vec<String> = self.pending.into_iter().map(|(a, _)| a).collect();
        torn.sort();
        torn.dedup();
        let mut agents = Vec::with_capacity(self.agents.len());
        for (agent, (at, bytes)) in self.agents {
            match decode_agent(&bytes) {
                Ok(state) => agents.push((agent, state)),
                Err(source) => return Err(RecordError { agent, at, source }),
            }
        }
        Ok(Some(Snapshot { meta, agents, torn }))
    }
}

/// A source partition's state as of its last complete snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// Engine state and the input position it covers.
    pub meta: MetaRecord,
    /// Every agent's state.
    pub agents: Vec<(String, AgentState)>,
    /// Agents with records after the last meta: a torn snapshot of an instance that died
    /// mid-write. Those records stay in the log, and the next meta would otherwise adopt
    /// them; the restored engine rewrites these agents in its first snapshot so that its
    /// own records supersede them.
    pub torn: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig};

    fn agent(workflow: &str) -> AgentState {
        AgentState::new(workflow.into(), "v1", vec![0], 7)
    }

    fn meta(position: i64) -> Vec<u8> {
        encode_meta(&MetaRecord { position, meta: Engine::new(EngineConfig::default(), Vec::new()).meta() })
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        for k in [Key::Agent("in".into(), "a\u{e9}1".into()), Key::Meta("in".into())] {
            assert_eq!(Key::decode(&k.encode()), Ok(k));
        }
        // An agent id may itself hold the separator: only the first two split.
        assert_eq!(Key::decode(b"a\0in\0x\0y"), Ok(Key::Agent("in".into(), "x\0y".into())));
        for bad in [&b"m\0in\0x"[..], b"z\0in", b"a\0in", b"", &[0xff, 0]] {
            assert_eq!(Key::decode(bad), Err(StateError::Key), "{bad:?}");
        }
    }

    #[test]
    fn values_carry_their_version_and_newer_ones_are_refused() {
        let a = agent("w");
        let bytes = encode_agent(&a);
        assert_eq!(bytes[0], STATE_VERSION);
        assert_eq!(decode_agent(&bytes).unwrap(), a);
        let mut newer = bytes.clone();
        newer[0] = STATE_VERSION + 1;
        assert_eq!(decode_agent(&newer), Err(StateError::TooNew(STATE_VERSION + 1)));
        let mut unversioned = bytes.clone();
        unversioned[0] = 0;
        assert_eq!(decode_agent(&unversioned), Err(StateError::NoVersion));
        assert!(StateError::NoVersion.to_string().contains("never written by driftgate"));
        assert_eq!(decode_agent(&[]), Err(StateError::Empty));
        assert!(matches!(decode_agent(&bytes[..bytes.len() / 2]), Err(StateError::Decode(_))));
    }

    #[test]
    fn a_snapshot_counts_only_once_its_meta_record_closes_it() {
        let mut r = Restorer::default();
        let key = |a: &str| Key::Agent("in".into(), a.into()).encode();
        let meta_key = Key::Meta("in".into()).encode();
        r.apply("in", &key("a1"), Some(&encode_agent(&agent("w1")))).unwrap();
        r.apply("in", &key("a2"), Some(&encode_agent(&agent("w2")))).unwrap();
        r.apply("in", &meta_key, Some(&meta(10))).unwrap();
        // The next snapshot: a2 deleted, a1 rewritten; closed.
        r.apply("in", &key("a2"), None).unwrap();
        r.apply("in", &key("a1"), Some(&encode_agent(&agent("w3")))).unwrap();
        r.apply("in", &meta_key, Some(&meta(20))).unwrap();
        // Another source topic's records are not this partition's state.
        r.apply("other", &key("a9"), Some(&encode_agent(&agent("x")))).unwrap();
        // A torn snapshot: an agent written, its meta never.
        r.apply("in", &key("a3"), Some(&encode_agent(&agent("w4")))).unwrap();
        assert_eq!(r.records, 8);
        let snap = r.finish().unwrap().expect("a complete snapshot");
        assert_eq!(snap.meta.position, 20);
        let workflows: Vec<(&str, &str)> =
            snap.agents.iter().map(|(id, a)| (id.as_str(), &*a.workflow)).collect();
        assert_eq!(workflows, [("a1", "w3")], "a2 deleted, a3 not adopted");
        assert_eq!(snap.torn, ["a3"]);
    }

    #[test]
    fn no_meta_record_means_no_state() {
        let mut r = Restorer::default();
        r.apply("in", &Key::Agent("in".into(), "a1".into()).encode(), Some(&encode_agent(&agent("w"))))
            .unwrap();
        assert!(r.finish().unwrap().is_none());
        let mut bad = Restorer::default();
        assert_eq!(bad.apply("in", b"nonsense", None), Err(StateError::Key));
    }

    #[test]
    fn only_the_records_of_the_last_snapshot_are_decoded_and_a_bad_one_is_named() {
        let key = |a: &str| Key::Agent("in".into(), a.into()).encode();
        let meta_key = Key::Meta("in".into()).encode();
        let good = encode_agent(&agent("w"));
        let corrupt = &good[..good.len() / 2];
        // A corrupt version superseded by a good one: restored.
        let mut r = Restorer::default();
        r.apply_at("in", &key("a1"), Some(corrupt), 100).unwrap();
        r.apply_at("in", &key("a1"), Some(&good), 101).unwrap();
        r.apply_at("in", &meta_key, Some(&meta(1)), 102).unwrap();
        assert_eq!(r.finish().unwrap().unwrap().agents.len(), 1);
        // A corrupt record in the last snapshot: named, with where it was read.
        let mut r = Restorer::default();
        r.apply_at("in", &key("a1"), Some(&good), 100).unwrap();
        r.apply_at("in", &key("a2"), Some(corrupt), 101).unwrap();
        r.apply_at("in", &meta_key, Some(&meta(1)), 102).unwrap();
        let e = r.finish().unwrap_err();
        assert_eq!((e.agent.as_str(), e.at), ("a2", 101));
        assert!(matches!(e.source, StateError::Decode(_)));
        // Headers are checked as records are read.
        let mut newer = good.clone();
        newer[0] = STATE_VERSION + 1;
        assert_eq!(
            Restorer::default().apply("in", &key("a"), Some(&newer)),
            Err(StateError::TooNew(STATE_VERSION + 1))
        );
        assert_eq!(Restorer::default().apply("in", &key("a"), Some(&[])), Err(StateError::Empty));
    }
}
