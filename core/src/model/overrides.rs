//! Operator overrides: validation and precedence.
//!
//! Precedence: emergency kill > tightening > loosening > computed. Loosening overrides are
//! policy bypass and are counted as such. Every override expires; only the engine evaluates
//! expiry, in event time.

use crate::model::lane::{Lane, Scope};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The Avro schema of an override request (`schemas/override.avsc`).
pub const OVERRIDE_AVSC: &str = include_str!("../../../schemas/override.avsc");

/// What an override does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideKind {
    /// Block now, whatever the clauses say.
    EmergencyKill,
    /// Hold the agent at least at `lane`.
    Tighten,
    /// Let the agent run at most at `lane` (policy bypass).
    Loosen,
    /// Human attestation for a clause, required to leave `block` after a critical breach.
    Attest,
}

/// An override as submitted (HTTP, control topic, or a replay file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// Unique id.
    pub override_id: String,
    /// The agent.
    pub agent_id: String,
    /// Scope (default `all`).
    #[serde(default = "all")]
    pub scope: Scope,
    /// What it does.
    pub kind: OverrideKind,
    /// Target lane for `tighten` and `loosen`.
    #[serde(default)]
    pub lane: Option<Lane>,
    /// Clause attested, for `attest`.
    #[serde(default)]
    pub clause_id: Option<String>,
    /// Who asks.
    pub principal: String,
    /// Why.
    pub reason: String,
    /// Change ticket.
    pub ticket: String,
    /// Event time of the request (µs).
    pub issued_at: i64,
    /// Mandatory expiry (µs).
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Compare-and-set: the agent's current `seq` as the operator last saw it.
    #[serde(default)]
    pub expected_seq: Option<u64>,
}

fn all() -> Scope {
    Scope::All
}

impl OverrideRequest {
    /// Whether `other` asks for the same thing: a retry carries the same request. Its times
    /// may differ (`issued_at` defaults to the moment of each attempt); the first one's stand.
    pub fn same_request(&self, other: &OverrideRequest) -> bool {
        fn key(r: &OverrideRequest) -> impl PartialEq + '_ {
            (
                (&r.override_id, &r.agent_id, r.scope, r.kind, r.lane, &r.clause_id),
                (&r.principal, &r.reason, &r.ticket, r.expected_seq),
            )
        }
        key(self) == key(other)
    }
}

/// An accepted override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveOverride {
    /// The request.
    pub req: OverrideRequest,
    /// Its expiry (validated).
    pub expires_at: i64,
}

/// Why an override request is refused. The messages are part of the record: the history's
/// `override_rejected` entries and the API's error bodies carry them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OverrideError {
    /// A required text field is empty.
    #[error("`{0}` is required")]
    Required(&'static str),
    /// No `expires_at`.
    #[error("`expires_at` is mandatory: every override expires")]
    NoExpiry,
    /// `expires_at` is not after `issued_at`.
    #[error("`expires_at` is not after `issued_at`: the override is already expired")]
    AlreadyExpired,
    /// The override would outlive the maximum TTL.
    #[error("`expires_at` is beyond the maximum override TTL of {max_ttl_s} s")]
    BeyondMaxTtl {
        /// The maximum, in seconds.
        max_ttl_s: i64,
    },
    /// No `expected_seq`.
    #[error("`expected_seq` is mandatory (compare-and-set on the agent's seq)")]
    NoExpectedSeq,
    /// `expected_seq` is not the agent's current `seq`: a conflict, not a malformed request.
    #[error("stale `expected_seq` {expected}: the agent's seq is {current}")]
    StaleSeq {
        /// The request's `expected_seq`.
        expected: u64,
        /// The agent's `seq`.
        current: u64,
    },
    /// A tighten or loosen without a lane.
    #[error("`lane` is required for tighten and loosen")]
    NoLane,
    /// An attest without a clause.
    #[error("`clause_id` is required for attest")]
    NoClause,
}

/// Checks a request against the rules; `current_seq` is the agent's current `seq`. Returns
/// the expiry.
pub fn validate(req: &OverrideRequest, current_seq: u64, max_ttl_micros: i64) -> Result<i64, OverrideError> {
    let expires_at = check_request(req, max_ttl_micros)?;
    match req.expected_seq {
        Some(s) if s != current_seq => Err(OverrideError::StaleSeq { expected: s, current: current_seq }),
        _ => Ok(expires_at),
    }
}

/// The rules a request must meet by itself, whatever the agent's state (everything but the
/// compare-and-set on `seq`): a retry of an override already in force is checked by these.
/// Returns the expiry.
pub fn check_request(req: &OverrideRequest, max_ttl_micros: i64) -> Result<i64, OverrideError> {
    for (name, v) in [
        ("override_id", &req.override_id),
        ("agent_id", &req.agent_id),
        ("principal", &req.principal),
        ("reason", &req.reason),
        ("ticket", &req.ticket),
    ] {
        if v.trim().is_empty() {
            return Err(OverrideError::Required(name));
        }
    }
    let Some(expires_at) = req.expires_at else {
        return Err(OverrideError::NoExpiry);
    };
    if expires_at <= req.issued_at {
        return Err(OverrideError::AlreadyExpired);
    }
    if expires_at - req.issued_at > max_ttl_micros {
        return Err(OverrideError::BeyondMaxTtl { max_ttl_s: max_ttl_micros / 1_000_000 });
    }
    if req.expected_seq.is_none() {
        return Err(OverrideError::NoExpectedSeq);
    }
    match req.kind {
        OverrideKind::Tighten | OverrideKind::Loosen if req.lane.is_none() => Err(OverrideError::NoLane),
        OverrideKind::Attest if req.clause_id.is_none() => Err(OverrideError::NoClause),
        _ => Ok(expires_at),
    }
}

/// Applies the overrides in force to a computed lane for one scope.
pub fn apply(computed: Lane, scope: Scope, active: &[ActiveOverride]) -> Lane {
    let here = || active.iter().filter(|o| o.req.scope == scope || o.req.kind == OverrideKind::EmergencyKill);
    if here().any(|o| o.req.kind == OverrideKind::EmergencyKill) {
        return Lane::Block;
    }
    let mut lane = computed;
    if let Some(l) = here().filter(|o| o.req.kind == OverrideKind::Loosen).filter_map(|o| o.req.lane).min() {
        lane = lane.min(l);
    }
    if let Some(t) = here().filter(|o| o.req.kind == OverrideKind::Tighten).filter_map(|o| o.req.lane).max() {
        lane = lane.max(t);
    }
    lane
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: OverrideKind, lane: Option<Lane>) -> ActiveOverride {
        ActiveOverride {
            req: OverrideRequest {
                override_id: "o".into(),
                agent_id: "a".into(),
                scope: Scope::All,
                kind,
                lane,
                clause_id: None,
                principal: "p".into(),
                reason: "r".into(),
                ticket: "t".into(),
                issued_at: 0,
                expires_at: Some(10),
                expected_seq: Some(0),
            },
            expires_at: 10,
        }
    }

    #[test]
    fn precedence_kill_then_tighten_then_loosen_then_computed() {
        use OverrideKind::*;
        assert_eq!(apply(Lane::Degrade, Scope::All, &[]), Lane::Degrade);
        assert_eq!(apply(Lane::Degrade, Scope::All, &[req(Loosen, Some(Lane::Normal))]), Lane::Normal);
        assert_eq!(
            apply(
                Lane::Degrade,
                Scope::All,
                &[req(Loosen, Some(Lane::Normal)), req(Tighten, Some(Lane::Watch))]
            ),
            Lane::Watch
        );
        assert_eq!(
            apply(Lane::Normal, Scope::All, &[req(Tighten, Some(Lane::Review)), req(EmergencyKill, None)]),
            Lane::Block
        );
    }

    #[test]
    fn validation_rules() {
        let mut r = req(OverrideKind::Tighten, Some(Lane::Watch)).req;
        assert!(validate(&r, 0, 100).is_ok());
        let stale = validate(&r, 3, 100).unwrap_err();
        assert_eq!(stale, OverrideError::StaleSeq { expected: 0, current: 3 });
        assert_eq!(stale.to_string(), "stale `expected_seq` 0: the agent's seq is 3");
        r.expires_at = None;
        assert_eq!(validate(&r, 0, 100), Err(OverrideError::NoExpiry));
        r.expires_at = Some(10_000_000);
        assert_eq!(validate(&r, 0, 5_000_000), Err(OverrideError::BeyondMaxTtl { max_ttl_s: 5 }));
        assert_eq!(validate(&r, 0, 10_000_000), Ok(10_000_000), "a TTL of exactly the maximum is allowed");
        r.expires_at = Some(r.issued_at);
        assert_eq!(validate(&r, 0, 100), Err(OverrideError::AlreadyExpired));
        r.expires_at = Some(r.issued_at + 50);
        r.lane = None;
        assert_eq!(validate(&r, 0, 100), Err(OverrideError::NoLane));
        r.expected_seq = None;
        assert_eq!(validate(&r, 0, 100), Err(OverrideError::NoExpectedSeq));
        r.ticket = " ".into();
        assert_eq!(validate(&r, 0, 100).unwrap_err().to_string(), "`ticket` is required");
    }

    #[test]
    fn a_retry_is_the_same_request_whatever_its_times_and_any_other_field_makes_it_another() {
        let first = req(OverrideKind::Tighten, Some(Lane::Watch)).req;
        let retry = OverrideRequest { issued_at: 7, expires_at: Some(99), ..first.clone() };
        assert!(first.same_request(&retry) && retry.same_request(&first));
        let changes: [fn(&mut OverrideRequest); 10] = [
            |r| r.override_id = "o2".into(),
            |r| r.agent_id = "b".into(),
            |r| r.scope = Scope::HighRisk,
            |r| r.kind = OverrideKind::Loosen,
            |r| r.lane = Some(Lane::Block),
            |r| r.clause_id = Some("c".into()),
            |r| r.principal = "q".into(),
            |r| r.reason = "s".into(),
            |r| r.ticket = "u".into(),
            |r| r.expected_seq = Some(1),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut other = first.clone();
            change(&mut other);
            assert!(!first.same_request(&other), "change {i} makes another request");
        }
    }
}
