//! `/metrics` and the HTTP API on the demo scenario (`driftgate demo --listen`), the override
//! authentication rules, and the deploy kit (YAML, dashboard, alert rules, OpenAPI) checked
//! against the code.

use crate::support::contract;
use crate::support::scrape;

use driftgate_core::engine::Input;
use driftgate_core::model::lane::Lane;
use driftgate_core::model::telemetry::{Risk, Telemetry};
use driftgate_core::pact::predicate::Val;
use driftgate_detectors::{Detector, Observation};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token";
const SECRET: &str = "test-hmac-secret";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

fn get(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(body).unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// The demo, then its API; waits for `/readyz`.
fn serve_demo() -> Server {
    serve_demo_with(&["--override-token", TOKEN, "--override-hmac-secret", SECRET])
}

fn serve_demo_with(extra: &[&str]) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_driftgate"))
        .args(["demo", "--listen", &listen])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Server { child, base: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut r) = agent().get(&format!("{}/readyz", s.base)).call() {
            if r.status().as_u16() == 200 {
                let _ = r.body_mut().read_to_string();
                return s;
            }
        }
        assert!(Instant::now() < deadline, "the demo server did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_of_the_demo_match_its_events() {
    let run = driftgate::cli::demo::run();
    let server = serve_demo();
    let (status, text) = get(&format!("{}/metrics", server.base));
    assert_eq!(status, 200);
    let s = scrape::samples(&text);

    // Exactly one agent blocked (sup-04, PII), as the demo's events say.
    let mut last: BTreeMap<(&str, &str), Lane> = BTreeMap::new();
    for e in &run.events {
        last.insert((e.agent_id.as_str(), e.scope.as_str()), e.lane_to);
    }
    let blocked = last.iter().filter(|((_, scope), l)| *scope == "all" && **l == Lane::Block).count();
    assert_eq!(blocked, 1);
    assert_eq!(scrape::sum(&s, "driftgate_agents", &[r#"lane="block""#, r#"scope="all""#]), 1.0);
    assert_eq!(scrape::sum(&s, "driftgate_agents", &[r#"scope="all""#]), run.engine.agent_count() as f64);

    // Expectations from the demo's input, not from the engine's counters that feed /metrics.
    let inputs: Vec<Input> = driftgate::cli::demo::Fleet::new(7, 1, true).collect();
    let telemetry: Vec<&Telemetry> =
        inputs.iter().filter_map(|i| if let Input::Telemetry(t) = i { Some(&**t) } else { None }).collect();
    let pacts = driftgate::cli::demo::example_pacts();
    // The zero-tolerance clause alarms on every PII event, and blocked on the first one.
    let pii_events = telemetry.iter().filter(|t| t.pii_detected == Some(true)).count();
    assert_eq!(pii_events, 1);
    assert_eq!(
        scrape::sum(&s, "driftgate_detector_alarms_total", &[r#"pact="no-pii""#, r#"clause="no-pii""#]),
        pii_events as f64
    );
    let pii_blocks = run
        .events
        .iter()
        .filter(|e| {
            e.clause_id.as_deref() == Some("no-pii") && e.lane_to == Lane::Block && e.scope.as_str() == "all"
        })
        .count();
    assert_eq!(pii_blocks, pii_events);
    // Alarms per clause, recomputed with a standalone detector per agent over the input (a
    // drift detector restarts after each alarm, and keeps alarming while the drift lasts).
    let mut detections: BTreeMap<String, f64> = BTreeMap::new();
    for p in &pacts {
        for c in &p.doc.clauses {
            let mut per_agent: BTreeMap<&str, driftgate_detectors::AnyDetector> = BTreeMap::new();
            for t in telemetry.iter().filter(|t| p.covers(&t.agent_id, &t.workflow)) {
                if c.metric.when.as_ref().is_some_and(|w| w.0.eval(t) != Val::Bool(true)) {
                    continue;
                }
                let obs = match c.metric.value.0.eval(t) {
                    Val::Bool(b) => Observation::Bool(b),
                    Val::Num(x) => Observation::Real(x),
                    Val::Str(s) => Observation::Category(s),
                    _ => continue,
                };
                let det =
                    per_agent.entry(&t.agent_id).or_insert_with(|| driftgate_core::pact::Pact::detector(c));
                if let Ok(Some(_)) = det.update(obs) {
                    det.restart();
                    *detections.entry(format!("{}/{}", p.id(), c.id)).or_default() += 1.0;
                }
            }
        }
    }
    let mut alarms: BTreeMap<String, f64> = BTreeMap::new();
    for (key, v) in &s {
        if key.starts_with("driftgate_detector_alarms_total{") && *v > 0.0 {
            alarms.insert(
                format!("{}/{}", scrape::label(key, "pact").unwrap(), scrape::label(key, "clause").unwrap()),
                *v,
            );
        }
    }
    assert_eq!(alarms, detections);

    // Every enforcement event is counted under its lane and reason.
    assert_eq!(scrape::sum(&s, "driftgate_enforcement_events_total", &[]), run.events.len() as f64);
    let degrade_drift =
        run.events.iter().filter(|e| e.lane_to == Lane::Degrade && e.reason.code == "drift_verified").count();
    assert_eq!(
        scrape::sum(
            &s,
            "driftgate_enforcement_events_total",
            &[r#"lane="degrade""#, r#"reason="drift_verified""#]
        ),
        degrade_drift as f64
    );
    let with_detection = run.events.iter().filter(|e| e.detection.is_some()).count();
    assert_eq!(
        scrape::sum(&s, "driftgate_drift_to_enforcement_seconds_count", &[r#"clock="event""#]),
        with_detection as f64
    );

    // Evidence freshness: a high-risk decision is a high-risk event of an agent a pact with a
    // high-risk clause covers; res-11's evidence went stale only once it sent nothing more.
    let high_risk = telemetry
        .iter()
        .filter(|t| {
            t.risk == Risk::High
                && pacts
                    .iter()
                    .any(|p| p.covers(&t.agent_id, &t.workflow) && p.doc.clauses.iter().any(|c| c.high_risk))
        })
        .count();
    assert!(high_risk > 1000, "{high_risk}");
    assert_eq!(scrape::sum(&s, "driftgate_high_risk_decisions_total", &[]), high_risk as f64);
    assert_eq!(scrape::sum(&s, "driftgate_high_risk_fresh_evidence_total", &[]), high_risk as f64);
    assert_eq!(scrape::sum(&s, "driftgate_pact_routed_agents", &[]), 50.0);
    assert_eq!(scrape::sum(&s, "driftgate_unpacted_agents", &[]), 0.0);
    assert_eq!(scrape::sum(&s, "driftgate_history_records_total", &[]), run.history.len() as f64);
    assert_eq!(scrape::sum(&s, "driftgate_stale_evidence_agents", &[]), 1.0, "res-11 went silent");
    assert_eq!(scrape::sum(&s, "driftgate_records_consumed_total", &[]), telemetry.len() as f64);
    assert_eq!(scrape::sum(&s, "driftgate_ready", &[]), 1.0);
    assert!(scrape::sum(&s, "driftgate_state_bytes", &[]) > 0.0);

    // The dashboard and the alert rules only use metrics that exist (lag needs Kafka: it is
    // checked on the pipeline's scrape in kafka_pipeline.rs).
    let have = scrape::families(&text);
    let missing: Vec<String> = scrape::referenced_by_deploy_kit(&scrape::root())
        .into_iter()
        .filter(|m| !have.contains(m) && m != "driftgate_consumer_lag_records")
        .collect();
    assert!(missing.is_empty(), "referenced but not exposed: {missing:?}");

    // GET /v1/agents/{id} for the blocked agent: lanes, clauses with evidence, no overrides.
    let (status, body) = get(&format!("{}/v1/agents/sup-04", server.base));
    assert_eq!(status, 200);
    let a: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(a["lane"], "block");
    let pii =
        a["clauses"].as_array().unwrap().iter().find(|c| c["clause_id"] == "no-pii").expect("no-pii clause");
    assert_eq!(pii["demand"], "block");
    assert!(pii["last_evidence_at"].as_i64().unwrap() > 0);
    let (status, body) = get(&format!("{}/v1/agents/sup-04/history?limit=5", server.base));
    assert_eq!(status, 200);
    let h: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(!h.is_empty() && h.len() <= 5);
    assert!(h.iter().all(|r| r["agent_id"] == "sup-04"));
    assert!(h.iter().any(|r| r["kind"] == "decision" && r["detail"]["lane_to"] == "block"), "{h:?}");
}

fn override_body(id: &str, agent: &str, seq: u64, expires_in_s: Option<i64>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let mut v = serde_json::json!({
        "override_id": id, "agent_id": agent, "kind": "emergency_kill", "principal": "alice@trust-ops",
        "reason": "incident review", "ticket": "INC-7", "expected_seq": seq,
    });
    if let Some(s) = expires_in_s {
        v["expires_at"] = serde_json::json!(now + s * 1_000_000);
    }
    v.to_string()
}

#[test]
fn overrides_need_authentication_and_every_refusal_is_recorded() {
    let server = serve_demo();
    let url = format!("{}/v1/overrides", server.base);
    let seq_of = |agent: &str| -> (u64, String) {
        let (_, body) = get(&format!("{}/v1/agents/{agent}", server.base));
        let a: serde_json::Value = serde_json::from_str(&body).unwrap();
        (a["seq"].as_u64().unwrap(), a["lane"].as_str().unwrap().to_string())
    };
    let (seq, lane) = seq_of("fin-01");
    assert_eq!(lane, "normal");
    let body = override_body("ovr-a", "fin-01", seq, Some(3600));

    // Refused: no credentials, a wrong token, a forged and an expired signature, no expiry.
    let (st, e) = post(&url, &[], &body);
    assert_eq!((st, e["error"].as_str()), (401, Some("unauthenticated")));
    let (st, e) = post(&url, &[("authorization", "Bearer wrong")], &body);
    assert_eq!((st, e["error"].as_str()), (403, Some("forged")));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let forged = driftgate::api::auth::sign("not-the-secret", now, body.as_bytes());
    let ts = now.to_string();
    let (st, e) = post(&url, &[("x-driftgate-timestamp", &ts), ("x-driftgate-signature", &forged)], &body);
    assert_eq!((st, e["error"].as_str()), (403, Some("forged")));
    let old = now - 3600;
    let stale_sig = driftgate::api::auth::sign(SECRET, old, body.as_bytes());
    let (st, e) = post(
        &url,
        &[("x-driftgate-timestamp", &old.to_string()), ("x-driftgate-signature", &stale_sig)],
        &body,
    );
    assert_eq!((st, e["error"].as_str()), (401, Some("expired_signature")));
    let (st, e) = post(
        &url,
        &[("authorization", &format!("Bearer {TOKEN}"))],
        &override_body("ovr-b", "fin-01", seq, None),
    );
    assert_eq!((st, e["error"].as_str()), (422, Some("missing_expires_at")));
    let (st, e) = post(
        &url,
        &[("authorization", &format!("Bearer {TOKEN}"))],
        &override_body("ovr-c", "fin-01", seq + 5, Some(60)),
    );
    assert_eq!((st, e["error"].as_str()), (409, Some("seq_conflict")));
    let (st, _) = post(&url, &[("authorization", &format!("Bearer {TOKEN}"))], "{not json");
    assert_eq!(st, 400);
    assert_eq!(seq_of("fin-01").1, "normal", "nothing refused changed the lane");

    // Each refusal is counted and in the history, with its reason.
    let (_, text) = get(&format!("{}/metrics", server.base));
    assert_eq!(
        scrape::sum(&scrape::samples(&text), "driftgate_overrides_rejected_total", &[r#"channel="http""#]),
        7.0
    );
    let (_, hist) = get(&format!("{}/v1/agents/fin-01/history?limit=100", server.base));
    let hist: Vec<serde_json::Value> = serde_json::from_str(&hist).unwrap();
    let reasons: Vec<&str> = hist
        .iter()
        .filter(|r| r["kind"] == "override_rejected")
        .filter_map(|r| r["detail"]["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["unauthenticated", "forged", "forged", "expired_signature", "missing_expires_at", "seq_conflict"],
        "{hist:?}"
    );

    // Accepted with the token: the lane changes and the history says so.
    let (st, resp) = post(&url, &[("authorization", &format!("Bearer {TOKEN}"))], &body);
    assert_eq!(st, 201, "{resp}");
    assert_eq!(resp["agent"]["lane"], "block");
    assert_eq!(resp["agent"]["overrides"][0]["override_id"], "ovr-a");
    let (_, hist) = get(&format!("{}/v1/agents/fin-01/history?limit=100", server.base));
    let hist: Vec<serde_json::Value> = serde_json::from_str(&hist).unwrap();
    assert!(hist
        .iter()
        .any(|r| r["kind"] == "override_accepted" && r["detail"]["override"]["override_id"] == "ovr-a"));
    assert!(hist.iter().any(|r| r["kind"] == "decision" && r["detail"]["lane_to"] == "block"));
    // A retry of the same override is answered without applying it twice.
    let (st, resp) = post(&url, &[("authorization", &format!("Bearer {TOKEN}"))], &body);
    assert_eq!(st, 201);
    assert_eq!(resp["agent"]["overrides"].as_array().unwrap().len(), 1);

    // Accepted with a valid signature, on another agent.
    let (seq2, _) = seq_of("fin-02");
    let body2 = override_body("ovr-d", "fin-02", seq2, Some(600));
    let sig = driftgate::api::auth::sign(SECRET, now, body2.as_bytes());
    let (st, resp) = post(&url, &[("x-driftgate-timestamp", &ts), ("x-driftgate-signature", &sig)], &body2);
    assert_eq!(st, 201, "{resp}");
    assert_eq!(seq_of("fin-02").1, "block");
    let (_, text) = get(&format!("{}/metrics", server.base));
    let s = scrape::samples(&text);
    assert_eq!(scrape::sum(&s, "driftgate_overrides_active", &[r#"kind="emergency_kill""#]), 2.0);
    assert!(scrape::sum(&s, "driftgate_override_next_expiry_seconds", &[]) <= 600.0);
}

#[test]
fn bad_requests_get_json_errors() {
    let server = serve_demo();
    let (st, body) = get(&format!("{}/v1/agents/nobody", server.base));
    assert_eq!(st, 404);
    assert!(body.contains("unknown_agent"));
    for q in ["0", "1001", "x", "-1"] {
        let (st, body) = get(&format!("{}/v1/agents/fin-01/history?limit={q}", server.base));
        assert_eq!(st, 400, "limit={q}");
        assert!(body.contains("bad_limit"));
    }
    // Found by the contract test: the query extractor's own refusal was plain text.
    let (st, body) = get(&format!("{}/v1/agents/fin-01/history?limit=1&limit=2", server.base));
    let e: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!((st, e["error"].as_str()), (400, Some("bad_query")), "{body}");
    let (st, body) = get(&format!("{}/nowhere", server.base));
    assert_eq!(st, 404);
    assert!(body.contains("not_found"));
    let (st, _) = get(&format!("{}/healthz", server.base));
    assert_eq!(st, 200);

    // Overrides: every documented refusal, with its status and code.
    let url = format!("{}/v1/overrides", server.base);
    let auth = [("authorization", format!("Bearer {TOKEN}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for body in ["[1, 2]", "\"kill\"", "null", "{not json"] {
        let (st, e) = post(&url, &auth, body);
        assert_eq!((st, e["error"].as_str()), (400, Some("invalid_json")), "{body}");
    }
    let (st, e) = post(&url, &auth, &override_body("ovr-x", "nobody", 0, Some(60)));
    assert_eq!((st, e["error"].as_str()), (404, Some("unknown_agent")));
    let mut v: serde_json::Value =
        serde_json::from_str(&override_body("ovr-y", "fin-01", 0, Some(60))).unwrap();
    v["kind"] = "nuke".into();
    let (st, e) = post(&url, &auth, &v.to_string());
    assert_eq!((st, e["error"].as_str()), (422, Some("invalid_override")));
    assert!(e["message"].as_str().unwrap().contains("unknown variant `nuke`"), "{e}");
    let (_, a) = get(&format!("{}/v1/agents/fin-01", server.base));
    let seq = serde_json::from_str::<serde_json::Value>(&a).unwrap()["seq"].as_u64().unwrap();
    // The demo's default maximum override lifetime is 7 days.
    let (st, e) = post(&url, &auth, &override_body("ovr-z", "fin-01", seq, Some(8 * 24 * 3600)));
    assert_eq!((st, e["error"].as_str()), (422, Some("invalid_override")));
    assert!(e["message"].as_str().unwrap().contains("maximum override TTL"), "{e}");
}

#[test]
fn overrides_are_refused_when_no_credential_is_configured() {
    let server = serve_demo_with(&[]);
    let (st, e) = post(
        &format!("{}/v1/overrides", server.base),
        &[("authorization", "Bearer anything")],
        &override_body("ovr-a", "fin-01", 0, Some(60)),
    );
    assert_eq!((st, e["error"].as_str()), (403, Some("disabled")));
}

#[test]
fn openapi_document_matches_the_routes() {
    let server = serve_demo();
    let doc: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(scrape::root().join("schemas/openapi.yaml")).unwrap(),
    )
    .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 9);
    for (path, ops) in paths {
        let url = format!("{}{}", server.base, path.replace("{id}", "fin-01"));
        for method in ops.as_object().unwrap().keys() {
            let status = match method.as_str() {
                "get" => get(&url).0,
                "post" => post(&url, &[], "{}").0,
                m => panic!("unexpected method {m}"),
            };
            // A status the document lists for this operation (an auth refusal counts).
            let documented: Vec<&String> = ops[method]["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|c| c.as_str() == status.to_string()),
                "{method} {path}: {status}, documented {documented:?}"
            );
        }
    }
}

#[test]
fn deploy_kit_agrees_with_the_code() {
    let root = scrape::root();
    let docs: Vec<serde_json::Value> = {
        let text = std::fs::read_to_string(root.join("deploy/k8s/driftgate.yaml")).unwrap();
        serde_norway::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    };
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in ["ConfigMap", "Secret", "StatefulSet", "Service", "ServiceMonitor", "PodDisruptionBudget"] {
        assert!(kinds.contains(&k), "no {k} in the manifests: {kinds:?}");
    }
    let default_port: u16 =
        driftgate::config::HttpConfig::default().listen.rsplit(':').next().unwrap().parse().unwrap();
    let dep = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert_eq!(dep["spec"]["serviceName"], "driftgate");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(default_port as u64));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let image = c["image"].as_str().unwrap();
    let env: Vec<&str> = c["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(env.contains(&"DRIFTGATE_HTTP__OVERRIDE_TOKEN"));
    assert!(
        env.contains(&"DRIFTGATE_KAFKA__PROPERTIES__GROUP_INSTANCE_ID"),
        "static membership from the pod name"
    );
    let sm = docs.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap();
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    // The config in the ConfigMap loads.
    let cm = docs.iter().find(|d| d["metadata"]["name"] == "driftgate-config").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("driftgate.toml");
    std::fs::write(&f, cm["data"]["driftgate.toml"].as_str().unwrap()).unwrap();
    let cfg = driftgate::config::RunConfig::load(Some(&f)).unwrap();
    assert_eq!(cfg.http.listen, format!("0.0.0.0:{default_port}"));
    // The pacts in the other ConfigMap parse.
    let pacts = docs.iter().find(|d| d["metadata"]["name"] == "driftgate-pacts").unwrap();
    for (name, text) in pacts["data"].as_object().unwrap() {
        driftgate_core::pact::parse_pact(text.as_str().unwrap(), name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let compose: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(root.join("deploy/docker-compose.yml")).unwrap())
            .unwrap();
    for svc in ["kafka", "driftgate", "prometheus", "grafana"] {
        assert!(compose["services"][svc].is_object(), "compose has no {svc}");
    }
    assert_eq!(
        compose["services"]["driftgate"]["image"].as_str(),
        Some(image),
        "compose and k8s use one image"
    );
    assert!(compose["services"]["driftgate"]["ports"][0]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{default_port}")));
    let prom: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0],
        format!("driftgate:{default_port}")
    );
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("EXPOSE {default_port}")));
    assert!(dockerfile.contains(&format!("-t {image}")), "the Dockerfile's build line names the image");
    assert!(dockerfile.contains("USER 10001"), "non-root runtime");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/driftgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}

#[test]
fn router_deploy_kit_agrees_with_the_sidecar() {
    use driftgate::route::RouteConfig;
    let root = scrape::root();
    let defaults = RouteConfig::default();
    let port: u64 = defaults.listen.rsplit(':').next().unwrap().parse().unwrap();
    let docs: Vec<serde_json::Value> = {
        let text = std::fs::read_to_string(root.join("deploy/k8s/router-sidecar.yaml")).unwrap();
        serde_norway::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    };
    let cm = docs.iter().find(|d| d["metadata"]["name"] == "driftgate-route-config").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("route.toml");
    std::fs::write(&f, cm["data"]["route.toml"].as_str().unwrap()).unwrap();
    let cfg = RouteConfig::load(Some(&f)).unwrap();
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let containers = dep["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    let side = containers.iter().find(|c| c["args"][0] == "route").expect("a `driftgate route` container");
    assert_eq!(side["ports"][0]["containerPort"].as_u64(), Some(port));
    assert!(cfg.listen.ends_with(&format!(":{port}")), "the ConfigMap listens where the probes look");
    assert_eq!(side["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(side["livenessProbe"]["httpGet"]["path"], "/healthz");
    let main: serde_json::Value = serde_norway::Deserializer::from_str(
        &std::fs::read_to_string(root.join("deploy/k8s/driftgate.yaml")).unwrap(),
    )
    .map(|d| serde::Deserialize::deserialize(d).unwrap())
    .find(|d: &serde_json::Value| d["kind"] == "StatefulSet")
    .unwrap();
    assert_eq!(
        side["image"], main["spec"]["template"]["spec"]["containers"][0]["image"],
        "one image for engine and sidecar"
    );

    // Envoy's ext_authz asks the sidecar's auth endpoint with the headers it reads.
    let envoy = std::fs::read_to_string(root.join("deploy/envoy/envoy.yaml")).unwrap();
    let v: serde_json::Value = serde_norway::from_str(&envoy).unwrap();
    let hcm = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let authz = &hcm["http_filters"][0]["typed_config"];
    assert_eq!(authz["http_service"]["path_prefix"], "/v1/auth");
    assert_eq!(authz["failure_mode_allow"], false, "fail closed");
    let allowed: Vec<&str> = authz["allowed_headers"]["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["exact"].as_str())
        .collect();
    assert!(
        allowed.contains(&defaults.agent_header.as_str()) && allowed.contains(&defaults.risk_header.as_str()),
        "{allowed:?}"
    );
    assert!(envoy.contains(&format!("port_value: {port}")));
    assert_eq!(
        authz["http_service"]["authorization_response"]["allowed_upstream_headers"]["patterns"][0]["prefix"],
        "x-driftgate-"
    );
    let nginx = std::fs::read_to_string(root.join("deploy/nginx/nginx.conf")).unwrap();
    assert!(nginx.contains("/v1/auth") && nginx.contains(&format!("127.0.0.1:{port}")));
}

/// The API contract: schemathesis generates valid and invalid requests for every operation
/// of `schemas/openapi.yaml` (examples, boundary values, fuzzing, and stateful sequences
/// over the links it infers) and checks every answer: no 5xx, status codes, content types
/// and bodies as documented, invalid input refused, valid input accepted, and no answer
/// slower than 2 s. A fixed seed makes a failure reproducible.
#[test]
fn the_http_api_keeps_its_openapi_contract() {
    let server = serve_demo();
    contract::check(&server.base, TOKEN);
}

#[test]
fn alert_rules_pass_promtool() {
    let out = Command::new(contract::promtool())
        .args(["check", "rules"])
        .arg(scrape::root().join("deploy/prometheus/alerts.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

#[test]
fn control_topic_records_are_checked_like_http_requests() {
    use driftgate::api::auth::{Credentials, Presented};
    use driftgate::api::control::{ControlPlane, DemoControl};
    let control = DemoControl::new(driftgate::cli::demo::run());
    let creds = Credentials::new(None, Some(SECRET), 300);
    let status = driftgate::kafka::pipeline::Status::default();
    let seq = control.agent("res-02").unwrap().unwrap().seq;
    let body = override_body("ctl-1", "res-02", seq, Some(600));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let ts = now.to_string();
    let forged = driftgate::api::auth::sign("wrong", now, body.as_bytes());
    driftgate::kafka::control_topic::apply(
        &control,
        &creds,
        &Presented { signature: Some(&forged), timestamp: Some(&ts), ..Default::default() },
        body.as_bytes(),
        &status,
    );
    driftgate::kafka::control_topic::apply(&control, &creds, &Presented::default(), body.as_bytes(), &status);
    assert_eq!(control.agent("res-02").unwrap().unwrap().lane, Lane::Normal);
    assert_eq!(control.metrics().overrides_rejected.with_label_values(&["control"]).get(), 2);
    let reasons: Vec<String> = control
        .history("res-02", 10)
        .iter()
        .filter_map(|r| r.detail["reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reasons, ["forged", "unauthenticated"]);
    let sig = driftgate::api::auth::sign(SECRET, now, body.as_bytes());
    driftgate::kafka::control_topic::apply(
        &control,
        &creds,
        &Presented { signature: Some(&sig), timestamp: Some(&ts), ..Default::default() },
        body.as_bytes(),
        &status,
    );
    assert_eq!(control.agent("res-02").unwrap().unwrap().lane, Lane::Block);
    assert!(control
        .history("res-02", 10)
        .iter()
        .any(|r| r.kind == driftgate_core::model::history::RecordKind::OverrideAccepted));
}

#[test]
fn a_pact_change_on_the_control_topic_is_signed_like_an_override_and_applied_once_durable() {
    use driftgate::api::auth::{Credentials, Presented};
    use driftgate::api::control::{ControlPlane, DemoControl};
    use driftgate::kafka::control_topic::{apply, Applied};
    let control = DemoControl::new(driftgate::cli::demo::run());
    let creds = Credentials::new(None, Some(SECRET), 300);
    let status = driftgate::kafka::pipeline::Status::default();
    let doc = driftgate::cli::demo::EXAMPLE_PACTS[3].1.replace("version: 1", "version: 2");
    let body = serde_json::json!({"mode": "shadow", "document": doc, "principal": "carol", "reason": "r", "ticket": "T"})
        .to_string();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let ts = now.to_string();
    let forged = driftgate::api::auth::sign("wrong", now, body.as_bytes());
    let p = Presented { signature: Some(&forged), timestamp: Some(&ts), ..Default::default() };
    assert_eq!(apply(&control, &creds, &p, body.as_bytes(), &status), Applied::NotTaken);
    let tools = || control.pacts().into_iter().find(|p| p.pact == "support-tools").unwrap();
    assert!(tools().shadow.is_none(), "the forged change was not applied");
    let refused = control.audit_records();
    assert_eq!(
        refused.last().map(|r| (r.kind, r.detail["reason"].clone())),
        Some((driftgate_core::model::history::RecordKind::PactRefused, "forged".into()))
    );
    let sig = driftgate::api::auth::sign(SECRET, now, body.as_bytes());
    let p = Presented { signature: Some(&sig), timestamp: Some(&ts), ..Default::default() };
    assert_eq!(apply(&control, &creds, &p, body.as_bytes(), &status), Applied::Durable);
    let shadow = tools().shadow.expect("shadowed");
    assert_eq!(
        (shadow.version, shadow.activation.map(|a| (a.principal, a.channel))),
        (2, Some(("carol".into(), "control".into())))
    );
}
