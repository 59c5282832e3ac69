//! `exp` for the likelihood ratios computed on every event.
//!
//! Why not `f64::exp`: it is a call into the platform's libm per ratio, and a real key
//! computes one per bank member on every event (18 with the defaults), which made `exp`
//! the largest single cost of the engine bench (10 % of its instructions). This one is
//! branch-free and inlined, so a loop over a bank's members compiles to vector
//! instructions, and it gives the same bits on every platform and libm, which keeps a
//! replay's statistics the same across them.
//!
//! It is Cody–Waite range reduction, `x = k·ln 2 + r` with `|r| ≤ ln 2 / 2`, then
//! `e^r = 1 + 2r·P(r²) / (Q(r²) − r·P(r²))`, the Padé form of Cephes' `exp`, within 1 ULP
//! of `e^r`; the tests bound it within 2 ULP of the platform's `exp` (itself within one).
//! The ratios it computes enter sums of positive terms, where 2 ULP is a relative error
//! of 4.4e-16: far below anything a threshold or a change point can see.

/// `x` above which `e^x` overflows: `ln(f64::MAX)`.
const MAX: f64 = 709.782_712_893_384;
/// `x` below which this returns 0: `e^x` is then below `3.3e-308`, at the edge of the
/// normal numbers, and scaling by two normal powers of two (below) would lose it anyway.
const MIN: f64 = -708.0;
/// Adding it rounds `x·log₂e` to an integer held in the low bits of the sum.
const SHIFT: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
/// `ln 2` in two parts; `k·LN2_HI` is exact for every `|k| ≤ 1024`.
const LN2_HI: f64 = 0.693_145_751_953_125;
const LN2_LO: f64 = 1.428_606_820_309_417_3e-6;
/// Cephes' coefficients (`P`: 1.26177193074810590878e-4, 3.02994407707441961300e-2,
/// 9.99999999999999999910e-1; `Q`: 3.00198505138664455042e-6, 2.52448340349684104192e-3,
/// 2.27265548208155028766e-1, 2.00000000000000000009), rounded to `f64`.
const P: [f64; 3] = [1.261_771_930_748_105_8e-4, 3.029_944_077_074_419_5e-2, 1.0];
const Q: [f64; 4] = [3.001_985_051_386_644_6e-6, 2.524_483_403_496_841e-3, 2.272_655_482_081_550_3e-1, 2.0];

/// `e^x` within 2 ULP of the platform's `exp` for `x ≥ -708`; 0 below, `∞` above
/// `ln(f64::MAX)`, NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f64) -> f64 {
    let xc = x.clamp(MIN, MAX);
    let t = xc * std::f64::consts::LOG2_E + SHIFT;
    let k = t - SHIFT;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let rr = r * r;
    let px = r * ((P[0] * rr + P[1]) * rr + P[2]);
    let qx = ((Q[0] * rr + Q[1]) * rr + Q[2]) * rr + Q[3];
    let er = 1.0 + 2.0 * (px / (qx - px));
    // 2^(k-1), built in the exponent's bits (k - 1 is within the normal range for every
    // clamped x), times 2·e^r: 2^k itself would overflow at k = 1024.
    let scale = f64::from_bits(t.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(1022) << 52);
    let y = (er + er) * scale;
    let y = if x < MIN { 0.0 } else { y };
    let y = if x > MAX { f64::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64).abs_diff(b.to_bits() as i64)
    }

    /// Every `x` of a fine grid over the whole range, and many random ones where the
    /// ratios live, within 2 ULP of the platform's `exp`.
    #[test]
    fn within_two_ulp_of_the_platform_exp() {
        let mut worst = (0, 0.0);
        let mut check = |x: f64| {
            let d = ulps(exp(x), x.exp());
            if d > worst.0 {
                worst = (d, x);
            }
        };
        let mut x = MIN;
        while x <= MAX {
            check(x);
            x += 0.000_731;
        }
        let mut s = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2_000_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            check((s >> 11) as f64 / (1u64 << 53) as f64 * 80.0 - 40.0);
        }
        assert!(worst.0 <= 2, "{} ULP at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exact_where_exp_is_exact_and_at_the_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f64::INFINITY), f64::INFINITY);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert!(exp(f64::NAN).is_nan());
        assert_eq!(exp(MAX + 1e-9), f64::INFINITY);
        assert_eq!(exp(800.0), f64::INFINITY);
        assert!(exp(MAX).is_finite() && exp(MAX) > 1.79e308, "{}", exp(MAX));
        assert!(ulps(exp(MIN), MIN.exp()) <= 2);
        assert_eq!(exp(MIN - 1e-9), 0.0);
        assert_eq!(exp(-1e6), 0.0);
        // Around zero the ratio is 1 + x: no cancellation.
        for x in [1e-300, -1e-300, 1e-17, -1e-17, 1e-9, -1e-9] {
            assert!(ulps(exp(x), x.exp()) <= 1, "{x}");
        }
    }
}
