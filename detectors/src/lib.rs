//! # driftgate-detectors
//!
//! Calibrated sequential change detectors and anytime-valid bound tests for behavioural
//! contracts. Pure statistics: no I/O, no async; every detector's state is serialisable
//! (serde), and a restored detector continues exactly as the original would.
//!
//! ## Which detector
//! - [`AutoBernoulli`], [`AutoReal`], [`AutoCategorical`] (`detector: auto`): the production
//!   defaults. They learn the baseline from the stream, need neither the pre- nor the
//!   post-change parameters, and take their threshold from a false-alarm rate α (alarms per
//!   in-control event). They are mixture Shiryaev–Roberts procedures over a bank of
//!   alternatives, with the bank's weights corrected for the error of the estimated baseline.
//!   By default ([`Calibration::Calibrated`]) the threshold spends the budget: it is lowered by
//!   the bank's overshoot constant (the `overshoot` module) and a simulated residual factor
//!   (the `calibration` module), so the realised rate is about `0.8 α`.
//!   [`Calibration::Bound`] keeps the threshold `1/α`, whose guarantee `ARL0 ≥ 1/α` needs no
//!   simulation (see the `mixture` module source). A pact's `min_shift` concentrates the bank
//!   on the changes that matter.
//! - Classical detectors with documented parameters: [`Cusum`] (known parameters, threshold
//!   from Siegmund's approximation), [`PageHinkley`], [`Adwin`], [`WindowedKs`], and
//!   [`BinnedWindow`] for windowed chi-squared and PSI.
//! - Absolute bounds: [`RateBound`], [`QuantileBound`], [`ZeroTolerance`].
//!
//! Invalid observations (NaN, ±inf, a string for a real metric, an unseen category once the
//! set is fixed) are rejected with a [`DetectorError`] and leave the state unchanged.

#![warn(missing_docs)]

mod adwin;
mod alarm;
mod auto;
mod bernoulli;
mod bound;
mod calibration;
mod categorical;
mod counts;
mod cusum;
mod detector;
mod epoch_hist;
mod error;
mod fast_exp;
mod hdr_serde;
mod interner;
mod mixture;
mod normal_score;
mod numeric;
mod overshoot;
mod page_hinkley;
mod real;
mod spec;
mod windowed;

pub use adwin::{Adwin, AdwinConfig};
pub use alarm::{Alarm, Estimate};
pub use auto::{AutoConfig, Calibration, Direction};
pub use bernoulli::AutoBernoulli;
pub use bound::{
    rate_confidence_interval, QuantileBound, QuantileBoundConfig, RateBound, RateBoundConfig, ZeroTolerance,
};
pub use calibration::TARGET as CALIBRATION_TARGET;
pub use categorical::AutoCategorical;
pub use cusum::{siegmund_arl0, Cusum, Family};
pub use detector::{Detector, MetricKind, Observation, View};
pub use error::DetectorError;
pub use page_hinkley::{PageHinkley, PageHinkleyConfig};
pub use real::AutoReal;
pub use spec::{AnyDetector, Binding, CusumSpec, DetectorSpec, DETECTOR_NAMES};
pub use windowed::{BinnedTest, BinnedWindow, WindowConfig, WindowedKs};

/// What the fuzz targets (`fuzz/`) reach inside the crate; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::hdr_serde::{readers_agree as hdr_v2_readers_agree, sample_v2 as hdr_v2_sample};
}
