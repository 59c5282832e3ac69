//! Restoring a source partition's state: its changelog partition read to its end, before
//! the partition is consumed (see [`crate::kafka::rebalance`]).

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
        .create_with_context(RestoreContext)
        .map_err(RestoreError::Client)?;
    let (lo, hi) = reader.fetch_watermarks(changelog_topic, key.1, timeout).map_err(read)?;
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
            Some(Err(KafkaError::PartitionEOF(_))) if next >= hi => break,
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => return Err(read(e)),
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
