//! ADWIN (Bifet & Gavaldà 2007): an adaptive window whose halves are compared at every cut.

use crate::alarm::{Alarm, Estimate};
use crate::detector::{as_real, Detector, Observation, View};
use crate::error::check_rate;
use crate::DetectorError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Parameters of [`Adwin`], with River's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AdwinConfig {
    /// Confidence of each cut test (smaller = fewer false alarms, slower detection).
    pub delta: f64,
    /// Cuts are checked every `clock` observations.
    pub clock: u64,
    /// Buckets per row of the exponential histogram before two are merged.
    pub max_buckets: usize,
    /// Minimum length of each sub-window at a cut.
    pub min_window_length: u64,
    /// Observations before any cut is checked.
    pub grace_period: u64,
}

impl Default for AdwinConfig {
    fn default() -> Self {
        AdwinConfig { delta: 0.002, clock: 32, max_buckets: 5, min_window_length: 5, grace_period: 10 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Bucket {
    total: f64,
    variance: f64,
}

/// ADWIN2 with an exponential histogram: row `i` holds buckets summarising `2^i` values,
/// newest first. A change is declared when some cut splits the window into two parts whose
/// means differ by more than the Bernstein-style bound `ε_cut`; the older part is dropped.
/// Like River, the test is not calibrated to a per-event false-alarm rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    cfg: AdwinConfig,
    rows: Vec<VecDeque<Bucket>>,
    width: u64,
    total: f64,
    variance: f64,
    tick: u64,
    n: u64,
}

impl Adwin {
    /// Whether `o` was built from the same configuration (see `AnyDetector::bind`).
    pub(crate) fn same_config(&self, o: &Self) -> bool {
        self.cfg == o.cfg
    }

    /// An ADWIN with the given parameters.
    pub fn new(cfg: AdwinConfig) -> Result<Self, DetectorError> {
        check_rate("delta", cfg.delta)?;
        if cfg.clock == 0 {
            return Err(DetectorError::param("clock", "must be at least 1"));
        }
        if cfg.max_buckets < 2 {
            return Err(DetectorError::param("max_buckets", "must be at least 2"));
        }
        if cfg.min_window_length == 0 {
            return Err(DetectorError::param("min_window_length", "must be at least 1"));
        }
        Ok(Adwin { cfg, rows: Vec::new(), width: 0, total: 0.0, variance: 0.0, tick: 0, n: 0 })
    }

    /// The current window length.
    pub fn width(&self) -> u64 {
        self.width
    }

    /// The mean over the current window.
    pub fn mean(&self) -> f64 {
        if self.width == 0 {
            0.0
        } else {
            self.total / self.width as f64
        }
    }

    /// The `clock` parameter: how often cuts are checked.
    pub fn clock(&self) -> u64 {
        self.cfg.clock
    }

    fn insert(&mut self, x: f64) {
        if self.width > 0 {
            let mean = self.mean();
            self.variance += self.width as f64 * (x - mean).powi(2) / (self.width + 1) as f64;
        }
        self.width += 1;
        self.total += x;
        if self.rows.is_empty() {
            self.rows.push(VecDeque::new());
        }
        self.rows[0].push_front(Bucket { total: x, variance: 0.0 });
        // Compress: when a row overflows, merge its two oldest buckets into the next row.
        let mut i = 0;
        while i < self.rows.len() {
            if self.rows[i].len() <= self.cfg.max_buckets {
                break;
            }
            let b1 = self.rows[i].pop_back().expect("overflowing row");
            let b2 = self.rows[i].pop_back().expect("overflowing row");
            let n = (1u64 << i) as f64;
            let (m1, m2) = (b1.total / n, b2.total / n);
            let merged = Bucket {
                total: b1.total + b2.total,
                variance: b1.variance + b2.variance + n * n * (m1 - m2).powi(2) / (2.0 * n),
            };
            if i + 1 == self.rows.len() {
                self.rows.push(VecDeque::new());
            }
            self.rows[i + 1].push_front(merged);
            i += 1;
        }
    }

    fn drop_oldest(&mut self) {
        let Some(i) = self.rows.iter().rposition(|r| !r.is_empty()) else {
            return;
        };
        let b = self.rows[i].pop_back().expect("non-empty row");
        let n = (1u64 << i) as f64;
        let w = self.width as f64;
        let mean_b = b.total / n;
        self.width -= 1 << i;
        self.total -= b.total;
        if self.width > 0 {
            let mean_rest = self.total / self.width as f64;
            self.variance -= b.variance + n * (w - n) / w * (mean_b - mean_rest).powi(2);
            self.variance = self.variance.max(0.0);
        } else {
            self.variance = 0.0;
        }
        if self.rows[i].is_empty() && i + 1 == self.rows.len() {
            self.rows.pop();
        }
    }

    /// Checks every cut from oldest to newest; drops the oldest bucket while one fails.
    /// Returns the bound `ε_cut` of the first failing cut.
    fn detect(&mut self) -> Option<f64> {
        let mut changed = None;
        let min = self.cfg.min_window_length as f64;
        loop {
            let mut found = false;
            let w = self.width as f64;
            let var_w = self.variance / w;
            let delta_prime = (2.0 * w.ln() / self.cfg.delta).ln();
            let (mut n0, mut s0) = (0.0f64, 0.0f64);
            'cuts: for i in (0..self.rows.len()).rev() {
                let size = (1u64 << i) as f64;
                for b in self.rows[i].iter().rev() {
                    n0 += size;
                    s0 += b.total;
                    let n1 = w - n0;
                    if n1 < min {
                        break 'cuts;
                    }
                    if n0 < min {
                        continue;
                    }
                    let s1 = self.total - s0;
                    let m_recip = 1.0 / (n0 - min + 1.0) + 1.0 / (n1 - min + 1.0);
                    let eps =
                        (2.0 * m_recip * var_w * delta_prime).sqrt() + 2.0 / 3.0 * delta_prime * m_recip;
                    if (s0 / n0 - s1 / n1).abs() > eps {
                        found = true;
                        changed.get_or_insert(eps);
                        break 'cuts;
                    }
                }
            }
            if !found || self.width <= 2 * self.cfg.min_window_length {
                break;
            }
            self.drop_oldest();
        }
        changed
    }
}

impl Detector for Adwin {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let x = as_real(obs, "adwin")?;
        let i = self.n;
        self.n += 1;
        let before = self.mean();
        self.insert(x);
        self.tick += 1;
        if !self.tick.is_multiple_of(self.cfg.clock) || self.width <= self.cfg.grace_period {
            return Ok(None);
        }
        let old_width = self.width;
        let Some(eps) = self.detect() else {
            return Ok(None);
        };
        let params = [
            ("delta", self.cfg.delta),
            ("clock", self.cfg.clock as f64),
            ("max_buckets", self.cfg.max_buckets as f64),
            ("min_window_length", self.cfg.min_window_length as f64),
            ("grace_period", self.cfg.grace_period as f64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Some(Box::new(Alarm {
            detector: "adwin".into(),
            params,
            statistic: (self.mean() - before).abs(),
            threshold: eps,
            baseline: Estimate::Location { center: before, scale: None },
            current: Estimate::Location {
                center: self.mean(),
                scale: Some((self.variance / self.width as f64).sqrt()),
            },
            n_reference: old_width - self.width,
            n_current: self.width,
            change_point: (i + 1).saturating_sub(self.width),
            index: i,
            false_alarm_rate: None,
            direction: if self.mean() > before { "increase" } else { "decrease" }.into(),
        })))
    }

    fn view(&self) -> View {
        View { statistic: self.mean(), threshold: 0.0, n: self.n, ready: self.width > self.cfg.grace_period }
    }

    fn reset(&mut self) {
        *self = Adwin::new(self.cfg.clone()).expect("config was validated");
    }

    fn name(&self) -> &'static str {
        "adwin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_keeps_exact_totals() {
        let mut a = Adwin::new(AdwinConfig::default()).unwrap();
        for i in 0..100 {
            a.insert((i % 7) as f64);
        }
        let direct: f64 = (0..100).map(|i| (i % 7) as f64).sum();
        let buckets: f64 = a.rows.iter().flat_map(|r| r.iter()).map(|b| b.total).sum();
        assert_eq!(a.width(), 100);
        assert!((a.total - direct).abs() < 1e-9 && (buckets - direct).abs() < 1e-9);
        // Variance matches the two-pass computation.
        let mean = direct / 100.0;
        let var: f64 = (0..100).map(|i| ((i % 7) as f64 - mean).powi(2)).sum();
        assert!((a.variance - var).abs() < 1e-6, "{} vs {var}", a.variance);
    }

    #[test]
    fn known_answer_step_detected_and_window_shrinks() {
        // 0 x 200 then 1 x 200: the cut test must fire and drop the old zeros.
        let mut a = Adwin::new(AdwinConfig::default()).unwrap();
        let mut first = None;
        for i in 0..400 {
            let x = if i < 200 { 0.0 } else { 1.0 };
            if let Some(al) = a.update(Observation::Real(x)).unwrap() {
                first.get_or_insert(al.index);
            }
        }
        let at = first.expect("detected");
        // The first check after the change is at a multiple of the clock (224).
        assert!((200..=256).contains(&at), "{at}");
        assert!(a.width() < 400);
        assert!(a.mean() > 0.9);
    }
}
