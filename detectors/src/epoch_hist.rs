//! The quantile bound's histogram of an epoch's values: the bins of an HDR histogram with 2
//! significant digits, holding only the bins that have a count.
//!
//! Why not `hdrhistogram::Histogram` itself: it allocates every bin up to the largest value
//! it has seen, about 9 kB for latencies in seconds recorded in thousandths, per key. An
//! epoch of a few hundred values fills a few hundred bins at most. The bins, the observed
//! quantile and the stored form (hdrhistogram's V2 encoding) are exactly those of the
//! histogram it replaces: the tests compare them with hdrhistogram's on the same values.

use hdrhistogram::{CreationError, Histogram};

/// Significant digits of the bins: `2 × 10²` values resolved within a unit need 256
/// sub-buckets, half of which start each bucket after the first.
const SIGFIG: u8 = 2;
const SUB_BUCKETS: u64 = 256;
const HALF_MAGNITUDE: u32 = 7;
const HALF: u64 = 1 << HALF_MAGNITUDE;

/// The histogram of one epoch's values (see the module).
#[derive(Debug, Clone)]
pub(crate) struct EpochHistogram {
    /// `(bin index, count)` of the bins with a count, by index: hdrhistogram's index, so
    /// that the order is that of the values.
    bins: Vec<(u32, u32)>,
    /// Values recorded (saturating), as hdrhistogram counts them: its quantiles rank by it.
    total: u64,
    /// The largest value the dense histogram would track, which its stored form carries:
    /// 2 until a value outgrows the first bins, then the top of the bins grown to cover it.
    /// Kept across epochs, as hdrhistogram's `reset` keeps its size.
    highest: u64,
}

impl Default for EpochHistogram {
    fn default() -> Self {
        EpochHistogram { bins: Vec::new(), total: 0, highest: 2 }
    }
}

/// Equal when they hold the same counts, as hdrhistogram's equality has it (which leaves its
/// size out).
impl PartialEq for EpochHistogram {
    fn eq(&self, o: &Self) -> bool {
        self.bins == o.bins && self.total == o.total
    }
}

/// hdrhistogram's bin index of `v`.
fn index_for(v: u64) -> u32 {
    let bucket = 56 - (v | (SUB_BUCKETS - 1)).leading_zeros();
    let sub = v >> bucket;
    (((bucket + 1) as u64) << HALF_MAGNITUDE) as u32 + sub as u32 - HALF as u32
}

/// The lowest value of bin `i` (hdrhistogram's `value_for`).
fn value_for(i: u32) -> u64 {
    let bucket = (i >> HALF_MAGNITUDE) as i64 - 1;
    let sub = (i as u64 & (HALF - 1)) + HALF;
    if bucket < 0 {
        sub - HALF
    } else {
        sub << bucket
    }
}

/// The highest value in the same bin as `v` (hdrhistogram's `highest_equivalent`).
fn highest_equivalent(v: u64) -> u64 {
    if v == u64::MAX {
        return u64::MAX;
    }
    let bucket = 56 - (v | (SUB_BUCKETS - 1)).leading_zeros();
    let lowest = (v >> bucket) << bucket;
    lowest.saturating_add(1 << bucket) - 1
}

/// The top of the bins that a histogram tracking up to `highest` allocates: values above it
/// make a dense histogram grow.
fn covered(highest: u64) -> u64 {
    if highest < SUB_BUCKETS {
        SUB_BUCKETS - 1
    } else {
        highest.saturating_add(1).checked_next_power_of_two().map_or(u64::MAX, |p| p - 1)
    }
}

impl EpochHistogram {
    /// Records one value, as `Histogram::record` does with auto-resize (values are at most
    /// `u64::MAX / 4` here).
    pub fn record(&mut self, v: u64) {
        if v > covered(self.highest) {
            self.highest = covered(v);
        }
        let i = index_for(v);
        match self.bins.binary_search_by_key(&i, |(b, _)| *b) {
            Ok(at) => self.bins[at].1 = self.bins[at].1.saturating_add(1),
            Err(at) => self.bins.insert(at, (i, 1)),
        }
        self.total = self.total.saturating_add(1);
    }

    /// Forgets the values, keeping the size. The room for bins goes too: an epoch that
    /// ends is usually followed by a short one, and growing again costs a few allocations an
    /// epoch (no measurable instructions in the engine bench) where keeping the largest
    /// epoch's room held 2.7 times the memory in the state bench.
    pub fn reset(&mut self) {
        self.bins = Vec::new();
        self.total = 0;
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q`, as `Histogram::value_at_quantile` computes it: the highest
    /// value of the first bin at which the count reaches `⌈q · total⌉` (at least 1).
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        let q = if q > 1.0 { 1.0 } else { q };
        let target = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for &(i, c) in &self.bins {
            seen += u64::from(c);
            if seen >= target {
                let v = value_for(i);
                return if q == 0.0 { v } else { highest_equivalent(v) };
            }
        }
        0
    }

    /// The dense histogram with the same counts and size (an error only for a size that
    /// hdrhistogram itself refuses, which neither recording nor reading makes).
    pub fn to_dense(&self) -> Result<Histogram<u32>, CreationError> {
        let mut h = Histogram::<u32>::new_with_bounds(1, self.highest, SIGFIG)?;
        for &(i, c) in &self.bins {
            h.saturating_record_n(value_for(i), c);
        }
        Ok(h)
    }

    /// The same counts as a dense histogram of this precision; `None` for any other.
    pub fn from_dense(h: &Histogram<u32>) -> Option<EpochHistogram> {
        if h.sigfig() != SIGFIG || h.low() != 1 || h.high() < 2 {
            return None;
        }
        let bins = h
            .iter_recorded()
            .map(|v| (index_for(v.value_iterated_to()), v.count_at_value()))
            .collect::<Vec<_>>();
        let total = bins.iter().fold(0u64, |t, (_, c)| t.saturating_add(u64::from(*c)));
        Some(EpochHistogram { bins, total, highest: h.high() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer as _, V2Serializer};

    fn v2(h: &Histogram<u32>) -> Vec<u8> {
        let mut buf = Vec::new();
        V2Serializer::new().serialize(h, &mut buf).unwrap();
        buf
    }

    fn dense() -> Histogram<u32> {
        let mut h = Histogram::<u32>::new(SIGFIG).unwrap();
        h.auto(true);
        h
    }

    /// The bin arithmetic is hdrhistogram's, value by value: every value up to 2¹⁶, and
    /// values around every power of two up to 2⁶².
    #[test]
    fn bins_are_hdrhistograms() {
        let h = Histogram::<u32>::new_with_max(u64::MAX / 4, SIGFIG).unwrap();
        let around_powers = (8..63).flat_map(|k| {
            let p = 1u64 << k;
            [p - 2, p - 1, p, p + 1, p + p / 3]
        });
        for v in (0..1 << 16).chain(around_powers) {
            assert_eq!(value_for(index_for(v)), h.lowest_equivalent(v), "{v}");
            assert_eq!(highest_equivalent(v), h.highest_equivalent(v), "{v}");
        }
    }

    /// The same values in both, over several epochs (resets) and growth: the same quantiles at
    /// every step, the same stored bytes, and a stored histogram read back equal.
    #[test]
    fn matches_hdrhistogram_value_for_value() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(41);
        let mut next = || rng.random::<u64>();
        let (mut d, mut s) = (dense(), EpochHistogram::default());
        for step in 0..20_000u32 {
            // Mostly latencies in thousandths of a millisecond, some zeros, rare giants.
            let v = match next() % 100 {
                0 => 0,
                1 => next() % (u64::MAX / 4),
                2..=5 => next() % 300,
                _ => 50_000 + next() % 5_000_000,
            };
            d.record(v).unwrap();
            s.record(v);
            if step % 97 == 0 {
                for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
                    assert_eq!(s.value_at_quantile(q), d.value_at_quantile(q), "q {q} at {step}");
                }
                assert_eq!(v2(&s.to_dense().unwrap()), v2(&d), "stored form at {step}");
                assert_eq!(s.to_dense().unwrap(), d);
                assert_eq!(EpochHistogram::from_dense(&d).as_ref(), Some(&s));
                assert_eq!(s.is_empty(), d.is_empty());
            }
            if step % 1_500 == 1_499 {
                d.reset();
                s.reset();
                assert_eq!(v2(&s.to_dense().unwrap()), v2(&d), "stored form after a reset");
            }
        }
        assert!(s.highest > 1 << 40, "grew to {}", s.highest);
    }

    /// Before any growth the stored form says 2, as a new dense histogram's does; the first
    /// value past the first bins grows it to the top of the bins that cover it.
    #[test]
    fn size_follows_the_dense_histogram() {
        let (mut d, mut s) = (dense(), EpochHistogram::default());
        for v in [0, 1, 255] {
            d.record(v).unwrap();
            s.record(v);
        }
        assert_eq!((s.highest, d.high()), (2, 2));
        for v in [256, 1_000, 70_000] {
            d.record(v).unwrap();
            s.record(v);
            assert_eq!(s.highest, d.high(), "after {v}");
        }
        assert_eq!(v2(&s.to_dense().unwrap()), v2(&d));
    }

    /// Another precision is not ours: refused, not misread.
    #[test]
    fn another_precision_is_refused() {
        let h = Histogram::<u32>::new(3).unwrap();
        assert!(EpochHistogram::from_dense(&h).is_none());
        assert_eq!(EpochHistogram::from_dense(&dense()), Some(EpochHistogram::default()));
    }

    /// Saturated bins and totals behave as hdrhistogram's: the total keeps counting past a
    /// full bin, and quantiles rank by it.
    #[test]
    fn a_full_bin_saturates_as_hdrhistograms_does() {
        let mut d = dense();
        d.record_n(10, u32::MAX).unwrap();
        let mut s = EpochHistogram::from_dense(&d).unwrap();
        for v in [10, 20, 10] {
            d.record(v).unwrap();
            s.record(v);
        }
        assert_eq!(s.bins, [(index_for(10), u32::MAX), (index_for(20), 1)]);
        assert_eq!(s.total, u64::from(u32::MAX) + 3);
        for q in [0.0, 0.5, 1.0] {
            assert_eq!(s.value_at_quantile(q), d.value_at_quantile(q), "q {q}");
        }
    }
}
