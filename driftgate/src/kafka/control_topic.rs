//! Overrides and pact changes from a Kafka control topic (`kafka.topics.control`): the
//! record value is the same JSON as `POST /v1/overrides` or `POST /v1/pacts` (a pact change
//! names its `mode`; promote and rollback name `pact_id` too), authenticated the same way,
//! by headers
//! `driftgate.timestamp` + `driftgate.signature` (HMAC) or `authorization` (bearer token).
//!
//! Every instance reads the whole topic in a group of its own and applies the overrides of
//! the agents it holds; the others are not its to judge. An override is applied once (by
//! `override_id`), and the record's offset is committed only after the state holding it
//! is durable, so a crash re-reads it.

use crate::api::auth::{Credentials, Presented};
use crate::api::control::{ControlPlane, Durability, NotDurable};
use crate::api::ingest::{ingest, Channel};
use crate::api::pacts::ingest_pact;
use crate::kafka::pipeline::Status;
use crate::obs::events::{self, InternalEvent};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{info, warn};

/// Why the control-topic reader could not start.
#[derive(Debug, Error)]
pub enum ControlTopicError {
    /// The consumer or producer could not be created.
    #[error("cannot create the control-topic client: {0}")]
    Client(#[source] KafkaError),
    /// The subscription was refused.
    #[error("cannot subscribe to the control topic `{topic}`: {source}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// Cause.
        source: KafkaError,
    },
    /// The thread could not be started.
    #[error("cannot start the control-topic thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Starts the control-topic reader on a thread of its own.
pub fn spawn(
    client: ClientConfig,
    group: String,
    topic: String,
    control: Arc<dyn ControlPlane>,
    creds: Credentials,
    status: Arc<Status>,
) -> Result<std::thread::JoinHandle<()>, ControlTopicError> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(ControlTopicError::Client)?;
    consumer
        .subscribe(&[&topic])
        .map_err(|source| ControlTopicError::Subscribe { topic: topic.clone(), source })?;
    let producer: BaseProducer = client.create().map_err(ControlTopicError::Client)?;
    info!(%topic, %group, "reading overrides from the control topic");
    std::thread::Builder::new()
        .name("control-topic".into())
        .spawn(move || {
            while !status.stop.load(Ordering::SeqCst) {
                let Some(r) = consumer.poll(Duration::from_millis(200)) else { continue };
                let m = match r {
                    Ok(m) => m,
                    Err(e) => {
                        events::ControlTopicError { op: "poll", error: &e }.emit(control.metrics());
                        continue;
                    }
                };
                // Not before the engines hold their partitions: the agents must be found.
                while !(control.readiness().ready() || status.stop.load(Ordering::SeqCst)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                        .and_then(|v| std::str::from_utf8(v).ok())
                };
                let presented = Presented {
                    authorization: header("authorization"),
                    signature: header("driftgate.signature"),
                    timestamp: header("driftgate.timestamp"),
                };
                let payload = m.payload().unwrap_or_default();
                if apply(&*control, &creds, &presented, payload, &status) == Applied::Revoked {
                    // Offered again to every instance; the agent's new owner takes it, and a
                    // copy it already took is answered as a retry.
                    let mut again = BaseRecord::<[u8], [u8]>::to(&topic).payload(payload);
                    if let Some(k) = m.key() {
                        again = again.key(k);
                    }
                    if let Some(h) = m.headers() {
                        again = again.headers(h.detach());
                    }
                    let sent = producer
                        .send(again)
                        .map_err(|(e, _)| e)
                        .and_then(|()| producer.flush(Duration::from_secs(10)));
                    match sent {
                        Ok(()) => {
                            info!(%topic, offset = m.offset(), "control record offered again after a revoke")
                        }
                        Err(e) => {
                            events::ControlTopicError { op: "requeue", error: &e }.emit(control.metrics())
                        }
                    }
                }
                if let Err(e) = consumer.commit_message(&m, CommitMode::Sync) {
                    events::ControlTopicError { op: "commit", error: &e }.emit(control.metrics());
                }
            }
        })
        .map_err(ControlTopicError::Thread)
}

/// What became of one control record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Refused, or for an agent held elsewhere (`ingest` logged and counted it).
    NotTaken,
    /// Taken, and the state holding it is durable.
    Durable,
    /// Taken, but its partition was revoked first: the new owner read the record while the
    /// agent was not its own, so the record must be offered again.
    Revoked,
    /// Taken; no answer within the wait, or the engine stopped.
    Unconfirmed,
}

/// Whether a control record is a pact change (it names a `mode`) rather than an override.
fn is_pact_change(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).ok().is_some_and(|v| v.get("mode").is_some())
}

/// Checks and applies one pact change from the control topic to every engine here, waiting
/// until each holds it durably. Every instance reads the whole topic, so each applies it to
/// the partitions it holds; a partition that moves meanwhile catches up at its restore.
fn apply_pact(
    control: &dyn ControlPlane,
    creds: &Credentials,
    presented: &Presented<'_>,
    body: &[u8],
    status: &Status,
) -> Applied {
    let now = crate::clock::wall_micros();
    let Ok(accepted) = ingest_pact(control, creds, Channel::Control, presented, body, None, now) else {
        return Applied::NotTaken;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for d in &accepted.durability {
        match wait_durable(d, deadline, status) {
            // A revoked partition's new owner catches up with the change at its restore.
            Some(Ok(())) | Some(Err(NotDurable::Revoked)) => {}
            Some(Err(e)) => {
                warn!(change_id = %accepted.change.change_id, error = %e, "control topic: pact change not durable");
                return Applied::Unconfirmed;
            }
            None => return Applied::Unconfirmed,
        }
    }
    Applied::Durable
}

/// The durability answer, waiting until `deadline` at most and no longer than the run;
/// `None` if none came.
fn wait_durable(d: &Durability, deadline: Instant, status: &Status) -> Option<Result<(), NotDurable>> {
    while Instant::now() < deadline && !status.stop.load(Ordering::SeqCst) {
        if let Some(answer) = d.wait(Duration::from_millis(200)) {
            return Some(answer);
        }
    }
    None
}

/// Checks and applies one control record, waiting until it is durable.
pub fn apply(
    control: &dyn ControlPlane,
    creds: &Credentials,
    presented: &Presented<'_>,
    body: &[u8],
    status: &Status,
) -> Applied {
    if is_pact_change(body) {
        return apply_pact(control, creds, presented, body, status);
    }
    // Refusals are logged, counted and recorded by `ingest`.
    let Ok(accepted) = ingest(control, creds, Channel::Control, presented, body, crate::clock::wall_micros())
    else {
        return Applied::NotTaken;
    };
    // The offset is committed after this returns: wait for the state holding the override
    // (bounded, and no longer than the run).
    let deadline = Instant::now() + Duration::from_secs(60);
    match wait_durable(&accepted.durability, deadline, status) {
        Some(Ok(())) => Applied::Durable,
        Some(Err(e)) => {
            warn!(agent = %accepted.agent_id, override_id = %accepted.override_id, error = %e, "control topic: override not durable");
            match e {
                // Not in the state any more: offered again, like a revoke.
                NotDurable::Revoked | NotDurable::Aborted => Applied::Revoked,
                NotDurable::Stopped => Applied::Unconfirmed,
            }
        }
        None => Applied::Unconfirmed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::{Busy, Readiness, SubmitError};
    use crate::obs::metrics::Metrics;
    use driftgate_core::engine::registry::PactVersions;
    use driftgate_core::model::history::Record;
    use driftgate_core::model::history::RecordKind;
    use driftgate_core::model::overrides::OverrideRequest;
    use driftgate_core::model::pact_change::PactChange;
    use driftgate_core::model::router_view::AgentSnapshot;

    /// Takes every override and answers its durability with `outcome`.
    struct Answers {
        outcome: Result<(), NotDurable>,
        metrics: Metrics,
    }

    impl ControlPlane for Answers {
        fn readiness(&self) -> Readiness {
            Readiness::all()
        }
        fn agent(&self, _id: &str) -> Result<Option<AgentSnapshot>, Busy> {
            Ok(None)
        }
        fn history(&self, _id: &str, _limit: usize) -> Vec<Record> {
            Vec::new()
        }
        fn pacts(&self) -> Vec<PactVersions> {
            Vec::new()
        }
        fn submit_pact_change(&self, _c: PactChange, _now: i64) -> Result<Vec<Durability>, SubmitError> {
            Err(SubmitError::Unavailable("not in this test".into()))
        }
        fn submit_override(&self, _req: OverrideRequest, _now: i64) -> Result<Durability, SubmitError> {
            let (promise, durability) = Durability::pending();
            promise.keep(self.outcome);
            Ok(durability)
        }
        fn audit(&self, _kind: RecordKind, _agent: Option<&str>, _at: i64, _detail: serde_json::Value) {}
        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
        fn refresh_metrics(&self) {}
    }

    #[test]
    fn a_record_whose_partition_was_revoked_before_it_was_durable_is_to_be_offered_again() {
        let creds = Credentials::new(Some("tok"), None, 300);
        let presented = Presented { authorization: Some("Bearer tok"), ..Default::default() };
        let body = serde_json::json!({"override_id": "o", "agent_id": "a1", "kind": "emergency_kill",
            "principal": "p", "reason": "r", "ticket": "t", "expected_seq": 0,
            "expires_at": crate::clock::wall_micros() + 60_000_000});
        let body = serde_json::to_vec(&body).unwrap();
        let status = Status::default();
        let outcome = |outcome| {
            let control = Answers { outcome, metrics: Metrics::new() };
            apply(&control, &creds, &presented, &body, &status)
        };
        assert_eq!(outcome(Ok(())), Applied::Durable);
        assert_eq!(outcome(Err(NotDurable::Revoked)), Applied::Revoked);
        assert_eq!(outcome(Err(NotDurable::Stopped)), Applied::Unconfirmed);
        assert_eq!(
            outcome(Err(NotDurable::Aborted)),
            Applied::Revoked,
            "an aborted override is offered again"
        );
        let refused = Presented { authorization: Some("Bearer nope"), ..Default::default() };
        let control = Answers { outcome: Ok(()), metrics: Metrics::new() };
        assert_eq!(apply(&control, &creds, &refused, &body, &status), Applied::NotTaken);
    }
}
