//! Restore equivalence, robustness to bad input, and error typing for every detector.

use driftgate_detectors::{
    AnyDetector, AutoConfig, Calibration, Detector, DetectorError, DetectorSpec, MetricKind,
    Observation, QuantileBound, QuantileBoundConfig, RateBound, RateBoundConfig, ZeroTolerance,
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
            _ => {}
        }
        if let Ok(d) = spec.build(kind) {
            out.push(d);
        }
        // The calibration modes and a pact's `min_shift` restore and refuse input alike.
        if let DetectorSpec::Auto(c) = &spec {
            let shift = if kind == MetricKind::Real { 0.5 } else { 0.1 };
            for variant in [
                AutoConfig {
                    calibration: Calibration::Bound,
                    ..c.clone()
                },
                AutoConfig {
                    min_shift: Some(shift),
                    ..c.clone()
                },
            ] {
                out.push(
                    DetectorSpec::Auto(variant)
                        .build(kind)
                        .expect("auto builds for every kind"),
                );
            }
        }
    }
    match kind {
        MetricKind::Bernoulli => {
            out.push(AnyDetector::Rate(
                RateBound::new(RateBoundConfig {
                    limit: 0.4,
                    exit: Some(0.3),
                    alpha: 1e-3,
                })
                .unwrap(),
            ));
            out.push(AnyDetector::Zero(ZeroTolerance::new()));
        }
        MetricKind::Real => out.push(AnyDetector::Quantile(
            QuantileBound::new(QuantileBoundConfig {
                quantile: 0.9,
                limit: 1.5,
                exit: None,
                alpha: 1e-3,
            })
            .unwrap(),
        )),
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
                MetricKind::Real => {
                    Obs::R(g.random::<f64>() * 2.0 - 1.0 + if post { 1.0 } else { 0.0 })
                }
                MetricKind::Categorical => {
                    let u: f64 = g.random();
                    Obs::C(if post && u < 0.5 {
                        "a"
                    } else {
                        CATS[(u * 4.0) as usize % 4]
                    })
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
    for kind in [
        MetricKind::Bernoulli,
        MetricKind::Real,
        MetricKind::Categorical,
    ] {
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
                assert_eq!(
                    restored, first,
                    "{name}: state differs after a serde round trip"
                );
                got.extend(
                    run(&mut restored, &data[cut..])
                        .into_iter()
                        .map(|(i, a)| (i + cut, a)),
                );
                assert_eq!(
                    got,
                    expected,
                    "{name} ({}) restored at {cut}",
                    kind.as_str()
                );
            }
            assert!(
                !expected.is_empty() || name == "page-hinkley",
                "{name} on {} never alarmed on a clear change",
                kind.as_str()
            );
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
                assert!(
                    matches!(e, DetectorError::NotFinite(_)),
                    "{}: {e:?}",
                    det.name()
                );
            }
            assert_eq!(
                det,
                before,
                "{} changed state on a rejected value",
                det.name()
            );
        }
    }
}

#[test]
fn unknown_category_after_baseline_is_rejected() {
    let spec = DetectorSpec::from_name("auto", 1e-3).unwrap();
    let DetectorSpec::Auto(mut c) = spec else {
        unreachable!()
    };
    c.reference_min = 50;
    let mut det = DetectorSpec::Auto(c)
        .build(MetricKind::Categorical)
        .unwrap();
    for i in 0..100 {
        det.update(Observation::Category(CATS[i % 4])).unwrap();
    }
    assert_eq!(
        det.update(Observation::Category("zzz")).unwrap_err(),
        DetectorError::UnknownCategory("zzz".into())
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_update_panics_on_any_f64(values in proptest::collection::vec(any::<f64>(), 1..400)) {
        for kind in [MetricKind::Bernoulli, MetricKind::Real, MetricKind::Categorical] {
            for mut det in all_detectors(kind) {
                for v in &values {
                    let _ = det.update(Observation::Real(*v));
                    let _ = det.update(Observation::Bool(v.is_sign_positive()));
                }
                let _ = det.view();
            }
        }
    }

    #[test]
    fn no_update_panics_on_any_string(values in proptest::collection::vec(".{0,12}", 1..400)) {
        for kind in [MetricKind::Bernoulli, MetricKind::Real, MetricKind::Categorical] {
            for mut det in all_detectors(kind) {
                for v in &values {
                    let _ = det.update(Observation::Category(v));
                }
                let _ = det.view();
            }
        }
    }
}
