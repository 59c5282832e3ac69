//! Per-partition engine tasks and the durability protocol: each input partition's engine
//! and progress ([`Task`]), and the snapshot → close → commit ordering over them
//! ([`Tasks`]), written against [`OutputSink`] and [`Committer`] so that it is unit-tested
//! without a broker.

use crate::kafka::pipeline::PipelineContext;
use crate::kafka::sink::{OutRecord, OutputSink, SinkError, SourceKey};
use driftgate_core::codec::changelog;
use driftgate_core::engine::{Engine, EngineConfig};
use driftgate_core::model::heartbeat::{EngineState, Heartbeat};
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
    /// When the last record reached the engine (or the task began): idleness is measured
    /// from it, and a tick's clock runs from it.
    pub(super) last_input: Instant,
    /// When the last heartbeat was produced.
    pub(super) last_heartbeat: Option<Instant>,
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
            last_input: Instant::now(),
            last_heartbeat: None,
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

/// Engine tasks by source partition; shared between the loop and the rebalance callback.
pub(super) struct Tasks {
    pub(super) map: HashMap<SourceKey, Task>,
    pub(super) engine_cfg: EngineConfig,
    pub(super) pacts: Vec<Pact>,
    pub(super) changelog: String,
    /// Accepted overrides whose durability an API caller may still ask about: agent →
    /// ticket (the snapshot that must be durable).
    pub(super) awaiting: HashMap<String, u64>,
    /// For overrides whose partition was revoked while awaited: whether the revoke's own
    /// snapshot made them durable (the new owner restores them) or not.
    pub(super) settled: HashMap<String, bool>,
}

/// Settled outcomes kept at most (callers that never ask again are forgotten).
const MAX_SETTLED: usize = 10_000;

impl Tasks {
    pub(super) fn new(engine_cfg: EngineConfig, pacts: Vec<Pact>, changelog: String) -> Tasks {
        Tasks {
            map: HashMap::new(),
            engine_cfg,
            pacts,
            changelog,
            awaiting: HashMap::new(),
            settled: HashMap::new(),
        }
    }

    /// Whether the override behind `ticket` for `agent` is durable: `None` while not yet,
    /// an error if its partition was revoked before it was.
    pub(super) fn override_durable(&mut self, agent: &str, ticket: u64) -> Option<Result<(), String>> {
        let revoked = || {
            Err("the agent's partition was revoked before the override became durable; retry against its new owner".to_string())
        };
        match self.map.values().find(|t| t.engine.agent(agent).is_some()) {
            Some(t) if t.snapshots_durable >= ticket => {
                self.awaiting.remove(agent);
                Some(Ok(()))
            }
            Some(_) => None,
            None => match self.settled.remove(agent) {
                Some(true) => Some(Ok(())),
                _ => Some(revoked()),
            },
        }
    }

    /// Drops revoked tasks, after their final snapshot and commit. An awaited override is
    /// settled first: durable if the revoke's snapshot covered it.
    pub(super) fn remove_revoked(&mut self, revoked: &BTreeSet<SourceKey>) {
        let settle: Vec<(String, bool)> = self
            .awaiting
            .iter()
            .filter_map(|(agent, ticket)| {
                let task = revoked
                    .iter()
                    .filter_map(|k| self.map.get(k))
                    .find(|t| t.engine.agent(agent).is_some())?;
                Some((agent.clone(), task.snapshots_durable >= *ticket))
            })
            .collect();
        if self.settled.len() + settle.len() > MAX_SETTLED {
            self.settled.clear();
        }
        for (agent, durable) in settle {
            self.awaiting.remove(&agent);
            self.settled.insert(agent, durable);
        }
        for k in revoked {
            self.map.remove(k);
        }
    }

    pub(super) fn task(&mut self, key: &SourceKey) -> &mut Task {
        let (cfg, pacts) = (&self.engine_cfg, &self.pacts);
        self.map
            .entry(key.clone())
            .or_insert_with(|| Task::fresh(Engine::new(cfg.clone(), pacts.clone()), None))
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
            if let Some(p) = task.pending.take() {
                if sink.min_unacked(key) < p.highwater {
                    task.pending = Some(p);
                    continue;
                }
                let k = changelog::Key::Meta(key.0.clone()).encode();
                sink.send(
                    key,
                    OutRecord {
                        topic: &self.changelog,
                        key: &k,
                        payload: Some(&p.meta),
                        headers: None,
                        partition: Some(key.1),
                    },
                )?;
                task.marks.push_back(Mark {
                    position: p.position,
                    highwater: sink.next_no(key),
                    epoch: p.epoch,
                });
                debug!(topic = %key.0, partition = key.1, position = p.position, "snapshot closed");
            }
            let moved = task.pushed.filter(|p| task.snapshot_at.is_none_or(|s| *p > s));
            let Some(position) = moved.or(task.pushed.filter(|_| task.force_snapshot)) else { continue };
            task.force_snapshot = false;
            task.snapshots_started += 1;
            let dirty: Vec<(String, Option<Vec<u8>>)> = task
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
                        topic: &self.changelog,
                        key: &k,
                        payload: value.as_deref(),
                        headers: None,
                        partition: Some(key.1),
                    },
                )?;
            }
            let meta = changelog::encode_meta(&changelog::MetaRecord { position, meta: task.engine.meta() });
            task.pending = Some(PendingMeta {
                position,
                meta,
                highwater: sink.next_no(key),
                epoch: task.snapshots_started,
            });
            task.snapshot_at = Some(position);
            debug!(topic = %key.0, partition = key.1, position, agents = dirty.len(), "snapshot written");
        }
        Ok(())
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
        let mut moved = Vec::new();
        for (key, task) in self.map.iter_mut().filter(|(k, _)| only.is_none_or(|o| o.contains(*k))) {
            task.advance(sink.min_unacked(key));
            if let Some(pos) = task.safe.filter(|p| task.committed.is_none_or(|c| *p > c)) {
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
    /// A task holding agent `a1` (known by an override), whose snapshots up to `durable`
    /// are durable.
    fn holding_a1(durable: u64) -> Tasks {
        use driftgate_core::engine::Input;
        use driftgate_core::model::lane::{Lane, Scope};
        use driftgate_core::model::overrides::{OverrideKind, OverrideRequest};
        let mut tasks = Tasks::new(EngineConfig::default(), Vec::new(), "changelog".into());
        let task = tasks.task(&key());
        task.engine.push(Input::Override(OverrideRequest {
            override_id: "o1".into(),
            agent_id: "a1".into(),
            scope: Scope::All,
            kind: OverrideKind::Tighten,
            lane: Some(Lane::Watch),
            clause_id: None,
            principal: "p".into(),
            reason: "r".into(),
            ticket: "t".into(),
            issued_at: 1_000_000,
            expires_at: Some(61_000_000),
            expected_seq: Some(0),
        }));
        task.engine.flush();
        assert!(task.engine.agent("a1").is_some());
        task.snapshots_durable = durable;
        tasks.awaiting.insert("a1".into(), 2);
        tasks
    }

    #[test]
    fn an_awaited_override_made_durable_by_the_revoke_is_reported_durable_after_it() {
        let revoked = BTreeSet::from([key()]);
        let mut before = holding_a1(1);
        assert_eq!(before.override_durable("a1", 2), None, "snapshot 2 not yet durable");
        // The revoke's final snapshot (2) is durable before the task is dropped.
        let mut tasks = holding_a1(2);
        tasks.remove_revoked(&revoked);
        assert!(tasks.map.is_empty());
        assert_eq!(tasks.override_durable("a1", 2), Some(Ok(())), "the new owner restores it");
        // Not durable when the partition went: the caller is told to retry elsewhere.
        before.remove_revoked(&revoked);
        assert!(matches!(before.override_durable("a1", 2), Some(Err(m)) if m.contains("revoked")));
        // A settled outcome is answered once; an agent never awaited is "revoked".
        assert!(matches!(tasks.override_durable("a1", 2), Some(Err(_))));
        assert!(tasks.awaiting.is_empty() && tasks.settled.is_empty());
    }
}
