//! Pacts at run time against `driftgate run` on the real broker: a version shadowed beside
//! the active one sends nothing to routers, an invalid version is refused with its place
//! while the old one keeps enforcing, a promotion switches enforcement keeping unchanged
//! clauses' state, the versions survive a restart, a rollback returns to the previous
//! version, and SIGHUP enforces a file's new version; every step is in the history topic
//! with its principal.

use crate::durable_state::serial;
use crate::support::kafka::{self, wait_for, Broker, Engine, Topics};
use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::history::{Record, RecordKind};
use driftgate_core::model::lane::Lane;
use driftgate_core::model::telemetry::{Model, Outcome, Risk, Telemetry};
use std::path::{Path, PathBuf};

const V1: &str = "pact: answers\nversion: 1\napplies_to: { agents: [\"ag-*\"] }\nclauses:\n  - id: refusals\n    metric: { kind: bernoulli, value: outcome == \"refused\" }\n    test: { kind: limit, zero_tolerance: true }\n    severity: medium\n    consequence: watch\n    recovery: { clean_events: 1000, min_dwell: 1h }\n";
const TOKEN: &str = "pact-test-token";

/// Version 2: `refusals` unchanged, and errors now degrade.
fn v2() -> String {
    V1.replace("version: 1", "version: 2")
        + "  - id: errors\n    metric: { kind: bernoulli, value: outcome == \"error\" }\n    test: { kind: limit, zero_tolerance: true }\n    severity: high\n    consequence: degrade\n    recovery: { clean_events: 1000, min_dwell: 1h }\n"
}

fn engine_config(dir: &Path, b: &Broker, t: &Topics, listen: &str) -> PathBuf {
    std::fs::write(dir.join("answers.yaml"), V1).unwrap();
    let cfg = format!(
        r#"
pacts = ["answers.yaml"]
[kafka]
brokers = "{}"
group_id = "{}"
input_topics = ["{}"]
format = "json"
commit_interval = "200ms"
startup_timeout = "10s"
{}[kafka.properties]
"session.timeout.ms" = "6000"
[kafka.producer_properties]
"linger.ms" = "0"
[engine]
max_out_of_orderness = "0s"
idle_timeout = "500ms"
max_event_lag = "0s"
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

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// One event of `agent`, now.
fn send(b: &Broker, t: &Topics, agent: &str, i: u64, outcome: Outcome) {
    let tel = Telemetry {
        event_id: format!("{agent}-{i}").into(),
        agent_id: agent.into(),
        workflow: "w".into(),
        model: Model { provider: "acme".into(), name: "m".into(), version: "v1".into() },
        occurred_at: now(),
        risk: Risk::Low,
        outcome,
        latency_ms: Some(10.0),
        citations: None,
        pii_detected: Some(false),
        tool_calls: vec![],
        attributes: Default::default(),
    };
    let value = serde_json::to_vec(&tel).unwrap();
    kafka::produce(&b.producer(), &t.input, &[(agent.to_string(), value, now() / 1000, 0)]);
}

struct Api {
    base: String,
    http: ureq::Agent,
}

impl Api {
    fn post(&self, path: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let mut r = self
            .http
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {token}"))
            .header("content-type", "application/json")
            .send(body.to_string().as_str())
            .unwrap();
        (r.status().as_u16(), serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
    }

    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let mut r = self.http.get(&format!("{}{path}", self.base)).call().ok()?;
        (r.status().as_u16() == 200)
            .then(|| serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok())?
    }

    /// The `answers` pact's versions.
    fn answers(&self) -> serde_json::Value {
        let all = self.get("/v1/pacts").expect("GET /v1/pacts");
        all.as_array()
            .and_then(|a| a.iter().find(|p| p["pact"] == "answers").cloned())
            .expect("answers listed")
    }

    fn lane(&self, agent: &str) -> Option<String> {
        self.get(&format!("/v1/agents/{agent}")).and_then(|a| a["lane"].as_str().map(String::from))
    }
}

fn events(b: &Broker, t: &Topics) -> Vec<EnforcementEvent> {
    b.read_all(&t.enforcement)
        .into_iter()
        .filter(|r| r.header("driftgate.kind") == Some("enforcement"))
        .filter_map(|r| serde_json::from_slice(r.value.as_deref()?).ok())
        .collect()
}

fn history(b: &Broker, t: &Topics) -> Vec<Record> {
    b.read_all(&t.history)
        .into_iter()
        .filter_map(|r| serde_json::from_slice(r.value.as_deref()?).ok())
        .collect()
}

fn of_kind(h: &[Record], kind: RecordKind) -> Vec<Record> {
    h.iter().filter(|r| r.kind == kind).cloned().collect()
}

#[test]
fn shadow_promote_restart_and_rollback_change_enforcement_without_a_restart_and_are_on_record() {
    let _serial = serial();
    let b = Broker::shared();
    let t = Topics::create(b, "pact-lifecycle", 1);
    let dir = tempfile::tempdir().unwrap();
    let port = kafka::free_port();
    let cfg = engine_config(dir.path(), b, &t, &format!("127.0.0.1:{port}"));
    let http = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let api = Api { base: format!("http://127.0.0.1:{port}"), http };
    let mut engine = Engine::start(&cfg);
    for (i, agent) in ["ag-1", "ag-2", "ag-3"].iter().enumerate() {
        send(b, &t, agent, i as u64, Outcome::Ok);
    }
    wait_for(60, "the agents known", || api.lane("ag-3").map(|_| ()));
    let who =
        |reason: &str| serde_json::json!({"principal": "alice@trust", "reason": reason, "ticket": "CHG-42"});

    // An unauthenticated (forged) activation is refused and recorded.
    let mut shadow = who("try errors clause");
    shadow["mode"] = "shadow".into();
    shadow["document"] = v2().into();
    let (st, e) = api.post("/v1/pacts", "forged", shadow.clone());
    assert_eq!((st, e["error"].as_str()), (403, Some("forged")), "{e}");

    // Shadow: version 2 judges beside version 1; its would-be degrade reaches no router.
    let (st, v) = api.post("/v1/pacts", TOKEN, shadow);
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["pact"]["active"]["version"].as_u64(), v["pact"]["shadow"]["version"].as_u64()),
        (Some(1), Some(2))
    );
    send(b, &t, "ag-1", 10, Outcome::Error);
    let would = wait_for(30, "the shadow's would-be event in the history", || {
        of_kind(&history(b, &t), RecordKind::ShadowDecision).into_iter().next()
    });
    assert_eq!((would.agent_id.as_deref(), would.pact_version), (Some("ag-1"), Some(2)));
    assert_eq!(
        (&would.detail["lane_to"], &would.detail["enforced"]),
        (&serde_json::json!("degrade"), &serde_json::json!(false))
    );
    assert_eq!(api.answers()["shadow"]["events"].as_u64(), Some(2), "both scopes, would-be");

    // An invalid version is refused with its place; version 1 keeps enforcing.
    let mut bad = who("typo");
    bad["mode"] = "enforce".into();
    bad["document"] =
        v2().replace("version: 2", "version: 3").replace("severity: high", "severity: hihg").into();
    let (st, e) = api.post("/v1/pacts", TOKEN, bad);
    assert_eq!((st, e["error"].as_str()), (422, Some("invalid_pact")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("answers.yaml:14:"), "{e}");
    send(b, &t, "ag-2", 11, Outcome::Refused);
    wait_for(30, "version 1 still enforcing", || {
        (api.lane("ag-2").as_deref() == Some("watch")).then_some(())
    });
    assert!(events(b, &t).iter().all(|e| e.agent_id != "ag-1"), "no router event from the shadow");

    // Promote: version 2 enforces; ag-2's `refusals` state (watch, dwell 1 h) carries over.
    let (st, v) = api.post("/v1/pacts/answers/promote", TOKEN, who("shadow clean for a day"));
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["pact"]["active"]["version"].as_u64(), v["pact"]["previous"].clone()),
        (Some(2), serde_json::json!([1]))
    );
    send(b, &t, "ag-3", 12, Outcome::Error);
    let degraded = wait_for(30, "version 2 enforcing", || {
        events(b, &t).into_iter().find(|e| e.agent_id == "ag-3" && e.lane_to == Lane::Degrade)
    });
    assert_eq!((degraded.pact_version, degraded.clause_id.as_deref()), (Some(2), Some("errors")));
    assert_eq!(api.lane("ag-2").as_deref(), Some("watch"), "unchanged clause's state kept");

    // A restart keeps the promoted version (the registry is in the changelog), though the
    // file still says version 1.
    assert!(engine.stop().success());
    engine = Engine::start(&cfg);
    wait_for(60, "ready again", || api.get("/readyz").map(|_| ()));
    let a = api.answers();
    assert_eq!(a["active"]["version"].as_u64(), Some(2), "{a}");
    assert_eq!(a["active"]["activation"]["principal"].as_str(), Some("alice@trust"), "{a}");
    let log = engine.log_text();
    assert!(log.contains("the pact was changed at run time") && log.contains("file_version=1"), "{log}");

    // Rollback: version 1 again; ag-3's degrade came from a clause version 1 lacks.
    let (st, v) = api.post("/v1/pacts/answers/rollback", TOKEN, who("errors clause too strict"));
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["pact"]["active"]["version"].as_u64(), v["pact"]["previous"].clone()),
        (Some(1), serde_json::json!([]))
    );
    send(b, &t, "ag-1", 13, Outcome::Ok);
    let back = wait_for(30, "ag-3 released by the rollback", || {
        events(b, &t).into_iter().find(|e| e.agent_id == "ag-3" && e.reason.code == "pact_activated")
    });
    assert_eq!((back.lane_from, back.lane_to), (Lane::Degrade, Lane::Normal));

    // SIGHUP re-reads the file: a new version there is enforced, by the file's principal.
    std::fs::write(dir.path().join("answers.yaml"), V1.replace("version: 1", "version: 3")).unwrap();
    let hup =
        std::process::Command::new("kill").args(["-HUP", &engine.child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let active = wait_for(30, "the re-read file's version enforced", || {
        let a = api.answers();
        (a["active"]["version"].as_u64() == Some(3)).then(|| a["active"].clone())
    });
    assert!(active["activation"]["principal"].as_str().is_some_and(|p| p.starts_with("file:")), "{active}");
    assert_eq!(active["activation"]["channel"].as_str(), Some("file"));

    // Every step is on record with its principal; the refusals are in the API's chain.
    let h = history(b, &t);
    let principal = |k: RecordKind| {
        of_kind(&h, k).iter().map(|r| r.detail["change"]["principal"].clone()).collect::<Vec<_>>()
    };
    for k in [RecordKind::PactShadowed, RecordKind::PactPromoted, RecordKind::PactRolledBack] {
        assert_eq!(principal(k), [serde_json::json!("alice@trust")], "{k:?}");
    }
    let refused = of_kind(&h, RecordKind::PactRefused);
    assert_eq!(refused.len(), 2, "the forged and the invalid one: {refused:?}");
    assert!(refused
        .iter()
        .any(|r| r.detail["reason"] == "invalid_pact" && r.detail["principal"] == "alice@trust"));
    let m = api.get("/metrics");
    assert!(m.is_none(), "metrics are text");
    let mut r = api.http.get(&format!("{}/metrics", api.base)).call().unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert!(text.contains("driftgate_pact_version{pact=\"answers\",role=\"active\"} 3"), "{text}");
    assert!(text.contains("driftgate_pact_activations_total{outcome=\"rolled_back\"} 1"), "{text}");
    assert!(text.contains("driftgate_pact_activations_total{outcome=\"enforced\"} 1"), "the re-read: {text}");
    assert!(engine.stop().success());
}
