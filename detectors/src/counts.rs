//! Cell counts held in 16 bits while every one fits, and in 32 after.
//!
//! Why: a real key's transform holds its cumulative counts at 64 cell boundaries, and its
//! cell counts while a baseline grows, and both are bounded by the baseline's size. At the
//! default `reference_max` (16,384) every one fits in 16 bits, which halves 256 + 252 bytes
//! per key. Larger baselines widen on the first count that does not fit, so nothing is
//! clamped and no configuration is refused for it.

/// Counts in 16 bits while they fit, else 32.
#[derive(Debug, Clone)]
pub(crate) enum Counts {
    /// Every count at most `u16::MAX`.
    Short(Box<[u16]>),
    /// Any count up to `u32::MAX`.
    Long(Box<[u32]>),
}

impl Default for Counts {
    fn default() -> Counts {
        Counts::Short(Box::default())
    }
}

/// Equal when the counts are, whatever their width.
impl PartialEq for Counts {
    fn eq(&self, o: &Counts) -> bool {
        self.iter().eq(o.iter())
    }
}

impl Counts {
    /// The given counts, in 16 bits if every one fits.
    pub(crate) fn collect(counts: impl IntoIterator<Item = u32>) -> Counts {
        let long: Vec<u32> = counts.into_iter().collect();
        if long.iter().all(|&c| c <= u32::from(u16::MAX)) {
            Counts::Short(long.iter().map(|&c| c as u16).collect())
        } else {
            Counts::Long(long.into())
        }
    }

    /// `n` zero counts.
    pub(crate) fn zeros(n: usize) -> Counts {
        Counts::Short(vec![0; n].into())
    }

    /// How many counts.
    pub(crate) fn len(&self) -> usize {
        match self {
            Counts::Short(c) => c.len(),
            Counts::Long(c) => c.len(),
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Count `i` (which must be in range, as a slice index must).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> u32 {
        match self {
            Counts::Short(c) => u32::from(c[i]),
            Counts::Long(c) => c[i],
        }
    }

    /// The last count.
    pub(crate) fn last(&self) -> Option<u32> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    /// Every count, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Adds one to count `i`, saturating at `u32::MAX`; widens to 32 bits first when it
    /// would not fit in 16. Out of range, nothing (as a missing cell counts nothing).
    pub(crate) fn increment(&mut self, i: usize) {
        if let Counts::Short(c) = self {
            match c.get_mut(i) {
                Some(n) if *n < u16::MAX => {
                    *n += 1;
                    return;
                }
                Some(_) => self.widen(),
                None => return,
            }
        }
        if let Counts::Long(c) = self {
            if let Some(n) = c.get_mut(i) {
                *n = n.saturating_add(1);
            }
        }
    }

    /// To 32 bits: once, when a count first outgrows 16.
    #[cold]
    #[inline(never)]
    fn widen(&mut self) {
        *self = Counts::Long(self.iter().collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_widen_when_one_outgrows_16_bits_and_compare_by_value() {
        let mut c = Counts::collect([0, 5, u32::from(u16::MAX) - 1]);
        assert!(matches!(c, Counts::Short(_)));
        c.increment(2);
        assert!(matches!(c, Counts::Short(_)), "65,535 still fits");
        c.increment(2);
        assert!(matches!(c, Counts::Long(_)), "65,536 does not");
        assert_eq!(c.iter().collect::<Vec<_>>(), [0, 5, 65_536]);
        c.increment(9);
        assert_eq!(c.iter().collect::<Vec<_>>(), [0, 5, 65_536], "out of range counts nothing");
        assert_eq!(Counts::collect([0, 5, 65_536]), c);
        assert_ne!(Counts::collect([0, 5, 65_535]), c);
        let mut top = Counts::collect([u32::MAX]);
        top.increment(0);
        assert_eq!((top.last(), top.len(), top.is_empty()), (Some(u32::MAX), 1, false));
        assert_eq!((Counts::default().last(), Counts::zeros(3).iter().sum::<u32>()), (None, 0));
        // Short counts take half the room.
        assert!(matches!(Counts::collect([1, 2, 3]), Counts::Short(s) if s.len() == 3));
    }
}
