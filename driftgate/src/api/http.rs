//! The HTTP API and `/metrics` (axum). Documented in `schemas/openapi.yaml`.
//!
//! Every error is a 4xx/5xx with a JSON body `{"error": code, "message": text}`; handlers
//! never panic on input, and the only waits (an override or a pact change becoming
//! durable) are bounded.
//!
//! Handlers never block an async worker: every call into the control plane, which may wait
//! for the pipeline (a rebalance holds its state while it flushes), runs on the blocking
//! pool. So `/healthz` answers while the pipeline is busy.

use crate::api::auth::{Credentials, Presented};
use crate::api::control::{Busy, ControlPlane};
use crate::api::ingest::{ingest, Accepted, Channel, Refusal, RefusalKind};
use crate::api::pacts::{ingest_pact, AcceptedChange};
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use driftgate_core::model::pact_change::PactMode;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Header carrying the HMAC timestamp (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-driftgate-timestamp";
/// Header carrying the HMAC signature (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "x-driftgate-signature";

/// Shared by the handlers.
#[derive(Clone)]
pub struct ApiState {
    control: Arc<dyn ControlPlane>,
    creds: Credentials,
    durable_timeout: Duration,
}

impl ApiState {
    /// The API over `control`, authenticating overrides with `creds`.
    pub fn new(control: Arc<dyn ControlPlane>, creds: Credentials) -> ApiState {
        ApiState { control, creds, durable_timeout: Duration::from_secs(30) }
    }

    /// How long `POST /v1/overrides` waits for the override's state to be durable before
    /// answering 504 `not_durable` (default 30 s).
    pub fn with_durable_timeout(mut self, d: Duration) -> ApiState {
        self.durable_timeout = d;
        self
    }
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/v1/pacts", get(pacts).post(create_pact_change))
        .route("/v1/pacts/{id}/{action}", post(pact_action))
        .route("/v1/agents/{id}", get(agent))
        .route("/v1/agents/{id}/history", get(history))
        .route("/v1/overrides", post(create_override))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

/// Binds `addr` and serves until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": code, "message": message.to_string()}))).into_response()
}

/// Runs `f` on the control plane on the blocking pool (see the module docs). A panic in
/// it is answered 500, not propagated.
async fn off_worker<T: Send + 'static>(
    s: &ApiState,
    f: impl FnOnce(&dyn ControlPlane) -> T + Send + 'static,
) -> Result<T, Response> {
    let control = s.control.clone();
    tokio::task::spawn_blocking(move || f(&*control))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))
}

async fn metrics(State(s): State<ApiState>) -> Response {
    // Gauges walk every agent.
    let text = off_worker(&s, |c| {
        c.refresh_metrics();
        c.metrics().render()
    })
    .await;
    match text {
        Ok(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(r) => r,
    }
}

async fn readyz(State(s): State<ApiState>) -> Response {
    match off_worker(&s, |c| c.readiness()).await {
        Ok(r) => {
            let status = if r.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (status, Json(json!({"ready": r.ready(), "checks": r}))).into_response()
        }
        Err(r) => r,
    }
}

async fn pacts(State(s): State<ApiState>) -> Response {
    match off_worker(&s, |c| c.pacts()).await {
        Ok(p) => Json(p).into_response(),
        Err(r) => r,
    }
}

/// A path or query string the extractors refuse, answered in the API's JSON error shape
/// (axum's own rejection is plain text).
fn bad_request(code: &str, rejection: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, code, rejection)
}

async fn agent(State(s): State<ApiState>, id: Result<Path<String>, PathRejection>) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => return bad_request("bad_path", e),
    };
    let found = {
        let id = id.clone();
        off_worker(&s, move |c| c.agent(&id)).await
    };
    match found {
        Ok(Ok(Some(a))) => Json(a).into_response(),
        Ok(Ok(None)) => {
            error(StatusCode::NOT_FOUND, "unknown_agent", format!("agent `{id}` is unknown to this instance"))
        }
        Ok(Err(busy)) => unavailable(busy),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<String>,
}

/// Most records one request returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;

async fn history(
    State(s): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let (Path(id), Query(q)) = match (id, q) {
        (Ok(id), Ok(q)) => (id, q),
        (Err(e), _) => return bad_request("bad_path", e),
        (_, Err(e)) => return bad_request("bad_query", e),
    };
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n)) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_limit",
                format!("`limit` must be an integer from 1 to {MAX_HISTORY_LIMIT}"),
            )
        }
    };
    let found = {
        let id = id.clone();
        off_worker(&s, move |c| {
            let records = c.history(&id, limit);
            let known = if records.is_empty() { c.agent(&id).map(|a| a.is_some()) } else { Ok(true) };
            (records, known)
        })
        .await
    };
    let (records, known) = match found {
        Ok((records, Ok(known))) => (records, known),
        Ok((_, Err(busy))) => return unavailable(busy),
        Err(r) => return r,
    };
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            format!("agent `{id}` is unknown to this instance"),
        );
    }
    Json(records).into_response()
}

async fn create_override(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let accepted = {
        let s2 = s.clone();
        tokio::task::spawn_blocking(move || accept_override(&s2, &headers, &body)).await
    };
    let Accepted { override_id: id, agent_id, durability, auth: method } = match accepted {
        Ok(Ok(a)) => a,
        Ok(Err(r)) => return *r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    };
    // Answer only once the state holding the override is durable (in the changelog).
    let timeout = s.durable_timeout;
    match tokio::task::spawn_blocking(move || durability.wait(timeout)).await {
        Ok(Some(Ok(()))) => {}
        Ok(Some(Err(e))) => return error(StatusCode::SERVICE_UNAVAILABLE, "not_durable", e),
        Ok(None) => {
            return error(StatusCode::GATEWAY_TIMEOUT, "not_durable", "the override was handed to the engine but its state was not confirmed durable in time; retrying with the same override_id is safe")
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
    info!(agent = %agent_id, override_id = %id, auth = method, "override accepted");
    let agent = {
        let agent_id = agent_id.clone();
        off_worker(&s, move |c| c.agent(&agent_id)).await
    };
    match agent {
        Ok(Ok(Some(agent))) => {
            (StatusCode::CREATED, Json(json!({"override_id": id, "agent": agent}))).into_response()
        }
        // Durable is what the caller waited for; the agent's state is a convenience, left out
        // if the engine is busy or the partition has just moved.
        Ok(Ok(None) | Err(_)) => (StatusCode::CREATED, Json(json!({"override_id": id}))).into_response(),
        Err(r) => r,
    }
}

async fn create_pact_change(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    pact_change(s, headers, body, None).await
}

/// `POST /v1/pacts/{id}/promote` and `.../rollback`.
async fn pact_action(
    State(s): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, mode) = match path {
        Ok(Path((id, action))) => match action.as_str() {
            "promote" => (id, PactMode::Promote),
            "rollback" => (id, PactMode::Rollback),
            _ => return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        },
        Err(e) => return bad_request("bad_path", e),
    };
    pact_change(s, headers, body, Some((id, mode))).await
}

/// Takes a pact change and answers once every engine here holds it durably, with the
/// pact's versions as they are then.
async fn pact_change(
    s: ApiState,
    headers: HeaderMap,
    body: Bytes,
    path: Option<(String, PactMode)>,
) -> Response {
    let accepted = {
        let s2 = s.clone();
        tokio::task::spawn_blocking(move || {
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
            let presented = Presented {
                authorization: h("authorization"),
                signature: h(SIGNATURE_HEADER),
                timestamp: h(TIMESTAMP_HEADER),
            };
            let path = path.as_ref().map(|(id, mode)| (id.as_str(), *mode));
            ingest_pact(
                &*s2.control,
                &s2.creds,
                Channel::Http,
                &presented,
                &body,
                path,
                crate::clock::wall_micros(),
            )
        })
        .await
    };
    let AcceptedChange { change, durability } = match accepted {
        Ok(Ok(a)) => a,
        Ok(Err(r)) => return refusal(r),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    };
    let timeout = s.durable_timeout;
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + timeout;
        for d in durability {
            match d.wait(deadline.saturating_duration_since(std::time::Instant::now())) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(Box::new(error(StatusCode::SERVICE_UNAVAILABLE, "not_durable", e))),
                None => return Err(Box::new(error(StatusCode::GATEWAY_TIMEOUT, "not_durable", "the change was handed to the engines but not confirmed durable in time; retrying with the same change_id is safe"))),
            }
        }
        Ok(())
    })
    .await;
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(r)) => return *r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
    let id = change.pact_id.clone();
    let versions = off_worker(&s, move |c| c.pacts().into_iter().find(|p| p.pact == id)).await;
    match versions {
        Ok(p) => (
            StatusCode::CREATED,
            Json(json!({"change_id": change.change_id, "mode": change.mode, "pact": p})),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// A refused request, answered with its status and the API's JSON error.
fn refusal(r: Refusal) -> Response {
    let status = match r.kind {
        RefusalKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        RefusalKind::Forbidden => StatusCode::FORBIDDEN,
        RefusalKind::NotJson => StatusCode::BAD_REQUEST,
        RefusalKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        RefusalKind::UnknownAgent => StatusCode::NOT_FOUND,
        RefusalKind::Conflict => StatusCode::CONFLICT,
        RefusalKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, r.code, r.message)
}

/// 503 `unavailable`: the engine's owner did not answer in time.
fn unavailable(busy: Busy) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", busy)
}

/// [`ingest`]s an override from the request (on the blocking pool); a refusal is answered
/// with its status and the API's JSON error.
fn accept_override(s: &ApiState, headers: &HeaderMap, body: &Bytes) -> Result<Accepted, Box<Response>> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let presented = Presented {
        authorization: h("authorization"),
        signature: h(SIGNATURE_HEADER),
        timestamp: h(TIMESTAMP_HEADER),
    };
    ingest(&*s.control, &s.creds, Channel::Http, &presented, body, crate::clock::wall_micros())
        .map_err(|r| Box::new(refusal(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::commands::{self, Command};

    #[test]
    fn health_answers_while_the_pipeline_is_busy_and_a_query_it_cannot_answer_is_503_unavailable() {
        // The pipeline's control plane over a pipeline thread that takes commands but never
        // answers (as while a rebalance flushes).
        let (control, commands) = commands::control(Duration::from_secs(2));
        // One worker, as `driftgate run` has.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = ApiState::new(Arc::new(control), Credentials::new(None, None, 300));
        rt.spawn(serve(listener, state));
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        let waiting = {
            let (http, url) = (http.clone(), format!("{base}/v1/agents/a1"));
            std::thread::spawn(move || {
                let mut r = http.get(&url).call()?;
                Ok::<_, ureq::Error>((r.status().as_u16(), r.body_mut().read_to_string()?))
            })
        };
        let held = commands.recv_timeout(Duration::from_secs(30)).expect("the query reached the pipeline");
        assert!(matches!(&held, Command::Agent { id, .. } if id == "a1"), "{held:?}");
        // While the query waits for the pipeline:
        let health = http.get(&format!("{base}/healthz")).call().unwrap();
        assert_eq!(health.status().as_u16(), 200);
        let ready = http.get(&format!("{base}/readyz")).call().unwrap();
        assert_eq!(ready.status().as_u16(), 503, "answered, and not ready");
        assert!(!waiting.is_finished(), "the agent query was still waiting");
        let (status, body) = waiting.join().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, v["error"].as_str()), (503, Some("unavailable")), "{body}");
        assert!(v["message"].as_str().unwrap().contains("did not answer within 2000 ms"), "{body}");
    }
}
