//! Detector configuration as written in pacts and on the command line, and the enum that
//! holds any detector behind one serialisable type.

use crate::adwin::{Adwin, AdwinConfig};
use crate::auto::AutoConfig;
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
                AnyDetector::AutoCategorical(AutoCategorical::new(c.clone(), c.max_categories)?)
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
            (DetectorSpec::Ks(c), MetricKind::Real) => AnyDetector::Ks(WindowedKs::new(c.clone())?),
            (DetectorSpec::Ks(_), _) => return unsupported("ks"),
            (DetectorSpec::Chi2(c), k) => {
                AnyDetector::Binned(BinnedWindow::new(c.clone(), BinnedTest::Chi2, k == MetricKind::Real)?)
            }
            (DetectorSpec::Psi(c), k) => {
                AnyDetector::Binned(BinnedWindow::new(c.clone(), BinnedTest::Psi, k == MetricKind::Real)?)
            }
        })
    }
}

/// Any detector of this crate, as one serialisable value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum AnyDetector {
    /// See [`AutoBernoulli`].
    AutoBernoulli(AutoBernoulli),
    /// See [`AutoReal`].
    AutoReal(AutoReal),
    /// See [`AutoCategorical`].
    AutoCategorical(AutoCategorical),
    /// See [`Cusum`].
    Cusum(Cusum),
    /// See [`PageHinkley`].
    PageHinkley(PageHinkley),
    /// See [`Adwin`].
    Adwin(Adwin),
    /// See [`WindowedKs`].
    Ks(WindowedKs),
    /// See [`BinnedWindow`].
    Binned(BinnedWindow),
    /// See [`RateBound`].
    Rate(RateBound),
    /// See [`QuantileBound`].
    Quantile(QuantileBound),
    /// See [`ZeroTolerance`].
    Zero(ZeroTolerance),
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
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Alarm>, DetectorError> {
        // The hot kinds get their typed fast paths.
        match (self, obs) {
            (AnyDetector::AutoBernoulli(d), Observation::Bool(b)) => Ok(d.update_bool(b)),
            (AnyDetector::AutoReal(d), Observation::Real(x)) if x.is_finite() => Ok(d.update_value(x)),
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
