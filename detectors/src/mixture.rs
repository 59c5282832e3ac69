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
//!
//! `R` decides alarms and is held as `f64`, exactly as computed. `D` and `C` only describe an
//! alarm, so they are held as `f32`: a relative error of `2⁻²⁴` per step in an estimate whose
//! statistical spread is tens of events. They would overflow `f32` along with a very large
//! `R` (a member weighted `1/F` for a huge inflation `F` needs `R ≈ A·F`), so they are held
//! scaled by `2^-s(R)`, a power of two read off `R` (see [`scale`]): exact, 1 for any `R`
//! below `2³²`, and never stored.

use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::{Arc, LazyLock};

/// Per-member state and the mixture weights.
///
/// Only the statistics are stored (`r`, `e`, `x`, `Λ`, and `x` only when not all zero): the
/// ids and weights are a function of the configuration and the baseline, and the detector
/// puts them back with [`MixtureSr::restored`] before its next step. Equality compares the
/// stored part, so a decoded bank equals the one it was encoded from.
///
/// `AUX` says whether the bank keeps `C`. A detector that never steps an auxiliary value
/// (the categorical one) has `C` at zero throughout, stored as absent; without it, it holds
/// 4 bytes less per member (240 B for a bank of 60).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "MixtureRecord")]
pub(crate) struct MixtureSr<const AUX: bool = true> {
    /// Each member's id and weight, shared by the keys whose banks are the same (as real
    /// detectors' banks at one reference size are): one pointer inline, where an id slice
    /// and a weight slice took two.
    pub members: Arc<[Member]>,
    /// The members' `R`, then their scaled `D` and (with `AUX`) `C` as `f32`s, two to a slot
    /// (see [`MixtureSr::split`]): one allocation per key and 16 bytes inline, where three
    /// vectors took three and 72 (every clause state pays for the largest detector inline).
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

/// Written as format version 3 has it: `r`, then `e` and `x`, the scaled `D` and `C` as
/// `f32`s (`x` left out when all zero), and `l`.
impl<const AUX: bool> Serialize for MixtureSr<AUX> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (r, d, c) = self.rdc();
        let c_zero = c.iter().all(|x| *x == 0.0);
        let mut st = s.serialize_struct("MixtureSr", 3 + usize::from(!c_zero))?;
        st.serialize_field("r", r)?;
        st.serialize_field("e", d)?;
        if c_zero {
            st.skip_field("x")?;
        } else {
            st.serialize_field("x", c)?;
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

/// A stored bank, as written now (`e`, `x`), by format version 2 (`D` and `C` unscaled as
/// `f64`s: `d`, `c`) or by version 1 (which also kept ids and weights).
#[derive(Deserialize)]
struct MixtureRecord {
    #[serde(default)]
    ids: Vec<u32>,
    #[serde(default)]
    w: Vec<f64>,
    r: Vec<f64>,
    #[serde(default)]
    e: Vec<f32>,
    #[serde(default)]
    x: Vec<f32>,
    #[serde(default)]
    d: Vec<f64>,
    #[serde(default)]
    c: Vec<f64>,
    #[serde(alias = "lambda")]
    l: f64,
}

impl<const AUX: bool> From<MixtureRecord> for MixtureSr<AUX> {
    fn from(m: MixtureRecord) -> Self {
        let k = m.r.len();
        let mut s = Vec::with_capacity(Self::slots(k));
        s.extend_from_slice(&m.r);
        s.resize(Self::slots(k), 0.0);
        let mut bank = MixtureSr { members: Arc::clone(&NONE), s: s.into_boxed_slice(), lambda: m.l };
        let (r, d, c) = bank.rdc_mut();
        // Without `AUX` a stored `C` is not read: such a bank never steps one, so it is zero.
        let aux = if AUX { Some((c, m.x, m.c)) } else { None };
        for (to, now, v2) in [Some((d, m.e, m.d)), aux].into_iter().flatten() {
            if now.len() == k {
                to.copy_from_slice(&now);
            } else if v2.len() == k {
                // Rounded to nearest once, as the next step would have rounded it.
                to.iter_mut().zip(&v2).zip(r.iter()).for_each(|((to, v), r)| *to = narrow(v * scale(*r).0));
            }
        }
        // Version 1's ids and weights are kept when whole.
        if !m.ids.is_empty() && m.ids.len() == m.w.len() {
            bank.members = members(m.ids.iter().copied(), &m.w);
        }
        bank
    }
}

/// The members of a bank decoded from format version 2 on, which has no ids or weights: one
/// shared empty value, so decoding allocates none per key.
static NONE: LazyLock<Arc<[Member]>> = LazyLock::new(|| Arc::from([]));

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
    /// `f32` statistics per member besides `R`: `D` and, with `AUX`, `C`.
    const NARROW: usize = if AUX { 2 } else { 1 };

    /// Slots of 8 bytes for `k` members: `R`, then the `f32`s two to a slot.
    fn slots(k: usize) -> usize {
        k + (Self::NARROW * k).div_ceil(2)
    }

    /// A bank with the given members, all statistics at zero.
    pub fn new(members: Arc<[Member]>) -> Self {
        let k = members.len();
        MixtureSr { members, s: vec![0.0; Self::slots(k)].into_boxed_slice(), lambda: 0.0 }
    }

    /// The statistics `R`, scaled `D` and scaled `C` (empty without `AUX`), one slice each.
    fn rdc(&self) -> (&[f64], &[f32], &[f32]) {
        let k = self.len();
        let (r, narrow) = self.s.split_at(k);
        let (d, c) = bytemuck::cast_slice::<f64, f32>(narrow)[..Self::NARROW * k].split_at(k);
        (r, d, c)
    }

    /// The same, to change.
    fn rdc_mut(&mut self) -> (&mut [f64], &mut [f32], &mut [f32]) {
        Self::split(&mut self.s)
    }

    /// `s` as `R`, scaled `D` and scaled `C`, apart from the members (so that a step can read
    /// them while it changes the statistics).
    fn split(s: &mut [f64]) -> (&mut [f64], &mut [f32], &mut [f32]) {
        let k = Self::members_in(s.len());
        let (r, narrow) = s.split_at_mut(k);
        let (d, c) = bytemuck::cast_slice_mut::<f64, f32>(narrow)[..Self::NARROW * k].split_at_mut(k);
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
        Self::members_in(self.s.len())
    }

    /// [`MixtureSr::slots`] inverted: `k + ⌈NARROW·k / 2⌉` slots hold `k` members.
    fn members_in(slots: usize) -> usize {
        if AUX {
            slots / 2
        } else {
            (2 * slots) / 3
        }
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

    /// Zeroes every statistic (the baseline, held by the caller, is untouched; a zero `f64`
    /// slot is two zero `f32`s).
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
    pub fn step_by(&mut self, lr: impl FnMut(usize) -> f64, aux: f64) -> f64 {
        debug_assert!(AUX || aux == 0.0, "a bank without C steps no auxiliary value");
        // Almost always no `R` is past 2³², and the loop needs no scales.
        self.lambda =
            if self.any_scaled() { self.step_scaled(lr, aux) } else { self.step_with::<false>(lr, aux) };
        self.lambda
    }

    /// Whether any member's `D` and `C` are held scaled (its `R` is past 2³²).
    #[inline(always)]
    fn any_scaled(&self) -> bool {
        self.s[..self.len()].iter().fold(0.0, |top, r| larger(top, *r)) >= UNSCALED
    }

    /// The step of a bank with scaled members: out of line, as it is rare, so that the
    /// common loop stays small enough to be inlined with its ratios.
    #[cold]
    #[inline(never)]
    fn step_scaled(&mut self, lr: impl FnMut(usize) -> f64, aux: f64) -> f64 {
        self.step_with::<true>(lr, aux)
    }

    /// One step of every member, with their statistics' scales when `SCALED`; returns Λ.
    /// Without `SCALED` (no member scaled before), a member that passes 2³² in this step is
    /// scaled after the loop.
    #[inline(always)]
    fn step_with<const SCALED: bool>(&mut self, mut lr: impl FnMut(usize) -> f64, aux: f64) -> f64 {
        let (r, d, c) = Self::split(&mut self.s);
        let members = &self.members[..r.len()];
        let (mut lambda, mut top) = (0.0, 0.0);
        if !AUX {
            for (j, ((r, d), m)) in r.iter_mut().zip(d).zip(members).enumerate() {
                let next = advance::<SCALED>(r, d, lr(j)).r;
                lambda += m.w * next;
                top = larger(top, next);
            }
        } else {
            for (j, (((r, d), c), m)) in r.iter_mut().zip(d).zip(c).zip(members).enumerate() {
                let (l, prev) = (lr(j), *r);
                let step = advance::<SCALED>(r, d, l);
                *c = narrow((f64::from(*c) * step.up + (prev + 1.0) * aux) * l * step.down);
                lambda += m.w * step.r;
                top = larger(top, step.r);
            }
        }
        self.scale_crossed::<SCALED>(top);
        lambda
    }

    /// After an unscaled step whose largest new `R` is `top`, scales the `D` and `C` of the
    /// members whose `R` has just passed 2³². By a power of two, so exactly: the same bits as
    /// a step that scaled them before rounding.
    #[inline(always)]
    fn scale_crossed<const SCALED: bool>(&mut self, top: f64) {
        if !SCALED && top >= UNSCALED {
            self.scale_members_past_unscaled();
        }
    }

    /// [`MixtureSr::scale_crossed`]'s rare part.
    #[cold]
    fn scale_members_past_unscaled(&mut self) {
        let (r, d, c) = Self::split(&mut self.s);
        for (j, r) in r.iter().enumerate().filter(|(_, r)| **r >= UNSCALED) {
            let down = scale(*r).0;
            d[j] = narrow(f64::from(d[j]) * down);
            if AUX {
                c[j] = narrow(f64::from(c[j]) * down);
            }
        }
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
        // `D / R` and `C / R`, each scaled back by the power of two it was stored under.
        let r = rs[best].max(f64::MIN_POSITIVE);
        let up = scale(rs[best]).1 / r;
        let aux_sum = if AUX { f64::from(c[best]) * up } else { 0.0 };
        Winner { member: best, lag: f64::from(d[best]) * up, aux_sum }
    }
}

impl MixtureSr<false> {
    /// [`MixtureSr::step`] with `lr`'s ratios but for the members in `patched`, which take
    /// `patch`'s (both hold one per member): a categorical key's members that move the
    /// event's category are one run, with ratios of their own. The sum runs in member
    /// order, as `step`'s does, so Λ is the same to the bit.
    pub fn step_patched(&mut self, lr: &[f64], patch: &[f64], patched: Range<usize>) -> f64 {
        self.lambda = if self.any_scaled() {
            self.patched_with::<true>(lr, patch, patched)
        } else {
            self.patched_with::<false>(lr, patch, patched)
        };
        self.lambda
    }

    /// [`MixtureSr::step_patched`]'s loop, as [`MixtureSr::step_with`]'s.
    #[inline(always)]
    fn patched_with<const SCALED: bool>(&mut self, lr: &[f64], patch: &[f64], patched: Range<usize>) -> f64 {
        let (r, d, _) = Self::split(&mut self.s);
        let (k, a, b) = (r.len(), patched.start, patched.end);
        let members = &self.members[..k];
        let (mut lambda, mut top) = (0.0, 0.0);
        for (lo, hi, lr) in [(0, a, lr), (a, b, patch), (b, k, lr)] {
            let run = r[lo..hi].iter_mut().zip(&mut d[lo..hi]).zip(&members[lo..hi]).zip(&lr[lo..hi]);
            for (((r, d), m), &l) in run {
                let next = advance::<SCALED>(r, d, l).r;
                lambda += m.w * next;
                top = larger(top, next);
            }
        }
        self.scale_crossed::<SCALED>(top);
        lambda
    }
}

/// A member's step: its new `R`, the factor that unscaled the `f32` statistics before it
/// and the one that scales them after.
struct Step {
    r: f64,
    up: f64,
    down: f64,
}

/// One member's `R` and scaled `D` after an event with likelihood ratio `l`; without
/// `SCALED`, for a member whose `R` was below 2³² (`D` unscaled), leaving it unscaled.
#[inline(always)]
fn advance<const SCALED: bool>(r: &mut f64, d: &mut f32, l: f64) -> Step {
    let prev = *r;
    let next = (1.0 + prev) * l;
    let (up, down) = if SCALED { (scale(prev).1, scale(next).0) } else { (1.0, 1.0) };
    *d = narrow((f64::from(*d) * up + prev) * l * down);
    *r = next;
    Step { r: next, up, down }
}

/// Below this, `R`'s `f32` statistics are held unscaled.
const UNSCALED: f64 = (1u64 << 32) as f64;

/// The powers of two `(2^-s, 2^s)` that scale a member's `D` and `C` for `f32` and back,
/// with `s = max(0, log₂ R − 32)`: `D / R` and `C / R` are the evidence's mean age and the
/// mean auxiliary sum, so `D · 2^-s` stays within `2³³` times them whatever `R`. A function
/// of `R`, which is held exactly, so it is derived again rather than stored.
#[inline(always)]
fn scale(r: f64) -> (f64, f64) {
    if r < UNSCALED {
        return (1.0, 1.0);
    }
    // `R`'s binary exponent (32 to 1023 here, 1024 for an infinite one), less 32: 0 to 992.
    let s = ((r.to_bits() >> 52) & 0x7ff) as i64 - 1023 - 32;
    let pow2 = |e: i64| f64::from_bits(((1023 + e) as u64) << 52);
    (pow2(-s), pow2(s))
}

/// `x` rounded to the nearest `f32`, and to `f32::MAX` above it (where a sum of huge
/// auxiliary values could take it) so that the estimates stay numbers. A comparison rather
/// than `f64::min`, whose NaN rule costs three instructions in the loop (and statistics of
/// finite ratios are never NaN).
#[inline(always)]
fn narrow(x: f64) -> f32 {
    (if x < F32_MAX { x } else { F32_MAX }) as f32
}

/// The largest `f32`, as an `f64`.
const F32_MAX: f64 = f32::MAX as f64;

/// The larger of `a` and `b`, one instruction in a loop (`f64::max` takes three for its NaN
/// rule).
#[inline(always)]
fn larger(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
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

    /// The statistics as format version 3 writes them.
    #[derive(Serialize)]
    struct Version3 {
        r: Vec<f64>,
        e: Vec<f32>,
        #[serde(skip_serializing_if = "all_zero")]
        x: Vec<f32>,
        l: f64,
    }

    /// The statistics as format version 2 wrote them: `D` and `C` unscaled, as `f64`s.
    #[derive(Serialize, Deserialize)]
    struct Version2 {
        r: Vec<f64>,
        d: Vec<f64>,
        #[serde(default, skip_serializing_if = "all_zero")]
        c: Vec<f64>,
        l: f64,
    }

    fn all_zero<T: Into<f64> + Copy>(v: &[T]) -> bool {
        v.iter().all(|x| (*x).into() == 0.0)
    }

    #[test]
    fn stored_bytes_are_those_of_version_3_and_read_back_equal() {
        let mut m = MixtureSr::<true>::new(members([3, 5, 9], &[0.5, 0.25, 0.25]));
        for (lr, aux) in [([1.5, 0.5, 2.0], 0.0), ([0.8, 1.25, 0.9], 0.0)] {
            m.step(&lr, aux);
        }
        for aux in [0.0, 1.0] {
            if aux == 1.0 {
                m.step(&[1.1, 0.7, 3.0], aux);
            }
            let (r, d, c) = m.rdc();
            let now = Version3 { r: r.to_vec(), e: d.to_vec(), x: c.to_vec(), l: m.lambda };
            let bytes = rmp_serde::to_vec_named(&m).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec_named(&now).unwrap(), "c all zero: {}", aux == 0.0);
            let back: MixtureSr = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.rdc().2, c, "an absent `x` reads as zeros");
            assert!(!back.is_installed());
            assert_eq!(back.restored(&members([3, 5, 9], &[0.5, 0.25, 0.25])).winner(), m.winner());
        }
        assert!(m.rdc().2.iter().any(|c| *c != 0.0), "the second round stores `x`");
    }

    #[test]
    fn version_2_statistics_are_read_rounded_to_nearest_and_scaled_with_r() {
        // The last member's `R` is past 2³² + 1, so its `D` and `C` are held scaled by 2⁻¹⁰¹.
        let r = vec![2.0, 0.25, 0.0, 3e40];
        let d = vec![1.0 / 3.0, 0.1, 0.0, 7.5 * 3e40];
        let c = vec![0.7, 0.0, 0.0, 2.25 * 3e40];
        let bytes =
            rmp_serde::to_vec_named(&Version2 { r: r.clone(), d: d.clone(), c: c.clone(), l: 4.5 }).unwrap();
        let back: MixtureSr = rmp_serde::from_slice(&bytes).unwrap();
        let (br, bd, bc) = back.rdc();
        assert_eq!(br, &r[..], "R exactly");
        assert_eq!(&bd[..3], &[1.0f32 / 3.0, 0.1, 0.0], "to nearest");
        assert_eq!(&bc[..3], &[0.7f32, 0.0, 0.0]);
        let (down, up) = scale(r[3]);
        assert_eq!((down * up, up), (1.0, 2f64.powi(102)), "R = 3e40 is 2¹³⁴ and more");
        assert_eq!((d[3] as f32, bd[3], bc[3]), (f32::INFINITY, (d[3] * down) as f32, (c[3] * down) as f32));
        assert_eq!(back.lambda, 4.5, "Λ as stored");
        let w = back.restored(&members([1, 2, 3, 4], &[0.1, 0.1, 0.1, 0.1])).winner();
        assert_eq!(w.member, 3);
        assert!((w.lag - 7.5).abs() <= 7.5 * 2e-7 && (w.aux_sum - 2.25).abs() <= 2.25 * 2e-7, "{w:?}");
    }

    /// Unit roundoff of a narrowed step: `2⁻²⁴` for the `f32`, and the `f64` operations
    /// before it (at most four).
    const EPS: f64 = 1.0 / (1u64 << 24) as f64 + 4.0 * f64::EPSILON / 2.0;

    /// A reference bank in `f64`, as the statistics were held before.
    struct Reference {
        r: Vec<f64>,
        d: Vec<f64>,
        c: Vec<f64>,
    }

    impl Reference {
        fn new(k: usize) -> Self {
            Reference { r: vec![0.0; k], d: vec![0.0; k], c: vec![0.0; k] }
        }

        fn step(&mut self, lr: &[f64], aux: f64) {
            for (j, l) in lr.iter().enumerate() {
                let prev = self.r[j];
                self.d[j] = (self.d[j] + prev) * l;
                self.c[j] = (self.c[j] + (prev + 1.0) * aux) * l;
                self.r[j] = (1.0 + prev) * l;
            }
        }
    }

    /// `R` and Λ are those of the `f64` recursion to the bit. `D` and `C` round once per step:
    /// term `k` of `D_n = Σ_k (n−k) L_k ⋯ L_n` and of `C_n` has passed through at most
    /// `n + 1` roundings of `(1 + δ)`, `|δ| ≤ EPS`, and all terms are positive (the auxiliary
    /// values here are), so each is within `(1 + EPS)^(n+1) − 1` of the reference, relatively;
    /// the reference's own error is 2⁻²⁹ of that, covered by the `1e-12` slack. Both alarm at
    /// the same event, with change-point estimates within that bound.
    #[test]
    fn r_is_exact_and_d_and_c_follow_f64_to_their_bound() {
        use rand::{Rng, SeedableRng};
        use rand_distr::{Distribution, StandardNormal};
        let theta = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6];
        let w = [0.3, 0.2, 0.2, 0.1, 0.1, 0.1];
        let k = theta.len();
        let threshold = 1e5;
        let mut rng = rand_pcg::Pcg64::seed_from_u64(24);
        let mut worst = 0.0f64;
        for run in 0..40 {
            let mut bank = MixtureSr::<true>::new(members(0..k as u32, &w));
            let mut exact = Reference::new(k);
            // In control for 5,000 events, then a shift of 0.1 to 0.6 σ until it alarms.
            let shift = 0.1 + 0.5 * f64::from(run) / 40.0;
            let mut alarm = None;
            for n in 1..=60_000u32 {
                let x: f64 = StandardNormal.sample(&mut rng);
                let x = x + if n > 5_000 { shift } else { 0.0 };
                let lr: Vec<f64> = theta.iter().map(|t| (t * x - t * t / 2.0).exp()).collect();
                let aux = if rng.random::<f64>() < 0.5 { x.abs() } else { 0.0 };
                let got = bank.step(&lr, aux);
                exact.step(&lr, aux);
                let (r, d, c) = bank.rdc();
                assert_eq!(r, &exact.r[..], "run {run} n {n}");
                let want: f64 = (0..k).map(|j| w[j] * exact.r[j]).sum();
                assert_eq!(got.to_bits(), want.to_bits(), "run {run} n {n}");
                let bound = (1.0 + EPS).powi(n as i32 + 1) - 1.0 + 1e-12;
                for j in 0..k {
                    for (held, exact) in [(d[j], exact.d[j]), (c[j], exact.c[j])] {
                        let err = (f64::from(held) - exact).abs();
                        assert!(err <= bound * exact, "run {run} n {n} member {j}: {held} against {exact}");
                        worst = worst.max(err / exact.max(f64::MIN_POSITIVE));
                    }
                }
                if got >= threshold {
                    alarm = Some(n);
                    let (win, j) = (bank.winner(), bank.winner().member);
                    let lag = exact.d[j] / exact.r[j];
                    assert!(
                        (win.lag - lag).abs() <= 2.0 * bound * lag,
                        "run {run}: lag {} against {lag}",
                        win.lag
                    );
                    break;
                }
            }
            assert!(
                alarm.is_some_and(|n| n > 5_000),
                "run {run}: alarms after the shift, not before: {alarm:?}"
            );
        }
        eprintln!("worst relative error of D and C: {worst:.3e}");
    }

    /// A member weighted `1/F` for a huge inflation `F` (as a bank built on a short baseline
    /// keeps one, to stay watching) needs `R` far past `f32`'s range before it alarms; its
    /// `D` and `C` are scaled with it, so its change-point estimate stays right.
    #[test]
    fn a_huge_r_keeps_its_change_point_estimate() {
        let w = 1e-60;
        let mut bank = MixtureSr::<true>::new(members([0], &[w]));
        let mut exact = Reference::new(1);
        // 100 events at the baseline (ratio 1/2 or 3/2), then ratio 4 until Λ passes 10⁴.
        let mut n = 0u32;
        while bank.lambda < 1e4 {
            let l = if n >= 100 {
                4.0
            } else if n.is_multiple_of(2) {
                0.5
            } else {
                1.5
            };
            bank.step(&[l], if n >= 100 { 1.0 } else { 0.0 });
            exact.step(&[l], if n >= 100 { 1.0 } else { 0.0 });
            n += 1;
        }
        assert!(bank.rdc().0[0] > 1e60 && exact.d[0] > 1e61, "past f32's range (3.4e38)");
        let win = bank.winner();
        let (lag, aux) = (exact.d[0] / exact.r[0], exact.c[0] / exact.r[0]);
        assert!((win.lag - lag).abs() <= 1e-5 * lag, "{} against {lag}", win.lag);
        assert!((win.aux_sum - aux).abs() <= 1e-5 * aux, "{} against {aux}", win.aux_sum);
        // The posterior also weighs change points before the true one, whose ratios average
        // √(½·³⁄₂) ≈ 0.87 per event: a few events more than the true lag.
        let since = f64::from(n - 100);
        assert!(since <= win.lag && win.lag <= since + 8.0, "the change was {since} events ago: {}", win.lag);
        let back: MixtureSr = rmp_serde::from_slice(&rmp_serde::to_vec_named(&bank).unwrap()).unwrap();
        assert_eq!(back.restored(&bank.members).winner(), win, "and reads back the same");
    }

    /// A step without scales, then the members that passed 2³² scaled, gives the bits of a
    /// step that scales every member before rounding, on both sides of the crossing.
    #[test]
    fn the_unscaled_loop_and_its_fix_up_equal_the_scaled_step() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(32);
        let ms = members([0, 1, 2, 3], &[1e-30, 1e-20, 1e-9, 0.5]);
        let (mut fast, mut scaled) =
            (MixtureSr::<true>::new(Arc::clone(&ms)), MixtureSr::<true>::new(Arc::clone(&ms)));
        let (mut fast2, mut scaled2) =
            (MixtureSr::<false>::new(Arc::clone(&ms)), MixtureSr::<false>::new(ms));
        let mut crossed = 0;
        for n in 0..400 {
            // Rising ratios, so that members pass 2³² one after another; then falling ones.
            let lr: Vec<f64> =
                (0..4).map(|j| rng.random_range(0.5..if n < 300 { 2.5 + j as f64 } else { 1.0 })).collect();
            let aux = rng.random_range(0.0..3.0);
            let before = fast.rdc().0.iter().filter(|r| **r >= UNSCALED).count();
            let l = fast.step(&lr, aux);
            crossed += fast.rdc().0.iter().filter(|r| **r >= UNSCALED).count().saturating_sub(before);
            scaled.lambda = scaled.step_with::<true>(|j| lr[j], aux);
            assert_eq!((l.to_bits(), &fast), (scaled.lambda.to_bits(), &scaled), "step {n}");
            fast2.step(&lr, 0.0);
            scaled2.lambda = scaled2.step_with::<true>(|j| lr[j], 0.0);
            assert_eq!(fast2, scaled2, "step {n}, without C");
            let (p, patch) = (1..3, [3.0, 0.25, 4.0, 0.5]);
            fast2.step_patched(&lr, &patch, p.clone());
            scaled2.lambda = scaled2.patched_with::<true>(&lr, &patch, p);
            assert_eq!(fast2, scaled2, "step {n}, patched");
        }
        assert!(crossed >= 3, "members crossed 2³² in unscaled steps: {crossed}");
    }

    #[test]
    fn a_bank_without_c_steps_stores_and_reads_back_as_one_with_c_at_zero() {
        let ms = members([3, 5, 9], &[0.5, 0.25, 0.25]);
        let mut with_c = MixtureSr::<true>::new(Arc::clone(&ms));
        let mut without = MixtureSr::<false>::new(Arc::clone(&ms));
        assert_eq!((with_c.s.len(), without.s.len()), (6, 5), "R, then D and C two to a slot; D only");
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
        assert_eq!((back.len(), back.s.len()), (3, 5));
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
