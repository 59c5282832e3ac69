//! The Page-Hinkley test (Page 1954; Hinkley 1971), two-sided, as in River and MOA.

use crate::alarm::{Alarm, Estimate};
use crate::detector::{as_real, Detector, Observation, View};
use crate::error::check_positive;
use crate::DetectorError;
use serde::{Deserialize, Serialize};

/// Parameters of [`PageHinkley`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PageHinkleyConfig {
    /// Magnitude of change tolerated before evidence accumulates (`δ`).
    pub delta: f64,
    /// Alarm threshold (`λ`), in the units of the metric.
    pub threshold: f64,
    /// Forgetting factor of the cumulative sums (1 = none).
    pub alpha: f64,
    /// Observations before any alarm is allowed.
    pub min_instances: u64,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        PageHinkleyConfig { delta: 0.005, threshold: 50.0, alpha: 0.9999, min_instances: 30 }
    }
}

/// Page-Hinkley: cumulative deviations from the running mean, minus `δ`, compared with
/// their running extreme. The threshold is in metric units and is *not* derived from a
/// false-alarm rate; prefer `auto` where a calibrated rate matters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    cfg: PageHinkleyConfig,
    n: u64,
    mean: f64,
    sum_up: f64,
    min_up: f64,
    sum_down: f64,
    max_down: f64,
}

impl PageHinkley {
    /// Whether `o` was built from the same configuration (see `AnyDetector::bind`).
    pub(crate) fn same_config(&self, o: &Self) -> bool {
        self.cfg == o.cfg
    }

    /// A test with the given parameters.
    pub fn new(cfg: PageHinkleyConfig) -> Result<Self, DetectorError> {
        if !(cfg.delta.is_finite() && cfg.delta >= 0.0) {
            return Err(DetectorError::param("delta", "must be a non-negative number"));
        }
        check_positive("threshold", cfg.threshold)?;
        if !(cfg.alpha > 0.0 && cfg.alpha <= 1.0) {
            return Err(DetectorError::param("alpha", "must be in (0, 1]"));
        }
        Ok(PageHinkley { cfg, n: 0, mean: 0.0, sum_up: 0.0, min_up: 0.0, sum_down: 0.0, max_down: 0.0 })
    }

    fn stat(&self) -> f64 {
        (self.sum_up - self.min_up).max(self.max_down - self.sum_down)
    }
}

impl Detector for PageHinkley {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let x = as_real(obs, "page-hinkley")?;
        let i = self.n;
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        let dev = x - self.mean;
        self.sum_up = self.cfg.alpha * self.sum_up + dev - self.cfg.delta;
        self.sum_down = self.cfg.alpha * self.sum_down + dev + self.cfg.delta;
        self.min_up = self.min_up.min(self.sum_up);
        self.max_down = self.max_down.max(self.sum_down);
        if self.n < self.cfg.min_instances || self.stat() <= self.cfg.threshold {
            return Ok(None);
        }
        let up = self.sum_up - self.min_up >= self.max_down - self.sum_down;
        let params = [
            ("delta", self.cfg.delta),
            ("threshold", self.cfg.threshold),
            ("alpha", self.cfg.alpha),
            ("min_instances", self.cfg.min_instances as f64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Some(Box::new(Alarm {
            detector: "page-hinkley".into(),
            params,
            statistic: self.stat(),
            threshold: self.cfg.threshold,
            baseline: Estimate::Location { center: self.mean, scale: None },
            current: Estimate::Location { center: x, scale: None },
            n_reference: self.n,
            n_current: 1,
            change_point: i,
            index: i,
            false_alarm_rate: None,
            direction: if up { "increase" } else { "decrease" }.into(),
        })))
    }

    fn view(&self) -> View {
        View {
            statistic: self.stat(),
            threshold: self.cfg.threshold,
            n: self.n,
            ready: self.n >= self.cfg.min_instances,
        }
    }

    fn reset(&mut self) {
        *self = PageHinkley::new(self.cfg.clone()).expect("config was validated");
    }

    fn name(&self) -> &'static str {
        "page-hinkley"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_step() {
        // delta=0, threshold=1, no forgetting, min 1. Data 0,0,2:
        // n=1 mean 0 dev 0; n=2 mean 0 dev 0; n=3 mean 2/3 dev 4/3 -> sum_up 4/3 > 1.
        let mut ph =
            PageHinkley::new(PageHinkleyConfig { delta: 0.0, threshold: 1.0, alpha: 1.0, min_instances: 1 })
                .unwrap();
        assert!(ph.update(Observation::Real(0.0)).unwrap().is_none());
        assert!(ph.update(Observation::Real(0.0)).unwrap().is_none());
        let a = ph.update(Observation::Real(2.0)).unwrap().expect("alarm");
        assert!((a.statistic - 4.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.direction, "increase");
    }
}
