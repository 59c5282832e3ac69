//! In-control false-alarm rates and detection power of the `auto` detectors.
//!
//! Tolerances come from the mathematics, not from trial runs:
//! - Upper: the mixture Shiryaev–Roberts threshold `A = 1/α` guarantees `ARL0 ≥ A`, so the
//!   alarm count over `N` monitored events is at most Poisson(`N α`) (the baseline-error
//!   correction makes this hold approximately for an estimated baseline). We allow the
//!   Poisson upper quantile at 1e-6: `λ + 5√λ + 5`.
//! - Lower: at an alarm `Λ_T ≤ L_max (1 + A)`, where `L_max` is the largest one-event
//!   likelihood ratio in the bank, so `ARL0 = E[Λ_T] ≤ L_max (1 + A)`; with bounded banks
//!   (`L_max` ≤ 25 here) the rate is at least `α / 25`. This catches a vacuous detector.
//! - Power: a shift with per-event KL `K` is detected after about `(ln A + c)/K` events,
//!   where `c` is the bank's multiplicity cost (a few nats); we require the mean delay to be
//!   under `2 ln A / K`.

use driftgate_detectors::{AnyDetector, AutoConfig, Detector, DetectorSpec, MetricKind, Observation};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal, Poisson, StudentT};
use rand_pcg::Pcg64;

const ALPHA: f64 = 1e-3;

fn cfg() -> AutoConfig {
    AutoConfig { false_alarm_rate: ALPHA, reference_min: 2000, reference_max: 4000, ..AutoConfig::default() }
}

/// Runs a detector over `total` events from `draw`, resetting after each alarm, and returns
/// (alarms, monitored events).
fn run_in_control(kind: MetricKind, total: u64, seed: u64, mut draw: impl FnMut(&mut Pcg64) -> Sample) -> (u64, u64) {
    let mut det: AnyDetector = DetectorSpec::Auto(cfg()).build(kind).unwrap();
    let mut rng = Pcg64::seed_from_u64(seed);
    let (mut alarms, mut monitored) = (0, 0);
    for _ in 0..total {
        let s = draw(&mut rng);
        let ready = det.view().ready;
        let obs = match &s {
            Sample::B(b) => Observation::Bool(*b),
            Sample::R(x) => Observation::Real(*x),
            Sample::C(c) => Observation::Category(c),
        };
        if det.update(obs).unwrap().is_some() {
            alarms += 1;
            det.reset();
        }
        monitored += ready as u64;
    }
    (alarms, monitored)
}

enum Sample {
    B(bool),
    R(f64),
    C(&'static str),
}

fn check_rate(name: &str, (alarms, monitored): (u64, u64)) {
    let lambda = monitored as f64 * ALPHA;
    let upper = lambda + 5.0 * lambda.sqrt() + 5.0;
    let lower = lambda / 25.0;
    let rate = alarms as f64 / monitored as f64;
    eprintln!("{name}: {alarms} alarms in {monitored} monitored events (rate {rate:.2e}, target {ALPHA:.0e})");
    assert!((alarms as f64) <= upper, "{name}: {alarms} alarms > Poisson bound {upper:.1}");
    assert!((alarms as f64) >= lower, "{name}: {alarms} alarms < {lower:.1}: calibration is vacuous");
}

#[test]
fn bernoulli_rate_holds_with_estimated_baseline() {
    for (i, p) in [0.9, 0.5, 0.03].into_iter().enumerate() {
        let r = run_in_control(MetricKind::Bernoulli, 2_000_000, 10 + i as u64, |g| Sample::B(g.random::<f64>() < p));
        check_rate(&format!("bernoulli p={p}"), r);
    }
}

#[test]
fn real_rate_holds_on_gaussian_heavy_tailed_skewed_and_tied_data() {
    let n = Normal::new(5.0, 2.0).unwrap();
    check_rate("real normal", run_in_control(MetricKind::Real, 1_500_000, 21, |g| Sample::R(n.sample(g))));
    let t = StudentT::new(1.5).unwrap();
    check_rate("real student-t(1.5)", run_in_control(MetricKind::Real, 1_500_000, 22, |g| Sample::R(t.sample(g))));
    let ln = LogNormal::new(6.0, 1.2).unwrap();
    check_rate("real lognormal latency", run_in_control(MetricKind::Real, 1_500_000, 23, |g| Sample::R(ln.sample(g))));
    let po = Poisson::new(3.0).unwrap();
    check_rate("real poisson(3) ties", run_in_control(MetricKind::Real, 1_500_000, 24, |g| Sample::R(po.sample(g))));
}

#[test]
fn categorical_rate_holds() {
    const CATS: [&str; 5] = ["search", "code_exec", "browse", "calculator", "none"];
    let cdf = [0.40, 0.65, 0.80, 0.92, 1.0];
    let r = run_in_control(MetricKind::Categorical, 1_500_000, 31, |g| {
        let u: f64 = g.random();
        Sample::C(CATS[cdf.iter().position(|c| u < *c).unwrap_or(4)])
    });
    check_rate("categorical", r);
}

/// Mean delay over `reps` streams with a change after `pre` events.
fn mean_delay(kind: MetricKind, reps: u64, pre: u64, mut draw: impl FnMut(&mut Pcg64, bool) -> Sample) -> f64 {
    let mut total = 0.0;
    for rep in 0..reps {
        let mut det: AnyDetector = DetectorSpec::Auto(cfg()).build(kind).unwrap();
        let mut rng = Pcg64::seed_from_u64(1000 + rep);
        let mut i = 0u64;
        loop {
            let s = draw(&mut rng, i >= pre);
            let obs = match &s {
                Sample::B(b) => Observation::Bool(*b),
                Sample::R(x) => Observation::Real(*x),
                Sample::C(c) => Observation::Category(c),
            };
            if det.update(obs).unwrap().is_some() {
                if i >= pre {
                    total += (i - pre) as f64;
                    break;
                }
                // A false alarm before the change: keep the learned baseline and go on.
                det.restart();
            }
            i += 1;
            assert!(i < pre + 100_000, "never detected");
        }
    }
    total / reps as f64
}

#[test]
fn clear_shifts_are_detected_within_theory_bound() {
    let log_a = (1.0 / ALPHA).ln();
    // Bernoulli 0.5 -> 0.7: KL = 0.7 ln(1.4) + 0.3 ln(0.6) = 0.0823.
    let kl = 0.7f64 * (0.7f64 / 0.5).ln() + 0.3 * (0.3f64 / 0.5).ln();
    let d = mean_delay(MetricKind::Bernoulli, 20, 5000, |g, post| Sample::B(g.random::<f64>() < if post { 0.7 } else { 0.5 }));
    assert!(d < 2.0 * log_a / kl, "bernoulli delay {d} vs bound {}", 2.0 * log_a / kl);
    // Normal mean shift of 0.75 sd: KL = 0.28.
    let n0 = Normal::new(0.0, 1.0).unwrap();
    let d = mean_delay(MetricKind::Real, 20, 5000, |g, post| Sample::R(n0.sample(g) + if post { 0.75 } else { 0.0 }));
    assert!(d < 2.0 * log_a / 0.28125, "real location delay {d}");
    // Scale x1.5: KL(N(0,2.25)||N(0,1)) = (2.25 - 1)/2 - ln 1.5 = 0.2195. (Scores are clamped
    // half a unit beyond the outer edge for robustness to heavy tails, which caps the
    // information of very large scale changes; at x1.5 only 9.5% of scores reach the clamp.)
    let kl = 1.25 / 2.0 - 1.5f64.ln();
    let d = mean_delay(MetricKind::Real, 20, 5000, |g, post| Sample::R(n0.sample(g) * if post { 1.5 } else { 1.0 }));
    assert!(d < 2.0 * log_a / kl, "real scale delay {d} vs {}", 2.0 * log_a / kl);
    // Categorical [.5,.3,.2] -> [.3,.3,.4]: KL = .3 ln .6 + .4 ln 2 = 0.124.
    const C: [&str; 3] = ["a", "b", "c"];
    let kl = 0.3f64 * (0.6f64).ln() + 0.4 * 2f64.ln();
    let d = mean_delay(MetricKind::Categorical, 20, 5000, |g, post| {
        let u: f64 = g.random();
        let cdf = if post { [0.3, 0.6] } else { [0.5, 0.8] };
        Sample::C(C[cdf.iter().position(|c| u < *c).unwrap_or(2)])
    });
    assert!(d < 2.0 * log_a / kl, "categorical delay {d} vs {}", 2.0 * log_a / kl);
}

#[test]
fn cusum_siegmund_threshold_holds_by_simulation() {
    // Gaussian CUSUM 0 -> 1 at α = 1e-3: the simulated rate must match the design within
    // the Poisson tolerance and Siegmund's approximation error (a few percent in ARL).
    use driftgate_detectors::CusumSpec;
    let spec = DetectorSpec::Cusum(CusumSpec { mu0: Some(0.0), mu1: Some(1.0), sigma: Some(1.0), false_alarm_rate: Some(ALPHA), ..Default::default() });
    let mut det = spec.build(MetricKind::Real).unwrap();
    let n = Normal::new(0.0, 1.0).unwrap();
    let mut rng = Pcg64::seed_from_u64(7);
    let total = 2_000_000u64;
    let mut alarms = 0u64;
    for _ in 0..total {
        if det.update(Observation::Real(n.sample(&mut rng))).unwrap().is_some() {
            alarms += 1;
            det.reset();
        }
    }
    let lambda = total as f64 * ALPHA;
    let rel = alarms as f64 / lambda;
    eprintln!("cusum: {alarms} alarms, expected {lambda}");
    assert!((0.85..1.15).contains(&rel), "rate ratio {rel}");
}
