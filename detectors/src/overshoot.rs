//! Siegmund's overshoot constant `ζ` of a likelihood-ratio random walk.
//!
//! Why: a Shiryaev–Roberts statistic never lands exactly on its threshold `A`; it jumps
//! over it. Under the baseline `Λ_n - n` is a martingale, so `ARL0 = E[Λ_T] = A · E[Λ_T/A]`,
//! and the expected overshoot factor tends to `1/ζ` (Pollak 1987), where
//! `ζ = E_1[exp(-(S_τ - a))]` is the overshoot constant of the member's log-likelihood-ratio
//! walk `S` under its own alternative. A threshold of `1/α` therefore spends only `ζ α` of
//! the false-alarm budget (typically 0.3 to 0.7 α); dividing each member's weight by its `ζ`
//! spends all of it.
//!
//! `ζ` is computed from the series of Siegmund (1985, Sequential Analysis, Cor. 8.45;
//! Woodroofe 1982):
//!
//! `ζ = (1/μ₁) · exp(-Σ_{n≥1} (1/n) [P₀(S_n > 0) + P₁(S_n ≤ 0)])`,
//!
//! with `μ₁ = E₁[ℓ]`, the member's information per event. The first [`EXACT_STEPS`] terms are
//! exact (binomial, trinomial, normal or chi-squared laws of `S_n`); the rest use the
//! normal approximation of `S_n`, summed in closed form as an integral.

use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::function::erf::erfc;

/// Terms of the series computed exactly.
const EXACT_STEPS: usize = 64;
/// Exact terms for three-point walks (their state grows quadratically).
const EXACT_STEPS_3: usize = 24;

/// `Φ(-x)`, the upper normal tail.
fn upper_tail(x: f64) -> f64 {
    0.5 * erfc(x / std::f64::consts::SQRT_2)
}

/// `Σ_{n>n0} Φ(-c √n) / n`, approximated by `2 ∫_{c√(n0+½)}^∞ Φ(-u)/u du`.
///
/// Integrated in `t = ln u` (the integrand `Φ(-e^t)` is smooth) by Simpson's rule.
fn tail_sum(c: f64, n0: usize) -> f64 {
    if !(c.is_finite() && c > 0.0) {
        return 0.0;
    }
    let lo = (c * ((n0 as f64) + 0.5).sqrt()).ln();
    // Φ(-u) < 1e-17 beyond u = 8.5.
    let hi = 8.5f64.ln();
    if lo >= hi {
        return 0.0;
    }
    let m = 64;
    let h = (hi - lo) / m as f64;
    let f = |t: f64| upper_tail(t.exp());
    let mut s = f(lo) + f(hi);
    for i in 1..m {
        s += f(lo + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    2.0 * s * h / 3.0
}

/// Moments of a walk's step under the baseline (0) and the alternative (1).
#[derive(Debug, Clone, Copy)]
struct Moments {
    mu0: f64,
    v0: f64,
    mu1: f64,
    v1: f64,
}

impl Moments {
    fn from_points(vals: &[f64], p0: &[f64], p1: &[f64]) -> Moments {
        let m = |p: &[f64]| vals.iter().zip(p).map(|(v, p)| v * p).sum::<f64>();
        let (mu0, mu1) = (m(p0), m(p1));
        let var = |p: &[f64], mu: f64| vals.iter().zip(p).map(|(v, p)| p * (v - mu).powi(2)).sum::<f64>();
        Moments { mu0, v0: var(p0, mu0), mu1, v1: var(p1, mu1) }
    }

    /// `ζ` from the exact part of the series (`n ≤ n0`) and the normal tail.
    fn zeta(&self, exact: f64, n0: usize) -> f64 {
        if !(self.mu1 > 0.0 && self.mu0 < 0.0 && self.v0 > 0.0 && self.v1 > 0.0) {
            return 1.0;
        }
        let tail = tail_sum(-self.mu0 / self.v0.sqrt(), n0) + tail_sum(self.mu1 / self.v1.sqrt(), n0);
        let z = (-(exact + tail)).exp() / self.mu1;
        // ζ is an expectation of exp(-overshoot): in (0, 1]. Guard the approximation.
        if z.is_finite() {
            z.clamp(1e-6, 1.0)
        } else {
            1.0
        }
    }
}

/// Most entries a thread's ζ cache keeps before it starts over: a few thousand distinct
/// baselines. Its table is allocated whole on first use (8,192 slots of 88 bytes, about
/// 0.7 MB per thread that builds banks), so its memory does not vary with the fleet.
const CACHE_MAX: usize = 4096;

/// Inputs' bits for the cache: up to nine numbers, unused ones zero.
type CacheKey = (u8, [u64; 9]);

/// `f()`, cached per thread by the bits of the inputs it is a function of.
///
/// Why: a bank is rebuilt at each stage of its baseline (`n` = 100, 200, 400, …), and at a
/// stage every key with the same count (of ones, or per category) has the same baseline
/// estimate, hence the same candidates and the same ζ for each. A ζ costs an
/// `O(EXACT_STEPS²)` series, and rebuilds were 4 % of the engine's instructions; across a
/// fleet most of them find their ζ here. Keyed by bits, the result is exactly the series'.
fn cached(kind: u8, inputs: &[f64], f: impl FnOnce() -> f64) -> f64 {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static CACHE: RefCell<HashMap<CacheKey, f64>> = RefCell::new(HashMap::with_capacity(CACHE_MAX));
    }
    let mut key = (kind, [0u64; 9]);
    for (k, x) in key.1.iter_mut().zip(inputs) {
        *k = x.to_bits();
    }
    if let Some(z) = CACHE.with(|c| c.borrow().get(&key).copied()) {
        return z;
    }
    let z = f();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(key, z);
    });
    z
}

/// `ζ` of a walk whose step is `a` with probability `p0` (baseline) or `p1` (alternative)
/// and `b` otherwise: a bernoulli member, or a categorical one-vs-rest tilt. Cached (see
/// [`cached`]).
pub(crate) fn zeta_two_point(a: f64, b: f64, p0: f64, p1: f64) -> f64 {
    cached(2, &[a, b, p0, p1], || two_point_series(a, b, p0, p1))
}

/// `ζ` of a walk with three step values (a categorical pairwise tilt: up, down, neither).
/// Cached (see [`cached`]).
pub(crate) fn zeta_three_point(vals: [f64; 3], p0: [f64; 3], p1: [f64; 3]) -> f64 {
    let inputs = [vals[0], vals[1], vals[2], p0[0], p0[1], p0[2], p1[0], p1[1], p1[2]];
    cached(3, &inputs, || three_point_series(vals, p0, p1))
}

/// [`zeta_two_point`], computed.
fn two_point_series(a: f64, b: f64, p0: f64, p1: f64) -> f64 {
    let mom = Moments::from_points(&[a, b], &[p0, 1.0 - p0], &[p1, 1.0 - p1]);
    let n0 = EXACT_STEPS;
    // Binomial pmfs of the number of `a` steps, under each law, grown one step at a time.
    let mut f0 = vec![0.0; n0 + 1];
    let mut f1 = vec![0.0; n0 + 1];
    f0[0] = 1.0;
    f1[0] = 1.0;
    let mut exact = 0.0;
    for n in 1..=n0 {
        for k in (1..=n).rev() {
            f0[k] = f0[k] * (1.0 - p0) + f0[k - 1] * p0;
            f1[k] = f1[k] * (1.0 - p1) + f1[k - 1] * p1;
        }
        f0[0] *= 1.0 - p0;
        f1[0] *= 1.0 - p1;
        let (mut up0, mut down1) = (0.0, 0.0);
        for k in 0..=n {
            if k as f64 * a + (n - k) as f64 * b > 0.0 {
                up0 += f0[k];
            } else {
                down1 += f1[k];
            }
        }
        exact += (up0 + down1) / n as f64;
    }
    mom.zeta(exact, n0)
}

/// [`zeta_three_point`], computed.
fn three_point_series(vals: [f64; 3], p0: [f64; 3], p1: [f64; 3]) -> f64 {
    let mom = Moments::from_points(&vals, &p0, &p1);
    let n0 = EXACT_STEPS_3;
    let w = n0 + 1;
    // pmf[i * w + j]: i steps of vals[0], j of vals[1], the rest vals[2].
    let mut f0 = vec![0.0; w * w];
    let mut f1 = vec![0.0; w * w];
    f0[0] = 1.0;
    f1[0] = 1.0;
    let mut exact = 0.0;
    for n in 1..=n0 {
        for i in (0..=n).rev() {
            for j in (0..=(n - i)).rev() {
                let grow = |f: &[f64], p: &[f64; 3]| {
                    let mut v = f[i * w + j] * p[2];
                    if i > 0 {
                        v += f[(i - 1) * w + j] * p[0];
                    }
                    if j > 0 {
                        v += f[i * w + j - 1] * p[1];
                    }
                    v
                };
                // Cells are visited from the largest (i, j) down, so the ones read are
                // still the previous step's.
                let (g0, g1) = (grow(&f0, &p0), grow(&f1, &p1));
                f0[i * w + j] = g0;
                f1[i * w + j] = g1;
            }
        }
        let (mut up0, mut down1) = (0.0, 0.0);
        for i in 0..=n {
            for j in 0..=(n - i) {
                let s = i as f64 * vals[0] + j as f64 * vals[1] + (n - i - j) as f64 * vals[2];
                if s > 0.0 {
                    up0 += f0[i * w + j];
                } else {
                    down1 += f1[i * w + j];
                }
            }
        }
        exact += (up0 + down1) / n as f64;
    }
    mom.zeta(exact, n0)
}

/// `ζ` of the normal location member `N(θ, 1)` against `N(0, 1)`:
/// `(2/θ²) exp(-2 Σ Φ(-θ√n/2)/n)`, Siegmund's `ν(θ)`.
pub(crate) fn zeta_gaussian(theta: f64) -> f64 {
    let t = theta.abs();
    let mom = Moments { mu0: -t * t / 2.0, v0: t * t, mu1: t * t / 2.0, v1: t * t };
    let exact: f64 =
        (1..=EXACT_STEPS).map(|n| 2.0 * upper_tail(t * (n as f64).sqrt() / 2.0) / n as f64).sum();
    mom.zeta(exact, EXACT_STEPS)
}

/// `ζ` of the normal scale member with log-likelihood ratio `β z²/2 + ln(1-β)/2`
/// (`N(0, 1/(1-β))` against `N(0, 1)`), `β < 1`, `β ≠ 0`.
pub(crate) fn zeta_scale(beta: f64) -> f64 {
    if !(beta < 1.0 && beta != 0.0 && beta.is_finite()) {
        return 1.0;
    }
    let half_log = 0.5 * (1.0 - beta).ln();
    let mu0 = beta / 2.0 + half_log;
    let mu1 = beta / (2.0 * (1.0 - beta)) + half_log;
    let mom = Moments { mu0, v0: beta * beta / 2.0, mu1, v1: beta * beta / (2.0 * (1.0 - beta).powi(2)) };
    // S_n > 0 ⇔ Σz² > n t (β > 0) or Σz² < n t (β < 0), with t = -ln(1-β)/β.
    let t = -(1.0 - beta).ln() / beta;
    let mut exact = 0.0;
    for n in 1..=EXACT_STEPS {
        let Ok(chi) = ChiSquared::new(n as f64) else {
            return 1.0;
        };
        let c0 = chi.cdf(n as f64 * t);
        let c1 = chi.cdf(n as f64 * t * (1.0 - beta));
        let (up0, down1) = if beta > 0.0 { (1.0 - c0, c1) } else { (c0, 1.0 - c1) };
        exact += (up0 + down1) / n as f64;
    }
    mom.zeta(exact, EXACT_STEPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache hands back the series' own bits, before and after it starts over, and
    /// keeps kinds and inputs apart.
    #[test]
    fn the_cache_returns_the_series_exactly() {
        let (a, b) = (0.4_f64, -0.3_f64);
        for i in 0..CACHE_MAX + 10 {
            let p0 = 0.05 + 0.9 * i as f64 / (CACHE_MAX + 10) as f64;
            let p1 = (p0 * 1.2).min(0.99);
            let exact = two_point_series(a, b, p0, p1);
            assert_eq!(zeta_two_point(a, b, p0, p1).to_bits(), exact.to_bits());
            // Asked again: from the cache, the same bits.
            assert_eq!(zeta_two_point(a, b, p0, p1).to_bits(), exact.to_bits());
        }
        let (v, p, q) = ([0.5, -0.4, 0.0], [0.3, 0.3, 0.4], [0.4, 0.25, 0.35]);
        let three = three_point_series(v, p, q);
        assert_eq!(zeta_three_point(v, p, q).to_bits(), three.to_bits());
        assert_eq!(zeta_three_point(v, p, q).to_bits(), three.to_bits());
        // The two-point walk on the same first numbers is another entry.
        assert_eq!(
            zeta_two_point(0.5, -0.4, 0.0, 0.3).to_bits(),
            two_point_series(0.5, -0.4, 0.0, 0.3).to_bits()
        );
    }

    #[test]
    fn gaussian_matches_siegmunds_approximation() {
        // ν(δ) ≈ exp(-0.583 δ) is accurate to about 1% for δ ≤ 1 (Siegmund 1985, §10.3).
        for d in [0.1, 0.25, 0.5, 1.0] {
            let z = zeta_gaussian(d);
            let approx = (-0.583 * d).exp();
            assert!((z / approx - 1.0).abs() < 0.015, "δ={d}: ζ={z} vs {approx}");
        }
    }

    #[test]
    fn two_point_walk_tends_to_the_gaussian_for_small_steps() {
        // A bernoulli member at p0 = 0.5 with a tiny log-odds shift behaves like a normal
        // location walk with θ² = δ² p q.
        let p0 = 0.5;
        let d: f64 = 0.1;
        let p1 = 1.0 / (1.0 + (-d).exp());
        let z = zeta_two_point((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln(), p0, p1);
        let g = zeta_gaussian(d * 0.5);
        assert!((z / g - 1.0).abs() < 0.03, "{z} vs {g}");
    }

    #[test]
    fn three_point_with_an_empty_point_equals_two_point() {
        let (a, b) = (0.4, -0.3);
        let (p0, p1) = (0.3, 0.45);
        let z2 = zeta_two_point(a, b, p0, p1);
        let z3 = zeta_three_point([a, b, 0.0], [p0, 1.0 - p0, 0.0], [p1, 1.0 - p1, 0.0]);
        // Only the number of exact terms differs (64 vs 24); both tails are normal.
        assert!((z2 / z3 - 1.0).abs() < 0.02, "{z2} vs {z3}");
    }

    #[test]
    fn zeta_lies_in_the_unit_interval_and_falls_with_the_step_size() {
        let mut last = 1.0;
        for beta in [0.05, 0.2, 0.5, 0.8] {
            let z = zeta_scale(beta);
            assert!(z > 0.0 && z <= 1.0 && z < last, "β={beta}: {z}");
            last = z;
        }
        let z = zeta_scale(-0.5);
        assert!(z > 0.0 && z <= 1.0);
    }
}
