//! Detector configuration as written in pacts and on the command line, and the enum that
//! holds any detector behind one serialisable type.

use crate::adwin::{Adwin, AdwinConfig};
use crate::auto::{AutoConfig, Restorable};
use crate::bernoulli::AutoBernoulli;
use crate::bound::{QuantileBound, RateBound, ZeroTolerance};
use crate::categorical::AutoCategorical;
use crate::cusum::{Cusum, Family};
use crate::detector::{Detector, MetricKind, Observation, View};
use crate::page_hinkley::{PageHinkley, PageHinkleyConfig};
use crate::real::AutoReal;
use crate::windowed::{BinnedTest, BinnedWindow, WindowConfig, WindowedKs};
use crate::{Alarm, DetectorError};
use serde::{Deserialize, Serialize};

/// Parameters of a known-parameter CUSUM; which ones are needed depends on the metric kind.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CusumSpec {
    /// Bernoulli: rate before.
    pub p0: Option<f64>,
    /// Bernoulli: rate after.
    pub p1: Option<f64>,
    /// Real: mean before.
    pub mu0: Option<f64>,
    /// Real: mean after.
    pub mu1: Option<f64>,
    /// Real: standard deviation.
    pub sigma: Option<f64>,
    /// Categorical: category names.
    pub categories: Option<Vec<String>>,
    /// Categorical: probabilities before.
    pub probs0: Option<Vec<f64>>,
    /// Categorical: probabilities after.
    pub probs1: Option<Vec<f64>>,
    /// Explicit threshold in nats; otherwise derived from `false_alarm_rate`.
    pub threshold: Option<f64>,
    /// Target false alarms per in-control event.
    pub false_alarm_rate: Option<f64>,
}

/// Which drift detector a clause uses, with its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "detector", rename_all = "kebab-case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum DetectorSpec {
    /// The calibrated default for the metric kind.
    Auto(AutoConfig),
    /// CUSUM with known parameters.
    Cusum(CusumSpec),
    /// Page-Hinkley.
    PageHinkley(PageHinkleyConfig),
    /// ADWIN.
    Adwin(AdwinConfig),
    /// Windowed Kolmogorov–Smirnov.
    Ks(WindowConfig),
    /// Windowed chi-squared.
    Chi2(WindowConfig),
    /// Population stability index over a window.
    Psi(WindowConfig),
}

impl Default for DetectorSpec {
    fn default() -> Self {
        DetectorSpec::Auto(AutoConfig::default())
    }
}

/// Names accepted for `detector`.
pub const DETECTOR_NAMES: &[&str] = &["auto", "cusum", "page-hinkley", "adwin", "ks", "chi2", "psi"];

impl DetectorSpec {
    /// The spec for a detector name with default options and the given false-alarm rate.
    pub fn from_name(name: &str, false_alarm_rate: f64) -> Result<DetectorSpec, DetectorError> {
        Ok(match name {
            "auto" => DetectorSpec::Auto(AutoConfig { false_alarm_rate, ..AutoConfig::default() }),
            "cusum" => DetectorSpec::Cusum(CusumSpec {
                false_alarm_rate: Some(false_alarm_rate),
                ..Default::default()
            }),
            "page-hinkley" => DetectorSpec::PageHinkley(PageHinkleyConfig::default()),
            "adwin" => DetectorSpec::Adwin(AdwinConfig::default()),
            "ks" => DetectorSpec::Ks(WindowConfig { false_alarm_rate, ..WindowConfig::default() }),
            "chi2" => DetectorSpec::Chi2(WindowConfig { false_alarm_rate, ..WindowConfig::default() }),
            "psi" => DetectorSpec::Psi(WindowConfig { false_alarm_rate, ..WindowConfig::default() }),
            other => {
                return Err(DetectorError::param(
                    "detector",
                    format!("unknown detector `{other}`; expected one of {}", DETECTOR_NAMES.join(", ")),
                ))
            }
        })
    }

    /// The detector's name.
    pub fn name(&self) -> &'static str {
        match self {
            DetectorSpec::Auto(_) => "auto",
            DetectorSpec::Cusum(_) => "cusum",
            DetectorSpec::PageHinkley(_) => "page-hinkley",
            DetectorSpec::Adwin(_) => "adwin",
            DetectorSpec::Ks(_) => "ks",
            DetectorSpec::Chi2(_) => "chi2",
            DetectorSpec::Psi(_) => "psi",
        }
    }

    /// The configured false-alarm rate, where the detector is calibrated to one.
    pub fn false_alarm_rate(&self) -> Option<f64> {
        match self {
            DetectorSpec::Auto(c) => Some(c.false_alarm_rate),
            DetectorSpec::Cusum(c) => Some(c.false_alarm_rate.unwrap_or(1e-5)),
            DetectorSpec::Ks(c) | DetectorSpec::Chi2(c) | DetectorSpec::Psi(c) => Some(c.false_alarm_rate),
            DetectorSpec::PageHinkley(_) | DetectorSpec::Adwin(_) => None,
        }
    }

    /// Builds the detector for a metric kind, refusing combinations that make no sense.
    pub fn build(&self, kind: MetricKind) -> Result<AnyDetector, DetectorError> {
        let unsupported = |what: &str| {
            Err(DetectorError::param(
                "detector",
                format!("`{}` does not support {} metrics", what, kind.as_str()),
            ))
        };
        Ok(match (self, kind) {
            (DetectorSpec::Auto(c), MetricKind::Bernoulli) => {
                AnyDetector::AutoBernoulli(AutoBernoulli::new(c.clone())?)
            }
            (DetectorSpec::Auto(c), MetricKind::Real) => AnyDetector::AutoReal(AutoReal::new(c.clone())?),
            (DetectorSpec::Auto(c), MetricKind::Categorical) => {
                AnyDetector::AutoCategorical(Box::new(AutoCategorical::new(c.clone(), c.max_categories)?))
            }
            (DetectorSpec::Cusum(c), _) => {
                let need = |v: Option<f64>, name: &'static str| {
                    v.ok_or_else(|| {
                        DetectorError::param(
                            name,
                            format!("cusum on a {} metric needs `{name}`", kind.as_str()),
                        )
                    })
                };
                let family = match kind {
                    MetricKind::Bernoulli => {
                        Family::Bernoulli { p0: need(c.p0, "p0")?, p1: need(c.p1, "p1")? }
                    }
                    MetricKind::Real => Family::Gaussian {
                        mu0: need(c.mu0, "mu0")?,
                        mu1: need(c.mu1, "mu1")?,
                        sigma: need(c.sigma, "sigma")?,
                    },
                    MetricKind::Categorical => Family::Categorical {
                        categories: c.categories.clone().ok_or_else(|| {
                            DetectorError::param(
                                "categories",
                                "cusum on a categorical metric needs `categories`",
                            )
                        })?,
                        p0: c.probs0.clone().ok_or_else(|| {
                            DetectorError::param("probs0", "cusum on a categorical metric needs `probs0`")
                        })?,
                        p1: c.probs1.clone().ok_or_else(|| {
                            DetectorError::param("probs1", "cusum on a categorical metric needs `probs1`")
                        })?,
                    },
                };
                AnyDetector::Cusum(Cusum::new(family, c.threshold, c.false_alarm_rate.unwrap_or(1e-5))?)
            }
            (DetectorSpec::PageHinkley(_), MetricKind::Categorical) => return unsupported("page-hinkley"),
            (DetectorSpec::PageHinkley(c), _) => AnyDetector::PageHinkley(PageHinkley::new(c.clone())?),
            (DetectorSpec::Adwin(_), MetricKind::Categorical) => return unsupported("adwin"),
            (DetectorSpec::Adwin(c), _) => AnyDetector::Adwin(Adwin::new(c.clone())?),
            (DetectorSpec::Ks(c), MetricKind::Real) => AnyDetector::Ks(Box::new(WindowedKs::new(c.clone())?)),
            (DetectorSpec::Ks(_), _) => return unsupported("ks"),
            (DetectorSpec::Chi2(c), k) => AnyDetector::Binned(Box::new(BinnedWindow::new(
                c.clone(),
                BinnedTest::Chi2,
                k == MetricKind::Real,
            )?)),
            (DetectorSpec::Psi(c), k) => AnyDetector::Binned(Box::new(BinnedWindow::new(
                c.clone(),
                BinnedTest::Psi,
                k == MetricKind::Real,
            )?)),
        })
    }
}

/// Any detector of this crate, as one serialisable value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum AnyDetector {
    /// See [`AutoBernoulli`]. (The auto kinds, by far the most common, are stored under
    /// short tags; format version 1's long ones are read as aliases.)
    #[serde(rename = "ab", alias = "auto_bernoulli")]
    AutoBernoulli(AutoBernoulli),
    /// See [`AutoReal`].
    #[serde(rename = "ar", alias = "auto_real")]
    AutoReal(AutoReal),
    /// See [`AutoCategorical`]. Boxed, like the windowed tests and the quantile bound: every
    /// clause state holds its detector inline, so pays for the largest kind inline; the
    /// kinds on the hot path of most clauses (bernoulli, real, the rate bound) stay inline.
    #[serde(rename = "ac", alias = "auto_categorical")]
    AutoCategorical(Box<AutoCategorical>),
    /// See [`Cusum`].
    Cusum(Cusum),
    /// See [`PageHinkley`].
    PageHinkley(PageHinkley),
    /// See [`Adwin`].
    Adwin(Adwin),
    /// See [`WindowedKs`].
    Ks(Box<WindowedKs>),
    /// See [`BinnedWindow`].
    Binned(Box<BinnedWindow>),
    /// See [`RateBound`].
    Rate(RateBound),
    /// See [`QuantileBound`].
    Quantile(Box<QuantileBound>),
    /// See [`ZeroTolerance`].
    Zero(ZeroTolerance),
}

/// What [`AnyDetector::bind`] did with a decoded detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The state was stored under this configuration: it continues.
    Kept,
    /// The state was stored under another configuration or detector: it was replaced by a
    /// fresh detector, which learns its baseline again.
    Replaced,
}

impl AnyDetector {
    /// Gives a detector decoded from stored state the configuration its record leaves out,
    /// from `proto`, a fresh detector of its clause; every decoded detector must be bound
    /// before its next observation (an unbound one refuses them with
    /// [`DetectorError::Unbound`]).
    ///
    /// Why: the `auto` detectors store a fingerprint of their configuration instead of the
    /// configuration, and derive their bank again from it, which keeps a clause's state to a
    /// few hundred bytes. A state whose fingerprint, configuration or kind differs from
    /// `proto`'s was gathered under another bank or test, and pairing it with this one would
    /// void the false-alarm guarantee; it is replaced. (The other kinds still store their
    /// configuration; binding checks it against the clause's, so that a corrupt record
    /// cannot bring an invalid one back.)
    pub fn bind(&mut self, proto: &AnyDetector) -> Binding {
        let kept = match (&mut *self, proto) {
            (AnyDetector::AutoBernoulli(d), AnyDetector::AutoBernoulli(p)) => crate::auto::bind(d, p),
            (AnyDetector::AutoReal(d), AnyDetector::AutoReal(p)) => crate::auto::bind(d, p),
            (AnyDetector::AutoCategorical(d), AnyDetector::AutoCategorical(p)) => {
                crate::auto::bind(&mut **d, &**p)
            }
            // The other kinds store their configuration: it must be the clause's (a record
            // is not trusted to hold a valid one).
            (AnyDetector::Cusum(d), AnyDetector::Cusum(p)) => d.same_config(p),
            (AnyDetector::PageHinkley(d), AnyDetector::PageHinkley(p)) => d.same_config(p),
            (AnyDetector::Adwin(d), AnyDetector::Adwin(p)) => d.same_config(p),
            (AnyDetector::Ks(d), AnyDetector::Ks(p)) => d.same_config(p),
            (AnyDetector::Binned(d), AnyDetector::Binned(p)) => d.same_config(p),
            (AnyDetector::Rate(d), AnyDetector::Rate(p)) => d.same_config(p),
            (AnyDetector::Quantile(d), AnyDetector::Quantile(p)) => d.same_config(p),
            (AnyDetector::Zero(_), AnyDetector::Zero(_)) => true,
            _ => false,
        };
        if kept {
            Binding::Kept
        } else {
            *self = proto.clone();
            Binding::Replaced
        }
    }
}

macro_rules! dispatch {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            AnyDetector::AutoBernoulli($d) => $e,
            AnyDetector::AutoReal($d) => $e,
            AnyDetector::AutoCategorical($d) => $e,
            AnyDetector::Cusum($d) => $e,
            AnyDetector::PageHinkley($d) => $e,
            AnyDetector::Adwin($d) => $e,
            AnyDetector::Ks($d) => $e,
            AnyDetector::Binned($d) => $e,
            AnyDetector::Rate($d) => $e,
            AnyDetector::Quantile($d) => $e,
            AnyDetector::Zero($d) => $e,
        }
    };
}

impl Detector for AnyDetector {
    #[inline]
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        // The hot kinds get their typed fast paths.
        match (self, obs) {
            (AnyDetector::AutoBernoulli(d), Observation::Bool(b)) if d.restoration().bound => {
                Ok(d.update_bool(b))
            }
            (AnyDetector::AutoReal(d), Observation::Real(x)) if x.is_finite() && d.restoration().bound => {
                Ok(d.update_value(x))
            }
            (s, o) => dispatch!(s, d => d.update(o)),
        }
    }
    fn view(&self) -> View {
        dispatch!(self, d => d.view())
    }
    fn reset(&mut self) {
        dispatch!(self, d => d.reset())
    }
    fn name(&self) -> &'static str {
        dispatch!(self, d => d.name())
    }
    fn restart(&mut self) {
        dispatch!(self, d => d.restart())
    }
    fn verified_in_control_at(&self) -> Option<u64> {
        dispatch!(self, d => d.verified_in_control_at())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Calibration, Direction};

    /// One event of a stream whose behaviour changes at event 6,000: a rate falls, a
    /// latency doubles, a tool mix shifts. splitmix-hashed, so every run sees the same.
    fn event(kind: MetricKind, i: u64) -> Observation<'static> {
        let u = (crate::normal_score::splitmix64(i) >> 11) as f64 / (1u64 << 53) as f64;
        let after = i >= 6_000;
        match kind {
            MetricKind::Bernoulli => Observation::Bool(u < if after { 0.85 } else { 0.95 }),
            MetricKind::Real => {
                Observation::Real((if after { 2.0 } else { 1.0 }) * (200.0 + 1_000.0 * u).round())
            }
            MetricKind::Categorical => {
                let cats = ["search", "fetch", "calc", "answer"];
                let w = if after { [0.4, 0.2, 0.2, 0.2] } else { [0.25; 4] };
                let mut acc = 0.0;
                Observation::Category(
                    cats[w
                        .iter()
                        .position(|p| {
                            acc += p;
                            u < acc
                        })
                        .unwrap_or(3)],
                )
            }
        }
    }

    /// Everything a detector reports per event, bit for bit.
    fn trace(
        d: &mut AnyDetector,
        kind: MetricKind,
        range: std::ops::Range<u64>,
    ) -> Vec<(u64, u64, u64, bool)> {
        range
            .map(|i| {
                let alarm = d.update(event(kind, i)).unwrap();
                let v = d.view();
                let stat = alarm.as_ref().map_or(v.statistic, |a| a.statistic);
                if alarm.is_some() {
                    d.restart();
                }
                (i, stat.to_bits(), v.threshold.to_bits(), alarm.is_some())
            })
            .collect()
    }

    fn detectors() -> Vec<(MetricKind, AnyDetector)> {
        let cfg = AutoConfig { false_alarm_rate: 1e-6, reference_max: 4_000, ..AutoConfig::default() };
        [MetricKind::Bernoulli, MetricKind::Real, MetricKind::Categorical]
            .into_iter()
            .map(|k| (k, DetectorSpec::Auto(cfg.clone()).build(k).unwrap()))
            .collect()
    }

    #[test]
    fn a_stored_auto_detector_continues_bit_for_bit_once_bound() {
        // Cuts while learning (500), between bank stages (1,500 and 2,500: counts since the
        // last rebuild), frozen (5,000), and after the change, between alarms (7,000).
        for (kind, proto) in detectors() {
            let mut whole = proto.clone();
            let want = trace(&mut whole, kind, 0..9_000);
            assert!(want.iter().any(|t| t.3), "{kind:?}: the change is detected");
            for cut in [500, 1_500, 2_500, 5_000, 7_000] {
                let mut a = proto.clone();
                let mut got = trace(&mut a, kind, 0..cut);
                let bytes = rmp_serde::to_vec_named(&a).unwrap();
                let mut b: AnyDetector = rmp_serde::from_slice(&bytes).unwrap();
                assert_eq!(b, a, "{kind:?} at {cut}: the stored state round-trips");
                assert_eq!(
                    rmp_serde::to_vec_named(&b).unwrap(),
                    bytes,
                    "{kind:?} at {cut}: and re-encodes alike"
                );
                assert_eq!(b.bind(&proto), Binding::Kept);
                got.extend(trace(&mut b, kind, cut..9_000));
                assert_eq!(got, want, "{kind:?} restored at {cut}");
            }
        }
    }

    #[test]
    fn a_stored_configuration_other_than_the_clauses_is_replaced_for_every_kind() {
        use crate::{AdwinConfig, PageHinkleyConfig, QuantileBoundConfig, RateBoundConfig, WindowConfig};
        // Pairs of one kind built from two configurations; the first is stored, and bound
        // to each. A corrupt record (alpha 4.6e18, found by the changelog fuzz target)
        // otherwise came back with its invalid configuration and panicked on a reset.
        let rate = |alpha| {
            AnyDetector::Rate(
                crate::RateBound::new(RateBoundConfig { limit: 0.02, exit: None, alpha }).unwrap(),
            )
        };
        let quantile = |limit| {
            AnyDetector::Quantile(Box::new(
                crate::QuantileBound::new(QuantileBoundConfig {
                    quantile: 0.95,
                    limit,
                    exit: None,
                    alpha: 1e-3,
                })
                .unwrap(),
            ))
        };
        let window = |spec: fn(WindowConfig) -> DetectorSpec, kind, window| {
            spec(WindowConfig { window, ..WindowConfig::default() }).build(kind).unwrap()
        };
        let cusum = |p1| {
            let spec = CusumSpec {
                p0: Some(0.95),
                p1: Some(p1),
                false_alarm_rate: Some(1e-6),
                ..Default::default()
            };
            DetectorSpec::Cusum(spec).build(MetricKind::Bernoulli).unwrap()
        };
        let pairs = [
            (cusum(0.8), cusum(0.7)),
            (rate(1e-3), rate(1e-4)),
            (quantile(3000.0), quantile(2000.0)),
            (
                DetectorSpec::PageHinkley(PageHinkleyConfig::default()).build(MetricKind::Real).unwrap(),
                DetectorSpec::PageHinkley(PageHinkleyConfig { delta: 0.5, ..PageHinkleyConfig::default() })
                    .build(MetricKind::Real)
                    .unwrap(),
            ),
            (
                DetectorSpec::Adwin(AdwinConfig::default()).build(MetricKind::Real).unwrap(),
                DetectorSpec::Adwin(AdwinConfig { delta: 0.01, ..AdwinConfig::default() })
                    .build(MetricKind::Real)
                    .unwrap(),
            ),
            (
                window(DetectorSpec::Ks, MetricKind::Real, 1_000),
                window(DetectorSpec::Ks, MetricKind::Real, 500),
            ),
            (
                window(DetectorSpec::Chi2, MetricKind::Categorical, 1_000),
                window(DetectorSpec::Chi2, MetricKind::Categorical, 500),
            ),
            (
                window(DetectorSpec::Psi, MetricKind::Real, 1_000),
                window(DetectorSpec::Psi, MetricKind::Real, 500),
            ),
            (
                window(DetectorSpec::Chi2, MetricKind::Real, 1_000),
                window(DetectorSpec::Chi2, MetricKind::Categorical, 1_000),
            ),
        ];
        for (stored, other) in pairs {
            let bytes = rmp_serde::to_vec_named(&stored).unwrap();
            let decoded: AnyDetector = rmp_serde::from_slice(&bytes).unwrap();
            let mut same = decoded.clone();
            assert_eq!(same.bind(&stored), Binding::Kept, "{}", stored.name());
            let mut d = decoded.clone();
            assert_eq!(d.bind(&other), Binding::Replaced, "{} against {other:?}", stored.name());
            assert_eq!(d, other);
        }
    }

    #[test]
    fn an_unbound_detector_refuses_observations_and_a_foreign_configuration_is_replaced() {
        for (kind, proto) in detectors() {
            let mut a = proto.clone();
            trace(&mut a, kind, 0..3_000);
            let bytes = rmp_serde::to_vec_named(&a).unwrap();
            let decoded: AnyDetector = rmp_serde::from_slice(&bytes).unwrap();
            let mut unbound = decoded.clone();
            let err = unbound.update(event(kind, 3_000)).unwrap_err();
            assert!(matches!(err, DetectorError::Unbound(_)), "{kind:?}: {err}");
            assert_eq!(unbound.view().n, 3_000, "{kind:?}: nothing was counted");
            // Each field of the configuration is in the fingerprint.
            let base = AutoConfig { false_alarm_rate: 1e-6, reference_max: 4_000, ..AutoConfig::default() };
            let others = [
                AutoConfig { false_alarm_rate: 1e-7, ..base.clone() },
                AutoConfig { direction: Direction::Increase, ..base.clone() },
                AutoConfig { reference_min: 500, ..base.clone() },
                AutoConfig { reference_max: 8_000, ..base.clone() },
                AutoConfig { kappa_min: 1e-3, ..base.clone() },
                AutoConfig { kappa_max: 0.25, ..base.clone() },
                AutoConfig { grid_ratio: 3.0, ..base.clone() },
                AutoConfig { max_inflation: 10.0, ..base.clone() },
                AutoConfig { calibration: Calibration::Bound, ..base.clone() },
                AutoConfig { min_shift: Some(0.1), ..base.clone() },
            ];
            for other in others {
                let foreign = DetectorSpec::Auto(other.clone()).build(kind).unwrap();
                let mut d = decoded.clone();
                assert_eq!(d.bind(&foreign), Binding::Replaced, "{kind:?} {other:?}");
                assert_eq!(d, foreign, "{kind:?}: replaced by a fresh detector");
            }
            let mut d = decoded.clone();
            let cusum =
                DetectorSpec::from_name("page-hinkley", 1e-6).unwrap().build(MetricKind::Real).unwrap();
            assert_eq!(d.bind(&cusum), Binding::Replaced, "{kind:?}: another kind of detector");
        }
    }
}
