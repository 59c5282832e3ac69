//! The producer side, in one place: every output record goes through [`Sink::send`], which
//! numbers it per source partition and tracks its acknowledgement, so the pipeline commits
//! an input offset only after everything derived from it is on the broker.
//!
//! The idempotent producer is on (no duplicates or reordering from retries). Kafka
//! transactions are not used: an exactly-once mode would replace this module.

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// A source partition: outputs are numbered and acknowledged per source partition.
pub type SourceKey = (String, i32);

/// Which output a delivery belongs to.
#[derive(Debug)]
pub struct Token {
    source: SourceKey,
    no: u64,
}

/// Acknowledgement bookkeeping, shared with the delivery callback.
#[derive(Debug, Default)]
pub struct Acks {
    /// Output numbers produced but not yet acknowledged, per source partition.
    unacked: HashMap<SourceKey, BTreeSet<u64>>,
    /// Next output number per source partition.
    next: HashMap<SourceKey, u64>,
    /// Deliveries that failed for good (after the producer's own retries).
    failures: Vec<String>,
}

impl Acks {
    /// The smallest unacknowledged output number of `source` (`u64::MAX` if none).
    pub fn min_unacked(&self, source: &SourceKey) -> u64 {
        self.unacked.get(source).and_then(|s| s.first().copied()).unwrap_or(u64::MAX)
    }
    /// Deliveries that failed for good, so far.
    pub fn failed(&self) -> usize {
        self.failures.len()
    }
    /// The number the next output of `source` will get.
    pub fn next_no(&self, source: &SourceKey) -> u64 {
        self.next.get(source).copied().unwrap_or(0)
    }
    /// Forgets a source partition (after it was revoked).
    pub fn forget(&mut self, source: &SourceKey) {
        self.unacked.remove(source);
        self.next.remove(source);
    }
}

/// Delivery callbacks land here.
pub struct SinkContext {
    acks: Arc<Mutex<Acks>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Token>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<Token>) {
        let Ok(mut acks) = self.acks.lock() else { return };
        match result {
            Ok(_) => {
                if let Some(s) = acks.unacked.get_mut(&token.source) {
                    s.remove(&token.no);
                }
            }
            // Left unacknowledged on purpose: the offset is never committed past it.
            Err((e, _)) => {
                acks.failures.push(format!("delivery to {}:{} failed: {e}", token.source.0, token.source.1))
            }
        }
    }
}

/// Producer errors.
#[derive(Debug, Error)]
pub enum SinkError {
    /// The producer could not be created.
    #[error("cannot create the producer: {0}")]
    Create(KafkaError),
    /// A record could not be enqueued.
    #[error("cannot produce to {topic}: {error}")]
    Produce {
        /// Topic.
        topic: String,
        /// Cause.
        error: KafkaError,
    },
    /// A delivery failed for good.
    #[error("{0}")]
    Delivery(String),
    /// Flushing timed out.
    #[error("flush did not complete: {0}")]
    Flush(KafkaError),
}

/// One output record.
pub struct OutRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Key.
    pub key: &'a [u8],
    /// Value (`None` for a tombstone).
    pub payload: Option<&'a [u8]>,
    /// Headers.
    pub headers: Option<OwnedHeaders>,
    /// Explicit partition (e.g. a history chain's), else by key.
    pub partition: Option<i32>,
}

/// Where outputs go. Every record is numbered per source partition and acknowledged
/// later; the durability protocol (snapshot, then close, then commit: see the pipeline's
/// `Tasks`) orders its steps by these numbers alone, so it runs against [`Sink`] in
/// production and against a recording fake in unit tests.
pub trait OutputSink {
    /// Enqueues a record derived from `source`; returns its output number.
    fn send(&self, source: &SourceKey, rec: OutRecord<'_>) -> Result<u64, SinkError>;
    /// The number the next record of `source` will get.
    fn next_no(&self, source: &SourceKey) -> u64;
    /// The smallest unacknowledged number of `source` (`u64::MAX` if none).
    fn min_unacked(&self, source: &SourceKey) -> u64;
    /// Waits up to `timeout` for every record to be acknowledged.
    fn flush(&self, timeout: Duration) -> Result<(), SinkError>;
}

impl OutputSink for Sink {
    fn send(&self, source: &SourceKey, rec: OutRecord<'_>) -> Result<u64, SinkError> {
        Sink::send(self, source, rec)
    }
    // A poisoned lock reads as "nothing acknowledged, nothing numbered": no step is taken
    // on bookkeeping that cannot be read.
    fn next_no(&self, source: &SourceKey) -> u64 {
        self.acks.lock().map_or(u64::MAX, |a| a.next_no(source))
    }
    fn min_unacked(&self, source: &SourceKey) -> u64 {
        self.acks.lock().map_or(0, |a| a.min_unacked(source))
    }
    fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        Sink::flush(self, timeout)
    }
}

/// The producer with acknowledgement tracking.
pub struct Sink {
    producer: BaseProducer<SinkContext>,
    acks: Arc<Mutex<Acks>>,
}

impl Sink {
    /// An idempotent producer with `base` settings (brokers, security) plus ours.
    pub fn new(base: &ClientConfig) -> Result<Sink, SinkError> {
        let acks = Arc::new(Mutex::new(Acks::default()));
        let mut cfg = base.clone();
        cfg.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "2");
        let producer =
            cfg.create_with_context(SinkContext { acks: acks.clone() }).map_err(SinkError::Create)?;
        Ok(Sink { producer, acks })
    }

    /// The acknowledgement bookkeeping.
    pub fn acks(&self) -> &Arc<Mutex<Acks>> {
        &self.acks
    }

    /// Enqueues a record derived from `source`; returns its output number.
    pub fn send(&self, source: &SourceKey, rec: OutRecord<'_>) -> Result<u64, SinkError> {
        let no = {
            let mut acks = self.acks.lock().map_err(|_| SinkError::Delivery("ack state poisoned".into()))?;
            let next = acks.next.entry(source.clone()).or_insert(0);
            let no = *next;
            *next += 1;
            acks.unacked.entry(source.clone()).or_default().insert(no);
            no
        };
        let mut record =
            BaseRecord::with_opaque_to(rec.topic, Box::new(Token { source: source.clone(), no }))
                .key(rec.key);
        if let Some(p) = rec.payload {
            record = record.payload(p);
        }
        if let Some(h) = rec.headers {
            record = record.headers(h);
        }
        if let Some(p) = rec.partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(no),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Back-pressure: serve deliveries, then retry.
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(SinkError::Produce { topic: rec.topic.to_string(), error }),
            }
        }
    }

    /// Serves delivery callbacks; a failed delivery is an error (the run must stop without
    /// committing past it).
    pub fn poll(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer.poll(timeout);
        self.check()
    }

    /// Waits for every enqueued record to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer.flush(timeout).map_err(SinkError::Flush)?;
        self.check()
    }

    fn check(&self) -> Result<(), SinkError> {
        let acks = self.acks.lock().map_err(|_| SinkError::Delivery("ack state poisoned".into()))?;
        match acks.failures.first() {
            Some(f) => Err(SinkError::Delivery(f.clone())),
            None => Ok(()),
        }
    }
}
