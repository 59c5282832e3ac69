//! One way in for pact changes, whatever carries them (`POST /v1/pacts`, `POST
//! /v1/pacts/{id}/promote|rollback`, a record on the control topic, or a pact file re-read
//! on `SIGHUP`): authenticate exactly like overrides, parse, validate against the versions
//! in force, submit. Every refusal is logged, counted
//! (`driftgate_pact_activations_total{outcome="refused"}`) and recorded in the audit chain
//! as a `pact_refused` record, with the principal the request named.

use crate::api::auth::{Credentials, Presented};
use crate::api::control::{ControlPlane, Durability, SubmitError};
use crate::api::ingest::{Channel, Refusal, RefusalKind};
use driftgate_core::model::history::RecordKind;
use driftgate_core::model::pact_change::{PactChange, PactMode};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// An accepted pact change.
#[derive(Debug)]
pub struct AcceptedChange {
    /// Its id.
    pub change: PactChange,
    /// One answer per engine it was handed to: durable once each engine's snapshot holding
    /// it is acknowledged.
    pub durability: Vec<Durability>,
}

/// The metric label of an accepted change's outcome.
pub fn outcome(mode: PactMode) -> &'static str {
    match mode {
        PactMode::Enforce => "enforced",
        PactMode::Shadow => "shadowed",
        PactMode::Promote => "promoted",
        PactMode::Rollback => "rolled_back",
    }
}

/// A change id derived from what was asked (`what`: the request, and the endpoint's pact and
/// mode) and when, for requests that name none: a retry at another time is a new change.
fn derived_id(what: &[u8], now: i64) -> String {
    let h = Sha256::digest([what, &now.to_be_bytes()].concat());
    format!("chg-{}", h[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Authenticates, parses, validates and submits one pact change, `now` being the wall
/// clock (µs). `path` is the pact id and mode an endpoint's path names (`promote`,
/// `rollback`); without it, the body says (`POST /v1/pacts`: `mode` is `enforce` or
/// `shadow`, `document` the pact YAML; `pact_id` may be left out).
pub fn ingest_pact(
    control: &dyn ControlPlane,
    creds: &Credentials,
    channel: Channel,
    presented: &Presented<'_>,
    body: &[u8],
    path: Option<(&str, PactMode)>,
    now: i64,
) -> Result<AcceptedChange, Refusal> {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| parsed.as_ref().and_then(|v| v.get(k)).and_then(|v| v.as_str()).map(str::to_string);
    let principal = field("principal");
    let pact_hint = path.map(|(id, _)| id.to_string()).or_else(|| field("pact_id"));
    let refuse = |kind: RefusalKind,
                  code: &'static str,
                  message: String|
     -> Result<AcceptedChange, Refusal> {
        warn!(channel = channel.as_str(), pact = pact_hint.as_deref().unwrap_or(""), code, %message, "pact change refused");
        control.metrics().pact_activations.with_label_values(&["refused"]).inc();
        let request =
            parsed.clone().unwrap_or_else(|| json!(String::from_utf8_lossy(&body[..body.len().min(4096)])));
        control.audit(
            RecordKind::PactRefused,
            None,
            now,
            json!({"channel": channel.as_str(), "reason": code, "message": message, "pact": pact_hint,
                   "principal": principal, "request": request}),
        );
        Err(Refusal { kind, code, message })
    };
    if let Err(e) = creds.check(presented, body, now / 1_000_000) {
        return refuse(RefusalKind::of_auth(&e), e.code(), e.to_string());
    }
    let Some(mut v) = parsed.clone().filter(|v| v.is_object()) else {
        return refuse(RefusalKind::NotJson, "invalid_json", "the body is not a JSON object".into());
    };
    if let Some(o) = v.as_object_mut() {
        if let Some((id, mode)) = path {
            o.insert("pact_id".into(), json!(id));
            o.insert("mode".into(), json!(mode));
        }
        o.entry("issued_at").or_insert(json!(now));
        let what = [body, format!("{path:?}").as_bytes()].concat();
        o.entry("change_id").or_insert_with(|| json!(derived_id(&what, now)));
        o.insert("channel".into(), json!(channel.as_str()));
        // The pact id may be left to the document.
        if !o.contains_key("pact_id") {
            let doc = o.get("document").and_then(|d| d.as_str()).unwrap_or_default();
            // Read from its `pact:` line, so that even an invalid document is refused (by
            // `check` below) located in `<pact>.yaml`.
            let id = doc
                .lines()
                .find_map(|l| l.strip_prefix("pact:"))
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\''))
                .filter(|v| !v.is_empty())
                .unwrap_or("pact");
            o.insert("pact_id".into(), json!(id));
        }
    }
    let change: PactChange = match serde_json::from_value(v) {
        Ok(c) => c,
        Err(e) => return refuse(RefusalKind::Invalid, "invalid_request", e.to_string()),
    };
    if let Err(e) = change.check() {
        return refuse(RefusalKind::Invalid, e.code(), e.to_string());
    }
    match control.submit_pact_change(change.clone(), now) {
        Ok(durability) => {
            info!(channel = channel.as_str(), pact = %change.pact_id, mode = change.mode.as_str(),
                  principal = %change.principal, change_id = %change.change_id, "pact change accepted");
            control.metrics().pact_activations.with_label_values(&[outcome(change.mode)]).inc();
            Ok(AcceptedChange { change, durability })
        }
        Err(e) => {
            let kind = match &e {
                SubmitError::Conflict(_) => RefusalKind::Conflict,
                SubmitError::Unavailable(_) => RefusalKind::Unavailable,
                _ => RefusalKind::Invalid,
            };
            let code = match &e {
                SubmitError::Conflict(_) => "conflict",
                SubmitError::Invalid(_) => "invalid_pact",
                other => other.code(),
            };
            refuse(kind, code, e.to_string())
        }
    }
}

/// What a re-read did with one pact file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// Its version is the one in force: nothing to do.
    Unchanged,
    /// Its version was handed to the engines to enforce.
    Enforced(u32),
    /// It was refused (unreadable, invalid, or a conflict), with the reason.
    Refused(String),
}

/// Re-reads pact files (on `SIGHUP`): a file whose version differs from the active one is
/// enforced, with principal `file:<path>`; an invalid file is refused with its place and
/// recorded, and the version in force stays. Local access to the files and the process is
/// the authority here, as it is for the configuration.
pub fn reload_files(control: &dyn ControlPlane, paths: &[std::path::PathBuf], now: i64) -> Vec<Reloaded> {
    let in_force = control.pacts();
    paths
        .iter()
        .map(|path| {
            let file = path.display().to_string();
            let principal = format!("file:{file}");
            let refuse = |code: &'static str, message: String| {
                warn!(%file, code, %message, "pact file refused on re-read");
                control.metrics().pact_activations.with_label_values(&["refused"]).inc();
                control.audit(
                    RecordKind::PactRefused,
                    None,
                    now,
                    json!({"channel": "file", "reason": code, "message": message, "principal": principal}),
                );
                Reloaded::Refused(message)
            };
            let pact = match driftgate_core::pact::load_pact(path) {
                Ok(p) => p,
                Err(e) => return refuse("invalid_pact", e.to_string()),
            };
            let active = in_force.iter().find(|p| p.pact == pact.id()).and_then(|p| p.active.as_ref());
            if active.is_some_and(|a| a.version == pact.version()) {
                return Reloaded::Unchanged;
            }
            let change = PactChange {
                change_id: derived_id(pact.source().as_bytes(), now),
                mode: PactMode::Enforce,
                pact_id: pact.id().to_string(),
                document: Some(pact.source().to_string()),
                principal: principal.clone(),
                reason: "pact file re-read on SIGHUP".into(),
                ticket: "sighup".into(),
                issued_at: now,
                channel: "file".into(),
            };
            match control.submit_pact_change(change, now) {
                Ok(_) => {
                    info!(%file, pact = %pact.id(), version = pact.version(), "pact file re-read: version enforced");
                    control.metrics().pact_activations.with_label_values(&["enforced"]).inc();
                    Reloaded::Enforced(pact.version())
                }
                Err(e) => refuse("conflict", e.to_string()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::DemoControl;

    const NOW: i64 = 1_772_409_600_000_000;

    fn bearer() -> Presented<'static> {
        Presented { authorization: Some("Bearer tok"), ..Default::default() }
    }

    fn tools_v2(extra: &str) -> String {
        crate::cli::demo::EXAMPLE_PACTS[3].1.replace("version: 1", "version: 2") + extra
    }

    fn submit(
        c: &DemoControl,
        p: &Presented<'_>,
        body: serde_json::Value,
        path: Option<(&str, PactMode)>,
    ) -> Result<AcceptedChange, Refusal> {
        let creds = Credentials::new(Some("tok"), None, 300);
        ingest_pact(c, &creds, Channel::Http, p, &serde_json::to_vec(&body).unwrap(), path, NOW)
    }

    #[test]
    fn a_pact_change_is_authenticated_like_an_override_and_every_refusal_is_recorded_with_its_principal() {
        let c = DemoControl::new(crate::cli::demo::run());
        let body = json!({"mode": "shadow", "document": tools_v2(""), "principal": "mallory", "reason": "r", "ticket": "t"});
        let forged = Presented { authorization: Some("Bearer nope"), ..Default::default() };
        let r = submit(&c, &forged, body.clone(), None).unwrap_err();
        assert_eq!((r.kind, r.code), (RefusalKind::Forbidden, "forged"));
        let r = submit(&c, &Presented::default(), body, None).unwrap_err();
        assert_eq!((r.kind, r.code), (RefusalKind::Unauthenticated, "unauthenticated"));
        // An invalid document names its place; the version in force stays.
        let bad = tools_v2("").replace("severity: low", "severity: lowish");
        let body =
            json!({"mode": "enforce", "document": bad, "principal": "bob", "reason": "r", "ticket": "t"});
        let r = submit(&c, &bearer(), body, None).unwrap_err();
        assert_eq!((r.kind, r.code), (RefusalKind::Invalid, "invalid_pact"));
        assert!(r.message.contains("support-tools.yaml:"), "{}", r.message);
        let refusals = c.audit_records();
        assert_eq!(refusals.len(), 3);
        assert!(refusals.iter().all(|r| r.kind == RecordKind::PactRefused));
        assert_eq!(refusals[0].detail["principal"], "mallory");
        assert_eq!(refusals[2].detail["principal"], "bob");
        assert_eq!(c.metrics().pact_activations.with_label_values(&["refused"]).get(), 3);
        let tools = c.pacts().into_iter().find(|p| p.pact == "support-tools").unwrap();
        assert_eq!((tools.active.map(|a| a.version), tools.shadow), (Some(1), None));
        // Nothing to promote: a conflict.
        let r = submit(
            &c,
            &bearer(),
            json!({"principal": "bob", "reason": "r", "ticket": "t"}),
            Some(("support-tools", PactMode::Promote)),
        )
        .unwrap_err();
        assert_eq!((r.kind, r.code), (RefusalKind::Conflict, "conflict"));
    }

    #[test]
    fn a_re_read_enforces_changed_files_and_refuses_an_invalid_one_with_its_place() {
        let c = DemoControl::new(crate::cli::demo::run());
        let dir = tempfile::tempdir().unwrap();
        let (same, newer, broken) =
            (dir.path().join("a.yaml"), dir.path().join("b.yaml"), dir.path().join("c.yaml"));
        std::fs::write(&same, crate::cli::demo::EXAMPLE_PACTS[0].1).unwrap();
        std::fs::write(&newer, tools_v2("")).unwrap();
        std::fs::write(&broken, tools_v2("").replace("version: 2", "version: two")).unwrap();
        let got = reload_files(&c, &[same, newer, broken.clone()], NOW);
        assert_eq!(got[..2], [Reloaded::Unchanged, Reloaded::Enforced(2)]);
        assert!(
            matches!(&got[2], Reloaded::Refused(m) if m.starts_with(&format!("{}:", broken.display()))),
            "{got:?}"
        );
        let tools = c.pacts().into_iter().find(|p| p.pact == "support-tools").unwrap();
        let active = tools.active.unwrap();
        assert_eq!(active.version, 2);
        assert!(active.activation.is_some_and(|a| a.principal.starts_with("file:") && a.channel == "file"));
    }

    #[test]
    fn shadow_promote_and_rollback_move_the_versions_and_name_who_did_it() {
        let c = DemoControl::new(crate::cli::demo::run());
        let body = json!({"mode": "shadow", "document": tools_v2(""), "principal": "alice", "reason": "try v2", "ticket": "CHG-7"});
        let a = submit(&c, &bearer(), body, None).unwrap();
        assert_eq!((a.change.pact_id.as_str(), a.change.mode), ("support-tools", PactMode::Shadow));
        assert!(a.durability.iter().all(|d| d.wait(std::time::Duration::ZERO) == Some(Ok(()))));
        let tools = || c.pacts().into_iter().find(|p| p.pact == "support-tools").unwrap();
        let t = tools();
        assert_eq!(
            (t.active.as_ref().map(|a| a.version), t.shadow.as_ref().map(|s| s.version)),
            (Some(1), Some(2))
        );
        assert_eq!(
            t.shadow.and_then(|s| s.activation).map(|a| (a.principal, a.ticket)),
            Some(("alice".into(), "CHG-7".into()))
        );
        let who = json!({"principal": "alice", "reason": "shadow clean", "ticket": "CHG-7"});
        submit(&c, &bearer(), who.clone(), Some(("support-tools", PactMode::Promote))).unwrap();
        let t = tools();
        assert_eq!(
            (t.active.as_ref().map(|a| a.version), t.shadow.is_none(), t.previous.clone()),
            (Some(2), true, vec![1])
        );
        submit(&c, &bearer(), who, Some(("support-tools", PactMode::Rollback))).unwrap();
        let t = tools();
        assert_eq!((t.active.map(|a| a.version), t.previous), (Some(1), vec![]));
        for o in ["shadowed", "promoted", "rolled_back"] {
            assert_eq!(c.metrics().pact_activations.with_label_values(&[o]).get(), 1, "{o}");
        }
    }
}
