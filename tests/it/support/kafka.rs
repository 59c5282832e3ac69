//! A real Kafka-compatible broker (tansu) for tests: started on a free port, stopped on
//! drop (also when a test fails). A missing broker binary fails the test with the command
//! that installs it; Kafka tests never pass by skipping.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const INSTALL: &str = "cargo install tansu --version 0.6.0 --locked --features dynostore --root ~/.cache/driftgate/tools (or run ./scripts/test.sh, which does it)";

/// The tansu binary: `$DRIFTGATE_TANSU`, else the per-user tool cache.
pub fn tansu_path() -> PathBuf {
    if let Some(p) = std::env::var_os("DRIFTGATE_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache/driftgate/tools/bin/tansu")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A running broker.
pub struct Broker {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Broker {
    pub fn start() -> Broker {
        let port = free_port();
        Self::start_advertising(port, port)
    }

    /// Listens on `port` but tells clients to connect to `advertised` (a proxy in front).
    pub fn start_advertising(port: u16, advertised: u16) -> Broker {
        let bin = tansu_path();
        assert!(
            bin.exists(),
            "the test broker is not installed at {}: install it with\n  {INSTALL}",
            bin.display()
        );
        let log = std::env::temp_dir().join(format!("driftgate-tansu-{port}.log"));
        let out = std::fs::File::create(&log).expect("broker log file");
        let url = format!("tcp://127.0.0.1:{port}");
        let adv = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &adv,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::from(out.try_clone().expect("log handle")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let b = Broker { child, port: advertised, log };
        if advertised == port {
            b.wait_ready();
        }
        b
    }

    /// Waits until the broker answers (call after starting its proxy).
    pub fn ready(&self) {
        self.wait_ready();
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let consumer: BaseConsumer = self.client().create().expect("consumer");
        while Instant::now() < deadline {
            if consumer.fetch_metadata(None, Duration::from_secs(1)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "broker did not answer within 30 s; log: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// Creates topics (`name`, partitions, compacted).
    pub fn create_topics(&self, topics: &[(&str, i32, bool)]) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().expect("admin client");
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(n, p, compact)| {
                let t = NewTopic::new(n, *p, TopicReplication::Fixed(1));
                if *compact {
                    t.set("cleanup.policy", "compact")
                } else {
                    t
                }
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let res = rt
            .block_on(
                admin.create_topics(
                    &new,
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                ),
            )
            .expect("create_topics");
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
        }
    }

    /// A producer (idempotent, like the engine's), with batches of at most 1,000 records
    /// (engines under test resume up to 5,000 records early: see `resume_rewind`).
    pub fn producer(&self) -> BaseProducer {
        self.client()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "1000")
            .create()
            .expect("producer")
    }

    /// Every record of a topic, in partition then offset order. Reads until the topic has
    /// been quiet for a second: tansu 0.6's high watermark can lag the last acknowledged
    /// batch, so it is not used as the end.
    pub fn read_all(&self, topic: &str) -> Vec<Rec> {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", format!("reader-{}", rand_suffix()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let parts = md.topics()[0].partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_millis(1000) && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    x.value
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Rec {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }

    /// The group's committed offset per partition of `topic`.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let consumer: BaseConsumer = self.client().set("group.id", group).create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A consumed record.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Rec {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Produces `(key, value, timestamp_ms, partition)` records and waits for them.
pub fn produce(p: &BaseProducer, topic: &str, records: &[(String, Vec<u8>, i64, i32)]) {
    for (k, v, ts, part) in records {
        let mut rec =
            BaseRecord::to(topic).key(k.as_bytes()).payload(v.as_slice()).timestamp(*ts).partition(*part);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(50));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// One run's topics, under random names: an input, the engine's outputs, and a group id.
#[derive(Clone)]
pub struct Topics {
    pub input: String,
    pub enforcement: String,
    pub snapshot: String,
    pub history: String,
    pub dlq: String,
    pub changelog: String,
    pub group: String,
}

impl Topics {
    /// Creates them: `partitions` for the input and the per-partition outputs (history and
    /// changelog), one for the rest; snapshot and changelog compacted.
    pub fn create(b: &Broker, name: &str, partitions: i32) -> Topics {
        let s = format!("{name}-{}", rand_suffix());
        let t = Topics {
            input: format!("telemetry-{s}"),
            enforcement: format!("enforcement-{s}"),
            snapshot: format!("snapshot-{s}"),
            history: format!("history-{s}"),
            dlq: format!("dlq-{s}"),
            changelog: format!("changelog-{s}"),
            group: format!("driftgate-{s}"),
        };
        b.create_topics(&[
            (&t.input, partitions, false),
            (&t.enforcement, 1, false),
            (&t.snapshot, 1, true),
            (&t.history, partitions, false),
            (&t.dlq, 1, false),
            (&t.changelog, partitions, true),
        ]);
        t
    }

    /// The config's `[kafka.topics]` table (output topics only).
    pub fn toml(&self) -> String {
        format!(
            "[kafka.topics]\nenforcement = \"{}\"\nsnapshot = \"{}\"\nhistory = \"{}\"\ndead_letter = \"{}\"\nchangelog = \"{}\"\n",
            self.enforcement, self.snapshot, self.history, self.dlq, self.changelog
        )
    }
}

/// A `driftgate run` process, killed on drop.
pub struct Engine {
    pub child: Child,
    pub log: PathBuf,
}

impl Engine {
    /// With debug logs (for failing tests to show).
    pub fn start(config: &std::path::Path) -> Engine {
        Self::start_logging(config, "driftgate=debug,info")
    }

    /// With a `RUST_LOG` filter of one's own (benchmarks measure with `info`).
    pub fn start_logging(config: &std::path::Path, filter: &str) -> Engine {
        let log = config.with_extension("log");
        let out = std::fs::File::create(&log).expect("engine log");
        let child = Command::new(env!("CARGO_BIN_EXE_driftgate"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", filter)
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start driftgate run");
        Engine { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(Instant::now() < deadline, "engine did not stop within 60 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!(
                "--- engine log (last 60 lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Follows a topic from its beginning, stamping each record with when it was consumed: for
/// measuring how long an output took to reach a consumer (a router's view).
pub struct Tail {
    consumer: BaseConsumer,
    pub seen: Vec<(Instant, Rec)>,
}

impl Tail {
    pub fn new(b: &Broker, topic: &str) -> Tail {
        let consumer: BaseConsumer = b
            .client()
            .set("group.id", format!("tail-{}", rand_suffix()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in 0..md.topics()[0].partitions().len() as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        Tail { consumer, seen: Vec::new() }
    }

    /// Consumes for `d`.
    pub fn poll_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(10)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    x.value
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let rec = Rec {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                };
                self.seen.push((Instant::now(), rec));
            }
        }
    }

    /// Consumes until `f` finds something among the records seen, or panics after `secs`.
    pub fn until<T>(
        &mut self,
        secs: u64,
        what: &str,
        mut f: impl FnMut(&[(Instant, Rec)]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(&self.seen) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
            self.poll_for(Duration::from_millis(20));
        }
    }
}
