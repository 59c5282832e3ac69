//! Backtest reports: what a set of pacts did to recorded traffic, as one self-contained HTML
//! file (`driftgate replay --report`, `driftgate demo --report`).
//!
//! The report is built from what the engine emits (enforcement events and history records),
//! its counters at the end, and the detector traces it collects when asked
//! ([`Engine::enable_trace`]). Everything but the plots' geometry is in [`ReportData`], which
//! is embedded in the page as JSON, so tests and tools can read the numbers the page shows.
//!
//! Memory is bounded by the number of agents and by [`Limits`], not by the input: counts are
//! kept for every event, but only the first `max_events` events keep their details.

mod compare;
mod html;
mod labels;
mod svg;

pub use compare::{diff_events, Diff, DiffKind, DiffRow};
pub use html::{render, DATA_ELEMENT_ID};
pub use labels::{read_labels, Label, LabelScore};

use driftgate_core::engine::{ClauseTrace, Engine, TraceLimits, Traces};
use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::history::{Record, RecordKind};
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::telemetry::Telemetry;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How much a report keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Enforcement events kept with their details (and plots); later ones are only counted.
    pub max_events: usize,
    /// Events whose details are shown expanded in the page; the rest are collapsed.
    pub expanded_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_events: 2_000, expanded_events: 12 }
    }
}

/// A pact version in the replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PactRow {
    /// Pact id.
    pub id: String,
    /// Version.
    pub version: u32,
    /// Number of clauses.
    pub clauses: usize,
    /// Whether it was enforcing at the end (otherwise a shadow or replaced version).
    pub active: bool,
}

/// Counts over the whole replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Input records offered (telemetry, overrides and pact changes).
    pub records: u64,
    /// Telemetry events processed.
    pub telemetry: u64,
    /// Distinct agents seen in the telemetry.
    pub agents: usize,
    /// Workflows seen in the telemetry.
    pub workflows: Vec<String>,
    /// Pact versions loaded.
    pub pacts: Vec<PactRow>,
    /// Event time of the first and last telemetry record (µs).
    pub time_range: Option<(i64, i64)>,
    /// Enforcement events.
    pub events: u64,
    /// Enforcement events by the lane they set.
    pub events_by_lane: BTreeMap<String, u64>,
    /// Enforcement events by reason code.
    pub events_by_reason: BTreeMap<String, u64>,
    /// Records set aside as late.
    pub late: u64,
    /// Records refused as malformed (dead-lettered).
    pub dead_lettered: u64,
    /// Observations a detector refused (e.g. an unseen category).
    pub invalid_observations: u64,
    /// Overrides accepted and rejected.
    pub overrides_accepted: u64,
    /// See `overrides_accepted`.
    pub overrides_rejected: u64,
}

/// The four headline figures over the replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Workflows with an agent under pact-aware routing, at the end of the replay.
    pub routed_workflows: usize,
    /// Workflows with agent state at the end of the replay.
    pub workflows: usize,
    /// `routed_workflows / workflows`.
    pub routed_share: Option<f64>,
    /// Lane changes up caused by a detection, each scope counted (the delays below are over
    /// these; a detection that moves both scopes counts twice, with the same delay).
    pub detections: u64,
    /// Mean event time from the estimated change point to the enforced lane change (s).
    pub mean_control_delay_seconds: Option<f64>,
    /// Mean number of events from the estimated change point to the verifying event.
    pub mean_control_delay_events: Option<f64>,
    /// Loosening overrides accepted: each bypassed pact policy.
    pub bypass_overrides: u64,
    /// High-risk telemetry events.
    pub high_risk_decisions: u64,
    /// Those whose high-risk clauses had fresh evidence.
    pub high_risk_fresh: u64,
    /// `high_risk_fresh / high_risk_decisions`.
    pub fresh_share: Option<f64>,
}

/// One span of an agent's lane in one scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneSpan {
    /// Scope.
    pub scope: Scope,
    /// Lane.
    pub lane: Lane,
    /// Start (µs).
    pub from: i64,
    /// End (µs); `None` while it still holds at the end of the replay.
    pub until: Option<i64>,
}

/// An agent that left `normal` at some point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTimeline {
    /// The agent.
    pub agent_id: String,
    /// The strictest lane it reached, in any scope.
    pub worst: Lane,
    /// Its lanes over time, per scope, in order.
    pub spans: Vec<LaneSpan>,
}

/// One enforcement event with what explains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// The event as routers received it.
    pub event: EnforcementEvent,
    /// The hash and position of its history record (`decision`).
    pub history: Option<(String, u64)>,
    /// The telemetry record that caused it, when it was telemetry.
    pub causing_record: Option<serde_json::Value>,
    /// With labels: whether it fell in a labelled incident (`true`) or is a false alarm.
    pub incident: Option<bool>,
}

/// Everything a report shows except the plots' geometry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    /// Title line.
    pub title: String,
    /// What was replayed (a file name, or `demo`).
    pub input: String,
    /// `driftgate <version>`.
    pub generator: String,
    /// Counts.
    pub summary: Summary,
    /// The four headline figures.
    pub figures: Figures,
    /// Agents that left `normal`.
    pub timeline: Vec<AgentTimeline>,
    /// Enforcement events, up to [`Limits::max_events`].
    pub events: Vec<EventRow>,
    /// Enforcement events beyond that limit.
    pub events_omitted: u64,
    /// Scores against labelled incidents, when labels were given.
    pub labels: Option<LabelScore>,
    /// The comparison with other pact versions, with `--compare`.
    pub compare: Option<Diff>,
}

/// Collects a report while a run goes on; see [`ReportBuilder::finish`].
#[derive(Debug)]
pub struct ReportBuilder {
    limits: Limits,
    agents: BTreeSet<String>,
    workflows: BTreeSet<String>,
    time_range: Option<(i64, i64)>,
    events: u64,
    by_lane: BTreeMap<String, u64>,
    by_reason: BTreeMap<String, u64>,
    rows: Vec<EventRow>,
    row_of: HashMap<String, usize>,
    spans: BTreeMap<String, Vec<LaneSpan>>,
    delays: (u64, f64, f64),
    dead_lettered: u64,
}

/// An event that moved a lane up because a detector verified something.
fn is_detection(e: &EnforcementEvent) -> bool {
    e.detection.is_some() && e.lane_to > e.lane_from && e.action != "settle"
}

impl ReportBuilder {
    /// An empty report.
    pub fn new(limits: Limits) -> ReportBuilder {
        ReportBuilder {
            limits,
            agents: BTreeSet::new(),
            workflows: BTreeSet::new(),
            time_range: None,
            events: 0,
            by_lane: BTreeMap::new(),
            by_reason: BTreeMap::new(),
            rows: Vec::new(),
            row_of: HashMap::new(),
            spans: BTreeMap::new(),
            delays: (0, 0.0, 0.0),
            dead_lettered: 0,
        }
    }

    /// Notes a telemetry record offered to the engine.
    pub fn saw(&mut self, t: &Telemetry) {
        if !self.agents.contains(t.agent_id.as_str()) {
            self.agents.insert(t.agent_id.to_string());
        }
        if !self.workflows.contains(t.workflow.as_str()) {
            self.workflows.insert(t.workflow.to_string());
        }
        let at = t.occurred_at;
        self.time_range = Some(self.time_range.map_or((at, at), |(a, b)| (a.min(at), b.max(at))));
    }

    /// Notes a record refused as malformed.
    pub fn dead_letter(&mut self) {
        self.dead_lettered += 1;
    }

    /// Takes the engine's outputs of one step.
    pub fn take(&mut self, events: &[EnforcementEvent], history: &[Record]) {
        for e in events {
            self.events += 1;
            *self.by_lane.entry(e.lane_to.as_str().to_string()).or_default() += 1;
            *self.by_reason.entry(e.reason.code.clone()).or_default() += 1;
            if is_detection(e) {
                if let Some(d) = &e.detection {
                    self.delays.0 += 1;
                    self.delays.1 += (e.effective_at - d.change_point_at) as f64 / 1e6;
                    self.delays.2 += d.n as f64;
                }
            }
            if e.action != "settle" && (e.lane_to != Lane::Normal || self.spans.contains_key(&e.agent_id)) {
                let spans = self.spans.entry(e.agent_id.clone()).or_default();
                if let Some(open) = spans.iter_mut().rev().find(|s| s.scope == e.scope && s.until.is_none()) {
                    open.until = Some(e.effective_at);
                }
                spans.push(LaneSpan { scope: e.scope, lane: e.lane_to, from: e.effective_at, until: None });
            }
            if self.rows.len() < self.limits.max_events {
                self.row_of.insert(e.event_id.clone(), self.rows.len());
                self.rows.push(EventRow {
                    event: e.clone(),
                    history: None,
                    causing_record: None,
                    incident: None,
                });
            }
        }
        for r in history.iter().filter(|r| r.kind == RecordKind::Decision) {
            let id = r.detail.get("event_id").and_then(serde_json::Value::as_str);
            if let Some(&i) = id.and_then(|id| self.row_of.get(id)) {
                self.rows[i].history = Some((r.hash.clone(), r.position));
            }
        }
    }

    /// The report, from what was collected and the engine at the end of the run.
    pub fn finish(self, engine: &Engine, records: u64, title: &str, input: &str) -> ReportData {
        let stats = engine.stats();
        let active: BTreeSet<(&str, u32)> = engine.active_pacts().map(|p| (p.id(), p.version())).collect();
        let pacts = engine
            .pacts()
            .iter()
            .map(|p| PactRow {
                id: p.id().to_string(),
                version: p.version(),
                clauses: p.doc.clauses.len(),
                active: active.contains(&(p.id(), p.version())),
            })
            .collect();
        let (mut routed, mut all) = (BTreeSet::new(), BTreeSet::new());
        for (_, a) in engine.agents() {
            all.insert(&*a.workflow);
            if !a.pacts.is_empty() {
                routed.insert(&*a.workflow);
            }
        }
        let share = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
        let (n, secs, evs) = self.delays;
        let figures = Figures {
            routed_workflows: routed.len(),
            workflows: all.len(),
            routed_share: share(routed.len() as u64, all.len() as u64),
            detections: n,
            mean_control_delay_seconds: (n > 0).then(|| secs / n as f64),
            mean_control_delay_events: (n > 0).then(|| evs / n as f64),
            bypass_overrides: stats.overrides_bypass,
            high_risk_decisions: stats.high_risk_decisions,
            high_risk_fresh: stats.high_risk_fresh,
            fresh_share: share(stats.high_risk_fresh, stats.high_risk_decisions),
        };
        let timeline = self
            .spans
            .into_iter()
            .map(|(agent_id, spans)| AgentTimeline {
                worst: spans.iter().map(|s| s.lane).max().unwrap_or(Lane::Normal),
                agent_id,
                spans,
            })
            .collect();
        let summary = Summary {
            records,
            telemetry: stats.telemetry,
            agents: self.agents.len(),
            workflows: self.workflows.into_iter().collect(),
            pacts,
            time_range: self.time_range,
            events: self.events,
            events_by_lane: self.by_lane,
            events_by_reason: self.by_reason,
            late: stats.late,
            dead_lettered: self.dead_lettered,
            invalid_observations: stats.invalid_observations,
            overrides_accepted: stats.overrides_accepted,
            overrides_rejected: stats.overrides_rejected,
        };
        ReportData {
            title: title.to_string(),
            input: input.to_string(),
            generator: format!("driftgate {}", env!("CARGO_PKG_VERSION")),
            summary,
            figures,
            timeline,
            events_omitted: self.events - self.rows.len() as u64,
            events: self.rows,
            labels: None,
            compare: None,
        }
    }
}

impl ReportData {
    /// Attaches the causing telemetry records, found by `(event_id, occurred_at)` in a second
    /// pass over the input (so the replay need not keep its input).
    pub fn fill_causing_records(&mut self, records: impl Iterator<Item = Telemetry>) {
        // By event id, then event time: looked up with the record's borrowed id, so the pass
        // over the input allocates nothing for records that caused no event.
        let mut wanted: HashMap<String, Vec<(i64, usize)>> = HashMap::new();
        for (i, r) in self.events.iter().enumerate() {
            if r.event.causation.kind == "telemetry" {
                wanted.entry(r.event.causation.id.clone()).or_default().push((r.event.causation.at, i));
            }
        }
        for t in records {
            if wanted.is_empty() {
                break;
            }
            let Some(rows) = wanted.get_mut(t.event_id.as_str()) else { continue };
            let (hits, rest): (Vec<_>, Vec<_>) = rows.iter().partition(|(at, _)| *at == t.occurred_at);
            if hits.is_empty() {
                continue;
            }
            let v = serde_json::to_value(&t).ok();
            for (_, i) in hits {
                self.events[i].causing_record = v.clone();
            }
            if rest.is_empty() {
                wanted.remove(t.event_id.as_str());
            } else {
                *rows = rest;
            }
        }
    }

    /// Scores the events against labelled incidents and marks each detection.
    pub fn score(&mut self, labels: &[Label]) {
        let mut score = LabelScore::new(labels);
        for r in &mut self.events {
            if labels::is_alarm(&r.event) {
                let hit = score.judge(&r.event);
                r.incident = Some(hit);
            }
        }
        self.labels = Some(score.finish());
    }
}

/// A finished report: its data and the traces for its plots.
#[derive(Debug, Clone)]
pub struct Report {
    /// The numbers.
    pub data: ReportData,
    /// Detector traces by event id.
    pub traces: HashMap<String, ClauseTrace>,
    /// Traced events beyond the tracer's limit.
    pub untraced: u64,
    /// Clause keys beyond the tracer's limit (their events have no statistic plot).
    pub untraced_keys: u64,
    /// The tracer's limits.
    pub trace_limits: TraceLimits,
    /// Events shown expanded.
    pub expanded_events: usize,
}

impl Report {
    /// Puts data and traces together.
    pub fn new(data: ReportData, traces: Traces, limits: Limits) -> Report {
        let (untraced, untraced_keys, trace_limits) = (traces.untraced, traces.untraced_keys, traces.limits);
        let traces = traces.traces.into_iter().map(|t| (t.event_id.clone(), t)).collect();
        Report {
            data,
            traces,
            untraced,
            untraced_keys,
            trace_limits,
            expanded_events: limits.expanded_events,
        }
    }
}

/// An enforcement event for the unit tests: `agent` moves `from` → `to` at `at` for `code`,
/// citing clause `p/c`.
#[cfg(test)]
pub(crate) fn test_event(agent: &str, at: i64, code: &str, from: Lane, to: Lane) -> EnforcementEvent {
    use driftgate_core::model::enforcement::{Causation, Reason};
    EnforcementEvent {
        event_id: format!("{agent}-{at}"),
        seq: 1,
        agent_id: agent.into(),
        pact_id: Some("p".into()),
        pact_version: Some(1),
        clause_id: Some("c".into()),
        segment: Some(String::new()),
        lane_from: from,
        lane_to: to,
        action: to.action().into(),
        scope: Scope::All,
        enforced: true,
        effective_at: at,
        expires_at: None,
        min_dwell_until: None,
        reason: Reason { code: code.into(), text: String::new() },
        detection: None,
        evidence: None,
        override_info: None,
        causation: Causation { kind: "telemetry".into(), id: "x".into(), at },
    }
}
