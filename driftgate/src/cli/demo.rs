//! `driftgate demo`: a simulated fleet run through the real engine core, with no setup.
//!
//! Fifty agents in finance, support and research work through one simulated day. Five things
//! happen to them:
//! - `fin-07` gets a model update at 10:00 that quietly lowers its verified-citation rate
//!   from 95 % to 80 %;
//! - `sup-04` emits PII once, at 13:37;
//! - `res-11` goes silent at 15:00, so its evidence goes stale;
//! - an operator holds `fin-03` in `watch` from 09:00 to 12:00 with an expiring override;
//! - `sup-09` starts calling a `refund` tool at 11:00 (every fifth event), a scope expansion
//!   that holds it in review until its clauses re-verify on those calls.
//!
//! The same generator (`simulate`) writes telemetry files for `replay` and benchmarks.

use crate::report::{render, Label, Limits, Report, ReportBuilder};
use driftgate_core::engine::{Collected, Engine, EngineConfig, Input, TraceLimits};
use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::history::Record;
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::overrides::{OverrideKind, OverrideRequest};
use driftgate_core::model::telemetry::{Attr, Attributes, Citations, Model, Outcome, Risk, Telemetry};
use driftgate_core::pact::{parse_pact, Pact};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use rand_pcg::Pcg64;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// The example pacts, embedded so the demo needs no files.
pub const EXAMPLE_PACTS: &[(&str, &str)] = &[
    ("examples/finance-citations.yaml", include_str!("../../../examples/finance-citations.yaml")),
    ("examples/no-pii.yaml", include_str!("../../../examples/no-pii.yaml")),
    ("examples/latency.yaml", include_str!("../../../examples/latency.yaml")),
    ("examples/support-tools.yaml", include_str!("../../../examples/support-tools.yaml")),
    ("examples/research-citations.yaml", include_str!("../../../examples/research-citations.yaml")),
];

/// The embedded example pacts, compiled.
pub fn example_pacts() -> Vec<Pact> {
    EXAMPLE_PACTS.iter().map(|(f, t)| parse_pact(t, f).expect("example pacts are valid (tested)")).collect()
}

/// Midnight UTC of the simulated day, 2026-03-02 (µs).
pub const DAY0: i64 = 1_772_409_600_000_000;
const HOUR: i64 = 3_600_000_000;
const MIN: i64 = 60_000_000;
/// When `fin-07`'s model is updated.
pub const MODEL_UPDATE_AT: i64 = DAY0 + 10 * HOUR;
/// When `sup-04` emits PII.
pub const PII_AT: i64 = DAY0 + 13 * HOUR + 37 * MIN;
/// When `res-11` goes silent.
pub const SILENT_AT: i64 = DAY0 + 15 * HOUR;
/// The operator override on `fin-03`.
pub const OVERRIDE_FROM: i64 = DAY0 + 9 * HOUR;
/// Its expiry.
pub const OVERRIDE_UNTIL: i64 = DAY0 + 12 * HOUR;
/// When `sup-09` starts calling the `refund` tool.
pub const NEW_TOOL_AT: i64 = DAY0 + 11 * HOUR;
/// The tool it starts calling.
pub const NEW_TOOL: &str = "refund";

struct AgentSim {
    id: String,
    workflow: &'static str,
    model: Model,
    rng: Pcg64,
    n: u64,
    pii_done: bool,
}

/// Generates the fleet's telemetry (and the demo's override) in event-time order.
pub struct Fleet {
    agents: Vec<AgentSim>,
    queue: BinaryHeap<Reverse<(i64, usize)>>,
    end: i64,
    incidents: bool,
    pending_override: Option<OverrideRequest>,
}

impl Fleet {
    /// A fleet of 50 agents from `DAY0` for `days` days; `incidents` turns on the five
    /// scripted incidents of the first day.
    pub fn new(seed: u64, days: i64, incidents: bool) -> Fleet {
        let mut agents = Vec::new();
        for (prefix, workflow, n, (prov, name, ver)) in [
            ("fin", "finance", 15, ("acme", "ledger-pro", "v1")),
            ("sup", "support", 20, ("acme", "helpdesk", "v3")),
            ("res", "research", 15, ("acme", "scholar", "v2")),
        ] {
            for i in 1..=n {
                let idx = agents.len() as u64;
                agents.push(AgentSim {
                    id: format!("{prefix}-{i:02}"),
                    workflow,
                    model: Model { provider: prov.into(), name: name.into(), version: ver.into() },
                    rng: Pcg64::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(idx)),
                    n: 0,
                    pii_done: false,
                });
            }
        }
        let mut queue = BinaryHeap::new();
        for (i, a) in agents.iter_mut().enumerate() {
            let first = DAY0 + a.rng.random_range(0..20_000_000);
            queue.push(Reverse((first, i)));
        }
        let pending_override = incidents.then(|| OverrideRequest {
            override_id: "ovr-0001".into(),
            agent_id: "fin-03".into(),
            scope: Scope::All,
            kind: OverrideKind::Tighten,
            lane: Some(Lane::Watch),
            clause_id: None,
            principal: "alice@trust-ops".into(),
            reason: "vendor maintenance window: hold fin-03 under watch".into(),
            ticket: "OPS-1234".into(),
            issued_at: OVERRIDE_FROM,
            expires_at: Some(OVERRIDE_UNTIL),
            expected_seq: Some(0),
        });
        Fleet { agents, queue, end: DAY0 + days * 24 * HOUR, incidents, pending_override }
    }

    fn event(&mut self, i: usize, t: i64) -> Telemetry {
        let incidents = self.incidents;
        let a = &mut self.agents[i];
        a.n += 1;
        if incidents && a.id == "fin-07" && t >= MODEL_UPDATE_AT {
            a.model.version = "v2".into();
        }
        let r: f64 = a.rng.random();
        let outcome = if r < 0.005 {
            Outcome::Refused
        } else if r < 0.007 {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        let risk = match (a.workflow, a.rng.random::<f64>()) {
            ("support", u) if u < 0.6 => Risk::Low,
            ("support", _) => Risk::Medium,
            (_, u) if u < 0.4 => Risk::High,
            _ => Risk::Medium,
        };
        let (median, sigma) = if a.workflow == "research" { (1600.0f64, 0.3) } else { (1200.0, 0.35) };
        let latency = LogNormal::new(median.ln(), sigma).expect("valid").sample(&mut a.rng);
        let mut attributes = Attributes::new();
        let mut citations = None;
        let mut tool_calls = Vec::new();
        match a.workflow {
            "finance" | "research" => {
                let p_verified = if a.workflow == "research" {
                    0.90
                } else if incidents && a.id == "fin-07" && t >= MODEL_UPDATE_AT {
                    0.80
                } else {
                    0.95
                };
                let total = a.rng.random_range(1..=4);
                let verified =
                    if a.rng.random::<f64>() < p_verified { a.rng.random_range(1..=total) } else { 0 };
                citations = Some(Citations { total, verified });
                let judge: f64 = Normal::new(4.2, 0.4).expect("valid").sample(&mut a.rng);
                attributes.insert("judge_score", Attr::Num((judge.clamp(1.0, 5.0) * 100.0).round() / 100.0));
                if a.rng.random::<f64>() < 0.5 {
                    tool_calls.push("search".into());
                }
            }
            _ => {
                const TOOLS: [(&str, f64); 5] = [
                    ("search", 0.40),
                    ("kb_lookup", 0.30),
                    ("browse", 0.15),
                    ("none", 0.10),
                    ("code_exec", 0.05),
                ];
                let mut u: f64 = a.rng.random();
                let tool = TOOLS.iter().find(|(_, p)| {
                    u -= p;
                    u < 0.0
                });
                tool_calls.push(tool.map_or("code_exec", |t| t.0).into());
                // Deterministic, so the agent's random stream is the same as without it.
                if incidents && a.id == "sup-09" && t >= NEW_TOOL_AT && a.n.is_multiple_of(5) {
                    tool_calls.push(NEW_TOOL.into());
                }
            }
        }
        let pii = incidents && a.id == "sup-04" && t >= PII_AT && !a.pii_done;
        if pii {
            a.pii_done = true;
        }
        Telemetry {
            event_id: format!("{}-{:07}", a.id, a.n).into(),
            agent_id: a.id.as_str().into(),
            workflow: a.workflow.into(),
            model: a.model.clone(),
            occurred_at: t,
            risk,
            outcome,
            latency_ms: Some((latency * 10.0).round() / 10.0),
            citations,
            pii_detected: Some(pii),
            tool_calls,
            attributes,
        }
    }
}

impl Iterator for Fleet {
    type Item = Input;
    fn next(&mut self) -> Option<Input> {
        loop {
            let Reverse((t, i)) = self.queue.pop()?;
            if let Some(o) = &self.pending_override {
                if o.issued_at <= t {
                    self.queue.push(Reverse((t, i)));
                    return self.pending_override.take().map(Input::from);
                }
            }
            if t >= self.end {
                continue;
            }
            let silent = self.incidents && self.agents[i].id == "res-11" && t >= SILENT_AT;
            let gap = self.agents[i].rng.random_range(15_000_000..25_000_000);
            self.queue.push(Reverse((t + gap, i)));
            if silent {
                continue;
            }
            return Some(self.event(i, t).into());
        }
    }
}

/// Everything the demo produced.
pub struct DemoRun {
    /// Enforcement events, in order.
    pub events: Vec<EnforcementEvent>,
    /// The contract history.
    pub history: Vec<Record>,
    /// Telemetry events per agent, with their event times.
    pub telemetry_times: BTreeMap<String, Vec<i64>>,
    /// Telemetry events processed.
    pub telemetry: u64,
    /// Event times of `sup-09`'s calls to the new tool.
    pub new_tool_calls: Vec<i64>,
    /// The engine, for inspection.
    pub engine: Engine,
}

/// Runs the demo day through the engine.
pub fn run() -> DemoRun {
    run_with(false)
}

/// Runs the demo day, collecting detector traces for a report when `trace` is set
/// ([`DemoRun::engine`]'s `take_trace`).
pub fn run_with(trace: bool) -> DemoRun {
    let mut engine = Engine::new(EngineConfig::default(), example_pacts());
    if trace {
        engine.enable_trace(TraceLimits::default());
    }
    let mut out = Collected::default();
    let mut times: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut new_tool_calls = Vec::new();
    for input in Fleet::new(7, 1, true) {
        if let Input::Telemetry(t) = &input {
            times.entry(t.agent_id.to_string()).or_default().push(t.occurred_at);
            if t.tool_calls.iter().any(|c| c == NEW_TOOL) {
                new_tool_calls.push(t.occurred_at);
            }
        }
        engine.push(input);
        out.take(engine.drain());
    }
    engine.flush();
    out.take(engine.drain());
    let telemetry = engine.stats().telemetry;
    let Collected { events, history, .. } = out;
    DemoRun { events, history, telemetry_times: times, telemetry, new_tool_calls, engine }
}

impl DemoRun {
    /// Calls to the new tool up to `t`.
    pub fn scope_calls(&self, t: i64) -> usize {
        self.new_tool_calls.iter().filter(|c| **c <= t).count()
    }
}

fn clock(t: i64) -> String {
    let s = (t - DAY0).div_euclid(1_000_000);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn span(d: i64) -> String {
    let s = d / 1_000_000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The agents that have a scripted incident.
pub const INCIDENT_AGENTS: [&str; 5] = ["fin-07", "sup-04", "res-11", "fin-03", "sup-09"];

/// The printed timeline and summary.
pub fn report(run: &DemoRun) -> String {
    let mut s = String::new();
    s += "driftgate demo: 50 agents (finance, support, research), one simulated day, 5 pacts\n\n";
    s += "Timeline of enforcement changes (event time)\n";
    let mut i = 0;
    while i < run.events.len() {
        let e = &run.events[i];
        // The same change in both scopes at once prints as one line.
        let twin = run.events.get(i + 1).filter(|n| {
            n.agent_id == e.agent_id
                && n.effective_at == e.effective_at
                && n.lane_from == e.lane_from
                && n.lane_to == e.lane_to
                && n.reason.code == e.reason.code
        });
        let scope = match (twin, e.scope) {
            (Some(_), _) => "",
            (None, Scope::HighRisk) => " [high-risk]",
            (None, Scope::All) => " [all but high-risk]",
        };
        let text: String = e.reason.text.chars().take(110).collect();
        s += &format!(
            "  {}  {:<7} {:>7} -> {:<7} {:<22} {}{}\n",
            clock(e.effective_at),
            e.agent_id,
            e.lane_from.as_str(),
            e.lane_to.as_str(),
            e.reason.code,
            text,
            scope
        );
        i += 1 + twin.is_some() as usize;
    }
    let count = |agent: &str, from: i64, to: i64| {
        run.telemetry_times.get(agent).map_or(0, |v| v.iter().filter(|t| **t >= from && **t <= to).count())
    };
    s += "\nIncidents: from the real change to the enforcement event\n";
    let first = |agent: &str, pred: &dyn Fn(&EnforcementEvent) -> bool| {
        run.events.iter().find(|e| e.agent_id == agent && pred(e)).cloned()
    };
    match first("fin-07", &|e| e.lane_to == Lane::Degrade) {
        Some(e) => {
            let watch = first("fin-07", &|e| e.reason.code == "model_changed");
            s += &format!(
                "  citation drift   fin-07  model v1->v2 at {}: watch at {}; degraded at {} after {} events ({}) of the new model\n",
                clock(MODEL_UPDATE_AT),
                watch.map_or("-".into(), |w| clock(w.effective_at)),
                clock(e.effective_at),
                count("fin-07", MODEL_UPDATE_AT, e.effective_at),
                span(e.effective_at - MODEL_UPDATE_AT)
            );
        }
        None => s += "  citation drift   fin-07  NOT DEGRADED\n",
    }
    match first("sup-04", &|e| e.lane_to == Lane::Block) {
        Some(e) => {
            s += &format!(
                "  PII              sup-04  PII at {}: blocked at {} after {} event ({})\n",
                clock(PII_AT),
                clock(e.effective_at),
                count("sup-04", PII_AT, e.effective_at),
                span(e.effective_at - PII_AT)
            )
        }
        None => s += "  PII              sup-04  NOT BLOCKED\n",
    }
    match first("res-11", &|e| e.reason.code == "evidence_stale") {
        Some(e) => {
            let last = run.telemetry_times.get("res-11").and_then(|v| v.last().copied()).unwrap_or(SILENT_AT);
            s += &format!(
                "  silent agent     res-11  last event at {}: high-risk actions to {} at {} ({} after the last evidence)\n",
                clock(last),
                e.lane_to.as_str(),
                clock(e.effective_at),
                span(e.effective_at - last)
            )
        }
        None => s += "  silent agent     res-11  NOT FLAGGED STALE\n",
    }
    match first("fin-03", &|e| e.reason.code == "override_expired") {
        Some(e) => {
            s += &format!(
                "  override expiry  fin-03  watch by override at {}; expired at {}: back to {}\n",
                clock(OVERRIDE_FROM),
                clock(e.effective_at),
                e.lane_to.as_str()
            )
        }
        None => s += "  override expiry  fin-03  NO EXPIRY EVENT\n",
    }
    match first("sup-09", &|e| e.reason.code == "scope_new_tool") {
        Some(e) => {
            let released = first("sup-09", &|e| e.reason.code == "scope_reverified");
            s += &format!(
                "  scope expansion  sup-09  first `{NEW_TOOL}` call at {}: {} at {}; {}\n",
                clock(e.effective_at),
                e.lane_to.as_str(),
                clock(e.effective_at),
                released.map_or("NOT RE-VERIFIED".into(), |r| format!(
                    "re-verified at {} on {} calls to it: back to {}",
                    clock(r.effective_at),
                    run.scope_calls(r.effective_at),
                    r.lane_to.as_str()
                ))
            )
        }
        None => s += "  scope expansion  sup-09  NOT HELD\n",
    }
    s += "\nFinal lanes (agents not in normal)\n";
    let mut finals: BTreeMap<(String, Scope), Lane> = BTreeMap::new();
    for e in &run.events {
        if e.action != "settle" {
            finals.insert((e.agent_id.clone(), e.scope), e.lane_to);
        }
    }
    for ((agent, scope), lane) in &finals {
        if *lane != Lane::Normal {
            s += &format!("  {agent:<7} {:<10} {}\n", scope.as_str(), lane.as_str());
        }
    }
    let healthy_changes =
        run.events.iter().filter(|e| !INCIDENT_AGENTS.contains(&e.agent_id.as_str())).count();
    s += &format!(
        "\nFalse alarms on healthy agents: {healthy_changes} (expected 0)\nTelemetry events: {}; enforcement events: {}; history records: {}\n",
        run.telemetry,
        run.events.len(),
        run.history.len()
    );
    s
}

/// The scripted incidents as labels, so the demo report can tell true alarms from false.
/// The override on `fin-03` is an operator's action, not an incident.
pub fn labels() -> Vec<Label> {
    let label = |agent: &str, from: i64, until: Option<i64>, note: &str| Label {
        agent_id: agent.into(),
        from,
        until,
        note: note.into(),
    };
    vec![
        label(
            "fin-07",
            MODEL_UPDATE_AT,
            None,
            "model v1 -> v2 lowers the verified-citation rate from 95 % to 80 %",
        ),
        label("sup-09", NEW_TOOL_AT, None, "starts calling the `refund` tool (scope expansion)"),
        label("sup-04", PII_AT, None, "emits PII once"),
        label("res-11", SILENT_AT, None, "goes silent; its evidence goes stale"),
    ]
}

/// The demo's telemetry, generated again (the run is deterministic).
fn telemetry() -> impl Iterator<Item = Telemetry> {
    Fleet::new(7, 1, true).filter_map(|i| match i {
        Input::Telemetry(t) => Some(*t),
        _ => None,
    })
}

/// The backtest report of a traced demo run ([`run_with`]`(true)`), as HTML.
pub fn html_report(run: &mut DemoRun) -> String {
    let limits = Limits::default();
    let mut b = ReportBuilder::new(limits);
    for t in telemetry() {
        b.saw(&t);
    }
    b.take(&run.events, &run.history);
    let mut data = b.finish(
        &run.engine,
        run.engine.stats().inputs,
        "driftgate demo: 50 simulated agents, one day, 5 pacts",
        "demo (simulated fleet, seed 7)",
    );
    data.fill_causing_records(telemetry());
    data.score(&labels());
    render(&Report::new(data, run.engine.take_trace(), limits))
}
