//! The sidecar's HTTP surface (axum). Every decision is a table lookup: no handler waits on
//! Kafka or on another request.
//!
//! - `GET /v1/decision?agent=A&risk=R`: the decision as JSON.
//! - `/v1/auth` and `/v1/auth/<anything>`, any method: the auth subrequest of NGINX
//!   `auth_request` and Envoy's HTTP `ext_authz`. The agent and risk come from the configured
//!   headers. `200` allows, `403` denies; both carry `x-driftgate-lane`,
//!   `x-driftgate-action`, `x-driftgate-reason` and `x-driftgate-stale`.
//! - `/healthz`, `/readyz` (ready once the snapshot topic is read), `/metrics`.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Json;
use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::telemetry::Risk;
use driftgate_router::{Decision, Router, TopicKind};
use serde::Deserialize;
use serde_json::json;
use std::fmt::Write as _;
use std::sync::Arc;

/// Response header: the lane applied.
pub const LANE: &str = "x-driftgate-lane";
/// Response header: the action for the lane.
pub const ACTION: &str = "x-driftgate-action";
/// Response header: why (the engine's reason code, `stale_fallback`, `unknown_agent`, ...).
pub const REASON: &str = "x-driftgate-reason";
/// Response header: `true` when driftgate's view of the agent is stale.
pub const STALE: &str = "x-driftgate-stale";

/// Shared by the handlers.
#[derive(Clone)]
pub struct RouteState {
    router: Arc<Router>,
    agent_header: HeaderName,
    risk_header: HeaderName,
}

impl RouteState {
    /// The sidecar over `router`, reading the agent and risk from these headers.
    pub fn new(router: Arc<Router>, agent_header: HeaderName, risk_header: HeaderName) -> RouteState {
        RouteState { router, agent_header, risk_header }
    }
}

/// The routes.
pub fn routes(state: RouteState) -> axum::Router {
    axum::Router::new()
        .route("/v1/decision", get(decision))
        .route("/v1/auth", any(auth))
        .route("/v1/auth/{*rest}", any(auth))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// The risk named in a request, in any case (no allocation: this runs on every request).
fn parse_risk(s: &str) -> Option<Risk> {
    let s = s.trim();
    Risk::NAMED.into_iter().find_map(|(name, r)| s.eq_ignore_ascii_case(name).then_some(r))
}

#[derive(Deserialize)]
struct DecisionQuery {
    agent: Option<String>,
    risk: Option<String>,
}

async fn decision(
    State(s): State<RouteState>,
    q: Result<Query<DecisionQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(StatusCode::BAD_REQUEST, "bad_query", "expected ?agent=ID&risk=low|medium|high");
    };
    let Some(agent) = q.agent.filter(|a| !a.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "missing_agent", "`agent` is required");
    };
    let risk = match q.risk.as_deref() {
        None => Risk::Low,
        Some(r) => match parse_risk(r) {
            Some(r) => r,
            None => return error(StatusCode::BAD_REQUEST, "bad_risk", "`risk` must be low, medium or high"),
        },
    };
    let d = s.router.decide(&agent, risk);
    Json(json!({
        "agent": agent,
        "action": d.action,
        "lane": d.lane.as_str(),
        "scope": d.scope.as_str(),
        "allow": d.allow,
        "reason": d.reason.as_str(),
        "since": d.since,
        "stale": d.stale,
        "known": d.known,
    }))
    .into_response()
}

/// The auth subrequest. A missing agent header denies (403, reason `missing_agent`): a guarded
/// route without an agent id is not under any pact. An unreadable risk counts as high.
async fn auth(State(s): State<RouteState>, headers: HeaderMap) -> Response {
    let Some(agent) = headers.get(&s.agent_header).and_then(|v| v.to_str().ok()).filter(|a| !a.is_empty())
    else {
        let mut r = StatusCode::FORBIDDEN.into_response();
        r.headers_mut().insert(REASON, HeaderValue::from_static("missing_agent"));
        return r;
    };
    let risk = match headers.get(&s.risk_header) {
        None => Risk::Low,
        Some(v) => v.to_str().ok().and_then(parse_risk).unwrap_or(Risk::High),
    };
    let d = s.router.decide(agent, risk);
    decision_response(&d)
}

fn decision_response(d: &Decision<'_>) -> Response {
    let status = if d.allow { StatusCode::OK } else { StatusCode::FORBIDDEN };
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert(LANE, HeaderValue::from_static(d.lane.as_str()));
    if let Ok(v) = HeaderValue::from_str(d.action) {
        h.insert(ACTION, v);
    }
    h.insert(REASON, HeaderValue::from_static(d.reason.as_str()));
    h.insert(STALE, HeaderValue::from_static(if d.stale { "true" } else { "false" }));
    r
}

async fn readyz(State(s): State<RouteState>) -> Response {
    let ready = s.router.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": ready, "agents": s.router.table().len(), "partitions": s.router.liveness().partitions()})))
        .into_response()
}

async fn metrics(State(s): State<RouteState>) -> Response {
    let body = render_metrics(&s.router, driftgate_router::wall_micros());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The Prometheus text exposition of the router's counters at `now_us`.
pub fn render_metrics(r: &Router, now_us: i64) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut o = String::new();
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    head(
        &mut o,
        "driftgate_router_decisions_total",
        "counter",
        "Decisions, by the request's scope, the lane applied and its action.",
    );
    for scope in Scope::BOTH {
        for lane in Lane::ALL {
            let _ = writeln!(
                o,
                "driftgate_router_decisions_total{{scope=\"{}\",lane=\"{}\",action=\"{}\"}} {}",
                scope.as_str(),
                lane.as_str(),
                r.policy().action(scope, lane),
                r.decisions.by_lane(scope, lane)
            );
        }
    }
    head(
        &mut o,
        "driftgate_router_stale_decisions_total",
        "counter",
        "Decisions made while driftgate's view of the agent was older than max_staleness.",
    );
    let _ = writeln!(o, "driftgate_router_stale_decisions_total {}", r.decisions.stale.load(Relaxed));
    head(
        &mut o,
        "driftgate_router_unknown_agent_decisions_total",
        "counter",
        "Decisions for agents driftgate has never published (unknown_agent_lane).",
    );
    let _ = writeln!(
        o,
        "driftgate_router_unknown_agent_decisions_total {}",
        r.decisions.unknown_agent.load(Relaxed)
    );
    let topics = [TopicKind::Snapshot, TopicKind::Enforcement];
    for (name, help, counts) in [
        (
            "driftgate_router_records_applied_total",
            "Records that changed the router's table, by topic.",
            &r.follow.applied,
        ),
        (
            "driftgate_router_duplicates_dropped_total",
            "Records already covered by the table (duplicates or overtaken), by topic.",
            &r.follow.duplicates,
        ),
        (
            "driftgate_router_malformed_records_total",
            "Records skipped as malformed, by topic; they change no lane.",
            &r.follow.malformed,
        ),
    ] {
        head(&mut o, name, "counter", help);
        for t in topics {
            let _ = writeln!(o, "{name}{{topic=\"{}\"}} {}", t.as_str(), counts[t as usize].load(Relaxed));
        }
    }
    head(&mut o, "driftgate_router_heartbeats_total", "counter", "driftgate heartbeats read.");
    let _ = writeln!(o, "driftgate_router_heartbeats_total {}", r.follow.heartbeats.load(Relaxed));
    head(
        &mut o,
        "driftgate_router_staleness_seconds",
        "gauge",
        "Age of the stalest driftgate partition's newest heartbeat (+Inf while one has none).",
    );
    let staleness = match r.liveness().max_age(now_us) {
        None => "NaN".to_string(),
        Some(i64::MAX) => "+Inf".to_string(),
        Some(a) => format!("{}", a as f64 / 1e6),
    };
    let _ = writeln!(o, "driftgate_router_staleness_seconds {staleness}");
    head(&mut o, "driftgate_router_partitions", "gauge", "driftgate input partitions the router has seen.");
    let _ = writeln!(o, "driftgate_router_partitions {}", r.liveness().partitions());
    head(&mut o, "driftgate_router_agents", "gauge", "Agents in the router's table.");
    let _ = writeln!(o, "driftgate_router_agents {}", r.table().len());
    head(&mut o, "driftgate_router_ready", "gauge", "1 once the snapshot topic has been read to its end.");
    let _ = writeln!(o, "driftgate_router_ready {}", u8::from(r.is_ready()));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftgate_router::{Change, Parsed, Policy, Reason, Update, Version};

    fn state() -> (Arc<Router>, axum::Router) {
        let r = Arc::new(Router::new(Policy::default()));
        let s =
            RouteState::new(r.clone(), HeaderName::from_static("x-agent"), HeaderName::from_static("x-risk"));
        (r, routes(s))
    }

    fn block(r: &Router, agent: &str) {
        let u = Update {
            agent: agent.into(),
            version: Version { incarnation: 1, seq: 1 },
            source: None,
            change: Change::Event {
                scope: Scope::All,
                lane: Lane::Block,
                reason: Reason::from_code("zero_tolerance_breach"),
                since: 5,
            },
        };
        r.apply(TopicKind::Enforcement, Parsed::Update(u, Some(("in".into(), 0))));
    }

    async fn call(
        app: &axum::Router,
        req: axum::http::Request<axum::body::Body>,
    ) -> (StatusCode, HeaderMap, String) {
        use tower::ServiceExt;
        let resp = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn get(uri: &str, headers: &[(&str, &str)]) -> axum::http::Request<axum::body::Body> {
        let mut b = axum::http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn auth_allows_denies_and_falls_back() {
        let (r, app) = state();
        block(&r, "bad");
        let now = driftgate_router::wall_micros();
        r.apply(TopicKind::Snapshot, Parsed::Heartbeat(heartbeat(now)));
        let (st, h, _) = call(&app, get("/v1/auth/any/path", &[("x-agent", "bad")])).await;
        assert_eq!(
            (st, h.get(LANE).unwrap(), h.get(REASON).unwrap()),
            (
                StatusCode::FORBIDDEN,
                &HeaderValue::from_static("block"),
                &HeaderValue::from_static("zero_tolerance_breach")
            )
        );
        let (st, h, _) = call(&app, get("/v1/auth", &[("x-agent", "new"), ("x-risk", "low")])).await;
        assert_eq!(
            (st, h.get(ACTION).unwrap()),
            (StatusCode::OK, &HeaderValue::from_static("allow_and_monitor"))
        );
        // An unreadable risk counts as high; the only partition beat just now, so the view is
        // fresh and the unknown agent's lane (watch) applies, not the stale fallback.
        let (st, h, _) = call(&app, get("/v1/auth", &[("x-agent", "new"), ("x-risk", "extreme")])).await;
        assert_eq!((st, h.get(LANE).unwrap()), (StatusCode::OK, &HeaderValue::from_static("watch")));
        let (st, h, _) = call(&app, get("/v1/auth", &[])).await;
        assert_eq!(
            (st, h.get(REASON).unwrap()),
            (StatusCode::FORBIDDEN, &HeaderValue::from_static("missing_agent"))
        );
    }

    fn heartbeat(wall: i64) -> driftgate_core::model::heartbeat::Heartbeat {
        driftgate_core::model::heartbeat::Heartbeat {
            kind: "heartbeat".into(),
            source_topic: "in".into(),
            source_partition: 0,
            instance: "i".into(),
            state: driftgate_core::model::heartbeat::EngineState::Running,
            wall_time: wall,
            interval_ms: 5000,
            watermark: None,
            max_event_time: None,
            last_offset: None,
            position: None,
            committed: None,
            buffered: 0,
            idle: false,
        }
    }

    #[tokio::test]
    async fn decision_json_and_bad_queries() {
        let (r, app) = state();
        block(&r, "bad");
        let (st, _, body) = call(&app, get("/v1/decision?agent=bad&risk=high", &[])).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(st, StatusCode::OK);
        // No heartbeat yet: stale, and the block outranks the fallback.
        assert_eq!(
            (v["lane"].as_str(), v["allow"].as_bool(), v["stale"].as_bool(), v["since"].as_i64()),
            (Some("block"), Some(false), Some(true), Some(5))
        );
        for (uri, code) in [("/v1/decision", "missing_agent"), ("/v1/decision?agent=a&risk=x", "bad_risk")] {
            let (st, _, body) = call(&app, get(uri, &[])).await;
            assert_eq!(st, StatusCode::BAD_REQUEST);
            assert!(body.contains(code), "{body}");
        }
        let (st, _, _) = call(&app, get("/readyz", &[])).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn metrics_count_decisions_by_lane_and_action() {
        let (r, _) = state();
        block(&r, "bad");
        r.decide_at("bad", Risk::Low, 0);
        r.decide_at("nobody", Risk::High, 0);
        let m = render_metrics(&r, 0);
        assert!(
            m.contains("driftgate_router_decisions_total{scope=\"all\",lane=\"block\",action=\"block\"} 1"),
            "{m}"
        );
        assert!(m.contains("driftgate_router_decisions_total{scope=\"high_risk\",lane=\"review\",action=\"require_human_review\"} 1"), "{m}");
        assert!(m.contains("driftgate_router_unknown_agent_decisions_total 1"));
        assert!(m.contains("driftgate_router_stale_decisions_total 2"));
        assert!(m.contains("driftgate_router_records_applied_total{topic=\"enforcement\"} 1"));
        assert!(m.contains("driftgate_router_staleness_seconds +Inf"), "{m}");
    }
}
