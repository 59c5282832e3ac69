//! `driftgate run`: telemetry topics in; enforcement, snapshot, history and dead-letter
//! topics out; at-least-once, in the manner of Vector's Kafka source.
//!
//! - One engine **task per input partition** (Kafka Streams style): its own event-time
//!   state, watermark and history chain. Records of a partition are processed in order.
//! - Every commit interval, each task writes a **snapshot** to the changelog: changed
//!   agents, then (once they and every output before them are acknowledged) its engine
//!   state including the event-time buffer, which closes the snapshot. The input offset of
//!   a snapshot is **committed only after** its closing record is acknowledged. Auto-commit
//!   and auto-store are off. See [`Tasks::snapshot`].
//! - On assignment, a partition's state is **restored** from the changelog before it is
//!   consumed, and consumption starts at the position of the restored snapshot
//!   ([`crate::kafka::rebalance`], [`crate::kafka::restore`]).
//! - Bad records go to the dead-letter topic untouched, with the reason in headers, and
//!   the partition moves on. A schema-registry outage is not a bad record: the partition
//!   is rewound and retried.
//! - On revoke, the revoked partitions' outputs are flushed and their offsets committed
//!   inside the callback (which runs on this thread, in `poll`), then their state dropped.
//! - Records are taken in batches through librdkafka's batch API
//!   ([`crate::kafka::records`]); a batch's partitions are decoded and evaluated side by
//!   side, each in order on one worker, and their outputs produced by this thread
//!   ([`crate::kafka::batch`]).
//! - The pipeline thread alone owns the tasks: the HTTP API and the control topic send it
//!   [`Command`]s, served between batches.
//! - On SIGTERM: stop consuming, flush, commit, leave the group.

use crate::api::control::{
    check_change, hand_to_engine, AuditChain, Durability, Handed, RecentHistory, SubmitError,
};
use crate::config::{Delivery, InputFormat, RunConfig};
use crate::kafka::batch;
use crate::kafka::commands::{self, Command, PipelineControl};
use crate::kafka::decode::Decoder;
use crate::kafka::emitter::{headers, Emitter};
use crate::kafka::rebalance::PipelineContext;
use crate::kafka::records::{QueuedMessage, RecordQueue};
use crate::kafka::registry::{HttpRegistry, SchemaFileError, SchemaSource, StaticSchemas};
use crate::kafka::sink::{OutRecord, Sink, SinkError, SourceKey};
use crate::kafka::tasks::{SettleError, Tasks};
use crate::obs::events::{
    AuditWriteFailed, BatchRecordsDropped, CommitFailed, ConsumerError, DependencyUnavailable,
    HeartbeatFailed, InternalEvent, RecordRejected, RestoreFailed, SeekFailed,
};
use crate::obs::metrics::{EngineScrape, Metrics, PartitionTime};
use driftgate_core::engine::registry::{PactVersions, VersionInfo};
use driftgate_core::engine::Input;
use driftgate_core::model::heartbeat::EngineState;
use driftgate_core::model::history::Record;
use driftgate_core::model::overrides::OverrideRequest;
use driftgate_core::model::pact_change::PactChange;
use driftgate_core::model::router_view::AgentSnapshot;
use driftgate_core::pact::Pact;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::Offset;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{debug, info};

/// Why the pipeline stopped or could not start.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// A Kafka client could not be created.
    #[error("cannot create the {client}: {source}")]
    Client {
        /// Which client.
        client: &'static str,
        /// Cause.
        source: Box<KafkaError>,
    },
    /// The cluster did not answer at startup.
    #[error("cannot reach Kafka at `{brokers}` within {timeout}: {source}")]
    Unreachable {
        /// `kafka.brokers`.
        brokers: String,
        /// `kafka.startup_timeout`.
        timeout: String,
        /// Cause.
        source: Box<KafkaError>,
    },
    /// The subscription was refused.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The input topics.
        topics: Vec<String>,
        /// Cause.
        source: Box<KafkaError>,
    },
    /// Topics are missing (driftgate does not create them).
    #[error("topic(s) missing on `{brokers}`: {} (create them first; driftgate does not auto-create topics)", missing.join(", "))]
    MissingTopics {
        /// `kafka.brokers`.
        brokers: String,
        /// The missing topics.
        missing: Vec<String>,
    },
    /// An output topic keyed by input partition has fewer partitions than an input topic.
    #[error("topic `{topic}` has {has} partition(s) but an input topic has {needs}: each input partition writes {what} to the partition of the same number")]
    TooFewPartitions {
        /// The topic.
        topic: String,
        /// Its partitions.
        has: usize,
        /// The input topics' most.
        needs: usize,
        /// What it holds per input partition.
        what: &'static str,
    },
    /// The producer failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A schema file of `schema_registry.static_schemas`.
    #[error(transparent)]
    Schemas(#[from] SchemaFileError),
    /// An output could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What.
        what: &'static str,
        /// Cause.
        source: serde_json::Error,
    },
    /// An enforcement event does not fit the bundled Avro schema (a bug, reported as such).
    #[error("enforcement event does not fit its schema: {0}")]
    Avro(String),
    /// A thread panicked while holding the per-partition state.
    #[error("task state poisoned")]
    Poisoned,
    /// A thread the pipeline needs could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Exactly-once: the transactional producer was fenced by a newer instance with the
    /// same `transactional.id` (or failed for good); this instance's late writes were refused.
    #[error("fenced: a newer instance with transactional.id `{0}` took over (or its producer failed); this one stops")]
    Fenced(String),
    /// The consumer hit a fatal error (e.g. fenced by another member with its
    /// `group.instance.id`) and cannot be used again.
    #[error("the consumer failed for good: {0}")]
    ConsumerFatal(String),
    /// librdkafka could not make the queue the input's records are taken from.
    #[error("cannot create the consumer's record queue")]
    Queue,
    /// Exactly-once: after an aborted transaction a partition could not be restored.
    #[error("cannot go back to the last committed state of {topic}/{partition}: {reason}")]
    Rewind {
        /// Input topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Cause.
        reason: String,
    },
}

/// Where the pipeline stands; shared with the HTTP API.
#[derive(Debug, Default)]
pub struct Status {
    /// Partitions assigned and ready.
    pub assigned: AtomicBool,
    /// An assignment's state is being restored.
    pub restoring: AtomicBool,
    /// Every broker connection is down (librdkafka's errors and statistics).
    pub brokers_down: AtomicBool,
    /// The last decode needed the schema registry and could not reach it (cleared by the
    /// next successful decode).
    pub decoder_unavailable: AtomicBool,
    /// Set to stop the run.
    pub stop: AtomicBool,
    /// Exactly-once: the producer was fenced (a newer instance took over) or failed.
    pub fenced: AtomicBool,
}

/// The longest the loop waits for a record before it looks at the time again (idleness,
/// heartbeats, commits).
const IDLE_WAKE_UP: Duration = Duration::from_millis(100);

/// The longest a control-plane command waits while the input is quiet: librdkafka's poll
/// cannot be woken by the command channel, so the loop polls in slices this long.
const COMMAND_WAKE_UP: Duration = Duration::from_millis(10);

/// How often the assigned partitions are forwarded to the batch queue again. librdkafka
/// clears a partition's forward when it stops fetching it, and a revoke's stop can land
/// after the next assignment of the same partition set it; its records then wait in the
/// partition's own queue until this sets it again (and moves them over, in order).
const FORWARD_AGAIN: Duration = Duration::from_millis(250);

/// Commands served per turn of the loop, at most.
const COMMANDS_PER_TURN: usize = 64;

/// The running pipeline. Its thread alone owns the per-partition tasks; everyone else asks
/// through [`PipelineControl`].
pub struct Pipeline {
    cfg: RunConfig,
    /// Declared before the consumer, so it is destroyed first.
    records: RecordQueue,
    consumer: BaseConsumer<PipelineContext>,
    sink: Arc<Sink>,
    tasks: Arc<Mutex<Tasks>>,
    decoder: Decoder,
    emitter: Arc<Emitter>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    commands: Receiver<Command>,
    control: Arc<PipelineControl>,
    /// The API's audit chain (history header `driftgate.chain`).
    audit_chain: String,
    scrape: RefCell<EngineScrape>,
    /// Producer failures already counted.
    produce_errors_seen: Cell<usize>,
    /// Exactly-once: when the current turn of the loop began, and whether this process
    /// stood still (a pause, a freeze) for longer than `stall_limit` with a transaction
    /// open. See [`Pipeline::commit_transaction`].
    turn_started: Cell<Instant>,
    stalled: Cell<bool>,
    stall_limit: Duration,
    /// See [`crate::config::KafkaConfig::max_batch`].
    max_batch: usize,
    /// The batch helpers and the releaser; with more than one worker.
    helpers: Option<batch::Helpers>,
}

/// Brokers plus the librdkafka properties shared by every client.
pub fn kafka_config(cfg: &RunConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Every pact's versions as the reference engine holds them, with the events counted by
/// every engine here.
fn pact_versions(tasks: &Tasks) -> Vec<PactVersions> {
    let mut list = tasks.reference.pact_versions();
    let per_task: Vec<Vec<PactVersions>> = tasks.map.values().map(|t| t.engine.pact_versions()).collect();
    let sum = |pact: &str, v: &mut Option<VersionInfo>, pick: fn(&PactVersions) -> &Option<VersionInfo>| {
        if let Some(v) = v.as_mut() {
            v.events = per_task
                .iter()
                .flatten()
                .filter(|q| q.pact == pact)
                .filter_map(|q| pick(q).as_ref())
                .filter(|q| q.version == v.version)
                .map(|q| q.events)
                .sum();
        }
    };
    for p in &mut list {
        sum(&p.pact, &mut p.active, |q| &q.active);
        sum(&p.pact, &mut p.shadow, |q| &q.shadow);
    }
    list
}

/// The shared properties plus the consumer-only ones.
pub fn consumer_config(cfg: &RunConfig) -> ClientConfig {
    let mut c = kafka_config(cfg);
    for (k, v) in &cfg.kafka.consumer_properties {
        c.set(k, v);
    }
    c
}

/// The shared properties plus the producer-only ones.
pub fn producer_config(cfg: &RunConfig) -> ClientConfig {
    let mut c = kafka_config(cfg);
    for (k, v) in &cfg.kafka.producer_properties {
        c.set(k, v);
    }
    c
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // The record queue goes first (see the fields): no rebalance callback may forward
        // to it after (the consumer's close still runs them).
        self.consumer.context().records.store(std::ptr::null_mut(), Ordering::Release);
    }
}

impl Pipeline {
    /// Connects, checks the topics, and subscribes.
    pub fn start(
        cfg: RunConfig,
        pacts: Vec<Pact>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Result<Pipeline, PipelineError> {
        let schemas: Option<Arc<dyn SchemaSource>> = match (&cfg.schema_registry.url, cfg.kafka.format) {
            (_, InputFormat::Json) => None,
            (Some(url), _) => Some(Arc::new(HttpRegistry::new(url))),
            (None, _) => {
                let files: Vec<(u32, std::path::PathBuf)> = cfg
                    .schema_registry
                    .static_schemas
                    .iter()
                    .filter_map(|(id, p)| id.parse().ok().map(|id| (id, p.clone())))
                    .collect();
                Some(Arc::new(StaticSchemas::load(&files)?))
            }
        };
        let decoder = Decoder::new(cfg.kafka.format, schemas, cfg.decode.max_future_skew.micros());
        let base = consumer_config(&cfg);
        let transactional_id = match cfg.kafka.delivery {
            Delivery::AtLeastOnce => None,
            Delivery::ExactlyOnce => cfg.kafka.transactional_id(),
        };
        let sink = Arc::new(Sink::new(&producer_config(&cfg), transactional_id.as_deref())?);
        let tasks =
            Arc::new(Mutex::new(Tasks::new(cfg.engine.clone(), pacts, cfg.kafka.topics.changelog.clone())));
        let mut ccfg = base.clone();
        ccfg.set("group.id", &cfg.kafka.group_id)
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky");
        // librdkafka pauses fetching for `fetch.queue.backoff.ms` (default 1 s) whenever its
        // prefetch queue is full; a consumer that does real work per record then drains the
        // queue and idles for the rest of the second (measured: 40 % idle, 150k records/s).
        ccfg.set("fetch.queue.backoff.ms", "10").set("statistics.interval.ms", "5000");
        // Inputs written in transactions count once committed (librdkafka's default, stated).
        ccfg.set("isolation.level", "read_committed");
        for (k, v) in cfg.kafka.properties.iter().chain(&cfg.kafka.consumer_properties) {
            ccfg.set(k, v);
        }
        // Not overridable: offsets move only when outputs are acknowledged.
        ccfg.set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
        let ctx = PipelineContext {
            tasks: tasks.clone(),
            metrics: metrics.clone(),
            sink: sink.clone(),
            status: status.clone(),
            client: base.clone(),
            changelog: cfg.kafka.topics.changelog.clone(),
            restore_timeout: Duration::from_secs(300),
            confirmed: Mutex::new(Vec::new()),
            touched: Mutex::new(Default::default()),
            touched_any: Default::default(),
            resume_rewind: i64::try_from(cfg.kafka.resume_rewind).unwrap_or(i64::MAX),
            records: AtomicPtr::new(std::ptr::null_mut()),
        };
        let consumer: BaseConsumer<PipelineContext> = ccfg
            .create_with_context(ctx)
            .map_err(|e| PipelineError::Client { client: "consumer", source: Box::new(e) })?;
        // SAFETY: the consumer outlives the queue (see the field order of `Pipeline`).
        let records =
            unsafe { RecordQueue::new(consumer.client().native_ptr()) }.ok_or(PipelineError::Queue)?;
        consumer.context().records.store(records.as_ptr(), Ordering::Release);
        let instance = format!("{}-{}", std::process::id(), crate::clock::wall_micros() / 1000);
        // Half the group session: a process that stood still that long may have lost its
        // partitions before its consumer can notice.
        let session_ms: u64 = ccfg.get("session.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(45_000);
        let stall_limit = Duration::from_millis(session_ms / 2);
        let recent = Arc::new(Mutex::new(RecentHistory::default()));
        let workers = match cfg.kafka.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let max_batch = cfg.kafka.max_batch.max(1);
        let emitter = Arc::new(Emitter {
            topics: cfg.kafka.topics.clone(),
            output_format: cfg.kafka.output_format,
            output_schema_id: cfg.kafka.output_schema_id,
            enforcement_schema: driftgate_core::codec::schemas::enforcement(),
            sink: sink.clone(),
            metrics: metrics.clone(),
            recent: recent.clone(),
            instance: instance.clone(),
        });
        let audit_chain = format!("api/{instance}");
        let (commands_tx, commands) = commands::channel();
        let control = Arc::new(PipelineControl::new(
            commands_tx,
            status.clone(),
            metrics.clone(),
            recent,
            AuditChain::new(audit_chain.clone()),
        ));
        let p = Pipeline {
            cfg,
            records,
            consumer,
            sink,
            tasks,
            decoder,
            emitter,
            status,
            metrics,
            commands,
            control,
            audit_chain,
            scrape: RefCell::new(EngineScrape::default()),
            produce_errors_seen: Cell::new(0),
            turn_started: Cell::new(Instant::now()),
            stalled: Cell::new(false),
            stall_limit,
            max_batch,
            helpers: batch::Helpers::start(workers)?,
        };
        p.preflight()?;
        // Before the group is joined: fences the predecessor with this transactional.id and
        // aborts its open transaction, so the restore below never sees it.
        let timeout = Duration::from_micros(p.cfg.kafka.startup_timeout.micros().max(1) as u64);
        p.sink.init_transactions(timeout)?;
        if let Some(id) = &transactional_id {
            info!(transactional_id = %id, "exactly-once delivery: transactions initialised");
        }
        let topics: Vec<&str> = p.cfg.kafka.input_topics.iter().map(String::as_str).collect();
        p.consumer.subscribe(&topics).map_err(|source| PipelineError::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            source: Box::new(source),
        })?;
        info!(brokers = %p.cfg.kafka.brokers, group = %p.cfg.kafka.group_id, topics = ?topics, "subscribed");
        Ok(p)
    }

    /// Checks that the cluster answers and every topic exists, with a clear error otherwise.
    fn preflight(&self) -> Result<(), PipelineError> {
        let timeout = Duration::from_micros(self.cfg.kafka.startup_timeout.micros().max(1) as u64);
        let md =
            self.consumer.fetch_metadata(None, timeout).map_err(|source| PipelineError::Unreachable {
                brokers: self.cfg.kafka.brokers.clone(),
                timeout: self.cfg.kafka.startup_timeout.to_string(),
                source: Box::new(source),
            })?;
        let parts: HashMap<&str, usize> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name(), t.partitions().len()))
            .collect();
        let t = &self.cfg.kafka.topics;
        let mut missing = Vec::new();
        for name in self
            .cfg
            .kafka
            .input_topics
            .iter()
            .chain([&t.enforcement, &t.snapshot, &t.history, &t.dead_letter, &t.changelog])
            .chain(t.control.as_ref())
        {
            if !parts.contains_key(name.as_str()) {
                missing.push(name.clone());
            }
        }
        if !missing.is_empty() {
            return Err(PipelineError::MissingTopics { brokers: self.cfg.kafka.brokers.clone(), missing });
        }
        let max_in = self
            .cfg
            .kafka
            .input_topics
            .iter()
            .filter_map(|n| parts.get(n.as_str()))
            .max()
            .copied()
            .unwrap_or(1);
        for (topic, what) in [(&t.history, "its hash chain"), (&t.changelog, "its state")] {
            let n = parts.get(topic.as_str()).copied().unwrap_or(0);
            if n < max_in {
                return Err(PipelineError::TooFewPartitions {
                    topic: topic.clone(),
                    has: n,
                    needs: max_in,
                    what,
                });
            }
        }
        Ok(())
    }

    /// Consumes until [`Status::stop`] is set, then flushes and commits.
    pub fn run(self) -> Result<(), PipelineError> {
        let commit_every = Duration::from_micros(self.cfg.kafka.commit_interval.micros() as u64);
        let mut last_commit = Instant::now();
        let result = self.run_loop(commit_every, &mut last_commit);
        if self.status.fenced.load(Ordering::SeqCst) {
            // Nothing more may be written: the new owner's state is the truth.
            return Err(PipelineError::Fenced(self.cfg.kafka.transactional_id().unwrap_or_default()));
        }
        info!("stopping: snapshotting, flushing outputs and committing");
        self.final_heartbeats();
        let flushed = if self.sink.is_transactional() {
            self.consumer.context().commit_open_transaction(&self.consumer);
            Ok(())
        } else {
            let flushed = match self.tasks.lock() {
                Ok(mut tasks) => tasks.snapshot_and_flush(&*self.sink, None),
                Err(_) => Err(SinkError::Delivery("task state poisoned".into())),
            };
            if let Ok(mut tasks) = self.tasks.lock() {
                if let Err(e) = tasks.commit(&self.consumer, &*self.sink, CommitMode::Sync, None) {
                    CommitFailed { error: &e }.emit(&self.metrics);
                }
            }
            flushed
        };
        self.consumer.unsubscribe();
        if self.status.fenced.load(Ordering::SeqCst) {
            return Err(PipelineError::Fenced(self.cfg.kafka.transactional_id().unwrap_or_default()));
        }
        result.and(flushed.map_err(PipelineError::from))
    }

    /// Exactly-once: commits the open transaction, unless this process stood still for
    /// half a group session while it was open. Then the group may have given its partitions
    /// to another member before this consumer noticed, and its commit must not land (it
    /// would duplicate the new owner's outputs); the broker's generation check is the only
    /// other guard. It is aborted instead, and the engines go back to the last commit (the
    /// consumer then learns whether it still holds them).
    fn commit_transaction(&self) {
        let ctx = self.consumer.context();
        if self.stalled.replace(false) || self.turn_started.get().elapsed() > self.stall_limit {
            ctx.abort_transaction("stalled", None);
        } else {
            ctx.commit_open_transaction(&self.consumer);
        }
    }

    /// Exactly-once: restores the partitions whose engines ran ahead of an aborted
    /// transaction, and reads each again from its restored position.
    fn rewind(&self) -> Result<(), PipelineError> {
        // Called twice a turn: at-least-once never aborts, so it takes no lock for nothing.
        if !self.sink.is_transactional() {
            return Ok(());
        }
        let keys = std::mem::take(&mut self.tasks.lock().map_err(|_| PipelineError::Poisoned)?.rewind);
        for key in keys {
            let fail =
                |reason: String| PipelineError::Rewind { topic: key.0.clone(), partition: key.1, reason };
            let (task, start) = self.consumer.context().restore_task(&key).map_err(|e| {
                RestoreFailed { topic: &key.0, partition: key.1, error: &e }.emit(&self.metrics);
                fail(e.to_string())
            })?;
            let offset = start.map_or(Offset::Beginning, Offset::Offset);
            self.consumer.seek(&key.0, key.1, offset, Duration::from_secs(10)).map_err(|e| {
                SeekFailed { error: &e }.emit(&self.metrics);
                fail(e.to_string())
            })?;
            info!(topic = %key.0, partition = key.1, ?offset, "rewound to the last committed state");
            self.tasks.lock().map_err(|_| PipelineError::Poisoned)?.map.insert(key, task);
        }
        Ok(())
    }

    fn run_loop(&self, commit_every: Duration, last_commit: &mut Instant) -> Result<(), PipelineError> {
        let mut next_timekeeping = Instant::now();
        let mut next_forward = Instant::now();
        // The clock is read three times a record (turn start, record start and end): reading
        // it more often was a tenth of the loop's time.
        while !self.status.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now.saturating_duration_since(self.turn_started.replace(now)) > self.stall_limit
                && self.sink.in_transaction()
            {
                self.stalled.set(true);
            }
            self.rewind()?;
            if now >= next_timekeeping {
                next_timekeeping = self.keep_time()?;
            }
            if now >= next_forward {
                if let Ok(assigned) = self.consumer.assignment() {
                    self.consumer.context().forward(&self.consumer, &assigned);
                }
                next_forward = now + FORWARD_AGAIN;
            }
            self.serve_commands()?;
            let wait = next_timekeeping.saturating_duration_since(now).min(COMMAND_WAKE_UP);
            let mut turn_end = None;
            // The consumer's own queue: the group's events (the rebalance callbacks run in
            // this poll), and records of partitions not forwarded to the batch queue (yet).
            match self.consumer.poll(Duration::ZERO) {
                None => {
                    // A rebalance inside that poll came before every record still queued.
                    self.consumer.context().take_touched();
                    turn_end = self.take_batch(wait)?;
                }
                Some(Err(e)) => self.consumer_error(&e)?,
                Some(Ok(msg)) => {
                    self.status.brokers_down.store(false, Ordering::Relaxed);
                    // A rebalance inside that poll happened before the record: nothing stale.
                    self.consumer.context().take_touched();
                    let batch = self.poll_batch(msg)?;
                    self.metrics.records_polled_singly.inc_by(batch.len() as u64);
                    turn_end = Some(self.handle_batch(&batch)?);
                }
            }
            // A rebalance inside `poll` may have aborted the transaction.
            self.rewind()?;
            self.sink.poll(Duration::ZERO)?;
            let since_commit = turn_end.unwrap_or_else(Instant::now).saturating_duration_since(*last_commit);
            if self.sink.is_transactional() {
                if since_commit >= commit_every {
                    self.commit_transaction();
                    *last_commit = Instant::now();
                }
                continue;
            }
            if since_commit >= commit_every {
                let confirmed = self
                    .consumer
                    .context()
                    .confirmed
                    .lock()
                    .map(|mut c| std::mem::take(&mut *c))
                    .unwrap_or_default();
                if let Ok(mut tasks) = self.tasks.lock() {
                    for (key, pos) in &confirmed {
                        tasks.confirm(key, *pos);
                    }
                    tasks.snapshot(&*self.sink, None)?;
                    if let Err(e) = tasks.commit(&self.consumer, &*self.sink, CommitMode::Async, None) {
                        CommitFailed { error: &e }.emit(&self.metrics);
                    }
                }
                *last_commit = Instant::now();
            } else if let Ok(mut tasks) = self.tasks.lock() {
                // Between intervals, the snapshot under way closes and commits as soon as
                // its acknowledgements are in.
                match tasks.settle(&self.consumer, &*self.sink) {
                    Ok(()) => {}
                    Err(SettleError::Send(e)) => return Err(e.into()),
                    Err(SettleError::Commit(e)) => CommitFailed { error: &e }.emit(&self.metrics),
                }
            }
        }
        Ok(())
    }

    /// Wall time reaches the engines: a tick for each idle partition whose engine has
    /// something due, and heartbeats when due. Returns when it next has work, so the loop
    /// wakes then (ticks land on time, not on a polling grid).
    fn keep_time(&self) -> Result<Instant, PipelineError> {
        let mut tasks = self.tasks.lock().map_err(|_| PipelineError::Poisoned)?;
        let cfg = &tasks.engine_cfg;
        let idle_after =
            (cfg.idle_timeout.micros() > 0).then(|| Duration::from_micros(cfg.idle_timeout.micros() as u64));
        let beat_every = (cfg.heartbeat_interval.micros() > 0)
            .then(|| Duration::from_micros(cfg.heartbeat_interval.micros() as u64));
        let lag = cfg.max_event_lag.micros();
        let now = Instant::now();
        let mut next = now + IDLE_WAKE_UP;
        let mut idle_partitions = 0;
        for (key, task) in tasks.map.iter_mut() {
            let idle = idle_after.is_some_and(|d| now.duration_since(task.last_input) >= d);
            idle_partitions += idle as i64;
            if let Some(due) = idle_after.and_then(|d| task.next_tick(d, lag)) {
                if due <= now {
                    if let Some(at) = task.clock() {
                        self.metrics.ticks_fed.inc();
                        if task.engine.tick(at, crate::clock::wall_micros()) {
                            self.metrics.ticks_applied.inc();
                            debug!(topic = %key.0, partition = key.1, at, "tick applied");
                            // The tick changed the state: the next snapshot must carry it.
                            task.force_snapshot = true;
                            let outputs = task.engine.drain();
                            self.emitter.emit(key, &task.engine, outputs)?;
                        }
                    }
                }
                // A tick that did not apply (rounding) is retried a millisecond later.
                let again = task
                    .next_tick(idle_after.unwrap_or_default(), lag)
                    .map(|d| d.max(now + Duration::from_millis(1)));
                next = next.min(again.unwrap_or(next));
            }
            if let Some(every) = beat_every {
                if task.last_heartbeat.is_none_or(|t| now.duration_since(t) >= every) {
                    self.emitter.heartbeat(
                        key,
                        &task.heartbeat(key, &self.emitter.instance, EngineState::Running, every, idle),
                    )?;
                    task.last_heartbeat = Some(now);
                }
                next = next.min(task.last_heartbeat.map_or(now, |t| t + every));
            }
        }
        self.metrics.idle_partitions.set(idle_partitions);
        Ok(next)
    }

    /// On a clean stop: tells routers this instance no longer runs its partitions.
    fn final_heartbeats(&self) {
        let Ok(tasks) = self.tasks.lock() else { return };
        let every = Duration::from_micros(tasks.engine_cfg.heartbeat_interval.micros().max(0) as u64);
        if every.is_zero() {
            return;
        }
        for (key, task) in &tasks.map {
            if let Err(e) = self.emitter.heartbeat(
                key,
                &task.heartbeat(key, &self.emitter.instance, EngineState::Stopped, every, false),
            ) {
                HeartbeatFailed { error: &e }.emit(&self.metrics);
            }
        }
    }

    /// Polls, without waiting, up to `kafka.max_batch` records after `first` from the
    /// consumer's own queue (partitions not forwarded to the batch queue). Records of
    /// partitions a rebalance touched meanwhile are dropped (see [`batch::drop_touched`]).
    fn poll_batch<'c>(
        &'c self,
        first: BorrowedMessage<'c>,
    ) -> Result<Vec<BorrowedMessage<'c>>, PipelineError> {
        let mut batch = Vec::with_capacity(self.max_batch.min(64));
        batch.push(first);
        while batch.len() < self.max_batch {
            let polled = self.consumer.poll(Duration::ZERO);
            let touched = self.consumer.context().take_touched();
            if !touched.is_empty() {
                let count = batch::drop_touched(&mut batch, &touched);
                BatchRecordsDropped { partitions: touched.len(), count }.emit(&self.metrics);
            }
            match polled {
                None => break,
                Some(Ok(msg)) => batch.push(msg),
                Some(Err(e)) => {
                    self.consumer_error(&e)?;
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Counts and logs a consumer error. A fatal one (e.g. another process took this
    /// `group.instance.id`) leaves the consumer unusable for good, so the run stops (a
    /// restart rejoins) instead of spinning.
    fn consumer_error(&self, e: &KafkaError) -> Result<(), PipelineError> {
        ConsumerError { error: e }.emit(&self.metrics);
        match self.consumer.client().fatal_error() {
            Some((code, reason)) => Err(PipelineError::ConsumerFatal(format!("{code:?}: {reason}"))),
            None => Ok(()),
        }
    }

    /// Takes a batch from the batch queue (waiting up to `wait` for its first record) and
    /// handles it; returns when it finished, or `None` without a record.
    fn take_batch(&self, wait: Duration) -> Result<Option<Instant>, PipelineError> {
        let mut batch: Vec<QueuedMessage> = Vec::new();
        if self.records.take(wait, self.max_batch, &mut batch) == 0 {
            return Ok(None);
        }
        // A consumer error comes in the queue in place of a record.
        let mut error = None;
        batch.retain(|m| match m.error() {
            None => true,
            Some(e) => {
                error = Some(e);
                false
            }
        });
        if let Some(e) = error {
            self.consumer_error(&e)?;
        }
        if batch.is_empty() {
            return Ok(None);
        }
        self.status.brokers_down.store(false, Ordering::Relaxed);
        self.handle_batch(&batch).map(Some)
    }

    /// Decodes and evaluates a batch, one partition per worker, then produces its outputs
    /// and dead letters in each partition's order; returns when it finished.
    fn handle_batch<M: batch::InputRecord>(&self, msgs: &[M]) -> Result<Instant, PipelineError> {
        let started = Instant::now();
        let n = msgs.len();
        self.metrics.records_consumed.inc_by(n as u64);
        self.metrics.input_batch_records.observe(n as f64);
        let mut tasks = self.tasks.lock().map_err(|_| PipelineError::Poisoned)?;
        let mut groups = batch::by_partition(msgs);
        let mut stale = BatchRecordsDropped { partitions: 0, count: 0 };
        groups.retain(|(key, idx)| {
            // A partition without a task was revoked after its records were fetched: they
            // are stale, and its new owner reads them.
            if !tasks.map.contains_key(key) {
                stale.partitions += 1;
                stale.count += idx.len();
                return false;
            }
            // Its engine ran ahead of an aborted transaction: read again after the rewind.
            !tasks.rewind.contains(key)
        });
        if stale.count > 0 {
            stale.emit(&self.metrics);
        }
        let mut slots: Vec<Option<&mut crate::kafka::tasks::Task>> = Vec::new();
        slots.resize_with(groups.len(), || None);
        for (key, task) in tasks.map.iter_mut() {
            if let Some(i) = groups.iter().position(|(k, _)| k == key) {
                slots[i] = Some(task);
            }
        }
        let mut lanes: Vec<batch::Lane<'_, '_>> = groups
            .into_iter()
            .zip(slots)
            .filter_map(|((key, idx), task)| {
                let records = idx
                    .into_iter()
                    .map(|index| {
                        let m = &msgs[index];
                        batch::Polled {
                            index,
                            offset: m.offset(),
                            payload: m.payload(),
                            record_time: m.record_time(),
                        }
                    })
                    .collect();
                Some(batch::Lane { key, task: task?, records, steps: Vec::new(), decoded: 0 })
            })
            .collect();
        let evaluator = batch::Evaluator {
            decoder: &self.decoder,
            emitter: &self.emitter,
            metrics: &self.metrics,
            started,
            helpers: self.helpers.as_ref(),
        };
        let evaluated = evaluator.run_all(&mut lanes);
        let mode = evaluated.as_ref().map_or("inline", |e| e.label());
        self.metrics.input_batches.with_label_values(&[mode]).inc();
        // What a lane evaluated before an error is produced all the same: its engine moved.
        let mut unavailable: Vec<(SourceKey, i64)> = Vec::new();
        for lane in &mut lanes {
            if lane.decoded > 0 {
                self.metrics.records_decoded.inc_by(lane.decoded);
                self.status.decoder_unavailable.store(false, Ordering::Relaxed);
            }
            for (r, step) in lane.steps.drain(..) {
                let key = &lane.key;
                match step {
                    batch::Step::Skipped => {}
                    batch::Step::Evaluated(rendered) => {
                        self.emitter.send(key, rendered, Some(&msgs[r.index] as &dyn batch::InputRecord))?
                    }
                    batch::Step::Rejected { code, detail } => {
                        RecordRejected {
                            topic: &key.0,
                            partition: key.1,
                            offset: r.offset,
                            code,
                            detail: &detail,
                        }
                        .emit(&self.metrics);
                        self.emitter.dead_letter(key, &msgs[r.index], code, &detail)?;
                    }
                    batch::Step::Unavailable(why) => {
                        DependencyUnavailable {
                            topic: &key.0,
                            partition: key.1,
                            offset: r.offset,
                            why: &why,
                        }
                        .emit(&self.metrics);
                        self.status.decoder_unavailable.store(true, Ordering::Relaxed);
                        unavailable.push((key.clone(), r.offset));
                    }
                }
            }
        }
        drop(lanes);
        drop(tasks);
        evaluated?;
        if !unavailable.is_empty() {
            // Nothing is wrong with the records: rewind and retry after a pause.
            std::thread::sleep(Duration::from_millis(500));
            for (key, offset) in unavailable {
                if let Err(e) =
                    self.consumer.seek(&key.0, key.1, Offset::Offset(offset), Duration::from_secs(5))
                {
                    SeekFailed { error: &e }.emit(&self.metrics);
                }
            }
        }
        let end = Instant::now();
        let each = end.saturating_duration_since(started).as_secs_f64() / n.max(1) as f64;
        // One flush of plain counts: an observation each took three atomic updates per record.
        let processing = self.metrics.processing.local();
        for _ in 0..n {
            processing.observe(each);
        }
        processing.flush();
        Ok(end)
    }

    /// The HTTP API's and the control topic's view of this pipeline.
    pub fn control(&self) -> Arc<PipelineControl> {
        self.control.clone()
    }

    /// Serves the control plane's [`Command`]s, at most [`COMMANDS_PER_TURN`] a turn so
    /// that a burst of requests cannot starve the input.
    fn serve_commands(&self) -> Result<(), PipelineError> {
        for command in self.commands.try_iter().take(COMMANDS_PER_TURN) {
            let mut tasks = self.tasks.lock().map_err(|_| PipelineError::Poisoned)?;
            match command {
                Command::Agent { id, reply } => {
                    let _ =
                        reply.try_send(tasks.map.values().find_map(|t| AgentSnapshot::of(&t.engine, &id)));
                }
                Command::Override { req, now, reply } => {
                    let _ = reply.try_send(self.take_override(&mut tasks, req, now));
                }
                Command::PactChange { change, reply } => {
                    let _ = reply.try_send(self.take_pact_change(&mut tasks, change));
                }
                Command::Pacts { reply } => {
                    let _ = reply.try_send(pact_versions(&tasks));
                }
                Command::RefreshMetrics { reply } => {
                    self.refresh_metrics(&mut tasks);
                    let _ = reply.try_send(());
                }
                Command::Audit(record) => self.write_audit(&record),
            }
        }
        Ok(())
    }

    /// Hands an override to the task holding its agent. It waits in the engine's
    /// event-time buffer until the partition's watermark passes `issued_at`; the buffer is
    /// part of the snapshot, so it is durable from the next one.
    fn take_override(
        &self,
        tasks: &mut Tasks,
        req: OverrideRequest,
        now: i64,
    ) -> Result<Durability, SubmitError> {
        let (key, task) = tasks
            .map
            .iter_mut()
            .find(|(_, t)| t.engine.agent(&req.agent_id).is_some())
            .ok_or_else(|| SubmitError::UnknownAgent(req.agent_id.clone()))?;
        // A retry of an override already in force is not applied twice; it is answered once
        // a snapshot taken after it is durable (the first answer may have been a 504).
        if hand_to_engine(&mut task.engine, req, now)? == Handed::Pushed {
            let outputs = task.engine.drain();
            self.emitter
                .emit(key, &task.engine, outputs)
                .map_err(|e| SubmitError::Unavailable(e.to_string()))?;
        }
        Ok(task.await_next_snapshot())
    }

    /// Validates a pact change against the versions in force here and hands it to every
    /// engine; each waits in its engine's event-time buffer until the partition's watermark
    /// passes `issued_at` (at the latest the watermark it meets), so every partition applies
    /// it at a definite input position, which restores and replays reproduce.
    fn take_pact_change(
        &self,
        tasks: &mut Tasks,
        change: PactChange,
    ) -> Result<Vec<Durability>, SubmitError> {
        check_change(&tasks.reference, &change)?;
        tasks.reference.push(Input::from(change.clone()));
        tasks.reference.flush();
        tasks.reference.drain();
        tasks.remember(change.clone());
        let mut durable = Vec::new();
        for (key, task) in tasks.map.iter_mut() {
            Tasks::catch_up(std::slice::from_ref(&change), &mut task.engine);
            let outputs = task.engine.drain();
            self.emitter
                .emit(key, &task.engine, outputs)
                .map_err(|e| SubmitError::Unavailable(e.to_string()))?;
            durable.push(task.await_next_snapshot());
        }
        self.observe_pact_versions(tasks);
        Ok(durable)
    }

    /// Sets `driftgate_pact_version{pact,role}` from the versions in force.
    fn observe_pact_versions(&self, tasks: &Tasks) {
        self.metrics.pact_versions.reset();
        for p in tasks.reference.pact_versions() {
            for (role, v) in [("active", &p.active), ("shadow", &p.shadow)] {
                if let Some(v) = v {
                    self.metrics.pact_versions.with_label_values(&[&p.pact, role]).set(i64::from(v.version));
                }
            }
        }
    }

    /// Recomputes the engines' and partitions' metrics before a scrape.
    fn refresh_metrics(&self, tasks: &mut Tasks) {
        if let Ok(acks) = self.sink.acks().lock() {
            let seen = self.produce_errors_seen.replace(acks.failed());
            self.metrics.produce_errors.inc_by(acks.failed().saturating_sub(seen) as u64);
        }
        self.scrape
            .borrow_mut()
            .refresh(&self.metrics, tasks.map.values_mut().map(|t| (&t.engine, &mut t.last_stats)));
        self.observe_pact_versions(tasks);
        let wall = crate::clock::wall_micros();
        self.metrics.observe_partitions(tasks.map.iter().map(|(key, t)| {
            let clock = t.clock();
            let time = PartitionTime {
                buffered: t.engine.buffered(),
                oldest_buffered_age: match (clock, t.engine.oldest_buffered()) {
                    (Some(c), Some(o)) => (c - o).max(0) as f64 / 1e6,
                    _ => 0.0,
                },
                watermark_lag: t.engine.watermark().map(|wm| (wall - wm) as f64 / 1e6),
            };
            (key.0.as_str(), key.1, time)
        }));
    }

    /// Produces an API audit record to the history topic, in the API's own chain.
    fn write_audit(&self, r: &Record) {
        let line = match serde_json::to_vec(r) {
            Ok(l) => l,
            Err(e) => return AuditWriteFailed { error: &e }.emit(&self.metrics),
        };
        let h = OwnedHeaders::new().insert(Header { key: headers::CHAIN, value: Some(&self.audit_chain) });
        let k = r.agent_id.clone().unwrap_or_default();
        let source: SourceKey = (self.audit_chain.clone(), -1);
        let record = OutRecord {
            topic: &self.emitter.topics.history,
            key: k.as_bytes(),
            payload: Some(&line),
            headers: Some(h),
            partition: Some(0),
        };
        if let Err(e) = self.emitter.sink.send(&source, record) {
            AuditWriteFailed { error: &e }.emit(&self.metrics);
        }
    }
}
