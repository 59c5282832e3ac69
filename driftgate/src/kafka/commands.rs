//! The pipeline's control plane: the HTTP API and the control topic reach the per-partition
//! tasks only as [`Command`]s on a channel, which the pipeline thread drains between
//! records (as Arroyo's operators drain their `control_rx`). The tasks have one owner, so
//! no caller holds their state while another waits, and a caller that waits gives up after
//! [`PipelineControl::answer_within`] with [`Busy`].

use crate::api::control::{
    AuditChain, Busy, ControlPlane, Durability, Readiness, RecentHistory, SubmitError,
};
use crate::kafka::pipeline::Status;
use crate::obs::events::{AuditWriteFailed, InternalEvent};
use crate::obs::metrics::Metrics;
use driftgate_core::engine::registry::PactVersions;
use driftgate_core::model::history::{Record, RecordKind};
use driftgate_core::model::overrides::OverrideRequest;
use driftgate_core::model::pact_change::PactChange;
use driftgate_core::model::router_view::AgentSnapshot;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the control plane asks of the pipeline thread. Each reply goes back on a channel
/// of its own.
#[derive(Debug)]
pub enum Command {
    /// The agent's state, from the task that holds it.
    Agent {
        /// The agent.
        id: String,
        /// `None` if no task here holds it.
        reply: SyncSender<Option<AgentSnapshot>>,
    },
    /// Hand an override to the task that holds its agent.
    Override {
        /// The request, authenticated and parsed.
        req: OverrideRequest,
        /// Wall clock (µs) at acceptance.
        now: i64,
        /// Accepted (with the promise of a durability answer) or refused.
        reply: SyncSender<Result<Durability, SubmitError>>,
    },
    /// Hand a pact change to every engine here.
    PactChange {
        /// The change, authenticated and parsed.
        change: PactChange,
        /// Accepted (one durability answer per engine) or refused.
        reply: SyncSender<Result<Vec<Durability>, SubmitError>>,
    },
    /// Every pact's versions and their events across the engines here.
    Pacts {
        /// The answer.
        reply: SyncSender<Vec<PactVersions>>,
    },
    /// Recompute the engines' metrics before a scrape.
    RefreshMetrics {
        /// Answered when done.
        reply: SyncSender<()>,
    },
    /// Produce an API audit record (a refused request) to the history topic.
    Audit(Record),
}

/// Commands that may wait in the channel; beyond it, callers are answered [`Busy`] at once.
pub const COMMAND_QUEUE: usize = 1024;

/// The commands' channel: the control plane's end and the pipeline thread's end.
pub fn channel() -> (SyncSender<Command>, Receiver<Command>) {
    sync_channel(COMMAND_QUEUE)
}

/// The pipeline behind the HTTP API and the control topic.
pub struct PipelineControl {
    commands: SyncSender<Command>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    recent: Arc<Mutex<RecentHistory>>,
    audit: AuditChain,
    answer_within: Duration,
}

/// How long a caller waits for the pipeline thread by default: longer than any record's
/// processing, shorter than a rebalance's flush.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

impl PipelineControl {
    /// The control plane over a pipeline draining `commands`.
    pub fn new(
        commands: SyncSender<Command>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
        recent: Arc<Mutex<RecentHistory>>,
        audit: AuditChain,
    ) -> PipelineControl {
        PipelineControl { commands, status, metrics, recent, audit, answer_within: ANSWER_WITHIN }
    }

    /// How long a caller waits for the pipeline thread before it is answered [`Busy`].
    pub fn answer_within(mut self, d: Duration) -> PipelineControl {
        self.answer_within = d;
        self
    }

    /// Sends a command and waits for its reply.
    fn ask<T>(&self, command: impl FnOnce(SyncSender<T>) -> Command) -> Result<T, Busy> {
        let (tx, rx) = sync_channel(1);
        self.commands.try_send(command(tx)).map_err(|e| match e {
            TrySendError::Full(_) => Busy::Full,
            TrySendError::Disconnected(_) => Busy::Stopped,
        })?;
        match rx.recv_timeout(self.answer_within) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(Busy::Late(self.answer_within)),
            // The pipeline dropped the command unanswered: it stopped.
            Err(RecvTimeoutError::Disconnected) => Err(Busy::Stopped),
        }
    }
}

impl ControlPlane for PipelineControl {
    fn readiness(&self) -> Readiness {
        Readiness {
            pacts_loaded: true,
            state_restored: !self.status.restoring.load(Ordering::SeqCst),
            assigned: self.status.assigned.load(Ordering::SeqCst),
            broker_reachable: !self.status.brokers_down.load(Ordering::SeqCst),
            decoder_available: !self.status.decoder_unavailable.load(Ordering::SeqCst),
        }
    }

    fn agent(&self, id: &str) -> Result<Option<AgentSnapshot>, Busy> {
        self.ask(|reply| Command::Agent { id: id.to_string(), reply })
    }

    fn history(&self, id: &str, limit: usize) -> Vec<Record> {
        self.recent.lock().map(|r| r.of(id, limit)).unwrap_or_default()
    }

    fn pacts(&self) -> Vec<PactVersions> {
        self.ask(|reply| Command::Pacts { reply }).unwrap_or_default()
    }

    fn submit_pact_change(&self, change: PactChange, _now: i64) -> Result<Vec<Durability>, SubmitError> {
        self.ask(|reply| Command::PactChange { change, reply })?
    }

    fn submit_override(&self, req: OverrideRequest, now: i64) -> Result<Durability, SubmitError> {
        self.ask(|reply| Command::Override { req, now, reply })?
    }

    fn audit(&self, kind: RecordKind, agent: Option<&str>, at: i64, detail: serde_json::Value) {
        let Some(r) = self.audit.rejection(kind, agent, at, detail) else { return };
        self.metrics.history_records.inc();
        if let Ok(mut recent) = self.recent.lock() {
            recent.push(r.clone());
        }
        if let Err(e) = self.commands.try_send(Command::Audit(r)) {
            let why = match e {
                TrySendError::Full(_) => "the pipeline's command queue is full",
                TrySendError::Disconnected(_) => "the pipeline has stopped",
            };
            AuditWriteFailed { error: &why }.emit(&self.metrics);
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn refresh_metrics(&self) {
        self.metrics.ready.set(self.readiness().ready() as i64);
        // A busy pipeline leaves the engine gauges as the last scrape saw them.
        if let Err(e) = self.ask(|reply| Command::RefreshMetrics { reply }) {
            tracing::debug!(error = %e, "metrics served without refreshing the engines");
        }
    }
}

/// A control plane over a channel the test plays the pipeline thread on.
#[cfg(test)]
pub(crate) fn control(answer_within: Duration) -> (PipelineControl, Receiver<Command>) {
    let (tx, rx) = channel();
    (control_over(tx, answer_within), rx)
}

/// The same over a given command queue.
#[cfg(test)]
fn control_over(commands: SyncSender<Command>, answer_within: Duration) -> PipelineControl {
    PipelineControl::new(
        commands,
        Arc::new(Status::default()),
        Arc::new(Metrics::new()),
        Arc::default(),
        AuditChain::new("api/test".into()),
    )
    .answer_within(answer_within)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_that_does_not_answer_in_time_is_busy_and_the_caller_is_released() {
        let (c, _commands) = control(Duration::from_millis(50));
        let started = std::time::Instant::now();
        assert_eq!(c.agent("a1"), Err(Busy::Late(Duration::from_millis(50))));
        assert!(started.elapsed() >= Duration::from_millis(50));
        let req: OverrideRequest = serde_json::from_value(serde_json::json!({
            "override_id": "o", "agent_id": "a1", "kind": "emergency_kill", "principal": "p",
            "reason": "r", "ticket": "t", "issued_at": 0, "expires_at": 1
        }))
        .unwrap();
        let e = c.submit_override(req, 0).unwrap_err();
        assert_eq!(e.code(), "unavailable", "{e}");
        assert!(e.to_string().contains("did not answer within 50 ms"), "{e}");
    }

    #[test]
    fn a_stopped_pipeline_is_busy_at_once_and_an_answered_command_returns_its_reply() {
        let (c, commands) = control(Duration::from_secs(30));
        let server = std::thread::spawn(move || {
            // Answers one command, then stops (drops its end).
            if let Ok(Command::Agent { id, reply }) = commands.recv() {
                assert_eq!(id, "a1");
                reply.send(None).unwrap();
            }
        });
        assert_eq!(c.agent("a1"), Ok(None));
        server.join().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(c.agent("a1"), Err(Busy::Stopped));
        assert!(started.elapsed() < Duration::from_secs(5), "not the 30 s wait");
        assert_eq!(Busy::Stopped.to_string(), "the engine has stopped; this instance cannot answer");
    }

    #[test]
    fn a_full_command_queue_is_answered_at_once() {
        let (tx, _rx) = sync_channel(1);
        let c = control_over(tx, Duration::from_millis(50));
        assert_eq!(c.agent("a1"), Err(Busy::Late(Duration::from_millis(50))), "the first waits in the queue");
        assert_eq!(c.agent("a1"), Err(Busy::Full));
    }

    #[test]
    fn an_audit_record_is_kept_for_the_api_and_sent_to_the_pipeline_for_the_history_topic() {
        let (c, commands) = control(Duration::from_secs(1));
        c.audit_rejection(Some("a1"), 5, serde_json::json!({"reason": "forged"}));
        match commands.try_recv() {
            Ok(Command::Audit(r)) => assert_eq!((r.agent_id.as_deref(), r.at_micros), (Some("a1"), 5)),
            other => panic!("expected the audit record, got {other:?}"),
        }
        assert_eq!(c.history("a1", 10).len(), 1);
        assert_eq!(c.metrics().history_records.get(), 1);
        drop(commands);
        c.audit_rejection(Some("a1"), 6, serde_json::json!({}));
        let dropped = c.metrics().errors.with_label_values(&["audit", "produce"]).get();
        assert_eq!(dropped, 1, "a record the pipeline can no longer write is counted");
    }
}
