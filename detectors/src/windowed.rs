//! Windowed two-sample tests: Kolmogorov–Smirnov, chi-squared and PSI.
//!
//! Each compares a fixed reference (the first `reference` observations after a reset)
//! with a sliding window of the last `window` observations, every `stride` observations.
//! With `false_alarm_rate` α per event and one test per `stride` events, each test runs at
//! level `α · stride`, so by the union bound the rate of false alarms is at most α.

use crate::alarm::{Alarm, Estimate};
use crate::detector::{as_real, Detector, Observation, View};
use crate::error::{check_positive, check_rate};
use crate::numeric::{bisect_decreasing, chi2_sf, chi2_upper_quantile, kolmogorov_sf};
use crate::DetectorError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Window parameters shared by the windowed tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WindowConfig {
    /// Reference size.
    pub reference: usize,
    /// Sliding-window size.
    pub window: usize,
    /// Observations between tests.
    pub stride: usize,
    /// Target false alarms per in-control event.
    pub false_alarm_rate: f64,
    /// PSI only: a fixed threshold (e.g. 0.25) instead of one derived from the rate.
    pub threshold: Option<f64>,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig { reference: 5000, window: 1000, stride: 100, false_alarm_rate: 1e-5, threshold: None }
    }
}

impl WindowConfig {
    fn validate(&self) -> Result<(), DetectorError> {
        if self.reference < 10 || self.window < 10 {
            return Err(DetectorError::param("window", "reference and window need at least 10 observations"));
        }
        if self.stride == 0 {
            return Err(DetectorError::param("stride", "must be at least 1"));
        }
        check_rate("false_alarm_rate", self.false_alarm_rate)?;
        if let Some(t) = self.threshold {
            check_positive("threshold", t)?;
        }
        Ok(())
    }

    /// Level of each test.
    fn test_level(&self) -> f64 {
        (self.false_alarm_rate * self.stride as f64).min(0.5)
    }

    fn params(&self) -> std::collections::BTreeMap<String, f64> {
        let mut p: std::collections::BTreeMap<String, f64> = [
            ("reference", self.reference as f64),
            ("window", self.window as f64),
            ("stride", self.stride as f64),
            ("false_alarm_rate", self.false_alarm_rate),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(t) = self.threshold {
            p.insert("threshold".into(), t);
        }
        p
    }
}

/// Windowed two-sample Kolmogorov–Smirnov test on a real metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowedKs {
    cfg: WindowConfig,
    reference: Vec<f64>,
    sorted: bool,
    window: VecDeque<f64>,
    n: u64,
    last_d: f64,
    d_crit: f64,
}

impl WindowedKs {
    /// Whether `o` was built from the same configuration (see `AnyDetector::bind`).
    pub(crate) fn same_config(&self, o: &Self) -> bool {
        self.cfg == o.cfg
    }

    /// A KS test with the given windows.
    pub fn new(cfg: WindowConfig) -> Result<Self, DetectorError> {
        cfg.validate()?;
        // Critical D with Stephens' small-sample correction: Q((√ne + 0.12 + 0.11/√ne) D).
        let ne = (cfg.reference * cfg.window) as f64 / (cfg.reference + cfg.window) as f64;
        let en = ne.sqrt() + 0.12 + 0.11 / ne.sqrt();
        let t = bisect_decreasing(kolmogorov_sf, cfg.test_level(), 0.0, 10.0);
        let d_crit = t / en;
        Ok(WindowedKs {
            cfg,
            reference: Vec::new(),
            sorted: false,
            window: VecDeque::new(),
            n: 0,
            last_d: 0.0,
            d_crit,
        })
    }

    /// Two-sample KS statistic between the sorted reference and the current window.
    fn statistic(&self) -> f64 {
        let mut cur: Vec<f64> = self.window.iter().copied().collect();
        cur.sort_by(|a, b| a.total_cmp(b));
        let (r, c) = (&self.reference, &cur);
        let (nr, nc) = (r.len() as f64, c.len() as f64);
        let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
        while i < r.len() && j < c.len() {
            let x = r[i].min(c[j]);
            while i < r.len() && r[i] <= x {
                i += 1;
            }
            while j < c.len() && c[j] <= x {
                j += 1;
            }
            d = d.max((i as f64 / nr - j as f64 / nc).abs());
        }
        d
    }
}

impl Detector for WindowedKs {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let x = as_real(obs, "ks")?;
        let i = self.n;
        self.n += 1;
        if self.reference.len() < self.cfg.reference {
            self.reference.push(x);
            return Ok(None);
        }
        if !self.sorted {
            self.reference.sort_by(|a, b| a.total_cmp(b));
            self.sorted = true;
        }
        self.window.push_back(x);
        if self.window.len() > self.cfg.window {
            self.window.pop_front();
        }
        if self.window.len() < self.cfg.window || !self.n.is_multiple_of(self.cfg.stride as u64) {
            return Ok(None);
        }
        self.last_d = self.statistic();
        if self.last_d <= self.d_crit {
            return Ok(None);
        }
        let median = |v: &[f64]| v[v.len() / 2];
        let mut cur: Vec<f64> = self.window.iter().copied().collect();
        cur.sort_by(|a, b| a.total_cmp(b));
        let iqr = |v: &[f64]| (v[v.len() * 3 / 4] - v[v.len() / 4]) / 1.349;
        Ok(Some(Box::new(Alarm {
            detector: "ks".into(),
            params: self.cfg.params(),
            statistic: self.last_d,
            threshold: self.d_crit,
            baseline: Estimate::Location {
                center: median(&self.reference),
                scale: Some(iqr(&self.reference)),
            },
            current: Estimate::Location { center: median(&cur), scale: Some(iqr(&cur)) },
            n_reference: self.reference.len() as u64,
            n_current: cur.len() as u64,
            change_point: i + 1 - cur.len() as u64,
            index: i,
            false_alarm_rate: Some(self.cfg.false_alarm_rate),
            direction: if median(&cur) > median(&self.reference) { "increase" } else { "decrease" }.into(),
        })))
    }

    fn view(&self) -> View {
        View {
            statistic: self.last_d,
            threshold: self.d_crit,
            n: self.n,
            ready: self.reference.len() >= self.cfg.reference,
        }
    }

    fn reset(&mut self) {
        *self = WindowedKs::new(self.cfg.clone()).expect("config was validated");
    }

    fn name(&self) -> &'static str {
        "ks"
    }
}

/// Which two-sample statistic a [`BinnedWindow`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinnedTest {
    /// Pearson's chi-squared test of homogeneity.
    Chi2,
    /// Population stability index `Σ (c - r) ln(c / r)`.
    Psi,
}

/// How observations map to bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Bins {
    /// Category names, fixed when the reference is complete.
    Names(Vec<String>),
    /// Real values, binned at the reference deciles (fixed when the reference is complete).
    Deciles { sample: Vec<f64>, edges: Vec<f64> },
}

/// Windowed chi-squared or PSI on categories, 0/1 outcomes or binned real values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinnedWindow {
    cfg: WindowConfig,
    test: BinnedTest,
    bins: Bins,
    ref_counts: Vec<u64>,
    ref_n: usize,
    window: VecDeque<u16>,
    win_counts: Vec<u64>,
    n: u64,
    last: f64,
    /// Set when the reference is complete: the threshold for the current number of bins.
    threshold: f64,
}

/// Most bins a windowed test keeps.
const MAX_BINS: usize = 1024;

impl BinnedWindow {
    /// Whether `o` was built from the same configuration (see `AnyDetector::bind`).
    pub(crate) fn same_config(&self, o: &Self) -> bool {
        self.cfg == o.cfg
            && self.test == o.test
            && std::mem::discriminant(&self.bins) == std::mem::discriminant(&o.bins)
    }

    /// A windowed chi-squared or PSI test; `real` selects decile bins for real metrics.
    pub fn new(cfg: WindowConfig, test: BinnedTest, real: bool) -> Result<Self, DetectorError> {
        cfg.validate()?;
        let bins = if real {
            Bins::Deciles { sample: Vec::new(), edges: Vec::new() }
        } else {
            Bins::Names(Vec::new())
        };
        Ok(BinnedWindow {
            cfg,
            test,
            bins,
            ref_counts: Vec::new(),
            ref_n: 0,
            window: VecDeque::new(),
            win_counts: Vec::new(),
            n: 0,
            last: 0.0,
            threshold: 0.0,
        })
    }

    fn ready(&self) -> bool {
        self.ref_n >= self.cfg.reference
    }

    fn bin(&mut self, obs: Observation<'_>) -> Result<usize, DetectorError> {
        let ready = self.ready();
        match (&mut self.bins, obs) {
            (Bins::Names(names), Observation::Category(c)) => name_bin(names, c, ready),
            (Bins::Names(names), Observation::Bool(b)) => name_bin(names, if b { "1" } else { "0" }, ready),
            (Bins::Names(names), Observation::Real(v)) if v == 0.0 || v == 1.0 => {
                name_bin(names, if v == 1.0 { "1" } else { "0" }, ready)
            }
            (Bins::Names(_), Observation::Real(v)) => {
                Err(if v.is_finite() { DetectorError::NotBinary(v) } else { DetectorError::NotFinite(v) })
            }
            (Bins::Deciles { sample, edges }, o) => {
                let x = as_real(o, "windowed test")?;
                if !ready {
                    sample.push(x);
                    Ok(0)
                } else {
                    Ok(edges.partition_point(|e| *e < x))
                }
            }
        }
    }

    fn finish_reference(&mut self) {
        if let Bins::Deciles { sample, edges } = &mut self.bins {
            sample.sort_by(|a, b| a.total_cmp(b));
            let mut e: Vec<f64> = (1..10).map(|k| sample[k * sample.len() / 10]).collect();
            e.dedup();
            *edges = e;
            let counts = {
                let mut c = vec![0u64; edges.len() + 1];
                for x in sample.iter() {
                    c[edges.partition_point(|e| e < x)] += 1;
                }
                c
            };
            self.ref_counts = counts;
            *sample = Vec::new();
        }
        let k = self.ref_counts.len().max(2) as f64;
        let level = self.cfg.test_level();
        self.threshold = match (self.test, self.cfg.threshold) {
            (BinnedTest::Psi, Some(t)) => t,
            // PSI is a symmetrised KL divergence; under the null it is approximately
            // (1/n + 1/m) χ²_{k-1}.
            (BinnedTest::Psi, None) => {
                (1.0 / self.cfg.reference as f64 + 1.0 / self.cfg.window as f64)
                    * chi2_upper_quantile(k - 1.0, level)
            }
            (BinnedTest::Chi2, _) => chi2_upper_quantile(k - 1.0, level),
        };
        self.win_counts = vec![0; self.ref_counts.len()];
    }

    fn statistic(&self) -> f64 {
        let (n, m) = (self.ref_n as f64, self.window.len() as f64);
        match self.test {
            BinnedTest::Chi2 => {
                let mut x2 = 0.0;
                for (r, c) in self.ref_counts.iter().zip(&self.win_counts) {
                    let tot = (*r + *c) as f64;
                    if tot == 0.0 {
                        continue;
                    }
                    let er = tot * n / (n + m);
                    let ec = tot * m / (n + m);
                    x2 += (*r as f64 - er).powi(2) / er + (*c as f64 - ec).powi(2) / ec;
                }
                x2
            }
            BinnedTest::Psi => {
                let k = self.ref_counts.len() as f64;
                self.ref_counts
                    .iter()
                    .zip(&self.win_counts)
                    .map(|(r, c)| {
                        let pr = (*r as f64 + 0.5) / (n + 0.5 * k);
                        let pc = (*c as f64 + 0.5) / (m + 0.5 * k);
                        (pc - pr) * (pc / pr).ln()
                    })
                    .sum()
            }
        }
    }

    fn estimate(&self, counts: &[u64], total: f64) -> Estimate {
        let names: Vec<String> = match &self.bins {
            Bins::Names(n) => n.clone(),
            Bins::Deciles { edges, .. } => (0..=edges.len()).map(|i| format!("bin{i}")).collect(),
        };
        Estimate::Distribution {
            probs: names.into_iter().zip(counts.iter().map(|c| *c as f64 / total)).collect(),
        }
    }
}

fn name_bin(names: &mut Vec<String>, c: &str, ready: bool) -> Result<usize, DetectorError> {
    if let Some(i) = names.iter().position(|n| n == c) {
        return Ok(i);
    }
    if ready {
        return Err(DetectorError::UnknownCategory(c.to_string()));
    }
    if names.len() >= MAX_BINS {
        return Err(DetectorError::TooManyCategories(MAX_BINS));
    }
    names.push(c.to_string());
    Ok(names.len() - 1)
}

impl Detector for BinnedWindow {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let b = self.bin(obs)?;
        let i = self.n;
        self.n += 1;
        if !self.ready() {
            if let Bins::Names(names) = &self.bins {
                self.ref_counts.resize(names.len(), 0);
                self.ref_counts[b] += 1;
            }
            self.ref_n += 1;
            if self.ready() {
                self.finish_reference();
            }
            return Ok(None);
        }
        self.window.push_back(b as u16);
        self.win_counts[b] += 1;
        if self.window.len() > self.cfg.window {
            if let Some(old) = self.window.pop_front() {
                self.win_counts[old as usize] -= 1;
            }
        }
        if self.window.len() < self.cfg.window || !self.n.is_multiple_of(self.cfg.stride as u64) {
            return Ok(None);
        }
        self.last = self.statistic();
        if self.last <= self.threshold {
            return Ok(None);
        }
        let m = self.window.len();
        let mut params = self.cfg.params();
        params.insert("bins".into(), self.ref_counts.len() as f64);
        if self.test == BinnedTest::Chi2 {
            params.insert("p_value".into(), chi2_sf(self.ref_counts.len() as f64 - 1.0, self.last));
        }
        Ok(Some(Box::new(Alarm {
            detector: match self.test {
                BinnedTest::Chi2 => "chi2",
                BinnedTest::Psi => "psi",
            }
            .into(),
            params,
            statistic: self.last,
            threshold: self.threshold,
            baseline: self.estimate(&self.ref_counts, self.ref_n as f64),
            current: self.estimate(&self.win_counts, m as f64),
            n_reference: self.ref_n as u64,
            n_current: m as u64,
            change_point: i + 1 - m as u64,
            index: i,
            false_alarm_rate: Some(self.cfg.false_alarm_rate),
            direction: "shift".into(),
        })))
    }

    fn view(&self) -> View {
        View { statistic: self.last, threshold: self.threshold, n: self.n, ready: self.ready() }
    }

    fn reset(&mut self) {
        let real = matches!(self.bins, Bins::Deciles { .. });
        *self = BinnedWindow::new(self.cfg.clone(), self.test, real).expect("config was validated");
    }

    fn name(&self) -> &'static str {
        match self.test {
            BinnedTest::Chi2 => "chi2",
            BinnedTest::Psi => "psi",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WindowConfig {
        WindowConfig { reference: 10, window: 10, stride: 10, false_alarm_rate: 1e-3, threshold: None }
    }

    #[test]
    fn ks_known_answer_disjoint_samples() {
        // Reference 0..10, window 100..110: D = 1 exactly.
        let mut ks = WindowedKs::new(small()).unwrap();
        let mut alarm = None;
        for i in 0..20 {
            let x = if i < 10 { i as f64 } else { 100.0 + i as f64 };
            alarm = ks.update(Observation::Real(x)).unwrap().or(alarm);
        }
        let a = alarm.expect("disjoint samples must alarm");
        assert_eq!(a.statistic, 1.0);
    }

    #[test]
    fn chi2_known_answer() {
        // Reference: a x5, b x5. Window: a x10. Table [[5,5],[10,0]]: X² = 6.667.
        let mut t = BinnedWindow::new(small(), BinnedTest::Chi2, false).unwrap();
        for i in 0..10 {
            t.update(Observation::Category(if i % 2 == 0 { "a" } else { "b" })).unwrap();
        }
        let mut last = None;
        for _ in 0..10 {
            last = t.update(Observation::Category("a")).unwrap();
        }
        assert!((t.view().statistic - 20.0 / 3.0).abs() < 1e-9, "{}", t.view().statistic);
        // The 1e-2 level chi2(1) threshold is 6.635 < 6.667.
        assert!(last.is_some());
    }

    #[test]
    fn psi_known_answer() {
        // Reference a:b = 5:5, window 10:0, smoothed with 0.5: pr = 0.5, pc = (10.5/11, 0.5/11).
        let mut t =
            BinnedWindow::new(WindowConfig { threshold: Some(0.25), ..small() }, BinnedTest::Psi, false)
                .unwrap();
        for i in 0..10 {
            t.update(Observation::Category(if i % 2 == 0 { "a" } else { "b" })).unwrap();
        }
        for _ in 0..10 {
            t.update(Observation::Category("a")).unwrap();
        }
        let (pa, pb) = (10.5f64 / 11.0, 0.5f64 / 11.0);
        let want = (pa - 0.5) * (pa / 0.5).ln() + (pb - 0.5) * (pb / 0.5).ln();
        assert!((t.view().statistic - want).abs() < 1e-12);
    }

    #[test]
    fn unknown_category_after_reference_is_rejected() {
        let mut t = BinnedWindow::new(small(), BinnedTest::Chi2, false).unwrap();
        for _ in 0..10 {
            t.update(Observation::Category("a")).unwrap();
        }
        assert_eq!(t.update(Observation::Category("zzz")), Err(DetectorError::UnknownCategory("zzz".into())));
    }
}
