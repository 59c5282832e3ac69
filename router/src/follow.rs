//! The Kafka adapter: one thread that follows driftgate's snapshot and enforcement topics and
//! applies what it reads to a [`Router`].
//!
//! **Positions.** At start the follower notes the enforcement topic's end, then reads the
//! snapshot topic from its beginning and the enforcement topic from the noted end, and never
//! stops following either. An event before the noted end is covered by the snapshot the
//! engine writes after it; if that snapshot lands after the router's first pass, the router
//! still reads it, since it keeps following the snapshot topic (it must, for heartbeats). So
//! no position needs to be stored anywhere, and a restarted router converges to the same
//! table. Ready means the snapshot topic has been read to the end it had at start.

use crate::codec::{parse, RecordHeaders, TopicKind, INCARNATION, KIND, SOURCE};
use crate::Router;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Where driftgate publishes.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// driftgate's `topics.snapshot`.
    pub snapshot_topic: String,
    /// driftgate's `topics.enforcement`.
    pub enforcement_topic: String,
    /// librdkafka properties (SASL, TLS, ...), passed through.
    pub properties: BTreeMap<String, String>,
    /// How long to wait for the cluster's metadata at start.
    pub startup_timeout: Duration,
}

/// Why following could not start.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The consumer could not be created or queried.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The cluster did not answer in time.
    #[error(
        "no answer from kafka.brokers = {brokers:?} within kafka.startup_timeout ({timeout:?}): {source}"
    )]
    Unreachable {
        /// `bootstrap.servers`.
        brokers: String,
        /// How long it waited.
        timeout: Duration,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// A topic is missing.
    #[error("topic {0:?} does not exist (driftgate's topics.snapshot / topics.enforcement)")]
    MissingTopic(String),
    /// The follower thread could not be spawned.
    #[error("spawning the follower: {0}")]
    Spawn(#[from] std::io::Error),
}

/// A running follower; dropping it stops the thread.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Stops following and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts following driftgate's topics into `router`.
pub fn follow(cfg: FollowConfig, router: Arc<Router>) -> Result<Follower, FollowError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", "driftgate-router")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // Only committed transactions: what an exactly-once driftgate made visible.
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "50");
    for (k, v) in &cfg.properties {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    // The snapshot partitions still to read to the end they had at start.
    let mut pending = BTreeMap::new();
    for (topic, kind) in
        [(&cfg.snapshot_topic, TopicKind::Snapshot), (&cfg.enforcement_topic, TopicKind::Enforcement)]
    {
        let md = consumer.fetch_metadata(Some(topic), cfg.startup_timeout).map_err(|source| {
            FollowError::Unreachable { brokers: cfg.brokers.clone(), timeout: cfg.startup_timeout, source }
        })?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if parts.is_empty() {
            return Err(FollowError::MissingTopic(topic.clone()));
        }
        for p in parts {
            let offset = match kind {
                TopicKind::Snapshot => {
                    let (low, high) = consumer.fetch_watermarks(topic, p, cfg.startup_timeout)?;
                    if high > low {
                        pending.insert(p, high);
                    }
                    Offset::Beginning
                }
                TopicKind::Enforcement => {
                    let (_, high) = consumer.fetch_watermarks(topic, p, cfg.startup_timeout)?;
                    Offset::Offset(high)
                }
            };
            tpl.add_partition_offset(topic, p, offset)?;
        }
    }
    consumer.assign(&tpl)?;
    info!(snapshot = %cfg.snapshot_topic, enforcement = %cfg.enforcement_topic, "router following");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("driftgate-router-follow".into())
        .spawn(move || run(consumer, cfg, router, pending, &s))?;
    Ok(Follower { stop, thread: Some(thread) })
}

fn run(
    consumer: BaseConsumer,
    cfg: FollowConfig,
    router: Arc<Router>,
    pending: BTreeMap<i32, i64>,
    stop: &AtomicBool,
) {
    let mut boot = Bootstrap { pending };
    boot.settle(&router);
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let topic = if m.topic() == cfg.snapshot_topic {
                    TopicKind::Snapshot
                } else {
                    TopicKind::Enforcement
                };
                apply(&router, topic, &m);
                if topic == TopicKind::Snapshot {
                    boot.reached(m.partition(), m.offset() + 1, &router);
                }
            }
            // EOF names a partition but not its topic, and a quiet poll says nothing: the
            // snapshot positions tell (they count transaction markers, so an aborted tail
            // does not hold the bootstrap back).
            None | Some(Err(KafkaError::PartitionEOF(_))) if !boot.pending.is_empty() => {
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements_for_topic(&cfg.snapshot_topic) {
                        if let Offset::Offset(o) = e.offset() {
                            boot.reached(e.partition(), o, &router);
                        }
                    }
                }
            }
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => debug!(error = %e, "consumer"),
        }
    }
}

/// Reads one record's headers and applies it; a malformed one is counted and logged with its
/// place, and changes nothing.
fn apply(router: &Router, topic: TopicKind, m: &BorrowedMessage<'_>) {
    let mut h = RecordHeaders::default();
    for x in m.headers().iter().flat_map(|hs| hs.iter()) {
        let v = x.value.map(|v| String::from_utf8_lossy(v).into_owned());
        match x.key {
            KIND => h.kind = v,
            SOURCE => h.source = v,
            INCARNATION => h.incarnation = v,
            _ => {}
        }
    }
    match parse(topic, m.key(), m.payload(), &h) {
        Ok(p) => {
            router.apply(topic, p);
        }
        Err(e) => {
            router.malformed(topic);
            warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e, "skipped a malformed record");
        }
    }
}

/// The snapshot partitions still to read to the end they had at start.
struct Bootstrap {
    pending: BTreeMap<i32, i64>,
}

impl Bootstrap {
    /// The snapshot partition's next offset to read is `next`.
    fn reached(&mut self, partition: i32, next: i64, router: &Router) {
        if self.pending.get(&partition).is_some_and(|end| next >= *end) {
            self.pending.remove(&partition);
            self.settle(router);
        }
    }

    /// Marks the router ready once nothing is pending.
    fn settle(&self, router: &Router) {
        if self.pending.is_empty() && !router.is_ready() {
            info!(agents = router.table().len(), "router bootstrapped from the snapshot topic");
            router.set_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    #[test]
    fn an_unreachable_cluster_is_an_error_that_names_the_setting() {
        let cfg = FollowConfig {
            brokers: "127.0.0.1:1".into(),
            snapshot_topic: "s".into(),
            enforcement_topic: "e".into(),
            properties: BTreeMap::from([("log_level".to_string(), "0".to_string())]),
            startup_timeout: Duration::from_millis(500),
        };
        let e = follow(cfg, Arc::new(Router::new(Policy::default()))).err().expect("no cluster there");
        let text = e.to_string();
        assert!(matches!(e, FollowError::Unreachable { .. }), "{text}");
        assert!(
            text.contains("kafka.brokers = \"127.0.0.1:1\"") && text.contains("startup_timeout"),
            "{text}"
        );
    }
}
