//! The consumer's callbacks, run by librdkafka inside the pipeline thread's `poll`:
//! rebalances (restore before an assignment takes effect; snapshot, flush and commit before
//! a revoke does), commit confirmations, client errors and statistics.

use crate::kafka::pipeline::Status;
use crate::kafka::restore::restore_partition;
use crate::kafka::sink::{Sink, SourceKey};
use crate::kafka::tasks::{Task, Tasks};
use crate::obs::events::{
    kafka_code, ClientError, CommitFailed, InternalEvent, RebalanceFailed, Rebalanced, RestoreFailed,
    RevokeFlushFailed, StartOffsetFailed,
};
use crate::obs::metrics::Metrics;
use driftgate_core::engine::Engine;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::info;

/// Consumer callbacks: rebalances.
pub struct PipelineContext {
    pub(super) tasks: Arc<Mutex<Tasks>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) sink: Arc<Sink>,
    pub(super) status: Arc<Status>,
    pub(super) client: ClientConfig,
    pub(super) changelog: String,
    pub(super) restore_timeout: Duration,
    /// See [`crate::config::KafkaConfig::resume_rewind`].
    pub(super) resume_rewind: i64,
    /// Offsets the broker acknowledged, from the commit callback; applied by the loop.
    /// (A lock of its own: the callback can run inside a commit made under `tasks`.)
    pub(super) confirmed: Mutex<Vec<(SourceKey, i64)>>,
}

impl ClientContext for PipelineContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)) {
            self.status.brokers_down.store(true, Ordering::SeqCst);
        }
        ClientError { error: &error, reason }.emit(&self.metrics);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        // Bootstrap entries are placeholders; a real broker connection that is UP counts.
        let up = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        self.status.brokers_down.store(!up, Ordering::SeqCst);
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // librdkafka lists an internal partition -1, and -1 lag for unassigned ones.
                if p.partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), partition.to_string().as_str()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for PipelineContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                if let Ok(mut c) = self.confirmed.lock() {
                    c.extend(offsets.elements().iter().filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                        _ => None,
                    }));
                }
            }
            // Nothing confirmed: the next interval commits the same positions again.
            Err(e) => CommitFailed { error: &e }.emit(&self.metrics),
        }
    }

    // Overridden to restore state *before* the assignment takes effect, and to start
    // each partition at the position its restored state corresponds to.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.on_assign(tpl);
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    RebalanceFailed { op: "assign", error: &e, code: kafka_code(&e) }.emit(&self.metrics);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, tpl);
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    RebalanceFailed { op: "unassign", error: &e, code: kafka_code(&e) }.emit(&self.metrics);
                }
            }
            other => {
                let error = rdkafka::types::RDKafkaErrorCode::from(other);
                RebalanceFailed { op: "protocol", error: &error, code: format!("{error:?}") }
                    .emit(&self.metrics)
            }
        }
    }
}

impl PipelineContext {
    fn on_assign(&self, tpl: &mut TopicPartitionList) {
        let parts: Vec<SourceKey> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let started = Instant::now();
        self.status.restoring.store(true, Ordering::SeqCst);
        for key in parts {
            let restored = match restore_partition(&self.client, &self.changelog, &key, self.restore_timeout)
            {
                Ok(r) => r,
                Err(e) => {
                    // Without its state the partition would judge on an empty baseline:
                    // stop rather than enforce blind.
                    RestoreFailed { topic: &key.0, partition: key.1, error: &e }.emit(&self.metrics);
                    self.status.stop.store(true, Ordering::SeqCst);
                    return;
                }
            };
            let Ok(mut tasks) = self.tasks.lock() else { return };
            let (cfg, pacts) = (tasks.engine_cfg.clone(), tasks.pacts.clone());
            let task = match restored {
                Some((snap, records)) => {
                    let position = snap.meta.position;
                    let torn = snap.torn.len();
                    let agents = snap.agents.len();
                    let mut engine = Engine::restore(cfg, pacts, snap.meta.meta, snap.agents);
                    let by_reference = engine.first_awaited();
                    let buffered = engine.buffered();
                    info!(topic = %key.0, partition = key.1, position, agents, torn, records, buffered, "state restored");
                    // See `KafkaConfig::resume_rewind`: records before `position` are skipped,
                    // except those the restored buffer holds by reference, read again.
                    let rewound = position.saturating_sub(self.resume_rewind).max(0);
                    let start =
                        by_reference.map_or(rewound, |t| rewound.min(i64::try_from(t).unwrap_or(i64::MAX)));
                    if let Err(e) = tpl.set_partition_offset(&key.0, key.1, Offset::Offset(start)) {
                        StartOffsetFailed { topic: &key.0, partition: key.1, error: &e }.emit(&self.metrics);
                    }
                    engine.mark_dirty(snap.torn);
                    let mut t = Task::fresh(engine, Some(position));
                    // The restored state is durable as of `position`: the group may say so.
                    t.safe = Some(position);
                    t
                }
                None => Task::fresh(Engine::new(cfg, pacts), None),
            };
            tasks.map.insert(key, task);
        }
        let total = self.tasks.lock().map(|t| t.map.len()).unwrap_or(0);
        info!(
            partitions = tpl.count(),
            total,
            restore_ms = started.elapsed().as_millis() as u64,
            "partitions assigned"
        );
        Rebalanced { change: "assign", partitions: tpl.count() }.emit(&self.metrics);
        self.status.restoring.store(false, Ordering::SeqCst);
        self.status.assigned.store(total > 0, Ordering::SeqCst);
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: BTreeSet<SourceKey> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        info!(partitions = ?revoked, "partitions revoked: snapshotting, flushing and committing");
        // Runs inside poll() on the pipeline thread: blocking here blocks the loop, which
        // is what we want; no async work is awaited.
        let Ok(mut tasks) = self.tasks.lock() else { return };
        let buffered: usize =
            revoked.iter().filter_map(|k| tasks.map.get(k)).map(|t| t.engine.buffered()).sum();
        self.metrics.revoked_buffered_records.inc_by(buffered as u64);
        if let Err(e) = tasks.snapshot_and_flush(&*self.sink, Some(&revoked)) {
            RevokeFlushFailed { error: &e }.emit(&self.metrics);
        }
        if let Err(e) = tasks.commit(consumer, &*self.sink, CommitMode::Sync, Some(&revoked)) {
            CommitFailed { error: &e }.emit(&self.metrics);
        }
        Rebalanced { change: "revoke", partitions: revoked.len() }.emit(&self.metrics);
        tasks.remove_revoked(&revoked);
        for k in &revoked {
            if let Ok(mut acks) = self.sink.acks().lock() {
                acks.forget(k);
            }
        }
        info!(partitions = revoked.len(), total = tasks.map.len(), "partitions revoked");
        if tasks.map.is_empty() {
            self.status.assigned.store(false, Ordering::SeqCst);
        }
    }
}
