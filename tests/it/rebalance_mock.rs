//! Scale-out with the production assignor, `cooperative-sticky`, on librdkafka's mock
//! cluster, for the faults a real broker cannot be made to show on cue (refused produce
//! requests mid-rebalance). `durable_state.rs` runs joins, a SIGKILL and a leave on Apache
//! Kafka.
//!
//! Two pipelines share a 4-partition input. When the second joins, the first gives up only
//! the partitions that move (incremental revocation) and keeps consuming the rest; when the
//! second leaves, the first takes those partitions back with their state restored from the
//! changelog. The effects equal the ones computed without Kafka.

use crate::support::kafka;
use crate::support::scenario;

use driftgate::api::control::ControlPlane;
use driftgate::config::{InputFormat, RunConfig};
use driftgate::kafka::commands::PipelineControl;
use driftgate::kafka::pipeline::{Pipeline, Status};
use driftgate::obs::metrics::Metrics;
use kafka::produce;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::BaseProducer;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use scenario::{assert_same_effects, final_lanes, offline_effects, records};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PARTS: i32 = 4;
const INPUT: &str = "telemetry";
const GROUP: &str = "driftgate-coop";

/// Log lines of every pipeline thread, in one buffer (each line names its thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn of(&self, thread: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).to_string();
        text.lines().filter(|l| l.contains(thread)).map(str::to_string).collect()
    }
}

fn config(bootstrap: &str) -> RunConfig {
    let mut cfg = RunConfig::default();
    let k = &mut cfg.kafka;
    k.brokers = bootstrap.to_string();
    k.group_id = GROUP.into();
    k.input_topics = vec![INPUT.into()];
    k.format = InputFormat::Json;
    k.commit_interval = driftgate_core::pact::duration::Dur(200_000);
    k.startup_timeout = driftgate_core::pact::duration::Dur(10_000_000);
    k.topics.enforcement = "enforcement".into();
    k.topics.snapshot = "snapshot".into();
    k.topics.history = "history".into();
    k.topics.dead_letter = "dead-letter".into();
    k.topics.changelog = "changelog".into();
    k.properties.insert("session.timeout.ms".into(), "6000".into());
    // Small fetches keep both members busy for a while.
    k.properties.insert("max.partition.fetch.bytes".into(), "65536".into());
    cfg.http.listen = String::new();
    // No ticks: the records must still be held behind the watermark when a partition is
    // revoked (the idle gaps between the phases would otherwise release them).
    cfg.engine.idle_timeout = driftgate_core::pact::duration::Dur(0);
    cfg
}

/// A pipeline on its own named thread; stopped by its status flag.
struct Member {
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    control: Arc<PipelineControl>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Member {
    fn start(name: &str, bootstrap: &str) -> Member {
        let status = Arc::new(Status::default());
        let metrics = Arc::new(Metrics::new());
        let (cfg, s, m) = (config(bootstrap), status.clone(), metrics.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let pact = driftgate_core::pact::parse_pact(scenario::PACTS, "pacts.yaml").expect("valid pact");
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let p = Pipeline::start(cfg, vec![pact], s, m).map_err(|e| e.to_string())?;
                let _ = tx.send(p.control());
                p.run().map_err(|e| e.to_string())
            })
            .expect("spawn");
        let control = rx.recv_timeout(Duration::from_secs(60)).expect("the pipeline started");
        Member { status, metrics, control, thread: Some(thread) }
    }

    /// Graceful stop: revoke (snapshot, flush, commit), leave the group.
    fn stop(mut self) {
        self.status.stop.store(true, Ordering::SeqCst);
        let r = self.thread.take().expect("running").join().expect("pipeline thread panicked");
        assert!(r.is_ok(), "pipeline failed: {r:?}");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.status.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(logs: &Logs, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            let all = logs.of("member-");
            let tail = &all[all.len().saturating_sub(60)..];
            panic!("timed out after {secs} s waiting for {what}; last log lines:\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn committed(bootstrap: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTS {
        tpl.add_partition(INPUT, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| t.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum())
        .unwrap_or(0)
}

fn read_all(bootstrap: &str, topic: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("partition");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8(m.payload().expect("payload").to_vec()).expect("utf-8"))
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            _ => assert!(Instant::now() < deadline, "{topic} not read to its end"),
        }
    }
    out
}

/// `partitions revoked` / `partitions assigned` lines of one member, in order.
fn rebalances(logs: &Logs, thread: &str) -> Vec<String> {
    logs.of(thread)
        .into_iter()
        .filter(|l| {
            l.contains("partitions revoked")
                || l.contains("partitions assigned")
                || l.contains("state restored")
        })
        .collect()
}

/// One log buffer for the process (a subscriber is installed once); tests read their own
/// threads' lines.
fn logs() -> Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("driftgate=info,librdkafka=info")
            .with_thread_names(true)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .init();
        logs
    })
    .clone()
}

/// The tests run one at a time: two cores running both starve heartbeats.
static SERIAL: Mutex<()> = Mutex::new(());

fn cluster_with_topics() -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic(INPUT, PARTS, 1).expect("topic");
    for (t, n) in
        [("enforcement", 1), ("snapshot", 1), ("history", PARTS), ("dead-letter", 1), ("changelog", PARTS)]
    {
        cluster.create_topic(t, n, 1).expect("topic");
    }
    (cluster, bootstrap)
}

/// A mock cluster with the topics, the first `first` scenario records produced, and a member
/// that has committed them all.
fn committed_member(
    logs: &Logs,
    name: &str,
    first: usize,
) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String, Vec<Rec>, Member) {
    let (cluster, bootstrap) = cluster_with_topics();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let recs = records(PARTS);
    produce(&producer, INPUT, &recs[..first]);
    let member = Member::start(name, &bootstrap);
    wait_for(logs, 60, &format!("{name} to commit the records"), || committed(&bootstrap) >= first as i64);
    (cluster, bootstrap, recs, member)
}

/// A scenario record: agent, payload, timestamp (ms), partition.
type Rec = (String, Vec<u8>, i64, i32);

/// The HTTP API over `member`'s pipeline, waiting `durable` for an override's durability;
/// the runtime serving it, and the overrides URL (token `t0ken`).
fn serve_api(member: &Member, durable: Duration) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("listener");
    let url = format!("http://{}/v1/overrides", listener.local_addr().expect("address"));
    let control: Arc<dyn ControlPlane> = member.control.clone();
    let state = driftgate::api::http::ApiState::new(
        control,
        driftgate::api::auth::Credentials::new(Some("t0ken"), None, 300),
    )
    .with_durable_timeout(durable);
    rt.spawn(driftgate::api::http::serve(listener, state));
    (rt, url)
}

#[test]
fn cooperative_rebalancing_moves_only_what_changes_and_state_follows() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let logs = logs();
    let (_cluster, bootstrap) = cluster_with_topics();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let recs = records(PARTS);
    let (third, total) = (recs.len() / 3, recs.len() as i64);

    // One member takes everything; a second joins mid-stream; then the second leaves.
    produce(&producer, INPUT, &recs[..third]);
    let a = Member::start("member-a", &bootstrap);
    wait_for(&logs, 60, "member-a to process the first third", || committed(&bootstrap) >= third as i64);
    let b = Member::start("member-b", &bootstrap);
    wait_for(&logs, 60, "member-b to hold partitions", || b.status.assigned.load(Ordering::SeqCst));
    // a had consumed everything produced, so the tail of each partition (within the 5 s of
    // out-of-orderness) was waiting behind the watermark when a gave the partitions up: it
    // must reach b in the snapshot (the effects below would otherwise differ).
    let carried = a.metrics.revoked_buffered_records.get();
    assert!(carried > 0, "the revoke found no record waiting behind the watermark");
    produce(&producer, INPUT, &recs[third..2 * third]);
    wait_for(&logs, 120, "the second third committed", || committed(&bootstrap) >= 2 * third as i64);
    b.stop();
    produce(&producer, INPUT, &recs[2 * third..]);
    wait_for(&logs, 120, "member-a to finish", || committed(&bootstrap) >= total);
    a.stop();

    // Cooperative: when b joined, a gave up exactly the two partitions that moved and kept
    // the other two (an eager rebalance would revoke all four); when b left, a got those two
    // back with their state restored.
    let a_log = rebalances(&logs, "member-a");
    let b_log = rebalances(&logs, "member-b");
    let revoked: Vec<&String> = a_log.iter().filter(|l| l.contains("partitions revoked")).collect();
    assert!(!revoked.is_empty(), "member-a gave up partitions when member-b joined:\n{}", a_log.join("\n"));
    let moved = revoked[0].matches(&format!("(\"{INPUT}\", ")).count();
    assert_eq!(moved, 2, "only the partitions that move are revoked:\n{}", a_log.join("\n"));
    let restored_by_a = a_log.iter().filter(|l| l.contains("state restored")).count();
    assert_eq!(
        restored_by_a,
        2,
        "member-a restored exactly the two partitions it took back:\n{}",
        a_log.join("\n")
    );
    assert_eq!(
        b_log.iter().filter(|l| l.contains("state restored")).count(),
        2,
        "member-b restored what it took over:\n{}",
        b_log.join("\n")
    );

    let (got, dups) = scenario::dedup(read_all(&bootstrap, "enforcement"));
    let want = offline_effects(PARTS);
    assert_same_effects(&got, &want, dups);
    assert_eq!(final_lanes(&got), final_lanes(&want));
    eprintln!("cooperative rebalance: {} effects, {dups} duplicates dropped, {carried} buffered records carried by the revoke; member-a: {:?}", got.len(), a_log);
}

/// After a restart, an agent's state is restored from the changelog. An operator can act
/// on it at once, before any new record of its partition arrives (traffic may have stopped,
/// which is when overrides matter most): the override is taken, confirmed durable by the
/// next snapshot, and its lane published.
#[test]
fn an_override_is_taken_on_restored_state_before_any_new_record() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let logs = logs();
    let (_cluster, bootstrap, recs, a) = committed_member(&logs, "restore-a", 20_000);
    let first = 20_000;
    a.stop();

    let b = Member::start("restore-b", &bootstrap);
    wait_for(&logs, 60, "restore-b to restore and hold every partition", || b.control.readiness().ready());
    let agent = recs[0].0.clone();
    let snapshot = b.control.agent(&agent).expect("answered").expect("restored from the changelog");
    // Dated at the agent's last evidence, so that it is valid in the partition's event time.
    let at = snapshot.clauses.iter().map(|c| c.last_evidence_at).max().expect("evidence");
    let wm_req = driftgate_core::model::overrides::OverrideRequest {
        override_id: "ovr-1".into(),
        agent_id: agent.clone(),
        scope: driftgate_core::model::lane::Scope::All,
        kind: driftgate_core::model::overrides::OverrideKind::Tighten,
        lane: Some(driftgate_core::model::lane::Lane::Watch),
        clause_id: None,
        principal: "oncall".into(),
        reason: "test".into(),
        ticket: "T-1".into(),
        issued_at: at,
        expires_at: Some(at + 3_600_000_000),
        expected_seq: Some(snapshot.seq),
    };
    let durability = b.control.submit_override(wm_req.clone(), 0).expect("taken on restored state");
    assert_eq!(durability.wait(Duration::from_secs(30)), Some(Ok(())), "the override confirmed durable");
    let now = b.control.agent(&agent).expect("answered").expect("known");
    assert!(now.overrides.iter().any(|o| o.override_id == "ovr-1"));
    assert_eq!(
        (now.lane, now.seq),
        (driftgate_core::model::lane::Lane::Watch, snapshot.seq + 2),
        "one event per scope"
    );
    assert_eq!(committed(&bootstrap), first as i64, "no new record was needed");
    b.stop();
    let published: Vec<serde_json::Value> =
        read_all(&bootstrap, "enforcement").iter().map(|t| serde_json::from_str(t).unwrap()).collect();
    assert!(
        published.iter().any(|e| e["agent_id"] == agent.as_str()
            && e["reason"]["code"] == "override_applied"
            && e["lane_to"] == "watch"),
        "the override's event was published"
    );
}

#[test]
fn an_override_not_durable_in_time_is_answered_504_and_a_retry_is_answered_once_durable() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let logs = logs();
    let (cluster, _bootstrap, recs, a) = committed_member(&logs, "durable-a", 4_000);
    let agent = recs[0].0.clone();
    let snapshot = a.control.agent(&agent).expect("answered").expect("known");
    let at = snapshot.clauses.iter().map(|c| c.last_evidence_at).max().expect("evidence");

    // The HTTP API over the running pipeline, waiting 2 s for durability.
    let (_rt, url) = serve_api(&a, Duration::from_secs(2));
    let http = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let body = serde_json::json!({
        "override_id": "ovr-slow", "agent_id": agent, "kind": "tighten", "lane": "watch",
        "principal": "oncall", "reason": "test", "ticket": "T-2",
        "issued_at": at, "expires_at": at + 3_600_000_000i64, "expected_seq": snapshot.seq,
    });
    let post = || -> (u16, serde_json::Value) {
        let mut r = http
            .post(&url)
            .header("Authorization", "Bearer t0ken")
            .header("content-type", "application/json")
            .send(body.to_string().as_str())
            .expect("request");
        (
            r.status().as_u16(),
            serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("JSON"),
        )
    };

    // Every broker round trip now takes 3 s: the snapshot holding the override cannot be
    // acknowledged within the API's 2 s.
    cluster.broker_round_trip_time(1, Duration::from_secs(3)).expect("rtt");
    let started = Instant::now();
    let (status, v) = post();
    let waited = started.elapsed();
    assert_eq!((status, v["error"].as_str()), (504, Some("not_durable")), "{v}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    assert!(
        a.control
            .agent(&agent)
            .expect("answered")
            .expect("known")
            .overrides
            .iter()
            .any(|o| o.override_id == "ovr-slow"),
        "handed to the engine"
    );

    // A retry while the broker is still slow is not answered 201 before a snapshot holding the
    // override is durable, and is not applied twice.
    let (status, v) = post();
    assert_eq!((status, v["error"].as_str()), (504, Some("not_durable")), "{v}");

    // The broker recovers; retrying with the same override_id is safe and is answered once a
    // snapshot holding the override is durable.
    cluster.broker_round_trip_time(1, Duration::ZERO).expect("rtt");
    let deadline = Instant::now() + Duration::from_secs(90);
    // With 3 s round trips the member may also have lost its group session and be taking its
    // partitions back: while it does, the agent is unknown here (404) or the pipeline busy
    // (503), which the log shows as a revoke.
    let rebalanced = || logs.of("durable-a").iter().any(|l| l.contains("partitions revoked"));
    let (status, v) = loop {
        let (status, v) = post();
        let retry = status == 504 || (matches!(status, 404 | 503) && rebalanced());
        if !retry || Instant::now() > deadline {
            break (status, v);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 201, "{v}");
    let now = a.control.agent(&agent).expect("answered").expect("known");
    assert_eq!(now.overrides.iter().filter(|o| o.override_id == "ovr-slow").count(), 1, "applied once");
    assert_eq!(
        (now.lane, now.seq),
        (driftgate_core::model::lane::Lane::Watch, snapshot.seq + 2),
        "one event per scope, once"
    );
    a.stop();
}

/// A revoke while overrides wait for their answers. Every produce request fails (a broker
/// refusing writes), so no snapshot holding the overrides can be acknowledged; then a second
/// member joins and takes half the partitions. The revoke's final snapshot cannot be flushed
/// either, so the overrides on the moved partitions are answered `503 not_durable`: retry
/// against the new owner. The others stay with the first member and are answered `201` once
/// the broker takes writes again. A retry on the new owner succeeds there.
#[test]
fn an_override_whose_partition_is_revoked_before_it_is_durable_is_answered_503_and_a_retry_succeeds_on_the_new_owner(
) {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let logs = logs();
    let (cluster, bootstrap, recs, a) = committed_member(&logs, "revoked-a", 4_000);
    let first = 4_000;
    // One agent per partition, with the request that tightens it.
    let agents: Vec<String> = (0..PARTS)
        .map(|p| recs[..first].iter().find(|r| r.3 == p).expect("an agent per partition").0.clone())
        .collect();
    let request = |agent: &str, seq: u64, at: i64| {
        serde_json::json!({
            "override_id": format!("ovr-{agent}"), "agent_id": agent, "kind": "tighten", "lane": "watch",
            "principal": "oncall", "reason": "test", "ticket": "T-3",
            "issued_at": at, "expires_at": at + 3_600_000_000i64, "expected_seq": seq,
        })
    };
    // Dated 10 s before the partition's newest event: behind its watermark (so applied at
    // once) and within the allowed lateness.
    let bodies: Vec<serde_json::Value> = agents
        .iter()
        .enumerate()
        .map(|(p, agent)| {
            let s = a.control.agent(agent).expect("answered").expect("known");
            let newest =
                recs[..first].iter().filter(|r| r.3 == p as i32).map(|r| r.2).max().expect("records");
            request(agent, s.seq, newest * 1000 - 10_000_000)
        })
        .collect();

    // The HTTP API over the first member, waiting up to 120 s for durability.
    let (_rt, url) = serve_api(&a, Duration::from_secs(120));

    // Every write now fails (retriably: the producers keep trying).
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    let answers: Vec<_> = bodies
        .iter()
        .map(|body| {
            let (url, body) = (url.clone(), body.to_string());
            std::thread::spawn(move || {
                let http = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
                let mut r = http
                    .post(&url)
                    .header("Authorization", "Bearer t0ken")
                    .header("content-type", "application/json")
                    .send(body.as_str())
                    .expect("request");
                let text = r.body_mut().read_to_string().expect("body");
                (r.status().as_u16(), serde_json::from_str::<serde_json::Value>(&text).expect("JSON"))
            })
        })
        .collect();
    wait_for(&logs, 30, "every override handed to revoked-a's engines", || {
        agents.iter().all(|agent| {
            a.control
                .agent(agent)
                .ok()
                .flatten()
                .is_some_and(|s| s.overrides.iter().any(|o| o.override_id == format!("ovr-{agent}")))
        })
    });

    // A second member joins: half the partitions move while their overrides wait.
    let b = Member::start("revoked-b", &bootstrap);
    let moved: Vec<usize> = {
        wait_for(&logs, 120, "revoked-b to hold partitions", || b.status.assigned.load(Ordering::SeqCst));
        wait_for(&logs, 120, "revoked-a to give two partitions up", || {
            agents.iter().filter(|ag| matches!(a.control.agent(ag), Ok(None))).count() == 2
        });
        (0..agents.len()).filter(|i| matches!(a.control.agent(&agents[*i]), Ok(None))).collect()
    };
    let mut answers: Vec<Option<_>> = answers.into_iter().map(Some).collect();
    for &i in &moved {
        let (status, v) = answers[i].take().expect("once").join().expect("request thread");
        assert_eq!((status, v["error"].as_str()), (503, Some("not_durable")), "{}: {v}", agents[i]);
        assert!(v["message"].as_str().unwrap_or_default().contains("revoked"), "{v}");
    }
    // Writes succeed again: the overrides that stayed are answered once durable.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    for (i, answer) in answers.into_iter().enumerate() {
        if let Some(thread) = answer {
            let (status, v) = thread.join().expect("request thread");
            assert_eq!(status, 201, "{}: {v}", agents[i]);
        }
    }
    // The new owner restored the moved agents without the override (it was never durable);
    // the same request, retried there, is taken and made durable.
    for &i in &moved {
        let agent = &agents[i];
        let restored = b.control.agent(agent).expect("answered").expect("held by the new owner");
        assert!(restored.overrides.is_empty(), "{restored:?}");
        let req = serde_json::from_value(bodies[i].clone()).expect("request");
        let durable = b.control.submit_override(req, 0).expect("taken by the new owner");
        assert_eq!(durable.wait(Duration::from_secs(60)), Some(Ok(())), "{agent}");
        let now = b.control.agent(agent).expect("answered").expect("held");
        assert_eq!(now.lane, driftgate_core::model::lane::Lane::Watch, "{agent}");
    }
    b.stop();
    a.stop();
}
