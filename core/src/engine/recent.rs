//! The event times of a clause state's newest observations.
//!
//! Why not a plain deque: every clause of a fleet holds one, and most keep a single time (a
//! clause without a freshness window, or one asking for one event). A `VecDeque` took 32
//! bytes inline and an allocation for that one time; this holds it inline in 16.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;

/// The newest observation times, oldest first, at most a window's `keep`.
///
/// Stored as the sequence of times, as the deque it replaces was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Recent {
    /// No observation yet.
    #[default]
    Empty,
    /// One time: the common case, without an allocation.
    One(i64),
    /// More than one (a freshness window of `min_events` > 1), with room for exactly the
    /// window.
    Many(Box<VecDeque<i64>>),
}

impl Recent {
    /// Number of times held.
    pub fn len(&self) -> usize {
        match self {
            Recent::Empty => 0,
            Recent::One(_) => 1,
            Recent::Many(d) => d.len(),
        }
    }

    /// Whether no time is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest time held.
    pub fn front(&self) -> Option<i64> {
        match self {
            Recent::Empty => None,
            Recent::One(t) => Some(*t),
            Recent::Many(d) => d.front().copied(),
        }
    }

    /// The times, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        let (one, many) = match self {
            Recent::Empty => (None, None),
            Recent::One(t) => (Some(*t), None),
            Recent::Many(d) => (None, Some(d.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Room for times without growing: 1 inline, or the deque's.
    pub fn capacity(&self) -> usize {
        match self {
            Recent::Empty | Recent::One(_) => 1,
            Recent::Many(d) => d.capacity(),
        }
    }

    /// Replaces the one time held, if exactly one is held inline: the hot path of a clause
    /// that keeps one.
    #[inline]
    pub fn replace_one(&mut self, t: i64) -> bool {
        match self {
            Recent::One(x) => {
                *x = t;
                true
            }
            _ => false,
        }
    }

    /// Adds `t` as the newest, keeping at most `keep` (at least 1).
    pub fn push(&mut self, t: i64, keep: usize) {
        let keep = keep.max(1);
        if keep == 1 {
            *self = Recent::One(t);
            return;
        }
        let mut d = match std::mem::take(self) {
            Recent::Many(d) => d,
            other => {
                let mut d = Box::new(VecDeque::with_capacity(keep));
                d.extend(other.iter());
                d
            }
        };
        if d.capacity() < keep {
            // Exactly what the window keeps: a deque's own growth starts at four times.
            let len = d.len();
            d.reserve_exact(keep - len);
        }
        // Room first, so the deque never grows past `keep`.
        while d.len() >= keep {
            d.pop_front();
        }
        d.push_back(t);
        *self = Recent::Many(d);
    }
}

impl Serialize for Recent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Recent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let times = Vec::<i64>::deserialize(d)?;
        Ok(match times[..] {
            [] => Recent::Empty,
            [t] => Recent::One(t),
            _ => Recent::Many(Box::new(times.into())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_the_window_and_one_inline() {
        let mut r = Recent::default();
        assert_eq!((r.len(), r.front()), (0, None));
        r.push(5, 1);
        assert_eq!(r, Recent::One(5));
        assert!(r.replace_one(6));
        r.push(7, 3);
        r.push(8, 3);
        r.push(9, 3);
        assert_eq!(r.iter().collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!((r.front(), r.capacity()), (Some(7), 3));
        assert!(!r.replace_one(10), "a window of more than one is not replaced in place");
        r.push(10, 2);
        assert_eq!(r.iter().collect::<Vec<_>>(), [9, 10], "a smaller window drops the oldest");
        r.push(11, 0);
        assert_eq!(r, Recent::One(11), "at least one is kept");
    }

    #[test]
    fn stored_as_the_deque_it_replaces_and_read_back_equal() {
        for times in [vec![], vec![3], vec![1, -2, 3]] {
            let deque: VecDeque<i64> = times.iter().copied().collect();
            let mut r = Recent::default();
            for &t in &times {
                r.push(t, times.len());
            }
            let bytes = rmp_serde::to_vec_named(&r).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec_named(&deque).unwrap());
            assert_eq!(rmp_serde::from_slice::<Recent>(&bytes).unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), serde_json::to_string(&deque).unwrap());
        }
    }
}
