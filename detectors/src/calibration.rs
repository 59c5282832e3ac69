//! Residual calibration of the `auto` detectors, from simulation.
//!
//! The analytic part (overshoot constants and the estimated-baseline inflation) predicts the
//! false-alarm rate of a bank to first order. What it misses — neighbouring members sharing
//! an overshoot, the staged baseline, clamped scores — is measured by simulating in-control
//! streams and stored here as one factor per metric kind: the realised rate divided by the
//! predicted one. Regenerate with
//!
//! `cargo run --release -p driftgate-detectors --example calibrate`
//!
//! which prints this table.

use crate::MetricKind;

/// The share of the false-alarm budget the calibrated threshold aims at. Below 1 so that the
/// realised rate stays under `α` despite the residual spread of the calibration (about ±20%
/// across baselines and rates); the acceptance band is `[0.5 α, 1.2 α]`.
pub const TARGET: f64 = 0.8;

/// `log10 α` of the table's columns.
const LOG_ALPHAS: [f64; 3] = [-3.0, -4.0, -5.0];

/// Realised over predicted false-alarm rate by metric kind and `α`: the geometric mean over
/// the simulated scenarios of `examples/calibrate.rs` (bernoulli p = 0.5, 0.9, 0.03, 0.997;
/// real normal, lognormal, Student-t(1.5), Poisson(3); categorical with 3, 5 and 12 classes),
/// 400 alarms each. Refined by fixed-point steps: each entry is multiplied by the factor the
/// example prints for its kind and `α` (realised over `TARGET α`) until the factors are near 1.
const RESIDUAL: [(MetricKind, [f64; 3]); 3] = [
    (MetricKind::Bernoulli, [0.429, 0.587, 0.657]),
    (MetricKind::Real, [0.484, 0.518, 0.632]),
    (MetricKind::Categorical, [0.472, 0.574, 0.649]),
];

/// The residual factor for `kind` at `false_alarm_rate`, interpolated linearly in `log10 α`
/// and held constant beyond the table (below `α = 1e-5` the baseline is mature at almost
/// every alarm, as at `1e-5`).
pub fn residual(kind: MetricKind, false_alarm_rate: f64) -> f64 {
    let row = RESIDUAL.iter().find(|(k, _)| *k == kind).map_or([1.0; 3], |(_, r)| *r);
    let x = false_alarm_rate.log10().clamp(LOG_ALPHAS[2], LOG_ALPHAS[0]);
    for i in 0..2 {
        let (a, b) = (LOG_ALPHAS[i], LOG_ALPHAS[i + 1]);
        if x <= a && x >= b {
            let t = (a - x) / (a - b);
            return row[i] + t * (row[i + 1] - row[i]);
        }
    }
    row[2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_interpolates_and_holds_beyond_the_table() {
        assert_eq!(residual(MetricKind::Bernoulli, 1e-3), 0.429);
        assert!((residual(MetricKind::Bernoulli, 10f64.powf(-3.5)) - 0.508).abs() < 1e-12);
        assert_eq!(residual(MetricKind::Real, 1e-7), 0.632);
        assert_eq!(residual(MetricKind::Categorical, 0.5), 0.472);
    }
}
