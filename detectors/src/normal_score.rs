//! Maps a real value to a standard normal score through the baseline's empirical CDF.
//!
//! Why: a detector built on `z = Φ⁻¹(F₀(x))` has an in-control law that does not depend on
//! the shape of `F₀`: skewed latencies, heavy tails and judge scores all become N(0, 1), so
//! one calibration holds for every continuous metric. Hand-written because no maintained
//! crate offers a streaming, serialisable, tie-aware probability-integral transform.
//!
//! The CDF is kept as counts in cells around a fixed set of edges (chosen once, from the
//! first reference events, at normal-score-spaced quantiles). Each edge is also an atom, so
//! ties (integer milliseconds, score levels) get a randomised transform that stays exactly
//! uniform; the randomisation is a deterministic hash of the event index, so replays agree.
//! Beyond the outer edges the score is extrapolated and clamped half a unit further out,
//! which keeps heavy tails from producing unbounded scores.

use crate::counts::Counts;
use crate::interner::{Interned, Interner};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// Normal-score levels of the edges: 31 points from -2.5 to 2.5.
const EDGE_LEVELS: usize = 31;
const EDGE_Z: f64 = 2.5;
/// How far beyond the outermost edge score extrapolation may go.
const TAIL_Z: f64 = 0.5;

/// A learned CDF and its normal-score transform.
///
/// The transform (`z`, and the cumulative probabilities `u` it was computed from) is fixed
/// between recomputations, while counts keep arriving; so it is derived from the counts at
/// the last recomputation, which are stored, rather than stored itself. Version 1 stored the
/// transform, so a state decoded from it keeps its transform and writes it out again (the
/// counts at the last recomputation are unknown then).
///
/// Boxed slices, not vectors: none changes length after it is built, and a fleet holds one
/// per real key.
#[derive(Debug, Clone)]
pub(crate) struct NormalScore {
    /// Distinct edge values, increasing.
    edges: Box<[f64]>,
    /// Cell counts: `2 * edges.len() + 1` cells, alternating open interval and atom:
    /// `(-inf, e0), {e0}, (e0, e1), {e1}, ..., {e_last}, (e_last, inf)`. At most 32 bits, as a
    /// baseline holds at most `reference_max` events (validated to fit), and 16 while they
    /// fit (see [`Counts`]); the stored form is the same (MessagePack integers are sized by
    /// their value).
    ///
    /// Empty while they are those of the last recomputation (see [`NormalScore::counts`]):
    /// from a complete baseline on, they never change again, so most keys of a fleet that
    /// has run a while do not hold them twice.
    counts: Counts,
    total: u64,
    /// The cumulative counts at the last [`NormalScore::recompute`], at the lower end of each
    /// cell (one more than the cells, starting at 0); empty when unknown (version 1). They
    /// give the stored counts (their differences), `u` (see [`NormalScore::leveller`]) and
    /// where the scores are read in the shared table, where keeping the counts, `u` and the
    /// scores took 1,272 bytes per key and these take 256, or 128 in 16 bits.
    cum: Counts,
    /// Scores at the cells' lower ends (one more than the cells): its baseline size's
    /// shared table, read through `cum`, or its own; its own and empty after decoding until
    /// [`NormalScore::derive`].
    z: Scores,
    /// What only a transform decoded from version 1 holds; none otherwise. One pointer: every
    /// real key holds the field.
    legacy: Option<Box<Legacy>>,
}

/// A version-1 transform's parts that the counts cannot give back, until its next
/// recomputation.
#[derive(Debug, Clone)]
struct Legacy {
    /// The cumulative probabilities at the lower end of each cell (one more than the cells).
    u: Box<[f64]>,
    /// The baseline's center and scale, as the detector stored them beside the transform.
    summary: (f64, f64),
}

/// The scores at the cells' lower ends.
#[derive(Debug, Clone)]
enum Scores {
    /// The table of the baseline's size, indexed by cumulative count (see [`Table`]).
    Shared(Arc<Interned<u32, Table>>),
    /// Its own, one per cell boundary: version 1's (of unknown origin), or for a baseline
    /// larger than a shared table may be; empty when not derived yet.
    Own(Box<[f64]>),
}

impl Scores {
    /// Its own scores (version 1's), or none.
    fn own(&self) -> &[f64] {
        match self {
            Scores::Own(z) => z,
            Scores::Shared(_) => &[],
        }
    }
}

/// Largest baseline whose scores come from a shared table (8 MB, once per process and
/// baseline size); a larger one keeps its own 64. The default `reference_max`, 16,384,
/// takes 128 KiB.
const MAX_TABLE: u32 = 1 << 20;

/// The normal score of every level `c / n` of a baseline of `n` events, `c = 0..=n`, kept
/// half an event from 0 and 1: at its last recomputation a transform's scores are these at
/// its cumulative counts, so every key whose baseline has `n` events reads one table instead
/// of holding 64 scores (512 bytes per key). Filled lazily, each entry by the first key that
/// needs it, with the same expression a key used for its own: the scores are bit for bit
/// the same.
#[derive(Debug)]
struct Table {
    /// Score bits; 0 while not computed yet (a score of exactly +0.0 is computed again, as
    /// harmlessly as the first time).
    z: Box<[AtomicU64]>,
}

impl Table {
    /// The table of baselines of `n` events (`n >= 1`), shared while any key holds it.
    fn of(n: u32) -> Arc<Interned<u32, Table>> {
        static TABLES: LazyLock<Arc<Interner<u32, Table>>> = LazyLock::new(Arc::default);
        TABLES.get_or_make(n, || Table { z: (0..=n).map(|_| AtomicU64::new(0)).collect() })
    }

    /// The score at cumulative count `c`, computed by `score` the first time.
    fn fill(&self, c: u32, score: impl FnOnce() -> f64) -> f64 {
        let slot = &self.z[c as usize];
        // Relaxed: every writer stores the same bits, and coherence lets no later read of
        // a slot see it empty again.
        match slot.load(Ordering::Relaxed) {
            0 => {
                let z = score();
                slot.store(z.to_bits(), Ordering::Relaxed);
                z
            }
            bits => f64::from_bits(bits),
        }
    }

    /// The score at cumulative count `c`, filled by [`Table::fill`].
    #[inline]
    fn get(&self, c: u32) -> f64 {
        f64::from_bits(self.z[c as usize].load(Ordering::Relaxed))
    }
}

/// Equal when the stored state is (the transform only when it is not derived).
impl PartialEq for NormalScore {
    fn eq(&self, o: &Self) -> bool {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        bits(&self.edges) == bits(&o.edges)
            && self.cum == o.cum
            && self.counts().eq(o.counts())
            && (self.derivable()
                || (bits(self.z.own()), bits(self.legacy_u())) == (bits(o.z.own()), bits(o.legacy_u())))
    }
}

/// The stored form: edges, the counts at the last recomputation and the counts since.
#[derive(Serialize)]
struct Stored<'a> {
    e: &'a [f64],
    c: Cells<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    s: Vec<u32>,
    /// Only for a transform of unknown origin (decoded from version 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    z: Option<&'a [f64]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    u: Option<&'a [f64]>,
}

/// The stored form as read: version 2's, or version 1's full struct.
#[derive(Deserialize)]
struct Record {
    #[serde(alias = "edges")]
    e: Vec<f64>,
    #[serde(alias = "counts")]
    c: Vec<u32>,
    #[serde(default)]
    s: Vec<u32>,
    #[serde(default)]
    z: Vec<f64>,
    #[serde(default)]
    u: Vec<f64>,
}

/// Cell counts as stored: given (version 1's), or those of the last recomputation.
enum Cells<'a> {
    Counts(&'a Counts),
    Built(&'a NormalScore),
}

/// A sequence of integers, as the 32-bit slice before it was, whatever their width.
impl Serialize for Cells<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cells::Counts(c) => s.collect_seq(c.iter()),
            Cells::Built(ns) => s.collect_seq(ns.built()),
        }
    }
}

impl Serialize for NormalScore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let known = self.derivable();
        let since: Vec<u32> = if known && !self.counts.is_empty() {
            self.counts.iter().zip(self.built()).map(|(n, b)| n.saturating_sub(b)).collect()
        } else {
            Vec::new()
        };
        Stored {
            e: &self.edges,
            c: if known { Cells::Built(self) } else { Cells::Counts(&self.counts) },
            s: since,
            z: (!known).then_some(self.z.own()),
            u: (!known).then_some(self.legacy_u()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for NormalScore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let r = Record::deserialize(d)?;
        let cells = 2 * r.e.len() + 1;
        if r.c.len() != cells || !(r.s.is_empty() || r.s.len() == cells) {
            return Err(D::Error::custom("normal score: cell counts do not match the edges"));
        }
        let legacy = !r.z.is_empty();
        if legacy && (r.z.len() != cells + 1 || r.u.len() != cells + 1) {
            return Err(D::Error::custom("normal score: transform does not match the edges"));
        }
        let counts = if r.s.is_empty() {
            // The last recomputation's: held only when they cannot be derived.
            if legacy {
                Counts::collect(r.c.iter().copied())
            } else {
                Counts::default()
            }
        } else {
            Counts::collect(r.c.iter().zip(&r.s).map(|(c, s)| c.saturating_add(*s)))
        };
        let cum = if legacy {
            Counts::default()
        } else {
            cumulative(r.c.iter().copied())
                .ok_or_else(|| D::Error::custom("normal score: the baseline exceeds 32 bits"))?
        };
        let total = if r.s.is_empty() { sum(r.c.iter().copied()) } else { sum(counts.iter()) };
        Ok(NormalScore {
            edges: r.e.into(),
            total,
            counts,
            cum,
            z: Scores::Own(r.z.into()),
            legacy: legacy.then(|| Box::new(Legacy { u: r.u.into(), summary: (0.0, 0.0) })),
        })
    }
}

/// splitmix64: a fast, well-mixed hash used for the tie randomisation.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in (0, 1) from an index.
fn uniform(i: u64) -> f64 {
    ((splitmix64(i) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

impl NormalScore {
    /// Edges from a sample (at least 2 values); the sample is also counted.
    pub fn from_sample(sample: &[f64]) -> NormalScore {
        let mut sorted = sample.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let std = Normal::new(0.0, 1.0).expect("standard normal");
        let m = sorted.len();
        let mut edges: Vec<f64> = Vec::with_capacity(EDGE_LEVELS);
        for k in 0..EDGE_LEVELS {
            let zk = -EDGE_Z + 2.0 * EDGE_Z * k as f64 / (EDGE_LEVELS - 1) as f64;
            let u = std.cdf(zk);
            let idx = ((u * m as f64).floor() as usize).min(m - 1);
            let v = sorted[idx];
            if edges.last().is_none_or(|l| v > *l) {
                edges.push(v);
            }
        }
        let cells = 2 * edges.len() + 1;
        let mut ns = NormalScore {
            edges: edges.into(),
            counts: Counts::zeros(cells),
            total: 0,
            cum: Counts::default(),
            z: Scores::Own(Box::default()),
            legacy: None,
        };
        for &x in sample {
            ns.count(x);
        }
        ns.recompute();
        ns
    }

    fn cell(&self, x: f64) -> usize {
        // partition_point: number of edges < x.
        let i = self.edges.partition_point(|e| *e < x);
        if i < self.edges.len() && self.edges[i] == x {
            2 * i + 1
        } else {
            2 * i
        }
    }

    /// Adds a reference value to the counts (call [`NormalScore::recompute`] afterwards).
    pub fn count(&mut self, x: f64) {
        let c = self.cell(x);
        if self.counts.is_empty() {
            self.hold_counts();
        }
        self.counts.increment(c);
        self.total += 1;
    }

    /// Holds the counts again, from the last recomputation's: once per recomputation, so
    /// out of line, where it does not weigh on the inlining of every event's path.
    #[cold]
    #[inline(never)]
    fn hold_counts(&mut self) {
        self.counts = Counts::collect(self.counts());
    }

    /// The cell counts: held, or the last recomputation's.
    fn counts(&self) -> impl Iterator<Item = u32> + '_ {
        let built = self.counts.is_empty().then(|| self.built());
        self.counts.iter().chain(built.into_iter().flatten())
    }

    /// The cell counts at the last recomputation (none when unknown).
    fn built(&self) -> impl Iterator<Item = u32> + '_ {
        let cum = &self.cum;
        (1..cum.len()).map(move |i| cum.get(i).saturating_sub(cum.get(i - 1)))
    }

    /// Number of reference values counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Recomputes the cell-boundary scores from the counts.
    pub fn recompute(&mut self) {
        // A baseline holds at most `reference_max` events, which is validated to fit in 32
        // bits; only counts beyond that (never reached) could leave the transform as it was.
        // Empty counts are the last recomputation's already.
        if let Some(cum) = (!self.counts.is_empty()).then(|| cumulative(self.counts.iter())).flatten() {
            self.cum = cum;
            self.counts = Counts::default();
            self.legacy = None;
            self.z = Scores::Own(Box::default());
        }
        self.derive();
    }

    /// Puts back the transform of a decoded score (from the counts at its last
    /// recomputation). A no-op when it is in place.
    pub fn derive(&mut self) {
        if matches!(&self.z, Scores::Own(z) if z.is_empty()) {
            self.derive_scores();
        }
    }

    fn derive_scores(&mut self) {
        let std = Normal::new(0.0, 1.0).expect("standard normal");
        let level = self.leveller();
        let score = |c: u32| std.inverse_cdf(level(c));
        let n = self.size();
        self.z = if n <= MAX_TABLE {
            let table = Table::of(n);
            for c in self.cum.iter() {
                table.fill(c, || score(c));
            }
            Scores::Shared(table)
        } else {
            Scores::Own(self.cum.iter().map(score).collect())
        };
    }

    /// The baseline size at the last recomputation, as the levels divide by it (at least 1).
    fn size(&self) -> u32 {
        self.cum.last().unwrap_or(0).max(1)
    }

    /// The score at the lower end of cell `c` (or the upper end of the last, `c = cells`).
    #[inline]
    fn z(&self, c: usize) -> f64 {
        match &self.z {
            Scores::Shared(t) => t.get(self.cum.get(c)),
            Scores::Own(z) => z[c],
        }
    }

    /// Maps a cumulative count at the last recomputation to its level, the share of the
    /// baseline below it, kept half an event from 0 and 1.
    #[inline]
    fn leveller(&self) -> impl Fn(u32) -> f64 {
        let n = self.size() as f64;
        let lo = 0.5 / n;
        move |cum| (cum as f64 / n).clamp(lo, 1.0 - lo)
    }

    /// The levels at the lower and upper ends of cell `c`.
    #[inline]
    fn levels(&self, c: usize) -> (f64, f64) {
        if let Some(l) = &self.legacy {
            return (l.u[c], l.u[c + 1]);
        }
        let level = self.leveller();
        (level(self.cum.get(c)), level(self.cum.get(c + 1)))
    }

    /// Version 1's cumulative probabilities (empty for any other transform).
    fn legacy_u(&self) -> &[f64] {
        self.legacy.as_ref().map_or(&[], |l| &l.u)
    }

    /// The baseline's center (median) and scale (interquartile range over 1.349) at the last
    /// recomputation: derived from its counts, or as stored with a version-1 transform.
    ///
    /// Derived when asked (at an alarm) rather than held: they change only at a
    /// recomputation, as the counts they are read from do.
    pub fn summary(&self) -> (f64, f64) {
        match &self.legacy {
            Some(l) => l.summary,
            None => (self.quantile(0.5), (self.quantile(0.75) - self.quantile(0.25)) / 1.349),
        }
    }

    /// The summary a version-1 record stored beside this transform, if it is one (a no-op
    /// for any other: its summary is derived).
    pub fn set_legacy_summary(&mut self, center: f64, scale: f64) {
        if let Some(l) = self.legacy.as_mut() {
            l.summary = (center, scale);
        }
    }

    /// The summary a version-1 transform carries, to store again.
    pub fn legacy_summary(&self) -> Option<(f64, f64)> {
        self.legacy.as_ref().map(|l| l.summary)
    }

    /// Whether the transform is of known origin: it can be derived again from the stored
    /// counts (false only for state decoded from version 1).
    pub fn derivable(&self) -> bool {
        !self.cum.is_empty()
    }

    /// The normal score of `x`, which must be finite. `i` seeds the tie randomisation.
    #[inline]
    pub fn score(&self, x: f64, i: u64) -> f64 {
        let c = self.cell(x);
        let last = 2 * self.edges.len();
        let (z0, z1) = (self.z(c), self.z(c + 1));
        if c % 2 == 1 {
            // An atom: spread ties uniformly over the atom's probability (in probability
            // space, so the score stays exactly normal).
            return self.spread(c, i);
        }
        let k = c / 2; // open interval index
        if c == 0 || c == last {
            // Tails: extrapolate with the slope of the nearest inner interval.
            let e = &self.edges;
            let slope = if e.len() >= 2 {
                let (a, b) = if c == 0 { (0, 1) } else { (e.len() - 2, e.len() - 1) };
                let (za, zb) = (self.z(2 * a + 2), self.z(2 * b + 1));
                ((zb - za) / (e[b] - e[a])).max(0.0)
            } else {
                0.0
            };
            if slope == 0.0 {
                // No density information next to the edge (discrete data): spread the tail's
                // probability uniformly, as for an atom.
                return self.spread(c, i);
            }
            return if c == 0 {
                let edge_z = self.z(1);
                (edge_z - (e[0] - x) * slope).max(edge_z - TAIL_Z).min(z1)
            } else {
                let edge_z = self.z(last);
                (edge_z + (x - e[e.len() - 1]) * slope).min(edge_z + TAIL_Z).max(z0)
            };
        }
        let (a, b) = (self.edges[k - 1], self.edges[k]);
        let t = (x - a) / (b - a);
        z0 + (z1 - z0) * t
    }

    /// A score drawn uniformly (in probability) within cell `c`, seeded by `i`.
    fn spread(&self, c: usize, i: u64) -> f64 {
        let (u0, u1) = self.levels(c);
        if u1 <= u0 {
            return self.z(c);
        }
        let std = Normal::new(0.0, 1.0).expect("standard normal");
        std.inverse_cdf(u0 + (u1 - u0) * uniform(i)).clamp(self.z(c), self.z(c + 1))
    }

    /// The value at probability `u` of the baseline as it was at the last recomputation,
    /// interpolated in the cells (for baseline summaries).
    pub fn quantile(&self, u: f64) -> f64 {
        // The counts the transform was built from: version 1's are the counts themselves.
        let held = !self.derivable();
        let basis = || held.then(|| self.counts.iter()).into_iter().flatten().chain(self.built());
        let n = basis().map(u64::from).sum::<u64>().max(1) as f64;
        let target = u * n;
        let mut cum = 0.0;
        for (c, cnt) in basis().enumerate() {
            let next = cum + cnt as f64;
            if next >= target && cnt > 0 {
                if c % 2 == 1 {
                    return self.edges[c / 2];
                }
                let k = c / 2;
                let lo = if k == 0 { self.edges[0] } else { self.edges[k - 1] };
                let hi = if k == self.edges.len() { self.edges[k - 1] } else { self.edges[k] };
                return lo + (hi - lo) * ((target - cum) / cnt as f64);
            }
            cum = next;
        }
        *self.edges.last().unwrap_or(&0.0)
    }
}

/// The events 32-bit cell counts add up to.
fn sum(counts: impl Iterator<Item = u32>) -> u64 {
    counts.map(u64::from).sum()
}

/// Cumulative counts, from 0 (one more than `counts`); `None` beyond 32 bits.
fn cumulative(counts: impl Iterator<Item = u32>) -> Option<Counts> {
    let mut acc = 0u32;
    let cum: Option<Vec<u32>> = std::iter::once(Some(0))
        .chain(counts.map(|c| {
            acc = acc.checked_add(c)?;
            Some(acc)
        }))
        .collect();
    cum.map(Counts::collect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_stored_as_before_and_a_count_beyond_32_bits_is_refused() {
        let sample: Vec<f64> = (0..1000).map(|i| (i % 97) as f64).collect();
        let mut ns = NormalScore::from_sample(&sample);
        ns.recompute();
        for x in [3.0, 50.5, 1e6] {
            ns.count(x);
        }
        // The stored form of 64-bit counts: the same bytes, as MessagePack sizes integers by
        // their value, and the same state back.
        #[derive(Serialize)]
        struct Wide<'a> {
            e: &'a [f64],
            c: Vec<u64>,
            s: Vec<u64>,
        }
        let wide = |v: &[u32]| v.iter().map(|&c| u64::from(c)).collect::<Vec<_>>();
        let built: Vec<u32> = ns.built().collect();
        let since: Vec<u32> = ns.counts.iter().zip(&built).map(|(c, b)| c - b).collect();
        let w = Wide { e: &ns.edges, c: wide(&built), s: wide(&since) };
        let bytes = rmp_serde::to_vec_named(&ns).unwrap();
        assert_eq!(bytes, rmp_serde::to_vec_named(&w).unwrap());
        let back: NormalScore = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, ns);
        assert_eq!(back.total(), ns.total());
        // A count no baseline can reach is a corrupt record: refused, not wrapped.
        let huge = Wide { e: &ns.edges, c: vec![u64::from(u32::MAX) + 1; ns.counts.len()], s: Vec::new() };
        assert!(rmp_serde::from_slice::<NormalScore>(&rmp_serde::to_vec_named(&huge).unwrap()).is_err());
        // So is a baseline of counts that each fit but add up beyond 32 bits.
        let mut c = vec![0; ns.counts.len()];
        c[0] = u64::from(u32::MAX);
        c[1] = 1;
        let over = Wide { e: &ns.edges, c, s: Vec::new() };
        let err = rmp_serde::from_slice::<NormalScore>(&rmp_serde::to_vec_named(&over).unwrap()).unwrap_err();
        assert!(err.to_string().contains("exceeds 32 bits"), "{err}");
        c = vec![0; ns.counts.len()];
        c[0] = u64::from(u32::MAX);
        let full = Wide { e: &ns.edges, c, s: Vec::new() };
        assert!(rmp_serde::from_slice::<NormalScore>(&rmp_serde::to_vec_named(&full).unwrap()).is_ok());
    }

    /// A recomputation leaves the counts to its cumulative counts: a complete baseline,
    /// which is never counted again, holds them once. The next count holds them again, and
    /// neither the scores, the stored bytes nor the decoded state tell the two apart.
    #[test]
    fn counts_are_held_only_while_they_differ_from_the_last_recomputation() {
        let sample: Vec<f64> = (0..1000).map(|i| (i % 97) as f64 * 1.5).collect();
        let mut ns = NormalScore::from_sample(&sample);
        assert!(ns.counts.is_empty(), "settled by the recomputation");
        let settled: Vec<u32> = ns.counts().collect();
        assert_eq!(settled.len(), 2 * ns.edges.len() + 1);
        assert_eq!(settled.iter().map(|&c| u64::from(c)).sum::<u64>(), 1000);
        let bytes = rmp_serde::to_vec_named(&ns).unwrap();
        let back: NormalScore = rmp_serde::from_slice(&bytes).unwrap();
        assert!(back.counts.is_empty(), "a decoded one without counts since holds none");
        assert_eq!((back.total(), &back), (1000, &ns));

        let cell = ns.cell(40.0);
        ns.count(40.0);
        let held: Vec<u32> = ns.counts.iter().collect();
        assert_eq!(held.len(), settled.len());
        for (c, (h, s)) in held.iter().zip(&settled).enumerate() {
            assert_eq!(*h, s + u32::from(c == cell), "cell {c}");
        }
        let scores: Vec<f64> = (0..200).map(|i| ns.score(i as f64 * 0.75, i)).collect();
        let back: NormalScore = rmp_serde::from_slice(&rmp_serde::to_vec_named(&ns).unwrap()).unwrap();
        assert_eq!(back.counts.iter().collect::<Vec<_>>(), held);
        assert_eq!((back.total(), &back), (1001, &ns));
        // The transform waits for the next recomputation.
        let mut back = back;
        back.derive();
        assert_eq!((0..200).map(|i| back.score(i as f64 * 0.75, i)).collect::<Vec<_>>(), scores);

        ns.recompute();
        assert!(ns.counts.is_empty());
        assert_eq!(ns.counts().collect::<Vec<_>>(), held);
        assert_eq!(ns.built().collect::<Vec<_>>(), held);
    }

    /// Counts are held in 16 bits while they fit: a cell that outgrows them widens its
    /// counts, and the transform, the stored bytes and the decoded state are those of
    /// 32-bit counts (a decoded record picks its width from its values).
    #[test]
    fn a_cell_beyond_16_bits_widens_the_counts_and_changes_nothing_else() {
        let sample: Vec<f64> = (0..1000).map(|i| (i % 97) as f64).collect();
        let mut ns = NormalScore::from_sample(&sample);
        assert!(matches!((&ns.cum, &ns.counts), (Counts::Short(_), Counts::Short(_))));
        for _ in 0..70_000 {
            ns.count(5.0);
        }
        assert!(matches!(&ns.counts, Counts::Long(_)), "one cell holds over 65,535");
        let wide: Vec<u32> = ns.counts.iter().collect();
        assert_eq!(wide.iter().map(|&c| u64::from(c)).sum::<u64>(), 71_000);
        let bytes = rmp_serde::to_vec_named(&ns).unwrap();
        #[derive(Serialize)]
        struct R<'a> {
            e: &'a [f64],
            c: Vec<u32>,
            s: Vec<u32>,
        }
        let built: Vec<u32> = ns.built().collect();
        let since: Vec<u32> = wide.iter().zip(&built).map(|(w, b)| w - b).collect();
        assert_eq!(bytes, rmp_serde::to_vec_named(&R { e: &ns.edges, c: built, s: since }).unwrap());
        let back: NormalScore = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, ns);
        ns.recompute();
        assert!(matches!(&ns.cum, Counts::Long(_)));
        assert_eq!(ns.built().collect::<Vec<_>>(), wide);
        let std = Normal::new(0.0, 1.0).unwrap();
        let level = ns.leveller();
        let own: Vec<u64> = ns.cum.iter().map(|c| std.inverse_cdf(level(c)).to_bits()).collect();
        assert_eq!((0..ns.cum.len()).map(|c| ns.z(c).to_bits()).collect::<Vec<_>>(), own);
        // Most events now fall on the atom at 5: its score interval spans the middle.
        let (lo, hi) = (ns.z(ns.cell(5.0)), ns.z(ns.cell(5.0) + 1));
        assert!(lo < 0.0 && hi > 0.0, "{lo} {hi}");
    }

    /// Keys whose baselines have the same size read one table; each boundary's score is the
    /// one a key computed for itself (the level of its cumulative count), bit for bit; a
    /// baseline beyond the tables' size keeps its own, as does version 1's transform.
    #[test]
    fn scores_come_from_one_table_per_baseline_size_and_are_those_of_the_levels() {
        let own = |ns: &NormalScore| -> Vec<u64> {
            let std = Normal::new(0.0, 1.0).unwrap();
            let level = ns.leveller();
            ns.cum.iter().map(|c| std.inverse_cdf(level(c)).to_bits()).collect()
        };
        let read = |ns: &NormalScore| -> Vec<u64> { (0..ns.cum.len()).map(|c| ns.z(c).to_bits()).collect() };
        let a = NormalScore::from_sample(&(0..1_000).map(|i| (i % 97) as f64).collect::<Vec<_>>());
        let b =
            NormalScore::from_sample(&(0..1_000).map(|i| (i * i % 1_013) as f64 * 0.5).collect::<Vec<_>>());
        let c = NormalScore::from_sample(&(0..999).map(|i| i as f64).collect::<Vec<_>>());
        let (Scores::Shared(ta), Scores::Shared(tb), Scores::Shared(tc)) = (&a.z, &b.z, &c.z) else {
            panic!("small baselines read a shared table");
        };
        assert!(Arc::ptr_eq(ta, tb), "1,000 events each: one table");
        assert!(!Arc::ptr_eq(ta, tc), "999 events: another");
        for ns in [&a, &b, &c] {
            assert_eq!(read(ns), own(ns));
        }

        // A baseline beyond the tables' size, as decoded from a record: its own 64 scores.
        #[derive(Serialize)]
        struct R {
            e: Vec<f64>,
            c: Vec<u32>,
        }
        let half = MAX_TABLE / 2 + 1;
        let big = R { e: vec![1.0, 2.0], c: vec![half, 0, 7, 0, half] };
        let mut big: NormalScore = rmp_serde::from_slice(&rmp_serde::to_vec_named(&big).unwrap()).unwrap();
        big.derive();
        assert!(matches!(&big.z, Scores::Own(z) if z.len() == 6), "{:?}", big.z);
        assert_eq!(read(&big), own(&big));
        assert!(big.score(1.5, 0) > big.score(0.5, 0));
    }

    #[test]
    fn continuous_scores_are_monotone_and_centred() {
        let sample: Vec<f64> = (0..1000).map(|i| (i as f64 + 0.5) / 1000.0).collect();
        let ns = NormalScore::from_sample(&sample);
        let a = ns.score(0.25, 0);
        let b = ns.score(0.5, 0);
        let c = ns.score(0.75, 0);
        assert!(a < b && b < c);
        // Uniform(0,1) data: the median maps to ~0 and the quartiles to ~±0.674.
        assert!(b.abs() < 0.05, "{b}");
        assert!((c - 0.674).abs() < 0.05, "{c}");
        assert!((a + 0.674).abs() < 0.05, "{a}");
    }

    #[test]
    fn ties_are_spread_over_their_atom() {
        // Three levels with probabilities 0.2, 0.5, 0.3.
        let mut sample = vec![1.0; 200];
        sample.extend(vec![2.0; 500]);
        sample.extend(vec![3.0; 300]);
        let ns = NormalScore::from_sample(&sample);
        let std = Normal::new(0.0, 1.0).unwrap();
        for i in 0..100 {
            let z = ns.score(2.0, i);
            let u = std.cdf(z);
            assert!((0.2 - 1e-9..=0.7 + 1e-9).contains(&u), "u={u}");
        }
    }

    #[test]
    fn tails_are_clamped() {
        let sample: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let ns = NormalScore::from_sample(&sample);
        assert!(ns.score(1e12, 0) <= ns.z(2 * ns.edges.len()) + TAIL_Z + 1e-12);
        assert!(ns.score(-1e12, 0) >= ns.z(1) - TAIL_Z - 1e-12);
    }
}
