//! The HTTP API and `/metrics` (axum). Documented in `schemas/openapi.yaml`.
//!
//! Every error is a 4xx/5xx with a JSON body `{"error": code, "message": text}`; handlers
//! never panic on input, and the only wait (an override becoming durable) is bounded.

use crate::api::auth::{AuthError, Credentials, Presented};
use crate::api::control::{ControlPlane, SubmitError};
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use driftgate_core::model::overrides::OverrideRequest;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

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
        .route("/v1/pacts", get(pacts))
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

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let control = s.control.clone();
    // Gauges walk every agent: off the async workers.
    let text = tokio::task::spawn_blocking(move || {
        control.refresh_metrics();
        control.metrics().render()
    })
    .await
    .unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let r = s.control.readiness();
    let status = if r.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": r.ready(), "checks": r}))).into_response()
}

async fn pacts(State(s): State<ApiState>) -> Response {
    Json(s.control.pacts()).into_response()
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
    match s.control.agent(&id) {
        Some(a) => Json(a).into_response(),
        None => {
            error(StatusCode::NOT_FOUND, "unknown_agent", format!("agent `{id}` is unknown to this instance"))
        }
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
    let records = s.control.history(&id, limit);
    if records.is_empty() && s.control.agent(&id).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            format!("agent `{id}` is unknown to this instance"),
        );
    }
    Json(records).into_response()
}

async fn create_override(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let now = now_micros();
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let presented = Presented {
        authorization: h("authorization"),
        signature: h(SIGNATURE_HEADER),
        timestamp: h(TIMESTAMP_HEADER),
    };
    // The agent named in the body, for the audit record even when the rest is refused.
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let agent = parsed.as_ref().and_then(|v| v.get("agent_id")).and_then(|v| v.as_str()).map(str::to_string);
    let reject = |status: StatusCode, code: &str, message: String| {
        warn!(agent = agent.as_deref().unwrap_or(""), code, %message, "override refused");
        s.control.metrics().overrides_rejected.with_label_values(&["http"]).inc();
        let request =
            parsed.clone().unwrap_or_else(|| json!(String::from_utf8_lossy(&body[..body.len().min(4096)])));
        s.control.audit_rejection(
            agent.as_deref(),
            now,
            json!({"channel": "http", "reason": code, "message": message, "request": request}),
        );
        error(status, code, message)
    };
    let method = match s.creds.check(&presented, &body, now / 1_000_000) {
        Ok(m) => m,
        Err(e @ AuthError::Disabled) => return reject(StatusCode::FORBIDDEN, e.code(), e.to_string()),
        Err(e @ (AuthError::Missing | AuthError::Expired(_))) => {
            return reject(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
        }
        Err(e @ (AuthError::BadToken | AuthError::BadSignature)) => {
            return reject(StatusCode::FORBIDDEN, e.code(), e.to_string())
        }
    };
    let Some(mut v) = parsed.clone() else {
        return reject(StatusCode::BAD_REQUEST, "invalid_json", "the body is not a JSON object".into());
    };
    let Some(obj) = v.as_object_mut() else {
        return reject(StatusCode::BAD_REQUEST, "invalid_json", "the body is not a JSON object".into());
    };
    if obj.get("expires_at").is_none_or(|e| e.is_null()) {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_expires_at",
            "`expires_at` is mandatory: every override expires".into(),
        );
    }
    obj.entry("issued_at").or_insert(json!(now));
    let req: OverrideRequest = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return reject(StatusCode::UNPROCESSABLE_ENTITY, "invalid_override", e.to_string()),
    };
    let (id, agent_id) = (req.override_id.clone(), req.agent_id.clone());
    let ticket = match s.control.submit_override(req, now) {
        Ok(t) => t,
        Err(e) => {
            let status = match &e {
                SubmitError::UnknownAgent(_) => StatusCode::NOT_FOUND,
                SubmitError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                SubmitError::Conflict(_) => StatusCode::CONFLICT,
                SubmitError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            return reject(status, e.code(), e.to_string());
        }
    };
    // Answer only once the state holding the override is durable (in the changelog).
    let deadline = Instant::now() + s.durable_timeout;
    loop {
        match s.control.override_durable(&agent_id, ticket) {
            Some(Ok(())) => break,
            Some(Err(m)) => return error(StatusCode::SERVICE_UNAVAILABLE, "not_durable", m),
            None if Instant::now() > deadline => {
                return error(StatusCode::GATEWAY_TIMEOUT, "not_durable", "the override was handed to the engine but its state was not confirmed durable in time; retrying with the same override_id is safe")
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    info!(agent = %agent_id, override_id = %id, auth = method, "override accepted");
    (StatusCode::CREATED, Json(json!({"override_id": id, "agent": s.control.agent(&agent_id)})))
        .into_response()
}
