//! `auto-categorical`: a native multinomial mixture Shiryaev–Roberts detector.

use crate::alarm::{Alarm, Estimate};
use crate::auto::{
    build_bank, log_stat, member_sizes, AutoConfig, Candidate, Restorable, Restoration, MAX_JUMP,
};
use crate::detector::{as_category, Detector, MetricKind, Observation, View};
use crate::mixture::MixtureSr;
use crate::overshoot::{zeta_three_point, zeta_two_point};
use crate::DetectorError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Default cap on distinct categories.
pub const DEFAULT_MAX_CATEGORIES: usize = 32;
/// Up to this many categories the bank uses every pairwise contrast; above it, one
/// direction per category (to bound the bank's size and its multiplicity cost).
const CONTRAST_LIMIT: usize = 8;

/// Detects a change in the category distribution without knowing it before or after.
///
/// The category set is learned during the first `reference_min` events and is then fixed;
/// an unseen category afterwards is an error. The alternatives are exponential tilts of the
/// baseline `p1 ∝ p0 · exp(η v)` along directions `v`: every contrast "mass moves from
/// category b to category a" (for up to 8 categories) or "category c gains/loses" (above).
///
/// Stored state (serde) is what cannot be derived: the categories, counts, `p0`, the
/// members' statistics and the configuration's fingerprint; the bank is derived again
/// after [`crate::AnyDetector::bind`] (see [`crate::AutoBernoulli`]).
#[derive(Debug, Clone)]
pub struct AutoCategorical {
    /// Shared by every key of the clause: the configuration is the clause's, and 88 bytes
    /// per key add up in a large fleet.
    cfg: Arc<AutoConfig>,
    max_categories: usize,
    /// What the stored record left out, and whether it is back.
    rs: Restoration,
    n: u64,
    names: Vec<String>,
    ref_counts: Vec<u64>,
    ref_n: u64,
    built_at: u64,
    p0: Vec<f64>,
    /// Likelihood ratios in rows of one per member: member `j`'s for category `c` is
    /// `lr[row(k, d, c) * m + j]`, with `m` members and `d` the member's direction. Up to
    /// [`CONTRAST_LIMIT`] categories a row is a category's, so an event reads one row. Above
    /// it there are two rows, as a one-vs-rest tilt has two ratios (the moved category's and
    /// the rest's): a row per category took 16 times the room at 32 categories. The members'
    /// information levels are derived again at an alarm, the only time they are read, rather
    /// than held by every key.
    lr: Box<[f64]>,
    sr: Option<MixtureSr<false>>,
    threshold: f64,
}

/// The stored form, written by format version 2.
#[derive(Serialize)]
struct Stored<'a> {
    h: u64,
    n: u64,
    c: &'a [String],
    rc: &'a [u64],
    rn: u64,
    b: u64,
    #[serde(skip_serializing_if = "<[f64]>::is_empty")]
    p0: &'a [f64],
    #[serde(skip_serializing_if = "Option::is_none")]
    sr: &'a Option<MixtureSr<false>>,
    t: f64,
}

/// The stored form as read: version 2's, or version 1's full struct.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    h: Option<u64>,
    #[serde(default)]
    cfg: Option<AutoConfig>,
    #[serde(default)]
    max_categories: Option<usize>,
    n: u64,
    #[serde(alias = "names")]
    c: Vec<String>,
    #[serde(alias = "ref_counts")]
    rc: Vec<u64>,
    #[serde(alias = "ref_n")]
    rn: u64,
    #[serde(alias = "built_at")]
    b: u64,
    #[serde(default)]
    p0: Vec<f64>,
    /// Version 1 also kept the bank's likelihood ratios and each member's information; they
    /// are derived again (see `AutoCategorical::derive`) and ignored here.
    #[serde(default)]
    sr: Option<MixtureSr<false>>,
    #[serde(alias = "threshold")]
    t: f64,
}

impl Serialize for AutoCategorical {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            h: self.rs.fingerprint,
            n: self.n,
            c: &self.names,
            rc: &self.ref_counts,
            rn: self.ref_n,
            b: self.built_at,
            p0: &self.p0,
            sr: &self.sr,
            t: self.threshold,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AutoCategorical {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Record::deserialize(d)?;
        let bound = r.cfg.is_some();
        let cfg = r.cfg.map_or_else(crate::auto::default_config, Arc::new);
        let max_categories = r.max_categories.unwrap_or(cfg.max_categories);
        let fingerprint =
            r.h.unwrap_or_else(|| cfg.fingerprint(MetricKind::Categorical, max_categories as u64));
        if r.c.len() != r.rc.len() || (!r.p0.is_empty() && r.p0.len() != r.c.len()) {
            return Err(serde::de::Error::custom(
                "auto-categorical: categories, counts and p0 differ in length",
            ));
        }
        // A bank is always derived again, version 1's too (see `AutoBernoulli`'s reader).
        let derived = r.sr.is_none();
        Ok(AutoCategorical {
            cfg,
            max_categories,
            rs: Restoration { fingerprint, bound, derived },
            n: r.n,
            names: r.c,
            ref_counts: r.rc,
            ref_n: r.rn,
            built_at: r.b,
            p0: r.p0,
            lr: Box::default(),
            sr: r.sr,
            threshold: crate::auto::stored_threshold(r.t)?,
        })
    }
}

/// Equal when the stored state is.
impl PartialEq for AutoCategorical {
    fn eq(&self, o: &Self) -> bool {
        (self.rs.fingerprint, self.n, &self.names, &self.ref_counts, self.ref_n, self.built_at)
            == (o.rs.fingerprint, o.n, &o.names, &o.ref_counts, o.ref_n, o.built_at)
            && self.p0.iter().map(|p| p.to_bits()).eq(o.p0.iter().map(|p| p.to_bits()))
            && self.threshold.to_bits() == o.threshold.to_bits()
            && self.sr == o.sr
    }
}

/// A bank for a baseline: likelihood ratios, information levels, the bank (statistics
/// carried over from `old`) and the threshold.
struct Bank {
    lr: Vec<f64>,
    kappa: Vec<f64>,
    sr: MixtureSr<false>,
    threshold: f64,
}

impl AutoCategorical {
    /// A detector with the given configuration and category cap.
    pub fn new(cfg: AutoConfig, max_categories: usize) -> Result<Self, DetectorError> {
        cfg.validate_for(MetricKind::Categorical)?;
        if !(2..=1024).contains(&max_categories) {
            return Err(DetectorError::param("max_categories", "must be between 2 and 1024"));
        }
        Ok(AutoCategorical::fresh(Arc::new(cfg), max_categories))
    }

    /// A fresh detector with a validated configuration (a reset keeps the shared one).
    fn fresh(cfg: Arc<AutoConfig>, max_categories: usize) -> Self {
        AutoCategorical {
            rs: Restoration::fresh(cfg.fingerprint(MetricKind::Categorical, max_categories as u64)),
            threshold: cfg.threshold(MetricKind::Categorical),
            cfg,
            max_categories,
            n: 0,
            names: Vec::new(),
            ref_counts: Vec::new(),
            ref_n: 0,
            built_at: 0,
            p0: Vec::new(),
            lr: Box::default(),
            sr: None,
        }
    }

    /// The category set (fixed once monitoring has started).
    pub fn categories(&self) -> &[String] {
        &self.names
    }

    fn index_of(&mut self, name: &str) -> Result<usize, DetectorError> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i);
        }
        if self.built_at > 0 {
            return Err(DetectorError::UnknownCategory(name.to_string()));
        }
        if self.names.len() >= self.max_categories {
            return Err(DetectorError::TooManyCategories(self.max_categories));
        }
        self.names.push(name.to_string());
        self.ref_counts.push(0);
        Ok(self.names.len() - 1)
    }

    /// Member `j`'s likelihood ratio for category `c`.
    fn ratio(&self, sr: &MixtureSr<false>, c: usize, j: usize) -> f64 {
        self.lr[row(self.names.len(), direction(sr.members[j].id), c) * sr.len() + j]
    }

    fn bank(&self, p0: &[f64], n: u64, old: Option<&MixtureSr<false>>) -> Bank {
        let k = self.names.len();
        let mut cands = Vec::new();
        let mut tables: Vec<Vec<f64>> = Vec::new();
        // Per candidate, the log-likelihood ratios and baseline masses of its three groups.
        let mut walks: Vec<([f64; 3], [f64; 3])> = Vec::new();
        if k >= 2 {
            for (d, v) in directions(k).iter().enumerate() {
                // Baseline mass of the rising (+1), falling (-1) and untouched (0) groups.
                let mass =
                    |sign: f64| v.iter().zip(p0).filter(|(v, _)| **v == sign).map(|(_, p)| p).sum::<f64>();
                let (up, down) = (mass(1.0), mass(-1.0));
                let rest = (1.0 - up - down).max(0.0);
                let var = up + down - (up - down).powi(2);
                if var <= 0.0 {
                    continue;
                }
                for (m, eta, at_min_shift) in tilts(&self.cfg, up, down, var) {
                    let log_m = (up * eta.exp() + down * (-eta).exp() + rest).ln();
                    let (lu, ld, l0) = (eta - log_m, -eta - log_m, -log_m);
                    if lu.max(ld).max(l0) > MAX_JUMP {
                        continue;
                    }
                    cands.push(Candidate {
                        id: (d as u32) * 64 + m,
                        kappa: eta * eta * var / 2.0,
                        at_min_shift,
                    });
                    walks.push(([lu, ld, l0], [up, down, rest]));
                    tables.push(v.iter().map(|v| (eta * v - log_m).exp()).collect());
                }
            }
        }
        let (keep, sr, threshold) = build_bank(
            &self.cfg,
            MetricKind::Categorical,
            &cands,
            |i| tilt_zeta(walks[i].0, walks[i].1),
            n,
            old,
        );
        let m = keep.len();
        debug_assert!(keep.windows(2).all(|w| cands[w[0]].id < cands[w[1]].id), "ids increase");
        let mut bank = Bank { lr: vec![0.0; rows(k) * m], kappa: Vec::new(), sr, threshold };
        for (j, &i) in keep.iter().enumerate() {
            let d = direction(cands[i].id);
            // Categories sharing a row have the same ratio: each writes it there.
            for (c, l) in tables[i].iter().enumerate() {
                let at = &mut bank.lr[row(k, d, c) * m + j];
                debug_assert!(*at == 0.0 || at.to_bits() == l.to_bits());
                *at = *l;
            }
            bank.kappa.push(cands[i].kappa);
        }
        bank
    }

    fn rebuild(&mut self) {
        let n = self.ref_n;
        let denom = n as f64 + 0.5 * self.names.len() as f64;
        let p0: Vec<f64> = self.ref_counts.iter().map(|c| (*c as f64 + 0.5) / denom).collect();
        let bank = self.bank(&p0, n, self.sr.as_ref());
        self.p0 = p0;
        self.lr = bank.lr.into();
        self.sr = Some(bank.sr);
        self.built_at = n;
        self.threshold = bank.threshold;
    }

    /// Puts back the bank's derived parts after decoding (see `AutoBernoulli::derive`).
    fn derive(&mut self) -> bool {
        if !self.rs.bound {
            return false;
        }
        if let Some(sr) = self.sr.take() {
            let bank = self.bank(&self.p0, self.built_at, None);
            self.sr = Some(sr.restored(&bank.sr.members));
            self.lr = bank.lr.into();
        }
        self.rs.derived = true;
        true
    }

    /// Feeds one category by name.
    pub fn update_category(&mut self, name: &str) -> Result<Option<Box<Alarm>>, DetectorError> {
        if !self.rs.derived && !self.derive() {
            return Ok(None);
        }
        let c = self.index_of(name)?;
        Ok(self.update_index(c))
    }

    fn update_index(&mut self, c: usize) -> Option<Box<Alarm>> {
        let i = self.n;
        self.n += 1;
        if self.ref_n < self.cfg.reference_max {
            self.ref_n += 1;
            self.ref_counts[c] += 1;
            if self.ref_n >= self.cfg.next_stage(self.built_at) {
                self.rebuild();
            }
        }
        let sr = self.sr.as_mut()?;
        let m = sr.len();
        if m == 0 {
            return None;
        }
        let lambda = if self.names.len() <= CONTRAST_LIMIT {
            sr.step(&self.lr[c * m..c * m + m], 0.0)
        } else {
            // The members moving `c` are one run, as ids increase with the direction: found
            // by two searches, not a look-up per member.
            let (moved, rest) = self.lr.split_at(m);
            let from = sr.members.partition_point(|x| moved_category(direction(x.id)) < c);
            let to = sr.members.partition_point(|x| moved_category(direction(x.id)) <= c);
            sr.step_patched(rest, moved, from..to)
        };
        if lambda >= self.threshold {
            Some(Box::new(self.alarm(i)))
        } else {
            None
        }
    }

    fn alarm(&self, i: u64) -> Alarm {
        let sr = self.sr.as_ref().expect("alarm only with a bank");
        let win = sr.winner();
        let k = sr.len();
        let j = win.member;
        let lag = win.lag.round().max(0.0).min(i as f64) as u64;
        let p1: Vec<(String, f64)> = self
            .names
            .iter()
            .enumerate()
            .map(|(c, name)| (name.clone(), self.p0[c] * self.ratio(sr, c, j)))
            .collect();
        let moved_up = p1.iter().zip(&self.p0).max_by(|a, b| (a.0 .1 - a.1).total_cmp(&(b.0 .1 - b.1)));
        let direction = moved_up.map_or(String::new(), |(p, _)| format!("toward:{}", p.0));
        let mut params = self.cfg.params();
        params.insert("members".into(), k as f64);
        params.insert("categories".into(), self.names.len() as f64);
        // The same bank as `sr`'s: a pure function of the baseline it was built from, and
        // every restored bank is derived from it (see `derive`).
        let kappa = self.bank(&self.p0, self.built_at, None).kappa[j];
        params.insert("winner_kappa".into(), kappa);
        params.insert("winner_weight".into(), sr.weight(j));
        Alarm {
            detector: self.name().to_string(),
            params,
            statistic: log_stat(sr.lambda),
            threshold: self.threshold.ln(),
            baseline: Estimate::Distribution {
                probs: self.names.iter().cloned().zip(self.p0.iter().copied()).collect(),
            },
            current: Estimate::Distribution { probs: p1 },
            n_reference: self.ref_n,
            n_current: lag + 1,
            change_point: i - lag,
            index: i,
            false_alarm_rate: Some(self.cfg.false_alarm_rate),
            direction,
        }
    }
}

/// The tilt directions for `k` categories: up to [`CONTRAST_LIMIT`] categories every pairwise
/// contrast (mass moves from one category to another), above it every one-vs-rest tilt (one
/// category's share rises or falls, the others scale in proportion). With two categories a
/// one-vs-rest tilt is a pairwise contrast already. The order gives the members' ids, so it
/// must not change.
fn directions(k: usize) -> Vec<Vec<f64>> {
    let mut dirs = Vec::new();
    if k <= CONTRAST_LIMIT {
        for a in 0..k {
            for b in (a + 1)..k {
                let mut v = vec![0.0; k];
                v[a] = 1.0;
                v[b] = -1.0;
                dirs.push(v.clone());
                dirs.push(v.iter().map(|x| -x).collect());
            }
        }
    } else {
        for c in 0..k {
            let mut v = vec![0.0; k];
            v[c] = 1.0;
            dirs.push(v.clone());
            v[c] = -1.0;
            dirs.push(v);
        }
    }
    dirs
}

/// A member's direction, from its id (`direction * 64 + size`; sizes number under 64).
#[inline]
fn direction(id: u32) -> usize {
    (id >> 6) as usize
}

/// Rows of likelihood ratios for `k` categories: one per category, or for one-vs-rest tilts
/// (above [`CONTRAST_LIMIT`]) two, the moved category's and the rest's.
fn rows(k: usize) -> usize {
    if k > CONTRAST_LIMIT {
        2
    } else {
        k
    }
}

/// The row holding category `c`'s ratio for a member of direction `d`: `c`'s own, or for a
/// one-vs-rest tilt 0 for the category it moves (direction `2c + s`) and 1 for the rest.
#[inline]
fn row(k: usize, d: usize, c: usize) -> usize {
    if k > CONTRAST_LIMIT {
        usize::from(moved_category(d) != c)
    } else {
        c
    }
}

/// The category a one-vs-rest direction moves (see [`directions`]: `2c` raises `c`, `2c + 1`
/// lowers it).
#[inline]
fn moved_category(d: usize) -> usize {
    d / 2
}

/// `ζ` of a tilt member whose rising, falling and untouched groups have log-likelihood ratios
/// `l` and baseline masses `p`; empty groups reduce the walk to two points.
fn tilt_zeta(l: [f64; 3], p: [f64; 3]) -> f64 {
    let q = [p[0] * l[0].exp(), p[1] * l[1].exp(), p[2] * l[2].exp()];
    if p[1] == 0.0 {
        zeta_two_point(l[0], l[2], p[0], q[0])
    } else if p[0] == 0.0 {
        zeta_two_point(l[1], l[2], p[1], q[1])
    } else if p[2] == 0.0 {
        zeta_two_point(l[0], l[1], p[0], q[0])
    } else {
        zeta_three_point(l, p, q)
    }
}

/// The tilt sizes `(id, η, at_min_shift)` along one direction whose rising and falling groups
/// hold baseline mass `up` and `down`, with `var` the variance of the direction under the
/// baseline. With `min_shift`, the tilt that moves the rising group's share up by `min_shift`
/// (or, without a rising group, the falling group's down by it), then every doubling of its
/// information up to `kappa_max`; otherwise the information grid.
fn tilts(cfg: &AutoConfig, up: f64, down: f64, var: f64) -> Vec<(u32, f64, bool)> {
    let Some(shift) = cfg.min_shift else {
        return member_sizes(cfg, None, |k| (2.0 * k / var).sqrt(), |e| e * e * var / 2.0);
    };
    let rest = (1.0 - up - down).max(0.0);
    let moved = |eta: f64| {
        let m = up * eta.exp() + down * (-eta).exp() + rest;
        if up > 0.0 {
            up * eta.exp() / m - up
        } else {
            down - down * (-eta).exp() / m
        }
    };
    let reachable = if up > 0.0 { up + shift < 1.0 } else { down - shift > 0.0 };
    if !reachable || moved(60.0) < shift {
        return Vec::new();
    }
    // `moved` rises with η: bisect.
    let (mut lo, mut hi) = (0.0, 60.0);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if moved(mid) < shift {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    member_sizes(cfg, Some(0.5 * (lo + hi)), |k| (2.0 * k / var).sqrt(), |e| e * e * var / 2.0)
}

impl Restorable for AutoCategorical {
    fn restoration(&self) -> Restoration {
        self.rs
    }

    fn restoration_mut(&mut self) -> &mut Restoration {
        &mut self.rs
    }

    fn adopt(&mut self, proto: &Self) {
        self.cfg = proto.cfg.clone();
        self.max_categories = proto.max_categories;
        if self.sr.is_none() {
            self.threshold = proto.threshold;
        }
    }
}

impl Detector for AutoCategorical {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let name = as_category(obs, "auto-categorical")?;
        if !self.rs.bound {
            return Err(DetectorError::Unbound("auto-categorical"));
        }
        self.update_category(name)
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
        *self = AutoCategorical::fresh(Arc::clone(&self.cfg), self.max_categories);
        self.rs = rs.after_reset();
    }

    fn name(&self) -> &'static str {
        "auto-categorical"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::Estimate;

    /// A digest of a detector's run over a seeded stream: every Λ's bits, the alarms'
    /// indexes and their estimates' bits.
    fn digest(categories: usize, seed: u64) -> (u64, Vec<u64>) {
        let cfg = AutoConfig { false_alarm_rate: 1e-4, reference_min: 300, ..AutoConfig::default() };
        let mut d = AutoCategorical::new(cfg, 64).unwrap();
        let names: Vec<String> = (0..categories).map(|c| format!("c{c}")).collect();
        let mut state = seed;
        let mut unit = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut h, mut alarms) = (0xcbf2_9ce4_8422_2325u64, Vec::new());
        let mut eat = |v: u64| h = (h ^ v).wrapping_mul(0x0100_0000_01b3);
        for i in 0..12_000u64 {
            // Uneven shares; after 6,000 events the first category's share doubles.
            let u = unit();
            let c = if i >= 6_000 && u < 0.15 { 0 } else { ((u * u) * categories as f64) as usize };
            if let Some(a) = d.update_category(&names[c.min(categories - 1)]).unwrap() {
                alarms.push(a.index);
                eat(a.statistic.to_bits());
                if let Estimate::Distribution { probs } = &a.current {
                    probs.iter().for_each(|(_, p)| eat(p.to_bits()));
                }
                eat(a.params["winner_kappa"].to_bits());
                d.restart();
            }
            eat(d.sr.as_ref().map_or(0, |s| s.lambda.to_bits()));
        }
        (h, alarms)
    }

    /// Each member's ratios, read from their rows, are those of a tilt: they take at most
    /// three values (rising, falling and untouched categories), and weighted by the baseline
    /// they sum to one (`p₁` is a distribution). A category read from another's row breaks
    /// the sum.
    #[test]
    fn ratios_read_by_group_are_each_members_tilt() {
        for k in [2usize, 3, 4, 8, 9, 20] {
            let cfg = AutoConfig { reference_min: 300, ..AutoConfig::default() };
            let mut d = AutoCategorical::new(cfg, 64).unwrap();
            let names: Vec<String> = (0..k).map(|c| format!("c{c}")).collect();
            for i in 0..2_000usize {
                // Uneven shares: category c with weight c + 1.
                let c = (0..k).find(|c| (i * 7919) % (k * (k + 1) / 2) < (c + 1) * (c + 2) / 2).unwrap();
                d.update_category(&names[c]).unwrap();
            }
            let sr = d.sr.as_ref().expect("a bank after the baseline");
            assert!(sr.len() > 0, "{k} categories: members");
            assert_eq!(d.lr.len(), rows(k) * sr.len());
            for j in 0..sr.len() {
                let ratios: Vec<f64> = (0..k).map(|c| d.ratio(sr, c, j)).collect();
                let sum: f64 = ratios.iter().zip(&d.p0).map(|(l, p)| l * p).sum();
                assert!((sum - 1.0).abs() < 1e-12, "{k} categories, member {j}: Σ p₀·L = {sum}");
                let mut distinct: Vec<u64> = ratios.iter().map(|l| l.to_bits()).collect();
                distinct.sort_unstable();
                distinct.dedup();
                assert!(distinct.len() <= 3, "{k} categories, member {j}: {ratios:?}");
            }
        }
    }

    /// The bank's statistics, bit for bit, and its alarms: a change to how the bank is built
    /// or stepped that moves any of them shows here (the demo has no categorical drift to
    /// catch it). Recorded at commit ffc8a02, for contrasts (up to 8 categories) and
    /// one-vs-rest directions (above), with and without alarms. A deliberate change records
    /// them again, and bumps `BANK_VERSION` when stored statistics no longer fit the bank.
    #[test]
    fn statistics_and_alarms_are_those_recorded() {
        let recorded: [(usize, u64, u64, &[u64]); 6] = [
            (2, 11, 0x08f5_651e_41dd_0a5b, &[]),
            (3, 12, 0xd284_b268_d246_797e, &[7313]),
            (5, 13, 0xc277_a1f0_48c4_8f9c, &[6490]),
            (8, 14, 0x5a97_d003_5bef_6dad, &[3310, 8722]),
            (12, 15, 0x63cc_ee3f_2555_2080, &[]),
            (20, 16, 0x3ade_ba89_5800_7b72, &[5212]),
        ];
        for (categories, seed, h, alarms) in recorded {
            assert_eq!(digest(categories, seed), (h, alarms.to_vec()), "{categories} categories");
        }
    }
}
