//! CUSUM with known pre- and post-change distributions (Page 1954).

use crate::alarm::{Alarm, Estimate};
use crate::detector::{as_bool, as_category, as_real, Detector, Observation, View};
use crate::error::{check_positive, check_rate, finite};
use crate::numeric::bisect_decreasing;
use crate::DetectorError;
use serde::{Deserialize, Serialize};

/// The two distributions a known-parameter CUSUM tests between.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case", deny_unknown_fields)]
pub enum Family {
    /// Rate `p0` before, `p1` after.
    Bernoulli {
        /// Rate before the change.
        p0: f64,
        /// Rate after the change.
        p1: f64,
    },
    /// Normal with mean `mu0` before and `mu1` after, common `sigma`.
    Gaussian {
        /// Mean before.
        mu0: f64,
        /// Mean after.
        mu1: f64,
        /// Standard deviation.
        sigma: f64,
    },
    /// Category probabilities before and after.
    Categorical {
        /// Category names.
        categories: Vec<String>,
        /// Probabilities before.
        p0: Vec<f64>,
        /// Probabilities after.
        p1: Vec<f64>,
    },
}

impl Family {
    fn validate(&self) -> Result<(), DetectorError> {
        match self {
            Family::Bernoulli { p0, p1 } => {
                check_rate("p0", *p0)?;
                check_rate("p1", *p1)?;
                if p0 == p1 {
                    return Err(DetectorError::param("p1", "must differ from p0"));
                }
            }
            Family::Gaussian { mu0, mu1, sigma } => {
                finite(*mu0).map_err(|_| DetectorError::param("mu0", "must be finite"))?;
                finite(*mu1).map_err(|_| DetectorError::param("mu1", "must be finite"))?;
                check_positive("sigma", *sigma)?;
                if mu0 == mu1 {
                    return Err(DetectorError::param("mu1", "must differ from mu0"));
                }
            }
            Family::Categorical { categories, p0, p1 } => {
                if categories.len() < 2 || p0.len() != categories.len() || p1.len() != categories.len() {
                    return Err(DetectorError::param("p0", "needs one probability per category, at least 2"));
                }
                for (name, v) in [("p0", p0), ("p1", p1)] {
                    if v.iter().any(|p| !(p.is_finite() && *p > 0.0))
                        || (v.iter().sum::<f64>() - 1.0).abs() > 1e-6
                    {
                        return Err(DetectorError::param(name, "must be positive and sum to 1"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The log-likelihood-ratio outcomes under the pre-change law: `(value, probability)`, or
    /// for the Gaussian its mean and standard deviation.
    fn llr_moments(&self) -> (f64, f64) {
        match self {
            Family::Gaussian { mu0, mu1, sigma } => {
                let d = (mu1 - mu0) / sigma;
                (-d * d / 2.0, d.abs())
            }
            Family::Bernoulli { p0, p1 } => {
                let a = (p1 / p0).ln();
                let b = ((1.0 - p1) / (1.0 - p0)).ln();
                let m = p0 * a + (1.0 - p0) * b;
                let v = p0 * (a - m).powi(2) + (1.0 - p0) * (b - m).powi(2);
                (m, v.sqrt())
            }
            Family::Categorical { p0, p1, .. } => {
                let l: Vec<f64> = p0.iter().zip(p1).map(|(a, b)| (b / a).ln()).collect();
                let m: f64 = p0.iter().zip(&l).map(|(p, l)| p * l).sum();
                let v: f64 = p0.iter().zip(&l).map(|(p, l)| p * (l - m).powi(2)).sum();
                (m, v.sqrt())
            }
        }
    }
}

/// Siegmund's corrected-diffusion approximation of a CUSUM's in-control average run length:
/// `ARL0 ≈ (e^b - 1 - b) / |μ|`, `b = h + 2·0.583·σ`, where `μ` and `σ` are the mean and
/// standard deviation of the log-likelihood-ratio increment before the change (for which
/// the exponential-tilt root is exactly 1). Siegmund (1985), *Sequential Analysis*, ch. X.
pub fn siegmund_arl0(h: f64, mu: f64, sigma: f64) -> f64 {
    let b = h + 2.0 * 0.583 * sigma;
    (b.exp() - 1.0 - b) / mu.abs()
}

/// Page's CUSUM `S = max(0, S + llr(x))` with alarm at `S ≥ h`.
///
/// `h` is either given, or derived from a false-alarm rate by inverting
/// [`siegmund_arl0`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cusum {
    family: Family,
    h: f64,
    false_alarm_rate: f64,
    s: f64,
    n: u64,
    start: u64,
    sum_since: f64,
}

impl Cusum {
    /// Whether `o` was built from the same configuration (see `AnyDetector::bind`).
    pub(crate) fn same_config(&self, o: &Self) -> bool {
        (&self.family, self.h.to_bits(), self.false_alarm_rate.to_bits())
            == (&o.family, o.h.to_bits(), o.false_alarm_rate.to_bits())
    }

    /// A CUSUM with threshold `h` if given, else with the threshold whose ARL0 is
    /// `1 / false_alarm_rate`.
    pub fn new(family: Family, h: Option<f64>, false_alarm_rate: f64) -> Result<Self, DetectorError> {
        family.validate()?;
        check_rate("false_alarm_rate", false_alarm_rate)?;
        let h = match h {
            Some(h) => check_positive("threshold", h)?,
            None => {
                let (mu, sigma) = family.llr_moments();
                let target = 1.0 / false_alarm_rate;
                // ARL0 increases with h, so bisect on its reciprocal.
                bisect_decreasing(|h| 1.0 / siegmund_arl0(h, mu, sigma), 1.0 / target, 0.0, 200.0)
            }
        };
        Ok(Cusum { family, h, false_alarm_rate, s: 0.0, n: 0, start: 0, sum_since: 0.0 })
    }

    /// The threshold in nats.
    pub fn threshold(&self) -> f64 {
        self.h
    }

    fn llr(&self, obs: Observation<'_>) -> Result<(f64, f64), DetectorError> {
        Ok(match &self.family {
            Family::Bernoulli { p0, p1 } => {
                let x = as_bool(obs, "cusum")?;
                let l = if x { (p1 / p0).ln() } else { ((1.0 - p1) / (1.0 - p0)).ln() };
                (l, x as u8 as f64)
            }
            Family::Gaussian { mu0, mu1, sigma } => {
                let x = as_real(obs, "cusum")?;
                ((mu1 - mu0) / (sigma * sigma) * (x - (mu0 + mu1) / 2.0), x)
            }
            Family::Categorical { categories, p0, p1 } => {
                let name = as_category(obs, "cusum")?;
                let c = categories
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| DetectorError::UnknownCategory(name.to_string()))?;
                ((p1[c] / p0[c]).ln(), c as f64)
            }
        })
    }
}

impl Detector for Cusum {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let (l, x) = self.llr(obs)?;
        let i = self.n;
        self.n += 1;
        if self.s <= 0.0 {
            self.start = i;
            self.sum_since = 0.0;
        }
        self.s = (self.s + l).max(0.0);
        self.sum_since += x;
        if self.s < self.h {
            return Ok(None);
        }
        let n_current = i - self.start + 1;
        let mean = self.sum_since / n_current as f64;
        let (baseline, current, direction) = match &self.family {
            Family::Bernoulli { p0, p1 } => (
                Estimate::Rate { p: *p0 },
                Estimate::Rate { p: mean },
                if p1 > p0 { "increase" } else { "decrease" },
            ),
            Family::Gaussian { mu0, mu1, sigma } => (
                Estimate::Location { center: *mu0, scale: Some(*sigma) },
                Estimate::Location { center: mean, scale: Some(*sigma) },
                if mu1 > mu0 { "increase" } else { "decrease" },
            ),
            Family::Categorical { categories, p0, p1 } => (
                Estimate::Distribution {
                    probs: categories.iter().cloned().zip(p0.iter().copied()).collect(),
                },
                Estimate::Distribution {
                    probs: categories.iter().cloned().zip(p1.iter().copied()).collect(),
                },
                "shift",
            ),
        };
        let mut params = std::collections::BTreeMap::new();
        params.insert("threshold".to_string(), self.h);
        match &self.family {
            Family::Bernoulli { p0, p1 } => {
                params.insert("p0".into(), *p0);
                params.insert("p1".into(), *p1);
            }
            Family::Gaussian { mu0, mu1, sigma } => {
                params.insert("mu0".into(), *mu0);
                params.insert("mu1".into(), *mu1);
                params.insert("sigma".into(), *sigma);
            }
            Family::Categorical { .. } => {}
        }
        Ok(Some(Box::new(Alarm {
            detector: "cusum".into(),
            params,
            statistic: self.s,
            threshold: self.h,
            baseline,
            current,
            n_reference: 0,
            n_current,
            change_point: self.start,
            index: i,
            false_alarm_rate: Some(self.false_alarm_rate),
            direction: direction.into(),
        })))
    }

    fn view(&self) -> View {
        View { statistic: self.s, threshold: self.h, n: self.n, ready: true }
    }

    fn reset(&mut self) {
        self.s = 0.0;
        self.n = 0;
        self.start = 0;
        self.sum_since = 0.0;
    }

    fn name(&self) -> &'static str {
        "cusum"
    }

    fn restart(&mut self) {
        self.s = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_gaussian() {
        // mu0=0, mu1=1, sigma=1: llr = x - 0.5. h = 2.
        let mut c = Cusum::new(Family::Gaussian { mu0: 0.0, mu1: 1.0, sigma: 1.0 }, Some(2.0), 1e-3).unwrap();
        // S: 0.5, 0 (clamped from -1.0), 1.0, 2.5 -> alarm at index 3, started at index 2.
        for x in [1.0, -0.5] {
            assert!(c.update(Observation::Real(x)).unwrap().is_none());
        }
        assert!(c.update(Observation::Real(1.5)).unwrap().is_none());
        let a = c.update(Observation::Real(2.0)).unwrap().expect("alarm");
        assert_eq!(a.index, 3);
        assert_eq!(a.change_point, 2);
        assert!((a.statistic - 2.5).abs() < 1e-12);
        assert_eq!(a.n_current, 2);
    }

    #[test]
    fn siegmund_threshold_inverts() {
        let c = Cusum::new(Family::Gaussian { mu0: 0.0, mu1: 0.5, sigma: 1.0 }, None, 1e-5).unwrap();
        let arl = siegmund_arl0(c.threshold(), -0.125, 0.5);
        assert!((arl / 1e5 - 1.0).abs() < 1e-6, "arl {arl}");
    }
}
