//! Mixture Shiryaev–Roberts statistic over a bank of likelihood-ratio members.
//!
//! Each member `j` is a simple alternative with per-event likelihood ratio `L_j(x)` against
//! the baseline. Its Shiryaev–Roberts statistic is `R_j <- (1 + R_j) L_j(x)`, the sum over
//! every possible change point `k` of the likelihood ratio of the data since `k`. The
//! detector alarms when `Λ = Σ_j w_j R_j ≥ A`.
//!
//! Why this statistic: under the baseline, `E[L_j] = 1`, so `R_j - n` is a martingale for every
//! member and so is `Λ - n` whenever `Σ w_j = 1`. Optional stopping then gives
//! `ARL0 = E[Λ_T] ≥ A` for *any* bank and weights: the threshold `A = 1/α` guarantees at most
//! `α` false alarms per event without simulation or tuning (Pollak 1987; Tartakovsky, Nikiforov
//! & Basseville 2014, ch. 8). That is the `bound` calibration; the default lowers `A` by the
//! overshoot the bound leaves unspent (see `overshoot` and `auto::build_bank`).
//! Shiryaev–Roberts is also exactly optimal for the stationary average delay, i.e. the delay
//! after a long in-control run.
//!
//! Alongside `R_j` each member keeps `D_j = Σ_k (n - k) LR(k..n)`, so `D_j / R_j` is the
//! posterior mean of the time since the change (the change-point estimate), and `C_j`, the
//! same posterior mean of an auxiliary sum (e.g. the number of ones since the change).

use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

/// The largest bank any detector in this crate builds.
pub(crate) const MAX_MEMBERS: usize = 256;

/// Per-member state and the mixture weights.
///
/// Only the statistics are stored (`r`, `d`, `c`, `Λ`, and `c` only when not all zero): the
/// ids and weights are a function of the configuration and the baseline, and the detector
/// puts them back with [`MixtureSr::install`] before its next step. Equality compares the
/// stored part, so a decoded bank equals the one it was encoded from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "MixtureRecord")]
pub(crate) struct MixtureSr {
    /// Stable member identifiers, so that a rebuilt bank keeps the evidence of old members.
    /// Shared (like the weights) by the keys whose banks are the same, as real detectors'
    /// banks at one reference size are.
    #[serde(skip_serializing)]
    pub ids: Arc<[u32]>,
    /// Mixture weights (see `auto::build_bank`).
    #[serde(skip_serializing)]
    pub w: Arc<[f64]>,
    r: Vec<f64>,
    d: Vec<f64>,
    #[serde(skip_serializing_if = "all_zero")]
    c: Vec<f64>,
    /// The last value of Λ.
    #[serde(rename = "l")]
    pub lambda: f64,
}

fn all_zero(v: &[f64]) -> bool {
    v.iter().all(|x| *x == 0.0)
}

impl PartialEq for MixtureSr {
    fn eq(&self, o: &Self) -> bool {
        (&self.r, &self.d, &self.c, self.lambda.to_bits()) == (&o.r, &o.d, &o.c, o.lambda.to_bits())
    }
}

/// A stored bank, as written now or by format version 1 (which also kept ids and weights).
#[derive(Deserialize)]
struct MixtureRecord {
    #[serde(default)]
    ids: Vec<u32>,
    #[serde(default)]
    w: Vec<f64>,
    r: Vec<f64>,
    d: Vec<f64>,
    #[serde(default)]
    c: Vec<f64>,
    #[serde(alias = "lambda")]
    l: f64,
}

impl From<MixtureRecord> for MixtureSr {
    fn from(m: MixtureRecord) -> Self {
        let k = m.r.len();
        let fit = |v: Vec<f64>| if v.len() == k { v } else { vec![0.0; k] };
        let (d, c) = (fit(m.d), fit(m.c));
        // A version-2 record has no ids or weights: one shared empty value each, so decoding
        // allocates none per key.
        static NO_IDS: LazyLock<Arc<[u32]>> = LazyLock::new(|| Arc::from([]));
        static NO_W: LazyLock<Arc<[f64]>> = LazyLock::new(|| Arc::from([]));
        let ids = if m.ids.is_empty() { Arc::clone(&NO_IDS) } else { m.ids.into() };
        let w = if m.w.is_empty() { Arc::clone(&NO_W) } else { m.w.into() };
        MixtureSr { ids, w, r: m.r, d, c, lambda: m.l }
    }
}

/// What the bank says at an alarm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Winner {
    /// Index (into the bank) of the member carrying the largest share of Λ.
    pub member: usize,
    /// Posterior mean number of events since the change (0 = the current event).
    pub lag: f64,
    /// Posterior mean of the auxiliary sum over the post-change events.
    pub aux_sum: f64,
}

impl MixtureSr {
    /// A bank with the given member ids and weights, all statistics at zero.
    pub fn new(ids: impl Into<Arc<[u32]>>, w: impl Into<Arc<[f64]>>) -> Self {
        let (ids, w) = (ids.into(), w.into());
        let k = ids.len();
        debug_assert_eq!(k, w.len());
        debug_assert!(k <= MAX_MEMBERS);
        MixtureSr { ids, w, r: vec![0.0; k], d: vec![0.0; k], c: vec![0.0; k], lambda: 0.0 }
    }

    /// A decoded bank (statistics only) with the ids and weights of `fresh`, the same bank
    /// derived again from the baseline; `fresh` itself, statistics at zero, when its number
    /// of members differs (which a matching configuration fingerprint rules out: relearning
    /// is safer than pairing statistics with other members).
    pub fn restored(mut self, fresh: &MixtureSr) -> MixtureSr {
        if fresh.ids.len() != self.r.len() {
            return fresh.clone();
        }
        self.ids.clone_from(&fresh.ids);
        self.w.clone_from(&fresh.w);
        self
    }

    /// Whether the ids and weights are in place (a bank decoded from format version 2 has
    /// only its statistics until [`MixtureSr::restored`]).
    pub fn is_installed(&self) -> bool {
        self.ids.len() == self.r.len() && self.w.len() == self.r.len()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.r.len()
    }

    /// Carries the statistics of members with matching ids over from `old`.
    pub fn inherit(&mut self, old: &MixtureSr) {
        for (j, id) in self.ids.iter().enumerate() {
            if let Some(i) = old.ids.iter().position(|o| o == id) {
                self.r[j] = old.r[i];
                self.d[j] = old.d[i];
                self.c[j] = old.c[i];
            }
        }
        self.lambda = self.r.iter().zip(self.w.iter()).map(|(r, w)| r * w).sum();
    }

    /// Zeroes every statistic (the baseline, held by the caller, is untouched).
    pub fn restart(&mut self) {
        self.r.iter_mut().for_each(|v| *v = 0.0);
        self.d.iter_mut().for_each(|v| *v = 0.0);
        self.c.iter_mut().for_each(|v| *v = 0.0);
        self.lambda = 0.0;
    }

    /// One step with this event's likelihood ratios `lr[j]` and auxiliary value `aux`.
    /// Returns Λ.
    #[inline]
    pub fn step(&mut self, lr: &[f64], aux: f64) -> f64 {
        let lr = &lr[..self.r.len()];
        self.step_by(|j| lr[j], aux)
    }

    /// [`MixtureSr::step`] with member `j`'s likelihood ratio computed by `lr(j)`, in member
    /// order: for ratios that are computed per event, so that they need no buffer (a
    /// buffer sized for the largest bank was zeroed on every event).
    #[inline]
    pub fn step_by(&mut self, mut lr: impl FnMut(usize) -> f64, aux: f64) -> f64 {
        let k = self.r.len();
        let (w, d, c) = (&self.w[..k], &mut self.d[..k], &mut self.c[..k]);
        let mut lambda = 0.0;
        for (j, r) in self.r.iter_mut().enumerate() {
            let l = lr(j);
            let prev = *r;
            d[j] = (d[j] + prev) * l;
            c[j] = (c[j] + (prev + 1.0) * aux) * l;
            let next = (1.0 + prev) * l;
            *r = next;
            lambda += w[j] * next;
        }
        self.lambda = lambda;
        lambda
    }

    /// The member with the largest weighted statistic, with its change-point estimate.
    pub fn winner(&self) -> Winner {
        let mut best = 0;
        let mut best_v = f64::MIN;
        for j in 0..self.r.len() {
            let v = self.w[j] * self.r[j];
            if v > best_v {
                best_v = v;
                best = j;
            }
        }
        let r = self.r[best].max(f64::MIN_POSITIVE);
        Winner { member: best, lag: self.d[best] / r, aux_sum: self.c[best] / r }
    }
}

/// The grid of per-event information levels `κ` (in nats) that banks are built on, largest
/// first: `κ_max, κ_max/ratio, ...` down to `κ_min`.
pub(crate) fn kappa_grid(kappa_min: f64, kappa_max: f64, ratio: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut k = kappa_max;
    while k >= kappa_min * (1.0 - 1e-9) && out.len() < 64 {
        out.push(k);
        k /= ratio;
    }
    out
}

/// False-alarm inflation of a member whose baseline was estimated from `n` events.
///
/// With an estimated baseline the member's log-likelihood ratio has a drift error of order
/// `1/sqrt(n)`. To first order that moves the exponent `θ*` of its false-alarm rate
/// `A^{-θ*}` by a Gaussian amount, and averaging `A^{-θ*}` over it multiplies the rate by
/// `exp(ln(A)² / (n κ))`, where `κ = Var(llr)/2` is the member's information per event. The
/// same expression holds for the bernoulli, categorical (tilt) and normal-score members
/// (for normal scores the error of the mean score under an estimated CDF has variance exactly
/// `1/n`, by Hoeffding's covariance identity).
pub(crate) fn inflation(log_a: f64, n: f64, kappa: f64) -> f64 {
    if n <= 0.0 || kappa <= 0.0 {
        return f64::INFINITY;
    }
    (log_a * log_a / (n * kappa)).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_member_matches_hand_recursion() {
        let mut m = MixtureSr::new(vec![0], vec![1.0]);
        // R1 = (1+0)*2 = 2; R2 = (1+2)*0.5 = 1.5; R3 = (1+1.5)*4 = 10
        assert_eq!(m.step(&[2.0], 0.0), 2.0);
        assert_eq!(m.step(&[0.5], 0.0), 1.5);
        assert_eq!(m.step(&[4.0], 1.0), 10.0);
        // D: D1 = (0+0)*2 = 0; D2 = (0+2)*0.5 = 1; D3 = (1+1.5)*4 = 10 -> lag = 1.0
        // C: C1 = 0; C2 = 0; C3 = (0 + 2.5*1)*4 = 10 -> aux = 1.0
        let w = m.winner();
        assert_eq!(w.member, 0);
        assert!((w.lag - 1.0).abs() < 1e-12);
        assert!((w.aux_sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn grid_is_geometric_and_bounded() {
        let g = kappa_grid(1.0 / 16.0, 0.5, 2.0);
        assert_eq!(g, vec![0.5, 0.25, 0.125, 0.0625]);
    }
}
