//! The evidence a detector hands over when it alarms.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A summary of a distribution: the baseline a detector learned, or what it sees now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Estimate {
    /// Probability of a 1 (bernoulli metrics).
    Rate {
        /// Estimated probability.
        p: f64,
    },
    /// Location and scale of a real metric.
    Location {
        /// Median (baseline) or mean (current window).
        center: f64,
        /// Interquartile range divided by 1.349 (baseline) or standard deviation, where known.
        scale: Option<f64>,
    },
    /// Category probabilities.
    Distribution {
        /// `(category, probability)` pairs in category order.
        probs: Vec<(String, f64)>,
    },
    /// A quantile of a real metric.
    Quantile {
        /// Which quantile, in (0, 1).
        q: f64,
        /// Its value.
        value: f64,
    },
    /// Nothing learned (e.g. an absolute-bound test has no baseline).
    None,
}

/// Auditable evidence of a detection or a breach.
///
/// Indexes count observations given to the detector since it was created or last reset,
/// starting at 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// Detector name, e.g. `auto-bernoulli`.
    pub detector: String,
    /// Every parameter that shaped the decision.
    pub params: BTreeMap<String, f64>,
    /// The statistic at the alarm.
    pub statistic: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// The baseline estimate (reference).
    pub baseline: Estimate,
    /// The estimate on the current (post-change) data.
    pub current: Estimate,
    /// Events in the reference (baseline) sample.
    pub n_reference: u64,
    /// Events in the current window: from the estimated change point to the alarm.
    pub n_current: u64,
    /// Estimated index of the first post-change observation.
    pub change_point: u64,
    /// Index of the observation that raised the alarm.
    pub index: u64,
    /// The false-alarm rate (alarms per in-control event, or the level alpha for bound tests)
    /// the threshold was derived from; `None` for uncalibrated detectors (Page-Hinkley, ADWIN).
    pub false_alarm_rate: Option<f64>,
    /// Which way the change went, where that has a meaning (`increase`, `decrease`, `scale_up`, ...).
    pub direction: String,
}
