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
use std::ops::Range;
use std::sync::{Arc, LazyLock};

/// Per-member state and the mixture weights.
///
/// Only the statistics are stored (`r`, `d`, `c`, `Λ`, and `c` only when not all zero): the
/// ids and weights are a function of the configuration and the baseline, and the detector
/// puts them back with [`MixtureSr::restored`] before its next step. Equality compares the
/// stored part, so a decoded bank equals the one it was encoded from.
///
/// `AUX` says whether the bank keeps `C`. A detector that never steps an auxiliary value
/// (the categorical one) has `C` at zero throughout, stored as absent; without it, it holds
/// 8 bytes less per member (480 B for a bank of 60).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "MixtureRecord")]
pub(crate) struct MixtureSr<const AUX: bool = true> {
    /// Each member's id and weight, shared by the keys whose banks are the same (as real
    /// detectors' banks at one reference size are): one pointer inline, where an id slice
    /// and a weight slice took two.
    pub members: Arc<[Member]>,
    /// The members' `R`, then their `D`, then (with `AUX`) their `C`: one allocation per key and 16
    /// bytes inline, where three vectors took three and 72 (every clause state pays for the
    /// largest detector inline).
    s: Box<[f64]>,
    /// The last value of Λ.
    pub lambda: f64,
}

/// A bank member: its stable id, so that a rebuilt bank keeps the evidence of old members,
/// and its mixture weight (see `auto::build_bank`).
///
/// Packed to 12 bytes, as the id and weight slices were: a categorical bank of 60 members is
/// each key's own, and padding took 240 bytes of it. Fields are read by value.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, packed(4))]
pub(crate) struct Member {
    pub id: u32,
    pub w: f64,
}

/// Members from their ids and weights, in order.
pub(crate) fn members(ids: impl IntoIterator<Item = u32>, w: &[f64]) -> Arc<[Member]> {
    ids.into_iter().zip(w).map(|(id, &w)| Member { id, w }).collect()
}

/// Written as format version 2 has it: `r`, `d`, `c` (left out when all zero) and `l`.
impl<const AUX: bool> Serialize for MixtureSr<AUX> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (r, d, c) = self.rdc();
        let c_zero = c.iter().all(|x| *x == 0.0);
        let mut st = s.serialize_struct("MixtureSr", 3 + usize::from(!c_zero))?;
        st.serialize_field("r", r)?;
        st.serialize_field("d", d)?;
        if c_zero {
            st.skip_field("c")?;
        } else {
            st.serialize_field("c", c)?;
        }
        st.serialize_field("l", &self.lambda)?;
        st.end()
    }
}

impl<const AUX: bool> PartialEq for MixtureSr<AUX> {
    fn eq(&self, o: &Self) -> bool {
        (self.rdc(), self.lambda.to_bits()) == (o.rdc(), o.lambda.to_bits())
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

impl<const AUX: bool> From<MixtureRecord> for MixtureSr<AUX> {
    fn from(m: MixtureRecord) -> Self {
        let k = m.r.len();
        let mut s = Vec::with_capacity(Self::WIDTH * k);
        s.extend_from_slice(&m.r);
        // Without `AUX` a stored `c` is not read: such a bank never steps one, so it is zero.
        for v in [m.d, m.c].into_iter().take(Self::WIDTH - 1) {
            if v.len() == k {
                s.extend_from_slice(&v);
            } else {
                s.resize(s.len() + k, 0.0);
            }
        }
        // A version-2 record has no ids or weights: one shared empty value, so decoding
        // allocates none per key. Version 1's are kept when whole.
        static NONE: LazyLock<Arc<[Member]>> = LazyLock::new(|| Arc::from([]));
        let members = if m.ids.is_empty() || m.ids.len() != m.w.len() {
            Arc::clone(&NONE)
        } else {
            members(m.ids.iter().copied(), &m.w)
        };
        MixtureSr { members, s: s.into_boxed_slice(), lambda: m.l }
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

impl<const AUX: bool> MixtureSr<AUX> {
    /// Statistics per member: `R`, `D` and, with `AUX`, `C`.
    const WIDTH: usize = if AUX { 3 } else { 2 };

    /// A bank with the given members, all statistics at zero.
    pub fn new(members: Arc<[Member]>) -> Self {
        let k = members.len();
        MixtureSr { members, s: vec![0.0; Self::WIDTH * k].into_boxed_slice(), lambda: 0.0 }
    }

    /// The statistics `R`, `D` and `C` (empty without `AUX`), one slice each.
    fn rdc(&self) -> (&[f64], &[f64], &[f64]) {
        let k = self.len();
        let (r, dc) = self.s.split_at(k);
        let (d, c) = dc.split_at(k);
        (r, d, c)
    }

    /// The same, to change.
    fn rdc_mut(&mut self) -> (&mut [f64], &mut [f64], &mut [f64]) {
        let k = self.len();
        let (r, dc) = self.s.split_at_mut(k);
        let (d, c) = dc.split_at_mut(k);
        (r, d, c)
    }

    /// A decoded bank (statistics only) with `members`, those of the same bank derived again
    /// from the baseline; a bank of `members` with statistics at zero when their number
    /// differs (which a matching configuration fingerprint rules out: relearning is safer
    /// than pairing statistics with other members).
    pub fn restored(mut self, members: &Arc<[Member]>) -> Self {
        if members.len() != self.len() {
            return MixtureSr::new(Arc::clone(members));
        }
        self.members.clone_from(members);
        self
    }

    /// Whether the ids and weights are in place (a bank decoded from format version 2 has
    /// only its statistics until [`MixtureSr::restored`]).
    pub fn is_installed(&self) -> bool {
        self.members.len() == self.len()
    }

    /// Member `j`'s weight.
    pub fn weight(&self, j: usize) -> f64 {
        self.members[j].w
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.s.len() / Self::WIDTH
    }

    /// Carries the statistics of members with matching ids over from `old`.
    pub fn inherit(&mut self, old: &Self) {
        let members = Arc::clone(&self.members);
        let (or, od, oc) = old.rdc();
        let (r, d, c) = self.rdc_mut();
        for (j, m) in members.iter().enumerate() {
            if let Some(i) = old.members.iter().position(|o| o.id == m.id) {
                r[j] = or[i];
                d[j] = od[i];
                if AUX {
                    c[j] = oc[i];
                }
            }
        }
        self.lambda = self.rdc().0.iter().zip(self.members.iter()).map(|(r, m)| r * m.w).sum();
    }

    /// Zeroes every statistic (the baseline, held by the caller, is untouched).
    pub fn restart(&mut self) {
        self.s.iter_mut().for_each(|v| *v = 0.0);
        self.lambda = 0.0;
    }

    /// One step with this event's likelihood ratios `lr[j]` and auxiliary value `aux`.
    /// Returns Λ.
    #[inline]
    pub fn step(&mut self, lr: &[f64], aux: f64) -> f64 {
        let lr = &lr[..self.len()];
        self.step_by(|j| lr[j], aux)
    }

    /// [`MixtureSr::step`] with member `j`'s likelihood ratio computed by `lr(j)`, in member
    /// order: for ratios that are computed per event, so that they need no buffer (a
    /// buffer sized for the largest bank was zeroed on every event).
    #[inline]
    pub fn step_by(&mut self, mut lr: impl FnMut(usize) -> f64, aux: f64) -> f64 {
        let k = self.len();
        let members = &self.members[..k];
        let (r, dc) = self.s.split_at_mut(k);
        let (d, c) = dc.split_at_mut(k);
        let mut lambda = 0.0;
        if !AUX {
            debug_assert!(aux == 0.0, "a bank without C steps no auxiliary value");
            for (j, ((r, d), m)) in r.iter_mut().zip(d).zip(members).enumerate() {
                let next = advance(r, d, lr(j));
                lambda += m.w * next;
            }
        } else {
            for (j, (((r, d), c), m)) in r.iter_mut().zip(d).zip(c).zip(members).enumerate() {
                let (l, prev) = (lr(j), *r);
                let next = advance(r, d, l);
                *c = (*c + (prev + 1.0) * aux) * l;
                lambda += m.w * next;
            }
        }
        self.lambda = lambda;
        lambda
    }

    /// The member with the largest weighted statistic, with its change-point estimate.
    pub fn winner(&self) -> Winner {
        let (rs, d, c) = self.rdc();
        let mut best = 0;
        let mut best_v = f64::MIN;
        for (j, r) in rs.iter().enumerate() {
            let v = self.members[j].w * r;
            if v > best_v {
                best_v = v;
                best = j;
            }
        }
        let r = rs[best].max(f64::MIN_POSITIVE);
        let aux_sum = if AUX { c[best] / r } else { 0.0 };
        Winner { member: best, lag: d[best] / r, aux_sum }
    }
}

impl MixtureSr<false> {
    /// [`MixtureSr::step`] with `lr`'s ratios but for the members in `patched`, which take
    /// `patch`'s (both hold one per member): a categorical key's members that move the
    /// event's category are one run, with ratios of their own. The sum runs in member
    /// order, as `step`'s does, so Λ is the same to the bit.
    pub fn step_patched(&mut self, lr: &[f64], patch: &[f64], patched: Range<usize>) -> f64 {
        let (k, a, b) = (self.len(), patched.start, patched.end);
        let members = &self.members[..k];
        let (r, d) = self.s.split_at_mut(k);
        let mut lambda = 0.0;
        for (lo, hi, lr) in [(0, a, lr), (a, b, patch), (b, k, lr)] {
            let run = r[lo..hi].iter_mut().zip(&mut d[lo..hi]).zip(&members[lo..hi]).zip(&lr[lo..hi]);
            for (((r, d), m), &l) in run {
                let next = advance(r, d, l);
                lambda += m.w * next;
            }
        }
        self.lambda = lambda;
        lambda
    }
}

/// One member's `R` and `D` after an event with likelihood ratio `l`; returns the new `R`.
#[inline(always)]
fn advance(r: &mut f64, d: &mut f64, l: f64) -> f64 {
    let prev = *r;
    *d = (*d + prev) * l;
    let next = (1.0 + prev) * l;
    *r = next;
    next
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
        let mut m = MixtureSr::<true>::new(members([0], &[1.0]));
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

    /// The layout before the statistics shared one allocation, as format version 2 wrote it.
    #[derive(Serialize)]
    struct ThreeVectors {
        r: Vec<f64>,
        d: Vec<f64>,
        #[serde(skip_serializing_if = "all_zero")]
        c: Vec<f64>,
        l: f64,
    }

    fn all_zero(v: &[f64]) -> bool {
        v.iter().all(|x| *x == 0.0)
    }

    #[test]
    fn stored_bytes_are_those_of_three_vectors_and_read_back_equal() {
        let mut m = MixtureSr::<true>::new(members([3, 5, 9], &[0.5, 0.25, 0.25]));
        for (lr, aux) in [([1.5, 0.5, 2.0], 0.0), ([0.8, 1.25, 0.9], 0.0)] {
            m.step(&lr, aux);
        }
        for aux in [0.0, 1.0] {
            if aux == 1.0 {
                m.step(&[1.1, 0.7, 3.0], aux);
            }
            let (r, d, c) = m.rdc();
            let old = ThreeVectors { r: r.to_vec(), d: d.to_vec(), c: c.to_vec(), l: m.lambda };
            let bytes = rmp_serde::to_vec_named(&m).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec_named(&old).unwrap(), "c all zero: {}", aux == 0.0);
            let back: MixtureSr = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.rdc().2, c, "an absent `c` reads as zeros");
            assert!(!back.is_installed());
            assert_eq!(back.restored(&members([3, 5, 9], &[0.5, 0.25, 0.25])).winner(), m.winner());
        }
        assert!(m.rdc().2.iter().any(|c| *c != 0.0), "the second round stores `c`");
    }

    #[test]
    fn a_bank_without_c_steps_stores_and_reads_back_as_one_with_c_at_zero() {
        let ms = members([3, 5, 9], &[0.5, 0.25, 0.25]);
        let mut with_c = MixtureSr::<true>::new(Arc::clone(&ms));
        let mut without = MixtureSr::<false>::new(Arc::clone(&ms));
        assert_eq!(without.s.len(), 2 * 3, "R and D only");
        for lr in [[1.5, 0.5, 2.0], [0.8, 1.25, 0.9], [1.1, 0.7, 3.0]] {
            assert_eq!(with_c.step(&lr, 0.0).to_bits(), without.step(&lr, 0.0).to_bits());
        }
        assert_eq!(with_c.rdc().0, without.rdc().0);
        assert_eq!(with_c.rdc().1, without.rdc().1);
        assert_eq!(without.winner(), with_c.winner());
        let bytes = rmp_serde::to_vec_named(&without).unwrap();
        assert_eq!(bytes, rmp_serde::to_vec_named(&with_c).unwrap());
        let back: MixtureSr<false> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, without);
        assert_eq!(back.restored(&ms).winner(), without.winner());
        // A stored `c` (never written for such a bank) is not read into it.
        with_c.step(&[1.1, 0.7, 3.0], 1.0);
        let back: MixtureSr<false> =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&with_c).unwrap()).unwrap();
        assert_eq!((back.len(), back.s.len()), (3, 6));
        assert_eq!(back.rdc().1, with_c.rdc().1);
        let mut reinherit = MixtureSr::<false>::new(members([5, 7], &[0.5, 0.5]));
        reinherit.inherit(&back.restored(&ms));
        assert_eq!(reinherit.rdc().0, [with_c.rdc().0[1], 0.0], "member 5 carries over, 7 is new");
    }

    #[test]
    fn a_patched_step_is_a_step_with_the_patch_spliced_in() {
        let ms = members([1, 2, 3, 4, 5], &[0.3, 0.2, 0.2, 0.2, 0.1]);
        let lr = [1.2, 0.9, 0.8, 1.1, 0.95];
        let patch = [3.0, 2.5, 0.4, 0.3, 7.0];
        for patched in [0..0, 0..2, 1..4, 3..5, 0..5, 4..4] {
            let mut spliced = lr;
            spliced[patched.clone()].copy_from_slice(&patch[patched.clone()]);
            let (mut a, mut b) =
                (MixtureSr::<false>::new(Arc::clone(&ms)), MixtureSr::<false>::new(Arc::clone(&ms)));
            for _ in 0..3 {
                assert_eq!(
                    a.step_patched(&lr, &patch, patched.clone()).to_bits(),
                    b.step(&spliced, 0.0).to_bits()
                );
            }
            assert_eq!(a, b, "{patched:?}");
        }
    }

    #[test]
    fn grid_is_geometric_and_bounded() {
        let g = kappa_grid(1.0 / 16.0, 0.5, 2.0);
        assert_eq!(g, vec![0.5, 0.25, 0.125, 0.0625]);
    }
}
