//! The consumer's callbacks, run by librdkafka inside the pipeline thread's `poll`:
//! rebalances (restore before an assignment takes effect; snapshot, flush and commit before
//! a revoke does), commit confirmations, client errors and statistics.

use crate::kafka::pipeline::Status;
use crate::kafka::restore::{restore_partition, ReadStats, RestoreError};
use crate::kafka::sink::{Sink, SourceKey};
use crate::kafka::tasks::{CommitError, GroupTransaction, Task, Tasks};
use crate::obs::events::{
    kafka_code, ClientError, CommitFailed, InternalEvent, RebalanceFailed, Rebalanced, RecordsNotForwarded,
    RestoreFailed, RevokeFlushFailed, StartOffsetFailed, TransactionAborted, TransactionCommitted,
};
use crate::obs::metrics::Metrics;
use driftgate_core::engine::{Engine, EngineConfig};
use driftgate_core::pact::Pact;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{error, info};

/// Partitions restored at once, at most (each reads its changelog with a consumer of its own
/// and decodes on its own thread).
const RESTORE_THREADS: usize = 4;

/// A partition's state as read from its changelog (see [`PipelineContext::read_partition`]).
struct ReadPartition {
    engine: Engine,
    position: i64,
    torn: Vec<String>,
    agents: usize,
    stats: ReadStats,
    /// Time to build the engine from the decoded state.
    build: Duration,
}

/// What reading a partition's changelog gave: its state (`None` without one), or why not.
type PartitionResult = Result<Option<ReadPartition>, RestoreError>;

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
    /// Partitions assigned or revoked since the loop last looked: records it polled from
    /// them before the rebalance are stale (see [`crate::kafka::batch::drop_touched`]).
    pub(super) touched: Mutex<BTreeSet<SourceKey>>,
    /// Whether `touched` may hold anything: the loop looks after every record it polls,
    /// and a lock per record was 2 % of the pipeline thread.
    pub(super) touched_any: AtomicBool,
    /// The pipeline's [`crate::kafka::records::RecordQueue`], which assigned partitions'
    /// records are forwarded to; null until it is made and once it is gone.
    pub(super) records: AtomicPtr<rdkafka::bindings::rd_kafka_queue_t>,
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
                self.on_assign(consumer, tpl);
                // Before the fetch starts, so that no record reaches the consumer's queue.
                self.forward(consumer, tpl);
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
    /// A partition's task restored from its changelog, and the offset to read it from
    /// (`None`: no state, so wherever the group's offset or `auto.offset.reset` says).
    pub(super) fn restore_task(&self, key: &SourceKey) -> Result<(Task, Option<i64>), RestoreError> {
        let read = self.read_partition(key)?;
        Ok(self.adopt(key, read))
    }

    /// Reads the task set's setup (engine settings, pacts, pact changes), poisoned or not.
    fn with_setup<T>(&self, read: impl FnOnce(&Tasks) -> T) -> T {
        match self.tasks.lock() {
            Ok(t) => read(&t),
            Err(p) => read(p.get_ref()),
        }
    }

    /// The engine settings and pacts a task's engine is built with.
    fn engine_setup(&self) -> (EngineConfig, Vec<Pact>) {
        self.with_setup(|t| (t.engine_cfg.clone(), t.pacts.clone()))
    }

    /// Reads a partition's changelog and builds its engine: the slow part of a restore,
    /// which touches no shared state, so partitions can be read in parallel.
    fn read_partition(&self, key: &SourceKey) -> Result<Option<ReadPartition>, RestoreError> {
        let Some((snap, stats)) =
            restore_partition(&self.client, &self.changelog, key, self.restore_timeout)?
        else {
            return Ok(None);
        };
        let (cfg, pacts) = self.engine_setup();
        let (position, agents) = (snap.meta.position, snap.agents.len());
        let t = Instant::now();
        let engine = Engine::restore(cfg, pacts, snap.meta.meta, snap.agents);
        Ok(Some(ReadPartition { engine, position, torn: snap.torn, agents, stats, build: t.elapsed() }))
    }

    /// Reads several partitions' changelogs, on up to [`RESTORE_THREADS`] threads (no more
    /// than the cores); the results are in the order of `parts`.
    fn read_partitions(&self, parts: &[SourceKey]) -> Vec<PartitionResult> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = parts.len().min(cores).min(RESTORE_THREADS);
        if workers <= 1 {
            return parts.iter().map(|k| self.read_partition(k)).collect();
        }
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<PartitionResult>>> = parts.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(key) = parts.get(i) else { break };
                    let r = self.read_partition(key);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                });
            }
        });
        slots
            .into_iter()
            .zip(parts)
            .map(|(m, key)| {
                let r = m.into_inner().unwrap_or_else(|p| p.into_inner());
                r.unwrap_or_else(|| Err(RestoreError::NotRead { topic: key.0.clone(), partition: key.1 }))
            })
            .collect()
    }

    /// Makes a task of a partition's state read by [`Self::read_partition`]: the pact
    /// registry learns what the state carries, and changes the state lacks are applied.
    fn adopt(&self, key: &SourceKey, read: Option<ReadPartition>) -> (Task, Option<i64>) {
        let changes = self.with_setup(|t| t.changes.clone());
        let Some(ReadPartition { mut engine, position, torn, agents, stats, build }) = read else {
            let (cfg, pacts) = self.engine_setup();
            let mut engine = Engine::new(cfg, pacts);
            Tasks::catch_up(&changes, &mut engine);
            return (Task::fresh(engine, None), None);
        };
        let torn_count = torn.len();
        // Pact changes made at run time before this restart (or by the partition's previous
        // owner) come with the state: the reference learns them; changes taken here that
        // the state lacks are applied.
        if let Ok(mut t) = self.tasks.lock() {
            if engine.applied_changes().iter().any(|c| !t.reference.has_applied(c)) {
                t.reference = engine.registry_view();
            }
        }
        Tasks::catch_up(&changes, &mut engine);
        let by_reference = engine.first_awaited();
        let buffered = engine.buffered();
        info!(
            topic = %key.0,
            partition = key.1,
            position,
            agents,
            torn = torn_count,
            records = stats.records,
            buffered,
            read_ms = stats.read.as_millis() as u64,
            decode_ms = stats.decode.as_millis() as u64,
            first_record_ms = stats.first.as_millis() as u64,
            build_ms = build.as_millis() as u64,
            "state restored"
        );
        // See `KafkaConfig::resume_rewind`: records before `position` are skipped, except
        // those the restored buffer holds by reference, read again.
        let rewound = position.saturating_sub(self.resume_rewind).max(0);
        let start = by_reference.map_or(rewound, |t| rewound.min(i64::try_from(t).unwrap_or(i64::MAX)));
        engine.mark_dirty(torn);
        let mut t = Task::fresh(engine, Some(position));
        // The restored state is durable as of `position`: the group may say so.
        t.safe = Some(position);
        (t, Some(start))
    }

    /// Exactly-once: commits the open transaction (before a rebalance changes what this
    /// instance holds). A transaction that cannot commit is aborted, and the tasks are
    /// restored by the loop.
    pub(super) fn commit_open_transaction(&self, consumer: &BaseConsumer<Self>) {
        if !self.sink.is_transactional() {
            return;
        }
        let Ok(mut tasks) = self.tasks.lock() else { return };
        let txn = GroupTransaction { sink: &self.sink, consumer };
        match tasks.commit_transaction(&*self.sink, &txn) {
            Ok(Some(partitions)) => TransactionCommitted { partitions }.emit(&self.metrics),
            Ok(None) => {}
            Err(e) => {
                drop(tasks);
                self.abort_transaction("commit", Some(&e));
            }
        }
    }

    /// Exactly-once: aborts the open transaction and marks every task for restoring (with
    /// none open, the engines hold exactly what was committed, and nothing is done); a
    /// producer that cannot abort (fenced) stops the run.
    pub(super) fn abort_transaction(&self, cause: &'static str, error: Option<&CommitError>) {
        let aborted = match error {
            Some(CommitError::Txn(e)) if e.is_fatal() => None,
            _ => match self.sink.abort_transaction() {
                Ok(open) => Some(open),
                Err(e) => {
                    TransactionAborted { cause: "abort", error: Some(&e) }.emit(&self.metrics);
                    None
                }
            },
        };
        match aborted {
            Some(false) => return,
            Some(true) => TransactionAborted { cause, error: error.map(|e| e as &dyn std::fmt::Display) }
                .emit(&self.metrics),
            None => {
                // Fenced: a newer instance with this transactional.id runs these partitions.
                if let Some(e) = error {
                    error!(error = %e, "the transactional producer is fenced or failed: stopping this instance");
                }
                self.status.fenced.store(true, Ordering::SeqCst);
                self.status.stop.store(true, Ordering::SeqCst);
            }
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.rewind = tasks.abandon();
        }
    }

    /// Sends the partitions' records to the pipeline's batch queue (again: see
    /// `FORWARD_AGAIN` in the pipeline). One that cannot be forwarded keeps using the
    /// consumer's queue, which the loop also reads.
    pub(super) fn forward(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let queue = self.records.load(Ordering::Acquire);
        if queue.is_null() {
            return;
        }
        // SAFETY: the queue is this consumer's, and the pipeline clears the pointer before
        // it destroys the queue; both happen on this thread (the callback runs in `poll`).
        if let Err(e) = unsafe { crate::kafka::records::forward(consumer.client().native_ptr(), queue, tpl) }
        {
            RecordsNotForwarded { error: &e }.emit(&self.metrics);
        }
    }

    fn touch<'k>(&self, keys: impl IntoIterator<Item = &'k SourceKey>) {
        if let Ok(mut t) = self.touched.lock() {
            t.extend(keys.into_iter().cloned());
        }
        // Set after the partitions are in: a loop that sees it finds them.
        self.touched_any.store(true, Ordering::Release);
    }

    /// The partitions assigned or revoked since the last call.
    pub(super) fn take_touched(&self) -> BTreeSet<SourceKey> {
        if !self.touched_any.swap(false, Ordering::Acquire) {
            return BTreeSet::new();
        }
        self.touched.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default()
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        // Exactly-once: what this instance did so far is committed before the assignment
        // grows (a restore can take long; the transaction must not time out meanwhile).
        self.commit_open_transaction(consumer);
        let parts: Vec<SourceKey> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        self.touch(&parts);
        let started = Instant::now();
        self.status.restoring.store(true, Ordering::SeqCst);
        let read = self.read_partitions(&parts);
        for (key, read) in parts.into_iter().zip(read) {
            let (task, start) = match read.map(|r| self.adopt(&key, r)) {
                Ok(r) => r,
                Err(e) => {
                    // Without its state the partition would judge on an empty baseline:
                    // stop rather than enforce blind.
                    RestoreFailed { topic: &key.0, partition: key.1, error: &e }.emit(&self.metrics);
                    self.status.stop.store(true, Ordering::SeqCst);
                    return;
                }
            };
            if let Some(start) = start {
                if let Err(e) = tpl.set_partition_offset(&key.0, key.1, Offset::Offset(start)) {
                    StartOffsetFailed { topic: &key.0, partition: key.1, error: &e }.emit(&self.metrics);
                }
            }
            let Ok(mut tasks) = self.tasks.lock() else { return };
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
        self.touch(&revoked);
        // Runs inside poll() on the pipeline thread: blocking here blocks the loop, which
        // is what we want; no async work is awaited.
        if let Ok(tasks) = self.tasks.lock() {
            let buffered: usize =
                revoked.iter().filter_map(|k| tasks.map.get(k)).map(|t| t.engine.buffered()).sum();
            self.metrics.revoked_buffered_records.inc_by(buffered as u64);
        }
        if self.sink.is_transactional() {
            if consumer.assignment_lost() {
                // The group gave these partitions to another member already: nothing done
                // since the last commit may become visible.
                self.abort_transaction("assignment_lost", None);
            } else {
                // One transaction holds every partition's outputs: all are committed.
                self.commit_open_transaction(consumer);
            }
        }
        let Ok(mut tasks) = self.tasks.lock() else { return };
        if !self.sink.is_transactional() {
            if let Err(e) = tasks.snapshot_and_flush(&*self.sink, Some(&revoked)) {
                RevokeFlushFailed { error: &e }.emit(&self.metrics);
            }
            if let Err(e) = tasks.commit(consumer, &*self.sink, CommitMode::Sync, Some(&revoked)) {
                CommitFailed { error: &e }.emit(&self.metrics);
            }
        }
        tasks.rewind.retain(|k| !revoked.contains(k));
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
