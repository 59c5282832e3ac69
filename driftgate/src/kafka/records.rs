//! The input's records through librdkafka's batch API, which rust-rdkafka does not wrap.
//!
//! Polling one message at a time costs an event, two mutex round trips and three clock
//! reads per record: a fifth of the pipeline thread (measured). Here each assigned
//! partition's fetch queue is forwarded to one [`RecordQueue`] of ours, which the loop
//! empties up to a batch per call.
//!
//! Rebalances, errors and statistics stay on the consumer's own queue, which the loop still
//! polls, so the rebalance callbacks run where they did. A partition that could not be
//! forwarded keeps delivering to the consumer's queue, whose records the loop still reads:
//! it is slower, not lost. librdkafka keeps each partition's order through the forward,
//! and drops records a seek or revoke made stale (its version barrier), as it does for
//! per-message polling.

use crate::kafka::batch::{InputRecord, Sourced};
use rdkafka::bindings as rd;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;
use thiserror::Error;

/// Why a partition's records could not be forwarded to the [`RecordQueue`].
#[derive(Debug, Error)]
pub enum ForwardError {
    /// The topic name holds a NUL byte.
    #[error("topic name `{0}` holds a NUL byte")]
    TopicName(String),
    /// librdkafka does not know the partition (it was not assigned).
    #[error("librdkafka has no queue for {topic}/{partition}")]
    UnknownPartition {
        /// Input topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
}

/// A queue of the consumer's that assigned partitions' records are forwarded to.
pub struct RecordQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
}

// SAFETY: librdkafka's queues are locked internally and may be used from any thread.
unsafe impl Send for RecordQueue {}
// SAFETY: as above; `&RecordQueue` only reaches thread-safe librdkafka calls.
unsafe impl Sync for RecordQueue {}

impl RecordQueue {
    /// A new queue of `client`'s (`None` if librdkafka could not make one).
    ///
    /// # Safety
    /// `client` must be a live consumer handle that outlives the queue.
    pub unsafe fn new(client: *mut rd::rd_kafka_t) -> Option<RecordQueue> {
        NonNull::new(rd::rd_kafka_queue_new(client)).map(|queue| RecordQueue { queue })
    }

    /// The librdkafka handle, for [`forward`].
    pub fn as_ptr(&self) -> *mut rd::rd_kafka_queue_t {
        self.queue.as_ptr()
    }

    /// Appends up to `max` queued records to `out`, in each partition's order.
    ///
    /// Waits up to `wait` for the first only: librdkafka's batch call waits its whole
    /// timeout for a full batch, so the rest is taken without waiting.
    pub fn take(&self, wait: Duration, max: usize, out: &mut Vec<QueuedMessage>) -> usize {
        let mut buf: Vec<*mut rd::rd_kafka_message_t> = vec![std::ptr::null_mut(); max];
        let mut n = self.consume(0, &mut buf);
        if n == 0 && max > 0 && !wait.is_zero() {
            let ms = i32::try_from(wait.as_millis().max(1)).unwrap_or(i32::MAX);
            n = self.consume(ms, &mut buf[..1]);
            if n == 1 {
                n += self.consume(0, &mut buf[1..]);
            }
        }
        out.extend(buf[..n].iter().filter_map(|&m| NonNull::new(m)).map(|ptr| QueuedMessage { ptr }));
        n
    }

    fn consume(&self, timeout_ms: i32, buf: &mut [*mut rd::rd_kafka_message_t]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        // SAFETY: `buf` has `buf.len()` slots; librdkafka fills at most that many and
        // returns how many (or -1 on error); each is owned by a `QueuedMessage` after.
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), timeout_ms, buf.as_mut_ptr(), buf.len())
        };
        usize::try_from(n).unwrap_or(0).min(buf.len())
    }
}

impl Drop for RecordQueue {
    fn drop(&mut self) {
        // SAFETY: made by `rd_kafka_queue_new`, destroyed once. Partitions still forwarded
        // here hold a reference of their own, so librdkafka frees it when they let go.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// Forwards the records of every partition in `tpl` to `queue`. librdkafka keeps a forward
/// the application set when it starts fetching (set before the assignment, no record
/// reaches the consumer's queue), and clears it when it stops: each assignment sets it
/// again, and so does the loop from time to time, for a stop that lands late.
///
/// # Safety
/// `client` must be the live consumer handle `queue` belongs to.
pub unsafe fn forward(
    client: *mut rd::rd_kafka_t,
    queue: *mut rd::rd_kafka_queue_t,
    tpl: &TopicPartitionList,
) -> Result<usize, ForwardError> {
    let mut forwarded = 0;
    for e in tpl.elements() {
        let name = CString::new(e.topic()).map_err(|_| ForwardError::TopicName(e.topic().to_string()))?;
        let partition_queue = rd::rd_kafka_queue_get_partition(client, name.as_ptr(), e.partition());
        if partition_queue.is_null() {
            return Err(ForwardError::UnknownPartition {
                topic: e.topic().to_string(),
                partition: e.partition(),
            });
        }
        rd::rd_kafka_queue_forward(partition_queue, queue);
        // The handle only: the forward lives on the partition's queue itself.
        rd::rd_kafka_queue_destroy(partition_queue);
        forwarded += 1;
    }
    Ok(forwarded)
}

/// A record (or a consumer error) taken from a [`RecordQueue`]; freed when dropped.
pub struct QueuedMessage {
    ptr: NonNull<rd::rd_kafka_message_t>,
}

impl QueuedMessage {
    fn raw(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: librdkafka's message, alive until `drop`; read only.
        unsafe { self.ptr.as_ref() }
    }

    /// The consumer error it carries in place of a record, if any.
    pub fn error(&self) -> Option<KafkaError> {
        let m = self.raw();
        match m.err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => None,
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                Some(KafkaError::PartitionEOF(m.partition))
            }
            code => Some(KafkaError::MessageConsumption(RDKafkaErrorCode::from(code))),
        }
    }
}

/// Bytes of a librdkafka pointer and length, `None` when null.
///
/// # Safety
/// `ptr` must be null or point to `len` bytes that outlive `'a`.
unsafe fn bytes<'a>(ptr: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        Some(std::slice::from_raw_parts(ptr.cast::<u8>(), len))
    }
}

impl QueuedMessage {
    fn topic_name(&self) -> Option<&CStr> {
        let rkt = self.raw().rkt;
        // SAFETY: the message holds a reference on its topic; its name is NUL-terminated.
        (!rkt.is_null()).then(|| unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(rkt)) })
    }
}

impl Sourced for QueuedMessage {
    fn topic(&self) -> &str {
        // Kafka topic names are ASCII, so the UTF-8 fallback is never taken in practice.
        self.topic_name().and_then(|n| n.to_str().ok()).unwrap_or("")
    }

    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn is_topic(&self, topic: &str) -> bool {
        // Bytes compared: no UTF-8 check per record.
        self.topic_name().is_some_and(|n| n.to_bytes() == topic.as_bytes())
    }
}

impl InputRecord for QueuedMessage {
    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn key(&self) -> Option<&[u8]> {
        let m = self.raw();
        // SAFETY: the key lives as long as the message.
        unsafe { bytes(m.key, m.key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        let m = self.raw();
        // SAFETY: the payload lives as long as the message.
        unsafe { bytes(m.payload, m.len) }
    }

    fn record_time(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message; librdkafka writes the kind.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.ptr.as_ptr(), &mut kind) };
        match kind {
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => None,
            // As rust-rdkafka reads it: -1 means none.
            _ if ms == -1 => None,
            _ => Some(ms.saturating_mul(1000)),
        }
    }
}

impl Drop for QueuedMessage {
    fn drop(&mut self) {
        // SAFETY: returned by `rd_kafka_consume_batch_queue`, destroyed once.
        unsafe { rd::rd_kafka_message_destroy(self.ptr.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::Offset;
    use std::time::Instant;

    const TOPIC: &str = "input";

    fn produce(bootstrap: &str, partition: i32, from: usize, count: usize) {
        let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
        for i in from..from + count {
            let (key, payload) = (format!("k{i}"), format!("p{partition}-{i}"));
            p.send(
                BaseRecord::to(TOPIC)
                    .partition(partition)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(1_000 + i as i64),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
    }

    /// A one-broker mock cluster with the input topic, and its bootstrap address.
    fn cluster(partitions: i32) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, partitions, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        (cluster, bootstrap)
    }

    /// A consumer and its record queue. The queue is declared first, so it is dropped
    /// first: librdkafka's destroy of the consumer waits for it.
    struct Reader {
        q: RecordQueue,
        c: BaseConsumer,
        tpl: TopicPartitionList,
    }

    /// A consumer of `parts` partitions, forwarded to a queue before they are assigned.
    fn consumer(bootstrap: &str, parts: i32) -> Reader {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "records-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let q = unsafe { RecordQueue::new(c.client().native_ptr()) }.unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(TOPIC, p, Offset::Beginning).unwrap();
        }
        assert_eq!(unsafe { forward(c.client().native_ptr(), q.as_ptr(), &tpl) }.unwrap(), parts as usize);
        c.assign(&tpl).unwrap();
        Reader { q, c, tpl }
    }

    /// Takes until `n` records are in (the consumer's own queue polled between, as the
    /// pipeline does); fails after 30 s.
    fn take_n(q: &RecordQueue, c: &BaseConsumer, n: usize) -> Vec<QueuedMessage> {
        let (mut out, t0) = (Vec::new(), Instant::now());
        while out.len() < n {
            assert!(c.poll(Duration::ZERO).is_none(), "a record reached the consumer's own queue");
            q.take(Duration::from_millis(50), 64, &mut out);
            assert!(t0.elapsed() < Duration::from_secs(30), "{} of {n} records in 30 s", out.len());
        }
        out
    }

    fn read(m: &QueuedMessage) -> (i32, i64, String, String, Option<i64>) {
        assert!(m.error().is_none() && m.is_topic(TOPIC) && !m.is_topic("inpu") && m.topic() == TOPIC);
        let text = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
        (m.partition(), m.offset(), text(m.key()), text(m.payload()), m.record_time())
    }

    #[test]
    fn every_partitions_records_come_through_the_queue_in_order_with_key_payload_and_time() {
        let (_cluster, bootstrap) = cluster(2);
        produce(&bootstrap, 0, 0, 150);
        produce(&bootstrap, 1, 0, 150);
        let Reader { q, c, .. } = &consumer(&bootstrap, 2);
        let got: Vec<_> = take_n(q, c, 300).iter().map(read).collect();
        assert_eq!(got.len(), 300);
        for p in 0..2 {
            let mine: Vec<_> = got.iter().filter(|r| r.0 == p).collect();
            assert_eq!(mine.len(), 150);
            for (i, (_, offset, key, payload, time)) in mine.into_iter().enumerate() {
                assert_eq!(
                    (*offset, key.as_str(), payload.as_str()),
                    (i as i64, format!("k{i}").as_str(), format!("p{p}-{i}").as_str())
                );
                assert_eq!(*time, Some((1_000 + i as i64) * 1000), "µs");
            }
        }
    }

    #[test]
    fn a_wait_ends_at_the_first_record_not_at_a_full_batch() {
        let (_cluster, bootstrap) = cluster(1);
        let Reader { q, c, .. } = &consumer(&bootstrap, 1);
        let later = bootstrap.clone();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            produce(&later, 0, 0, 1);
        });
        let (mut out, t0) = (Vec::new(), Instant::now());
        // librdkafka's batch call alone would wait the whole 20 s for 1,024 records.
        while out.is_empty() && t0.elapsed() < Duration::from_secs(20) {
            c.poll(Duration::ZERO);
            q.take(Duration::from_secs(20), 1024, &mut out);
        }
        producer.join().unwrap();
        assert_eq!(out.len(), 1);
        assert!(t0.elapsed() < Duration::from_secs(15), "waited {:?} for one record", t0.elapsed());
    }

    #[test]
    fn records_held_by_a_cleared_forward_follow_in_order_once_it_is_set_again() {
        let (_cluster, bootstrap) = cluster(1);
        produce(&bootstrap, 0, 0, 10);
        let Reader { q, c, tpl } = &consumer(&bootstrap, 1);
        assert_eq!(take_n(q, c, 10).len(), 10);
        // What librdkafka does when it stops fetching a partition.
        let name = CString::new(TOPIC).unwrap();
        let pq = unsafe { rd::rd_kafka_queue_get_partition(c.client().native_ptr(), name.as_ptr(), 0) };
        unsafe { rd::rd_kafka_queue_forward(pq, std::ptr::null_mut()) };
        produce(&bootstrap, 0, 10, 20);
        let t0 = Instant::now();
        while unsafe { rd::rd_kafka_queue_length(pq) } < 20 {
            assert!(c.poll(Duration::from_millis(20)).is_none());
            assert!(t0.elapsed() < Duration::from_secs(30), "the partition's queue did not fill");
        }
        let mut none = Vec::new();
        assert_eq!(q.take(Duration::ZERO, 64, &mut none), 0, "held in the partition's own queue");
        unsafe { rd::rd_kafka_queue_destroy(pq) };
        assert_eq!(unsafe { forward(c.client().native_ptr(), q.as_ptr(), tpl) }.unwrap(), 1);
        let offsets: Vec<i64> = take_n(q, c, 20).iter().map(|m| read(m).1).collect();
        assert_eq!(offsets, (10..30).collect::<Vec<i64>>());
    }
}
