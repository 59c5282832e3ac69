//! The quantile bound's histogram of an epoch's values: the bins of an HDR histogram with 2
//! significant digits, holding only the bins that have a count.
//!
//! Why not `hdrhistogram::Histogram` itself: it allocates every bin up to the largest value
//! it has seen, about 9 kB for latencies in seconds recorded in thousandths, per key. An
//! epoch of a few hundred values fills a few hundred bins at most. The bins, the observed
//! quantile and the stored form (hdrhistogram's V2 encoding) are exactly those of the
//! histogram it replaces: the tests compare them with hdrhistogram's on the same values.

#[cfg(test)]
use hdrhistogram::CreationError;
use hdrhistogram::Histogram;

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

/// hdrhistogram's V2 cookie (integer counts, uncompressed).
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;

/// How many bins a dense histogram tracking up to `highest` holds (hdrhistogram's
/// `buckets_to_cover`, then half a bucket of sub-buckets per bucket and one more).
fn counts_len(highest: u64) -> u64 {
    let (mut untrackable, mut buckets) = (SUB_BUCKETS, 1u64);
    while untrackable <= highest {
        if untrackable > u64::MAX / 2 {
            buckets += 1;
            break;
        }
        untrackable <<= 1;
        buckets += 1;
    }
    (buckets + 1) * HALF
}

fn zig_zag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// hdrhistogram's varint: seven bits a byte, low first, and a ninth byte taken whole.
fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    for _ in 0..8 {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        out.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one varint from the front of `b`; `None` when it ends first.
pub(crate) fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for k in 0..9 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        if k == 8 {
            return Some(v | u64::from(byte) << 56);
        }
        v |= u64::from(byte & 0x7f) << (7 * k);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    Some(v)
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
    #[cfg(test)]
    pub fn to_dense(&self) -> Result<Histogram<u32>, CreationError> {
        let mut h = Histogram::<u32>::new_with_bounds(1, self.highest, SIGFIG)?;
        for &(i, c) in &self.bins {
            h.saturating_record_n(value_for(i), c);
        }
        Ok(h)
    }

    /// Appends the V2 encoding of [`EpochHistogram::to_dense`], byte for byte what
    /// hdrhistogram's `V2Serializer` writes for it, without building the dense histogram
    /// (about 9 kB for latencies in seconds, allocated and walked per key and snapshot).
    pub fn write_v2(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&V2_COOKIE.to_be_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&u32::from(SIGFIG).to_be_bytes());
        out.extend_from_slice(&1u64.to_be_bytes());
        out.extend_from_slice(&self.highest.to_be_bytes());
        out.extend_from_slice(&1.0f64.to_be_bytes());
        let start = out.len();
        // The bins up to the last with a count (bin 0 alone when none has), runs of two or
        // more empty bins written as their negated length.
        let mut next = 0u32;
        for &(i, c) in &self.bins {
            match i - next {
                0 => {}
                1 => write_varint(out, 0),
                gap => write_varint(out, zig_zag(-i64::from(gap))),
            }
            write_varint(out, zig_zag(i64::from(c)));
            next = i + 1;
        }
        if self.bins.is_empty() {
            write_varint(out, 0);
        }
        let len = (out.len() - start) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Reads the V2 form [`EpochHistogram::write_v2`] writes (this precision, no
    /// normalizing offset, integer counts), as hdrhistogram's `Deserializer` followed by
    /// [`EpochHistogram::from_dense`] reads it, errors included; `Ok(None)` for any other
    /// header, which that path reads. `b` was checked by the caller: its payload is within
    /// it and no count is `i64::MIN`.
    pub fn read_v2(b: &[u8]) -> Result<Option<EpochHistogram>, &'static str> {
        let word = |at: usize| b.get(at..at + 4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        let long = |at: usize| b.get(at..at + 8).map(|w| u64::from_be_bytes(w.try_into().unwrap_or([0; 8])));
        let (Some(len), Some(offset), Some(sigfig), Some(low), Some(highest), Some(ratio)) =
            (word(4), word(8), word(12), long(16), long(24), long(32))
        else {
            return Ok(None);
        };
        if word(0) != Some(V2_COOKIE)
            || offset != 0
            || sigfig != u32::from(SIGFIG)
            || low != 1
            || highest < 2
            || f64::from_bits(ratio) != 1.0
        {
            return Ok(None);
        }
        let Some(mut payload) = b.get(40..40 + len as usize) else { return Ok(None) };
        let limit = counts_len(highest);
        let (mut bins, mut total, mut at) = (Vec::new(), 0u64, 0u64);
        while !payload.is_empty() {
            let v = read_varint(&mut payload).ok_or("truncated HDR histogram count")?;
            let n = (v >> 1) as i64 ^ -((v & 1) as i64);
            // Positions past `u64::MAX` are an error there too (`usize` arithmetic, checked).
            const PAST_END: &str = "HDR histogram counts beyond any position";
            if n < 0 {
                at = at.checked_add(n.unsigned_abs()).ok_or(PAST_END)?;
                continue;
            }
            let c = u32::try_from(n).map_err(|_| "HDR histogram count beyond 32 bits")?;
            if c > 0 {
                if at >= limit {
                    return Err("HDR histogram counts beyond its highest value");
                }
                bins.push((at as u32, c));
                total = total.saturating_add(u64::from(c));
            }
            at = at.checked_add(1).ok_or(PAST_END)?;
        }
        Ok(Some(EpochHistogram { bins, total, highest }))
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
