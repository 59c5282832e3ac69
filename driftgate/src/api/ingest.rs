//! One way in for overrides, whatever carries them (`POST /v1/overrides` or a record on the
//! control topic): authenticate, parse, require `expires_at`, fill `issued_at`, submit. Every
//! refusal is logged, counted (`driftgate_overrides_rejected_total{channel}`) and recorded in
//! the audit chain, the same way for both channels.

use crate::api::auth::{AuthError, Credentials, Presented};
use crate::api::control::{ControlPlane, Durability, SubmitError};
use driftgate_core::model::overrides::OverrideRequest;
use serde_json::json;
use tracing::{debug, warn};

/// What carried an override request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `POST /v1/overrides`.
    Http,
    /// A record on the control topic.
    Control,
}

impl Channel {
    /// The label and the audit record's `channel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Http => "http",
            Channel::Control => "control",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Channel::Http => "body",
            Channel::Control => "record",
        }
    }
}

/// Which rule a refused request broke; the HTTP API maps it to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// No credentials, or an expired signature (401).
    Unauthenticated,
    /// Wrong token, forged signature, or overrides disabled (403).
    Forbidden,
    /// Not a JSON object (400).
    NotJson,
    /// A rule of the override itself (422).
    Invalid,
    /// The agent is not held by this instance (404).
    UnknownAgent,
    /// Stale `expected_seq` (409).
    Conflict,
    /// The pipeline cannot take it now (503).
    Unavailable,
}

impl RefusalKind {
    /// The refusal a failed authentication gets, whatever the request: 401 when no valid
    /// credential was presented in time, 403 when a wrong one was (or none is accepted).
    pub fn of_auth(e: &AuthError) -> RefusalKind {
        match e {
            AuthError::Missing | AuthError::Expired(_) => RefusalKind::Unauthenticated,
            AuthError::Disabled | AuthError::BadToken | AuthError::BadSignature => RefusalKind::Forbidden,
        }
    }
}

/// A refused request: which rule, the code and the message the caller is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Which rule.
    pub kind: RefusalKind,
    /// Short code (the API's `error`, the audit record's `reason`).
    pub code: &'static str,
    /// Plain words.
    pub message: String,
}

/// An accepted override, handed to the engine that holds its agent.
#[derive(Debug)]
pub struct Accepted {
    /// `override_id`.
    pub override_id: String,
    /// `agent_id`.
    pub agent_id: String,
    /// Says when the state holding it is durable.
    pub durability: Durability,
    /// How it authenticated (`token` or `hmac`).
    pub auth: &'static str,
}

/// Authenticates, parses, checks and submits one override request, `now` being the wall
/// clock (µs). A control-topic record for an agent held by another instance is not a
/// refusal: it is returned as [`RefusalKind::UnknownAgent`] without being recorded.
pub fn ingest(
    control: &dyn ControlPlane,
    creds: &Credentials,
    channel: Channel,
    presented: &Presented<'_>,
    body: &[u8],
    now: i64,
) -> Result<Accepted, Refusal> {
    // The agent named in the body, for the audit record even when the rest is refused.
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let agent = parsed.as_ref().and_then(|v| v.get("agent_id")).and_then(|v| v.as_str()).map(str::to_string);
    let refuse = |kind: RefusalKind, code: &'static str, message: String| -> Result<Accepted, Refusal> {
        warn!(channel = channel.as_str(), agent = agent.as_deref().unwrap_or(""), code, %message, "override refused");
        control.metrics().overrides_rejected.with_label_values(&[channel.as_str()]).inc();
        let request =
            parsed.clone().unwrap_or_else(|| json!(String::from_utf8_lossy(&body[..body.len().min(4096)])));
        control.audit_rejection(
            agent.as_deref(),
            now,
            json!({"channel": channel.as_str(), "reason": code, "message": message, "request": request}),
        );
        Err(Refusal { kind, code, message })
    };
    let auth = match creds.check(presented, body, now / 1_000_000) {
        Ok(m) => m,
        Err(e) => return refuse(RefusalKind::of_auth(&e), e.code(), e.to_string()),
    };
    let Some(mut v) = parsed.clone().filter(|v| v.is_object()) else {
        return refuse(
            RefusalKind::NotJson,
            "invalid_json",
            format!("the {} is not a JSON object", channel.noun()),
        );
    };
    if v.get("expires_at").is_none_or(|e| e.is_null()) {
        return refuse(
            RefusalKind::Invalid,
            "missing_expires_at",
            "`expires_at` is mandatory: every override expires".into(),
        );
    }
    if let Some(o) = v.as_object_mut() {
        o.entry("issued_at").or_insert(json!(now));
    }
    let req: OverrideRequest = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return refuse(RefusalKind::Invalid, "invalid_override", e.to_string()),
    };
    let (override_id, agent_id) = (req.override_id.clone(), req.agent_id.clone());
    match control.submit_override(req, now) {
        Ok(durability) => Ok(Accepted { override_id, agent_id, durability, auth }),
        Err(e @ SubmitError::UnknownAgent(_)) if channel == Channel::Control => {
            debug!(agent = %agent_id, "control topic: agent not held here");
            Err(Refusal { kind: RefusalKind::UnknownAgent, code: e.code(), message: e.to_string() })
        }
        Err(e) => {
            let kind = match &e {
                SubmitError::UnknownAgent(_) => RefusalKind::UnknownAgent,
                SubmitError::Invalid(_) => RefusalKind::Invalid,
                SubmitError::Conflict(_) | SubmitError::DuplicateId(_) => RefusalKind::Conflict,
                SubmitError::Unavailable(_) => RefusalKind::Unavailable,
            };
            refuse(kind, e.code(), e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::DemoControl;

    const NOW: i64 = 1_772_409_600_000_000;

    fn demo() -> DemoControl {
        DemoControl::new(crate::cli::demo::run())
    }

    fn body(agent: &str, extra: serde_json::Value) -> Vec<u8> {
        let mut v = json!({"override_id": "o1", "agent_id": agent, "kind": "tighten", "lane": "watch",
            "principal": "p", "reason": "r", "ticket": "t", "expected_seq": 0});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn bearer() -> Presented<'static> {
        Presented { authorization: Some("Bearer tok"), ..Default::default() }
    }

    fn refused(
        control: &DemoControl,
        channel: Channel,
        p: &Presented<'_>,
        b: &[u8],
    ) -> (RefusalKind, &'static str) {
        let creds = Credentials::new(Some("tok"), None, 300);
        let r = ingest(control, &creds, channel, p, b, NOW).unwrap_err();
        (r.kind, r.code)
    }

    #[test]
    fn each_rule_is_refused_with_its_kind_counted_per_channel_and_audited() {
        let c = demo();
        let later = json!({"expires_at": NOW + 60_000_000});
        let cases: [(Presented<'_>, Vec<u8>, RefusalKind, &str); 5] = [
            (
                Presented::default(),
                body("fin-01", later.clone()),
                RefusalKind::Unauthenticated,
                "unauthenticated",
            ),
            (
                Presented { authorization: Some("Bearer nope"), ..Default::default() },
                body("fin-01", later.clone()),
                RefusalKind::Forbidden,
                "forged",
            ),
            (bearer(), b"[1]".to_vec(), RefusalKind::NotJson, "invalid_json"),
            (bearer(), body("fin-01", json!({})), RefusalKind::Invalid, "missing_expires_at"),
            (bearer(), body("nobody", later.clone()), RefusalKind::UnknownAgent, "unknown_agent"),
        ];
        for (p, b, kind, code) in &cases {
            assert_eq!(refused(&c, Channel::Http, p, b), (*kind, *code));
        }
        let count = |ch: &str| c.metrics().overrides_rejected.with_label_values(&[ch]).get();
        assert_eq!((count("http"), count("control")), (5, 0));
        // The same refusals from the control topic count there, except an agent held by
        // another instance, which is not this instance's to refuse.
        for (p, b, kind, code) in &cases {
            assert_eq!(refused(&c, Channel::Control, p, b), (*kind, *code));
        }
        assert_eq!((count("http"), count("control")), (5, 4));
        let audited = c.history("fin-01", 1000).iter().filter(|r| r.detail["channel"] == "control").count();
        assert_eq!(audited, 3, "fin-01's control-topic refusals are in its history");
    }

    #[test]
    fn an_accepted_override_names_its_agent_and_reaches_the_engine() {
        let c = demo();
        let creds = Credentials::new(Some("tok"), None, 300);
        let seq = c.agent("fin-01").unwrap().unwrap().seq;
        let b = body("fin-01", json!({"expires_at": NOW + 60_000_000, "expected_seq": seq}));
        let a = ingest(&c, &creds, Channel::Http, &bearer(), &b, NOW).unwrap();
        assert_eq!((a.override_id.as_str(), a.agent_id.as_str(), a.auth), ("o1", "fin-01", "token"));
        assert_eq!(a.durability.wait(std::time::Duration::ZERO), Some(Ok(())), "the demo is durable at once");
        let o = &c.agent("fin-01").unwrap().unwrap().overrides;
        assert_eq!(o.len(), 1, "{o:?}");
    }
}
