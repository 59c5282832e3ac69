//! Pact changes at run time: a new version enforced or shadowed, a shadow promoted, a change
//! rolled back. A change is an input like an override, processed in event-time order, so a
//! replay or a restore given the same inputs reproduces it.

use crate::pact::{parse_pact, Pact, PactError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a pact change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PactMode {
    /// The document replaces the active version of its pact.
    Enforce,
    /// The document runs beside the active version: its would-be events go to the history
    /// and metrics, never to routers.
    Shadow,
    /// The shadow version replaces the active one.
    Promote,
    /// A running shadow is discarded; without one, the active version gives way to the
    /// version it replaced.
    Rollback,
}

impl PactMode {
    /// The name used on the wire and in history records.
    pub fn as_str(self) -> &'static str {
        match self {
            PactMode::Enforce => "enforce",
            PactMode::Shadow => "shadow",
            PactMode::Promote => "promote",
            PactMode::Rollback => "rollback",
        }
    }

    /// Whether the change carries a pact document.
    pub fn takes_document(self) -> bool {
        matches!(self, PactMode::Enforce | PactMode::Shadow)
    }
}

/// A request to change the pacts in force, as submitted (HTTP, control topic, a re-read
/// file, or a replay file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PactChange {
    /// Caller-chosen id: a retry with the same id is not applied twice.
    pub change_id: String,
    /// What it does.
    pub mode: PactMode,
    /// The pact concerned (for `enforce` and `shadow`, the document's `pact`).
    pub pact_id: String,
    /// The pact document (YAML), for `enforce` and `shadow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    /// Who asked for it (authenticated upstream).
    pub principal: String,
    /// Why.
    pub reason: String,
    /// Change ticket.
    pub ticket: String,
    /// Event time it takes effect (µs).
    pub issued_at: i64,
    /// Where it came from (`http`, `control`, `file`, `replay`).
    #[serde(default)]
    pub channel: String,
}

/// Why a pact change was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PactChangeError {
    /// A required field is empty.
    #[error("`{0}` is required")]
    Missing(&'static str),
    /// `enforce` or `shadow` without a document.
    #[error("`{0}` needs a `document` (the pact YAML)")]
    NoDocument(&'static str),
    /// `promote` or `rollback` with a document.
    #[error("`{0}` takes no `document`: it acts on versions already submitted")]
    UnexpectedDocument(&'static str),
    /// The document is not a valid pact.
    #[error("invalid pact: {0}")]
    Invalid(#[from] PactError),
    /// The document is for another pact.
    #[error("the document is pact `{document}`, but the change names `{named}`")]
    OtherPact {
        /// `pact_id` of the change.
        named: String,
        /// `pact` of the document.
        document: String,
    },
    /// Against the pacts in force (no shadow to promote, nothing to roll back, a version
    /// number reused with another text).
    #[error("{0}")]
    Conflict(String),
}

impl PactChangeError {
    /// Short code for metrics and history.
    pub fn code(&self) -> &'static str {
        match self {
            PactChangeError::Missing(_)
            | PactChangeError::NoDocument(_)
            | PactChangeError::UnexpectedDocument(_)
            | PactChangeError::OtherPact { .. } => "invalid_request",
            PactChangeError::Invalid(_) => "invalid_pact",
            PactChangeError::Conflict(_) => "conflict",
        }
    }
}

impl PactChange {
    /// Checks the request's own fields and parses its document (named `<pact_id>.yaml`
    /// in errors): the pact for `enforce` and `shadow`, none for the others.
    pub fn check(&self) -> Result<Option<Pact>, PactChangeError> {
        for (name, v) in [
            ("change_id", &self.change_id),
            ("pact_id", &self.pact_id),
            ("principal", &self.principal),
            ("reason", &self.reason),
            ("ticket", &self.ticket),
        ] {
            if v.trim().is_empty() {
                return Err(PactChangeError::Missing(name));
            }
        }
        let mode = self.mode.as_str();
        match (&self.document, self.mode.takes_document()) {
            (None, true) => Err(PactChangeError::NoDocument(mode)),
            (Some(_), false) => Err(PactChangeError::UnexpectedDocument(mode)),
            (None, false) => Ok(None),
            (Some(doc), true) => {
                let pact = parse_pact(doc, &format!("{}.yaml", self.pact_id))?;
                if pact.id() != self.pact_id {
                    return Err(PactChangeError::OtherPact {
                        named: self.pact_id.clone(),
                        document: pact.id().to_string(),
                    });
                }
                Ok(Some(pact))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "pact: p\nversion: 2\napplies_to: { agents: [\"*\"] }\nclauses:\n  - id: c\n    metric: { kind: bernoulli, value: pii_detected }\n    test: { kind: limit, zero_tolerance: true }\n    severity: low\n    consequence: watch\n";

    fn change(mode: PactMode, document: Option<&str>) -> PactChange {
        PactChange {
            change_id: "c1".into(),
            mode,
            pact_id: "p".into(),
            document: document.map(String::from),
            principal: "alice".into(),
            reason: "tighten".into(),
            ticket: "T-1".into(),
            issued_at: 0,
            channel: "http".into(),
        }
    }

    #[test]
    fn a_change_is_checked_field_by_field_and_its_document_parsed_with_its_place() {
        assert_eq!(change(PactMode::Shadow, Some(DOC)).check().map(|p| p.map(|p| p.version())), Ok(Some(2)));
        assert_eq!(change(PactMode::Promote, None).check().map(|p| p.is_none()), Ok(true));
        assert_eq!(
            change(PactMode::Enforce, None).check().unwrap_err(),
            PactChangeError::NoDocument("enforce")
        );
        assert_eq!(change(PactMode::Rollback, Some(DOC)).check().unwrap_err().code(), "invalid_request");
        let mut c = change(PactMode::Enforce, Some(DOC));
        c.principal = " ".into();
        assert_eq!(c.check().unwrap_err(), PactChangeError::Missing("principal"));
        let bad = DOC.replace("severity: low", "severity: lowest");
        let e = change(PactMode::Enforce, Some(&bad)).check().unwrap_err();
        assert_eq!(e.code(), "invalid_pact");
        assert!(e.to_string().starts_with("invalid pact: p.yaml:8:"), "{e}");
        let mut other = change(PactMode::Enforce, Some(DOC));
        other.pact_id = "q".into();
        assert!(matches!(other.check(), Err(PactChangeError::OtherPact { .. })));
    }
}
