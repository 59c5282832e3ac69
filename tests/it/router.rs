//! The router side on the real broker: the library bootstrapping from the snapshot topic and
//! following the enforcement topic (started mid-stream, and restarted), and the decision
//! sidecar behind a real NGINX (`auth_request`), from a healthy agent through a block, an
//! override, driftgate stopping and driftgate coming back.

use crate::durable_state::{committed, config, serial, PARTITIONS};
use crate::support::kafka::{self, wait_for, Broker, Engine, Topics};
use crate::support::nginx::{route_config, Nginx, Upstream};
use crate::support::scenario;
use driftgate_core::model::lane::Lane;
use driftgate_core::model::router_view::AgentSnapshot;
use driftgate_core::model::telemetry::Risk;
use driftgate_router::{follow, FollowConfig, Policy, Router};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn follow_config(b: &Broker, t: &Topics) -> FollowConfig {
    FollowConfig {
        brokers: b.bootstrap(),
        snapshot_topic: t.snapshot.clone(),
        enforcement_topic: t.enforcement.clone(),
        properties: BTreeMap::new(),
        startup_timeout: Duration::from_secs(10),
    }
}

/// The engine's own view: the newest snapshot per agent on the snapshot topic.
fn engine_lanes(b: &Broker, t: &Topics) -> BTreeMap<String, (Lane, Lane)> {
    let mut out = BTreeMap::new();
    for r in b.read_all(&t.snapshot) {
        if r.header("driftgate.kind").is_some() || r.header(INJECTED).is_some() {
            continue;
        }
        let s: AgentSnapshot = serde_json::from_slice(r.value.as_deref().unwrap_or_default()).unwrap();
        out.insert(s.agent_id, (s.lane, s.high_risk_lane));
    }
    out
}

/// Marks the malformed records a test puts on driftgate's topics.
const INJECTED: &str = "test.injected";

/// Produces one record with headers, waiting for it.
fn produce_with_headers(b: &Broker, topic: &str, key: &str, value: &[u8], headers: &[(&str, &str)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, Producer};
    let p = b.producer();
    let mut h = OwnedHeaders::new().insert(Header { key: INJECTED, value: Some("1") });
    for (k, v) in headers {
        h = h.insert(Header { key: k, value: Some(*v) });
    }
    p.send(BaseRecord::to(topic).key(key).payload(value).headers(h)).map_err(|(e, _)| e).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
}

/// Four malformed records, two per topic. Two of them would block an agent if applied.
fn inject_malformed(b: &Broker, t: &Topics) {
    let snapshot = |agent: &str| {
        serde_json::json!({"agent_id": agent, "seq": 1_000_000, "incarnation": i64::MAX, "lane": "block", "high_risk_lane": "block",
            "workflow": "finance", "model_version": "v1", "model_change": null, "last_seen": 0, "clauses": [], "overrides": []})
        .to_string()
    };
    produce_with_headers(b, &t.snapshot, "fin-05", b"[]", &[]);
    produce_with_headers(
        b,
        &t.snapshot,
        "fin-06",
        snapshot("fin-06").as_bytes(),
        &[("driftgate.source", "no-partition")],
    );
    produce_with_headers(b, &t.enforcement, "fin-07", b"{", &[("driftgate.kind", "enforcement")]);
    // A valid block for fin-09 under fin-08's key.
    let event = serde_json::json!({"event_id": "x", "seq": 1_000_000, "agent_id": "fin-09", "pact_id": null, "pact_version": null,
        "clause_id": null, "segment": null, "lane_from": "normal", "lane_to": "block", "action": "block", "scope": "all",
        "enforced": true, "effective_at": 0, "expires_at": null, "min_dwell_until": null,
        "reason": {"code": "zero_tolerance_breach", "text": "t"}, "detection": null, "evidence": null, "override": null,
        "causation": {"kind": "telemetry", "id": "e", "at": 0}})
    .to_string();
    produce_with_headers(b, &t.enforcement, "fin-08", event.as_bytes(), &[("driftgate.kind", "enforcement")]);
}

fn router_lanes(r: &Router) -> BTreeMap<String, (Lane, Lane)> {
    r.table().lanes().into_iter().map(|(k, v)| (k, (v.all, v.high_risk))).collect()
}

#[test]
fn a_router_started_mid_stream_and_one_restarted_end_with_the_engines_table() {
    let _serial = serial();
    let b = Broker::shared();
    let t = Topics::create(b, "router-follow", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), b, &t.input, &t, &t.group);
    let records = scenario::records(PARTITIONS);
    let total = records.len() as i64;
    let (first, second) = records.split_at(records.len() / 2);
    let p = b.producer();
    kafka::produce(&p, &t.input, first);
    let engine = Engine::start(&cfg);
    // Mid-stream: the first incidents are published, the rest are still to come.
    wait_for(120, "the first half to be committed", || {
        (committed(b, &t.group, &t.input) >= first.len() as i64).then_some(())
    });
    let early = engine_lanes(b, &t);
    assert!(early.values().any(|l| l.0 != Lane::Normal), "no incident yet in the first half: {early:?}");
    let mid = Arc::new(Router::new(Policy::default()));
    let follower = follow(follow_config(b, &t), mid.clone()).unwrap();
    wait_for(30, "the mid-stream router to bootstrap", || mid.is_ready().then_some(()));
    inject_malformed(b, &t);
    kafka::produce(&p, &t.input, second);
    wait_for(180, "the run to finish", || (committed(b, &t.group, &t.input) >= total).then_some(()));
    assert!(engine.stop().success());

    let truth = engine_lanes(b, &t);
    // The offline ground truth agrees with the engine's snapshots.
    let offline = scenario::final_lanes(&scenario::offline_effects(PARTITIONS));
    for ((agent, scope), lane) in &offline {
        let l = truth.get(agent).map(|l| if scope == "all" { l.0 } else { l.1 });
        assert_eq!(l.map(Lane::as_str), Some(lane.as_str()), "{agent} {scope}");
    }
    assert!(
        truth.values().filter(|l| l.0 != Lane::Normal).count()
            > early.values().filter(|l| l.0 != Lane::Normal).count()
    );
    let converged = |r: &Router| (router_lanes(r) == truth).then_some(());
    wait_for(30, "the mid-stream router to converge on the engine's table", || converged(&mid));
    follower.stop();

    // A restarted router (a new process would do the same) converges to the same table.
    let restarted = Arc::new(Router::new(Policy::default()));
    let f2 = follow(follow_config(b, &t), restarted.clone()).unwrap();
    wait_for(30, "the restarted router to bootstrap", || restarted.is_ready().then_some(()));
    assert_eq!(router_lanes(&restarted), truth, "the snapshot topic alone gives the engine's table");
    f2.stop();
    // The injected records were skipped and counted, by topic; the tables above show they
    // changed no lane. The restarted router reads the snapshot topic from its beginning and the
    // enforcement topic from its end.
    let m = |r: &Router, i: usize| r.follow.malformed[i].load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((m(&mid, 0), m(&mid, 1), m(&restarted, 0), m(&restarted, 1)), (2, 2, 2, 0));
    assert!(
        mid.follow.applied[1].load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the mid-stream router followed events"
    );
}

// ---- the sidecar behind NGINX ----

/// One critical clause: a PII leak blocks the agent on arrival.
const PACT: &str = "pact: route\nversion: 1\napplies_to: { agents: [\"*\"] }\nclauses:\n  - id: no-pii\n    metric: { kind: bernoulli, value: pii_detected }\n    test: { kind: limit, zero_tolerance: true }\n    severity: critical\n    consequence: block\n";
const TOKEN: &str = "route-test-token";
const MAX_STALENESS: Duration = Duration::from_secs(3);

fn engine_config(dir: &Path, b: &Broker, t: &Topics, listen: &str) -> PathBuf {
    std::fs::write(dir.join("pact.yaml"), PACT).unwrap();
    let cfg = format!(
        r#"
pacts = ["pact.yaml"]
[kafka]
brokers = "{}"
group_id = "{}"
input_topics = ["{}"]
format = "json"
commit_interval = "200ms"
startup_timeout = "10s"
{}[kafka.properties]
"session.timeout.ms" = "6000"
[kafka.consumer_properties]
"fetch.wait.max.ms" = "10"
"group.instance.id" = "route-test"
[kafka.producer_properties]
"linger.ms" = "0"
[engine]
max_out_of_orderness = "0s"
idle_timeout = "1s"
max_event_lag = "1s"
heartbeat_interval = "500ms"
[http]
listen = "{listen}"
override_token = "{TOKEN}"
"#,
        b.bootstrap(),
        t.group,
        t.input,
        t.toml(),
    );
    let p = dir.join("engine.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn tel(agent: &str, i: u64, risk: Risk, pii: bool) -> Vec<u8> {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    serde_json::to_vec(&driftgate_core::model::telemetry::Telemetry {
        event_id: format!("{agent}-{i}").into(),
        agent_id: agent.into(),
        workflow: "live".into(),
        model: driftgate_core::model::telemetry::Model {
            provider: "acme".into(),
            name: "m".into(),
            version: "v1".into(),
        },
        occurred_at: at,
        risk,
        outcome: driftgate_core::model::telemetry::Outcome::Ok,
        latency_ms: Some(10.0),
        citations: None,
        pii_detected: Some(pii),
        tool_calls: vec![],
        attributes: Default::default(),
    })
    .unwrap()
}

fn send(p: &rdkafka::producer::BaseProducer, topic: &str, agent: &str, value: Vec<u8>) {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    kafka::produce(p, topic, &[(agent.to_string(), value, at, 0)]);
}

#[test]
fn nginx_guards_a_route_with_the_sidecar_from_block_to_override_to_driftgate_stopping() {
    let _serial = serial();
    let b = Broker::shared();
    let t = Topics::create(b, "route-nginx", 1);
    let dir = tempfile::tempdir().unwrap();
    let api_port = kafka::free_port();
    let ecfg = engine_config(dir.path(), b, &t, &format!("127.0.0.1:{api_port}"));
    let side_port = kafka::free_port();
    let staleness = format!("max_staleness = \"{}ms\"", MAX_STALENESS.as_millis());
    let rcfg = route_config(dir.path(), b, &t, &format!("127.0.0.1:{side_port}"), &staleness);
    let p = b.producer();
    for i in 0..3 {
        send(&p, &t.input, "good", tel("good", i, Risk::Low, false));
        send(&p, &t.input, "bad", tel("bad", i, Risk::Low, false));
    }
    let mut engine = Engine::start(&ecfg);
    let sidecar = Engine::spawn("route", &rcfg, "driftgate=debug,driftgate_router=debug,info");
    let upstream = Upstream::start();
    let nginx = Nginx::start(dir.path(), side_port, upstream.port());
    let http =
        ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let side = format!("http://127.0.0.1:{side_port}");
    wait_for(60, "the sidecar to be ready and to see heartbeats", || {
        let ready = http.get(&format!("{side}/readyz")).call().ok()?.status() == 200;
        let d = decision(&http, &side, "good", "high")?;
        (ready && d["stale"] == false).then_some(())
    });

    // A healthy agent passes; the gateway passes the lane on to the upstream.
    let (st, lane, _) = nginx.get("good", "low");
    assert_eq!(
        (st, lane.as_deref()),
        (200, Some("watch")),
        "an agent without events is unknown: watch, allowed"
    );
    assert_eq!(upstream.lanes_for("good"), ["watch"], "the lane is passed on to the service");
    let (st, _, _) = nginx.get("bad", "high");
    assert_eq!(st, 200);
    // A request without an agent id is not under any pact: denied.
    let bare = http.get(&format!("http://127.0.0.1:{}/", nginx.port())).call().unwrap();
    assert_eq!(bare.status().as_u16(), 403);
    assert_eq!(bare.headers().get("x-driftgate-reason").and_then(|v| v.to_str().ok()), Some("missing_agent"));

    // A critical breach: NGINX refuses the agent once the block reaches the sidecar.
    let produced = Instant::now();
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    kafka::produce_now(&p, &t.input, "bad", &tel("bad", 10, Risk::Low, true), now_ms);
    let blocked_after = wait_for(30, "NGINX to refuse the blocked agent", || {
        (nginx.get("bad", "low").0 == 403).then(|| produced.elapsed())
    });
    // Bound: the producer's linger, one hop to the engine and one to the sidecar (each with a
    // 10 ms fetch wait), NGINX, and this loop's polling: tens of ms. 2 s leaves room for a
    // loaded machine; seconds would mean the path waits on something it should not.
    assert!(blocked_after < Duration::from_secs(2), "block → 403 took {blocked_after:?}");
    let reached = upstream.requests_for("bad");
    let (st, _, reason) = nginx.get("bad", "low");
    assert_eq!((st, reason.as_deref()), (403, Some("zero_tolerance_breach")));
    assert_eq!(nginx.get("bad", "high").0, 403);
    assert_eq!(nginx.get("good", "low").0, 200, "only the breaching agent is refused");
    assert_eq!(upstream.requests_for("bad"), reached, "no refused request reached the upstream");

    // An authenticated loosening override lets it pass again.
    let api = format!("http://127.0.0.1:{api_port}");
    let snap: AgentSnapshot = wait_for(10, "the agent's state", || {
        let mut r = http.get(&format!("{api}/v1/agents/bad")).call().ok()?;
        serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
    });
    assert_eq!(snap.lane, Lane::Block);
    let body = serde_json::json!({"override_id": "loosen-1", "agent_id": "bad", "kind": "loosen", "lane": "normal", "scope": "all",
        "principal": "trust-lead", "reason": "false positive, INC-7 reviewed", "ticket": "INC-7",
        "issued_at": snap.last_seen, "expires_at": snap.last_seen + 3_600_000_000_i64, "expected_seq": snap.seq}).to_string();
    let mut r = http
        .post(&format!("{api}/v1/overrides"))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .send(body.as_str())
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.body_mut().read_to_string().unwrap_or_default());
    wait_for(10, "NGINX to let the loosened agent pass", || (nginx.get("bad", "low").0 == 200).then_some(()));
    let d = decision(&http, &side, "bad", "low").unwrap();
    assert_eq!((d["lane"].as_str(), d["reason"].as_str()), (Some("normal"), Some("override_applied")));

    // driftgate stops: after max_staleness, high-risk requests fall back to review (denied),
    // others keep their lane, marked stale.
    let stopped = Instant::now();
    assert!(engine.stop().success());
    let fell_back = wait_for(30, "high-risk requests to fall back", || {
        (nginx.get("good", "high").0 == 403).then(|| stopped.elapsed())
    });
    assert!(
        fell_back >= MAX_STALENESS - Duration::from_millis(600),
        "fell back after {fell_back:?}, before max_staleness"
    );
    let (st, _, reason) = nginx.get("good", "high");
    assert_eq!((st, reason.as_deref()), (403, Some("stale_fallback")));
    assert_eq!(nginx.get("good", "low").0, 200, "low-risk requests keep the last known lane");
    let d = decision(&http, &side, "bad", "low").unwrap();
    assert_eq!((d["lane"].as_str(), d["stale"].as_bool()), (Some("normal"), Some(true)));
    // A malformed record is skipped, counted and logged with its place, and changes nothing.
    produce_with_headers(b, &t.enforcement, "bad", b"{not json", &[("driftgate.kind", "enforcement")]);
    let malformed = |http: &ureq::Agent| {
        let text = http.get(&format!("{side}/metrics")).call().ok()?.body_mut().read_to_string().ok()?;
        let s = crate::support::scrape::samples(&text);
        Some(crate::support::scrape::sum(
            &s,
            "driftgate_router_malformed_records_total",
            &[r#"topic="enforcement""#],
        ))
    };
    wait_for(10, "the malformed record to be counted", || (malformed(&http)? == 1.0).then_some(()));
    let log = sidecar.log_text();
    let line =
        log.lines().find(|l| l.contains("skipped a malformed record")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&t.enforcement) && line.contains("partition=0") && line.contains("offset="),
        "{line}"
    );
    let d = decision(&http, &side, "bad", "low").unwrap();
    assert_eq!(d["lane"].as_str(), Some("normal"));
    let metrics = http.get(&format!("{side}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    let s = crate::support::scrape::samples(&metrics);
    assert!(
        crate::support::scrape::sum(&s, "driftgate_router_stale_decisions_total", &[]) >= 2.0,
        "{metrics}"
    );
    assert!(
        crate::support::scrape::sum(&s, "driftgate_router_staleness_seconds", &[])
            > MAX_STALENESS.as_secs_f64()
    );

    // driftgate restarts: the fallback ends by itself.
    engine = Engine::start(&ecfg);
    wait_for(60, "high-risk requests to pass again", || (nginx.get("good", "high").0 == 200).then_some(()));
    let d = decision(&http, &side, "bad", "low").unwrap();
    assert_eq!((d["lane"].as_str(), d["stale"].as_bool()), (Some("normal"), Some(false)));
    let metrics = http.get(&format!("{side}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    let s = crate::support::scrape::samples(&metrics);
    assert!(
        crate::support::scrape::sum(&s, "driftgate_router_decisions_total", &[r#"lane="block""#]) >= 1.0,
        "{metrics}"
    );
    assert!(crate::support::scrape::sum(&s, "driftgate_router_unknown_agent_decisions_total", &[]) >= 1.0);
    assert_eq!(crate::support::scrape::sum(&s, "driftgate_router_malformed_records_total", &[]), 1.0);
    crate::support::contract::promtool_check_metrics(&metrics);
    drop(engine);
    drop(sidecar);
    drop(nginx);
}

fn decision(http: &ureq::Agent, side: &str, agent: &str, risk: &str) -> Option<serde_json::Value> {
    let mut r = http.get(&format!("{side}/v1/decision?agent={agent}&risk={risk}")).call().ok()?;
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}
