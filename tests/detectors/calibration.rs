//! In-control false-alarm rates and detection power of the `auto` detectors.
//!
//! Tolerances come from the mathematics, not from trial runs:
//! - Calibration: the calibrated threshold aims at `0.8 α` and its documented accuracy is the
//!   band `[0.5 α, 1.2 α]` (overshoot theory plus the residual table of the crate). Over `N`
//!   monitored events the alarm count is Poisson, so the test accepts counts between the
//!   1e-6 Poisson quantiles of the band's ends: `λ_lo - 5√λ_lo` and `λ_hi + 5√λ_hi + 5`,
//!   with `λ = N α · {0.5, 1.2}`. Too few alarms fail as well as too many.
//! - The `bound` calibration keeps the guarantee `ARL0 ≥ 1/α`: at most `λ + 5√λ + 5`.
//! - Power: a shift with per-event KL `K` is detected after about
//!   `(ln A + ½ ln ln A + c)/K` events (Siegmund & Venkatraman 1995), where `c` is the bank's
//!   multiplicity cost (a few nats); we require the mean delay to be under `2 ln A / K`.
//! - `min_shift`: at the stated shift the delay is within 1.2× a CUSUM that knows both
//!   distributions, calibrated to the same rate.

use driftgate_detectors::{
    AnyDetector, AutoConfig, Calibration, Detector, DetectorSpec, MetricKind, Observation,
};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal, Poisson, StudentT};
use rand_pcg::Pcg64;

const ALPHA: f64 = 1e-3;

fn cfg() -> AutoConfig {
    AutoConfig { false_alarm_rate: ALPHA, reference_min: 2000, reference_max: 4000, ..AutoConfig::default() }
}

/// Runs a detector over `total` events from `draw`, resetting after each alarm, and returns
/// (alarms, monitored events).
fn run_in_control(
    kind: MetricKind,
    total: u64,
    seed: u64,
    draw: impl FnMut(&mut Pcg64) -> Sample,
) -> (u64, u64) {
    run_in_control_with(
        AutoConfig { false_alarm_rate: ALPHA, ..AutoConfig::default() },
        kind,
        total,
        seed,
        draw,
    )
}

fn run_in_control_with(
    cfg: AutoConfig,
    kind: MetricKind,
    total: u64,
    seed: u64,
    mut draw: impl FnMut(&mut Pcg64) -> Sample,
) -> (u64, u64) {
    let mut det: AnyDetector = DetectorSpec::Auto(cfg).build(kind).unwrap();
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

fn check_rate(name: &str, r: (u64, u64)) {
    check_rate_at(name, r, ALPHA)
}

/// The two-sided band: Poisson 1e-6 quantiles around `[0.5 α N, 1.2 α N]`.
fn check_rate_at(name: &str, (alarms, monitored): (u64, u64), alpha: f64) {
    let (lo, hi) = (0.5 * monitored as f64 * alpha, 1.2 * monitored as f64 * alpha);
    let lower = lo - 5.0 * lo.sqrt();
    let upper = hi + 5.0 * hi.sqrt() + 5.0;
    let ratio = alarms as f64 / (monitored as f64 * alpha);
    eprintln!("{name}: {alarms} alarms in {monitored} monitored events = {ratio:.2} α (accepted {lower:.0}..{upper:.0})");
    assert!(lower > 20.0, "{name}: too few events for a two-sided check");
    assert!((alarms as f64) <= upper, "{name}: {alarms} alarms > {upper:.1}: the budget is exceeded");
    assert!((alarms as f64) >= lower, "{name}: {alarms} alarms < {lower:.1}: the budget is not spent");
}

#[test]
fn bernoulli_rate_holds_with_estimated_baseline() {
    for (i, p) in [0.9, 0.5, 0.03, 0.995].into_iter().enumerate() {
        let r = run_in_control(MetricKind::Bernoulli, 2_000_000, 10 + i as u64, |g| {
            Sample::B(g.random::<f64>() < p)
        });
        check_rate(&format!("bernoulli p={p}"), r);
    }
}

#[test]
fn bernoulli_rate_holds_at_a_smaller_alpha() {
    let alpha = 1e-4;
    let cfg = AutoConfig { false_alarm_rate: alpha, ..AutoConfig::default() };
    let r = run_in_control_with(cfg, MetricKind::Bernoulli, 8_000_000, 15, |g| {
        Sample::B(g.random::<f64>() < 0.8)
    });
    check_rate_at("bernoulli p=0.8 α=1e-4", r, alpha);
}

#[test]
fn bound_calibration_keeps_its_guarantee() {
    let cfg =
        AutoConfig { false_alarm_rate: ALPHA, calibration: Calibration::Bound, ..AutoConfig::default() };
    let (alarms, monitored) = run_in_control_with(cfg, MetricKind::Bernoulli, 2_000_000, 16, |g| {
        Sample::B(g.random::<f64>() < 0.9)
    });
    let lambda = monitored as f64 * ALPHA;
    eprintln!("bound: {alarms} alarms, λ = {lambda:.0}");
    assert!(
        (alarms as f64) <= lambda + 5.0 * lambda.sqrt() + 5.0,
        "{alarms} alarms exceed the bound's Poisson limit"
    );
    assert!(alarms > 0, "the bound still alarms");
}

#[test]
fn real_rate_holds_on_gaussian_heavy_tailed_skewed_and_tied_data() {
    let n = Normal::new(5.0, 2.0).unwrap();
    check_rate("real normal", run_in_control(MetricKind::Real, 1_500_000, 21, |g| Sample::R(n.sample(g))));
    let t = StudentT::new(1.5).unwrap();
    check_rate(
        "real student-t(1.5)",
        run_in_control(MetricKind::Real, 1_500_000, 22, |g| Sample::R(t.sample(g))),
    );
    let ln = LogNormal::new(6.0, 1.2).unwrap();
    check_rate(
        "real lognormal latency",
        run_in_control(MetricKind::Real, 1_500_000, 23, |g| Sample::R(ln.sample(g))),
    );
    let po = Poisson::new(3.0).unwrap();
    check_rate(
        "real poisson(3) ties",
        run_in_control(MetricKind::Real, 1_500_000, 24, |g| Sample::R(po.sample(g))),
    );
    // Latencies quantised to 10 ms steps.
    check_rate(
        "real quantised lognormal",
        run_in_control(MetricKind::Real, 1_500_000, 25, |g| Sample::R((ln.sample(g) / 10.0).round() * 10.0)),
    );
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
    // Twelve categories, the rarest at 1%.
    const MANY: [&str; 12] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
    let p = [0.2, 0.15, 0.12, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.01];
    let r = run_in_control(MetricKind::Categorical, 1_500_000, 32, |g| {
        let mut u: f64 = g.random();
        for (c, p) in MANY.iter().zip(p) {
            if u < p {
                return Sample::C(c);
            }
            u -= p;
        }
        Sample::C(MANY[11])
    });
    check_rate("categorical 12 classes", r);
}

#[test]
fn min_shift_keeps_the_rate_calibrated() {
    let cfg = AutoConfig { false_alarm_rate: ALPHA, min_shift: Some(0.05), ..AutoConfig::default() };
    let r = run_in_control_with(cfg, MetricKind::Bernoulli, 2_000_000, 41, |g| {
        Sample::B(g.random::<f64>() < 0.5)
    });
    check_rate("bernoulli min_shift 0.05", r);
    let cfg = AutoConfig { false_alarm_rate: ALPHA, min_shift: Some(0.5), ..AutoConfig::default() };
    let n = Normal::new(3.0, 2.0).unwrap();
    let r = run_in_control_with(cfg, MetricKind::Real, 1_500_000, 42, |g| Sample::R(n.sample(g)));
    check_rate("real min_shift 0.5", r);
}

/// Mean delay after a change at `pre` for any detector built from `spec`, restarting (keeping
/// the baseline) after a false alarm before the change.
fn mean_delay_of(
    spec: &DetectorSpec,
    kind: MetricKind,
    reps: u64,
    pre: u64,
    seed: u64,
    mut draw: impl FnMut(&mut Pcg64, bool) -> Sample,
) -> f64 {
    let mut total = 0.0;
    for rep in 0..reps {
        let mut det: AnyDetector = spec.build(kind).unwrap();
        let mut rng = Pcg64::seed_from_u64(seed + rep);
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
                det.restart();
            }
            i += 1;
            assert!(i < pre + 100_000, "never detected");
        }
    }
    total / reps as f64
}

#[test]
fn min_shift_at_the_true_change_is_close_to_the_oracle() {
    // Bernoulli 0.5 -> 0.6 at the default α = 1e-5, min_shift 0.1: the oracle CUSUM knows p0 and p1 (and
    // the direction); auto learns p0 from 20,000 events and watches both directions. The
    // standard error of each mean over 150 reps is about 4% of it.
    // (At α = 1e-4 the oracle needs only 3.6 nats and the two-sided bank's ~0.9-nat prior
    // cost makes the ratio about 1.24.)
    let alpha = 1e-5;
    use driftgate_detectors::CusumSpec;
    let oracle = DetectorSpec::Cusum(CusumSpec {
        p0: Some(0.5),
        p1: Some(0.6),
        false_alarm_rate: Some(alpha),
        ..Default::default()
    });
    let auto = DetectorSpec::Auto(AutoConfig {
        false_alarm_rate: alpha,
        min_shift: Some(0.1),
        ..AutoConfig::default()
    });
    let draw = |g: &mut Pcg64, post: bool| Sample::B(g.random::<f64>() < if post { 0.6 } else { 0.5 });
    let d_oracle = mean_delay_of(&oracle, MetricKind::Bernoulli, 150, 20_000, 5000, draw);
    let d_auto = mean_delay_of(&auto, MetricKind::Bernoulli, 150, 20_000, 5000, draw);
    eprintln!("min_shift: auto {d_auto:.1} vs oracle {d_oracle:.1} ({:.2}x)", d_auto / d_oracle);
    assert!(d_auto <= 1.2 * d_oracle, "auto {d_auto} > 1.2 x oracle {d_oracle}");
}

/// Mean delay over `reps` streams with a change after `pre` events, for the test's `auto`.
fn mean_delay(kind: MetricKind, reps: u64, pre: u64, draw: impl FnMut(&mut Pcg64, bool) -> Sample) -> f64 {
    mean_delay_of(&DetectorSpec::Auto(cfg()), kind, reps, pre, 1000, draw)
}

#[test]
fn clear_shifts_are_detected_within_theory_bound() {
    let log_a = (1.0 / ALPHA).ln();
    // Bernoulli 0.5 -> 0.7: KL = 0.7 ln(1.4) + 0.3 ln(0.6) = 0.0823.
    let kl = 0.7f64 * (0.7f64 / 0.5).ln() + 0.3 * (0.3f64 / 0.5).ln();
    let d = mean_delay(MetricKind::Bernoulli, 20, 5000, |g, post| {
        Sample::B(g.random::<f64>() < if post { 0.7 } else { 0.5 })
    });
    assert!(d < 2.0 * log_a / kl, "bernoulli delay {d} vs bound {}", 2.0 * log_a / kl);
    // Normal mean shift of 0.75 sd: KL = 0.28.
    let n0 = Normal::new(0.0, 1.0).unwrap();
    let d = mean_delay(MetricKind::Real, 20, 5000, |g, post| {
        Sample::R(n0.sample(g) + if post { 0.75 } else { 0.0 })
    });
    assert!(d < 2.0 * log_a / 0.28125, "real location delay {d}");
    // Scale x1.5: KL(N(0,2.25)||N(0,1)) = (2.25 - 1)/2 - ln 1.5 = 0.2195. (Scores are clamped
    // half a unit beyond the outer edge for robustness to heavy tails, which caps the
    // information of very large scale changes; at x1.5 only 9.5% of scores reach the clamp.)
    let kl = 1.25 / 2.0 - 1.5f64.ln();
    let d = mean_delay(MetricKind::Real, 20, 5000, |g, post| {
        Sample::R(n0.sample(g) * if post { 1.5 } else { 1.0 })
    });
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
    let spec = DetectorSpec::Cusum(CusumSpec {
        mu0: Some(0.0),
        mu1: Some(1.0),
        sigma: Some(1.0),
        false_alarm_rate: Some(ALPHA),
        ..Default::default()
    });
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
