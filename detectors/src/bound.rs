//! Absolute-bound tests: a contract limit rather than drift.
//!
//! Each test runs in *epochs*. Within an epoch two e-processes run on the same data:
//! one for "the limit is breached" and one for "the metric is under its exit threshold".
//! Each is a mixture, over a grid of alternatives, of likelihood ratios against the
//! boundary; by Ville's inequality an e-process crosses `1/α` with probability at most α
//! at *any* stopping time. When either crosses, the verdict is recorded and a new epoch
//! starts, so evidence never goes stale and a breach after a long compliant run is still
//! caught within about one epoch.

use crate::alarm::{Alarm, Estimate};
use crate::detector::{as_bool, as_real, Detector, Observation, View};
use crate::epoch_hist::EpochHistogram;
use crate::error::{check_rate, finite};
use crate::DetectorError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Log-odds shifts of the mixture alternatives: 1/16 to 8, ratio √2.
fn shifts() -> impl Iterator<Item = f64> {
    (0..15).map(|m| 0.0625 * 2f64.powf(m as f64 / 2.0))
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn logistic(l: f64) -> f64 {
    1.0 / (1.0 + (-l).exp())
}

const GRID: usize = 15;

/// Per alternative `j`, the log-likelihood ratios `(ln p1/p, ln (1-p1)/(1-p))` of a one
/// and of a zero against boundary `p`.
fn coefs(p: f64, up: bool) -> [(f64, f64); GRID] {
    let mut coefs = [(0.0, 0.0); GRID];
    for (slot, d) in coefs.iter_mut().zip(shifts()) {
        let p1 = logistic(logit(p) + if up { d } else { -d });
        *slot = ((p1 / p).ln(), ((1.0 - p1) / (1.0 - p)).ln());
    }
    coefs
}

/// [`coefs`] with what [`quiet_events`] needs of them.
#[derive(Clone, Copy)]
struct Coefs {
    c: [(f64, f64); GRID],
    /// The most one event can add to a term: `max_j max(a_j, b_j)`.
    step: f64,
    /// The largest coefficient's size, which scales the terms' rounding.
    size: f64,
}

impl Coefs {
    fn new(p: f64, up: bool) -> Coefs {
        let c = coefs(p, up);
        let step = c.iter().map(|(a, b)| a.max(*b)).fold(f64::MIN, f64::max);
        let size = c.iter().map(|(a, b)| a.abs().max(b.abs())).fold(0.0, f64::max);
        Coefs { c, step, size }
    }
}

/// One cache entry: the key `(p as bits, up)` and its coefficients.
type CachedCoefs = ((u64, bool), Coefs);

/// [`coefs`], cached. They depend only on `(p, up)`, so they are cached per thread
/// rather than kept in each detector: recomputing them costs 45 `ln`/`exp` per
/// event, and storing them would add 240 bytes to every key's state.
fn with_coefs<R>(p: f64, up: bool, f: impl FnOnce(&Coefs) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        /// `((p bits, up), coefs)`, oldest first.
        static CACHE: RefCell<Vec<CachedCoefs>> = const { RefCell::new(Vec::new()) };
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let key = (p.to_bits(), up);
        if let Some(i) = c.iter().position(|(k, _)| *k == key) {
            return f(&c[i].1);
        }
        let coefs = Coefs::new(p, up);
        // A handful of distinct boundaries exist (one or two per clause); bound the cache anyway.
        if c.len() >= 256 {
            c.remove(0);
        }
        c.push((key, coefs));
        f(&coefs)
    })
}

/// `ln` of the mixture e-value for `k` ones in `n` events against boundary rate `p`,
/// with alternatives above (`up`) or below it. With uniform weights `1/GRID` it lies in
/// `[m - ln GRID, m]`, where `m` is the largest log-likelihood ratio; `below` returns
/// early (with `None`) when `m < below`, i.e. when the e-value cannot reach `below`.
fn log_evalue_from(k: u64, n: u64, p: f64, up: bool, below: f64) -> Option<f64> {
    with_coefs(p, up, |coefs| log_mixture(k, n, &coefs.c, below).ok())
}

/// The log e-value, or `Err(m)` with the largest term when that is under `below`.
fn log_mixture(k: u64, n: u64, coefs: &[(f64, f64); GRID], below: f64) -> Result<f64, f64> {
    // Saturating: a stored state is not trusted to keep `k <= n`.
    let (k, f) = (k as f64, n.saturating_sub(k) as f64);
    let mut terms = [0.0; GRID];
    for (t, (a, b)) in terms.iter_mut().zip(coefs) {
        *t = k * a + f * b;
    }
    // A plain comparison, not `f64::max`: the terms are finite (finite coefficients and
    // counts), so NaN's ordering is not needed, and without it the maximum is one
    // instruction a term where `max` took three on one serial chain (3 % of the engine
    // bench's time).
    let m = terms.iter().fold(f64::MIN, |m, &t| if t > m { t } else { m });
    if m < below {
        return Err(m);
    }
    let sum: f64 = terms.iter().map(|t| (t - m).exp()).sum();
    Ok(m + sum.ln() - (GRID as f64).ln())
}

/// How many events after the `n`th, whose largest log-likelihood ratio is `m`, certainly
/// leave it, and so the log e-value, under `ln_threshold` (see [`EProcess::push`]). The
/// margin covers the rounding of the terms, about `2^-52` of their size each, evaluated now
/// and at any of the skipped events.
fn quiet_events(m: f64, n: u64, coefs: &Coefs, ln_threshold: f64) -> u64 {
    let step = coefs.step;
    let slack = 1e-9 + 1e-13 * coefs.size * (n as f64 + MAX_QUIET as f64);
    let room = ln_threshold - m - slack;
    if !(step > 0.0 && room > 0.0 && room.is_finite()) {
        return 0;
    }
    // `j` events add at most `j * step`: skip the `j` with `m + j * step < threshold - slack`.
    let j = (room / step).ceil() - 1.0;
    if j >= MAX_QUIET as f64 {
        MAX_QUIET
    } else if j > 0.0 {
        j as u64
    } else {
        0
    }
}

/// `ln` of the mixture e-value (exact; uncached, for one-off boundaries such as the
/// bisection of a confidence interval).
fn log_evalue(k: u64, n: u64, p: f64, up: bool) -> f64 {
    log_mixture(k, n, &coefs(p, up), f64::NEG_INFINITY).unwrap_or(f64::NEG_INFINITY)
}

/// An e-process on a stream of 0/1 outcomes against a boundary rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EProcess {
    boundary: f64,
    up: bool,
    n: u64,
    k: u64,
    /// Events to come that cannot take the e-value to the threshold last checked against
    /// (see [`EProcess::push`]). Not stored: a restored process evaluates its next event,
    /// which changes no verdict.
    ///
    /// 32 bits (at most [`MAX_QUIET`]), so that a process takes 32 bytes, not 48: a rate
    /// bound holds two inline in every clause state. Not keyed by the level it was computed
    /// for: every caller passes its configuration's, which never changes (a detector under
    /// another configuration is replaced, not bound).
    #[serde(skip)]
    quiet: u32,
}

/// Equal when the stored state is.
impl PartialEq for EProcess {
    fn eq(&self, o: &Self) -> bool {
        (self.boundary.to_bits(), self.up, self.n, self.k) == (o.boundary.to_bits(), o.up, o.n, o.k)
    }
}

/// The most skipped evaluations in a row, which also bounds the rounding the skip must allow
/// for.
const MAX_QUIET: u64 = 1 << 16;

impl EProcess {
    fn new(boundary: f64, up: bool) -> Self {
        EProcess { boundary, up, n: 0, k: 0, quiet: 0 }
    }

    /// Adds one outcome; whether the e-process is now at or above `ln(1/alpha)`.
    ///
    /// Why it may skip the evaluation: one event moves each alternative's log-likelihood
    /// ratio by `a_j` or `b_j`, so the largest, `m`, rises by at most `step = max_j max(a_j,
    /// b_j)` per event, and the log e-value never exceeds `m`. From an evaluation with `m`
    /// below the threshold, the next `(threshold - m) / step` events cannot reach it, so they
    /// are counted without evaluating (less a margin for rounding). The log e-value, a
    /// log-sum of those ratios with fixed weights, also rises by at most `step` per event; so
    /// from one computed below the threshold (with `m` above it, as near every crossing) the
    /// next `(threshold - log e) / step` are skipped the same way. In control that is most
    /// events, each of which cost 15 terms and a cache lookup for the breach and the
    /// compliance process of every bound clause. The verdicts are the same event by event.
    fn push(&mut self, x: bool, alpha: f64) -> bool {
        self.n = self.n.saturating_add(1);
        self.k = self.k.saturating_add(x as u64);
        // A skipped event costs no `ln` either.
        if self.quiet > 0 {
            self.quiet -= 1;
            return false;
        }
        let ln_threshold = (1.0 / alpha).ln();
        let (k, n) = (self.k, self.n);
        let (verdict, quiet) =
            with_coefs(self.boundary, self.up, |coefs| match log_mixture(k, n, &coefs.c, ln_threshold) {
                Ok(l) if l >= ln_threshold => (true, 0),
                // Between `m` and the threshold: the log e-value itself rises by at most
                // `step` per event too.
                Ok(l) => (false, quiet_events(l, n, coefs, ln_threshold)),
                Err(m) => (false, quiet_events(m, n, coefs, ln_threshold)),
            });
        // Fewer skipped events are always safe: the next one is evaluated.
        self.quiet = u32::try_from(quiet).unwrap_or(u32::MAX);
        verdict
    }
    fn log_e(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            log_evalue_from(self.k, self.n, self.boundary, self.up, f64::NEG_INFINITY)
                .unwrap_or(f64::NEG_INFINITY)
        }
    }
    fn clear(&mut self) {
        self.n = 0;
        self.k = 0;
        self.quiet = 0;
    }
}

/// The anytime-valid confidence interval `[lcb, ucb]` for a rate after `k` ones in `n`,
/// at level `alpha` (each side), by inverting the mixture e-values.
pub fn rate_confidence_interval(k: u64, n: u64, alpha: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let t = (1.0 / alpha).ln();
    let bis = |up: bool| {
        let (mut lo, mut hi) = (1e-9, 1.0 - 1e-9);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            let rejected = log_evalue(k, n, mid, up) >= t;
            // up: boundaries below the truth are rejected; the lcb is the largest rejected.
            if rejected == up {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    };
    let phat = k as f64 / n as f64;
    let lcb = if log_evalue(k, n, 1e-9, true) >= t { bis(true) } else { 0.0 };
    let ucb = if log_evalue(k, n, 1.0 - 1e-9, false) >= t { bis(false) } else { 1.0 };
    (lcb.min(phat), ucb.max(phat))
}

/// Options of [`RateBound`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateBoundConfig {
    /// The rate must stay at or below this (e.g. 0.02).
    pub limit: f64,
    /// Compliance is verified when the rate is shown to be below this (defaults to `limit`).
    #[serde(default)]
    pub exit: Option<f64>,
    /// Level of each verdict.
    pub alpha: f64,
}

/// Sequential test of "rate > limit" (breach) and "rate < exit" (compliance).
///
/// Inline in every clause state, so its size sets theirs if it is the largest kind: the
/// epoch's start is not held but derived (`n` less the events since the epoch began), and
/// the last compliance is an index with a sentinel. Both are stored as they were.
#[derive(Debug, Clone, PartialEq)]
pub struct RateBound {
    cfg: RateBoundConfig,
    breach: EProcess,
    comply: EProcess,
    n: u64,
    /// The event at which compliance was last verified, [`never::NONE`] for none.
    last_compliance: u64,
}

/// The stored form: every field as the derived form of the struct before the epoch's start
/// was derived wrote it.
#[derive(Serialize)]
struct StoredRate<'a> {
    cfg: &'a RateBoundConfig,
    breach: &'a EProcess,
    comply: &'a EProcess,
    n: u64,
    epoch_start: u64,
    #[serde(with = "never")]
    last_compliance: u64,
}

/// The stored form as read. The epoch's start follows from `n` and the processes in every
/// record this code or its predecessors wrote, so the stored one is not read back.
#[derive(Deserialize)]
struct RateRecord {
    cfg: RateBoundConfig,
    breach: EProcess,
    comply: EProcess,
    n: u64,
    #[serde(with = "never")]
    last_compliance: u64,
}

impl Serialize for RateBound {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredRate {
            cfg: &self.cfg,
            breach: &self.breach,
            comply: &self.comply,
            n: self.n,
            epoch_start: self.epoch_start(),
            last_compliance: self.last_compliance,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RateBound {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RateRecord::deserialize(d)?;
        // A corrupt record could count fewer events than its epoch: never below it, so
        // that the epoch's start cannot underflow.
        let n = r.n.max(r.breach.n);
        Ok(RateBound {
            cfg: r.cfg,
            breach: r.breach,
            comply: r.comply,
            n,
            last_compliance: r.last_compliance,
        })
    }
}

/// `Option<u64>` with `u64::MAX` for none: no event index reaches it.
mod never {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// None.
    pub const NONE: u64 = u64::MAX;

    pub fn get(v: u64) -> Option<u64> {
        (v != NONE).then_some(v)
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        get(*v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map_or(NONE, |v| v.min(NONE - 1)))
    }
}

impl RateBound {
    /// Whether `o` was built from the same configuration (see `AnyDetector::bind`).
    pub(crate) fn same_config(&self, o: &Self) -> bool {
        self.cfg == o.cfg
    }

    /// A bound test; `limit` and `exit` are rates in (0, 1), `exit <= limit`.
    pub fn new(cfg: RateBoundConfig) -> Result<Self, DetectorError> {
        check_rate("limit", cfg.limit)?;
        check_rate("alpha", cfg.alpha)?;
        let exit = check_rate("exit", cfg.exit.unwrap_or(cfg.limit))?;
        if exit > cfg.limit {
            return Err(DetectorError::param("exit", "must not exceed the limit"));
        }
        Ok(RateBound {
            breach: EProcess::new(cfg.limit, true),
            comply: EProcess::new(exit, false),
            cfg,
            n: 0,
            last_compliance: never::NONE,
        })
    }

    /// Feeds one outcome (1 = the counted event, e.g. a refusal).
    pub fn update_bool(&mut self, x: bool) -> Option<Box<Alarm>> {
        let i = self.n;
        self.n += 1;
        let alpha = self.cfg.alpha;
        let breached = self.breach.push(x, alpha);
        let complied = self.comply.push(x, alpha);
        if breached {
            let alarm = self.alarm(i, Estimate::Rate { p: self.cfg.limit }, None);
            self.new_epoch();
            return Some(Box::new(alarm));
        }
        if complied {
            self.last_compliance = i;
            self.new_epoch();
        }
        None
    }

    /// Both processes start again after the last event: the epoch's start moves to `n`.
    fn new_epoch(&mut self) {
        self.breach.clear();
        self.comply.clear();
    }

    /// The first event of the current epoch: both processes count the events since it.
    fn epoch_start(&self) -> u64 {
        self.n - self.breach.n
    }

    fn alarm(&self, i: u64, baseline: Estimate, current: Option<Estimate>) -> Alarm {
        let (k, n) = (self.breach.k, self.breach.n);
        let (lcb, ucb) = rate_confidence_interval(k, n, self.cfg.alpha);
        let mut params = BTreeMap::new();
        params.insert("limit".to_string(), self.cfg.limit);
        params.insert("exit".to_string(), self.comply.boundary);
        params.insert("alpha".to_string(), self.cfg.alpha);
        params.insert("lcb".to_string(), lcb);
        params.insert("ucb".to_string(), ucb);
        Alarm {
            detector: "rate-bound".into(),
            params,
            statistic: self.breach.log_e(),
            threshold: (1.0 / self.cfg.alpha).ln(),
            baseline,
            current: current.unwrap_or(Estimate::Rate { p: k as f64 / n as f64 }),
            n_reference: 0,
            n_current: n,
            change_point: self.epoch_start(),
            index: i,
            false_alarm_rate: Some(self.cfg.alpha),
            direction: "above_limit".into(),
        }
    }
}

impl Detector for RateBound {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        Ok(self.update_bool(as_bool(obs, "rate-bound")?))
    }
    fn view(&self) -> View {
        View {
            statistic: self.breach.log_e().max(0.0),
            threshold: (1.0 / self.cfg.alpha).ln(),
            n: self.n,
            ready: true,
        }
    }
    fn reset(&mut self) {
        *self = RateBound::new(self.cfg.clone()).expect("config was validated");
    }
    fn name(&self) -> &'static str {
        "rate-bound"
    }
    fn verified_in_control_at(&self) -> Option<u64> {
        never::get(self.last_compliance)
    }
}

/// Options of [`QuantileBound`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantileBoundConfig {
    /// The quantile, e.g. 0.95.
    pub quantile: f64,
    /// Its limit, e.g. 3000 (ms).
    pub limit: f64,
    /// Compliance is verified when the quantile is shown to be below this (defaults to `limit`).
    #[serde(default)]
    pub exit: Option<f64>,
    /// Level of each verdict.
    pub alpha: f64,
}

/// Sequential test of "quantile q > limit": the same e-processes as [`RateBound`] on the
/// indicator `x > limit` against rate `1 - q`, with a histogram of the epoch's values (the
/// bins of an HDR histogram, only those with a count) for the observed quantile in the
/// evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantileBound {
    cfg: QuantileBoundConfig,
    breach: EProcess,
    comply: EProcess,
    #[serde(with = "crate::hdr_serde")]
    hist: EpochHistogram,
    n: u64,
    epoch_start: u64,
    last_compliance: Option<u64>,
}

impl PartialEq for QuantileBound {
    fn eq(&self, o: &Self) -> bool {
        self.cfg == o.cfg
            && self.breach == o.breach
            && self.comply == o.comply
            && self.hist == o.hist
            && self.n == o.n
            && self.epoch_start == o.epoch_start
            && self.last_compliance == o.last_compliance
    }
}

/// Values are recorded in the histogram in thousandths, with 2 significant digits.
const HDR_SCALE: f64 = 1000.0;

impl QuantileBound {
    /// Whether `o` was built from the same configuration (see `AnyDetector::bind`).
    pub(crate) fn same_config(&self, o: &Self) -> bool {
        self.cfg == o.cfg
    }

    /// A quantile bound test.
    pub fn new(cfg: QuantileBoundConfig) -> Result<Self, DetectorError> {
        check_rate("quantile", cfg.quantile)?;
        check_rate("alpha", cfg.alpha)?;
        finite(cfg.limit).map_err(|_| DetectorError::param("limit", "must be finite"))?;
        let exit = cfg.exit.unwrap_or(cfg.limit);
        if !(exit.is_finite() && exit <= cfg.limit) {
            return Err(DetectorError::param("exit", "must be finite and not exceed the limit"));
        }
        let hist = EpochHistogram::default();
        let tail = 1.0 - cfg.quantile;
        Ok(QuantileBound {
            breach: EProcess::new(tail, true),
            comply: EProcess::new(tail, false),
            cfg,
            hist,
            n: 0,
            epoch_start: 0,
            last_compliance: None,
        })
    }

    /// The observed quantile of this epoch's values, if any.
    pub fn observed(&self) -> Option<f64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(self.cfg.quantile) as f64 / HDR_SCALE)
    }

    /// Feeds one finite value.
    pub fn update_value(&mut self, x: f64) -> Option<Box<Alarm>> {
        let i = self.n;
        self.n += 1;
        let alpha = self.cfg.alpha;
        // Negative values cannot breach an upper quantile bound; the histogram holds 0 for them.
        self.hist.record((x.max(0.0) * HDR_SCALE).min(u64::MAX as f64 / 4.0) as u64);
        let breached = self.breach.push(x > self.cfg.limit, alpha);
        let complied = self.comply.push(x > self.cfg.exit.unwrap_or(self.cfg.limit), alpha);
        if breached {
            let alarm = self.alarm(i);
            self.new_epoch(i);
            return Some(Box::new(alarm));
        }
        if complied {
            self.last_compliance = Some(i);
            self.new_epoch(i);
        }
        None
    }

    fn new_epoch(&mut self, i: u64) {
        self.breach.clear();
        self.comply.clear();
        self.hist.reset();
        self.epoch_start = i + 1;
    }

    fn alarm(&self, i: u64) -> Alarm {
        let (k, n) = (self.breach.k, self.breach.n);
        let (lcb, ucb) = rate_confidence_interval(k, n, self.cfg.alpha);
        let mut params = BTreeMap::new();
        params.insert("quantile".to_string(), self.cfg.quantile);
        params.insert("limit".to_string(), self.cfg.limit);
        params.insert("exit".to_string(), self.cfg.exit.unwrap_or(self.cfg.limit));
        params.insert("alpha".to_string(), self.cfg.alpha);
        params.insert("exceedance_lcb".to_string(), lcb);
        params.insert("exceedance_ucb".to_string(), ucb);
        Alarm {
            detector: "quantile-bound".into(),
            params,
            statistic: self.breach.log_e(),
            threshold: (1.0 / self.cfg.alpha).ln(),
            baseline: Estimate::Quantile { q: self.cfg.quantile, value: self.cfg.limit },
            current: Estimate::Quantile { q: self.cfg.quantile, value: self.observed().unwrap_or(0.0) },
            n_reference: 0,
            n_current: n,
            change_point: self.epoch_start,
            index: i,
            false_alarm_rate: Some(self.cfg.alpha),
            direction: "above_limit".into(),
        }
    }
}

impl Detector for QuantileBound {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        Ok(self.update_value(as_real(obs, "quantile-bound")?))
    }
    fn view(&self) -> View {
        View {
            statistic: self.breach.log_e().max(0.0),
            threshold: (1.0 / self.cfg.alpha).ln(),
            n: self.n,
            ready: true,
        }
    }
    fn reset(&mut self) {
        *self = QuantileBound::new(self.cfg.clone()).expect("config was validated");
    }
    fn name(&self) -> &'static str {
        "quantile-bound"
    }
    fn verified_in_control_at(&self) -> Option<u64> {
        self.last_compliance
    }
}

/// Zero tolerance: every counted event (e.g. PII found) is a breach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZeroTolerance {
    n: u64,
    count: u64,
}

impl ZeroTolerance {
    /// A zero-tolerance counter.
    pub fn new() -> Self {
        ZeroTolerance { n: 0, count: 0 }
    }
}

impl Default for ZeroTolerance {
    fn default() -> Self {
        Self::new()
    }
}

impl Detector for ZeroTolerance {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let x = as_bool(obs, "zero-tolerance")?;
        let i = self.n;
        self.n += 1;
        if !x {
            return Ok(None);
        }
        self.count += 1;
        Ok(Some(Box::new(Alarm {
            detector: "zero-tolerance".into(),
            params: BTreeMap::new(),
            statistic: self.count as f64,
            threshold: 1.0,
            baseline: Estimate::Rate { p: 0.0 },
            current: Estimate::Rate { p: self.count as f64 / self.n as f64 },
            n_reference: 0,
            n_current: 1,
            change_point: i,
            index: i,
            false_alarm_rate: Some(0.0),
            direction: "occurred".into(),
        })))
    }
    fn view(&self) -> View {
        View { statistic: self.count as f64, threshold: 1.0, n: self.n, ready: true }
    }
    fn reset(&mut self) {
        *self = ZeroTolerance::new();
    }
    fn name(&self) -> &'static str {
        "zero-tolerance"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last compliance is stored as the `Option` it was, none or an event index, and
    /// reads back the same.
    #[test]
    fn the_last_compliance_is_stored_as_an_option() {
        #[derive(Serialize)]
        struct AsOption<'a> {
            cfg: &'a RateBoundConfig,
            breach: &'a EProcess,
            comply: &'a EProcess,
            n: u64,
            epoch_start: u64,
            last_compliance: Option<u64>,
        }
        let mut b = RateBound::new(RateBoundConfig { limit: 0.2, exit: None, alpha: 1e-3 }).unwrap();
        for verified in [false, true] {
            if verified {
                while b.verified_in_control_at().is_none() {
                    b.update_bool(false);
                }
            }
            let old = AsOption {
                cfg: &b.cfg,
                breach: &b.breach,
                comply: &b.comply,
                n: b.n,
                // The epoch starts after the last verdict, here the compliance.
                epoch_start: b.verified_in_control_at().map_or(0, |i| i + 1),
                last_compliance: b.verified_in_control_at(),
            };
            assert_eq!(old.last_compliance.is_some(), verified);
            let bytes = rmp_serde::to_vec_named(&b).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec_named(&old).unwrap());
            let back: RateBound = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, b);
            assert_eq!(back.verified_in_control_at(), old.last_compliance);
        }
        // Then a breach: its change point is the epoch's start, and the next epoch starts after it.
        let start = b.n;
        let alarm = (0..10_000).find_map(|_| b.update_bool(true)).expect("a rate of 1 breaches 0.2");
        assert_eq!(alarm.change_point, start);
        assert_eq!(b.epoch_start(), alarm.index + 1);
        // A corrupt record that counts fewer events than its epoch reads without underflow.
        let mut v: serde_json::Value = serde_json::to_value(&b).unwrap();
        v["n"] = serde_json::json!(0);
        v["breach"]["n"] = serde_json::json!(3);
        let odd: RateBound = serde_json::from_value(v).unwrap();
        assert_eq!(odd.epoch_start(), 0);
    }

    #[test]
    fn skipped_evaluations_change_no_verdict_event_by_event() {
        use rand::{Rng, SeedableRng};
        // Each process against the exact evaluation at every event, over streams in control,
        // at the boundary and beyond it, restarting on each crossing as the bounds do.
        let mut rng = rand_pcg::Pcg64::seed_from_u64(16);
        let (mut crossings, mut skipped, mut events, mut band) = (0u64, 0u64, 0u64, 0u64);
        for &(boundary, up) in &[(0.2, true), (0.15, false), (0.05, true), (0.05, false), (0.001, true)] {
            for &rate in &[0.0, 0.01, 0.05, 0.1, 0.14, 0.15, 0.2, 0.21, 0.3, 1.0] {
                for &alpha in &[1e-3, 1e-6] {
                    let t = (1.0f64 / alpha).ln();
                    let mut e = EProcess::new(boundary, up);
                    for _ in 0..20_000 {
                        let x = rng.random::<f64>() < rate;
                        let would_skip = e.quiet > 0;
                        let got = e.push(x, alpha);
                        // `None` while the largest ratio is under the threshold.
                        let exact = log_evalue_from(e.k, e.n, boundary, up, t);
                        assert_eq!(
                            got,
                            exact.is_some_and(|l| l >= t),
                            "p {boundary} up {up} rate {rate} at n {}",
                            e.n
                        );
                        events += 1;
                        skipped += would_skip as u64;
                        // Skipped with the largest ratio already above the threshold: a skip
                        // from the log e-value itself.
                        band += (would_skip && exact.is_some()) as u64;
                        if got {
                            crossings += 1;
                            e.clear();
                        }
                    }
                }
            }
        }
        // The streams reach the thresholds many times, and most evaluations are skipped.
        assert!(crossings > 1_000, "{crossings} crossings");
        assert!(skipped * 2 > events, "{skipped} of {events} skipped");
        // A skip from `m` alone ends before `m` reaches the threshold, so these are all skips
        // from the log e-value (27,005 with this seed).
        assert!(band > 10_000, "{band} of {skipped} skipped near a crossing");
    }

    #[test]
    fn a_restored_process_evaluates_again_and_equals_the_running_one() {
        let mut e = EProcess::new(0.2, true);
        for i in 0..50 {
            e.push(i % 10 == 0, 1e-3);
        }
        assert!(e.quiet > 0);
        let back: EProcess = rmp_serde::from_slice(&rmp_serde::to_vec_named(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.quiet, 0);
    }

    #[test]
    fn all_ones_breach_quickly_and_zeros_verify_compliance() {
        let mut b = RateBound::new(RateBoundConfig { limit: 0.02, exit: None, alpha: 1e-3 }).unwrap();
        // All ones: the breach e-value grows fast.
        let at = (0..100).find(|_| b.update_bool(true).is_some()).expect("breach");
        assert!(at < 10, "{at}");
        let mut c = RateBound::new(RateBoundConfig { limit: 0.02, exit: None, alpha: 1e-3 }).unwrap();
        for _ in 0..2000 {
            assert!(c.update_bool(false).is_none());
        }
        assert!(c.verified_in_control_at().is_some());
    }

    #[test]
    fn confidence_interval_contains_estimate_and_narrows() {
        let (l1, u1) = rate_confidence_interval(10, 100, 0.05);
        let (l2, u2) = rate_confidence_interval(100, 1000, 0.05);
        assert!(l1 < 0.1 && 0.1 < u1);
        assert!(l2 < 0.1 && 0.1 < u2);
        assert!(u2 - l2 < u1 - l1);
    }

    #[test]
    fn zero_tolerance_alarms_on_first_occurrence() {
        let mut z = ZeroTolerance::new();
        assert!(z.update(Observation::Bool(false)).unwrap().is_none());
        let a = z.update(Observation::Bool(true)).unwrap().expect("breach");
        assert_eq!(a.index, 1);
    }
}
