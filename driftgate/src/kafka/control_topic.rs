//! Overrides from a Kafka control topic (`kafka.topics.control`): the record value is the
//! same JSON as `POST /v1/overrides`, authenticated the same way, by headers
//! `driftgate.timestamp` + `driftgate.signature` (HMAC) or `authorization` (bearer token).
//!
//! Every instance reads the whole topic in a group of its own and applies the overrides of
//! the agents it holds; the others are not its to judge. An override is applied once (by
//! `override_id`), and the record's offset is committed only after the state holding it
//! is durable, so a crash re-reads it.

use crate::api::auth::{Credentials, Presented};
use crate::api::control::ControlPlane;
use crate::api::ingest::{ingest, Channel};
use crate::kafka::pipeline::Status;
use crate::obs::events::{self, InternalEvent};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{info, warn};

/// Why the control-topic reader could not start.
#[derive(Debug, Error)]
pub enum ControlTopicError {
    /// The consumer could not be created.
    #[error("cannot create the control-topic consumer: {0}")]
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
                apply(&*control, &creds, &presented, m.payload().unwrap_or_default(), &status);
                if let Err(e) = consumer.commit_message(&m, CommitMode::Sync) {
                    events::ControlTopicError { op: "commit", error: &e }.emit(control.metrics());
                }
            }
        })
        .map_err(ControlTopicError::Thread)
}

/// Checks and applies one control record, waiting until it is durable.
pub fn apply(
    control: &dyn ControlPlane,
    creds: &Credentials,
    presented: &Presented<'_>,
    body: &[u8],
    status: &Status,
) {
    // Refusals are logged, counted and recorded by `ingest`.
    let Ok(accepted) = ingest(control, creds, Channel::Control, presented, body, crate::clock::wall_micros())
    else {
        return;
    };
    // The offset is committed after this returns: wait for the state holding the override
    // (bounded, and no longer than the run).
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !status.stop.load(Ordering::SeqCst) {
        match accepted.durability.wait(Duration::from_millis(200)) {
            None => continue,
            Some(Ok(())) => return,
            Some(Err(e)) => {
                warn!(agent = %accepted.agent_id, override_id = %accepted.override_id, error = %e, "control topic: override not durable");
                return;
            }
        }
    }
}
