//! `auto-real`: mixture Shiryaev–Roberts on normal scores, for real metrics.

use crate::alarm::{Alarm, Estimate};
use crate::auto::{
    build_bank, check_bank_possible, log_stat, member_sizes, AutoConfig, Candidate, Restorable, Restoration,
};
use crate::detector::{as_real, Detector, MetricKind, Observation, View};
use crate::mixture::MixtureSr;
use crate::normal_score::NormalScore;
use crate::overshoot::{zeta_gaussian, zeta_scale};
use crate::DetectorError;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock, OnceLock};

/// Largest `β` of a scale-up member (`σ² = 1/(1-β)`), keeping its likelihood ratio bounded.
const MAX_BETA: f64 = 0.9;

/// Detects changes in location *and* scale (tails) of a real metric without knowing either
/// distribution.
///
/// Values are mapped to normal scores through the baseline's empirical CDF
/// (rank-based, so the calibration holds for skewed and heavy-tailed data). The bank holds
/// location alternatives `N(±θ, 1)` and scale alternatives `N(0, σ²)` on the scores.
///
/// Stored state (serde) is what cannot be derived: the learning buffer or the learned CDF's
/// counts, the members' statistics and the configuration's fingerprint; the bank and the
/// transform are derived again after [`crate::AnyDetector::bind`] (see
/// [`crate::AutoBernoulli`]).
#[derive(Debug, Clone)]
pub struct AutoReal {
    /// Shared by every key of the clause: the configuration is the clause's, and 88 bytes
    /// per key add up in a large fleet.
    cfg: Arc<AutoConfig>,
    /// What the stored record left out, and whether it is back.
    rs: Restoration,
    n: u64,
    /// The first events, then the transform learned from them.
    baseline: Baseline,
    built_at: u64,
    /// The bank's alternatives, shared with every key at the same reference size.
    members: Arc<Members>,
    /// The banks of every reference size, shared by every clone of the clause's detector.
    stages: Arc<Stages>,
    sr: Option<MixtureSr>,
    threshold: f64,
}

/// The baseline while it is learned, then as learned: one or the other, in the room of one
/// pointer (every clause state holds the largest detector inline, and this one sets it).
#[derive(Debug, Clone)]
enum Baseline {
    /// The first events, until `reference_min`. Boxed, as only a new key holds them: the
    /// vector inline would make this the largest kind by 8 bytes, and every clause state
    /// would pay for them.
    #[allow(clippy::box_collection)]
    Learning(Box<Vec<f64>>),
    /// The transform learned from them, counting the events after them up to
    /// `reference_max`. Boxed: 96 bytes inline otherwise.
    Learned(Box<NormalScore>),
}

impl Baseline {
    /// The transform, once learned.
    fn ns(&self) -> Option<&NormalScore> {
        match self {
            Baseline::Learned(ns) => Some(ns),
            Baseline::Learning(_) => None,
        }
    }

    /// The same, to change.
    fn ns_mut(&mut self) -> Option<&mut NormalScore> {
        match self {
            Baseline::Learned(ns) => Some(ns),
            Baseline::Learning(_) => None,
        }
    }

    /// The events kept while learning (none after).
    fn buffer(&self) -> &[f64] {
        match self {
            Baseline::Learning(b) => b,
            Baseline::Learned(_) => &[],
        }
    }
}

/// The stored form, written by format version 2.
#[derive(Serialize)]
struct Stored<'a> {
    h: u64,
    n: u64,
    #[serde(skip_serializing_if = "<[f64]>::is_empty")]
    buf: &'a [f64],
    #[serde(skip_serializing_if = "Option::is_none")]
    ns: Option<&'a NormalScore>,
    ba: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sr: &'a Option<MixtureSr>,
    t: f64,
    /// The baseline summary, only when the transform cannot be derived (version 1's).
    #[serde(skip_serializing_if = "Option::is_none")]
    bc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bs: Option<f64>,
}

/// The stored form as read: version 2's, or version 1's full struct.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    h: Option<u64>,
    #[serde(default)]
    cfg: Option<AutoConfig>,
    n: u64,
    #[serde(default, alias = "buffer")]
    buf: Vec<f64>,
    #[serde(default)]
    ns: Option<Box<NormalScore>>,
    #[serde(alias = "built_at")]
    ba: u64,
    #[serde(default)]
    a: Vec<f64>,
    #[serde(default)]
    b: Vec<f64>,
    #[serde(default)]
    squared: Vec<bool>,
    #[serde(default)]
    kappa: Vec<f64>,
    #[serde(default)]
    sr: Option<MixtureSr>,
    #[serde(default, alias = "baseline_center")]
    bc: Option<f64>,
    #[serde(default, alias = "baseline_scale")]
    bs: Option<f64>,
    #[serde(alias = "threshold")]
    t: f64,
}

impl Serialize for AutoReal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ns = self.baseline.ns();
        let legacy = ns.and_then(NormalScore::legacy_summary);
        Stored {
            h: self.rs.fingerprint,
            n: self.n,
            buf: self.baseline.buffer(),
            ns,
            ba: self.built_at,
            sr: &self.sr,
            t: self.threshold,
            bc: legacy.map(|l| l.0),
            bs: legacy.map(|l| l.1),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AutoReal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Record::deserialize(d)?;
        let bound = r.cfg.is_some();
        let cfg = r.cfg.map_or_else(crate::auto::default_config, Arc::new);
        let fingerprint = r.h.unwrap_or_else(|| cfg.fingerprint(MetricKind::Real, 0));
        let derived = bound
            && r.sr.as_ref().is_none_or(|sr| sr.is_installed() && r.a.len() == sr.len())
            && r.ns.as_ref().is_none_or(|ns| !ns.derivable());
        // A record holds its buffer or its transform; were it to hold both, the transform.
        let baseline = match r.ns {
            Some(mut ns) => {
                ns.set_legacy_summary(r.bc.unwrap_or(0.0), r.bs.unwrap_or(0.0));
                Baseline::Learned(ns)
            }
            None => Baseline::Learning(Box::new(r.buf)),
        };
        Ok(AutoReal {
            cfg,
            rs: Restoration { fingerprint, bound, derived },
            n: r.n,
            baseline,
            built_at: r.ba,
            members: if r.a.is_empty() {
                empty_members()
            } else {
                Arc::new(Members::new(r.a, r.b, r.squared, r.kappa))
            },
            stages: no_stages(),
            sr: r.sr,
            threshold: crate::auto::stored_threshold(r.t)?,
        })
    }
}

/// Equal when the stored state is.
impl PartialEq for AutoReal {
    fn eq(&self, o: &Self) -> bool {
        (self.rs.fingerprint, self.n, self.built_at) == (o.rs.fingerprint, o.n, o.built_at)
            && self.baseline.buffer().iter().map(|x| x.to_bits()).eq(o
                .baseline
                .buffer()
                .iter()
                .map(|x| x.to_bits()))
            && self.baseline.ns() == o.baseline.ns()
            && self.threshold.to_bits() == o.threshold.to_bits()
            && self.sr == o.sr
    }
}

/// A bank's alternatives: member `j`'s log-likelihood ratio is `a(j) * t + b[j]`, with
/// `t = z` or `z²` (`squared`), and `kappa[j]` its information per event.
///
/// Why shared: on normal scores the alternatives do not depend on the data, so a real bank
/// is a function of the configuration and the reference size alone, and every key at one
/// stage holds the same one (about 700 bytes per key when each kept its own).
#[derive(Debug, Default)]
struct Members {
    squared: Vec<bool>,
    kappa: Vec<f64>,
    /// The log-likelihood ratios as `lin[j]·z + sq[j]·z² + b[j]` (`lin[j]` is `a(j)` for a
    /// location member and 0 for a scale one, `sq[j]` the other way round), padded with
    /// zeros to whole chunks of [`LANES`]: a chunk's ratios are then one loop without a
    /// branch, which compiles to vector instructions.
    lin: Vec<f64>,
    sq: Vec<f64>,
    b: Vec<f64>,
}

/// Members whose likelihood ratios are computed together (see [`Members::ratios`]).
const LANES: usize = 8;

impl Members {
    fn new(a: Vec<f64>, b: Vec<f64>, squared: Vec<bool>, kappa: Vec<f64>) -> Members {
        let padded = a.len().next_multiple_of(LANES);
        let pad = |mut v: Vec<f64>| {
            v.resize(padded, 0.0);
            v
        };
        let pick = |sq: bool| a.iter().zip(&squared).map(|(&a, &s)| if s == sq { a } else { 0.0 }).collect();
        let (lin, sq) = (pad(pick(false)), pad(pick(true)));
        Members { squared, kappa, lin, sq, b: pad(b) }
    }

    /// Member `j`'s coefficient of `t` (`θ` for a location member, `β/2` for a scale one).
    fn a(&self, j: usize) -> f64 {
        if self.squared[j] {
            self.sq[j]
        } else {
            self.lin[j]
        }
    }

    /// Member `j`'s likelihood ratio at normal score `z`, for `j` in member order (as
    /// [`MixtureSr::step_by`] asks): each chunk's ratios are computed together at its
    /// first member.
    #[inline(always)]
    fn ratios_at(&self, z: f64) -> impl FnMut(usize) -> f64 + '_ {
        let z2 = z * z;
        let mut lr = [0.0; LANES];
        move |j| {
            if j % LANES == 0 {
                self.chunk_ratios(j / LANES, z, z2, &mut lr);
            }
            lr[j % LANES]
        }
    }

    /// The likelihood ratios of members `LANES·chunk ..` at normal score `z` (`z2 = z²`).
    ///
    /// `lin·z + sq·z² + b` is `a·t + b` to the bit: the zero term adds an exact zero.
    #[inline(always)]
    fn chunk_ratios(&self, chunk: usize, z: f64, z2: f64, out: &mut [f64; LANES]) {
        let at = chunk * LANES;
        let lanes = |v: &[f64]| -> Option<[f64; LANES]> { v.get(at..at + LANES)?.try_into().ok() };
        let (Some(lin), Some(sq), Some(b)) = (lanes(&self.lin), lanes(&self.sq), lanes(&self.b)) else {
            return;
        };
        for i in 0..LANES {
            out[i] = crate::fast_exp::exp(lin[i] * z + sq[i] * z2 + b[i]);
        }
    }
}

/// A bank: its alternatives, the mixture (statistics carried over from `old`, the ids and
/// weights shared) and the threshold.
#[derive(Debug)]
struct Bank {
    members: Arc<Members>,
    sr: MixtureSr,
    threshold: f64,
}

/// The banks of the reference sizes a detector rebuilds at (`reference_min`, doubling up to
/// `reference_max`), each built once, by the first key to reach it, and shared by every
/// clone of the clause's detector. Building one costs an overshoot series per member, which
/// every key of a fleet paid at every stage.
#[derive(Debug, Default)]
struct Stages(Vec<(u64, OnceLock<Bank>)>);

impl Stages {
    fn new(cfg: &AutoConfig) -> Stages {
        let mut at = cfg.next_stage(0);
        let mut stages = vec![(at, OnceLock::new())];
        while at < cfg.reference_max && stages.len() < 64 {
            at = cfg.next_stage(at);
            stages.push((at, OnceLock::new()));
        }
        Stages(stages)
    }
}

/// What a decoded detector holds until it is bound (and an unbuilt bank's alternatives): one
/// shared value each, so that decoding allocates none per key.
fn no_stages() -> Arc<Stages> {
    static NONE: LazyLock<Arc<Stages>> = LazyLock::new(Arc::default);
    Arc::clone(&NONE)
}

fn empty_members() -> Arc<Members> {
    static NONE: LazyLock<Arc<Members>> = LazyLock::new(Arc::default);
    Arc::clone(&NONE)
}

struct Alt {
    a: f64,
    b: f64,
    squared: bool,
}

/// The bank's possible members and their alternatives: location `±θ` and scale `β` on the
/// normal scores, sized from the configuration alone (not from the data).
fn bank_candidates(cfg: &AutoConfig) -> (Vec<Candidate>, Vec<Alt>) {
    let mut cands = Vec::new();
    let mut alts = Vec::new();
    for (s, up) in [(0u32, true), (1u32, false)] {
        if !cfg.direction.allows(up) {
            continue;
        }
        let sign = if up { 1.0 } else { -1.0 };
        for (m, theta, at_min_shift) in
            member_sizes(cfg, cfg.min_shift, |k| (2.0 * k).sqrt(), |t| t * t / 2.0)
        {
            let th = sign * theta;
            cands.push(Candidate { id: m * 4 + s, kappa: theta * theta / 2.0, at_min_shift });
            alts.push(Alt { a: th, b: -th * th / 2.0, squared: false });
        }
        // Scale members: `β` with Var(llr)/2 = β²/4 = κ; `min_shift` is the factor
        // `1 + min_shift` on the standard deviation (σ² = 1/(1-β)).
        let beta_min =
            cfg.min_shift.map(|m| if up { 1.0 - 1.0 / (1.0 + m).powi(2) } else { (1.0 + m).powi(2) - 1.0 });
        for (m, beta, at_min_shift) in member_sizes(cfg, beta_min, |k| 2.0 * k.sqrt(), |b| b * b / 4.0) {
            let beta = sign * beta;
            if beta >= MAX_BETA {
                continue;
            }
            // LR = exp(β z²/2) / σ with σ = (1-β)^(-1/2).
            cands.push(Candidate { id: m * 4 + 2 + s, kappa: beta * beta / 4.0, at_min_shift });
            alts.push(Alt { a: beta / 2.0, b: 0.5 * (1.0 - beta).ln(), squared: true });
        }
    }
    (cands, alts)
}

/// Builds the bank for a baseline of `n` events (statistics at zero).
fn build_real_bank(cfg: &AutoConfig, n: u64) -> Bank {
    let (cands, alts) = bank_candidates(cfg);
    let (keep, sr, threshold) = build_bank(
        cfg,
        MetricKind::Real,
        &cands,
        |i| {
            let alt = &alts[i];
            if alt.squared {
                zeta_scale(2.0 * alt.a)
            } else {
                zeta_gaussian(alt.a)
            }
        },
        n,
        None,
    );
    let members = Members::new(
        keep.iter().map(|&i| alts[i].a).collect(),
        keep.iter().map(|&i| alts[i].b).collect(),
        keep.iter().map(|&i| alts[i].squared).collect(),
        keep.iter().map(|&i| cands[i].kappa).collect(),
    );
    Bank { members: Arc::new(members), sr, threshold }
}

impl AutoReal {
    /// A detector with the given configuration.
    pub fn new(cfg: AutoConfig) -> Result<Self, DetectorError> {
        cfg.validate_for(MetricKind::Real)?;
        check_bank_possible(&cfg, MetricKind::Real, &bank_candidates(&cfg).0)?;
        let stages = Arc::new(Stages::new(&cfg));
        Ok(AutoReal::fresh(Arc::new(cfg), stages))
    }

    /// A fresh detector with a validated configuration and its stages (a reset keeps the
    /// shared ones).
    fn fresh(cfg: Arc<AutoConfig>, stages: Arc<Stages>) -> Self {
        AutoReal {
            rs: Restoration::fresh(cfg.fingerprint(MetricKind::Real, 0)),
            threshold: cfg.threshold(MetricKind::Real),
            cfg,
            n: 0,
            baseline: Baseline::Learning(Box::default()),
            built_at: 0,
            members: empty_members(),
            stages,
            sr: None,
        }
    }

    /// The bank for a baseline of `n` events, carrying over the statistics of `old`: the
    /// shared one when `n` is a stage, else built here.
    fn bank(&self, n: u64, old: Option<&MixtureSr>) -> Bank {
        let built;
        let shared = match self.stages.0.iter().find(|(at, _)| *at == n) {
            Some((_, cell)) => cell.get_or_init(|| build_real_bank(&self.cfg, n)),
            None => {
                built = build_real_bank(&self.cfg, n);
                &built
            }
        };
        let mut sr = shared.sr.clone();
        if let Some(old) = old {
            sr.inherit(old);
        }
        Bank { members: Arc::clone(&shared.members), sr, threshold: shared.threshold }
    }

    /// Takes a bank's derived parts (not its threshold, which is stored); returns its members.
    fn install(&mut self, bank: Bank) -> MixtureSr {
        self.members = bank.members;
        bank.sr
    }

    fn rebuild(&mut self, n: u64) {
        let ns = self.baseline.ns_mut().expect("rebuild after the normal score exists");
        ns.recompute();
        let bank = self.bank(n, self.sr.as_ref());
        self.threshold = bank.threshold;
        self.sr = Some(self.install(bank));
        self.built_at = n;
    }

    /// Puts back the transform, the baseline summary and the bank's derived parts after
    /// decoding (see `AutoBernoulli::derive`).
    fn derive(&mut self) -> bool {
        if !self.rs.bound {
            return false;
        }
        if let Some(ns) = self.baseline.ns_mut() {
            if ns.derivable() {
                ns.derive();
            }
        }
        if let Some(sr) = self.sr.take() {
            let bank = self.bank(self.built_at, None);
            let fresh = self.install(bank);
            self.sr = Some(sr.restored(&fresh.members));
        }
        self.rs.derived = true;
        true
    }

    /// Feeds one finite value (the caller checked finiteness).
    #[inline]
    pub fn update_value(&mut self, x: f64) -> Option<Box<Alarm>> {
        if !self.rs.derived && !self.derive() {
            return None;
        }
        let i = self.n;
        self.n += 1;
        let reference = match &self.baseline {
            Baseline::Learning(b) => b.len() as u64,
            Baseline::Learned(ns) => ns.total(),
        };
        if reference < self.cfg.reference_max {
            match &mut self.baseline {
                Baseline::Learning(buffer) => {
                    buffer.push(x);
                    if buffer.len() as u64 >= self.cfg.reference_min {
                        self.baseline = Baseline::Learned(Box::new(NormalScore::from_sample(buffer)));
                    }
                }
                Baseline::Learned(ns) => ns.count(x),
            }
            let total = self.baseline.ns().map_or(0, |n| n.total());
            if total > 0 && total >= self.cfg.next_stage(self.built_at) {
                self.rebuild(total);
            }
        }
        let (ns, sr) = match (self.baseline.ns(), self.sr.as_mut()) {
            (Some(ns), Some(sr)) => (ns, sr),
            _ => return None,
        };
        let lambda = sr.step_by(self.members.ratios_at(ns.score(x, i)), x);
        if lambda >= self.threshold {
            Some(Box::new(self.alarm(i)))
        } else {
            None
        }
    }

    fn alarm(&self, i: u64) -> Alarm {
        let sr = self.sr.as_ref().expect("alarm only with a bank");
        let win = sr.winner();
        let j = win.member;
        let m = &*self.members;
        let lag = win.lag.round().max(0.0).min(i as f64) as u64;
        let mean_now = win.aux_sum / (win.lag + 1.0);
        let (center, scale) = self.baseline.ns().map_or((0.0, 0.0), NormalScore::summary);
        let (direction, scale_now) = if m.squared[j] {
            let beta = 2.0 * m.a(j);
            let sigma = (1.0 / (1.0 - beta)).sqrt();
            (if beta > 0.0 { "scale_up" } else { "scale_down" }, scale * sigma)
        } else {
            (if m.a(j) > 0.0 { "increase" } else { "decrease" }, scale)
        };
        let mut params = self.cfg.params();
        params.insert("members".into(), sr.len() as f64);
        params.insert("winner_kappa".into(), m.kappa[j]);
        params.insert("winner_weight".into(), sr.weight(j));
        params.insert(
            if m.squared[j] { "winner_beta" } else { "winner_theta" }.into(),
            if m.squared[j] { 2.0 * m.a(j) } else { m.a(j) },
        );
        Alarm {
            detector: self.name().to_string(),
            params,
            statistic: log_stat(sr.lambda),
            threshold: self.threshold.ln(),
            baseline: Estimate::Location { center, scale: Some(scale) },
            current: Estimate::Location { center: mean_now, scale: Some(scale_now) },
            n_reference: self.baseline.ns().map_or(0, |n| n.total()),
            n_current: lag + 1,
            change_point: i - lag,
            index: i,
            false_alarm_rate: Some(self.cfg.false_alarm_rate),
            direction: direction.to_string(),
        }
    }
}

impl Restorable for AutoReal {
    fn restoration(&self) -> Restoration {
        self.rs
    }

    fn restoration_mut(&mut self) -> &mut Restoration {
        &mut self.rs
    }

    fn adopt(&mut self, proto: &Self) {
        self.cfg = proto.cfg.clone();
        self.stages = proto.stages.clone();
        if self.sr.is_none() {
            self.threshold = proto.threshold;
        }
    }
}

impl Detector for AutoReal {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let x = as_real(obs, "auto-real")?;
        if !self.rs.bound {
            return Err(DetectorError::Unbound("auto-real"));
        }
        Ok(self.update_value(x))
    }

    fn view(&self) -> View {
        View {
            statistic: self.sr.as_ref().map_or(0.0, |s| log_stat(s.lambda)),
            threshold: self.threshold.ln(),
            n: self.n,
            ready: self.sr.is_some(),
        }
    }

    fn restart(&mut self) {
        if let Some(sr) = self.sr.as_mut() {
            sr.restart();
        }
    }

    fn reset(&mut self) {
        let rs = self.rs;
        *self = AutoReal::fresh(Arc::clone(&self.cfg), Arc::clone(&self.stages));
        self.rs = rs.after_reset();
    }

    fn name(&self) -> &'static str {
        "auto-real"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(reference: u64) -> AutoConfig {
        AutoConfig {
            false_alarm_rate: 1e-3,
            reference_min: reference.min(60),
            reference_max: reference,
            ..AutoConfig::default()
        }
    }

    /// A chunk's ratios are each member's `exp(a·t + b)`, with `t` its score or its square,
    /// computed one member at a time with the same `exp`, to the bit; the padding lanes are
    /// `e^0`, and every ratio is within 2 ULP of the platform's `exp`.
    #[test]
    fn chunked_ratios_are_each_members_own() {
        let bank = build_real_bank(&AutoConfig::default(), 16_384);
        let m = &*bank.members;
        let k = m.squared.len();
        assert!(k > LANES && !k.is_multiple_of(LANES), "{k} members: a full chunk and a padded one");
        for z in [-4.2, -1.3, -0.0, 0.25, 1.0, 3.7] {
            let mut ratio = m.ratios_at(z);
            for j in 0..k {
                // `a(j)` is read back from the chunked coefficients; its member's `κ` and `b`,
                // kept apart, pin it down: `κ = θ²/2`, `b = -θ²/2` for a location member,
                // `κ = β²/4`, `b = ln(1 - β)/2` with `β = 2a` for a scale one.
                let a = m.a(j);
                let (kappa, b) = if m.squared[j] {
                    (a * a, 0.5 * (1.0 - 2.0 * a).ln())
                } else {
                    (a * a / 2.0, -a * a / 2.0)
                };
                assert_eq!(
                    (kappa.to_bits(), b.to_bits()),
                    (m.kappa[j].to_bits(), m.b[j].to_bits()),
                    "member {j}"
                );
                let got = ratio(j);
                let arg = a * if m.squared[j] { z * z } else { z } + m.b[j];
                assert_eq!(got.to_bits(), crate::fast_exp::exp(arg).to_bits(), "member {j} at z = {z}");
                let ulps = (got.to_bits() as i64).abs_diff(arg.exp().to_bits() as i64);
                assert!(ulps <= 2, "member {j} at z = {z}: {ulps} ULP");
            }
            let mut last = [f64::NAN; LANES];
            m.chunk_ratios(k / LANES, z, z * z, &mut last);
            assert!(last[k % LANES..].iter().all(|&r| r == 1.0), "padding lanes: {last:?}");
        }
        // Both kinds of member were checked: location (`t = z`) and scale (`t = z²`).
        assert!(m.squared.iter().any(|s| *s) && m.squared.iter().any(|s| !*s));
    }

    #[test]
    fn a_baseline_too_short_for_any_member_is_refused_with_the_length_that_would_do() {
        // 60 events at α = 1e-3: every member's inflation from so short a baseline exceeds
        // the limit, so the bank would be empty and the detector blind.
        let e = AutoReal::new(cfg(60)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("reference_max") && text.contains("could never alarm"), "{text}");
        let need: u64 = text.rsplit("at least ").next().unwrap().parse().unwrap();
        assert!(need > 60, "{text}");
        // At that length the largest member is admitted: the detector is built, and a large
        // location shift after the baseline is detected.
        let mut d = AutoReal::new(cfg(need)).unwrap();
        let value = |i: u64| ((i * 7919) % 1000) as f64 / 1000.0;
        for i in 0..need {
            assert!(d.update(Observation::Real(value(i))).unwrap().is_none());
        }
        let alarmed = (0..50).find(|i| d.update(Observation::Real(50.0 + value(*i))).unwrap().is_some());
        assert!(alarmed.is_some(), "a shift of 50 scales is detected within 50 events");
        assert!(AutoReal::new(cfg(need - 1)).is_err(), "{need} is the smallest that does");
    }

    #[test]
    fn keys_at_one_stage_share_one_bank_equal_to_a_bank_built_alone() {
        let cfg = AutoConfig { reference_min: 200, reference_max: 800, ..AutoConfig::default() };
        let proto = AutoReal::new(cfg.clone()).unwrap();
        assert_eq!(proto.stages.0.iter().map(|(at, _)| *at).collect::<Vec<_>>(), [200, 400, 800]);
        // Two keys of one clause with different data, past the first two stages.
        let (mut x, mut y) = (proto.clone(), proto.clone());
        let value = |i: u64, k: u64| ((i * 7919 + k * 104_729) % 1000) as f64;
        for i in 0..500 {
            x.update_value(value(i, 1));
            y.update_value(value(i, 2));
        }
        assert_eq!((x.built_at, y.built_at), (400, 400));
        assert!(Arc::ptr_eq(&x.members, &y.members), "one stage, one set of alternatives");
        let (sx, sy) = (x.sr.as_ref().unwrap(), y.sr.as_ref().unwrap());
        assert!(Arc::ptr_eq(&sx.members, &sy.members));
        assert_ne!(sx, sy, "each key keeps its own statistics");
        // The shared bank is the one a key would build by itself, bit for bit.
        let alone = build_real_bank(&cfg, 400);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&x.members.lin), bits(&alone.members.lin));
        assert_eq!(bits(&x.members.sq), bits(&alone.members.sq));
        assert_eq!(bits(&x.members.b), bits(&alone.members.b));
        assert_eq!(x.members.squared, alone.members.squared);
        let weights = |sr: &MixtureSr| sr.members.iter().map(|m| m.w.to_bits()).collect::<Vec<_>>();
        let ids = |sr: &MixtureSr| sr.members.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(weights(sx), weights(&alone.sr));
        assert_eq!(ids(sx), ids(&alone.sr));
        assert_eq!(x.threshold.to_bits(), alone.threshold.to_bits());
        // A key restored from its record takes the clause's banks when it is bound.
        let bytes = rmp_serde::to_vec_named(&x).unwrap();
        let mut restored: AutoReal = rmp_serde::from_slice(&bytes).unwrap();
        assert!(crate::auto::bind(&mut restored, &proto));
        assert!(restored.derive());
        assert!(Arc::ptr_eq(&restored.members, &x.members));
        assert_eq!(restored, x);
    }

    /// The baseline's summary is derived at an alarm from the counts at the last
    /// recomputation, so the counts that arrive between two stages leave it as a summary
    /// held since that recomputation would be, and the next stage moves it.
    #[test]
    fn the_baseline_summary_is_that_of_the_last_recomputation() {
        let cfg = AutoConfig { reference_min: 200, reference_max: 800, ..AutoConfig::default() };
        let mut d = AutoReal::new(cfg).unwrap();
        let value = |i: u64| ((i * 7919) % 1000) as f64;
        for i in 0..300 {
            d.update_value(value(i));
        }
        assert_eq!(d.built_at, 200);
        let summary = |d: &AutoReal| {
            let (c, s) = d.baseline.ns().unwrap().summary();
            (c.to_bits(), s.to_bits())
        };
        let ns = d.baseline.ns().unwrap();
        let (q25, q50, q75) = (ns.quantile(0.25), ns.quantile(0.5), ns.quantile(0.75));
        // Uniform on [0, 1000): median near 500, scale near 500 / 1.349.
        assert!((q50 - 500.0).abs() < 50.0 && ((q75 - q25) - 500.0).abs() < 60.0, "{q25} {q50} {q75}");
        let at_200 = summary(&d);
        assert_eq!(at_200, (q50.to_bits(), ((q75 - q25) / 1.349).to_bits()));
        // Another 99 values, all large, before the next stage: the summary does not move.
        for _ in 0..99 {
            d.update_value(5_000.0);
        }
        assert_eq!((d.built_at, summary(&d)), (200, at_200));
        // At the stage of 400 it is recomputed, with the large values in it.
        d.update_value(5_000.0);
        assert_eq!(d.built_at, 400);
        let (c, _) = d.baseline.ns().unwrap().summary();
        assert!(c > q50, "{c} after the large values, {q50} before");
        // An alarm reports it.
        let alarm =
            (0..500).find_map(|_| d.update_value(1.0e6)).expect("a shift of far beyond the baseline alarms");
        let (c, s) = d.baseline.ns().unwrap().summary();
        assert_eq!(alarm.baseline, Estimate::Location { center: c, scale: Some(s) });
    }

    /// A version-1 record's transform cannot be derived, and neither can the summary it
    /// stored beside it: both are kept, stored again, and reported at an alarm until the
    /// next recomputation derives the transform and with it the summary.
    #[test]
    fn a_version_1_transform_keeps_its_stored_summary_until_it_is_recomputed() {
        let cfg = AutoConfig { reference_min: 200, reference_max: 800, ..AutoConfig::default() };
        let proto = AutoReal::new(cfg).unwrap();
        let mut d = proto.clone();
        let value = |i: u64| ((i * 7919) % 1000) as f64;
        for i in 0..250 {
            d.update_value(value(i));
        }
        // The record as version 1 had it: the transform's scores and levels beside its
        // counts (any of the right length), and the summary.
        let mut v: serde_json::Value = serde_json::to_value(&d).unwrap();
        let cells = v["ns"]["c"].as_array().unwrap().len();
        let levels: Vec<f64> = (0..=cells).map(|c| (c as f64 + 0.5) / (cells as f64 + 1.0)).collect();
        let scores: Vec<f64> = levels.iter().map(|u| 4.0 * (u - 0.5)).collect();
        v["ns"]["z"] = serde_json::json!(scores);
        v["ns"]["u"] = serde_json::json!(levels);
        v["bc"] = serde_json::json!(123.0);
        v["bs"] = serde_json::json!(45.0);
        let mut old: AutoReal = serde_json::from_value(v).unwrap();
        assert!(crate::auto::bind(&mut old, &proto));
        assert!(old.derive());
        assert!(!old.baseline.ns().unwrap().derivable());
        assert_eq!(old.baseline.ns().unwrap().summary(), (123.0, 45.0));
        let again = serde_json::to_value(&old).unwrap();
        assert_eq!((again["bc"].as_f64(), again["bs"].as_f64()), (Some(123.0), Some(45.0)));
        // A current record stores none.
        let now = serde_json::to_value(&d).unwrap();
        assert!(now.get("bc").is_none() && now.get("bs").is_none(), "{now}");
        // The stage of 400 recomputes the transform from the counts, and the summary with it.
        for i in 250..400 {
            old.update_value(value(i));
        }
        assert_eq!(old.built_at, 400);
        let ns = old.baseline.ns().unwrap();
        assert!(ns.derivable());
        assert_eq!(ns.summary(), (ns.quantile(0.5), (ns.quantile(0.75) - ns.quantile(0.25)) / 1.349));
        assert!(serde_json::to_value(&old).unwrap().get("bc").is_none());
    }
}
