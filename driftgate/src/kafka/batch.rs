//! A turn's records, polled together and evaluated one partition per worker.
//!
//! A batch is the records one turn of the loop polled (up to `kafka.max_batch`). Its
//! records are grouped by partition into [`Lane`]s; each lane is decoded, evaluated and
//! rendered in order on one worker thread, and the lanes run side by side. The pipeline
//! thread then produces every lane's outputs and dead letters, in each lane's order.
//!
//! Nothing else changes: a partition's records still reach its engine in offset order,
//! its position advances record by record as before, and snapshots and commits happen
//! between batches, after the batch's outputs are handed to the producer.

use crate::kafka::decode::{DecodeError, Decoder, LastReaders};
use crate::kafka::emitter::{Emitter, Origin, Rendered};
use crate::kafka::pipeline::PipelineError;
use crate::kafka::sink::SourceKey;
use crate::kafka::tasks::Task;
use crate::obs::events::{BufferedInputsLost, InternalEvent};
use crate::obs::metrics::Metrics;
use driftgate_core::engine::Input;
use driftgate_core::model::telemetry::Telemetry;
use rayon_core::{ThreadPool, ThreadPoolBuilder};
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::time::Instant;
use tracing::debug;

/// Batches below this many records are evaluated on the pipeline thread alone: starting a
/// worker costs more than it saves.
pub(super) const PARALLEL_MIN_RECORDS: usize = 32;

/// Where a polled record comes from.
pub(super) trait Sourced {
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    /// Whether it comes from `topic` (asked of every record of a batch).
    fn is_topic(&self, topic: &str) -> bool {
        self.topic() == topic
    }
}

impl Sourced for rdkafka::message::BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        rdkafka::Message::topic(self)
    }
    fn partition(&self) -> i32 {
        rdkafka::Message::partition(self)
    }
}

/// A polled input record, however it was polled: what the lanes and the dead-letter
/// topic read of it.
pub(super) trait InputRecord: Sourced {
    fn offset(&self) -> i64;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    /// The Kafka timestamp, µs.
    fn record_time(&self) -> Option<i64>;
}

impl InputRecord for rdkafka::message::BorrowedMessage<'_> {
    fn offset(&self) -> i64 {
        rdkafka::Message::offset(self)
    }
    fn key(&self) -> Option<&[u8]> {
        rdkafka::Message::key(self)
    }
    fn payload(&self) -> Option<&[u8]> {
        rdkafka::Message::payload(self)
    }
    fn record_time(&self) -> Option<i64> {
        rdkafka::Message::timestamp(self).to_millis().map(|ms| ms.saturating_mul(1000))
    }
}

fn is_from<M: Sourced>(m: &M, key: &SourceKey) -> bool {
    m.partition() == key.1 && m.is_topic(&key.0)
}

/// Drops the polled records of partitions a rebalance revoked or assigned while the
/// batch was being polled. They are not processed: a revoked partition's commit covers
/// only what its engine read, so its new owner reads them; a partition assigned again
/// starts over from its restored position, which lies at or before them.
pub(super) fn drop_touched<M: Sourced>(batch: &mut Vec<M>, touched: &BTreeSet<SourceKey>) -> usize {
    let before = batch.len();
    batch.retain(|m| !touched.iter().any(|k| is_from(m, k)));
    before - batch.len()
}

/// The batch's records by partition, partitions in the order they first appear: each
/// key with the indexes of its records, in poll order (which is offset order).
pub(super) fn by_partition<M: Sourced>(batch: &[M]) -> Vec<(SourceKey, Vec<usize>)> {
    let mut lanes: Vec<(SourceKey, Vec<usize>)> = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        // A batch holds a handful of partitions: a scan beats hashing a String key.
        match lanes.iter_mut().find(|(k, _)| is_from(m, k)) {
            Some((_, idx)) => idx.push(i),
            None => lanes.push(((m.topic().to_string(), m.partition()), vec![i])),
        }
    }
    lanes
}

/// Splits lanes of the given sizes over at most `workers` workers, largest first onto the
/// least loaded (within 4/3 of the best split). Each worker's lane indexes, none empty.
pub(super) fn spread(sizes: &[usize], workers: usize) -> Vec<Vec<usize>> {
    let workers = workers.clamp(1, sizes.len().max(1));
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut bins: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); workers];
    for i in order {
        if let Some(bin) = bins.iter_mut().min_by_key(|(load, _)| *load) {
            bin.0 += sizes[i];
            bin.1.push(i);
        }
    }
    bins.into_iter().map(|(_, lanes)| lanes).filter(|l| !l.is_empty()).collect()
}

/// One polled record, as a lane reads it.
#[derive(Clone, Copy)]
pub(super) struct Polled<'m> {
    /// Its place in the batch.
    pub(super) index: usize,
    pub(super) offset: i64,
    pub(super) payload: Option<&'m [u8]>,
    /// The Kafka timestamp, µs.
    pub(super) record_time: Option<i64>,
}

/// What one record came to.
pub(super) enum Step {
    /// Not evaluated: the state already covers it.
    Skipped,
    /// Evaluated; its outputs, rendered (usually none).
    Evaluated(Vec<Rendered>),
    /// Malformed: dead-lettered with this reason.
    Rejected { code: &'static str, detail: String },
    /// A dependency (the schema registry) is unreachable. Nothing is wrong with the record:
    /// the partition is read again from it after a pause, so the lane stops here.
    Unavailable(String),
}

/// A partition's share of a batch, and what became of each record.
pub(super) struct Lane<'t, 'm> {
    pub(super) key: SourceKey,
    pub(super) task: &'t mut Task,
    pub(super) records: Vec<Polled<'m>>,
    /// By record, in order; shorter than `records` when it stopped at an unavailable one.
    pub(super) steps: Vec<(Polled<'m>, Step)>,
    /// Records that decoded.
    pub(super) decoded: u64,
}

/// What a worker needs besides its lanes; shared by every worker.
pub(super) struct Evaluator<'a> {
    pub(super) decoder: &'a Decoder,
    pub(super) emitter: &'a Emitter,
    pub(super) metrics: &'a Metrics,
    /// When the batch began: when its records reached their engines, for idleness.
    pub(super) started: Instant,
    /// The threads beside the calling one; `None`: everything on the calling thread, and
    /// records freed where they are done with.
    pub(super) helpers: Option<&'a Helpers>,
}

/// The threads beside the pipeline thread, started with it when there is more than one
/// worker.
pub(super) struct Helpers {
    /// `workers - 1` threads that decode ahead of the pipeline thread or evaluate
    /// partitions beside it.
    ///
    /// Why persistent: a thread started for each batch (about two thousand per million
    /// records) began with an empty allocator heap, so its records landed on fresh pages,
    /// which the kernel zeroes, and its heap was abandoned for the next thread to reclaim.
    pool: ThreadPool,
    /// Frees the records decoded ahead once their engine is done with them.
    releaser: Releaser,
}

impl Helpers {
    /// The helpers of `workers` workers; none for one.
    pub(super) fn start(workers: usize) -> Result<Option<Helpers>, PipelineError> {
        if workers <= 1 {
            return Ok(None);
        }
        let pool = ThreadPoolBuilder::new()
            .num_threads(workers - 1)
            .thread_name(|i| format!("driftgate-hlp{i}"))
            .build()
            .map_err(|e| PipelineError::Thread { what: "helper", source: std::io::Error::other(e) })?;
        let releaser =
            Releaser::start().map_err(|source| PipelineError::Thread { what: "release", source })?;
        Ok(Some(Helpers { pool, releaser }))
    }
}

/// `job`'s result, or [`PipelineError::Poisoned`] when it panicked (a helper's panic must not
/// unwind through the pool into the pipeline thread).
fn caught<T>(job: impl FnOnce() -> Result<T, PipelineError>) -> Result<T, PipelineError> {
    std::panic::catch_unwind(AssertUnwindSafe(job)).unwrap_or(Err(PipelineError::Poisoned))
}

/// A long-lived thread that frees telemetry decoded on a decode-ahead helper.
///
/// Why: a record's strings are allocated on the helper and were freed on the pipeline
/// thread, and a free across threads costs mimalloc several times a local one (a sixth of
/// the pipeline thread's time in the drain bench). The engine keeps what it is done with
/// instead (`Engine::retire_into`), and the pipeline thread hands it over here in one
/// message per batch.
#[allow(clippy::vec_box)] // The engine's boxes as they arrived (`Engine::retire_into`).
pub(super) struct Releaser {
    tx: std::sync::mpsc::SyncSender<Vec<Box<Telemetry>>>,
}

impl Releaser {
    /// Starts the thread; it ends when the releaser is dropped.
    fn start() -> std::io::Result<Releaser> {
        // Bounded: a pipeline that outruns the frees waits rather than piling them up.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Box<Telemetry>>>(4);
        std::thread::Builder::new().name("driftgate-release".into()).spawn(move || {
            for batch in rx {
                drop(batch);
            }
        })?;
        Ok(Releaser { tx })
    }

    /// Frees `records` on the releaser's thread (here, if it is gone).
    #[allow(clippy::vec_box)]
    fn release(&self, records: Vec<Box<Telemetry>>) {
        if !records.is_empty() {
            let _ = self.tx.send(records);
        }
    }
}

impl Evaluator<'_> {
    /// Decodes one record into its box, on whichever thread decodes it; `last` is that
    /// thread's.
    fn decode(&self, last: &mut LastReaders, r: &Polled<'_>) -> Decoded {
        self.decoder.decode_with(last, r.payload, r.record_time).map(Box::new)
    }

    /// Decodes, evaluates and renders a lane's records in order.
    pub(super) fn run(&self, lane: &mut Lane<'_, '_>) -> Result<(), PipelineError> {
        let records = std::mem::take(&mut lane.records);
        let mut last = LastReaders::default();
        self.run_decoded(lane, &records, &mut |r| self.decode(&mut last, r))
    }

    /// Evaluates and renders a lane's `records` (taken out of it) in order, each as `decode`
    /// gives it; stops after a record whose dependency is unavailable.
    fn run_decoded<'m>(
        &self,
        lane: &mut Lane<'_, 'm>,
        records: &[Polled<'m>],
        decode: &mut dyn FnMut(&Polled<'_>) -> Decoded,
    ) -> Result<(), PipelineError> {
        lane.steps.reserve(records.len());
        for &r in records {
            let step = self.step(lane, r, decode(&r))?;
            let stop = matches!(step, Step::Unavailable(_));
            lane.steps.push((r, step));
            if stop {
                break;
            }
        }
        Ok(())
    }

    fn step(&self, lane: &mut Lane<'_, '_>, r: Polled<'_>, decoded: Decoded) -> Result<Step, PipelineError> {
        let (key, task) = (&lane.key, &mut *lane.task);
        // Whether this is a record the restored event-time buffer holds by reference, read
        // again: such records lie behind the restored position, like those already covered.
        let awaited = match task.pushed {
            Some(next) if r.offset < next => {
                if !u64::try_from(r.offset).is_ok_and(|o| task.engine.awaits(o)) {
                    // Already reflected in the state (a rewound resume, or a broker re-sending
                    // a batch): feeding it again would count it twice in every detector.
                    debug!(topic = %key.0, partition = key.1, offset = r.offset, next, "skipping a record the state already covers");
                    return Ok(Step::Skipped);
                }
                true
            }
            Some(next) => {
                if task.engine.first_awaited().is_some() {
                    // Past the restored position, what was not read again is gone.
                    let count = task.engine.abandon_awaited();
                    BufferedInputsLost { topic: &key.0, partition: key.1, count }.emit(self.metrics);
                }
                if r.offset > next {
                    // Legitimate on Kafka (compaction, transaction markers); otherwise a sign
                    // of a broker that skips records.
                    debug!(topic = %key.0, partition = key.1, offset = r.offset, next, "offset gap");
                    self.metrics.input_offset_gaps.inc_by(r.offset.abs_diff(next));
                }
                false
            }
            None => false,
        };
        let step = match decoded {
            Ok(t) => {
                lane.decoded += 1;
                task.last_input = self.started;
                if awaited {
                    // Back where it waited; the state already covers it.
                    task.engine.rebuffer(r.offset as u64, Input::Telemetry(t));
                    return Ok(Step::Skipped);
                }
                task.engine.push_tagged(Input::Telemetry(t), r.offset as u64);
                let outputs = task.engine.drain();
                let origin = Origin { record_time: r.record_time };
                Step::Evaluated(self.emitter.render(key, &task.engine, outputs, Some(origin))?)
            }
            Err(DecodeError::Rejected { code, detail }) => Step::Rejected { code, detail },
            Err(DecodeError::Unavailable(why)) => return Ok(Step::Unavailable(why)),
        };
        // The event-time buffer is part of the snapshot, so the state covers this record. (A
        // record read again for the restored buffer is behind that position already.)
        if !awaited {
            task.pushed = Some(r.offset + 1);
        }
        Ok(step)
    }

    /// Runs every lane: side by side on the calling thread and the helpers when the batch
    /// holds several partitions; with one partition, a helper decodes ahead of the calling
    /// thread's evaluation.
    pub(super) fn run_all(&self, lanes: &mut [Lane<'_, '_>]) -> Result<Evaluation, PipelineError> {
        let total: usize = lanes.iter().map(|l| l.records.len()).sum();
        let Some(helpers) = self.helpers.filter(|_| total >= PARALLEL_MIN_RECORDS) else {
            return lanes.iter_mut().try_for_each(|l| self.run(l)).map(|()| Evaluation::Inline);
        };
        if let [lane] = lanes {
            return self.decode_ahead(helpers, lane).map(|()| Evaluation::DecodeAhead);
        }
        let pool = &helpers.pool;
        let sizes: Vec<usize> = lanes.iter().map(|l| l.records.len()).collect();
        let bins = spread(&sizes, pool.current_num_threads() + 1);
        // Hand each worker its lanes by value (disjoint `&mut`), then run them.
        let mut slots: Vec<Option<&mut Lane<'_, '_>>> = lanes.iter_mut().map(Some).collect();
        let mut shares: Vec<Vec<&mut Lane<'_, '_>>> =
            bins.iter().map(|bin| bin.iter().filter_map(|&i| slots[i].take()).collect()).collect();
        let Some(mine) = shares.pop() else { return Ok(Evaluation::Inline) };
        let mut outcomes: Vec<Result<(), PipelineError>> = shares.iter().map(|_| Ok(())).collect();
        let own = pool.in_place_scope(|s| {
            for (share, outcome) in shares.into_iter().zip(outcomes.iter_mut()) {
                s.spawn(move |_| *outcome = caught(|| share.into_iter().try_for_each(|l| self.run(l))));
            }
            mine.into_iter().try_for_each(|l| self.run(l))
        });
        outcomes.into_iter().fold(own, |acc, r| acc.and(r))?;
        Ok(Evaluation::Partitions)
    }

    /// One partition's records: a helper thread decodes them in order, in chunks, while this
    /// thread evaluates what is decoded. Decoding is pure, so only the engine's order
    /// matters, and that stays this thread's.
    fn decode_ahead(&self, helpers: &Helpers, lane: &mut Lane<'_, '_>) -> Result<(), PipelineError> {
        let records = std::mem::take(&mut lane.records);
        helpers.pool.in_place_scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Decoded>>(16);
            let records = &records;
            // This thread decodes the first chunk itself, while the helper is woken: waiting
            // for the helper's first chunk stalled every batch.
            s.spawn(move |_| {
                // A panic drops `tx`, and this thread decodes the rest itself.
                let _ = caught(|| {
                    let mut last = LastReaders::default();
                    for chunk in records.chunks(DECODE_CHUNK).skip(1) {
                        let decoded = chunk.iter().map(|r| self.decode(&mut last, r)).collect();
                        if tx.send(decoded).is_err() {
                            break; // The evaluation stopped early.
                        }
                    }
                    Ok(())
                });
            });
            let mut last = LastReaders::default();
            let first = records.iter().take(DECODE_CHUNK);
            let mut ready = first.map(|r| self.decode(&mut last, r)).collect::<Vec<_>>().into_iter();
            let mut next = |r: &Polled<'_>| -> Decoded {
                if let Some(d) = ready.next() {
                    return d;
                }
                match rx.recv() {
                    Ok(chunk) => {
                        ready = chunk.into_iter();
                        ready.next().unwrap_or_else(|| self.decode(&mut last, r))
                    }
                    // The helper is gone (it cannot fail, but if it panicked): decode here.
                    Err(_) => self.decode(&mut last, r),
                }
            };
            lane.task.engine.retire_into(Some(Vec::with_capacity(records.len())));
            let result = self.run_decoded(lane, records, &mut next);
            helpers.releaser.release(lane.task.engine.retire_into(None).unwrap_or_default());
            // Hung up, so that a helper still sending stops (the lane may have stopped early);
            // the scope then waits for it.
            drop(rx);
            result
        })
    }
}

/// Records a decode-ahead helper hands over at once.
const DECODE_CHUNK: usize = 64;

/// A record's decoding.
type Decoded = Result<Box<Telemetry>, DecodeError>;

/// How a batch was evaluated (`driftgate_input_batches_total{evaluation}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evaluation {
    /// On the pipeline thread alone.
    Inline,
    /// Partitions side by side on several workers.
    Partitions,
    /// One partition, decoded ahead on a helper thread.
    DecodeAhead,
}

impl Evaluation {
    pub(super) fn label(self) -> &'static str {
        match self {
            Evaluation::Inline => "inline",
            Evaluation::Partitions => "parallel",
            Evaluation::DecodeAhead => "decode_ahead",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(&'static str, i32);
    impl Sourced for Fake {
        fn topic(&self) -> &str {
            self.0
        }
        fn partition(&self) -> i32 {
            self.1
        }
    }

    #[test]
    fn records_are_grouped_by_partition_in_poll_order_partitions_by_first_appearance() {
        let batch = [Fake("a", 1), Fake("a", 0), Fake("b", 1), Fake("a", 1), Fake("a", 0), Fake("a", 1)];
        let lanes = by_partition(&batch);
        let want = vec![
            (("a".to_string(), 1), vec![0, 3, 5]),
            (("a".to_string(), 0), vec![1, 4]),
            (("b".to_string(), 1), vec![2]),
        ];
        assert_eq!(lanes, want);
    }

    #[test]
    fn a_rebalance_drops_only_the_partitions_it_touched() {
        let mut batch = vec![Fake("a", 0), Fake("a", 1), Fake("b", 0), Fake("a", 0)];
        let touched: BTreeSet<SourceKey> = [("a".to_string(), 0), ("c".to_string(), 9)].into();
        assert_eq!(drop_touched(&mut batch, &touched), 2);
        let left: Vec<(&str, i32)> = batch.iter().map(|m| (m.0, m.1)).collect();
        assert_eq!(left, vec![("a", 1), ("b", 0)]);
    }

    #[test]
    fn helpers_are_one_fewer_than_the_workers_and_a_panic_in_one_is_an_error() {
        assert!(Helpers::start(1).unwrap().is_none(), "one worker: the pipeline thread alone");
        let helpers = Helpers::start(3).unwrap().expect("three workers");
        let pool = &helpers.pool;
        assert_eq!(pool.current_num_threads(), 2);
        let name = pool.install(|| std::thread::current().name().map(str::to_string));
        assert!(name.is_some_and(|n| n.starts_with("driftgate-hlp")), "named for top -H");
        // A job's panic comes back as an error on the calling thread, not as an unwind.
        let mut outcome: Result<(), PipelineError> = Ok(());
        pool.in_place_scope(|s| {
            s.spawn(|_| outcome = caught(|| panic!("a helper's bug")));
        });
        assert!(matches!(outcome, Err(PipelineError::Poisoned)));
        assert!(matches!(caught(|| Ok::<_, PipelineError>(4)), Ok(4)));
    }

    #[test]
    fn lanes_spread_over_workers_largest_first_onto_the_least_loaded() {
        // 9 | 5+2+1 | 4+3 with three workers.
        let sizes = [5, 9, 1, 4, 3, 2];
        let bins = spread(&sizes, 3);
        assert_eq!(bins, vec![vec![1], vec![0, 5, 2], vec![3, 4]]);
        let mut all: Vec<usize> = bins.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5], "every lane exactly once");
        // More workers than lanes: one lane each, no empty worker.
        assert_eq!(spread(&[7, 1], 8), vec![vec![0], vec![1]]);
        assert_eq!(spread(&[7, 1], 1), vec![vec![0, 1]]);
        assert!(spread(&[], 4).is_empty());
    }
}
