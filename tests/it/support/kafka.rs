//! Apache Kafka for tests: one KRaft node (broker and controller) on free ports. Most tests
//! share one broker per test binary ([`Broker::shared`]); a test that needs a broker of its
//! own (behind a proxy) starts one, stopped on drop. A watchdog stops every broker when the
//! test process ends, however it ends. A missing broker fails the test with the command that
//! installs it; Kafka tests never pass by skipping.

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const INSTALL: &str = "./scripts/install-tools.sh (Apache Kafka's jars from Maven Central into ~/.cache/driftgate/tools; needs mvn and Java 17), or run ./scripts/test.sh, which does it";

/// The pinned Apache Kafka version: the one scripts/kafka/pom.xml installs.
pub fn kafka_version() -> &'static str {
    const POM: &str = include_str!("../../../scripts/kafka/pom.xml");
    POM.split("<kafka.version>")
        .nth(1)
        .and_then(|r| r.split("</kafka.version>").next())
        .expect("scripts/kafka/pom.xml names <kafka.version>")
}

/// Where the broker's jars are: `$DRIFTGATE_KAFKA_HOME`, else the per-user tool cache.
pub fn kafka_home() -> PathBuf {
    if let Some(p) = std::env::var_os("DRIFTGATE_KAFKA_HOME") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(format!(".cache/driftgate/tools/kafka-{}", kafka_version()))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

// Time retention is off: test records carry the scenario's event times, months in the
// past, and the broker's retention check (every 5 min) would delete them mid-test.

/// A fixed KRaft cluster id: every test broker is a cluster of its own, on its own ports.
const CLUSTER_ID: &str = "Non9p9DUR4KlN_aVmT-GPQ";

/// A running broker.
pub struct Broker {
    /// The watchdog shell, leader of the broker's process group.
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    dir: PathBuf,
    /// What the watchdog runs, for a restart.
    script: String,
    /// The port it listens on (`port` is the one it advertises).
    listen: u16,
}

/// Starts the watchdog shell (and so the broker), appending to `log`.
fn spawn_broker(script: &str, log: &std::path::Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("broker log file");
    Command::new("sh")
        .args(["-c", script])
        .process_group(0)
        .stdout(Stdio::from(out.try_clone().expect("log handle")))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the broker: {e}"))
}

impl Broker {
    /// The test binary's broker, started on first use. It lives until the process ends.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(Broker::start)
    }

    /// A broker of one's own, stopped on drop.
    pub fn start() -> Broker {
        let port = free_port();
        Self::start_advertising(port, port)
    }

    /// Listens on `port` but tells clients to connect to `advertised` (a proxy in front).
    pub fn start_advertising(port: u16, advertised: u16) -> Broker {
        let home = kafka_home();
        assert!(
            home.join(".complete").exists(),
            "Apache Kafka {} is not installed at {}: install it with\n  {INSTALL}",
            kafka_version(),
            home.display()
        );
        let dir = std::env::temp_dir().join(format!("driftgate-kafka-{port}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).expect("broker directory");
        let controller = free_port();
        let props = dir.join("server.properties");
        std::fs::write(
            &props,
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{advertised}\n\
                 controller.listener.names=CONTROLLER\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 log.dirs={}\n\
                 num.partitions=1\n\
                 offsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=4\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 transaction.state.log.num.partitions=4\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 log.retention.ms=-1\n",
                dir.join("data").display()
            ),
        )
        .expect("server.properties");
        std::fs::write(
            dir.join("log4j2.properties"),
            "rootLogger.level=WARN\nrootLogger.appenderRef.out.ref=out\nappender.out.type=Console\nappender.out.name=out\nappender.out.layout.type=PatternLayout\nappender.out.layout.pattern=[%d] %p %m (%c)%n\n",
        )
        .expect("log4j2.properties");
        let classpath = format!("{}/libs/*", home.display());
        let log_config = format!("-Dlog4j2.configurationFile={}", dir.join("log4j2.properties").display());
        let format = Command::new("java")
            .args([
                &log_config,
                "-cp",
                &classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                CLUSTER_ID,
                "-c",
            ])
            .arg(&props)
            .output()
            .unwrap_or_else(|e| panic!("cannot run java (Java 17 is needed for Apache Kafka): {e}"));
        assert!(
            format.status.success(),
            "formatting the broker's storage failed: {}{}",
            String::from_utf8_lossy(&format.stdout),
            String::from_utf8_lossy(&format.stderr)
        );
        let log = dir.join("broker.log");
        // The shell watches this process and the broker. If this process ends, it stops the
        // broker and removes its directory; if the broker ends (a restart), it ends too. It
        // leads the process group, which `stop` and Drop signal.
        let script = format!(
            "java -Xms128m -Xmx512m -XX:+UseSerialGC {log_config} -cp '{classpath}' kafka.Kafka '{}' & j=$!; \
             while kill -0 {pid} 2>/dev/null && kill -0 $j 2>/dev/null; do sleep 1; done; \
             if ! kill -0 {pid} 2>/dev/null; then kill -9 $j 2>/dev/null; wait $j 2>/dev/null; rm -rf '{}'; fi",
            props.display(),
            dir.display(),
            pid = std::process::id(),
        );
        let child = spawn_broker(&script, &log);
        let b = Broker { child, port: advertised, log, dir, script, listen: port };
        if advertised == port {
            b.wait_ready();
        }
        b
    }

    /// Stops the broker cleanly (SIGTERM, as a service manager would) and starts it again on
    /// the same ports and log directory; returns once it answers again.
    pub fn restart(&mut self) {
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
        wait_for(60, "the broker to stop listening", || {
            std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_err().then_some(())
        });
        self.child = spawn_broker(&self.script, &self.log);
        self.wait_ready();
    }

    /// Waits until the broker answers (call after starting its proxy).
    pub fn ready(&self) {
        self.wait_ready();
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let consumer: BaseConsumer = self.client().create().expect("consumer");
        while Instant::now() < deadline {
            if consumer.fetch_metadata(None, Duration::from_secs(1)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "broker did not answer within 60 s; log: {}",
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

    /// Sets topic-level configs (e.g. `message.timestamp.type` = `LogAppendTime`); the
    /// others keep their defaults. (Used by the end-to-end bench.)
    #[allow(dead_code)]
    pub fn alter_topic(&self, topic: &str, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().expect("admin client");
        let mut change = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (k, v) in configs {
            change = change.set(k, v);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let res = rt
            .block_on(admin.alter_configs(
                [&change],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            ))
            .expect("alter_configs");
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("cannot alter {t:?}: {e}"));
        }
    }

    /// A producer (idempotent, like the engine's), with batches of at most 1,000 records.
    pub fn producer(&self) -> BaseProducer {
        self.client()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "1000")
            .create()
            .expect("producer")
    }

    /// Every record of a topic, in partition then offset order. Reads until the topic has
    /// been quiet for a second. `read_committed`, as routers read (records of aborted or
    /// open transactions are not seen).
    pub fn read_all(&self, topic: &str) -> Vec<Rec> {
        self.read_all_isolated(topic, "read_committed")
    }

    /// The same, with `isolation.level` = `isolation` (`read_uncommitted` also sees the
    /// records of aborted transactions).
    pub fn read_all_isolated(&self, topic: &str, isolation: &str) -> Vec<Rec> {
        self.read(topic, isolation, false)
    }

    /// What a reader with `isolation` sees of `topic` now: it reads up to the end each
    /// partition has when called, or until quiet for a second (a `read_committed` reader
    /// held back by an open transaction never gets there), without waiting for more.
    pub fn read_now_isolated(&self, topic: &str, isolation: &str) -> Vec<Rec> {
        self.read(topic, isolation, true)
    }

    fn read(&self, topic: &str, isolation: &str, now: bool) -> Vec<Rec> {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", format!("reader-{}", rand_suffix()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .expect("consumer");
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let parts = md.topics()[0].partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
            let (_, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            ends.push(hi);
        }
        consumer.assign(&tpl).expect("assign");
        let at_end = || {
            let pos = consumer.position().expect("position");
            (0..parts).all(|p| {
                let at = pos.find_partition(topic, p).map(|e| e.offset());
                ends[p as usize] == 0 || matches!(at, Some(Offset::Offset(o)) if o >= ends[p as usize])
            })
        };
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_millis(1000) && Instant::now() < deadline && !(now && at_end())
        {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                last = Instant::now();
                out.push(Rec::of(&m));
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
        // The coordinator may still be loading the group (NotCoordinator, retriable).
        let got = wait_for(30, "the group's committed offsets", || {
            consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)).ok()
        });
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
        // The whole group: the watchdog and the JVM.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
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
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Rec {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        let v = x.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                        (x.key.to_string(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Rec {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

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

/// Sends one record to partition 0 without waiting for it (a flush returns only on
/// librdkafka's 100 ms poll grid, which would swamp a latency measured from the send).
pub fn produce_now(p: &BaseProducer, topic: &str, key: &str, value: &[u8], timestamp_ms: i64) {
    let rec = BaseRecord::to(topic).key(key.as_bytes()).payload(value).timestamp(timestamp_ms).partition(0);
    p.send(rec).map_err(|(e, _)| e).expect("send");
    p.poll(Duration::ZERO);
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
        Self::spawn("run", config, filter)
    }

    /// Any `driftgate` subcommand that takes `--config` (`run`, or the `route` sidecar),
    /// logging to a file beside the config.
    pub fn spawn(command: &str, config: &std::path::Path, filter: &str) -> Engine {
        let log = config.with_extension("log");
        let out = std::fs::File::create(&log).expect("engine log");
        let child = Command::new(env!("CARGO_BIN_EXE_driftgate"))
            .args([command, "--config"])
            .arg(config)
            .env("RUST_LOG", filter)
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("start driftgate {command}: {e}"));
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
            // `ENGINE_LOG_LINES=N` shows more of a failing engine's log.
            let lines = std::env::var("ENGINE_LOG_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(60);
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            eprintln!(
                "--- engine log (last {lines} lines) ---\n{}",
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
