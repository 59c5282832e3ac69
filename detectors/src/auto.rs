//! Configuration and bank construction shared by the `auto` detectors.

use crate::error::{check_positive, check_rate};
use crate::mixture::{inflation, kappa_grid, MixtureSr};
use crate::DetectorError;
use serde::{Deserialize, Serialize};

/// Which changes a detector looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Direction {
    /// Increases and decreases (for real metrics: location up/down and scale up/down).
    #[default]
    Both,
    /// Only increases (rate up; location or scale up).
    Increase,
    /// Only decreases.
    Decrease,
}

impl Direction {
    /// Whether a change with this sign (`true` = up) is watched.
    pub fn allows(self, up: bool) -> bool {
        match self {
            Direction::Both => true,
            Direction::Increase => up,
            Direction::Decrease => !up,
        }
    }
}

/// How the `auto` detectors set their threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Calibration {
    /// Spend the false-alarm budget: the threshold comes down by the bank's mean overshoot
    /// constant `ζ` and a simulated residual factor, so the realised rate is about
    /// `0.8 × false_alarm_rate` rather than 0.3 to 0.7 of it.
    #[default]
    Calibrated,
    /// The provable bound: threshold `1/α` and weights that sum to one, so `ARL0 ≥ 1/α` by
    /// optional stopping (for a known baseline). The realised rate is typically 0.3 to 0.7 α;
    /// alarms take about `ln 2` nats more evidence. For clauses that need a certificate.
    Bound,
}

/// Options of the `auto` detectors. Every default is chosen from theory, not from a
/// benchmark: see the crate documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AutoConfig {
    /// Target false alarms per in-control event (`α`); the threshold is `A = 1/α`.
    pub false_alarm_rate: f64,
    /// Which changes to watch.
    pub direction: Direction,
    /// Events of baseline learned before monitoring starts.
    pub reference_min: u64,
    /// The baseline keeps learning, in doubling stages, up to this many events, then freezes.
    pub reference_max: u64,
    /// Smallest per-event information (nats) of an alternative in the bank.
    pub kappa_min: f64,
    /// Largest per-event information (nats) of an alternative in the bank.
    pub kappa_max: f64,
    /// Ratio between neighbouring information levels.
    pub grid_ratio: f64,
    /// Alternatives whose false-alarm inflation from the estimated baseline exceeds this are
    /// left out until the baseline is larger.
    pub max_inflation: f64,
    /// Categorical only: most distinct categories.
    pub max_categories: usize,
    /// Threshold calibration: `calibrated` (the default) or `bound`.
    pub calibration: Calibration,
    /// The smallest change that matters, in metric units: an absolute rate change for
    /// bernoulli metrics (`0.03`), a location shift in baseline standard deviations (or a
    /// scale change by the factor `1 + min_shift`) for real metrics, and a change of one
    /// category's share for categorical metrics. The bank then starts at that change and puts
    /// most of its weight there, for oracle-like speed at and above it; smaller changes are
    /// not watched.
    pub min_shift: Option<f64>,
}

impl Default for AutoConfig {
    fn default() -> Self {
        AutoConfig {
            false_alarm_rate: 1e-5,
            direction: Direction::Both,
            reference_min: 1000,
            reference_max: 16384,
            kappa_min: 1.0 / 2048.0,
            kappa_max: 0.5,
            grid_ratio: 2.0,
            max_inflation: 20.0,
            max_categories: crate::categorical::DEFAULT_MAX_CATEGORIES,
            calibration: Calibration::Calibrated,
            min_shift: None,
        }
    }
}

impl AutoConfig {
    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), DetectorError> {
        check_rate("false_alarm_rate", self.false_alarm_rate)?;
        if self.reference_min < 10 {
            return Err(DetectorError::param("reference_min", "must be at least 10"));
        }
        if self.reference_max < self.reference_min {
            return Err(DetectorError::param("reference_max", "must be at least reference_min"));
        }
        // The learned CDF counts its baseline in 32 bits (see `normal_score`).
        if self.reference_max > u64::from(u32::MAX) {
            return Err(DetectorError::param("reference_max", format!("must be at most {}", u32::MAX)));
        }
        check_positive("kappa_min", self.kappa_min)?;
        check_positive("kappa_max", self.kappa_max)?;
        if self.kappa_max < self.kappa_min {
            return Err(DetectorError::param("kappa_max", "must be at least kappa_min"));
        }
        if !(self.grid_ratio.is_finite() && self.grid_ratio > 1.0) {
            return Err(DetectorError::param("grid_ratio", "must be greater than 1"));
        }
        if !(self.max_inflation.is_finite() && self.max_inflation >= 1.0) {
            return Err(DetectorError::param("max_inflation", "must be at least 1"));
        }
        if let Some(m) = self.min_shift {
            check_positive("min_shift", m)?;
        }
        Ok(())
    }

    /// Checks `min_shift` against the metric kind: a rate or share change must be below 1.
    pub fn validate_for(&self, kind: crate::MetricKind) -> Result<(), DetectorError> {
        self.validate()?;
        match (kind, self.min_shift) {
            (crate::MetricKind::Bernoulli | crate::MetricKind::Categorical, Some(m)) if m >= 1.0 => {
                Err(DetectorError::param(
                    "min_shift",
                    format!("is a change of a rate or share: must be below 1, got {m}"),
                ))
            }
            (crate::MetricKind::Real, Some(m)) if m > 10.0 => Err(DetectorError::param(
                "min_shift",
                format!("is a shift in baseline standard deviations: must be at most 10, got {m}"),
            )),
            _ => Ok(()),
        }
    }

    /// The alarm threshold `A` on the mixture statistic.
    pub(crate) fn threshold(&self, kind: crate::MetricKind) -> f64 {
        match self.calibration {
            Calibration::Bound => 1.0 / self.false_alarm_rate,
            Calibration::Calibrated => {
                crate::calibration::residual(kind, self.false_alarm_rate)
                    / (self.false_alarm_rate * crate::calibration::TARGET)
            }
        }
    }

    /// `ln A`, the alarm threshold in nats.
    pub fn log_threshold(&self) -> f64 {
        (1.0 / self.false_alarm_rate).ln()
    }

    /// The information levels of the bank.
    pub(crate) fn kappas(&self) -> Vec<f64> {
        kappa_grid(self.kappa_min, self.kappa_max, self.grid_ratio)
    }

    /// The reference size at which the bank is rebuilt next, after one built at `built`.
    pub(crate) fn next_stage(&self, built: u64) -> u64 {
        if built == 0 {
            self.reference_min
        } else {
            (built.saturating_mul(2)).min(self.reference_max)
        }
    }

    /// A fingerprint of everything a bank is derived from besides the data: this
    /// configuration, the metric kind and [`BANK_VERSION`]. A stored detector keeps only the
    /// fingerprint; the configuration comes back from the pact when the detector is bound
    /// (see `AnyDetector::bind`), and a mismatch means the statistics were gathered under
    /// another bank. FNV-1a over fixed-width fields, so it is the same on every build.
    pub(crate) fn fingerprint(&self, kind: crate::MetricKind, extra: u64) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |v: u64| {
            for b in v.to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(BANK_VERSION);
        eat(kind as u64);
        eat(self.false_alarm_rate.to_bits());
        eat(self.direction as u64);
        eat(self.reference_min);
        eat(self.reference_max);
        eat(self.kappa_min.to_bits());
        eat(self.kappa_max.to_bits());
        eat(self.grid_ratio.to_bits());
        eat(self.max_inflation.to_bits());
        eat(self.max_categories as u64);
        eat(self.calibration as u64);
        eat(self.min_shift.map_or(u64::MAX, f64::to_bits));
        eat(extra);
        h
    }

    /// Parameters recorded in alarms.
    pub(crate) fn params(&self) -> std::collections::BTreeMap<String, f64> {
        [
            ("false_alarm_rate", self.false_alarm_rate),
            ("reference_min", self.reference_min as f64),
            ("reference_max", self.reference_max as f64),
            ("kappa_min", self.kappa_min),
            ("kappa_max", self.kappa_max),
            ("grid_ratio", self.grid_ratio),
            ("max_inflation", self.max_inflation),
            ("calibrated", (self.calibration == Calibration::Calibrated) as u8 as f64),
            ("min_shift", self.min_shift.unwrap_or(0.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// A stored threshold, refused unless it is a positive number, as every bank's is: a corrupt
/// one at or below zero alarmed on a bank without members, whose alarm has no winner to
/// describe (a panic found by the changelog fuzz target).
pub(crate) fn stored_threshold<E: serde::de::Error>(t: f64) -> Result<f64, E> {
    if t > 0.0 {
        Ok(t)
    } else {
        Err(E::custom(format!("stored threshold {t} is not a positive number")))
    }
}

/// The configuration a decoded `auto` detector holds until [`crate::AnyDetector::bind`]
/// gives it its clause's: one shared value, so that a restore allocates none per key.
pub(crate) fn default_config() -> std::sync::Arc<AutoConfig> {
    static DEFAULT: std::sync::LazyLock<std::sync::Arc<AutoConfig>> =
        std::sync::LazyLock::new(|| std::sync::Arc::new(AutoConfig::default()));
    std::sync::Arc::clone(&DEFAULT)
}

/// What a stored `auto` detector's record leaves out, and whether it is back: the
/// configuration (stored as its fingerprint, given back by the clause in
/// `AnyDetector::bind`) and the bank (derived again from the baseline before the next event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restoration {
    /// The configuration's fingerprint (see [`AutoConfig::fingerprint`]).
    pub fingerprint: u64,
    /// The configuration is in place (false after decoding until bound).
    pub bound: bool,
    /// The bank's derived parts are in place.
    pub derived: bool,
}

/// An `auto` detector, as restored from a record that leaves out its configuration.
pub(crate) trait Restorable: Clone {
    /// Its restoration state.
    fn restoration(&self) -> Restoration;
    /// The same, to change.
    fn restoration_mut(&mut self) -> &mut Restoration;
    /// Takes what the record left out (the configuration, and the threshold before the
    /// first bank) from `proto`, a fresh detector of its clause.
    fn adopt(&mut self, proto: &Self);
}

/// Binds a decoded detector to `proto` (see `AnyDetector::bind`): false, and it becomes
/// `proto`, when it was stored under another configuration.
pub(crate) fn bind<T: Restorable>(d: &mut T, proto: &T) -> bool {
    if d.restoration().fingerprint != proto.restoration().fingerprint {
        *d = proto.clone();
        return false;
    }
    if !d.restoration().bound {
        d.adopt(proto);
        d.restoration_mut().bound = true;
    }
    true
}

impl Restoration {
    /// A detector built from its configuration: nothing to restore.
    pub fn fresh(fingerprint: u64) -> Self {
        Restoration { fingerprint, bound: true, derived: true }
    }

    /// For the fresh detector a reset puts in this one's place: an unbound one stays
    /// unbound, as its configuration is still to come.
    pub fn after_reset(self) -> Self {
        Restoration { derived: true, ..self }
    }
}

/// The version of the bank construction (`build_bank` and the detectors' candidate
/// families). Bump it whenever a change would give a stored detector a different bank for
/// the same data: its fingerprint then no longer matches, and the detector relearns instead
/// of pairing old statistics with new members.
pub(crate) const BANK_VERSION: u64 = 1;

/// A candidate alternative: a stable id, its information per event and whether it sits at
/// the pact's `min_shift`.
pub(crate) struct Candidate {
    pub id: u32,
    pub kappa: f64,
    pub at_min_shift: bool,
}

/// Largest log-likelihood ratio one event may add to a member (nats).
///
/// Why: a member whose single events jump by many nats (a rate of 0.3% tested against 60%)
/// walks on a coarse lattice, and its overshoot over the threshold, so its false-alarm rate,
/// depends on where the threshold falls on that lattice: it cannot be calibrated. Such
/// changes are caught within a few events by the members below the cap anyway.
pub(crate) const MAX_JUMP: f64 = 3.0;

/// Information per event (nats) above which a member's prior weight declines as `1/κ`.
///
/// Why: the evidence a smaller weight costs, `ln(1/w)` nats, takes `ln(1/w)/κ` events to
/// gather. Above `1/8` nat per event a change is verified within about a hundred events, so
/// shifting weight from those members to the subtle ones costs the large changes a few
/// events (about 2 at κ = 1/2) and buys the small ones, where every nat is tens of events.
const KAPPA_FULL: f64 = 0.125;

/// Share of the prior on the members at `min_shift` when it is set.
const MIN_SHIFT_SHARE: f64 = 0.8;

/// Refuses a configuration under which no member could ever enter the bank: with a baseline
/// of `reference_max` events, every candidate's inflation (see [`build_bank`]) exceeds
/// `max_inflation`, so the detector would watch without ever being able to alarm. The error
/// names the smallest `reference_max` that admits the largest member.
pub(crate) fn check_bank_possible(
    cfg: &AutoConfig,
    kind: crate::MetricKind,
    candidates: &[Candidate],
) -> Result<(), DetectorError> {
    let log_a_eff = cfg.threshold(kind).ln() + (candidates.len().max(1) as f64).ln();
    let n = cfg.reference_max as f64;
    if candidates.iter().any(|c| inflation(log_a_eff, n, c.kappa) <= cfg.max_inflation) {
        return Ok(());
    }
    let kappa = candidates.iter().map(|c| c.kappa).fold(0.0, f64::max);
    let need = (log_a_eff * log_a_eff / (kappa * cfg.max_inflation.ln())).ceil();
    Err(DetectorError::param(
        "reference_max",
        format!(
            "{} events are too few to judge any change at false_alarm_rate {}: the detector could never alarm; use at least {need}",
            cfg.reference_max, cfg.false_alarm_rate
        ),
    ))
}

/// Chooses the members of a bank from `candidates` for a baseline of `n` events: returns the
/// indices kept (into `candidates`), a fresh [`MixtureSr`] with their weights (carrying over
/// the statistics of `old` members with the same id) and the threshold `A`.
///
/// Member `j` contributes about `w_j ζ_j F_j / A` false alarms per event, where `F_j` is its
/// inflation from the estimated baseline (see [`inflation`]) and `ζ_j` its overshoot
/// constant. Weights are `w_j = π_j / F_j`; a bound bank keeps `A = 1/α` (so the rate is at
/// most `α` to first order), a calibrated one lowers `A` by `Σ w_j F_j ζ_j` so the rate is
/// about `α`. Members whose inflation exceeds `max_inflation` are left out: the first-order
/// inflation is no longer reliable there.
pub(crate) fn build_bank<const AUX: bool>(
    cfg: &AutoConfig,
    kind: crate::MetricKind,
    candidates: &[Candidate],
    zeta_of: impl Fn(usize) -> f64,
    n: u64,
    old: Option<&MixtureSr<AUX>>,
) -> (Vec<usize>, MixtureSr<AUX>, f64) {
    let calibrated = cfg.calibration == Calibration::Calibrated;
    let log_a = cfg.threshold(kind).ln();
    let prior = |c: &[&Candidate]| -> Vec<f64> {
        let mass = |c: &Candidate| {
            if calibrated {
                (KAPPA_FULL / c.kappa).min(1.0)
            } else {
                1.0
            }
        };
        let total =
            |at_min: bool| c.iter().filter(|c| c.at_min_shift == at_min).map(|c| mass(c)).sum::<f64>();
        let (at_min, rest) = (total(true), total(false));
        let share = |at_min_shift: bool| match (at_min > 0.0, rest > 0.0) {
            (true, true) if at_min_shift => MIN_SHIFT_SHARE / at_min,
            (true, true) => (1.0 - MIN_SHIFT_SHARE) / rest,
            _ => 1.0 / (at_min + rest),
        };
        c.iter().map(|c| mass(c) * share(c.at_min_shift)).collect()
    };
    // Inflation at `ln(A · candidates)`: it decides who is in the bank and sets the weights.
    let log_a_eff = log_a + (candidates.len().max(1) as f64).ln();
    let inflations: Vec<f64> = candidates.iter().map(|c| inflation(log_a_eff, n as f64, c.kappa)).collect();
    let mut kept: Vec<usize> =
        (0..candidates.len()).filter(|&i| inflations[i] <= cfg.max_inflation).collect();
    // Never blind: when the estimated baseline is too short for every candidate (a rate near
    // 0 or 1 leaves only small-information members), the least inflated one stays. Its
    // weight `1/F` keeps the false-alarm bound; it costs `ln F` nats of delay.
    if kept.is_empty() {
        let finite = (0..candidates.len()).filter(|&i| inflations[i].is_finite());
        kept.extend(finite.min_by(|&a, &b| inflations[a].total_cmp(&inflations[b])));
    }
    let f: Vec<f64> = kept.iter().map(|&i| inflations[i]).collect();
    let members: Vec<&Candidate> = kept.iter().map(|&i| &candidates[i]).collect();
    let pi = prior(&members);
    // Every member gets its prior share of the budget after its inflation (`Σ w_j F_j = 1`);
    // dividing by `ζ_j` as well would move weight from small changes to large ones, whose
    // statistics overshoot most, and slow the detection of exactly the subtle drifts.
    let w: Vec<f64> = pi.iter().zip(&f).map(|(p, f)| p / f).collect();
    // Calibrated: the realised rate is about `Σ w_j F_j ζ_j / A` (see `overshoot`), so the
    // threshold comes down by that weighted mean overshoot constant. ζ costs a short series
    // per member, so only kept members get one.
    let mut threshold = cfg.threshold(kind);
    if calibrated {
        let zeta_bar: f64 = kept.iter().zip(&w).zip(&f).map(|((&i, w), f)| w * f * zeta_of(i)).sum();
        if zeta_bar > 0.0 {
            threshold *= zeta_bar;
        }
    }
    let mut sr = MixtureSr::new(crate::mixture::members(members.iter().map(|c| c.id), &w));
    if let Some(old) = old {
        sr.inherit(old);
    }
    (kept, sr, threshold)
}

/// The sizes `(id, size, at_min_shift)` of one family of members: from `min_size` (the pact's
/// `min_shift` in this family's units) up by doublings of the information to `kappa_max`, or
/// on the information grid. `size_of` maps information to size, `kappa_of` back.
pub(crate) fn member_sizes(
    cfg: &AutoConfig,
    min_size: Option<f64>,
    size_of: impl Fn(f64) -> f64,
    kappa_of: impl Fn(f64) -> f64,
) -> Vec<(u32, f64, bool)> {
    match min_size {
        None => cfg.kappas().into_iter().enumerate().map(|(m, k)| (m as u32, size_of(k), false)).collect(),
        Some(size) => {
            let size = size.abs();
            let mut out = vec![(0, size, true)];
            let mut s = size * std::f64::consts::SQRT_2;
            while kappa_of(s) <= cfg.kappa_max && out.len() < 32 {
                out.push((out.len() as u32, s, false));
                s *= std::f64::consts::SQRT_2;
            }
            out
        }
    }
}

/// `ln Λ`, floored at 0 (no evidence), for views.
pub(crate) fn log_stat(lambda: f64) -> f64 {
    if lambda > 1.0 {
        lambda.ln()
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricKind;

    /// A stored threshold that is not a positive number is refused by every auto kind, and
    /// the one it stored reads back.
    #[test]
    fn a_stored_threshold_at_or_below_zero_is_refused() {
        use crate::{AutoBernoulli, AutoCategorical, AutoReal};
        use serde::de::DeserializeOwned;
        fn check<T: serde::Serialize + DeserializeOwned>(d: &T) {
            let mut v = serde_json::to_value(d).unwrap();
            assert!(serde_json::from_value::<T>(v.clone()).is_ok(), "{v}");
            for bad in [serde_json::json!(0.0), serde_json::json!(-1.0), serde_json::Value::Null] {
                v["t"] = bad.clone();
                let e = serde_json::from_value::<T>(v.clone()).err().map(|e| e.to_string());
                assert!(e.is_some(), "{bad} read");
            }
            v["t"] = serde_json::json!(-2.5);
            let e = serde_json::from_value::<T>(v).err().unwrap().to_string();
            assert!(e.contains("stored threshold -2.5 is not a positive number"), "{e}");
        }
        check(&AutoBernoulli::new(AutoConfig::default()).unwrap());
        check(&AutoReal::new(AutoConfig::default()).unwrap());
        check(&AutoCategorical::new(AutoConfig::default(), 8).unwrap());
    }

    #[test]
    fn a_baseline_longer_than_32_bit_counts_hold_is_refused_by_name() {
        let at = |reference_max| AutoConfig { reference_max, ..AutoConfig::default() }.validate();
        assert!(at(u64::from(u32::MAX)).is_ok());
        let e = at(u64::from(u32::MAX) + 1).unwrap_err().to_string();
        assert!(e.contains("reference_max") && e.contains("at most 4294967295"), "{e}");
    }

    #[test]
    fn a_rate_near_one_with_a_short_baseline_still_detects_a_fall() {
        // 390 of 400 baseline events (p0 ≈ 0.97) at 1e-6, falls only: every candidate's
        // inflation exceeded the cap, the bank was empty, and a fall to 0.2 went unseen.
        let cfg = AutoConfig {
            false_alarm_rate: 1e-6,
            direction: Direction::Decrease,
            reference_min: 200,
            reference_max: 400,
            ..AutoConfig::default()
        };
        let mut d = crate::AutoBernoulli::new(cfg).unwrap();
        for i in 0..400 {
            assert!(d.update_bool(i % 40 != 0).is_none(), "no alarm in the baseline");
        }
        // One event in five verified. With the least inflated member kept (p1 ≈ 0.5, about
        // 2.1 nats per event against a threshold of ln 1e6 + ln F ≈ 18), it takes ~9 events.
        let at = (0..200).find(|i| d.update_bool(i % 5 == 0).is_some());
        assert!(at.is_some_and(|i| i < 20), "detected at {at:?}");
    }

    #[test]
    fn min_shift_is_validated_per_metric_kind() {
        let cfg = |m: f64| AutoConfig { min_shift: Some(m), ..AutoConfig::default() };
        assert!(cfg(0.03).validate_for(MetricKind::Bernoulli).is_ok());
        assert!(cfg(1.5).validate_for(MetricKind::Real).is_ok());
        for (m, kind) in [
            (1.0, MetricKind::Bernoulli),
            (1.2, MetricKind::Categorical),
            (0.0, MetricKind::Real),
            (-0.1, MetricKind::Bernoulli),
            (11.0, MetricKind::Real),
        ] {
            let err = cfg(m).validate_for(kind).unwrap_err();
            assert!(
                matches!(err, DetectorError::InvalidParameter { name: "min_shift", .. }),
                "{m} {kind:?}: {err}"
            );
        }
    }

    #[test]
    fn bound_threshold_is_one_over_alpha_and_calibrated_is_lower() {
        let bound = AutoConfig { calibration: Calibration::Bound, ..AutoConfig::default() };
        assert!((bound.threshold(MetricKind::Bernoulli) / 1e5 - 1.0).abs() < 1e-12);
        // Before the overshoot factor (≤ 1) the calibrated threshold is r/(0.8 α) with r < 0.8.
        assert!(AutoConfig::default().threshold(MetricKind::Bernoulli) < 1e5);
    }
}
