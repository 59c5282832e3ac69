//! Configuration and bank construction shared by the `auto` detectors.

use crate::error::{check_positive, check_rate};
use crate::mixture::{inflation, kappa_grid, weights, MixtureSr};
use crate::DetectorError;
use serde::{Deserialize, Serialize};

/// Which changes a detector looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Direction {
    /// Increases and decreases (for real metrics: location up/down and scale up/down).
    #[default]
    Both,
    /// Only increases (rate up; location or scale up).
    Increase,
    /// Only decreases.
    Decrease,
}

impl Direction {
    /// Whether a change with this sign (`true` = up) is watched.
    pub fn allows(self, up: bool) -> bool {
        match self {
            Direction::Both => true,
            Direction::Increase => up,
            Direction::Decrease => !up,
        }
    }
}

/// Options of the `auto` detectors. Every default is chosen from theory, not from a
/// benchmark: see the crate documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AutoConfig {
    /// Target false alarms per in-control event (`α`); the threshold is `A = 1/α`.
    pub false_alarm_rate: f64,
    /// Which changes to watch.
    pub direction: Direction,
    /// Events of baseline learned before monitoring starts.
    pub reference_min: u64,
    /// The baseline keeps learning, in doubling stages, up to this many events, then freezes.
    pub reference_max: u64,
    /// Smallest per-event information (nats) of an alternative in the bank.
    pub kappa_min: f64,
    /// Largest per-event information (nats) of an alternative in the bank.
    pub kappa_max: f64,
    /// Ratio between neighbouring information levels.
    pub grid_ratio: f64,
    /// Alternatives whose false-alarm inflation from the estimated baseline exceeds this are
    /// left out until the baseline is larger.
    pub max_inflation: f64,
    /// Categorical only: most distinct categories.
    pub max_categories: usize,
}

impl Default for AutoConfig {
    fn default() -> Self {
        AutoConfig {
            false_alarm_rate: 1e-5,
            direction: Direction::Both,
            reference_min: 1000,
            reference_max: 16384,
            kappa_min: 1.0 / 2048.0,
            kappa_max: 0.5,
            grid_ratio: 2.0,
            max_inflation: 20.0,
            max_categories: crate::categorical::DEFAULT_MAX_CATEGORIES,
        }
    }
}

impl AutoConfig {
    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), DetectorError> {
        check_rate("false_alarm_rate", self.false_alarm_rate)?;
        if self.reference_min < 10 {
            return Err(DetectorError::param("reference_min", "must be at least 10"));
        }
        if self.reference_max < self.reference_min {
            return Err(DetectorError::param("reference_max", "must be at least reference_min"));
        }
        check_positive("kappa_min", self.kappa_min)?;
        check_positive("kappa_max", self.kappa_max)?;
        if self.kappa_max < self.kappa_min {
            return Err(DetectorError::param("kappa_max", "must be at least kappa_min"));
        }
        if !(self.grid_ratio.is_finite() && self.grid_ratio > 1.0) {
            return Err(DetectorError::param("grid_ratio", "must be greater than 1"));
        }
        if !(self.max_inflation.is_finite() && self.max_inflation >= 1.0) {
            return Err(DetectorError::param("max_inflation", "must be at least 1"));
        }
        Ok(())
    }

    /// `ln A`, the alarm threshold in nats.
    pub fn log_threshold(&self) -> f64 {
        (1.0 / self.false_alarm_rate).ln()
    }

    /// The information levels of the bank.
    pub(crate) fn kappas(&self) -> Vec<f64> {
        kappa_grid(self.kappa_min, self.kappa_max, self.grid_ratio)
    }

    /// The reference size at which the bank is rebuilt next, after one built at `built`.
    pub(crate) fn next_stage(&self, built: u64) -> u64 {
        if built == 0 {
            self.reference_min
        } else {
            (built.saturating_mul(2)).min(self.reference_max)
        }
    }

    /// Parameters recorded in alarms.
    pub(crate) fn params(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("false_alarm_rate", self.false_alarm_rate),
            ("reference_min", self.reference_min as f64),
            ("reference_max", self.reference_max as f64),
            ("kappa_min", self.kappa_min),
            ("kappa_max", self.kappa_max),
            ("grid_ratio", self.grid_ratio),
            ("max_inflation", self.max_inflation),
        ]
    }
}

/// A candidate alternative: a stable id and its information per event.
pub(crate) struct Candidate {
    pub id: u32,
    pub kappa: f64,
}

/// Chooses the members of a bank from `candidates` for a baseline of `n` events: returns the
/// indices kept (into `candidates`) and a fresh [`MixtureSr`] with their weights, carrying
/// over the statistics of `old` members with the same id.
pub(crate) fn build_bank(
    cfg: &AutoConfig,
    candidates: &[Candidate],
    n: u64,
    old: Option<&MixtureSr>,
) -> (Vec<usize>, MixtureSr) {
    let log_a_eff = cfg.log_threshold() + (candidates.len().max(1) as f64).ln();
    let f: Vec<f64> = candidates.iter().map(|c| inflation(log_a_eff, n as f64, c.kappa)).collect();
    let w = weights(&f, cfg.max_inflation);
    let mut keep = Vec::new();
    let mut ids = Vec::new();
    let mut ws = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        if w[i] > 0.0 {
            keep.push(i);
            ids.push(c.id);
            ws.push(w[i]);
        }
    }
    let mut sr = MixtureSr::new(ids, ws);
    if let Some(old) = old {
        sr.inherit(old);
    }
    (keep, sr)
}

/// `ln Λ`, floored at 0 (no evidence), for views.
pub(crate) fn log_stat(lambda: f64) -> f64 {
    if lambda > 1.0 {
        lambda.ln()
    } else {
        0.0
    }
}
