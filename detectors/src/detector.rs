//! The detector interface shared by every statistic in this crate.

use crate::{Alarm, DetectorError};
use serde::{Deserialize, Serialize};

/// One observation of a clause metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation<'a> {
    /// A 0/1 outcome (bernoulli metrics).
    Bool(bool),
    /// A real value (latency, judge score).
    Real(f64),
    /// A category name (tool mix, outcome class).
    Category(&'a str),
}

/// The metric kinds a clause can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum MetricKind {
    /// 0/1 outcomes.
    Bernoulli,
    /// Real numbers.
    Real,
    /// Category names.
    Categorical,
}

impl MetricKind {
    /// The lowercase name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Bernoulli => "bernoulli",
            MetricKind::Real => "real",
            MetricKind::Categorical => "categorical",
        }
    }
}

/// A read-only view of a detector's current state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// The current statistic, on the same scale as `threshold`.
    pub statistic: f64,
    /// The alarm threshold.
    pub threshold: f64,
    /// Observations since creation or the last reset.
    pub n: u64,
    /// False while the detector is still learning its baseline.
    pub ready: bool,
}

/// A sequential detector: feed observations one at a time; it answers with an alarm when it
/// has verified a change (or a breach, for bound tests).
///
/// After an alarm a detector keeps its state; callers decide whether to [`Detector::reset`]
/// (fresh baseline) or continue.
pub trait Detector {
    /// Feeds one observation. Invalid observations are rejected and leave the state untouched.
    ///
    /// The alarm is boxed because almost every update returns none: an inline alarm (about
    /// 200 bytes) was copied through every layer of every update, 8 % of the engine's time.
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError>;
    /// The current statistic and threshold.
    fn view(&self) -> View;
    /// Forgets everything, including the learned baseline.
    fn reset(&mut self);
    /// The detector's name, e.g. `auto-bernoulli`.
    fn name(&self) -> &'static str;
    /// Zeroes the accumulated evidence but keeps a learned baseline, so that a later alarm
    /// needs fresh evidence against the same reference (used to re-verify before recovery).
    /// Detectors without a separate baseline simply reset.
    fn restart(&mut self) {
        self.reset()
    }
    /// For bound tests: index of the last observation at which compliance (the metric under
    /// its exit threshold) was verified at the test's level. `None` for drift detectors.
    fn verified_in_control_at(&self) -> Option<u64> {
        None
    }
}

/// Converts an observation to a bernoulli outcome.
pub(crate) fn as_bool(obs: Observation<'_>, detector: &'static str) -> Result<bool, DetectorError> {
    match obs {
        Observation::Bool(b) => Ok(b),
        Observation::Real(0.0) => Ok(false),
        Observation::Real(1.0) => Ok(true),
        Observation::Real(v) if !v.is_finite() => Err(DetectorError::NotFinite(v)),
        Observation::Real(v) => Err(DetectorError::NotBinary(v)),
        Observation::Category(_) => Err(DetectorError::WrongKind { detector, expected: "0/1" }),
    }
}

/// Converts an observation to a finite real.
pub(crate) fn as_real(obs: Observation<'_>, detector: &'static str) -> Result<f64, DetectorError> {
    match obs {
        Observation::Real(v) => crate::error::finite(v),
        Observation::Bool(b) => Ok(if b { 1.0 } else { 0.0 }),
        Observation::Category(_) => Err(DetectorError::WrongKind { detector, expected: "real" }),
    }
}

/// Extracts a category name.
pub(crate) fn as_category<'a>(
    obs: Observation<'a>,
    detector: &'static str,
) -> Result<&'a str, DetectorError> {
    match obs {
        Observation::Category(c) => Ok(c),
        _ => Err(DetectorError::WrongKind { detector, expected: "category" }),
    }
}
