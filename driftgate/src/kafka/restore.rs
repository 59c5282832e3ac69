//! Restoring a source partition's state: its changelog partition read to its end, before
//! the partition is consumed (see [`crate::kafka::rebalance`]).
//!
//! The reader is `read_committed`: with exactly-once delivery, an aborted transaction's
//! snapshot records are never seen. The end is the log's end, so a transaction still open
//! is waited for (at most `transaction.timeout.ms`, after which the coordinator aborts it;
//! at once if the crashed instance restarts with its `transactional.id`). Transaction
//! markers take offsets, so progress is the reader's position, not the last record's.

use crate::kafka::sink::SourceKey;
use driftgate_core::codec::changelog;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{debug, warn};

/// Why a partition's state could not be restored from the changelog.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// The reader could not be created.
    #[error("cannot create the restore consumer: {0}")]
    Client(#[source] KafkaError),
    /// Reading the changelog failed.
    #[error("changelog {topic}/{partition}: {source}")]
    Read {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Cause.
        source: KafkaError,
    },
    /// A record did not decode.
    #[error("changelog {topic}/{partition} offset {offset}: {source}")]
    Decode {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// Cause.
        source: changelog::StateError,
    },
    /// The end was not reached in time.
    #[error("changelog {topic}/{partition} not read to its end ({next} of {end}) within {timeout:?}")]
    Timeout {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The next offset to read.
        next: i64,
        /// The end offset.
        end: i64,
        /// `restore_timeout`.
        timeout: Duration,
    },
}

/// A restored snapshot and the number of changelog records read.
pub(super) type Restored = (changelog::Snapshot, u64);

/// The restore reader's callbacks: reaching the end of the changelog partition is how a
/// restore ends, not an error.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(p) => debug!(partition = p, "changelog partition read to its end"),
            e => warn!(error = %e, reason, "changelog reader"),
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// Reads a source partition's changelog partition to its end and rebuilds its state.
pub(super) fn restore_partition(
    client: &ClientConfig,
    changelog_topic: &str,
    key: &SourceKey,
    timeout: Duration,
) -> Result<Option<Restored>, RestoreError> {
    let read = |source| RestoreError::Read { topic: changelog_topic.to_string(), partition: key.1, source };
    let reader: BaseConsumer<RestoreContext> = client
        .clone()
        .set("group.id", "driftgate-restore")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(RestoreContext)
        .map_err(RestoreError::Client)?;
    // The end to reach is the log's end, past any open transaction: asked as a
    // `read_uncommitted` reader (a `read_committed` one is told the last stable offset). So a
    // transaction still open on the changelog (say, of a member frozen between committing
    // its offsets and ending its transaction) is waited for until it commits or aborts, and
    // its snapshot is never skipped.
    let probe: BaseConsumer<RestoreContext> = client
        .clone()
        .set("group.id", "driftgate-restore")
        .set("isolation.level", "read_uncommitted")
        .create_with_context(RestoreContext)
        .map_err(RestoreError::Client)?;
    let (lo, hi) = probe.fetch_watermarks(changelog_topic, key.1, timeout).map_err(read)?;
    drop(probe);
    if hi <= lo {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog_topic, key.1, Offset::Offset(lo)).map_err(read)?;
    reader.assign(&tpl).map_err(read)?;
    let mut r = changelog::Restorer::default();
    let deadline = Instant::now() + timeout;
    let mut next = lo;
    loop {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                r.apply(&key.0, m.key().unwrap_or_default(), m.payload()).map_err(|source| {
                    RestoreError::Decode {
                        topic: changelog_topic.to_string(),
                        partition: key.1,
                        offset: m.offset(),
                        source,
                    }
                })?;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                // Past the last record: transaction markers (which the position covers), or
                // an open transaction still to end.
                next = next.max(position(&reader, changelog_topic, key.1).unwrap_or(next));
            }
            Some(Err(e)) => return Err(read(e)),
        }
        if next >= hi {
            break;
        }
        if Instant::now() > deadline {
            return Err(RestoreError::Timeout {
                topic: changelog_topic.to_string(),
                partition: key.1,
                next,
                end: hi,
                timeout,
            });
        }
    }
    let records = r.records;
    Ok(r.finish().map(|s| (s, records)))
}

/// The reader's position in `topic`/`partition` (the offset after the last record or
/// transaction marker it consumed).
fn position(reader: &BaseConsumer<RestoreContext>, topic: &str, partition: i32) -> Option<i64> {
    let tpl = reader.position().ok()?;
    match tpl.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}
