//! Restore equivalence, robustness to bad input, and error typing for every detector.

use driftgate_detectors::{
    AnyDetector, AutoConfig, Calibration, Detector, DetectorError, DetectorSpec, MetricKind, Observation,
    QuantileBound, QuantileBoundConfig, RateBound, RateBoundConfig, ZeroTolerance,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const CATS: [&str; 4] = ["a", "b", "c", "d"];

/// Every detector that can be built for a metric kind, with small windows for speed.
fn all_detectors(kind: MetricKind) -> Vec<AnyDetector> {
    let mut out = Vec::new();
    for name in driftgate_detectors::DETECTOR_NAMES {
        let mut spec = DetectorSpec::from_name(name, 1e-3).unwrap();
        match &mut spec {
            DetectorSpec::Auto(c) => {
                c.reference_min = 200;
                c.reference_max = 800;
            }
            DetectorSpec::Ks(c) | DetectorSpec::Chi2(c) | DetectorSpec::Psi(c) => {
                c.reference = 200;
                c.window = 100;
                c.stride = 10;
            }
            DetectorSpec::Cusum(c) => {
                c.p0 = Some(0.5);
                c.p1 = Some(0.7);
                c.mu0 = Some(0.0);
                c.mu1 = Some(1.0);
                c.sigma = Some(1.0);
                c.categories = Some(CATS.iter().map(|s| s.to_string()).collect());
                c.probs0 = Some(vec![0.25; 4]);
                c.probs1 = Some(vec![0.4, 0.2, 0.2, 0.2]);
            }
            // Its threshold is in metric units, not a rate: low enough that the test's changes alarm.
            DetectorSpec::PageHinkley(c) => c.threshold = 5.0,
            _ => {}
        }
        // A detector that stops building for a kind it supports must fail here, not vanish.
        let unsupported = matches!(
            (*name, kind),
            ("page-hinkley" | "adwin" | "ks", MetricKind::Categorical) | ("ks", MetricKind::Bernoulli)
        );
        match spec.build(kind) {
            Ok(d) => {
                assert!(
                    !unsupported,
                    "{name} built for {} metrics, which it does not support",
                    kind.as_str()
                );
                out.push(d);
            }
            Err(e) => assert!(
                unsupported
                    && matches!(e, DetectorError::InvalidParameter { .. } | DetectorError::WrongKind { .. }),
                "{name} on {} metrics: {e}",
                kind.as_str()
            ),
        }
        // The calibration modes and a pact's `min_shift` restore and refuse input alike.
        if let DetectorSpec::Auto(c) = &spec {
            let shift = if kind == MetricKind::Real { 0.5 } else { 0.1 };
            for variant in [
                AutoConfig { calibration: Calibration::Bound, ..c.clone() },
                AutoConfig { min_shift: Some(shift), ..c.clone() },
            ] {
                out.push(DetectorSpec::Auto(variant).build(kind).expect("auto builds for every kind"));
            }
        }
    }
    match kind {
        MetricKind::Bernoulli => {
            out.push(AnyDetector::Rate(
                RateBound::new(RateBoundConfig { limit: 0.4, exit: Some(0.3), alpha: 1e-3 }).unwrap(),
            ));
            out.push(AnyDetector::Zero(ZeroTolerance::new()));
        }
        MetricKind::Real => out.push(AnyDetector::Quantile(Box::new(
            QuantileBound::new(QuantileBoundConfig { quantile: 0.9, limit: 1.5, exit: None, alpha: 1e-3 })
                .unwrap(),
        ))),
        MetricKind::Categorical => {}
    }
    out
}

/// A stream with a change half way, so that alarms happen.
fn stream(kind: MetricKind, n: usize, seed: u64) -> Vec<Obs> {
    let mut g = Pcg64::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let post = i >= n / 2;
            match kind {
                MetricKind::Bernoulli => Obs::B(g.random::<f64>() < if post { 0.8 } else { 0.5 }),
                MetricKind::Real => Obs::R(g.random::<f64>() * 2.0 - 1.0 + if post { 1.0 } else { 0.0 }),
                MetricKind::Categorical => {
                    let u: f64 = g.random();
                    Obs::C(if post && u < 0.5 { "a" } else { CATS[(u * 4.0) as usize % 4] })
                }
            }
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Obs {
    B(bool),
    R(f64),
    C(&'static str),
}

impl Obs {
    fn get(self) -> Observation<'static> {
        match self {
            Obs::B(b) => Observation::Bool(b),
            Obs::R(x) => Observation::Real(x),
            Obs::C(c) => Observation::Category(c),
        }
    }
}

fn run(det: &mut AnyDetector, data: &[Obs]) -> Vec<(usize, String)> {
    let mut alarms = Vec::new();
    for (i, o) in data.iter().enumerate() {
        if let Some(a) = det.update(o.get()).unwrap() {
            alarms.push((i, serde_json::to_string(&a).unwrap()));
            det.restart();
        }
    }
    alarms
}

#[test]
fn restore_mid_stream_gives_identical_alarms() {
    for kind in [MetricKind::Bernoulli, MetricKind::Real, MetricKind::Categorical] {
        let data = stream(kind, 3000, 5);
        for proto in all_detectors(kind) {
            let name = proto.name();
            let mut whole = proto.clone();
            let expected = run(&mut whole, &data);
            for cut in [150, 700, 1600, 2400] {
                let mut first = proto.clone();
                let mut got = run(&mut first, &data[..cut]);
                let json = serde_json::to_string(&first).unwrap();
                let mut restored: AnyDetector = serde_json::from_str(&json).unwrap();
                assert_eq!(restored, first, "{name}: state differs after a serde round trip");
                assert_eq!(restored.bind(&proto), driftgate_detectors::Binding::Kept, "{name}");
                got.extend(run(&mut restored, &data[cut..]).into_iter().map(|(i, a)| (i + cut, a)));
                assert_eq!(got, expected, "{name} ({}) restored at {cut}", kind.as_str());
            }
            // Restore equivalence over an alarm-free run would compare two empty lists.
            assert!(!expected.is_empty(), "{name} on {} never alarmed on a clear change", kind.as_str());
        }
    }
}

#[test]
fn non_finite_values_are_typed_errors_and_leave_state_untouched() {
    for kind in [MetricKind::Bernoulli, MetricKind::Real] {
        for mut det in all_detectors(kind) {
            for o in stream(kind, 500, 9) {
                det.update(o.get()).unwrap();
            }
            let before = det.clone();
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let e = det.update(Observation::Real(bad)).unwrap_err();
                assert!(matches!(e, DetectorError::NotFinite(_)), "{}: {e:?}", det.name());
            }
            assert_eq!(det, before, "{} changed state on a rejected value", det.name());
        }
    }
}

#[test]
fn unknown_category_after_baseline_is_rejected() {
    let spec = DetectorSpec::from_name("auto", 1e-3).unwrap();
    let DetectorSpec::Auto(mut c) = spec else { unreachable!() };
    c.reference_min = 50;
    let mut det = DetectorSpec::Auto(c).build(MetricKind::Categorical).unwrap();
    for i in 0..100 {
        det.update(Observation::Category(CATS[i % 4])).unwrap();
    }
    assert_eq!(
        det.update(Observation::Category("zzz")).unwrap_err(),
        DetectorError::UnknownCategory("zzz".into())
    );
}

/// Feeds one observation and checks the outcome is typed: a rejected observation names why
/// and leaves the state as it was; an accepted one keeps the statistic a number.
fn feed(det: &mut AnyDetector, kind: MetricKind, o: Observation<'_>) -> Result<(), TestCaseError> {
    let before = det.clone();
    match det.update(o) {
        Ok(_) => {
            let v = det.view();
            prop_assert!(!v.statistic.is_nan(), "{}: statistic NaN after {o:?}", det.name());
        }
        Err(e) => {
            // Each error must describe this observation (a parameter error never comes from data).
            let expected = match &e {
                DetectorError::NotFinite(_) => matches!(o, Observation::Real(x) if !x.is_finite()),
                DetectorError::NotBinary(_) => matches!(o, Observation::Real(_)),
                DetectorError::UnknownCategory(c) => matches!(o, Observation::Category(s) if s == c),
                DetectorError::TooManyCategories(_) => matches!(o, Observation::Category(_)),
                DetectorError::WrongKind { .. } => true,
                // Neither comes from data: these detectors are fresh, never decoded.
                DetectorError::InvalidParameter { .. } | DetectorError::Unbound(_) => false,
            };
            let real_metric_got_non_finite =
                kind == MetricKind::Real && matches!(o, Observation::Real(x) if !x.is_finite());
            prop_assert!(
                !real_metric_got_non_finite || matches!(e, DetectorError::NotFinite(_)),
                "{}: {e:?} for {o:?}",
                det.name()
            );
            prop_assert!(expected, "{} on {}: unexpected error {e:?} for {o:?}", det.name(), kind.as_str());
            prop_assert_eq!(&*det, &before, "{} changed state on a rejected {:?}", det.name(), o);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_f64_gets_a_typed_outcome(values in proptest::collection::vec(any::<f64>(), 1..400)) {
        for kind in [MetricKind::Bernoulli, MetricKind::Real, MetricKind::Categorical] {
            for mut det in all_detectors(kind) {
                for v in &values {
                    feed(&mut det, kind, Observation::Real(*v))?;
                    feed(&mut det, kind, Observation::Bool(v.is_sign_positive()))?;
                }
            }
        }
    }

    #[test]
    fn any_string_gets_a_typed_outcome(values in proptest::collection::vec(".{0,12}", 1..400)) {
        for kind in [MetricKind::Bernoulli, MetricKind::Real, MetricKind::Categorical] {
            for mut det in all_detectors(kind) {
                for v in &values {
                    feed(&mut det, kind, Observation::Category(v))?;
                }
            }
        }
    }
}
