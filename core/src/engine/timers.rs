//! Timers in event time: freshness checks, override expiries and state-TTL checks, fired in
//! `(due time, timer)` order.

use super::Timer;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Pending timers, ordered by due time, then by the timer itself (not by insertion), so
/// timers rebuilt from restored state fire in the same order as the originals.
///
/// Every agent has a state-TTL check pending, and most agents nothing else, so those are
/// kept apart as `(due, id)`: 24 bytes an entry, where a [`Timer`] beside its time takes 48.
/// A TTL check orders after every other timer due at the same time (as `Timer::Ttl`, the
/// last variant, does), which is how the two sets are merged.
#[derive(Debug)]
pub(super) struct Timers {
    /// Freshness checks and override expiries.
    other: BTreeSet<(i64, Timer)>,
    /// State-TTL checks, by agent.
    ttl: BTreeSet<(i64, Arc<str>)>,
    /// When the first timer is due, `i64::MAX` when none is: every in-order input asks,
    /// and almost always nothing is due.
    due: i64,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers { other: BTreeSet::new(), ttl: BTreeSet::new(), due: i64::MAX }
    }
}

impl Timers {
    /// Schedules `timer` at `at`.
    pub(super) fn insert(&mut self, at: i64, timer: Timer) {
        match timer {
            Timer::Ttl(id) => self.ttl.insert((at, id)),
            other => self.other.insert((at, other)),
        };
        self.due = self.due.min(at);
    }

    /// When the first timer is due.
    pub(super) fn first_due(&self) -> Option<i64> {
        (self.due != i64::MAX || !self.is_empty()).then_some(self.due)
    }

    fn is_empty(&self) -> bool {
        self.other.is_empty() && self.ttl.is_empty()
    }

    /// Removes and returns the first timer in order, if it is due by `upto`.
    #[inline]
    pub(super) fn pop_due(&mut self, upto: i64) -> Option<(i64, Timer)> {
        if self.due > upto {
            return None;
        }
        self.pop_first()
    }

    #[cold]
    #[inline(never)]
    fn pop_first(&mut self) -> Option<(i64, Timer)> {
        let other = self.other.first().map(|(t, _)| *t);
        let ttl = self.ttl.first().map(|(t, _)| *t);
        let popped = match (other, ttl) {
            (Some(a), b) if b.is_none_or(|b| a <= b) => self.other.pop_first(),
            (_, Some(_)) => self.ttl.pop_first().map(|(t, id)| (t, Timer::Ttl(id))),
            _ => None,
        };
        self.recompute_due();
        popped
    }

    fn recompute_due(&mut self) {
        let other = self.other.first().map_or(i64::MAX, |(t, _)| *t);
        let ttl = self.ttl.first().map_or(i64::MAX, |(t, _)| *t);
        self.due = other.min(ttl);
    }

    /// Keeps the freshness checks and override expiries `keep` accepts (TTL checks stay).
    pub(super) fn retain_other(&mut self, keep: impl FnMut(&(i64, Timer)) -> bool) {
        self.other.retain(keep);
        self.recompute_due();
    }

    /// Every pending timer's agent.
    #[cfg(test)]
    pub(super) fn agents(&self) -> impl Iterator<Item = &Arc<str>> {
        let other = self.other.iter().map(|(_, t)| t.agent());
        other.chain(self.ttl.iter().map(|(_, a)| a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fired in the order of one ordered set of `(due, timer)`, whatever the mix.
    #[test]
    fn fires_in_the_order_of_one_ordered_set() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut timers = Timers::default();
        let mut reference: BTreeSet<(i64, Timer)> = BTreeSet::new();
        for i in 0..3_000u64 {
            let at = (next() % 200) as i64;
            let id: Arc<str> = format!("a{}", next() % 50).into();
            let timer = match next() % 3 {
                0 => Timer::Ttl(id),
                1 => Timer::OverrideExpiry(id, format!("o{i}")),
                _ => Timer::Freshness(id, (0, (next() % 4) as u16, Default::default())),
            };
            timers.insert(at, timer.clone());
            reference.insert((at, timer));
            assert_eq!(timers.first_due(), reference.first().map(|(t, _)| *t));
            if next() % 5 == 0 {
                let upto = (next() % 200) as i64;
                loop {
                    let want = reference.first().filter(|(t, _)| *t <= upto).cloned();
                    if let Some(w) = &want {
                        reference.remove(w);
                    }
                    assert_eq!(timers.pop_due(upto), want);
                    if want.is_none() {
                        break;
                    }
                }
            }
        }
        while let Some(t) = timers.pop_due(i64::MAX) {
            assert_eq!(Some(t), reference.pop_first());
        }
        assert!(reference.is_empty() && timers.first_due().is_none());
    }
}
