//! Typed errors for detector construction and updates.

use thiserror::Error;

/// Why a detector refused an observation or a configuration.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DetectorError {
    /// The value is NaN or infinite.
    #[error("observation is not finite: {0}")]
    NotFinite(f64),
    /// A bernoulli detector got something other than 0/1/true/false.
    #[error("bernoulli observation must be 0 or 1, got {0}")]
    NotBinary(f64),
    /// The category set was fixed by the reference window and this one is not in it.
    #[error("unknown category {0:?}: the category set was fixed when the baseline was learned")]
    UnknownCategory(String),
    /// The category set would exceed the configured maximum.
    #[error("too many categories: more than {0}")]
    TooManyCategories(usize),
    /// The observation has the wrong kind for this detector (e.g. a string for a real metric).
    #[error("{detector} expects a {expected} observation")]
    WrongKind {
        /// Detector name.
        detector: &'static str,
        /// The kind it accepts.
        expected: &'static str,
    },
    /// A detector decoded from stored state has not been given its configuration back
    /// (see `AnyDetector::bind`).
    #[error("{0} was decoded from stored state and not bound to its clause's configuration")]
    Unbound(&'static str),
    /// A parameter is out of its valid range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// Parameter name as written in configuration.
        name: &'static str,
        /// Plain explanation.
        reason: String,
    },
}

impl DetectorError {
    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        DetectorError::InvalidParameter { name, reason: reason.into() }
    }
}

/// Checks that `v` is finite, returning it.
pub(crate) fn finite(v: f64) -> Result<f64, DetectorError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(DetectorError::NotFinite(v))
    }
}

/// Parameter validation helpers shared by constructors.
pub(crate) fn check_rate(name: &'static str, v: f64) -> Result<f64, DetectorError> {
    if v.is_finite() && v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(DetectorError::param(name, format!("must be in (0, 1), got {v}")))
    }
}

pub(crate) fn check_positive(name: &'static str, v: f64) -> Result<f64, DetectorError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(DetectorError::param(name, format!("must be a positive number, got {v}")))
    }
}
