//! Pacts: versioned YAML contracts made of clauses, their validation and compilation.
//!
//! A pact is refused with `file:line:column: reason`. Leaf values (predicates, durations,
//! detector options) are checked while parsing, so their errors point at the value; checks
//! that span several fields point at the clause's `id:` line.

pub mod duration;
pub mod predicate;

use crate::model::lane::{Consequence, Lane, Scope};
use crate::pact::duration::Dur;
use crate::pact::predicate::{Compiled, Field, Type};
use driftgate_detectors::{
    AnyDetector, DetectorSpec, MetricKind, QuantileBound, QuantileBoundConfig, RateBound, RateBoundConfig,
    ZeroTolerance,
};
use globset::{Glob, GlobSet, GlobSetBuilder};
use schemars::JsonSchema;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
use std::path::Path;
use thiserror::Error;

/// A pact refused at load, with its place.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PactError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Plain reason.
    pub message: String,
}

/// A compiled expression as written in a pact.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr(pub Compiled);

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Compiled::compile(&s)
            .map(Expr)
            .map_err(|e| D::Error::custom(format!("invalid expression `{s}` at {e}")))
    }
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.source)
    }
}

impl JsonSchema for Expr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Expression".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An expression over telemetry fields, e.g. `citations.verified > 0`, `outcome == \"refused\"`, `latency_ms`, `tool_calls[0]`."
        })
    }
}

/// Clause severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical: a single verified breach blocks; leaving block needs a human attestation.
    Critical,
}

/// Fields a clause can segment its state by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SegmentField {
    /// The workflow.
    #[serde(rename = "workflow")]
    Workflow,
    /// The risk class.
    #[serde(rename = "risk")]
    Risk,
    /// The model provider.
    #[serde(rename = "model.provider")]
    ModelProvider,
    /// The model name.
    #[serde(rename = "model.name")]
    ModelName,
    /// The model version (limit tests only: drift baselines carry across versions).
    #[serde(rename = "model.version")]
    ModelVersion,
}

impl SegmentField {
    /// The telemetry field.
    pub fn field(self) -> Field {
        match self {
            SegmentField::Workflow => Field::Workflow,
            SegmentField::Risk => Field::Risk,
            SegmentField::ModelProvider => Field::ModelProvider,
            SegmentField::ModelName => Field::ModelName,
            SegmentField::ModelVersion => Field::ModelVersion,
        }
    }
}

/// What a clause measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "MetricRaw")]
pub struct Metric {
    /// bernoulli (a boolean expression), real (a number) or categorical (a string).
    pub kind: MetricKind,
    /// The value per event; events where it is null are skipped.
    pub value: Expr,
    /// Only events where this is true count.
    #[serde(default)]
    pub when: Option<Expr>,
}

/// The metric as written, before its types are checked.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MetricRaw {
    /// bernoulli (a boolean expression), real (a number) or categorical (a string).
    kind: MetricKind,
    /// The value per event; events where it is null are skipped.
    value: Expr,
    /// Only events where this is true count.
    #[serde(default)]
    when: Option<Expr>,
}

impl TryFrom<MetricRaw> for Metric {
    type Error = String;
    fn try_from(r: MetricRaw) -> Result<Self, String> {
        let want = match r.kind {
            MetricKind::Bernoulli => Type::Bool,
            MetricKind::Real => Type::Num,
            MetricKind::Categorical => Type::Str,
        };
        let got = r.value.0.ty;
        if got != want && got != Type::Dyn {
            return Err(format!(
                "a {} metric needs a {want} value, but `{}` is a {got}",
                r.kind.as_str(),
                r.value.0.source
            ));
        }
        if let Some(w) = &r.when {
            if !matches!(w.0.ty, Type::Bool | Type::Dyn) {
                return Err(format!(
                    "`when` must be a boolean expression, but `{}` is a {}",
                    w.0.source, w.0.ty
                ));
            }
        }
        Ok(Metric { kind: r.kind, value: r.value, when: r.when })
    }
}

/// An absolute bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitTest {
    /// Level of each verdict (probability of a false breach per verification epoch).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Bernoulli: the rate must stay at or below `max`.
    #[serde(default)]
    pub rate: Option<RateLimit>,
    /// Real: the quantile `q` must stay at or below `max`.
    #[serde(default)]
    pub quantile: Option<QuantileLimit>,
    /// Bernoulli: any occurrence is a breach.
    #[serde(default)]
    pub zero_tolerance: bool,
}

fn default_alpha() -> f64 {
    1e-3
}

/// A rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The limit, e.g. 0.02.
    pub max: f64,
    /// Recovery needs the rate shown below this (default: `max`).
    #[serde(default)]
    pub exit: Option<f64>,
}

/// A quantile limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantileLimit {
    /// The quantile, e.g. 0.95.
    pub q: f64,
    /// The limit, e.g. 3000.
    pub max: f64,
    /// Recovery needs the quantile shown below this (default: `max`).
    #[serde(default)]
    pub exit: Option<f64>,
}

/// How a clause is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Test {
    /// Drift against a baseline learned from the agent's own traffic.
    Drift(DetectorSpec),
    /// An absolute bound.
    Limit(LimitTest),
}

/// Evidence freshness: at least `min_events` within `max_age` of event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// Oldest evidence that still counts.
    pub max_age: Dur,
    /// Events needed within `max_age`.
    #[serde(default = "one")]
    pub min_events: u32,
}

fn one() -> u32 {
    1
}

/// How a clause recovers after a breach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Recovery {
    /// Drift: consecutive events without an alarm, on fresh traffic, to re-verify.
    pub clean_events: u64,
    /// Minimum time in a lane before stepping down.
    pub min_dwell: Dur,
    /// The dwell is multiplied by this for each repeated escalation...
    pub dwell_multiplier: f64,
    /// ...up to this cap.
    pub max_dwell: Dur,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            clean_events: 200,
            min_dwell: Dur(15 * 60 * 1_000_000),
            dwell_multiplier: 2.0,
            max_dwell: Dur(24 * 3600 * 1_000_000),
        }
    }
}

fn watch() -> Lane {
    Lane::Watch
}

/// One clause of a pact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Clause {
    /// Identifier, unique in the pact.
    pub id: String,
    /// What the clause promises, in words.
    #[serde(default)]
    pub description: Option<String>,
    /// What is measured.
    pub metric: Metric,
    /// State is kept per agent and per these fields.
    #[serde(default)]
    pub segment_by: Vec<SegmentField>,
    /// How it is judged.
    pub test: Test,
    /// Severity.
    pub severity: Severity,
    /// What a verified breach does.
    pub consequence: Consequence,
    /// Evidence freshness; with `high_risk`, stale evidence sends high-risk actions to review.
    #[serde(default)]
    pub freshness: Option<Freshness>,
    /// Recovery rules.
    #[serde(default)]
    pub recovery: Recovery,
    /// Whether this clause guards high-risk actions.
    #[serde(default)]
    pub high_risk: bool,
    /// Lane while a new model version is re-verified (`watch` or `review`).
    #[serde(default = "watch")]
    pub on_model_change: Lane,
}

/// Which agents a pact covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppliesTo {
    /// Agent id globs, e.g. `fin-*`.
    pub agents: Vec<String>,
    /// Workflows (empty: any).
    #[serde(default)]
    pub workflows: Vec<String>,
}

fn review() -> Lane {
    Lane::Review
}

/// Scope-expansion triggers: an agent acting outside the scope it was verified in is held in
/// a stricter lane until the pact's clauses re-verify on traffic from the new scope.
///
/// The agent's first `warm_up` events establish its initial scope: the workflows it serves,
/// the tools it calls and whether it takes high-risk actions. Afterwards, each trigger fires
/// once per new workflow or tool (and once for high-risk actions), until re-verified there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeRules {
    /// Lane while an agent seen in a workflow it has no verified history in re-verifies.
    #[serde(default)]
    pub on_new_workflow: Option<Lane>,
    /// Lane while an agent that calls a tool it never called before re-verifies.
    #[serde(default)]
    pub on_new_tool: Option<Lane>,
    /// Lane while an agent whose first high-risk action came after its warm-up re-verifies.
    #[serde(default)]
    pub on_first_high_risk: Option<Lane>,
    /// What re-verification in the new scope takes.
    #[serde(default)]
    pub reverify: ScopeReverify,
    /// Events that establish an agent's initial scope, without triggers.
    #[serde(default = "default_warm_up")]
    pub warm_up: u64,
    /// Which actions the lane holds: `all` (default), or only `high_risk` ones. Routers
    /// decide per agent and scope, not per workflow or tool, so a held lane holds the agent.
    #[serde(default = "all_scope")]
    pub holds: Scope,
}

fn default_warm_up() -> u64 {
    100
}

fn all_scope() -> Scope {
    Scope::All
}

/// Re-verification in a new scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeReverify {
    /// Consecutive clean observations from the new scope each observing clause needs.
    pub clean_events: u64,
    /// Minimum time held, from the trigger.
    pub min_dwell: Dur,
}

impl Default for ScopeReverify {
    fn default() -> Self {
        ScopeReverify { clean_events: 200, min_dwell: Dur(0) }
    }
}

/// A pact as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PactDoc {
    /// Pact id; `pact` + `version` is immutable once published.
    pub pact: String,
    /// Version, from 1.
    pub version: u32,
    /// What the pact is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Coverage.
    pub applies_to: AppliesTo,
    /// Lane applied instead of block when the blast-radius cap trips for a covered workflow.
    #[serde(default = "review")]
    pub fail_mode: Lane,
    /// Scope-expansion triggers (none by default).
    #[serde(default)]
    pub scope: Option<ScopeRules>,
    /// The clauses.
    pub clauses: Vec<Clause>,
}

/// A validated pact, ready for the engine.
#[derive(Debug, Clone)]
pub struct Pact {
    /// The document.
    pub doc: PactDoc,
    agents: GlobSet,
    /// The text it was parsed from: a pact activated at run time is kept by its text.
    source: String,
}

impl Pact {
    /// Whether the pact covers this agent in this workflow.
    pub fn covers(&self, agent_id: &str, workflow: &str) -> bool {
        self.agents.is_match(agent_id)
            && (self.doc.applies_to.workflows.is_empty()
                || self.doc.applies_to.workflows.iter().any(|w| w == workflow))
    }

    /// Pact id.
    pub fn id(&self) -> &str {
        &self.doc.pact
    }

    /// Pact version.
    pub fn version(&self) -> u32 {
        self.doc.version
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A fresh detector for a clause.
    pub fn detector(clause: &Clause) -> AnyDetector {
        build_detector(clause).expect("validated at load")
    }
}

fn build_detector(c: &Clause) -> Result<AnyDetector, String> {
    match &c.test {
        Test::Drift(spec) => spec.build(c.metric.kind).map_err(|e| e.to_string()),
        Test::Limit(l) => {
            let n = l.rate.is_some() as u8 + l.quantile.is_some() as u8 + l.zero_tolerance as u8;
            if n != 1 {
                return Err(
                    "a limit test needs exactly one of `rate`, `quantile` or `zero_tolerance: true`".into()
                );
            }
            if let Some(r) = &l.rate {
                if c.metric.kind != MetricKind::Bernoulli {
                    return Err("a `rate` limit needs a bernoulli metric".into());
                }
                return RateBound::new(RateBoundConfig { limit: r.max, exit: r.exit, alpha: l.alpha })
                    .map(AnyDetector::Rate)
                    .map_err(|e| e.to_string());
            }
            if let Some(q) = &l.quantile {
                if c.metric.kind != MetricKind::Real {
                    return Err("a `quantile` limit needs a real metric".into());
                }
                return QuantileBound::new(QuantileBoundConfig {
                    quantile: q.q,
                    limit: q.max,
                    exit: q.exit,
                    alpha: l.alpha,
                })
                .map(|q| AnyDetector::Quantile(Box::new(q)))
                .map_err(|e| e.to_string());
            }
            if c.metric.kind != MetricKind::Bernoulli {
                return Err("`zero_tolerance` needs a bernoulli metric".into());
            }
            Ok(AnyDetector::Zero(ZeroTolerance::new()))
        }
    }
}

/// Finds the 1-based (line, column) of `id: <id>` for a clause, to locate cross-field errors.
fn locate_clause(text: &str, id: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        if let Some(rest) = t.strip_prefix("id:") {
            let v = rest.trim().trim_matches(|c| c == '"' || c == '\'');
            if v == id {
                return (i + 1, line.find("id:").map_or(1, |c| c + 1));
            }
        }
    }
    (1, 1)
}

/// serde reports an error inside a tagged enum (such as `test`) at the start of the
/// enclosing item, because it buffers the item. For an unknown variant or field, point at the
/// line that names it, within that item: `(line, column)`, 1-based.
fn refine_location(text: &str, line: usize, msg: &str) -> Option<(usize, usize)> {
    let start = msg
        .find("unknown variant `")
        .map(|i| i + 17)
        .or_else(|| msg.find("unknown field `").map(|i| i + 15))?;
    let name = &msg[start..start + msg[start..].find('`')?];
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.get(line.checked_sub(1)?)?;
    // The item ends at the next line indented no deeper than its first (the next `- ` item).
    let indent = |l: &str| l.len() - l.trim_start().len();
    let item_indent = indent(first);
    for (i, l) in lines.iter().enumerate().skip(line - 1) {
        if i >= line && !l.trim().is_empty() && indent(l) <= item_indent {
            break;
        }
        let is_token = |at: usize| {
            let before =
                l[..at].chars().next_back().is_none_or(|ch| !ch.is_alphanumeric() && ch != '_' && ch != '-');
            let after = l[at + name.len()..]
                .chars()
                .next()
                .is_none_or(|ch| !ch.is_alphanumeric() && ch != '_' && ch != '-');
            before && after
        };
        if let Some(at) = l.match_indices(name).map(|(at, _)| at).find(|at| is_token(*at)) {
            return Some((i + 1, at + 1));
        }
    }
    None
}

/// Parses and validates a pact from text; `file` names it in errors.
pub fn parse_pact(text: &str, file: &str) -> Result<Pact, PactError> {
    let err = |line: usize, column: usize, message: String| PactError {
        file: file.to_string(),
        line,
        column,
        message,
    };
    let doc: PactDoc = serde_norway::from_str(text).map_err(|e| {
        let (l, c) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        // serde_norway appends " at line L column C"; the location is already in front.
        let msg = e.to_string();
        let msg = msg.rfind(" at line ").map_or(msg.clone(), |i| msg[..i].to_string());
        let (l, c) = refine_location(text, l, &msg).unwrap_or((l, c));
        err(l, c, msg)
    })?;
    let top = |field: &str| text.lines().position(|l| l.starts_with(field)).map_or((1, 1), |i| (i + 1, 1));
    if doc.pact.trim().is_empty() {
        let (l, c) = top("pact:");
        return Err(err(l, c, "`pact` (the pact id) must not be empty".into()));
    }
    if doc.version == 0 {
        let (l, c) = top("version:");
        return Err(err(l, c, "`version` starts at 1".into()));
    }
    if doc.clauses.is_empty() {
        let (l, c) = top("clauses:");
        return Err(err(l, c, "a pact needs at least one clause".into()));
    }
    let mut globs = GlobSetBuilder::new();
    for g in &doc.applies_to.agents {
        let glob = Glob::new(g).map_err(|e| {
            let (l, c) = top("applies_to:");
            err(l, c, format!("invalid agent glob `{g}`: {e}"))
        })?;
        globs.add(glob);
    }
    let agents = globs.build().map_err(|e| err(1, 1, format!("agent globs: {e}")))?;
    if let Some(scope) = &doc.scope {
        let (l, c) = top("scope:");
        let serr = |m: String| err(l, c, format!("scope: {m}"));
        let triggers = [
            ("on_new_workflow", scope.on_new_workflow),
            ("on_new_tool", scope.on_new_tool),
            ("on_first_high_risk", scope.on_first_high_risk),
        ];
        for (name, lane) in triggers {
            if matches!(lane, Some(Lane::Normal | Lane::Block)) {
                return Err(serr(format!(
                    "`{name}` must be `watch`, `degrade` or `review`: a scope change alone is not a breach"
                )));
            }
        }
        if triggers.iter().all(|(_, l)| l.is_none()) {
            return Err(serr(
                "names no trigger (`on_new_workflow`, `on_new_tool` or `on_first_high_risk`)".into(),
            ));
        }
        if scope.reverify.clean_events == 0 {
            return Err(serr("`reverify.clean_events` must be at least 1".into()));
        }
    }
    for (i, c) in doc.clauses.iter().enumerate() {
        let (l, col) = locate_clause(text, &c.id);
        let cerr = |m: String| err(l, col, format!("clause `{}`: {m}", c.id));
        if c.id.trim().is_empty() {
            return Err(cerr("`id` must not be empty".into()));
        }
        if doc.clauses[..i].iter().any(|o| o.id == c.id) {
            return Err(cerr("duplicate clause id".into()));
        }
        build_detector(c).map_err(&cerr)?;
        if matches!(c.test, Test::Drift(_)) && c.segment_by.contains(&SegmentField::ModelVersion) {
            return Err(cerr(
                "drift clauses cannot segment by model.version: the baseline must carry across model versions so that a new model is compared with the old one".into(),
            ));
        }
        if !matches!(c.on_model_change, Lane::Watch | Lane::Review) {
            return Err(cerr("`on_model_change` must be `watch` or `review`".into()));
        }
        let r = &c.recovery;
        if !(r.dwell_multiplier.is_finite() && r.dwell_multiplier >= 1.0) {
            return Err(cerr("`recovery.dwell_multiplier` must be at least 1".into()));
        }
        if r.max_dwell < r.min_dwell {
            return Err(cerr("`recovery.max_dwell` must be at least `recovery.min_dwell`".into()));
        }
        if let Some(f) = &c.freshness {
            if f.min_events == 0 {
                return Err(cerr("`freshness.min_events` must be at least 1".into()));
            }
        }
        if c.high_risk && c.freshness.is_none() {
            return Err(cerr(
                "a `high_risk` clause needs `freshness` (no data never counts as healthy)".into(),
            ));
        }
    }
    Ok(Pact { doc, agents, source: text.to_string() })
}

/// Loads and validates a pact file.
pub fn load_pact(path: &Path) -> Result<Pact, PactError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PactError {
        file: file.clone(),
        line: 1,
        column: 1,
        message: format!("cannot read: {e}"),
    })?;
    parse_pact(&text, &file)
}

/// The JSON Schema of pact files, as published in `schemas/pact.schema.json`.
pub fn pact_json_schema() -> String {
    let schema = schemars::schema_for!(PactDoc);
    serde_json::to_string_pretty(&schema).expect("schema serialises") + "\n"
}
