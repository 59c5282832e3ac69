//! Small numeric helpers: root finding and tail quantiles.
//!
//! Hand-written because the only need is a monotone bisection; statrs gives the
//! distributions but its `inverse_cdf` loses precision for tail probabilities like 1e-7,
//! so tail quantiles are found on the survival function instead.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Finds `x` in `[lo, hi]` with `f(x) ≈ target` for a decreasing `f`.
pub(crate) fn bisect_decreasing(f: impl Fn(f64) -> f64, target: f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi.abs().max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// The `x` with `P(χ²_df > x) = p`.
pub(crate) fn chi2_upper_quantile(df: f64, p: f64) -> f64 {
    let dist = ChiSquared::new(df.max(1.0)).expect("df >= 1");
    bisect_decreasing(|x| dist.sf(x), p, 0.0, 1e4)
}

/// `P(χ²_df > x)`.
pub(crate) fn chi2_sf(df: f64, x: f64) -> f64 {
    ChiSquared::new(df.max(1.0)).expect("df >= 1").sf(x.max(0.0))
}

/// Kolmogorov's limiting survival function `Q(t) = 2 Σ (-1)^{k-1} exp(-2 k² t²)`.
pub(crate) fn kolmogorov_sf(t: f64) -> f64 {
    if t <= 0.0 {
        return 1.0;
    }
    if t < 0.2 {
        return 1.0;
    }
    let mut s = 0.0;
    for k in 1..=100 {
        let kf = k as f64;
        let term = (-2.0 * kf * kf * t * t).exp();
        s += if k % 2 == 1 { term } else { -term };
        if term < 1e-16 {
            break;
        }
    }
    (2.0 * s).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi2_quantile_known_values() {
        // Tables: chi2(1) 0.95 -> 3.841; chi2(4) 0.99 -> 13.277.
        assert!((chi2_upper_quantile(1.0, 0.05) - 3.8415).abs() < 1e-3);
        assert!((chi2_upper_quantile(4.0, 0.01) - 13.2767).abs() < 1e-3);
    }

    #[test]
    fn kolmogorov_known_values() {
        // Q(1.358) = 0.05, Q(1.628) = 0.01.
        assert!((kolmogorov_sf(1.3581) - 0.05).abs() < 1e-3);
        assert!((kolmogorov_sf(1.6276) - 0.01).abs() < 1e-3);
    }
}
