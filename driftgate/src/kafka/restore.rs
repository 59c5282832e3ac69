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
    /// A record of the last complete snapshot did not decode.
    #[error("changelog {topic}/{partition}: {source}")]
    Snapshot {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The record (its offset is `source.at`).
        source: changelog::RecordError,
    },
    /// A restore thread ended without a result (it panicked).
    #[error("changelog {topic}/{partition}: the restore thread ended without a result")]
    NotRead {
        /// The source topic.
        topic: String,
        /// Its partition.
        partition: i32,
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
pub(super) type Restored = (changelog::Snapshot, ReadStats);

/// How a changelog read went, for the `state restored` log line.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ReadStats {
    /// Records read.
    pub records: u64,
    /// Time from the first poll to the decoded snapshot.
    pub read: Duration,
    /// Of which applying records and decoding the snapshot's agents.
    pub decode: Duration,
    /// Of which waiting for the first record.
    pub first: Duration,
}

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
        // A restore reads one partition from its start to a known end, as fast as it can:
        // large fetches (librdkafka's default is 1 MB per partition and request).
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "52428800")
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
    // The reader learns the partition's leader before the assignment: assigned while it
    // still knew nothing, it started fetching about 0.9 s late in most restores.
    reader.fetch_metadata(Some(changelog_topic), timeout).map_err(read)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog_topic, key.1, Offset::Offset(lo)).map_err(read)?;
    reader.assign(&tpl).map_err(read)?;
    let mut r = changelog::Restorer::default();
    let started = Instant::now();
    let mut decode = Duration::ZERO;
    let mut first = None;
    let deadline = started + timeout;
    let mut next = lo;
    loop {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                let t = Instant::now();
                first.get_or_insert(t - started);
                r.apply_at(&key.0, m.key().unwrap_or_default(), m.payload(), m.offset()).map_err(
                    |source| RestoreError::Decode {
                        topic: changelog_topic.to_string(),
                        partition: key.1,
                        offset: m.offset(),
                        source,
                    },
                )?;
                decode += t.elapsed();
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
    let decoded = Instant::now();
    let snapshot = r.finish().map_err(|source| RestoreError::Snapshot {
        topic: changelog_topic.to_string(),
        partition: key.1,
        source,
    })?;
    let stats = ReadStats {
        records,
        read: started.elapsed(),
        decode: decode + decoded.elapsed(),
        first: first.unwrap_or_default(),
    };
    Ok(snapshot.map(|s| (s, stats)))
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
