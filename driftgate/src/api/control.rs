//! What the HTTP API asks of a running engine, whatever runs it: the Kafka pipeline
//! ([`crate::kafka::pipeline`]) or the demo (`driftgate demo --listen`, [`DemoControl`]).

use crate::obs::metrics::{EngineScrape, Metrics};
use driftgate_core::engine::registry::PactVersions;
use driftgate_core::engine::{Collected, Engine, Input, Stats};
use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::history::{Chain, Entry, Record, RecordKind};
use driftgate_core::model::overrides::{self, OverrideError, OverrideRequest};
use driftgate_core::model::pact_change::{PactChange, PactChangeError};
use driftgate_core::model::router_view::AgentSnapshot;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;

/// `/readyz`: every part must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Pacts parsed and compiled.
    pub pacts_loaded: bool,
    /// Every assigned partition's state restored.
    pub state_restored: bool,
    /// The consumer has partitions (the demo: its run is complete).
    pub assigned: bool,
    /// A broker answers (librdkafka's view).
    pub broker_reachable: bool,
    /// The decoder can decode: its schema source answered the last lookup.
    pub decoder_available: bool,
}

impl Readiness {
    /// Every part holds (the demo's finished run; test control planes).
    pub fn all() -> Readiness {
        Readiness {
            pacts_loaded: true,
            state_restored: true,
            assigned: true,
            broker_reachable: true,
            decoder_available: true,
        }
    }

    /// All of it.
    pub fn ready(&self) -> bool {
        self.pacts_loaded
            && self.state_restored
            && self.assigned
            && self.broker_reachable
            && self.decoder_available
    }
}

/// Why an override was not taken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubmitError {
    /// No engine here knows the agent.
    #[error(
        "agent `{0}` is unknown to this instance (no telemetry seen, or its partition is assigned elsewhere)"
    )]
    UnknownAgent(String),
    /// The request breaks a rule (missing fields, expiry, lifetime).
    #[error("{0}")]
    Invalid(String),
    /// `expected_seq` does not match the agent's current `seq`.
    #[error("{0}")]
    Conflict(String),
    /// The `override_id` is in force with a different request.
    #[error("override_id `{0}` is already in force with a different request; a retry must repeat the request, a new override needs a new id")]
    DuplicateId(String),
    /// Not ready, or the state could not be made durable in time.
    #[error("{0}")]
    Unavailable(String),
}

impl SubmitError {
    /// Short code for metrics and history.
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::UnknownAgent(_) => "unknown_agent",
            SubmitError::Invalid(_) => "invalid_override",
            SubmitError::Conflict(_) => "seq_conflict",
            SubmitError::DuplicateId(_) => "duplicate_override_id",
            SubmitError::Unavailable(_) => "unavailable",
        }
    }
}

/// Validates an override against the agent's current state, as the engine will.
pub fn prevalidate(
    req: &OverrideRequest,
    current_seq: u64,
    max_ttl_micros: i64,
    now_micros: i64,
) -> Result<(), SubmitError> {
    if let Some(exp) = req.expires_at {
        if exp <= now_micros {
            return Err(SubmitError::Invalid(format!(
                "expired: `expires_at` {} is in the past",
                driftgate_core::timefmt::rfc3339(exp)
            )));
        }
    }
    overrides::validate(req, current_seq, max_ttl_micros).map(|_| ()).map_err(|e| match e {
        OverrideError::StaleSeq { .. } => SubmitError::Conflict(e.to_string()),
        _ => SubmitError::Invalid(e.to_string()),
    })
}

/// What became of an override handed to an engine by [`hand_to_engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Pushed into the engine (its outputs wait in [`Engine::drain`]).
    Pushed,
    /// An override with this `override_id` is already in force: a retry, not applied twice.
    AlreadyInForce,
}

/// Checks an override against the engine holding its agent and pushes it. Expiry is
/// judged in the engine's event time (`now`, wall µs, only before the first event).
pub fn hand_to_engine(engine: &mut Engine, req: OverrideRequest, now: i64) -> Result<Handed, SubmitError> {
    let agent = engine.agent(&req.agent_id).ok_or_else(|| SubmitError::UnknownAgent(req.agent_id.clone()))?;
    let max_ttl = engine.config().max_override_ttl.micros();
    if let Some(first) = agent.overrides.iter().find(|o| o.req.override_id == req.override_id) {
        // A retry meets the rules a first request meets, and asks for the same thing.
        overrides::check_request(&req, max_ttl).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        if !first.req.same_request(&req) {
            return Err(SubmitError::DuplicateId(req.override_id));
        }
        return Ok(Handed::AlreadyInForce);
    }
    prevalidate(&req, agent.seq, max_ttl, engine.watermark().unwrap_or(now))?;
    // The engine would set it aside as late, after an answer that it was accepted.
    if let Some(cutoff) = engine.late_before().filter(|c| req.issued_at < *c) {
        return Err(SubmitError::Invalid(format!(
            "`issued_at` {} is before {}, the partition's watermark less the allowed lateness: the engine has moved past it; leave `issued_at` out to issue the override now",
            driftgate_core::timefmt::rfc3339(req.issued_at),
            driftgate_core::timefmt::rfc3339(cutoff)
        )));
    }
    engine.push(Input::from(req));
    Ok(Handed::Pushed)
}

/// Why an accepted override's state did not become durable here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NotDurable {
    /// Its partition went to another instance first; that instance restores the state the
    /// revoke made durable, which did not include the override.
    #[error(
        "the agent's partition was revoked before the override became durable; retry against its new owner"
    )]
    Revoked,
    /// The engine stopped (shutdown or failure) first.
    #[error(
        "the engine stopped before the override became durable; retrying with the same override_id is safe"
    )]
    Stopped,
    /// Exactly-once: the transaction that held it was aborted, and the engine went back to
    /// the state before it.
    #[error("the transaction holding the override was aborted; retrying with the same override_id is safe")]
    Aborted,
}

/// The answer to "is the accepted override durable?", delivered once by the engine's owner
/// when the snapshot holding it is acknowledged, or when it no longer can be.
#[derive(Debug)]
pub struct Durability(Receiver<Result<(), NotDurable>>);

/// The owner's side of a [`Durability`]: dropping it unanswered reads as
/// [`NotDurable::Stopped`].
#[derive(Debug)]
pub struct DurabilityPromise(SyncSender<Result<(), NotDurable>>);

impl Durability {
    /// A pending answer and the promise that gives it.
    pub fn pending() -> (DurabilityPromise, Durability) {
        let (tx, rx) = sync_channel(1);
        (DurabilityPromise(tx), Durability(rx))
    }

    /// Durable already (the demo applies overrides at once).
    pub fn done() -> Durability {
        let (promise, d) = Durability::pending();
        promise.keep(Ok(()));
        d
    }

    /// The answer, waiting at most `timeout`; `None` if none came in time.
    pub fn wait(&self, timeout: Duration) -> Option<Result<(), NotDurable>> {
        match self.0.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Err(NotDurable::Stopped)),
        }
    }
}

impl DurabilityPromise {
    /// Gives the answer (a caller that stopped waiting is not an error).
    pub fn keep(self, outcome: Result<(), NotDurable>) {
        let _ = self.0.try_send(outcome);
    }
}

/// The engine's owner could not answer: each case says why, for the 503 a caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Busy {
    /// It did not answer in time (restoring or flushing partitions in a rebalance).
    #[error("the engine did not answer within {} ms (restoring or flushing partitions in a rebalance); retry", .0.as_millis())]
    Late(Duration),
    /// Its command queue is full: more requests wait than it serves.
    #[error("the engine's command queue is full; retry")]
    Full,
    /// It has stopped (the process is shutting down or failed).
    #[error("the engine has stopped; this instance cannot answer")]
    Stopped,
}

impl From<Busy> for SubmitError {
    fn from(b: Busy) -> SubmitError {
        SubmitError::Unavailable(b.to_string())
    }
}

/// The engine side of the HTTP API.
pub trait ControlPlane: Send + Sync + 'static {
    /// `/readyz`.
    fn readiness(&self) -> Readiness;
    /// The agent's full state; `None` if no engine here holds it.
    fn agent(&self, id: &str) -> Result<Option<AgentSnapshot>, Busy>;
    /// The agent's recent history records, newest last.
    fn history(&self, id: &str, limit: usize) -> Vec<Record>;
    /// Every pact's active and shadow versions, who put them there, and their events.
    fn pacts(&self) -> Vec<PactVersions>;
    /// Validates a pact change against the versions in force and hands it to every engine
    /// here; one durability answer per engine.
    fn submit_pact_change(&self, change: PactChange, now_micros: i64)
        -> Result<Vec<Durability>, SubmitError>;
    /// Validates an override and hands it to the engine holding the agent; the answer says
    /// when the state holding it is durable.
    fn submit_override(&self, req: OverrideRequest, now_micros: i64) -> Result<Durability, SubmitError>;
    /// Records a refused request (authentication or validation) in the API's audit chain.
    fn audit(&self, kind: RecordKind, agent: Option<&str>, at_micros: i64, detail: serde_json::Value);
    /// Records a refused override.
    fn audit_rejection(&self, agent: Option<&str>, at_micros: i64, detail: serde_json::Value) {
        self.audit(RecordKind::OverrideRejected, agent, at_micros, detail)
    }
    /// The metrics, refreshed.
    fn metrics(&self) -> &Metrics;
    /// Recomputes state gauges before a scrape.
    fn refresh_metrics(&self);
}

/// The most recent history records, for `GET /v1/agents/{id}/history`. Bounded: the
/// history topic is the durable record; this serves recent questions quickly.
#[derive(Debug, Default)]
pub struct RecentHistory {
    records: VecDeque<Record>,
}

/// Records kept in memory.
pub const RECENT_HISTORY: usize = 50_000;

impl RecentHistory {
    /// Keeps a record.
    pub fn push(&mut self, r: Record) {
        if self.records.len() == RECENT_HISTORY {
            self.records.pop_front();
        }
        self.records.push_back(r);
    }

    /// Every record kept, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
    }

    /// The agent's newest `limit` records, oldest first.
    pub fn of(&self, agent: &str, limit: usize) -> Vec<Record> {
        let mut v: Vec<Record> = self
            .records
            .iter()
            .rev()
            .filter(|r| r.agent_id.as_deref() == Some(agent))
            .take(limit)
            .cloned()
            .collect();
        v.reverse();
        v
    }
}

/// The API's own hash chain: refused requests never reach an engine, and an engine's
/// chain must stay a pure function of its input (so that replays re-derive it exactly).
#[derive(Debug)]
pub struct AuditChain {
    /// Chain name (history header `driftgate.chain`).
    pub name: String,
    chain: Mutex<Chain>,
}

impl AuditChain {
    /// A new chain called `name`.
    pub fn new(name: String) -> AuditChain {
        AuditChain { name, chain: Mutex::new(Chain::default()) }
    }

    /// Chains a record of a refused request.
    pub fn rejection(
        &self,
        kind: RecordKind,
        agent: Option<&str>,
        at_micros: i64,
        detail: serde_json::Value,
    ) -> Option<Record> {
        let mut c = self.chain.lock().ok()?;
        Some(c.append(Entry {
            kind,
            at_micros,
            agent_id: agent.map(str::to_string),
            pact_id: None,
            pact_version: None,
            clause_id: None,
            detail,
        }))
    }
}

/// Checks a pact change against an engine's versions in force.
pub fn check_change(engine: &Engine, change: &PactChange) -> Result<(), SubmitError> {
    engine.check_change(change).map_err(|e| match e {
        PactChangeError::Conflict(m) => SubmitError::Conflict(m),
        other => SubmitError::Invalid(other.to_string()),
    })
}

/// The demo's engine behind the API: the day has run; overrides apply at once.
pub struct DemoControl {
    state: Mutex<DemoState>,
    recent: Mutex<RecentHistory>,
    audit: AuditChain,
    metrics: Metrics,
}

struct DemoState {
    engine: Engine,
    last_stats: Stats,
    scrape: EngineScrape,
}

impl DemoControl {
    /// Serves a finished demo run.
    pub fn new(run: crate::cli::demo::DemoRun) -> DemoControl {
        let metrics = Metrics::new();
        metrics.records_consumed.inc_by(run.telemetry);
        metrics.records_decoded.inc_by(run.telemetry);
        metrics.ready.set(1);
        let mut last_stats = Stats::default();
        metrics.add_stats(run.engine.stats(), &mut last_stats);
        let c = DemoControl {
            state: Mutex::new(DemoState { engine: run.engine, last_stats, scrape: EngineScrape::default() }),
            recent: Mutex::new(RecentHistory::default()),
            audit: AuditChain::new("api/demo".into()),
            metrics,
        };
        c.publish(run.events, run.history);
        c
    }

    /// The API's audit records (refused requests), oldest first.
    pub fn audit_records(&self) -> Vec<Record> {
        self.recent
            .lock()
            .map(|r| {
                r.all()
                    .filter(|r| matches!(r.kind, RecordKind::OverrideRejected | RecordKind::PactRefused))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Counts enforcement events and keeps history records, as the pipeline's emitter does.
    fn publish(&self, events: Vec<EnforcementEvent>, history: Vec<Record>) {
        for e in &events {
            self.metrics.enforcement(e, None, 0);
        }
        self.metrics.history_records.inc_by(history.len() as u64);
        if let Ok(mut recent) = self.recent.lock() {
            for r in history {
                recent.push(r);
            }
        }
    }
}

impl ControlPlane for DemoControl {
    fn readiness(&self) -> Readiness {
        Readiness::all()
    }

    fn agent(&self, id: &str) -> Result<Option<AgentSnapshot>, Busy> {
        Ok(self.state.lock().ok().and_then(|s| AgentSnapshot::of(&s.engine, id)))
    }

    fn history(&self, id: &str, limit: usize) -> Vec<Record> {
        self.recent.lock().map(|r| r.of(id, limit)).unwrap_or_default()
    }

    fn pacts(&self) -> Vec<PactVersions> {
        self.state.lock().map(|s| s.engine.pact_versions()).unwrap_or_default()
    }

    fn submit_pact_change(&self, mut change: PactChange, _now: i64) -> Result<Vec<Durability>, SubmitError> {
        let mut state = self.state.lock().map_err(|_| SubmitError::Unavailable("engine poisoned".into()))?;
        let engine = &mut state.engine;
        check_change(engine, &change)?;
        // The demo's clock is its simulated day: the change takes effect at its end.
        change.issued_at = engine.watermark().unwrap_or(change.issued_at);
        engine.push(Input::from(change));
        engine.flush();
        let mut out = Collected::default();
        out.take(engine.drain());
        drop(state);
        self.publish(out.events, out.history);
        Ok(vec![Durability::done()])
    }

    fn submit_override(&self, mut req: OverrideRequest, _now: i64) -> Result<Durability, SubmitError> {
        let mut state = self.state.lock().map_err(|_| SubmitError::Unavailable("engine poisoned".into()))?;
        let engine = &mut state.engine;
        // The demo's clock is its simulated day: the override is moved to the day's end,
        // keeping its lifetime (a jump to today would fire months of timers).
        let at = engine.watermark().unwrap_or(req.issued_at);
        let shift = at - req.issued_at;
        req.issued_at = at;
        req.expires_at = req.expires_at.map(|e| e.saturating_add(shift));
        if hand_to_engine(engine, req, at)? == Handed::Pushed {
            engine.flush();
            let mut out = Collected::default();
            out.take(engine.drain());
            drop(state);
            self.publish(out.events, out.history);
        }
        Ok(Durability::done())
    }

    fn audit(&self, kind: RecordKind, agent: Option<&str>, at: i64, detail: serde_json::Value) {
        if let Some(r) = self.audit.rejection(kind, agent, at, detail) {
            self.publish(Vec::new(), vec![r]);
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn refresh_metrics(&self) {
        let Ok(mut state) = self.state.lock() else { return };
        let DemoState { engine, last_stats, scrape } = &mut *state;
        scrape.refresh(&self.metrics, std::iter::once((&*engine, last_stats)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftgate_core::model::lane::{Lane, Scope};
    use driftgate_core::model::overrides::OverrideKind;

    #[test]
    fn prevalidation_refuses_a_past_expiry_and_a_stale_seq_with_their_codes() {
        let req = OverrideRequest {
            override_id: "o".into(),
            agent_id: "a".into(),
            scope: Scope::All,
            kind: OverrideKind::EmergencyKill,
            lane: None,
            clause_id: None,
            principal: "p".into(),
            reason: "r".into(),
            ticket: "t".into(),
            issued_at: 1_000,
            expires_at: Some(2_000),
            expected_seq: Some(3),
        };
        let e = prevalidate(&req, 3, 10_000, 2_000).unwrap_err();
        assert_eq!((e.code(), e.to_string().contains("is in the past")), ("invalid_override", true), "{e}");
        let e = prevalidate(&req, 4, 10_000, 1_500).unwrap_err();
        assert_eq!(e, SubmitError::Conflict("stale `expected_seq` 3: the agent's seq is 4".into()));
        assert_eq!(e.code(), "seq_conflict");
        assert_eq!(prevalidate(&req, 3, 10_000, 1_999), Ok(()));
    }

    #[test]
    fn a_retry_is_answered_once_and_a_different_request_under_the_same_id_is_refused() {
        let c = DemoControl::new(crate::cli::demo::run());
        let agent = || c.agent("fin-01").unwrap().unwrap();
        let seq = agent().seq;
        let req = |ticket: &str, lane: Lane| OverrideRequest {
            override_id: "o-1".into(),
            agent_id: "fin-01".into(),
            scope: Scope::All,
            kind: OverrideKind::Tighten,
            lane: Some(lane),
            clause_id: None,
            principal: "p".into(),
            reason: "r".into(),
            ticket: ticket.into(),
            issued_at: 1_000,
            expires_at: Some(60_000_000),
            expected_seq: Some(seq),
        };
        c.submit_override(req("T-1", Lane::Watch), 1_000).unwrap();
        let applied = agent();
        assert_eq!((applied.lane, applied.overrides.len()), (Lane::Watch, 1));
        // The same request again, its `expected_seq` now stale: answered, not applied twice.
        assert!(c.submit_override(req("T-1", Lane::Watch), 2_000).is_ok());
        assert_eq!((agent().seq, agent().overrides.len()), (applied.seq, 1));
        // Another request under the same id, and a retry that breaks a rule, are refused.
        let e = c.submit_override(req("T-1", Lane::Review), 2_000).unwrap_err();
        assert_eq!(e, SubmitError::DuplicateId("o-1".into()));
        assert_eq!(e.code(), "duplicate_override_id");
        let e = c.submit_override(req(" ", Lane::Watch), 2_000).unwrap_err();
        assert_eq!(e, SubmitError::Invalid("`ticket` is required".into()));
        assert_eq!(agent().lane, Lane::Watch);
    }
}
