//! Per-partition engine tasks and the durability protocol: each input partition's engine
//! and progress ([`Task`]), and the snapshot → close → commit ordering over them
//! ([`Tasks`]), written against [`OutputSink`] and [`Committer`] so that it is unit-tested
//! without a broker.

use crate::api::control::{Durability, DurabilityPromise, NotDurable};
use crate::kafka::rebalance::PipelineContext;
use crate::kafka::sink::{OutRecord, OutputSink, Sink, SinkError, SourceKey, TxnError};
use driftgate_core::codec::changelog;
use driftgate_core::engine::{Engine, EngineConfig, Input};
use driftgate_core::model::heartbeat::{EngineState, Heartbeat};
use driftgate_core::model::pact_change::PactChange;
use driftgate_core::pact::Pact;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::debug;

/// A commit candidate: `position` may be committed once every output numbered below
/// `highwater` is acknowledged.
#[derive(Debug, Clone, Copy)]
struct Mark {
    pub(super) position: i64,
    pub(super) highwater: u64,
    /// The snapshot it closes (see [`Task::snapshots_started`]).
    pub(super) epoch: u64,
}

/// A snapshot's closing meta record, held back until everything before it is acknowledged.
#[derive(Debug)]
struct PendingMeta {
    pub(super) position: i64,
    pub(super) meta: Vec<u8>,
    pub(super) highwater: u64,
    pub(super) epoch: u64,
}

/// One input partition's engine and progress.
pub(super) struct Task {
    pub(super) engine: Engine,
    /// The next offset to read: the engine reflects every record before it.
    pub(super) pushed: Option<i64>,
    /// The position of the last snapshot written to the changelog.
    pub(super) snapshot_at: Option<i64>,
    /// A snapshot whose agent records are written and whose closing meta record waits
    /// until they, and every output before them, are acknowledged.
    pending: Option<PendingMeta>,
    /// Snapshot even if no record was read (an override changed the state).
    pub(super) force_snapshot: bool,
    /// Snapshots begun, and the newest whose closing record is acknowledged.
    pub(super) snapshots_started: u64,
    pub(super) snapshots_durable: u64,
    /// Engine counters already added to the metrics.
    pub(super) last_stats: driftgate_core::engine::Stats,
    marks: VecDeque<Mark>,
    /// The furthest position whose outputs are all acknowledged.
    pub(super) safe: Option<i64>,
    /// The position last committed.
    pub(super) committed: Option<i64>,
    /// The position last tried in a commit (refused, sent, or confirmed).
    sent: Option<i64>,
    /// When the last record reached the engine (or the task began): idleness is measured
    /// from it, and a tick's clock runs from it.
    pub(super) last_input: Instant,
    /// When the last heartbeat was produced.
    pub(super) last_heartbeat: Option<Instant>,
    /// Accepted overrides awaiting durability: the snapshot that must be durable, and the
    /// promise to keep when it is.
    awaiting: Vec<(u64, DurabilityPromise)>,
}

impl Task {
    pub(super) fn fresh(engine: Engine, position: Option<i64>) -> Task {
        let last_stats = engine.stats().clone();
        Task {
            engine,
            pushed: position,
            snapshot_at: position,
            pending: None,
            force_snapshot: false,
            snapshots_started: 0,
            snapshots_durable: 0,
            last_stats,
            marks: VecDeque::new(),
            safe: None,
            committed: None,
            sent: None,
            last_input: Instant::now(),
            last_heartbeat: None,
            awaiting: Vec::new(),
        }
    }

    /// The answer to "is the state as of now durable?": the next snapshot is forced, and the
    /// answer comes once it is acknowledged ([`Tasks::commit`]), or when the partition is
    /// revoked ([`Tasks::remove_revoked`]).
    pub(super) fn await_next_snapshot(&mut self) -> Durability {
        self.force_snapshot = true;
        let (promise, durability) = Durability::pending();
        self.awaiting.push((self.snapshots_started + 1, promise));
        durability
    }

    /// Keeps the promises whose snapshot is durable.
    fn settle_durable(&mut self) {
        let durable = self.snapshots_durable;
        for (_, p) in self.awaiting.extract_if(.., |(ticket, _)| *ticket <= durable) {
            p.keep(Ok(()));
        }
    }

    /// When the next tick would apply: once the partition has been idle for `idle_after`
    /// and its clock has passed the engine's next due time by `lag` (µs); `None` if nothing
    /// is due.
    pub(super) fn next_tick(&self, idle_after: Duration, lag: i64) -> Option<Instant> {
        let (due, max) = (self.engine.next_due()?, self.engine.max_event_time()?);
        let need = Duration::from_micros(due.saturating_add(lag).saturating_sub(max).max(0) as u64);
        Some(self.last_input + need.max(idle_after))
    }

    /// The partition's event-time clock: the largest event time read, plus the wall time
    /// since the last record (see [`Engine::tick`]).
    pub(super) fn clock(&self) -> Option<i64> {
        let quiet = i64::try_from(self.last_input.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.engine.max_event_time().map(|m| m.saturating_add(quiet))
    }

    pub(super) fn heartbeat(
        &self,
        key: &SourceKey,
        instance: &str,
        state: EngineState,
        interval: Duration,
        idle: bool,
    ) -> Heartbeat {
        Heartbeat {
            kind: "heartbeat".into(),
            source_topic: key.0.clone(),
            source_partition: key.1,
            instance: instance.to_string(),
            state,
            wall_time: crate::clock::wall_micros(),
            interval_ms: interval.as_millis() as u64,
            watermark: self.engine.watermark(),
            max_event_time: self.engine.max_event_time(),
            last_offset: self.pushed.map(|p| p - 1),
            position: self.pushed,
            committed: self.committed,
            buffered: self.engine.buffered(),
            idle,
        }
    }

    /// Writes the closing meta record of the pending snapshot once its records, and every
    /// output before them, are acknowledged. Returns whether no snapshot is pending now.
    fn close_if_acked(
        &mut self,
        key: &SourceKey,
        sink: &dyn OutputSink,
        changelog_topic: &str,
    ) -> Result<bool, SinkError> {
        let Some(p) = self.pending.take() else { return Ok(true) };
        if sink.min_unacked(key) < p.highwater {
            self.pending = Some(p);
            return Ok(false);
        }
        let k = changelog::Key::Meta(key.0.clone()).encode();
        sink.send(
            key,
            OutRecord {
                topic: changelog_topic,
                key: &k,
                payload: Some(&p.meta),
                headers: None,
                partition: Some(key.1),
            },
        )?;
        self.marks.push_back(Mark { position: p.position, highwater: sink.next_no(key), epoch: p.epoch });
        debug!(topic = %key.0, partition = key.1, position = p.position, "snapshot closed");
        Ok(true)
    }

    /// Begins a snapshot if the task moved since its last one (or one is forced): writes
    /// its changed agents and returns the position and the encoded meta record that will
    /// close it.
    fn begin_snapshot(
        &mut self,
        key: &SourceKey,
        sink: &dyn OutputSink,
        changelog_topic: &str,
    ) -> Result<Option<(i64, Vec<u8>)>, SinkError> {
        let moved = self.pushed.filter(|p| self.snapshot_at.is_none_or(|s| *p > s));
        let Some(position) = moved.or(self.pushed.filter(|_| self.force_snapshot)) else { return Ok(None) };
        self.force_snapshot = false;
        self.snapshots_started += 1;
        let dirty: Vec<(String, Option<Vec<u8>>)> = self
            .engine
            .take_dirty()
            .into_iter()
            .map(|(id, s)| (id, s.map(changelog::encode_agent)))
            .collect();
        for (agent, value) in &dirty {
            let k = changelog::Key::Agent(key.0.clone(), agent.clone()).encode();
            sink.send(
                key,
                OutRecord {
                    topic: changelog_topic,
                    key: &k,
                    payload: value.as_deref(),
                    headers: None,
                    partition: Some(key.1),
                },
            )?;
        }
        let meta = changelog::encode_meta(&changelog::MetaRecord { position, meta: self.engine.meta() });
        self.snapshot_at = Some(position);
        debug!(topic = %key.0, partition = key.1, position, agents = dirty.len(), "snapshot written");
        Ok(Some((position, meta)))
    }

    pub(super) fn advance(&mut self, min_unacked: u64) {
        while let Some(m) = self.marks.front() {
            if m.highwater > min_unacked {
                break;
            }
            self.safe = Some(self.safe.map_or(m.position, |s| s.max(m.position)));
            self.snapshots_durable = self.snapshots_durable.max(m.epoch);
            self.marks.pop_front();
        }
    }
}

/// Engine tasks by source partition. Owned by the pipeline thread: its loop, and the
/// rebalance callback that runs inside its `poll` (the mutex is there because librdkafka's
/// contexts must be `Sync`; no other thread takes it).
pub(super) struct Tasks {
    pub(super) map: HashMap<SourceKey, Task>,
    pub(super) engine_cfg: EngineConfig,
    pub(super) pacts: Vec<Pact>,
    pub(super) changelog: String,
    /// Exactly-once: partitions whose engines ran ahead of an aborted transaction, to be
    /// restored from the changelog before anything else is read.
    pub(super) rewind: Vec<SourceKey>,
    /// The pact versions in force here, with no agents: validates pact changes and answers
    /// `GET /v1/pacts` whatever partitions are held.
    pub(super) reference: Engine,
    /// Pact changes taken here, newest last: an engine created or restored later catches up
    /// with those it has not applied.
    pub(super) changes: Vec<PactChange>,
}

/// How many pact changes a [`Tasks`] remembers for engines created later.
const CHANGES_KEPT: usize = 256;

impl Tasks {
    pub(super) fn new(engine_cfg: EngineConfig, pacts: Vec<Pact>, changelog: String) -> Tasks {
        let reference = Engine::new(engine_cfg.clone(), pacts.clone());
        Tasks {
            map: HashMap::new(),
            engine_cfg,
            pacts,
            changelog,
            rewind: Vec::new(),
            reference,
            changes: Vec::new(),
        }
    }

    /// Remembers a change taken here (applied to the reference already).
    pub(super) fn remember(&mut self, change: PactChange) {
        self.changes.push(change);
        if self.changes.len() > CHANGES_KEPT {
            self.changes.remove(0);
        }
    }

    /// Brings an engine up to date with the pact changes taken here that it has not applied,
    /// each at the engine's watermark at the latest (it must not arrive late).
    pub(super) fn catch_up(changes: &[PactChange], engine: &mut Engine) {
        for c in changes {
            if engine.has_applied(&c.change_id) {
                continue;
            }
            let mut c = c.clone();
            if let Some(wm) = engine.watermark() {
                c.issued_at = c.issued_at.max(wm);
            }
            engine.push(Input::from(c));
        }
    }

    /// Drops revoked tasks, after their final snapshot and commit. An awaited override is
    /// answered: durable if the revoke's snapshot covered it (the new owner restores it),
    /// else [`NotDurable::Revoked`].
    pub(super) fn remove_revoked(&mut self, revoked: &BTreeSet<SourceKey>) {
        for k in revoked {
            let Some(mut task) = self.map.remove(k) else { continue };
            task.settle_durable();
            for (_, p) in task.awaiting.drain(..) {
                p.keep(Err(NotDurable::Revoked));
            }
        }
    }

    /// The partition's task, made fresh when missing. The pipeline only reads partitions
    /// whose task an assignment made; the tests make theirs here.
    #[cfg(test)]
    pub(super) fn task(&mut self, key: &SourceKey) -> &mut Task {
        let (cfg, pacts, changes) = (&self.engine_cfg, &self.pacts, &self.changes);
        self.map.entry(key.clone()).or_insert_with(|| {
            let mut engine = Engine::new(cfg.clone(), pacts.clone());
            Tasks::catch_up(changes, &mut engine);
            Task::fresh(engine, None)
        })
    }

    /// Writes a snapshot of every task (in `only`) that moved since its last one, in two
    /// steps so that a snapshot in the changelog never runs ahead of the outputs:
    ///
    /// 1. the changed agents are written, and the engine state at that position is encoded
    ///    and held back;
    /// 2. once those records *and every output derived before them* are acknowledged, the
    ///    held meta record is written: it closes the snapshot (restore ignores agent records
    ///    after the last meta) and names the input position it covers;
    /// 3. once the meta record is acknowledged, that position may be committed.
    ///
    /// So after any crash the newest complete snapshot covers only records whose outputs
    /// are all in Kafka, and consumption restarts at its position.
    pub(super) fn snapshot(
        &mut self,
        sink: &dyn OutputSink,
        only: Option<&BTreeSet<SourceKey>>,
    ) -> Result<(), SinkError> {
        for (key, task) in self.map.iter_mut().filter(|(k, _)| only.is_none_or(|o| o.contains(*k))) {
            if !task.close_if_acked(key, sink, &self.changelog)? {
                continue;
            }
            let Some((position, meta)) = task.begin_snapshot(key, sink, &self.changelog)? else { continue };
            task.pending = Some(PendingMeta {
                position,
                meta,
                highwater: sink.next_no(key),
                epoch: task.snapshots_started,
            });
        }
        Ok(())
    }

    /// Exactly-once: writes a whole snapshot of every task that moved, then commits the
    /// transaction with every task's snapshot position as its input offset. Nothing is
    /// held back: the transaction makes the outputs, the snapshot and the offsets visible
    /// together, or none of them. On success every snapshot is durable.
    /// Returns how many partitions' offsets the committed transaction carried (`None`:
    /// nothing was written since the last commit, so there was none to commit).
    pub(super) fn commit_transaction(
        &mut self,
        sink: &dyn OutputSink,
        txn: &dyn Transactor,
    ) -> Result<Option<usize>, CommitError> {
        let mut offsets = Vec::new();
        for (key, task) in self.map.iter_mut() {
            if let Some((_, meta)) = task.begin_snapshot(key, sink, &self.changelog)? {
                let k = changelog::Key::Meta(key.0.clone()).encode();
                let rec = OutRecord {
                    topic: &self.changelog,
                    key: &k,
                    payload: Some(&meta),
                    headers: None,
                    partition: Some(key.1),
                };
                sink.send(key, rec)?;
            }
            // Every held partition's offset, moved or not: the group checks the member's
            // generation on them, so a zombie's transaction (say, of tick outputs alone)
            // cannot commit after its partitions went to another member.
            if let Some(p) = task.snapshot_at {
                offsets.push((key.clone(), p));
            }
        }
        if !txn.commit(&offsets)? {
            return Ok(None);
        }
        for task in self.map.values_mut() {
            task.committed = task.snapshot_at.or(task.committed);
            task.safe = task.committed;
            task.snapshots_durable = task.snapshots_started;
            task.settle_durable();
        }
        Ok(Some(offsets.len()))
    }

    /// Exactly-once, after an aborted transaction: the engines are ahead of what Kafka
    /// holds, so every task must be restored from its last committed snapshot. Answers
    /// the overrides that were waiting for a snapshot that will now never be written, and
    /// returns the partitions to restore.
    pub(super) fn abandon(&mut self) -> Vec<SourceKey> {
        for task in self.map.values_mut() {
            for (_, p) in task.awaiting.drain(..) {
                p.keep(Err(NotDurable::Aborted));
            }
        }
        self.map.keys().cloned().collect()
    }

    /// Whether any task (in `only`) holds a meta record back.
    pub(super) fn has_pending(&self, only: Option<&BTreeSet<SourceKey>>) -> bool {
        self.map.iter().any(|(k, t)| t.pending.is_some() && only.is_none_or(|o| o.contains(k)))
    }

    /// For revoke and shutdown: snapshot, flush, close the snapshot, flush again.
    pub(super) fn snapshot_and_flush(
        &mut self,
        sink: &dyn OutputSink,
        only: Option<&BTreeSet<SourceKey>>,
    ) -> Result<(), SinkError> {
        self.snapshot(sink, only)?;
        sink.flush(Duration::from_secs(30))?;
        if self.has_pending(only) {
            self.snapshot(sink, only)?;
            sink.flush(Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Commits every task's safe position that moved; `only` restricts to some partitions.
    pub(super) fn commit(
        &mut self,
        consumer: &dyn Committer,
        sink: &dyn OutputSink,
        mode: CommitMode,
        only: Option<&BTreeSet<SourceKey>>,
    ) -> Result<(), KafkaError> {
        self.commit_moved(consumer, sink, mode, only, false)
    }

    /// Between commit intervals: closes the snapshots whose records (and the outputs before
    /// them) are all acknowledged, and commits, asynchronously and once, the positions whose
    /// closing record is. So a snapshot is durable, and its position committed, within
    /// milliseconds of its acknowledgements rather than at the next intervals: with one
    /// interval between snapshots, committed offsets trail the input by about one interval
    /// instead of three. A task with an override awaiting durability begins its snapshot
    /// here at once, so the override is answered within the acknowledgements' round trips.
    /// Resending an unconfirmed commit stays with [`Tasks::commit`], once per interval.
    pub(super) fn settle(
        &mut self,
        consumer: &dyn Committer,
        sink: &dyn OutputSink,
    ) -> Result<(), SettleError> {
        for (key, task) in self.map.iter_mut() {
            task.close_if_acked(key, sink, &self.changelog)?;
        }
        // An override waiting for its answer does not wait for the interval either.
        let awaited: BTreeSet<SourceKey> = self
            .map
            .iter()
            .filter(|(_, t)| t.pending.is_none() && t.force_snapshot && !t.awaiting.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        if !awaited.is_empty() {
            self.snapshot(sink, Some(&awaited))?;
        }
        self.commit_moved(consumer, sink, CommitMode::Async, None, true)?;
        Ok(())
    }

    /// Commits each task's safe position that is ahead of its committed one (and, `unsent`,
    /// of the one last sent).
    fn commit_moved(
        &mut self,
        consumer: &dyn Committer,
        sink: &dyn OutputSink,
        mode: CommitMode,
        only: Option<&BTreeSet<SourceKey>>,
        unsent: bool,
    ) -> Result<(), KafkaError> {
        let mut moved = Vec::new();
        for (key, task) in self.map.iter_mut().filter(|(k, _)| only.is_none_or(|o| o.contains(*k))) {
            task.advance(sink.min_unacked(key));
            task.settle_durable();
            let ahead = |p: &i64| {
                task.committed.is_none_or(|c| *p > c) && (!unsent || task.sent.is_none_or(|s| *p > s))
            };
            if let Some(pos) = task.safe.filter(ahead) {
                // Tried, even if refused: settling tries a position once (a refusal
                // mid-rebalance would otherwise be retried, and reported, every turn), and
                // the interval's commit retries.
                task.sent = Some(pos);
                moved.push((key.clone(), pos));
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        consumer.commit_offsets(&moved, mode)?;
        // An async commit is only sent: it counts once the broker confirms it (see
        // `confirm_commits`); until then each interval sends it again.
        if matches!(mode, CommitMode::Sync) {
            for (key, pos) in moved {
                self.confirm(&key, pos);
            }
        }
        Ok(())
    }

    /// Records a commit the broker acknowledged.
    pub(super) fn confirm(&mut self, key: &SourceKey, pos: i64) {
        if let Some(t) = self.map.get_mut(key) {
            t.committed = Some(t.committed.map_or(pos, |c| c.max(pos)));
            debug!(topic = %key.0, partition = key.1, offset = pos, "committed");
        }
    }
}

/// Offset commits: the consumer group in production, a recording fake in unit tests.
pub(super) trait Committer {
    /// Commits `offsets` (the next offset to read, per partition).
    fn commit_offsets(&self, offsets: &[(SourceKey, i64)], mode: CommitMode) -> Result<(), KafkaError>;
}

/// Why settling between intervals stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum SettleError {
    /// A closing meta record could not be enqueued.
    #[error(transparent)]
    Send(#[from] SinkError),
    /// The commit was refused.
    #[error(transparent)]
    Commit(#[from] KafkaError),
}

/// Why an exactly-once commit did not happen.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommitError {
    /// A snapshot record could not be enqueued.
    #[error(transparent)]
    Send(#[from] SinkError),
    /// The transaction did not commit.
    #[error(transparent)]
    Txn(#[from] TxnError),
}

/// Exactly-once commits: the transactional producer with the consumer's group metadata in
/// production, a recording fake in unit tests.
pub(super) trait Transactor {
    /// Commits the open transaction with `offsets` (the next offset to read, per
    /// partition); returns whether one was open.
    fn commit(&self, offsets: &[(SourceKey, i64)]) -> Result<bool, TxnError>;
}

/// The production [`Transactor`]: the offsets go to the group through the producer's
/// transaction, fenced by the consumer's generation (a member that was kicked out cannot
/// commit).
pub(super) struct GroupTransaction<'a> {
    pub(super) sink: &'a Sink,
    pub(super) consumer: &'a BaseConsumer<PipelineContext>,
}

impl Transactor for GroupTransaction<'_> {
    fn commit(&self, offsets: &[(SourceKey, i64)]) -> Result<bool, TxnError> {
        // The broker fences a stale generation, but takes offsets sent with no generation at
        // all (as from a producer outside any group). librdkafka's metadata reads that way
        // once it has noticed a session timeout and before it has rejoined, so a member
        // that lost its partitions could commit: the generation must be a real one, the
        // same before and after the metadata is taken (generations only grow, so the copy
        // in between holds it too).
        let before = generation(self.consumer).ok_or(TxnError::NotInGroup)?;
        let group = self.consumer.group_metadata().ok_or(TxnError::NotInGroup)?;
        if generation(self.consumer) != Some(before) {
            return Err(TxnError::NotInGroup);
        }
        self.sink.commit_transaction(offsets, &group)
    }
}

/// The consumer's group generation as librdkafka holds it now; `None` when it is not a
/// member (no generation, or no member id).
fn generation(consumer: &BaseConsumer<PipelineContext>) -> Option<i32> {
    use rdkafka::bindings as rd;
    // SAFETY: the client pointer is the live consumer's; librdkafka returns a copy of its
    // group metadata (or null), which is read and destroyed here and not kept.
    unsafe {
        let md = rd::rd_kafka_consumer_group_metadata(consumer.client().native_ptr());
        if md.is_null() {
            return None;
        }
        let generation = rd::rd_kafka_consumer_group_metadata_generation_id(md);
        let member = rd::rd_kafka_consumer_group_metadata_member_id(md);
        let has_member = !member.is_null() && *member != 0;
        rd::rd_kafka_consumer_group_metadata_destroy(md);
        (generation >= 0 && has_member).then_some(generation)
    }
}

impl Committer for BaseConsumer<PipelineContext> {
    fn commit_offsets(&self, offsets: &[(SourceKey, i64)], mode: CommitMode) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), pos) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*pos))?;
        }
        self.commit(&tpl, mode)
    }
}

#[cfg(test)]
mod tests {
    //! The durability protocol without a broker: a sink that numbers records and is
    //! acknowledged by hand, and a committer that records (or refuses) commits.

    use super::*;
    use std::cell::RefCell;

    /// `(source, number, topic, key)` of a record sent.
    type Sent = (SourceKey, u64, String, Vec<u8>);

    #[derive(Default)]
    struct FakeSink {
        sent: RefCell<Vec<Sent>>,
        next: RefCell<HashMap<SourceKey, u64>>,
        unacked: RefCell<HashMap<SourceKey, BTreeSet<u64>>>,
    }

    impl FakeSink {
        fn ack(&self, source: &SourceKey, no: u64) {
            self.unacked.borrow_mut().entry(source.clone()).or_default().remove(&no);
        }
        fn topics(&self) -> Vec<String> {
            self.sent.borrow().iter().map(|(_, _, t, _)| t.clone()).collect()
        }
    }

    impl OutputSink for FakeSink {
        fn send(&self, source: &SourceKey, rec: OutRecord<'_>) -> Result<u64, SinkError> {
            let mut next = self.next.borrow_mut();
            let n = next.entry(source.clone()).or_insert(0);
            let no = *n;
            *n += 1;
            self.unacked.borrow_mut().entry(source.clone()).or_default().insert(no);
            self.sent.borrow_mut().push((source.clone(), no, rec.topic.to_string(), rec.key.to_vec()));
            Ok(no)
        }
        fn next_no(&self, source: &SourceKey) -> u64 {
            self.next.borrow().get(source).copied().unwrap_or(0)
        }
        fn min_unacked(&self, source: &SourceKey) -> u64 {
            self.unacked.borrow().get(source).and_then(|s| s.first().copied()).unwrap_or(u64::MAX)
        }
        fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct FakeCommitter {
        commits: RefCell<Vec<Vec<(SourceKey, i64)>>>,
        refuse: RefCell<bool>,
    }

    impl Committer for FakeCommitter {
        fn commit_offsets(&self, offsets: &[(SourceKey, i64)], _mode: CommitMode) -> Result<(), KafkaError> {
            if *self.refuse.borrow() {
                return Err(KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::RebalanceInProgress,
                ));
            }
            self.commits.borrow_mut().push(offsets.to_vec());
            Ok(())
        }
    }

    /// Records exactly-once commits (or refuses them, as an aborted transaction).
    #[derive(Default)]
    struct FakeTransactor {
        commits: RefCell<Vec<Vec<(SourceKey, i64)>>>,
        refuse: RefCell<bool>,
    }

    impl Transactor for FakeTransactor {
        fn commit(&self, offsets: &[(SourceKey, i64)]) -> Result<bool, TxnError> {
            if *self.refuse.borrow() {
                return Err(TxnError::NotInGroup);
            }
            self.commits.borrow_mut().push(offsets.to_vec());
            Ok(true)
        }
    }

    fn key() -> SourceKey {
        ("in".to_string(), 0)
    }

    /// One partition that has read up to offset 10, with one changed agent and one output
    /// (say, an enforcement event) already sent for it as record 0.
    fn setup(sink: &FakeSink) -> Tasks {
        let mut tasks = Tasks::new(EngineConfig::default(), Vec::new(), "changelog".into());
        let task = tasks.task(&key());
        task.engine.mark_dirty(["a1".to_string()]);
        task.pushed = Some(10);
        let out = OutRecord {
            topic: "enforcement",
            key: b"a1",
            payload: Some(b"{}"),
            headers: None,
            partition: None,
        };
        sink.send(&key(), out).unwrap();
        tasks
    }

    #[test]
    fn a_snapshot_closes_only_after_everything_before_it_is_acknowledged_and_the_commit_follows_the_close() {
        let (sink, group) = (FakeSink::default(), FakeCommitter::default());
        let mut tasks = setup(&sink);
        let meta_key = changelog::Key::Meta("in".into()).encode();
        tasks.snapshot(&sink, None).unwrap();
        assert_eq!(sink.topics(), ["enforcement", "changelog"], "the agent record; the meta record is held");
        // The agent record (1) is acknowledged, the earlier output (0) is not: still held.
        sink.ack(&key(), 1);
        tasks.snapshot(&sink, None).unwrap();
        assert_eq!(sink.topics().len(), 2);
        tasks.commit(&group, &sink, CommitMode::Sync, None).unwrap();
        assert!(group.commits.borrow().is_empty(), "nothing is committed before the snapshot closes");
        sink.ack(&key(), 0);
        tasks.snapshot(&sink, None).unwrap();
        let sent = sink.sent.borrow().clone();
        assert_eq!(
            (sent.len(), sent[2].1, &sent[2].3),
            (3, 2, &meta_key),
            "closed by the meta record, as record 2"
        );
        // Closed but the meta record not yet acknowledged: no commit.
        tasks.commit(&group, &sink, CommitMode::Sync, None).unwrap();
        assert!(group.commits.borrow().is_empty());
        sink.ack(&key(), 2);
        tasks.commit(&group, &sink, CommitMode::Sync, None).unwrap();
        assert_eq!(*group.commits.borrow(), [vec![(key(), 10)]]);
        assert_eq!(tasks.map[&key()].committed, Some(10));
        assert_eq!(tasks.map[&key()].snapshots_durable, 1);
        // Nothing moved since: no second commit.
        tasks.commit(&group, &sink, CommitMode::Sync, None).unwrap();
        assert_eq!(group.commits.borrow().len(), 1);
    }

    #[test]
    fn between_intervals_a_snapshot_closes_and_commits_once_as_soon_as_it_is_acknowledged() {
        let (sink, group) = (FakeSink::default(), FakeCommitter::default());
        let mut tasks = setup(&sink);
        let durable = tasks.task(&key()).await_next_snapshot();
        tasks.snapshot(&sink, None).unwrap();
        // Settling begins nothing and closes nothing unacknowledged.
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(sink.topics(), ["enforcement", "changelog"]);
        sink.ack(&key(), 1);
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(sink.topics().len(), 2, "the output before the snapshot is not acknowledged");
        sink.ack(&key(), 0);
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(sink.topics(), ["enforcement", "changelog", "changelog"], "closed");
        assert!(group.commits.borrow().is_empty(), "the closing record is not acknowledged");
        sink.ack(&key(), 2);
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(*group.commits.borrow(), [vec![(key(), 10)]]);
        assert_eq!(durable.wait(Duration::ZERO), Some(Ok(())));
        // Sent once: until it is confirmed, only the interval's commit sends it again.
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(group.commits.borrow().len(), 1);
        tasks.commit(&group, &sink, CommitMode::Async, None).unwrap();
        assert_eq!(group.commits.borrow().len(), 2);
        // A refused commit is tried once by settling, and again by the interval's commit.
        tasks.task(&key()).pushed = Some(15);
        tasks.task(&key()).engine.mark_dirty(["a3".to_string()]);
        tasks.snapshot(&sink, None).unwrap();
        sink.ack(&key(), 3);
        tasks.settle(&group, &sink).unwrap();
        sink.ack(&key(), 4);
        *group.refuse.borrow_mut() = true;
        assert!(tasks.settle(&group, &sink).is_err());
        *group.refuse.borrow_mut() = false;
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(group.commits.borrow().len(), 2, "not tried again between intervals");
        tasks.commit(&group, &sink, CommitMode::Async, None).unwrap();
        assert_eq!(group.commits.borrow().last(), Some(&vec![(key(), 15)]));
        // A newer position is sent by the next settle that finds it safe.
        tasks.task(&key()).pushed = Some(20);
        tasks.task(&key()).engine.mark_dirty(["a2".to_string()]);
        tasks.snapshot(&sink, None).unwrap();
        sink.ack(&key(), 5);
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(sink.topics().len(), 7, "the agent record (5) and its closing record (6)");
        sink.ack(&key(), 6);
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(group.commits.borrow().last(), Some(&vec![(key(), 20)]));
    }

    #[test]
    fn an_awaited_override_is_snapshotted_between_intervals_and_answered_once_acknowledged() {
        let (sink, group) = (FakeSink::default(), FakeCommitter::default());
        let mut tasks = setup(&sink);
        // Nothing awaited: settling begins no snapshot.
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(sink.topics(), ["enforcement"]);
        let durable = tasks.task(&key()).await_next_snapshot();
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(sink.topics(), ["enforcement", "changelog"], "begun at once");
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(sink.topics().len(), 2, "one snapshot under way, not another");
        (0..2).for_each(|n| sink.ack(&key(), n));
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(durable.wait(Duration::ZERO), None, "closed, the closing record not acknowledged");
        sink.ack(&key(), 2);
        tasks.settle(&group, &sink).unwrap();
        assert_eq!(durable.wait(Duration::ZERO), Some(Ok(())));
        assert_eq!(*group.commits.borrow(), [vec![(key(), 10)]]);
    }

    #[test]
    fn a_torn_snapshot_is_never_closed_and_nothing_is_committed() {
        let (sink, group) = (FakeSink::default(), FakeCommitter::default());
        let mut tasks = setup(&sink);
        tasks.snapshot(&sink, None).unwrap();
        sink.ack(&key(), 0);
        // The agent record (1) never gets its acknowledgement (the instance dies).
        for _ in 0..3 {
            tasks.snapshot(&sink, None).unwrap();
            tasks.commit(&group, &sink, CommitMode::Sync, None).unwrap();
        }
        assert_eq!(sink.topics(), ["enforcement", "changelog"]);
        assert!(tasks.has_pending(None));
        assert!(group.commits.borrow().is_empty());
        assert_eq!(tasks.map[&key()].committed, None);
    }

    #[test]
    fn a_refused_commit_is_retried_with_the_same_position_and_an_async_one_waits_for_confirmation() {
        let (sink, group) = (FakeSink::default(), FakeCommitter::default());
        let mut tasks = setup(&sink);
        tasks.snapshot(&sink, None).unwrap();
        sink.ack(&key(), 0);
        sink.ack(&key(), 1);
        tasks.snapshot(&sink, None).unwrap();
        sink.ack(&key(), 2);
        *group.refuse.borrow_mut() = true;
        assert!(tasks.commit(&group, &sink, CommitMode::Sync, None).is_err());
        assert_eq!(tasks.map[&key()].committed, None, "a refused commit confirms nothing");
        *group.refuse.borrow_mut() = false;
        tasks.commit(&group, &sink, CommitMode::Async, None).unwrap();
        assert_eq!(*group.commits.borrow(), [vec![(key(), 10)]]);
        assert_eq!(tasks.map[&key()].committed, None, "sent, not yet confirmed by the broker");
        tasks.commit(&group, &sink, CommitMode::Async, None).unwrap();
        assert_eq!(group.commits.borrow().len(), 2, "unconfirmed: sent again");
        tasks.confirm(&key(), 10);
        tasks.commit(&group, &sink, CommitMode::Async, None).unwrap();
        assert_eq!(group.commits.borrow().len(), 2, "confirmed: not sent again");
        assert_eq!(tasks.map[&key()].committed, Some(10));
    }

    #[test]
    fn an_awaited_override_is_answered_when_the_snapshot_after_it_is_acknowledged() {
        let (sink, group) = (FakeSink::default(), FakeCommitter::default());
        let mut tasks = setup(&sink);
        let durable = tasks.task(&key()).await_next_snapshot();
        let not_yet = || durable.wait(Duration::ZERO);
        tasks.snapshot(&sink, None).unwrap();
        tasks.commit(&group, &sink, CommitMode::Sync, None).unwrap();
        assert_eq!(not_yet(), None, "written, not acknowledged");
        sink.ack(&key(), 0);
        sink.ack(&key(), 1);
        tasks.snapshot(&sink, None).unwrap();
        tasks.commit(&group, &sink, CommitMode::Sync, None).unwrap();
        assert_eq!(not_yet(), None, "closed, the closing record not acknowledged");
        sink.ack(&key(), 2);
        tasks.commit(&group, &sink, CommitMode::Sync, None).unwrap();
        assert_eq!(durable.wait(Duration::ZERO), Some(Ok(())));
    }

    #[test]
    fn an_awaited_override_is_answered_at_revoke_durable_if_the_revokes_snapshot_covered_it() {
        let revoked = BTreeSet::from([key()]);
        let (sink, group) = (FakeSink::default(), FakeCommitter::default());
        // The revoke's final snapshot is acknowledged before the task is dropped.
        let mut tasks = setup(&sink);
        let covered = tasks.task(&key()).await_next_snapshot();
        tasks.snapshot(&sink, None).unwrap();
        (0..2).for_each(|n| sink.ack(&key(), n));
        tasks.snapshot(&sink, None).unwrap();
        sink.ack(&key(), 2);
        tasks.commit(&group, &sink, CommitMode::Sync, Some(&revoked)).unwrap();
        // One more, awaited after that snapshot: nothing covers it when the partition goes.
        let late = tasks.task(&key()).await_next_snapshot();
        tasks.remove_revoked(&revoked);
        assert!(tasks.map.is_empty());
        assert_eq!(covered.wait(Duration::ZERO), Some(Ok(())), "the new owner restores it");
        assert_eq!(late.wait(Duration::ZERO), Some(Err(NotDurable::Revoked)));
        // A task dropped without an answer (the pipeline stopped) reads as stopped.
        let mut tasks = setup(&sink);
        let dropped = tasks.task(&key()).await_next_snapshot();
        drop(tasks);
        assert_eq!(dropped.wait(Duration::ZERO), Some(Err(NotDurable::Stopped)));
    }

    #[test]
    fn an_exactly_once_commit_writes_the_whole_snapshot_at_once_and_carries_its_position_as_the_offset() {
        let (sink, txn) = (FakeSink::default(), FakeTransactor::default());
        let mut tasks = setup(&sink);
        let durable = tasks.task(&key()).await_next_snapshot();
        // Nothing is acknowledged: in a transaction, nothing needs to be.
        assert_eq!(tasks.commit_transaction(&sink, &txn).unwrap(), Some(1));
        let meta_key = changelog::Key::Meta("in".into()).encode();
        assert_eq!(sink.topics(), ["enforcement", "changelog", "changelog"]);
        assert_eq!(sink.sent.borrow()[2].3, meta_key, "closed by the meta record in the same transaction");
        assert_eq!(*txn.commits.borrow(), [vec![(key(), 10)]]);
        let t = &tasks.map[&key()];
        assert_eq!((t.committed, t.snapshots_durable), (Some(10), 1));
        assert_eq!(durable.wait(Duration::ZERO), Some(Ok(())), "durable once the transaction commits");
        // Nothing moved: no snapshot, but the same offset again, so that the group's
        // generation check fences the commit of a member that lost the partition.
        assert_eq!(tasks.commit_transaction(&sink, &txn).unwrap(), Some(1));
        assert_eq!(sink.topics().len(), 3);
        assert_eq!(txn.commits.borrow()[1], [(key(), 10)]);
        // Moved on: the next snapshot and offset.
        tasks.task(&key()).pushed = Some(25);
        tasks.commit_transaction(&sink, &txn).unwrap();
        assert_eq!(txn.commits.borrow()[2], [(key(), 25)]);
    }

    #[test]
    fn an_aborted_transaction_confirms_nothing_and_its_overrides_are_answered_as_aborted() {
        let (sink, txn) = (FakeSink::default(), FakeTransactor::default());
        let mut tasks = setup(&sink);
        let durable = tasks.task(&key()).await_next_snapshot();
        *txn.refuse.borrow_mut() = true;
        assert!(matches!(tasks.commit_transaction(&sink, &txn), Err(CommitError::Txn(TxnError::NotInGroup))));
        let t = &tasks.map[&key()];
        assert_eq!((t.committed, t.snapshots_durable), (None, 0), "nothing of it is durable");
        assert_eq!(durable.wait(Duration::ZERO), None, "not answered by the failure itself");
        assert_eq!(tasks.abandon(), [key()], "every partition goes back to its last commit");
        assert_eq!(durable.wait(Duration::ZERO), Some(Err(NotDurable::Aborted)));
    }
}
