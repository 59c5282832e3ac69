//! `auto-bernoulli`: mixture Shiryaev–Roberts on a learned rate, for 0/1 metrics.

use crate::alarm::{Alarm, Estimate};
use crate::auto::{
    build_bank, log_stat, member_sizes, AutoConfig, Candidate, Restorable, Restoration, MAX_JUMP,
};
use crate::detector::{as_bool, Detector, MetricKind, Observation, View};
use crate::interner::{Interned, Interner};
use crate::mixture::{Member, MixtureSr};
use crate::overshoot::zeta_two_point;
use crate::DetectorError;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

/// Detects a change in the probability of a 1 without knowing the rate before or after.
///
/// The baseline rate `p0` is learned from the first events (see [`AutoConfig`]). The bank's
/// alternatives are log-odds shifts `δ` of `p0` on a geometric grid of information levels
/// `κ = δ² p0 (1 - p0) / 2`, in the configured directions.
///
/// Stored state (serde) is what cannot be derived: counts, `p0`, the members' statistics
/// and the configuration's fingerprint. The configuration comes back from the pact
/// ([`crate::AnyDetector::bind`]) and the bank is derived again before the next event.
#[derive(Debug, Clone)]
pub struct AutoBernoulli {
    /// Shared by every key of the clause: the configuration is the clause's, and 88 bytes
    /// per key add up in a large fleet.
    cfg: Arc<AutoConfig>,
    /// What the stored record left out, and whether it is back.
    rs: Restoration,
    n: u64,
    ref_n: u64,
    ref_ones: u64,
    built_at: u64,
    p0: f64,
    /// The bank's members and likelihood ratios, shared by the clause's keys with the same
    /// baseline (see [`Shape`]).
    shape: SharedShape,
    /// Where the clause's keys find their shared shapes.
    shapes: Arc<Shapes>,
    sr: Option<MixtureSr>,
    threshold: f64,
}

/// A bank apart from its statistics: a pure function of the configuration, `p0` and the
/// baseline's size when it was built, so keys with the same baseline share one (see
/// [`Interner`]). The members' alternatives and information levels are derived again at an
/// alarm, the only time they are read, rather than held here.
#[derive(Debug, Default)]
struct Shape {
    /// The members' ids and weights, as the key's [`MixtureSr`] holds them.
    members: Arc<[Member]>,
    /// Likelihood ratios, `lr[x * k + j]` for outcome `x` and member `j`.
    lr: Box<[f64]>,
    /// The bank's threshold (stored with each key too, which keeps it when restored).
    threshold: f64,
}

/// Shapes by configuration fingerprint, `p0` (bits) and build size.
type Shapes = Interner<(u64, u64, u64), Shape>;

/// A shape as its keys hold it.
type SharedShape = Arc<Interned<(u64, u64, u64), Shape>>;

/// What a detector holds before its first bank, and where a decoded one looks until it is
/// bound: one shared value each, so that neither allocates per key.
fn no_shape() -> SharedShape {
    static NONE: LazyLock<SharedShape> =
        LazyLock::new(|| Arc::new(Interned::alone((0, 0, 0), Shape::default())));
    Arc::clone(&NONE)
}

fn unbound_shapes() -> Arc<Shapes> {
    static NONE: LazyLock<Arc<Shapes>> = LazyLock::new(Arc::default);
    Arc::clone(&NONE)
}

/// The stored form, written by format version 2.
#[derive(Serialize)]
struct Stored<'a> {
    h: u64,
    n: u64,
    rn: u64,
    ro: u64,
    b: u64,
    p0: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sr: &'a Option<MixtureSr>,
    t: f64,
}

/// The stored form as read: version 2's, or version 1's full struct (with the
/// configuration and the derived bank).
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    h: Option<u64>,
    #[serde(default)]
    cfg: Option<AutoConfig>,
    n: u64,
    #[serde(alias = "ref_n")]
    rn: u64,
    #[serde(alias = "ref_ones")]
    ro: u64,
    #[serde(alias = "built_at")]
    b: u64,
    p0: f64,
    /// Version 1 also kept the bank's likelihood ratios and each member's alternative and
    /// information; they are derived again (see `AutoBernoulli::derive`) and ignored here.
    #[serde(default)]
    sr: Option<MixtureSr>,
    #[serde(alias = "threshold")]
    t: f64,
}

impl Serialize for AutoBernoulli {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            h: self.rs.fingerprint,
            n: self.n,
            rn: self.ref_n,
            ro: self.ref_ones,
            b: self.built_at,
            p0: self.p0,
            sr: &self.sr,
            t: self.threshold,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AutoBernoulli {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Record::deserialize(d)?;
        let bound = r.cfg.is_some();
        let cfg = r.cfg.map_or_else(crate::auto::default_config, Arc::new);
        let fingerprint = r.h.unwrap_or_else(|| cfg.fingerprint(MetricKind::Bernoulli, 0));
        // A bank is always derived again, version 1's too: the derivation pairs the stored
        // statistics with its members, or relearns when they no longer match.
        let derived = r.sr.is_none();
        Ok(AutoBernoulli {
            cfg,
            rs: Restoration { fingerprint, bound, derived },
            n: r.n,
            ref_n: r.rn,
            ref_ones: r.ro,
            built_at: r.b,
            p0: r.p0,
            shape: no_shape(),
            shapes: unbound_shapes(),
            sr: r.sr,
            threshold: crate::auto::stored_threshold(r.t)?,
        })
    }
}

/// Equal when the stored state is.
impl PartialEq for AutoBernoulli {
    fn eq(&self, o: &Self) -> bool {
        (self.rs.fingerprint, self.n, self.ref_n, self.ref_ones, self.built_at)
            == (o.rs.fingerprint, o.n, o.ref_n, o.ref_ones, o.built_at)
            && self.p0.to_bits() == o.p0.to_bits()
            && self.threshold.to_bits() == o.threshold.to_bits()
            && self.sr == o.sr
    }
}

/// A bank for a baseline, built: likelihood ratios, alternatives, information levels, the
/// bank (statistics at zero) and the threshold.
struct Bank {
    lr: Vec<f64>,
    p1: Vec<f64>,
    kappa: Vec<f64>,
    sr: MixtureSr,
    threshold: f64,
}

impl AutoBernoulli {
    /// A detector with the given configuration.
    pub fn new(cfg: AutoConfig) -> Result<Self, DetectorError> {
        cfg.validate_for(MetricKind::Bernoulli)?;
        Ok(AutoBernoulli::fresh(Arc::new(cfg), Arc::default()))
    }

    /// A fresh detector with a validated configuration and its clause's shapes (a reset
    /// keeps the shared ones).
    fn fresh(cfg: Arc<AutoConfig>, shapes: Arc<Shapes>) -> Self {
        AutoBernoulli {
            rs: Restoration::fresh(cfg.fingerprint(MetricKind::Bernoulli, 0)),
            threshold: cfg.threshold(MetricKind::Bernoulli),
            cfg,
            n: 0,
            ref_n: 0,
            ref_ones: 0,
            built_at: 0,
            p0: 0.0,
            shape: no_shape(),
            shapes,
            sr: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AutoConfig {
        &self.cfg
    }

    /// The learned baseline rate, once monitoring has started.
    pub fn baseline(&self) -> Option<f64> {
        self.sr.as_ref().map(|_| self.p0)
    }

    /// Puts back the bank's derived parts after decoding. They are a pure function of the
    /// configuration, `p0` and the baseline's size when the bank was built, so they come out
    /// bit for bit as they were; statistics are never recomputed.
    fn derive(&mut self) -> bool {
        if !self.rs.bound {
            return false;
        }
        if let Some(sr) = self.sr.take() {
            let shape = self.shape(self.p0, self.built_at);
            self.sr = Some(sr.restored(&shape.members));
            self.shape = shape;
        }
        self.rs.derived = true;
        true
    }

    fn bank(&self, p0: f64, n: u64) -> Bank {
        let pq = p0 * (1.0 - p0);
        let logit0 = (p0 / (1.0 - p0)).ln();
        let mut cands = Vec::new();
        let mut alts = Vec::new();
        for (s, up) in [(0u32, true), (1u32, false)] {
            if !self.cfg.direction.allows(up) {
                continue;
            }
            for (m, delta, at_min_shift) in log_odds_shifts(&self.cfg, p0, up) {
                let l = if up { logit0 + delta } else { logit0 - delta };
                let p1 = 1.0 / (1.0 + (-l).exp());
                let llr = [(p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln()];
                if llr[0].max(llr[1]) > MAX_JUMP {
                    continue;
                }
                cands.push(Candidate { id: m * 2 + s, kappa: delta * delta * pq / 2.0, at_min_shift });
                alts.push(p1);
            }
        }
        let (keep, sr, threshold) = build_bank(
            &self.cfg,
            MetricKind::Bernoulli,
            &cands,
            |i| {
                let p1 = alts[i];
                zeta_two_point((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln(), p0, p1)
            },
            n,
            None,
        );
        let k = keep.len();
        let mut bank = Bank { lr: vec![0.0; 2 * k], p1: Vec::new(), kappa: Vec::new(), sr, threshold };
        for (j, &i) in keep.iter().enumerate() {
            let p1 = alts[i];
            bank.lr[j] = (1.0 - p1) / (1.0 - p0);
            bank.lr[k + j] = p1 / p0;
            bank.p1.push(p1);
            bank.kappa.push(cands[i].kappa);
        }
        bank
    }

    /// The shape of the bank for `p0` built at `n`: the one another key holds, or built.
    fn shape(&self, p0: f64, n: u64) -> SharedShape {
        self.shapes.get_or_make((self.rs.fingerprint, p0.to_bits(), n), || {
            let bank = self.bank(p0, n);
            Shape { members: bank.sr.members, lr: bank.lr.into(), threshold: bank.threshold }
        })
    }

    /// Once per baseline stage: out of line, off the inlined path of every event.
    #[cold]
    #[inline(never)]
    fn rebuild(&mut self) {
        let n = self.ref_n;
        // Jeffreys estimate: never exactly 0 or 1, so every likelihood ratio is finite.
        let p0 = (self.ref_ones as f64 + 0.5) / (n as f64 + 1.0);
        let shape = self.shape(p0, n);
        let mut sr = MixtureSr::new(Arc::clone(&shape.members));
        if let Some(old) = &self.sr {
            sr.inherit(old);
        }
        self.p0 = p0;
        self.threshold = shape.threshold;
        self.shape = shape;
        self.sr = Some(sr);
        self.built_at = n;
    }

    /// Feeds one 0/1 outcome. This is the hot path: a table lookup and two fused
    /// multiply-adds per member.
    #[inline]
    pub fn update_bool(&mut self, x: bool) -> Option<Box<Alarm>> {
        if !self.rs.derived && !self.derive() {
            return None;
        }
        let i = self.n;
        self.n += 1;
        if self.ref_n < self.cfg.reference_max {
            self.ref_n += 1;
            self.ref_ones += x as u64;
            if self.ref_n >= self.cfg.next_stage(self.built_at) {
                self.rebuild();
            }
        }
        let sr = self.sr.as_mut()?;
        let k = sr.len();
        let xi = x as usize;
        let lambda = sr.step(&self.shape.lr[xi * k..xi * k + k], x as u8 as f64);
        if lambda >= self.threshold {
            Some(Box::new(self.alarm(i)))
        } else {
            None
        }
    }

    fn alarm(&self, i: u64) -> Alarm {
        let sr = self.sr.as_ref().expect("alarm only with a bank");
        let win = sr.winner();
        let lag = win.lag.round().max(0.0).min(i as f64) as u64;
        let n_current = lag + 1;
        let p_now = (win.aux_sum / (win.lag + 1.0)).clamp(0.0, 1.0);
        // The same bank as `sr`'s: a pure function of the baseline it was built from, and
        // every restored bank is derived from it (see `derive`).
        let bank = self.bank(self.p0, self.built_at);
        let p1 = bank.p1[win.member];
        let mut params = self.cfg.params();
        params.insert("members".into(), sr.len() as f64);
        params.insert("winner_p1".into(), p1);
        params.insert("winner_kappa".into(), bank.kappa[win.member]);
        params.insert("winner_weight".into(), sr.weight(win.member));
        Alarm {
            detector: self.name().to_string(),
            params,
            statistic: log_stat(sr.lambda),
            threshold: self.threshold.ln(),
            baseline: Estimate::Rate { p: self.p0 },
            current: Estimate::Rate { p: p_now },
            n_reference: self.ref_n,
            n_current,
            change_point: i - lag,
            index: i,
            false_alarm_rate: Some(self.cfg.false_alarm_rate),
            direction: if p1 > self.p0 { "increase" } else { "decrease" }.to_string(),
        }
    }
}

/// The log-odds shifts `(id, δ, at_min_shift)` of the bank in one direction: with
/// `min_shift`, the shift to `p0 ± min_shift` and then every doubling of its information up to
/// `kappa_max`; otherwise the information grid. Directions where `p0 ± min_shift` leaves
/// `(0, 1)` get no members.
fn log_odds_shifts(cfg: &AutoConfig, p0: f64, up: bool) -> Vec<(u32, f64, bool)> {
    let pq = p0 * (1.0 - p0);
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let min_size = match cfg.min_shift {
        None => None,
        Some(shift) => {
            let p1 = if up { p0 + shift } else { p0 - shift };
            if !(p1 > 0.0 && p1 < 1.0) {
                return Vec::new();
            }
            Some((logit(p1) - logit(p0)).abs())
        }
    };
    member_sizes(cfg, min_size, |k| (2.0 * k / pq).sqrt(), |d| d * d * pq / 2.0)
}

impl Restorable for AutoBernoulli {
    fn restoration(&self) -> Restoration {
        self.rs
    }

    fn restoration_mut(&mut self) -> &mut Restoration {
        &mut self.rs
    }

    fn adopt(&mut self, proto: &Self) {
        self.cfg = proto.cfg.clone();
        self.shapes = Arc::clone(&proto.shapes);
        if self.sr.is_none() {
            // Before the first bank the threshold is the configuration's.
            self.threshold = proto.threshold;
        }
    }
}

impl Detector for AutoBernoulli {
    fn update(&mut self, obs: Observation<'_>) -> Result<Option<Box<Alarm>>, DetectorError> {
        let x = as_bool(obs, "auto-bernoulli")?;
        if !self.rs.bound {
            return Err(DetectorError::Unbound("auto-bernoulli"));
        }
        Ok(self.update_bool(x))
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
        *self = AutoBernoulli::fresh(Arc::clone(&self.cfg), Arc::clone(&self.shapes));
        self.rs = rs.after_reset();
    }

    fn name(&self) -> &'static str {
        "auto-bernoulli"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::Estimate;

    /// The winner's alternative and information, derived again at the alarm, are a member's
    /// of the bank that alarmed: `κ = δ² p0 (1 - p0) / 2` for its log-odds shift `δ`, on the
    /// side of the change, with the weight the bank gave it.
    #[test]
    fn an_alarm_names_the_winning_members_alternative_and_information() {
        let cfg = AutoConfig { false_alarm_rate: 1e-4, reference_min: 500, ..AutoConfig::default() };
        let mut d = AutoBernoulli::new(cfg).unwrap();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut unit = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let alarm = (0..20_000)
            .find_map(|i| d.update_bool(unit() < if i < 3_000 { 0.9 } else { 0.6 }))
            .expect("a fall from 0.9 to 0.6 alarms");
        assert!(alarm.index >= 3_000, "no false alarm before the change: {}", alarm.index);
        let Estimate::Rate { p: p0 } = alarm.baseline else { panic!("{:?}", alarm.baseline) };
        let (p1, kappa) = (alarm.params["winner_p1"], alarm.params["winner_kappa"]);
        assert!(p1 < p0 && alarm.direction == "decrease", "p1 {p1}, p0 {p0}, {}", alarm.direction);
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let delta = logit(p0) - logit(p1);
        let expected = delta * delta * p0 * (1.0 - p0) / 2.0;
        // Both sides are a few roundings of the same quantities.
        assert!((kappa - expected).abs() <= 1e-12 * expected, "κ {kappa} against {expected}");
        let sr = d.sr.as_ref().unwrap();
        let win = sr.winner();
        assert_eq!(alarm.params["winner_weight"], sr.weight(win.member));
        assert_eq!(d.shape.lr[sr.len() + win.member], p1 / p0, "the member's likelihood ratio for a 1");
    }

    /// Keys of one clause that learn the same baseline hold one shape; a key with another
    /// baseline, or of another clause, holds its own. Sharing changes no statistic: each key
    /// steps as a detector built alone does, restored keys included.
    #[test]
    fn keys_with_the_same_baseline_share_one_bank_shape_and_step_as_alone() {
        let cfg = AutoConfig {
            false_alarm_rate: 1e-3,
            reference_min: 100,
            reference_max: 400,
            ..AutoConfig::default()
        };
        let proto = AutoBernoulli::new(cfg.clone()).unwrap();
        let (mut a, mut b, mut other) = (proto.clone(), proto.clone(), proto.clone());
        let mut alone = AutoBernoulli::new(cfg).unwrap();
        for i in 0..1_000u64 {
            let x = i % 10 != 0;
            let alarms = [a.update_bool(x), b.update_bool(x), alone.update_bool(x)];
            assert!(alarms[0] == alarms[2] && alarms[1] == alarms[2], "event {i}");
            other.update_bool(i % 5 != 0);
        }
        assert!(Arc::ptr_eq(&a.shape, &b.shape), "same baseline, one shape");
        assert!(!Arc::ptr_eq(&a.shape, &other.shape), "another baseline, its own");
        assert!(!Arc::ptr_eq(&a.shape, &alone.shape), "another clause, its own");
        assert_eq!(a, alone);
        assert_eq!(&a.shape.lr[..], &alone.shape.lr[..]);
        assert!(
            Arc::ptr_eq(&a.sr.as_ref().unwrap().members, &a.shape.members),
            "the members are the shape's"
        );

        let bytes = rmp_serde::to_vec_named(&a).unwrap();
        let mut restored: AutoBernoulli = rmp_serde::from_slice(&bytes).unwrap();
        assert!(crate::auto::bind(&mut restored, &proto));
        for i in 0..200u64 {
            let x = i % 3 != 0;
            assert_eq!(restored.update_bool(x), a.update_bool(x), "event {i} after the restore");
        }
        assert!(Arc::ptr_eq(&restored.shape, &a.shape), "a restored key finds the clause's shape");
        assert_eq!(restored, a);
    }

    /// A key rebuilds its bank at each baseline stage and a reset drops it: the shapes it
    /// no longer holds leave the clause's interner then, not at a later sweep, while a shape
    /// another key still holds stays.
    #[test]
    fn a_key_leaves_no_shape_behind_that_nobody_holds() {
        let cfg = AutoConfig { reference_min: 100, reference_max: 3_200, ..AutoConfig::default() };
        let proto = AutoBernoulli::new(cfg).unwrap();
        let (mut a, mut b) = (proto.clone(), proto.clone());
        for i in 0..4_000u64 {
            a.update_bool(i % 10 != 0);
            b.update_bool(i % 7 != 0);
        }
        // Six stages each (100, 200, ..., 3,200): one live shape each, nothing dead.
        assert_eq!(a.built_at, 3_200);
        assert_eq!(proto.shapes.entries(), 2, "one shape per key");
        let mut c = proto.clone();
        for i in 0..4_000u64 {
            c.update_bool(i % 10 != 0);
        }
        assert!(Arc::ptr_eq(&a.shape, &c.shape), "the same baseline, one shape");
        c.reset();
        assert_eq!(proto.shapes.entries(), 2, "a's shape is still held");
        a.reset();
        assert_eq!(proto.shapes.entries(), 1, "nobody holds a's shape now");
        assert_eq!(c, proto, "a reset key is a fresh one");
    }

    /// A version-1 record kept its bank. Restored, the bank is derived again from its
    /// baseline; one that no longer matches (here a record claiming another build size) pairs
    /// no statistic with another member: it relearns from zero, and its alarms describe
    /// members of the derived bank.
    #[test]
    fn a_version_1_bank_is_derived_again_and_relearns_when_it_no_longer_matches() {
        #[derive(Serialize)]
        struct V1<'a> {
            cfg: &'a AutoConfig,
            n: u64,
            ref_n: u64,
            ref_ones: u64,
            built_at: u64,
            p0: f64,
            lr: &'a [f64],
            sr: serde_json::Value,
            threshold: f64,
        }
        // The baseline is complete after 2,000 events: no rebuild follows the restore.
        let cfg = AutoConfig {
            false_alarm_rate: 1e-3,
            reference_min: 200,
            reference_max: 2_000,
            ..AutoConfig::default()
        };
        let mut d = AutoBernoulli::new(cfg).unwrap();
        for i in 0..2_000 {
            d.update_bool(i % 4 == 0);
        }
        let k = d.sr.as_ref().unwrap().len();
        // Version 1's bank also kept its ids and weights.
        let mut sr = serde_json::to_value(&d.sr).unwrap();
        let bank = d.sr.as_ref().unwrap();
        sr["ids"] = serde_json::json!(bank.members.iter().map(|m| m.id).collect::<Vec<_>>());
        sr["w"] = serde_json::json!(bank.members.iter().map(|m| m.w).collect::<Vec<_>>());
        let record = |built_at: u64, lr: &[f64]| {
            let v1 = V1 {
                cfg: &d.cfg,
                n: d.n,
                ref_n: d.ref_n,
                ref_ones: d.ref_ones,
                built_at,
                p0: d.p0,
                lr,
                sr: sr.clone(),
                threshold: d.threshold,
            };
            rmp_serde::from_slice::<AutoBernoulli>(&rmp_serde::to_vec_named(&v1).unwrap()).unwrap()
        };

        // Its own bank: the same statistics, paired with the same members.
        let (mut a, mut b) = (d.clone(), record(d.built_at, &d.shape.lr));
        assert_eq!(a.update_bool(true), b.update_bool(true));
        assert_eq!((&a.sr, &a.shape.lr), (&b.sr, &b.shape.lr));

        // A bank kept for another baseline size has another member count: the ratios stored
        // for it are ignored, and the statistics start again from zero.
        let mut fresh = d.bank(d.p0, 1);
        assert_ne!(fresh.sr.len(), k, "the test needs a mismatching bank");
        let mut other = record(1, &vec![1.0; 2 * k]);
        other.update_bool(false);
        let m = fresh.sr.len();
        fresh.sr.step(&fresh.lr[..m], 0.0);
        assert_eq!(other.sr.as_ref(), Some(&fresh.sr));
        assert_eq!(&other.shape.lr[..], &fresh.lr[..]);
        let alarm = (0..20_000).find_map(|_| other.update_bool(true)).expect("a rise to 1 alarms");
        let winner = other.sr.as_ref().unwrap().winner().member;
        let p1 = other.shape.lr[m + winner] * other.p0;
        assert!(
            (alarm.params["winner_p1"] - p1).abs() <= 1e-12,
            "{} against {p1}",
            alarm.params["winner_p1"]
        );
    }
}
