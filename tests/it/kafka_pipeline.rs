//! `driftgate run` against Apache Kafka (see tests/it/support):
//! end to end with Avro telemetry, dead letters, and configuration errors.

use crate::support::contract;
use crate::support::kafka;
use crate::support::registry;
use crate::support::scenario::Mix;
use crate::support::scrape;

use driftgate::kafka::decode::confluent_frame;
use driftgate_core::codec::avro_json::write_datum;
use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::lane::Lane;
use driftgate_core::model::router_view::AgentSnapshot;
use driftgate_core::model::telemetry::{Citations, Model, Outcome, Risk, Telemetry, TELEMETRY_AVSC};
use kafka::{produce, rand_suffix, wait_for, Broker, Engine, Topics};
use std::collections::BTreeMap;
use std::path::Path;

const T0: i64 = 1_772_409_600_000_000; // 2026-03-02T00:00:00Z, µs

const PACT: &str = r#"
pact: citations
version: 1
applies_to: { agents: ["fin-*"] }
clauses:
  - id: verified-citations
    metric: { kind: bernoulli, value: citations.verified > 0, when: citations.total > 0 }
    test: { kind: drift, detector: auto, false_alarm_rate: 1.0e-5, direction: decrease, reference_min: 300, reference_max: 1200 }
    severity: high
    consequence: degrade
    on_model_change: watch
"#;

fn write_config_with(
    dir: &Path,
    b: &Broker,
    t: &Topics,
    format: &str,
    commit_interval: &str,
    listen: &str,
) -> std::path::PathBuf {
    std::fs::write(dir.join("pact.yaml"), PACT).unwrap();
    std::fs::write(dir.join("telemetry.avsc"), TELEMETRY_AVSC).unwrap();
    std::fs::write(dir.join("no-agent.avsc"), no_agent_schema().canonical_form()).unwrap();
    let cfg = format!(
        r#"
pacts = ["pact.yaml"]
[kafka]
brokers = "{}"
group_id = "{}"
input_topics = ["{}"]
format = "{format}"
commit_interval = "{commit_interval}"
startup_timeout = "10s"
{}[kafka.properties]
"session.timeout.ms" = "6000"
"statistics.interval.ms" = "1000"
[schema_registry.static_schemas]
1 = "telemetry.avsc"
2 = "no-agent.avsc"
[http]
listen = "{listen}"
override_token = "kafka-test-token"
"#,
        b.bootstrap(),
        t.group,
        t.input,
        t.toml()
    );
    let p = dir.join("driftgate.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn event(agent: &str, i: u64, at: i64, version: &str, verified: bool) -> Telemetry {
    Telemetry {
        event_id: format!("{agent}-{i}").into(),
        agent_id: agent.into(),
        workflow: "finance".into(),
        model: Model { provider: "acme".into(), name: "ledger".into(), version: version.into() },
        occurred_at: at,
        risk: Risk::Low,
        outcome: Outcome::Ok,
        latency_ms: Some(800.0),
        citations: Some(Citations { total: 2, verified: verified as u32 }),
        pii_detected: Some(false),
        tool_calls: vec!["search".into()],
        attributes: Default::default(),
    }
}

/// Four finance agents, 1,500 events each, 10 s apart; fin-02 moves to model v2 at event
/// 1,000 and its verified-citation rate falls from 0.95 to 0.60.
fn scenario() -> Vec<Telemetry> {
    let mut rng = Mix(42);
    let mut out = Vec::new();
    for i in 0..1500u64 {
        for (a, agent) in ["fin-01", "fin-02", "fin-03", "fin-04"].iter().enumerate() {
            let at = T0 + (i as i64 * 10 + a as i64) * 1_000_000;
            let drifted = *agent == "fin-02" && i >= 1000;
            let p = if drifted { 0.60 } else { 0.95 };
            out.push(event(agent, i, at, if drifted { "v2" } else { "v1" }, rng.unit() < p));
        }
    }
    out
}

/// The scenario as Avro records for a 2-partition input: (key, value, timestamp ms, partition).
fn scenario_records() -> Vec<(String, Vec<u8>, i64, i32)> {
    scenario()
        .iter()
        .map(|e| (e.agent_id.to_string(), avro(e), e.occurred_at / 1000, partition_of(&e.agent_id, 2)))
        .collect()
}

fn avro(t: &Telemetry) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(TELEMETRY_AVSC).unwrap();
    confluent_frame(1, &write_datum(&schema, t.to_avro()).unwrap())
}

fn partition_of(agent: &str, partitions: i32) -> i32 {
    (agent.bytes().map(u32::from).sum::<u32>() % partitions as u32) as i32
}

fn no_agent_schema() -> apache_avro::Schema {
    let mut v: serde_json::Value = serde_json::from_str(TELEMETRY_AVSC).unwrap();
    v["fields"].as_array_mut().unwrap().retain(|f| f["name"] != "agent_id");
    apache_avro::Schema::parse_str(&v.to_string()).unwrap()
}

fn enforcement_events(b: &Broker, topic: &str) -> Vec<EnforcementEvent> {
    b.read_all(topic).iter().map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()).collect()
}

#[test]
fn drifted_agent_is_degraded_end_to_end_and_healthy_agents_untouched() {
    let b = Broker::shared();
    let t = Topics::create(b, "pipeline", 2);
    let dir = tempfile::tempdir().unwrap();
    let port = kafka::free_port();
    let api = format!("http://127.0.0.1:{port}");
    let cfg = write_config_with(dir.path(), b, &t, "avro", "200ms", &format!("127.0.0.1:{port}"));
    let control_topic = format!("control-{}", rand_suffix());
    b.create_topics(&[(&control_topic, 1, false)]);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[kafka.topics]\n", &format!("[kafka.topics]\ncontrol = \"{control_topic}\"\n"));
    std::fs::write(
        &cfg,
        text.replace(
            "override_token = \"kafka-test-token\"",
            "override_token = \"kafka-test-token\"\noverride_hmac_secret = \"kafka-test-secret\"",
        ),
    )
    .unwrap();
    let records = scenario_records();
    produce(&b.producer(), &t.input, &records);

    let engine = Engine::start(&cfg);
    let events = wait_for(120, "fin-02's degrade event", || {
        let ev = enforcement_events(b, &t.enforcement);
        ev.iter().any(|e| e.lane_to == Lane::Degrade).then_some(ev)
    });
    // The API and metrics of the running pipeline.
    let http = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let get = |path: &str| -> (u16, String) {
        let mut r = http.get(&format!("{api}{path}")).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(get("/readyz").0, 200);
    let (st, body) = get("/v1/agents/fin-02");
    assert_eq!(st, 200);
    let a: AgentSnapshot = serde_json::from_str(&body).unwrap();
    assert_eq!(a.lane, Lane::Degrade);
    assert_eq!(get("/v1/agents/fin-09").0, 404);
    // Wait for every record to be counted and for librdkafka's statistics (every 5 s) to
    // report the drained lag: a report taken mid-consumption still shows the backlog.
    let text = wait_for(30, "all records and zero lag in /metrics", || {
        let text = get("/metrics").1;
        let s = scrape::samples(&text);
        (scrape::sum(&s, "driftgate_records_consumed_total", &[]) == records.len() as f64
            && text.contains("driftgate_consumer_lag_records{")
            && scrape::sum(&s, "driftgate_consumer_lag_records", &[]) == 0.0)
            .then_some(text)
    });
    let s = scrape::samples(&text);
    assert_eq!(scrape::sum(&s, "driftgate_records_decoded_total", &[]), records.len() as f64);
    // Every record came through the batch queue: each partition was forwarded before it
    // was fetched from.
    assert_eq!(scrape::sum(&s, "driftgate_records_polled_singly_total", &[]), 0.0);
    assert_eq!(scrape::sum(&s, "driftgate_errors_total", &[r#"stage="forward""#]), 0.0);
    // One processing time per record (a batch's, shared): the drain bench counts on it.
    assert_eq!(scrape::sum(&s, "driftgate_processing_seconds_count", &[]), records.len() as f64);
    assert_eq!(scrape::sum(&s, "driftgate_records_dead_lettered_total", &[]), 0.0);
    assert_eq!(
        scrape::sum(&s, "driftgate_enforcement_events_total", &[]),
        enforcement_events(b, &t.enforcement).len() as f64
    );
    assert!(scrape::sum(&s, "driftgate_drift_to_enforcement_seconds_count", &[r#"clock="wall""#]) >= 1.0);
    assert_eq!(scrape::sum(&s, "driftgate_agents", &[r#"lane="degrade""#, r#"scope="all""#]), 1.0);
    assert_eq!(scrape::sum(&s, "driftgate_consumer_lag_records", &[]), 0.0, "drained");
    let have = scrape::families(&text);
    let missing: Vec<String> =
        scrape::referenced_by_deploy_kit(&scrape::root()).into_iter().filter(|m| !have.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alert rules use metrics the pipeline does not expose: {missing:?}"
    );

    // An override through the pipeline: refused without a token (and audited), accepted
    // with it once the state holding it is in the changelog.
    let last_at = T0 + (1499 * 10 + 3) * 1_000_000;
    let seq = serde_json::from_str::<AgentSnapshot>(&get("/v1/agents/fin-01").1).unwrap().seq;
    let body = serde_json::json!({"override_id": "kill-1", "agent_id": "fin-01", "kind": "emergency_kill", "principal": "ops", "reason": "test",
        "ticket": "INC-1", "issued_at": last_at - 10_000_000, "expires_at": last_at + 3_600_000_000_i64, "expected_seq": seq}).to_string();
    let post = |auth: Option<&str>| -> (u16, String) {
        let mut req = http.post(&format!("{api}/v1/overrides"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut r = req.send(body.as_str()).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(post(None).0, 401);
    let (st, resp) = post(Some("Bearer kafka-test-token"));
    assert_eq!(st, 201, "{resp}");
    let resp: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(resp["agent"]["lane"], "block");
    let hist = wait_for(30, "override records in the history topic", || {
        let h = b.read_all(&t.history);
        let text =
            |r: &kafka::Rec| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
        (h.iter().any(|r| text(r).contains("override_accepted"))
            && h.iter().any(|r| text(r).contains("override_rejected")))
        .then_some(h)
    });
    // The same through the control topic, signed: fin-03 is blocked.
    let ctl = serde_json::json!({"override_id": "kill-2", "agent_id": "fin-03", "kind": "emergency_kill", "principal": "ops", "reason": "test",
        "ticket": "INC-2", "issued_at": last_at - 10_000_000, "expires_at": last_at + 3_600_000_000_i64, "expected_seq": 0}).to_string();
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let sig = driftgate::api::auth::sign("kafka-test-secret", now_s, ctl.as_bytes());
    let p = b.producer();
    let h = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: "driftgate.timestamp", value: Some(&now_s.to_string()) })
        .insert(rdkafka::message::Header { key: "driftgate.signature", value: Some(&sig) });
    p.send(rdkafka::producer::BaseRecord::to(&control_topic).key("fin-03").payload(&ctl).headers(h))
        .map_err(|(e, _)| e)
        .unwrap();
    rdkafka::producer::Producer::flush(&p, std::time::Duration::from_secs(10)).unwrap();
    wait_for(30, "fin-03 blocked by the control topic", || {
        enforcement_events(b, &t.enforcement)
            .iter()
            .any(|e| e.agent_id == "fin-03" && e.lane_to == Lane::Block)
            .then_some(())
    });
    let audit = hist
        .iter()
        .find(|r| r.header("driftgate.chain").is_some_and(|c| c.starts_with("api/")))
        .expect("the refusal is in the API's audit chain");
    assert!(String::from_utf8_lossy(audit.value.as_deref().unwrap()).contains("unauthenticated"));

    // Both overrides expire in the running pipeline once event time passes their expiry
    // (the next records, an hour later), at exactly their expiry time.
    let expires_at = last_at + 3_600_000_000;
    let later: Vec<_> = (0..8u64)
        .map(|i| {
            let agent = ["fin-01", "fin-03"][i as usize % 2];
            let e = event(agent, 1500 + i, expires_at + (10 + i as i64) * 1_000_000, "v1", true);
            (e.agent_id.to_string(), avro(&e), e.occurred_at / 1000, partition_of(agent, 2))
        })
        .collect();
    produce(&b.producer(), &t.input, &later);
    let expired = wait_for(60, "both overrides expired", || {
        let ev: Vec<EnforcementEvent> = enforcement_events(b, &t.enforcement)
            .into_iter()
            .filter(|e| e.reason.code == "override_expired")
            .collect();
        (ev.len() == 4).then_some(ev)
    });
    for e in &expired {
        assert_eq!(
            (e.lane_from, e.lane_to, e.effective_at),
            (Lane::Block, Lane::Normal, expires_at),
            "{}",
            serde_json::to_string(e).unwrap()
        );
    }
    let records: Vec<_> = records.iter().chain(&later).cloned().collect();

    // Wait for the processed records to be committed (the last ones wait behind the
    // watermark, so up to 4 per partition stay uncommitted), then stop cleanly.
    let committed_total =
        |b: &Broker| b.committed(&t.group, &t.input, 2).iter().map(|c| c.unwrap_or(0)).sum::<i64>();
    wait_for(30, "the processed records committed", || {
        (committed_total(b) >= records.len() as i64 - 8).then_some(())
    });
    let log = engine.log_text();
    assert!(engine.stop().success(), "engine exited with an error:\n{log}");

    // Every event the telemetry caused, read to the end of the topic after the stop, is
    // exactly what the offline engine derives from the same records: healthy agents
    // untouched, fin-02 watched on the model update, then degraded.
    let all_events = enforcement_events(b, &t.enforcement);
    let by_override =
        |e: &EnforcementEvent| e.reason.code == "override_applied" || e.reason.code == "override_expired";
    let by_telemetry: Vec<EnforcementEvent> =
        all_events.iter().filter(|e| !by_override(e)).cloned().collect();
    let mut want = reference_events(&records, 2);
    let key = |e: &EnforcementEvent| (e.agent_id.to_string(), e.seq);
    want.sort_by_key(key);
    let mut got = by_telemetry.clone();
    got.sort_by_key(key);
    assert!(!want.is_empty());
    assert_eq!(got, want, "the pipeline's events differ from the offline ground truth");
    assert_eq!(events, by_telemetry[..events.len()], "the first read saw a prefix of the final topic");
    assert!(got.iter().all(|e| e.agent_id == "fin-02"), "healthy agents got events: {got:?}");
    let overrides: Vec<(&str, &str, Lane)> = all_events
        .iter()
        .filter(|e| by_override(e))
        .map(|e| (e.agent_id.as_str(), e.reason.code.as_str(), e.lane_to))
        .collect();
    assert_eq!(
        overrides,
        [
            ("fin-01", "override_applied", Lane::Block),
            ("fin-01", "override_applied", Lane::Block),
            ("fin-03", "override_applied", Lane::Block),
            ("fin-03", "override_applied", Lane::Block),
            ("fin-01", "override_expired", Lane::Normal),
            ("fin-01", "override_expired", Lane::Normal),
            ("fin-03", "override_expired", Lane::Normal),
            ("fin-03", "override_expired", Lane::Normal),
        ]
    );
    let events = got;
    let degrade = events.iter().find(|e| e.lane_to == Lane::Degrade).unwrap();
    assert_eq!(degrade.reason.code, "drift_verified");
    let det = degrade.detection.as_ref().unwrap();
    assert!(det.statistic >= det.threshold);
    assert!(
        det.first_post_change_at >= T0 + 10_000 * 1_000_000 - 60_000_000,
        "change placed near the model update"
    );
    assert!(events.iter().any(|e| e.reason.code == "model_changed" && e.lane_to == Lane::Watch));
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "seq increases: {seqs:?}");

    // The snapshot topic holds the latest state per agent.
    let snaps = b.read_all(&t.snapshot);
    let last: AgentSnapshot = serde_json::from_slice(
        snaps.iter().rev().find(|r| r.key.as_deref() == Some("fin-02")).unwrap().value.as_deref().unwrap(),
    )
    .unwrap();
    assert_eq!(last.lane, Lane::Degrade);
    assert_eq!(last.seq, *seqs.last().unwrap());
    assert!(last.clauses.iter().any(|c| c.clause_id == "verified-citations" && c.demand == Lane::Degrade));

    // The history topic verifies: each partition is one hash chain.
    let hist = b.read_all(&t.history);
    assert!(!hist.is_empty());
    // Each input partition is one hash chain (written to its partition); the API's audit
    // records form a chain of their own.
    let mut chains: BTreeMap<String, String> = BTreeMap::new();
    for r in &hist {
        let chain = r.header("driftgate.chain").expect("chain header").to_string();
        if let Some(p) = chain.strip_prefix(&format!("{}/", t.input)) {
            assert_eq!(p, r.partition.to_string(), "a partition's chain is written to its own partition");
        }
        *chains.entry(chain).or_default() += &(String::from_utf8(r.value.clone().unwrap()).unwrap() + "\n");
    }
    assert!(chains.keys().any(|c| c.starts_with("api/")));
    for (chain, text) in &chains {
        let (n, _) = driftgate_core::model::history::verify(text.as_bytes())
            .unwrap_or_else(|e| panic!("history chain {chain}: {e}"));
        assert!(n > 0);
    }
    let decisions = hist
        .iter()
        .filter(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).contains("\"kind\":\"decision\""))
        .count();
    assert_eq!(
        decisions,
        enforcement_events(b, &t.enforcement).len(),
        "a history record per enforcement event"
    );

    // Offsets were committed, and never past what was processed: the stop flushed the
    // event-time buffer into the snapshot, so everything is committed.
    let committed = b.committed(&t.group, &t.input, 2);
    let total: i64 = committed.iter().map(|c| c.expect("committed offset")).sum();
    assert_eq!(total, records.len() as i64, "committed {committed:?} of {}", records.len());
}

/// The API contract of `driftgate run`: the same schemathesis check as the demo's
/// (`http_api::the_http_api_keeps_its_openapi_contract`), here over the pipeline's control
/// plane, where every query, override and scrape is a command served by the pipeline thread
/// between records, and an override is answered once the changelog holds it.
#[test]
fn the_pipelines_http_api_keeps_its_openapi_contract() {
    let b = Broker::shared();
    let t = Topics::create(b, "contract", 2);
    let dir = tempfile::tempdir().unwrap();
    let port = kafka::free_port();
    let api = format!("http://127.0.0.1:{port}");
    // Snapshots every hour: an override's answer must not wait for the interval (it would
    // be `504 not_durable` after 30 s), only for its own snapshot's acknowledgements.
    let cfg = write_config_with(dir.path(), b, &t, "avro", "1h", &format!("127.0.0.1:{port}"));
    let records = scenario_records();
    produce(&b.producer(), &t.input, &records);
    let engine = Engine::start(&cfg);
    let http = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let status = |path: &str| http.get(&format!("{api}{path}")).call().map(|r| r.status().as_u16()).ok();
    let fin01 = || -> Option<AgentSnapshot> {
        let mut r = http.get(&format!("{api}/v1/agents/fin-01")).call().ok()?;
        serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
    };
    // Ready, holding the documented example agent, and every record read (fin-01's last event
    // is at T0 + 14,990 s).
    let last = T0 + 14_990 * 1_000_000;
    wait_for(120, "the pipeline ready with every record read", || {
        (status("/readyz") == Some(200) && fin01()?.last_seen == last).then_some(())
    });
    contract::check(&api, "kafka-test-token");

    // Beside the generated requests, which are nearly all refused: an override dated within
    // the partition's event time is taken by the pipeline thread, answered once durable,
    // applied and published; one dated before the engine's late cutoff is refused (the
    // engine would have set it aside as late after a 201).
    let post = |id: &str, issued_at: i64, seq: u64| -> (u16, serde_json::Value) {
        let body = serde_json::json!({"override_id": id, "agent_id": "fin-01", "kind": "tighten",
            "lane": "watch", "principal": "oncall", "reason": "contract", "ticket": "T-9",
            "issued_at": issued_at, "expires_at": last + 3_600_000_000i64, "expected_seq": seq});
        let mut r = http
            .post(&format!("{api}/v1/overrides"))
            .header("Authorization", "Bearer kafka-test-token")
            .header("content-type", "application/json")
            .send(body.to_string().as_str())
            .unwrap();
        (r.status().as_u16(), serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
    };
    let seq = fin01().unwrap().seq;
    let (st, v) = post("ov-too-old", last - 7_200_000_000, seq);
    assert_eq!((st, v["error"].as_str()), (422, Some("invalid_override")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("allowed lateness"), "{v}");
    let (st, v) = post("ov-contract", last - 10_000_000, seq);
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["agent"]["lane"].as_str(), v["agent"]["seq"].as_u64()),
        (Some("watch"), Some(seq + 2)),
        "{v}"
    );
    let applied = wait_for(30, "the override's event published", || {
        let ev = enforcement_events(b, &t.enforcement);
        ev.into_iter().find(|e| e.override_info.as_ref().is_some_and(|o| o.override_id == "ov-contract"))
    });
    assert_eq!((applied.agent_id.as_str(), applied.reason.code.as_str()), ("fin-01", "override_applied"));
    // The pipeline served it all and is still up.
    assert_eq!(status("/readyz"), Some(200));
    let s = scrape::samples(
        &http.get(&format!("{api}/metrics")).call().unwrap().body_mut().read_to_string().unwrap(),
    );
    assert!(
        scrape::sum(&s, "driftgate_overrides_rejected_total", &["channel=\"http\""]) > 0.0,
        "schemathesis's invalid overrides were refused and counted"
    );
    assert!(engine.stop().success());
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_with_their_reason() {
    let b = Broker::shared();
    let t = Topics::create(b, "pipeline", 1);
    let dir = tempfile::tempdir().unwrap();
    // Writer schemas from a registry that is down when the engine starts.
    let reg = registry::Registry::start([
        (1, TELEMETRY_AVSC.to_string()),
        (2, no_agent_schema().canonical_form()),
        (3, registry::BAD_SCHEMA.to_string()),
        (4, registry::mismatched_schema()),
    ]);
    reg.set_down(true);
    let port = kafka::free_port();
    let cfg = write_config_with(dir.path(), b, &t, "avro", "200ms", &format!("127.0.0.1:{port}"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "[schema_registry.static_schemas]\n1 = \"telemetry.avsc\"\n2 = \"no-agent.avsc\"",
        &format!("[schema_registry]\nurl = \"{}\"", reg.url),
    );
    std::fs::write(&cfg, text).unwrap();
    let good = |i: u64| event("fin-01", i, T0 + i as i64 * 1_000_000, "v1", true);
    let mut nan = good(101);
    nan.latency_ms = Some(f64::NAN);
    let schema2 = no_agent_schema();
    let mut v = good(102).to_avro();
    if let apache_avro::types::Value::Record(fields) = &mut v {
        fields.retain(|(n, _)| n != "agent_id");
    }
    let missing = confluent_frame(2, &write_datum(&schema2, v).unwrap());
    let mut future = good(103);
    future.occurred_at = T0 + 86_400 * 1_000_000 * 3;
    let mut mismatched = good(104).to_avro();
    if let apache_avro::types::Value::Record(fields) = &mut mismatched {
        for (n, v) in fields.iter_mut() {
            if n == "occurred_at" {
                *v = apache_avro::types::Value::String("yesterday".into());
            }
        }
    }
    let mismatched = confluent_frame(
        4,
        &write_datum(&apache_avro::Schema::parse_str(&registry::mismatched_schema()).unwrap(), mismatched)
            .unwrap(),
    );
    // 10 minutes behind the watermark: beyond the allowed lateness (60 s).
    let mut late = good(105);
    late.occurred_at = T0 - 600 * 1_000_000;
    let bad: Vec<(&str, Vec<u8>, i64)> = vec![
        ("not_confluent_avro", b"\x13garbage bytes, not avro".to_vec(), T0),
        (
            "unknown_schema_id",
            confluent_frame(
                77,
                &write_datum(&apache_avro::Schema::parse_str(TELEMETRY_AVSC).unwrap(), good(100).to_avro())
                    .unwrap(),
            ),
            T0,
        ),
        ("missing_field", missing, T0),
        ("invalid_field", avro(&nan), T0),
        ("future_timestamp", avro(&future), T0),
        ("bad_writer_schema", confluent_frame(3, b"\x02"), T0),
        ("schema_mismatch", mismatched, T0),
        ("late_event", avro(&late), T0),
    ];
    let mut records = Vec::new();
    for i in 0..40u64 {
        records.push(("fin-01".to_string(), avro(&good(i)), T0 / 1000 + i as i64 * 1000, 0));
        if let Some((_, bytes, _)) = bad.get(i as usize / 4).filter(|_| i % 4 == 3) {
            records.push(("fin-01".to_string(), bytes.clone(), T0 / 1000 + i as i64 * 1000, 0));
        }
    }
    // A last good record an hour later moves the watermark past everything before it.
    records.push(("fin-01".to_string(), avro(&good(3600)), T0 / 1000 + 3_600_000, 0));
    produce(&b.producer(), &t.input, &records);

    let engine = Engine::start(&cfg);
    // The registry being down is not the records' fault: the first one is retried, not
    // dead-lettered, until the registry answers.
    wait_for(60, "the engine retrying the registry", || (reg.requests() >= 3).then_some(()));
    assert!(b.read_all(&t.dlq).is_empty(), "nothing dead-lettered while the registry is down");
    assert_eq!(
        b.committed(&t.group, &t.input, 1)[0].unwrap_or(0),
        0,
        "nothing committed while the registry is down"
    );
    // Not ready while nothing can be decoded, and saying why.
    let http = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let readyz = || -> (u16, serde_json::Value) {
        let mut r = http.get(&format!("http://127.0.0.1:{port}/readyz")).call().unwrap();
        (r.status().as_u16(), serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
    };
    let (status, body) = readyz();
    assert_eq!(
        (status, &body["checks"]["decoder_available"], &body["checks"]["assigned"]),
        (503, &serde_json::json!(false), &serde_json::json!(true)),
        "{body}"
    );
    reg.set_down(false);
    wait_for(60, "/readyz once the registry answers", || (readyz().0 == 200).then_some(()));
    let committed = wait_for(90, "a commit past the bad records", || {
        let c = b.committed(&t.group, &t.input, 1)[0];
        c.filter(|c| *c >= records.len() as i64)
    });
    let log = engine.log_text();
    assert!(engine.stop().success(), "engine exited with an error:\n{log}");
    // Read after everything was committed (a record is committed only once its dead letter
    // is acknowledged), so this is the whole topic.
    let dead = b.read_all(&t.dlq);

    assert_eq!(
        dead.len(),
        bad.len(),
        "exactly the bad records: {:?}",
        dead.iter().map(|d| d.header("driftgate.reason")).collect::<Vec<_>>()
    );
    for ((reason, bytes, _), d) in bad.iter().zip(&dead) {
        assert_eq!(d.header("driftgate.reason"), Some(*reason), "{:?}", d.headers);
        assert_eq!(d.value.as_deref(), Some(bytes.as_slice()), "original bytes kept for {reason}");
        assert_eq!(d.header("driftgate.source.topic"), Some(t.input.as_str()));
        assert_eq!(d.header("driftgate.source.partition"), Some("0"));
        let off: i64 = d.header("driftgate.source.offset").unwrap().parse().unwrap();
        assert_eq!(records[off as usize].1, *bytes, "offset header points at the original record");
        assert!(!d.header("driftgate.error").unwrap_or("").is_empty());
        assert!(d.header("driftgate.dead_lettered_at").is_some());
    }
    // The good records around them were processed: the commit moved past every bad one.
    assert_eq!(
        committed,
        records.len() as i64,
        "the event-time buffer is part of the snapshot, so every record is committed"
    );
    // The late record is in the history too, with its reason.
    let late_in_history: Vec<serde_json::Value> = b
        .read_all(&t.history)
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(r.value.as_deref()?).ok())
        .filter(|h| h["kind"] == "late")
        .collect();
    assert_eq!(late_in_history.len(), 1);
    assert_eq!(late_in_history[0]["detail"]["id"], "fin-01-105");
    assert!(late_in_history[0]["detail"]["reason"].as_str().unwrap().contains("beyond the allowed lateness"));
}

#[test]
fn bad_broker_and_missing_topic_fail_fast_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pact.yaml"), PACT).unwrap();
    let run = |cfg: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, cfg).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_driftgate"))
            .args(["run", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let start = std::time::Instant::now();
    let port = kafka::free_port();
    let (status, err) = run(&format!("pacts = [\"pact.yaml\"]\n[kafka]\nbrokers = \"127.0.0.1:{port}\"\nformat = \"json\"\nstartup_timeout = \"3s\"\n[http]\nlisten = \"\"\n"));
    assert!(!status.success());
    assert!(err.contains("cannot reach Kafka at `127.0.0.1:"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30), "failed fast");

    let b = Broker::shared();
    let (status, err) = run(&format!("pacts = [\"pact.yaml\"]\n[kafka]\nbrokers = \"{}\"\nformat = \"json\"\ninput_topics = [\"no-such-topic\"]\n[http]\nlisten = \"\"\n", b.bootstrap()));
    assert!(!status.success());
    assert!(err.contains("topic(s) missing") && err.contains("no-such-topic"), "{err}");
}

/// The events an uninterrupted run derives: one engine per input partition, in offset order.
fn reference_events(records: &[(String, Vec<u8>, i64, i32)], partitions: i32) -> Vec<EnforcementEvent> {
    let pact = driftgate_core::pact::parse_pact(PACT, "pact.yaml").unwrap();
    let schema = apache_avro::Schema::parse_str(TELEMETRY_AVSC).unwrap();
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut e = driftgate_core::engine::Engine::new(
            driftgate_core::engine::EngineConfig::default(),
            vec![pact.clone()],
        );
        for (_, bytes, _, _) in records.iter().filter(|r| r.3 == p) {
            let v = driftgate_core::codec::avro_json::read_datum(&schema, None, &bytes[5..]).unwrap();
            e.push(Telemetry::from_avro(v).unwrap().into());
            out.extend(e.drain().into_iter().filter_map(|o| match o {
                driftgate_core::engine::Output::Enforcement(ev) => Some(ev),
                _ => None,
            }));
        }
    }
    out
}

#[test]
fn sigkill_between_produce_and_commit_loses_nothing_and_duplicates_carry_seen_seqs() {
    let b = Broker::shared();
    let t = Topics::create(b, "pipeline", 2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(dir.path(), b, &t, "avro", "2s", "");
    let records = scenario_records();
    // Phase 1 ends before the model update; phase 2 holds the drift.
    let split = 900 * 4;
    let producer = b.producer();
    produce(&producer, &t.input, &records[..split]);

    let committed_sum =
        |b: &Broker, group: &str| b.committed(group, &t.input, 2).iter().map(|c| c.unwrap_or(0)).sum::<i64>();
    let engine = Engine::start(&cfg);
    wait_for(60, "phase 1 processed and committed", || {
        (committed_sum(b, &t.group) >= split as i64 - 8).then_some(())
    });
    let log = engine.log_text();
    assert!(engine.stop().success(), "phase 1 engine exited with an error:\n{log}");
    assert!(enforcement_events(b, &t.enforcement).is_empty(), "no event before the model update");
    // Phase 2 commits (and snapshots) only every hour: the kill lands after its outputs were
    // produced and before any of its state was made durable. A fresh group: the changelog,
    // not the group's offsets, is where the engine resumes from.
    let phase2 = format!("{}-phase2", t.group);
    let cfg2 =
        write_config_with(dir.path(), b, &Topics { group: phase2.clone(), ..t.clone() }, "avro", "1h", "");
    let mut engine = Engine::start(&cfg2);
    produce(&producer, &t.input, &records[split..]);
    wait_for(120, "the degrade event", || {
        enforcement_events(b, &t.enforcement).iter().any(|e| e.lane_to == Lane::Degrade).then_some(())
    });
    // SIGKILL: no flush, no snapshot, no commit.
    engine.child.kill().unwrap();
    engine.child.wait().unwrap();
    // Its restored snapshot is durable, and the group may be told at once; nothing it read
    // after that was made durable.
    let restored = committed_sum(b, &t.group);
    assert!(restored >= split as i64 - 8, "phase 1 committed {restored}");
    let phase2_committed = committed_sum(b, &phase2);
    assert!(
        phase2_committed <= restored,
        "phase 2 committed {phase2_committed}, beyond the restored position {restored}"
    );
    let before_restart = enforcement_events(b, &t.enforcement).len();
    assert!(before_restart >= 2, "watch and degrade were produced before the kill");
    drop(engine);

    // Restart in the same group, as a restarted pod would: state is restored from the
    // changelog and the rest is reprocessed. The engine resumes from the position of its
    // restored snapshot (the changelog, not the group's offsets, is the authority).
    let cfg =
        write_config_with(dir.path(), b, &Topics { group: phase2.clone(), ..t.clone() }, "avro", "2s", "");
    let engine = Engine::start(&cfg);
    wait_for(120, "the restarted engine to commit what it processed", || {
        (committed_sum(b, &phase2) >= records.len() as i64 - 8).then_some(())
    });
    let log = engine.log_text();
    assert!(log.contains("state restored"), "restart restored state from the changelog:\n{log}");
    assert!(engine.stop().success(), "engine exited with an error:\n{log}");

    // A router that drops seqs it has seen ends up with exactly the uninterrupted run's events.
    let got = enforcement_events(b, &t.enforcement);
    let mut seen: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut applied = Vec::new();
    let mut duplicates = 0;
    for e in &got {
        let text = serde_json::to_string(e).unwrap();
        match seen.get(&(e.agent_id.to_string(), e.seq)) {
            Some(prev) => {
                duplicates += 1;
                assert_eq!(prev, &text, "a duplicate seq carries the identical event");
            }
            None => {
                seen.insert((e.agent_id.to_string(), e.seq), text);
                applied.push(e.clone());
            }
        }
    }
    let mut want = reference_events(&records, 2);
    let key = |e: &EnforcementEvent| (e.agent_id.to_string(), e.seq);
    want.sort_by_key(key);
    applied.sort_by_key(key);
    assert_eq!(
        applied, want,
        "no enforcement event lost or changed ({duplicates} duplicates dropped by seq)"
    );
    // Everything phase 2 produced was derived again after the restart, identically.
    assert_eq!(duplicates, before_restart, "each event produced before the kill came again, once");
}

/// Four partitions read in batches by two workers (one partition per worker at a time):
/// every partition's outputs are those of one engine reading it in offset order, sent in
/// that order, and a bad record in any partition is dead-lettered with its own source.
#[test]
fn partitions_evaluated_in_parallel_give_each_partitions_sequential_outputs_in_order() {
    batches_give_each_partitions_sequential_outputs(4, "parallel");
}

/// One partition, two workers: a helper decodes ahead while the pipeline thread evaluates,
/// with the same outputs, order and dead letters.
#[test]
fn one_partition_decoded_ahead_gives_the_sequential_outputs_in_order() {
    batches_give_each_partitions_sequential_outputs(1, "decode_ahead");
}

fn batches_give_each_partitions_sequential_outputs(partitions: i32, evaluation: &str) {
    let b = Broker::shared();
    let t = Topics::create(b, "parallel", partitions);
    let dir = tempfile::tempdir().unwrap();
    let port = kafka::free_port();
    let cfg = write_config_with(dir.path(), b, &t, "avro", "500ms", &format!("127.0.0.1:{port}"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "startup_timeout = \"10s\"\n",
            "startup_timeout = \"10s\"\nworkers = 2\nmax_batch = 256\n",
        ),
    )
    .unwrap();
    // With four partitions fin-01..04 land on one each; a bad record every 700.
    let good: Vec<(String, Vec<u8>, i64, i32)> = scenario()
        .iter()
        .map(|e| {
            (e.agent_id.to_string(), avro(e), e.occurred_at / 1000, partition_of(&e.agent_id, partitions))
        })
        .collect();
    let parts: std::collections::BTreeSet<i32> = good.iter().map(|r| r.3).collect();
    assert_eq!(parts.len(), partitions as usize, "every partition has agents");
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, r) in good.iter().enumerate() {
        if i % 700 == 350 {
            let garbage = format!("not telemetry {i}").into_bytes();
            bad.push((r.3, garbage.clone()));
            records.push((r.0.clone(), garbage, r.2, r.3));
        }
        records.push(r.clone());
    }
    // All written first, so that the engine's batches span partitions.
    produce(&b.producer(), &t.input, &records);

    let engine = Engine::start(&cfg);
    let committed =
        |b: &Broker| b.committed(&t.group, &t.input, 4).iter().map(|c| c.unwrap_or(0)).sum::<i64>();
    wait_for(120, "every record processed and committed", || {
        (committed(b) == records.len() as i64).then_some(())
    });
    let metrics = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let log = engine.log_text();
    assert!(engine.stop().success(), "engine exited with an error:\n{log}");
    let s = scrape::samples(&metrics);
    let label = format!("evaluation=\"{evaluation}\"");
    let used = scrape::sum(&s, "driftgate_input_batches_total", &[label.as_str()]);
    assert!(used >= 1.0, "some batches ran {evaluation}:\n{metrics}");
    assert_eq!(scrape::sum(&s, "driftgate_records_consumed_total", &[]), records.len() as f64);
    assert_eq!(scrape::sum(&s, "driftgate_input_batch_records_sum", &[]), records.len() as f64);

    // Every event, as one engine per partition derives it from the good records.
    let got = enforcement_events(b, &t.enforcement);
    let mut want = reference_events(&good, partitions);
    assert!(want.iter().any(|e| e.lane_to == Lane::Degrade), "the scenario drifts");
    // Sent in each engine's order: per agent, seqs ascend in the topic.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for e in &got {
        let prev = last.insert(e.agent_id.to_string(), e.seq);
        assert!(prev.is_none_or(|p| p < e.seq), "{}: seq {} after {prev:?}", e.agent_id, e.seq);
    }
    let mut got_sorted = got.clone();
    let key = |e: &EnforcementEvent| (e.agent_id.to_string(), e.seq);
    got_sorted.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got_sorted, want);

    // Each bad record dead-lettered once, naming its own partition and offset.
    let input = b.read_all(&t.input);
    let dlq = b.read_all(&t.dlq);
    assert_eq!(dlq.len(), bad.len());
    for (partition, payload) in &bad {
        let d = dlq.iter().find(|d| d.value.as_deref() == Some(payload.as_slice())).expect("dead-lettered");
        assert_eq!(
            d.header(driftgate::kafka::emitter::headers::PARTITION),
            Some(partition.to_string().as_str())
        );
        let offset: i64 = d.header(driftgate::kafka::emitter::headers::OFFSET).unwrap().parse().unwrap();
        let source = input.iter().find(|r| r.partition == *partition && r.offset == offset).unwrap();
        assert_eq!(source.value.as_deref(), Some(payload.as_slice()));
    }
}
