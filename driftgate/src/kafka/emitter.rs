//! Turning engine outputs into records: enforcement events, history records, router
//! snapshots, late records and heartbeats on their topics, and dead letters with their
//! reason in the headers.

use crate::api::control::RecentHistory;
use crate::config::OutputFormat;
use crate::kafka::batch::InputRecord;
use crate::kafka::pipeline::PipelineError;
use crate::kafka::sink::{OutRecord, Sink, SourceKey};
use crate::obs::metrics::Metrics;
use driftgate_core::engine::{Engine, Output};
use driftgate_core::model::heartbeat::Heartbeat;
use driftgate_core::model::router_view::AgentSnapshot;
use rdkafka::message::{Header, OwnedHeaders};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// Dead-letter header names.
pub mod headers {
    /// Reason code (see [`crate::kafka::decode::reason`], plus `late_event`).
    pub const REASON: &str = "driftgate.reason";
    /// Human-readable detail.
    pub const ERROR: &str = "driftgate.error";
    /// Source topic.
    pub const TOPIC: &str = "driftgate.source.topic";
    /// Source partition.
    pub const PARTITION: &str = "driftgate.source.partition";
    /// Source offset.
    pub const OFFSET: &str = "driftgate.source.offset";
    /// When it was dead-lettered (RFC 3339, wall clock).
    pub const TIME: &str = "driftgate.dead_lettered_at";
    /// On history records: the chain (source `topic/partition`).
    pub const CHAIN: &str = "driftgate.chain";
    /// On enforcement events and agent snapshots: the input `topic/partition` whose engine
    /// published them, so that a router judges their freshness by that partition's heartbeats.
    pub const SOURCE: &str = "driftgate.source";
    /// On enforcement events: the agent's incarnation (see `AgentSnapshot::incarnation`).
    pub const INCARNATION: &str = "driftgate.incarnation";
}

/// Turns engine outputs into records on the output topics; shared by the pipeline loop
/// and the HTTP API (overrides), so both produce the same way.
pub struct Emitter {
    pub(super) topics: crate::config::Topics,
    pub(super) output_format: OutputFormat,
    pub(super) output_schema_id: u32,
    pub(super) enforcement_schema: &'static apache_avro::Schema,
    pub(super) sink: Arc<Sink>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) recent: Arc<Mutex<RecentHistory>>,
    /// This process, as named in heartbeats.
    pub(super) instance: String,
}

/// The input record outputs are rendered for, with its Kafka timestamp (µs). A late output
/// among them is that record's: the engine sets an input aside only while it is offered,
/// and its outputs are drained right after it.
#[derive(Clone, Copy)]
pub(super) struct Origin {
    pub(super) record_time: Option<i64>,
}

/// The output topic a rendered record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Destination {
    Enforcement,
    History,
    Snapshot,
}

/// An engine output rendered into a record, ready to be produced. Rendering happens where
/// the engine ran, right after the record that caused it, so that an agent snapshot shows
/// the agent as of that record even when the partition's next records were evaluated
/// before the send.
pub(super) enum Rendered {
    Record {
        to: Destination,
        key: Vec<u8>,
        payload: Vec<u8>,
        headers: OwnedHeaders,
        partition: Option<i32>,
    },
    /// The record it came in is late: dead-lettered with this reason.
    Late {
        reason: String,
    },
}

impl Emitter {
    /// Renders and produces outputs that derive from no input record (ticks, overrides).
    pub(super) fn emit(
        &self,
        key: &SourceKey,
        engine: &Engine,
        outputs: Vec<Output>,
    ) -> Result<(), PipelineError> {
        let rendered = self.render(key, engine, outputs, None)?;
        self.send(key, rendered, None)
    }

    /// Renders outputs into records; counts and logs them. Safe on any thread: it touches
    /// only `engine`, the metrics and the recent-history buffer.
    pub(super) fn render(
        &self,
        key: &SourceKey,
        engine: &Engine,
        outputs: Vec<Output>,
        origin: Option<Origin>,
    ) -> Result<Vec<Rendered>, PipelineError> {
        let mut rendered = Vec::new();
        // Called for every input record; most produce nothing.
        if outputs.is_empty() {
            return Ok(rendered);
        }
        let record_time = origin.and_then(|o| o.record_time);
        let mut changed: BTreeSet<String> = BTreeSet::new();
        let source = format!("{}/{}", key.0, key.1);
        for out in outputs {
            match out {
                Output::Enforcement(e) => {
                    let payload = match self.output_format {
                        OutputFormat::Json => serde_json::to_vec(&e).map_err(|source| {
                            PipelineError::Encode { what: "an enforcement event", source }
                        })?,
                        OutputFormat::Avro => {
                            let datum =
                                driftgate_core::codec::avro_json::encode_datum(&e, self.enforcement_schema)
                                    .map_err(|x| PipelineError::Avro(x.to_string()))?;
                            crate::kafka::decode::confluent_frame(self.output_schema_id, &datum)
                        }
                    };
                    info!(agent = %e.agent_id, pact = e.pact_id.as_deref().unwrap_or(""), clause = e.clause_id.as_deref().unwrap_or(""), seq = e.seq, from = e.lane_from.as_str(), to = e.lane_to.as_str(), reason = %e.reason.code, "enforcement event");
                    let incarnation = engine.agent(&e.agent_id).map_or(0, |a| a.first_seen).to_string();
                    let headers = OwnedHeaders::new()
                        .insert(Header { key: "driftgate.kind", value: Some("enforcement") })
                        .insert(Header { key: "driftgate.seq", value: Some(&e.seq.to_string()) })
                        .insert(Header { key: "driftgate.event_id", value: Some(&e.event_id) })
                        .insert(Header { key: headers::SOURCE, value: Some(&source) })
                        .insert(Header { key: headers::INCARNATION, value: Some(&incarnation) });
                    self.metrics.enforcement(&e, record_time, crate::clock::wall_micros());
                    rendered.push(Rendered::Record {
                        to: Destination::Enforcement,
                        key: e.agent_id.as_bytes().to_vec(),
                        payload,
                        headers,
                        partition: None,
                    });
                    changed.insert(e.agent_id);
                }
                Output::History(r) => {
                    let payload = serde_json::to_vec(&r)
                        .map_err(|source| PipelineError::Encode { what: "a history record", source })?;
                    let headers =
                        OwnedHeaders::new().insert(Header { key: headers::CHAIN, value: Some(&source) });
                    let key_bytes = r.agent_id.clone().unwrap_or_default().into_bytes();
                    self.metrics.history_records.inc();
                    rendered.push(Rendered::Record {
                        to: Destination::History,
                        key: key_bytes,
                        payload,
                        headers,
                        partition: Some(key.1),
                    });
                    if let Ok(mut recent) = self.recent.lock() {
                        recent.push(r);
                    }
                }
                Output::Late(l) => {
                    if origin.is_some() {
                        rendered.push(Rendered::Late { reason: l.reason });
                    }
                }
                Output::Panic(p) => {
                    warn!(workflow = %p.workflow, would_block = p.would_block, agents = p.agents, "blast-radius cap: fail mode applied instead of blocking")
                }
            }
        }
        for agent in changed {
            if let Some(s) = AgentSnapshot::of(engine, &agent) {
                let payload = serde_json::to_vec(&s)
                    .map_err(|source| PipelineError::Encode { what: "an agent snapshot", source })?;
                rendered.push(Rendered::Record {
                    to: Destination::Snapshot,
                    key: agent.into_bytes(),
                    payload,
                    headers: OwnedHeaders::new()
                        .insert(Header { key: headers::SOURCE, value: Some(&source) }),
                    partition: None,
                });
            }
        }
        Ok(rendered)
    }

    /// Produces rendered records, in order; `msg` is the input record they derive from
    /// (without it, a late record cannot be dead-lettered and is dropped).
    pub(super) fn send(
        &self,
        key: &SourceKey,
        rendered: Vec<Rendered>,
        msg: Option<&dyn InputRecord>,
    ) -> Result<(), PipelineError> {
        for r in rendered {
            match r {
                Rendered::Record { to, key: k, payload, headers, partition } => {
                    let topic = match to {
                        Destination::Enforcement => &self.topics.enforcement,
                        Destination::History => &self.topics.history,
                        Destination::Snapshot => &self.topics.snapshot,
                    };
                    self.sink.send(
                        key,
                        OutRecord {
                            topic,
                            key: &k,
                            payload: Some(&payload),
                            headers: Some(headers),
                            partition,
                        },
                    )?;
                }
                Rendered::Late { reason } => {
                    if let Some(m) = msg {
                        self.dead_letter(key, m, "late_event", &reason)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Produces a partition's heartbeat on the snapshot topic (see [`driftgate_core::model::heartbeat`]).
    pub(super) fn heartbeat(&self, key: &SourceKey, hb: &Heartbeat) -> Result<(), PipelineError> {
        let payload =
            serde_json::to_vec(hb).map_err(|source| PipelineError::Encode { what: "a heartbeat", source })?;
        let k = driftgate_core::model::heartbeat::key(&key.0, key.1);
        let h = OwnedHeaders::new().insert(Header { key: "driftgate.kind", value: Some("heartbeat") });
        self.sink.send(
            key,
            OutRecord {
                topic: &self.topics.snapshot,
                key: k.as_bytes(),
                payload: Some(&payload),
                headers: Some(h),
                partition: None,
            },
        )?;
        self.metrics.heartbeats.inc();
        Ok(())
    }

    pub(super) fn dead_letter(
        &self,
        key: &SourceKey,
        msg: &dyn InputRecord,
        code: &str,
        detail: &str,
    ) -> Result<(), PipelineError> {
        let now = driftgate_core::timefmt::rfc3339(crate::clock::wall_micros());
        let h = OwnedHeaders::new()
            .insert(Header { key: headers::REASON, value: Some(code) })
            .insert(Header { key: headers::ERROR, value: Some(detail) })
            .insert(Header { key: headers::TOPIC, value: Some(msg.topic()) })
            .insert(Header { key: headers::PARTITION, value: Some(&msg.partition().to_string()) })
            .insert(Header { key: headers::OFFSET, value: Some(&msg.offset().to_string()) })
            .insert(Header { key: headers::TIME, value: Some(&now) });
        self.sink.send(
            key,
            OutRecord {
                topic: &self.topics.dead_letter,
                key: msg.key().unwrap_or_default(),
                payload: msg.payload(),
                headers: Some(h),
                partition: None,
            },
        )?;
        self.metrics.records_dead_lettered.with_label_values(&[code]).inc();
        Ok(())
    }
}
