//! `auto-bernoulli`: mixture Shiryaev–Roberts on a learned rate, for 0/1 metrics.

use crate::alarm::{Alarm, Estimate};
use crate::auto::{build_bank, log_stat, member_sizes, AutoConfig, Candidate, MAX_JUMP};
use crate::detector::{as_bool, Detector, MetricKind, Observation, View};
use crate::mixture::MixtureSr;
use crate::overshoot::zeta_two_point;
use crate::DetectorError;
use serde::{Deserialize, Serialize};

/// Detects a change in the probability of a 1 without knowing the rate before or after.
///
/// The baseline rate `p0` is learned from the first events (see [`AutoConfig`]). The bank's
/// alternatives are log-odds shifts `δ` of `p0` on a geometric grid of information levels
/// `κ = δ² p0 (1 - p0) / 2`, in the configured directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoBernoulli {
    cfg: AutoConfig,
    n: u64,
    ref_n: u64,
    ref_ones: u64,
    built_at: u64,
    p0: f64,
    /// Likelihood ratios, `lr[x * k + j]` for outcome `x` and member `j`.
    lr: Vec<f64>,
    p1: Vec<f64>,
    kappa: Vec<f64>,
    sr: Option<MixtureSr>,
    threshold: f64,
}

impl AutoBernoulli {
    /// A detector with the given configuration.
    pub fn new(cfg: AutoConfig) -> Result<Self, DetectorError> {
        cfg.validate_for(MetricKind::Bernoulli)?;
        let threshold = cfg.threshold(MetricKind::Bernoulli);
        Ok(AutoBernoulli {
            cfg,
            n: 0,
            ref_n: 0,
            ref_ones: 0,
            built_at: 0,
            p0: 0.0,
            lr: Vec::new(),
            p1: Vec::new(),
            kappa: Vec::new(),
            sr: None,
            threshold,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AutoConfig {
        &self.cfg
    }

    /// The learned baseline rate, once monitoring has started.
    pub fn baseline(&self) -> Option<f64> {
        self.sr.as_ref().map(|_| self.p0)
    }

    fn rebuild(&mut self) {
        let n = self.ref_n;
        // Jeffreys estimate: never exactly 0 or 1, so every likelihood ratio is finite.
        let p0 = (self.ref_ones as f64 + 0.5) / (n as f64 + 1.0);
        let pq = p0 * (1.0 - p0);
        let logit0 = (p0 / (1.0 - p0)).ln();
        let mut cands = Vec::new();
        let mut alts = Vec::new();
        for (s, up) in [(0u32, true), (1u32, false)] {
            if !self.cfg.direction.allows(up) {
                continue;
            }
            for (m, delta, at_min_shift) in log_odds_shifts(&self.cfg, p0, up) {
                let l = if up { logit0 + delta } else { logit0 - delta };
                let p1 = 1.0 / (1.0 + (-l).exp());
                let llr = [(p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln()];
                if llr[0].max(llr[1]) > MAX_JUMP {
                    continue;
                }
                cands.push(Candidate { id: m * 2 + s, kappa: delta * delta * pq / 2.0, at_min_shift });
                alts.push(p1);
            }
        }
        let (keep, sr, threshold) = build_bank(
            &self.cfg,
            MetricKind::Bernoulli,
            &cands,
            |i| {
                let p1 = alts[i];
                zeta_two_point((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln(), p0, p1)
            },
            n,
            self.sr.as_ref(),
        );
        let k = keep.len();
        let mut lr = vec![0.0; 2 * k];
        self.p1.clear();
        self.kappa.clear();
        for (j, &i) in keep.iter().enumerate() {
            let p1 = alts[i];
            lr[j] = (1.0 - p1) / (1.0 - p0);
            lr[k + j] = p1 / p0;
            self.p1.push(p1);
            self.kappa.push(cands[i].kappa);
        }
        self.p0 = p0;
        self.lr = lr;
        self.sr = Some(sr);
        self.built_at = n;
        self.threshold = threshold;
    }

    /// Feeds one 0/1 outcome. This is the hot path: a table lookup and two fused
    /// multiply-adds per member.
    #[inline]
    pub fn update_bool(&mut self, x: bool) -> Option<Alarm> {
        let i = self.n;
        self.n += 1;
        if self.ref_n < self.cfg.reference_max {
            self.ref_n += 1;
            self.ref_ones += x as u64;
            if self.ref_n >= self.cfg.next_stage(self.built_at) {
                self.rebuild();
            }
        }
        let sr = self.sr.as_mut()?;
        let k = sr.len();
        let xi = x as usize;
        let lambda = sr.step(&self.lr[xi * k..xi * k + k], x as u8 as f64);
        if lambda >= self.threshold {
            Some(self.alarm(i))
        } else {
            None
        }
    }

    fn alarm(&self, i: u64) -> Alarm {
        let sr = self.sr.as_ref().expect("alarm only with a bank");
        let win = sr.winner();
        let lag = win.lag.round().max(0.0).min(i as f64) as u64;
        let n_current = lag + 1;
        let p_now = (win.aux_sum / (win.lag + 1.0)).clamp(0.0, 1.0);
        let p1 = self.p1[win.member];
        let mut params = self.cfg.params();
        params.insert("members".into(), sr.len() as f64);
        params.insert("winner_p1".into(), p1);
        params.insert("winner_kappa".into(), self.kappa[win.member]);
        params.insert("winner_weight".into(), sr.w[win.member]);
        Alarm {
            detector: self.name().to_string(),
            params,
            statistic: log_stat(sr.lambda),
            threshold: self.threshold.ln(),
            baseline: Estimate::Rate { p: self.p0 },
            current: Estimate::Rate { p: p_now },
            n_reference: self.ref_n,
            n_current,
            change_point: i - lag,
            index: i,
            false_alarm_rate: Some(self.cfg.false_alarm_rate),
            direction: if p1 > self.p0 { "increase" } else { "decrease" }.to_string(),
        }
    }
}

/// The log-odds shifts `(id, δ, at_min_shift)` of the bank in one direction: with
/// `min_shift`, the shift to `p0 ± min_shift` and then every doubling of its information up to
/// `kappa_max`; otherwise the information grid. Directions where `p0 ± min_shift` leaves
/// `(0, 1)` get no members.
fn log_odds_shifts(cfg: &AutoConfig, p0: f64, up: bool) -> Vec<(u32, f64, bool)> {
    let pq = p0 * (1.0 - p0);
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let min_size = match cfg.min_shift {
        None => None,
        Some(shift) => {
            let p1 = if up { p0 + shift } else { p0 - shift };
            if !(p1 > 0.0 && p1 < 1.0) {
                return Vec::new();
            }
            Some((logit(p1) - logit(p0)).abs())
        }
    };
    member_sizes(cfg, min_size, |k| (2.0 * k / pq).sqrt(), |d| d * d * pq / 2.0)
}

impl Detector for AutoBernoulli {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Alarm>, DetectorError> {
        Ok(self.update_bool(as_bool(obs, "auto-bernoulli")?))
    }

    fn view(&self) -> View {
        View {
            statistic: self.sr.as_ref().map_or(0.0, |s| log_stat(s.lambda)),
            threshold: self.threshold.ln(),
            n: self.n,
            ready: self.sr.is_some(),
        }
    }

    fn restart(&mut self) {
        if let Some(sr) = self.sr.as_mut() {
            sr.restart();
        }
    }

    fn reset(&mut self) {
        let cfg = self.cfg.clone();
        *self = AutoBernoulli::new(cfg).expect("config was validated");
    }

    fn name(&self) -> &'static str {
        "auto-bernoulli"
    }
}
