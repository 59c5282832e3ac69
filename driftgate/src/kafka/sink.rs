//! The producer side, in one place: every output record goes through [`Sink::send`], which
//! numbers it per source partition and tracks its acknowledgement, so the pipeline commits
//! an input offset only after everything derived from it is on the broker.
//!
//! The idempotent producer is on (no duplicates or reordering from retries). With
//! `kafka.delivery = "exactly_once"` it is transactional: every send joins the open
//! transaction (one is begun on the first send after a commit), and
//! [`Sink::commit_transaction`] commits it together with the input offsets.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The [`Acks::generation`] it was sent in.
    generation: u64,
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
    /// Moves on at each aborted transaction: the purged records' failed deliveries are the
    /// abort's doing, not failures to report.
    generation: u64,
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
        if token.generation != acks.generation {
            return;
        }
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
    /// The transactional producer could not start or begin a transaction.
    #[error("transactional producer `{id}`: {error}")]
    Transactions {
        /// `transactional.id`.
        id: String,
        /// Cause.
        error: TxnError,
    },
}

/// A transaction that did not commit, by what the caller must do about it.
#[derive(Debug, Error)]
pub enum TxnError {
    /// Abort it: nothing of it becomes visible, and the state must go back to the last
    /// committed snapshot (e.g. the group moved on, or a record failed for good).
    #[error("transaction aborted: {0}")]
    Abortable(#[source] KafkaError),
    /// The producer is unusable: fenced by a newer instance with the same
    /// `transactional.id`, or a fatal error. This instance must stop.
    #[error("the transactional producer is fenced or failed: {0}")]
    Fatal(#[source] KafkaError),
    /// The consumer has no group metadata to commit offsets with (not in a group): abort.
    #[error("the consumer is not in its group: offsets cannot be committed")]
    NotInGroup,
}

impl TxnError {
    /// Whether this instance must stop (else: abort and carry on from the last commit).
    pub fn is_fatal(&self) -> bool {
        matches!(self, TxnError::Fatal(_))
    }

    /// Sorts a producer error: fatal if librdkafka says so (fencing is), else abortable.
    pub fn of(e: KafkaError) -> TxnError {
        let fatal = match &e {
            KafkaError::Transaction(t) => t.is_fatal(),
            _ => matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::ProducerFenced)
            ),
        };
        if fatal {
            TxnError::Fatal(e)
        } else {
            TxnError::Abortable(e)
        }
    }

    /// Whether the same call may simply be tried again.
    fn retriable(e: &KafkaError) -> bool {
        matches!(e, KafkaError::Transaction(t) if t.is_retriable() && !t.is_fatal() && !t.txn_requires_abort())
    }
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
    /// `transactional.id` with exactly-once delivery.
    transactional: Option<String>,
    /// A transaction is open (begun, not yet committed or aborted).
    open: AtomicBool,
    /// How long a transactional call may block.
    txn_timeout: Duration,
}

/// How long a transaction may stay open before the coordinator aborts it, unless
/// `transaction.timeout.ms` is set. It also bounds how long a restore waits behind a
/// crashed instance's open transaction when its `transactional.id` is not reused.
const TRANSACTION_TIMEOUT_MS: &str = "20000";

impl Sink {
    /// An idempotent producer with `base` settings (brokers, security) plus ours;
    /// transactional with `transactional_id` (call [`Sink::init_transactions`] next).
    pub fn new(base: &ClientConfig, transactional_id: Option<&str>) -> Result<Sink, SinkError> {
        let acks = Arc::new(Mutex::new(Acks::default()));
        let mut cfg = base.clone();
        cfg.set("enable.idempotence", "true").set("acks", "all");
        if cfg.get("linger.ms").is_none() {
            cfg.set("linger.ms", "2");
        }
        if let Some(id) = transactional_id {
            cfg.set("transactional.id", id);
            if cfg.get("transaction.timeout.ms").is_none() {
                cfg.set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS);
            }
        }
        let producer =
            cfg.create_with_context(SinkContext { acks: acks.clone() }).map_err(SinkError::Create)?;
        Ok(Sink {
            producer,
            acks,
            transactional: transactional_id.map(str::to_string),
            open: AtomicBool::new(false),
            txn_timeout: Duration::from_secs(30),
        })
    }

    /// Exactly-once: registers the `transactional.id` with its coordinator, which fences
    /// any earlier producer with the same id and aborts its open transaction (a crashed
    /// predecessor's outputs never become visible).
    pub fn init_transactions(&self, timeout: Duration) -> Result<(), SinkError> {
        let Some(id) = &self.transactional else { return Ok(()) };
        self.producer
            .init_transactions(timeout)
            .map_err(|e| SinkError::Transactions { id: id.clone(), error: TxnError::of(e) })
    }

    /// Whether outputs are written in transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional.is_some()
    }

    /// Whether a transaction is open (records written since the last commit).
    pub fn in_transaction(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// Exactly-once: commits the open transaction with `offsets` (the next offset to read
    /// per input partition) in the consumer group `group`. With no transaction open nothing
    /// was written since the last commit, and the offsets have not moved (they move only
    /// with a snapshot, which is written in the transaction): nothing happens. Returns
    /// whether a transaction was committed.
    pub fn commit_transaction(
        &self,
        offsets: &[(SourceKey, i64)],
        group: &ConsumerGroupMetadata,
    ) -> Result<bool, TxnError> {
        if self.transactional.is_none() || !self.open.load(Ordering::SeqCst) {
            return Ok(false);
        }
        tracing::debug!(partitions = offsets.len(), "committing transaction");
        if !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), pos) in offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*pos))
                    .map_err(TxnError::Abortable)?;
            }
            self.retrying(|p, t| p.send_offsets_to_transaction(&tpl, group, t))?;
        }
        self.retrying(|p, t| p.commit_transaction(t))?;
        self.open.store(false, Ordering::SeqCst);
        Ok(true)
    }

    /// Exactly-once: aborts the open transaction; its records are never visible to
    /// `read_committed` readers, and their bookkeeping is dropped. Returns whether one was
    /// open.
    pub fn abort_transaction(&self) -> Result<bool, TxnError> {
        if self.transactional.is_none() || !self.open.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if let Ok(mut acks) = self.acks.lock() {
            acks.generation += 1;
            acks.unacked.clear();
            acks.failures.clear();
        }
        // librdkafka's abort waits for every delivery report to be served, and
        // rust-rdkafka's producer serves them only in `poll`: drop what is still queued,
        // then serve the reports here, or the abort would wait out its whole timeout.
        self.producer.purge(PurgeConfig::default().queue());
        self.producer.flush(self.txn_timeout).map_err(TxnError::of)?;
        self.retrying(|p, t| p.abort_transaction(t))?;
        self.open.store(false, Ordering::SeqCst);
        Ok(true)
    }

    /// A transactional call, tried again while librdkafka says it may be (a timeout).
    fn retrying(
        &self,
        call: impl Fn(&BaseProducer<SinkContext>, Duration) -> Result<(), KafkaError>,
    ) -> Result<(), TxnError> {
        let mut tries = 0;
        loop {
            match call(&self.producer, self.txn_timeout) {
                Ok(()) => return Ok(()),
                Err(e) if TxnError::retriable(&e) && tries < 3 => tries += 1,
                Err(e) => return Err(TxnError::of(e)),
            }
        }
    }

    /// Exactly-once: begins a transaction unless one is open.
    fn begin(&self) -> Result<(), KafkaError> {
        if self.transactional.is_some() && !self.open.load(Ordering::SeqCst) {
            self.producer.begin_transaction()?;
            self.open.store(true, Ordering::SeqCst);
            tracing::debug!("transaction begun");
        }
        Ok(())
    }

    /// The acknowledgement bookkeeping.
    pub fn acks(&self) -> &Arc<Mutex<Acks>> {
        &self.acks
    }

    /// Enqueues a record derived from `source`; returns its output number.
    pub fn send(&self, source: &SourceKey, rec: OutRecord<'_>) -> Result<u64, SinkError> {
        self.begin().map_err(|e| SinkError::Transactions {
            id: self.transactional.clone().unwrap_or_default(),
            error: TxnError::of(e),
        })?;
        let (no, generation) = {
            let mut acks = self.acks.lock().map_err(|_| SinkError::Delivery("ack state poisoned".into()))?;
            let next = acks.next.entry(source.clone()).or_insert(0);
            let no = *next;
            *next += 1;
            acks.unacked.entry(source.clone()).or_default().insert(no);
            (no, acks.generation)
        };
        let mut record =
            BaseRecord::with_opaque_to(rec.topic, Box::new(Token { source: source.clone(), no, generation }))
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
        // In a transaction, a failed record fails the commit instead, which aborts it.
        if self.transactional.is_some() {
            return Ok(());
        }
        let acks = self.acks.lock().map_err(|_| SinkError::Delivery("ack state poisoned".into()))?;
        match acks.failures.first() {
            Some(f) => Err(SinkError::Delivery(f.clone())),
            None => Ok(()),
        }
    }
}
