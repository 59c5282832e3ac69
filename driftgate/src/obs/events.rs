//! Internal events, in the manner of Vector's `internal_events`: each observable occurrence
//! on the Kafka side is a named type whose [`InternalEvent::emit`] both logs it and counts
//! it, so no error path is logged without being counted, or counted without a log line.
//!
//! Errors count in `driftgate_errors_total{stage, code}`. `stage` is where it happened;
//! `code` is librdkafka's error code name when there is one (a bounded set), else a fixed
//! word. Neither carries a topic or an agent, so the labels stay low-cardinality.

use crate::obs::metrics::Metrics;
use rdkafka::error::KafkaError;
use tracing::{debug, error, info, warn};

/// Something that happened: logs and counts itself.
pub trait InternalEvent {
    /// Logs the event and moves its counters.
    fn emit(self, metrics: &Metrics);
}

/// librdkafka's code for an error, or `other`.
pub fn kafka_code(e: &KafkaError) -> String {
    e.rdkafka_error_code().map_or_else(|| "other".to_string(), |c| format!("{c:?}"))
}

/// The `(stage, code)` pairs whose code is a fixed word; their series exist from the start.
pub const FIXED_CODES: [(&str, &str); 12] = [
    ("restore", "decode"),
    ("restore", "timeout"),
    ("restore", "start_offset"),
    ("revoke", "flush"),
    ("decode", "unavailable"),
    ("heartbeat", "produce"),
    ("audit", "produce"),
    ("transaction", "commit"),
    ("transaction", "assignment_lost"),
    ("transaction", "abort"),
    ("transaction", "stalled"),
    ("forward", "not_forwarded"),
];

fn count(metrics: &Metrics, stage: &str, code: &str) {
    metrics.errors.with_label_values(&[stage, code]).inc();
}

/// The consumer's poll returned an error (librdkafka retries by itself).
pub struct ConsumerError<'a> {
    /// The error.
    pub error: &'a KafkaError,
}

impl InternalEvent for ConsumerError<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(error = %self.error, "consumer error");
        count(metrics, "consume", &kafka_code(self.error));
    }
}

/// librdkafka reported an error through the client's error callback.
pub struct ClientError<'a> {
    /// The error.
    pub error: &'a KafkaError,
    /// librdkafka's reason text.
    pub reason: &'a str,
}

impl InternalEvent for ClientError<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(error = %self.error, reason = self.reason, "librdkafka");
        count(metrics, "client", &kafka_code(self.error));
    }
}

/// An offset commit failed; the next interval commits the same positions again.
pub struct CommitFailed<'a> {
    /// The error.
    pub error: &'a KafkaError,
}

impl InternalEvent for CommitFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(error = %self.error, "offset commit failed; will retry");
        count(metrics, "commit", &kafka_code(self.error));
    }
}

/// Partitions were assigned (`assign`) or revoked (`revoke`).
pub struct Rebalanced {
    /// `assign` or `revoke`.
    pub change: &'static str,
    /// How many partitions.
    pub partitions: usize,
}

impl InternalEvent for Rebalanced {
    fn emit(self, metrics: &Metrics) {
        info!(change = self.change, partitions = self.partitions, "rebalance");
        metrics.rebalanced_partitions.with_label_values(&[self.change]).inc_by(self.partitions as u64);
    }
}

/// Applying a rebalance to the consumer failed (`assign`, `unassign`), or the group
/// reported a rebalance error (`protocol`).
pub struct RebalanceFailed<'a> {
    /// What failed.
    pub op: &'static str,
    /// The error, as librdkafka words it.
    pub error: &'a dyn std::fmt::Display,
    /// Its code.
    pub code: String,
}

impl InternalEvent for RebalanceFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        error!(op = self.op, error = %self.error, "rebalance failed");
        count(metrics, "rebalance", &self.code);
    }
}

/// A newly assigned partition's records could not be forwarded to the pipeline's batch
/// queue: they are read one by one from the consumer's queue instead (slower, not lost).
pub struct RecordsNotForwarded<'a> {
    /// Why.
    pub error: &'a crate::kafka::records::ForwardError,
}

impl InternalEvent for RecordsNotForwarded<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(error = %self.error, "cannot forward a partition's records to the batch queue; reading them one by one");
        count(metrics, "forward", "not_forwarded");
    }
}

/// A partition's state could not be restored; the pipeline stops rather than judge on an
/// empty baseline.
pub struct RestoreFailed<'a> {
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// Why.
    pub error: &'a crate::kafka::restore::RestoreError,
}

impl InternalEvent for RestoreFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        error!(topic = self.topic, partition = self.partition, error = %self.error, "cannot restore state; stopping");
        use crate::kafka::restore::RestoreError as E;
        let code = match self.error {
            E::Client(e) | E::Read { source: e, .. } => kafka_code(e),
            E::Decode { .. } | E::Snapshot { .. } => "decode".to_string(),
            E::Timeout { .. } => "timeout".to_string(),
            E::NotRead { .. } => "not_read".to_string(),
        };
        count(metrics, "restore", &code);
    }
}

/// A restored partition's start offset could not be set; it starts at the committed one.
pub struct StartOffsetFailed<'a> {
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// The error.
    pub error: &'a KafkaError,
}

impl InternalEvent for StartOffsetFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(topic = self.topic, partition = self.partition, error = %self.error, "cannot set the start offset");
        count(metrics, "restore", "start_offset");
    }
}

/// Snapshotting or flushing the revoked partitions failed; their offsets are not
/// committed past it.
pub struct RevokeFlushFailed<'a> {
    /// The error.
    pub error: &'a crate::kafka::sink::SinkError,
}

impl InternalEvent for RevokeFlushFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        error!(error = %self.error, "snapshot or flush on revoke failed; offsets of the revoked partitions are not committed past it");
        count(metrics, "revoke", "flush");
    }
}

/// Exactly-once: a transaction committed (outputs, changelog and offsets became visible).
pub struct TransactionCommitted {
    /// Input partitions whose offsets it carried.
    pub partitions: usize,
}

impl InternalEvent for TransactionCommitted {
    fn emit(self, metrics: &Metrics) {
        debug!(partitions = self.partitions, "transaction committed");
        metrics.transactions.with_label_values(&["committed"]).inc();
    }
}

/// Exactly-once: a transaction was aborted; nothing of it is visible to `read_committed`
/// readers, and the engines go back to their last committed snapshots.
pub struct TransactionAborted<'a> {
    /// Why: `commit` (it could not commit), `assignment_lost` (the group moved on),
    /// `stalled` (the process stood still for half a group session with it open), `abort`
    /// (the abort itself failed: the instance stops).
    pub cause: &'static str,
    /// The error, when there was one.
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl InternalEvent for TransactionAborted<'_> {
    fn emit(self, metrics: &Metrics) {
        match self.error {
            Some(e) => {
                warn!(cause = self.cause, error = %e, "transaction aborted: restoring the last committed state")
            }
            None => warn!(cause = self.cause, "transaction aborted"),
        }
        metrics.transactions.with_label_values(&["aborted"]).inc();
        count(metrics, "transaction", self.cause);
    }
}

/// Rewinding a partition to retry a record failed.
pub struct SeekFailed<'a> {
    /// The error.
    pub error: &'a KafkaError,
}

impl InternalEvent for SeekFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(error = %self.error, "seek failed");
        count(metrics, "seek", &kafka_code(self.error));
    }
}

/// A restored partition's event-time buffer held inputs by reference (their offsets) that the
/// input topic no longer has, e.g. deleted by retention while the partition was unowned.
pub struct BufferedInputsLost<'a> {
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// How many inputs.
    pub count: usize,
}

impl InternalEvent for BufferedInputsLost<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(
            topic = self.topic,
            partition = self.partition,
            count = self.count,
            "restored buffer entries are gone from the input topic; they are never processed"
        );
        metrics.restored_buffer_lost.inc_by(self.count as u64);
    }
}

/// A rebalance happened while a batch was being polled: the records already polled from the
/// partitions it revoked or assigned are dropped, to be read again by the partition's owner.
pub struct BatchRecordsDropped {
    /// Partitions the rebalance revoked or assigned.
    pub partitions: usize,
    /// Records dropped from the batch.
    pub count: usize,
}

impl InternalEvent for BatchRecordsDropped {
    fn emit(self, metrics: &Metrics) {
        debug!(
            partitions = self.partitions,
            dropped = self.count,
            "rebalanced while polling a batch: its records of those partitions are read again"
        );
        metrics.batch_records_dropped.inc_by(self.count as u64);
    }
}

/// The decoder refused a record; it goes to the dead-letter topic with its reason.
pub struct RecordRejected<'a> {
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// The reason code (a bounded set, see `kafka::decode::reason`).
    pub code: &'static str,
    /// What exactly.
    pub detail: &'a str,
}

impl InternalEvent for RecordRejected<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            reason = self.code,
            detail = self.detail,
            "dead-lettering record"
        );
        metrics.records_rejected.with_label_values(&[self.code]).inc();
    }
}

/// A dependency of the decoder (the schema registry) is unavailable; the record is read
/// again after a pause.
pub struct DependencyUnavailable<'a> {
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// Why.
    pub why: &'a str,
}

impl InternalEvent for DependencyUnavailable<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            why = self.why,
            "dependency unavailable; retrying the record"
        );
        count(metrics, "decode", "unavailable");
    }
}

/// A heartbeat could not be produced.
pub struct HeartbeatFailed<'a> {
    /// The error.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for HeartbeatFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(error = %self.error, "cannot produce the heartbeat");
        count(metrics, "heartbeat", "produce");
    }
}

/// A refused override's audit record could not be written.
pub struct AuditWriteFailed<'a> {
    /// The error.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for AuditWriteFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        error!(error = %self.error, "cannot write the audit record");
        count(metrics, "audit", "produce");
    }
}

/// The control-topic reader's poll or commit failed (`op` is `poll` or `commit`).
pub struct ControlTopicError<'a> {
    /// What failed.
    pub op: &'static str,
    /// The error.
    pub error: &'a KafkaError,
}

impl InternalEvent for ControlTopicError<'_> {
    fn emit(self, metrics: &Metrics) {
        if self.op == "commit" {
            warn!(error = %self.error, "control topic: commit failed; the record will be read again");
        } else {
            warn!(error = %self.error, op = self.op, "control topic");
        }
        count(metrics, &format!("control_topic_{}", self.op), &kafka_code(self.error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    fn errors(m: &Metrics, stage: &str, code: &str) -> u64 {
        m.errors.with_label_values(&[stage, code]).get()
    }

    #[test]
    fn each_event_counts_under_its_stage_and_code() {
        let m = Metrics::new();
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        ConsumerError { error: &down }.emit(&m);
        ConsumerError { error: &down }.emit(&m);
        CommitFailed { error: &KafkaError::ConsumerCommit(RDKafkaErrorCode::RebalanceInProgress) }.emit(&m);
        SeekFailed { error: &KafkaError::Seek("gone".into()) }.emit(&m);
        Rebalanced { change: "assign", partitions: 3 }.emit(&m);
        BatchRecordsDropped { partitions: 1, count: 7 }.emit(&m);
        assert_eq!(m.batch_records_dropped.get(), 7);
        assert_eq!(errors(&m, "consume", "AllBrokersDown"), 2);
        assert_eq!(errors(&m, "commit", "RebalanceInProgress"), 1);
        assert_eq!(errors(&m, "seek", "other"), 1, "an error without a librdkafka code");
        assert_eq!(m.rebalanced_partitions.with_label_values(&["assign"]).get(), 3);
        let text = m.render();
        assert!(
            text.contains(r#"driftgate_errors_total{code="AllBrokersDown",stage="consume"} 2"#),
            "{text}"
        );
    }
}
