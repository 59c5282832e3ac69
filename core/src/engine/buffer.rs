//! The event-time buffer: inputs waiting for the watermark, released in `(event time,
//! arrival)` order.
//!
//! Most sources deliver in event-time order, so most inputs arrive after everything
//! buffered. Those go to the back of a deque, which keeps them in order for free; only an
//! input that arrives out of order takes the B-tree (boxed: B-tree nodes shift their values
//! on insert and remove, and an input is large). Release takes the smaller of the two
//! fronts, so the order is exactly that of one ordered map.
//!
//! The deque's room follows what it held lately, not its peak: a burst (a source catching
//! up, or a fleet's events at one instant) can take it to hundreds of thousands of inputs
//! of about 260 bytes, and a deque never gives room back by itself.

use super::Tagged;
use std::collections::{BTreeMap, VecDeque};

/// A buffered input's place: its event time and arrival number (unique per engine).
pub(super) type Slot = (i64, u64);

/// The deque's room is never trimmed below this many inputs (about 66 kB).
const MIN_ROOM: usize = 256;

/// Inputs waiting for the watermark, in `(event time, arrival)` order.
#[derive(Debug, Default)]
pub(super) struct TimeBuffer {
    /// Inputs that arrived after everything in it, in order.
    in_order: VecDeque<(Slot, Tagged)>,
    /// The rest.
    out_of_order: BTreeMap<Slot, Box<Tagged>>,
    /// The most inputs the deque held since its room was last reviewed.
    peak: usize,
    /// Inputs released from the deque since then.
    released: usize,
}

impl TimeBuffer {
    /// Adds an input at its slot. Inlined, as `pop_until` is: every input passes both once,
    /// and out of line their calls cost 1 % of the engine bench's instructions (callgrind).
    #[inline]
    pub(super) fn insert(&mut self, slot: Slot, item: Tagged) {
        if self.in_order.back().is_none_or(|(last, _)| *last < slot) {
            self.in_order.push_back((slot, item));
            self.peak = self.peak.max(self.in_order.len());
        } else {
            self.out_of_order.insert(slot, Box::new(item));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    /// The first slot in order.
    pub(super) fn first(&self) -> Option<Slot> {
        match (self.in_order.front().map(|(s, _)| *s), self.out_of_order.keys().next().copied()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns the first input in order, if its event time is at most `until`.
    /// Always inlined: the room's bookkeeping tipped the compiler into calling it out of
    /// line, 5 M more instructions per 200k events in the engine bench (callgrind).
    #[inline(always)]
    pub(super) fn pop_until(&mut self, until: i64) -> Option<Tagged> {
        let first = self.first()?;
        if first.0 > until {
            return None;
        }
        let from_deque = self.in_order.front().is_some_and(|(s, _)| *s == first);
        if from_deque {
            self.released += 1;
            if self.released >= self.in_order.capacity() {
                self.review_room();
            }
            self.in_order.pop_front().map(|(_, item)| item)
        } else {
            self.out_of_order.pop_first().map(|(_, item)| *item)
        }
    }

    /// Once the deque has released as many inputs as it has room for: if it never held
    /// more than a quarter of its room meanwhile, gives back all but twice that (a buffer
    /// that fills and empties in cycles keeps the room its cycles use).
    #[cold]
    #[inline(never)]
    fn review_room(&mut self) {
        let room = self.in_order.capacity();
        if room > MIN_ROOM && self.peak < room / 4 {
            self.in_order.shrink_to((2 * self.peak).max(MIN_ROOM));
        }
        self.peak = self.in_order.len();
        self.released = 0;
    }

    /// Gives back the deque's room once nothing is buffered (end of input).
    pub(super) fn release_room(&mut self) {
        if self.in_order.is_empty() {
            self.in_order = VecDeque::new();
            (self.peak, self.released) = (0, 0);
        }
    }

    /// Every entry, in order (for snapshots).
    pub(super) fn entries(&self) -> Vec<(Slot, &Tagged)> {
        let mut all: Vec<(Slot, &Tagged)> = self
            .in_order
            .iter()
            .map(|(s, item)| (*s, item))
            .chain(self.out_of_order.iter().map(|(s, item)| (*s, &**item)))
            .collect();
        all.sort_unstable_by_key(|(s, _)| *s);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Input;
    use crate::model::lane::Scope;
    use crate::model::overrides::{OverrideKind, OverrideRequest};

    fn input(id: &str) -> Tagged {
        let o = OverrideRequest {
            override_id: id.into(),
            agent_id: "a".into(),
            scope: Scope::All,
            kind: OverrideKind::Tighten,
            lane: None,
            clause_id: None,
            principal: "p".into(),
            reason: "r".into(),
            ticket: "t".into(),
            issued_at: 0,
            expires_at: None,
            expected_seq: None,
        };
        (Input::from(o), None)
    }

    fn id(item: &Tagged) -> String {
        match &item.0 {
            Input::Override(o) => o.override_id.clone(),
            _ => String::new(),
        }
    }

    /// Released in the order of one ordered map, whatever mix of in-order and late arrivals.
    #[test]
    fn releases_in_event_time_then_arrival_order_like_an_ordered_map() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut buf = TimeBuffer::default();
        let mut reference: BTreeMap<Slot, String> = BTreeMap::new();
        let mut released = Vec::new();
        let mut want = Vec::new();
        let mut t = 0i64;
        let mut late = 0;
        for arrival in 0..5_000u64 {
            // Mostly ahead in time, sometimes behind (late), sometimes a tie.
            t += (next() % 5) as i64 - 1;
            let at = if next() % 7 == 0 { t - (next() % 50) as i64 } else { t };
            let name = format!("i{arrival}");
            let before = buf.out_of_order.len();
            buf.insert((at, arrival), input(&name));
            late += (buf.out_of_order.len() > before) as usize;
            reference.insert((at, arrival), name);
            assert_eq!(buf.len(), reference.len());
            assert_eq!(buf.first(), reference.keys().next().copied());
            if next() % 3 == 0 {
                let until = t - (next() % 20) as i64;
                while let Some(item) = buf.pop_until(until) {
                    released.push(id(&item));
                }
                while let Some(e) = reference.first_entry().filter(|e| e.key().0 <= until) {
                    want.push(e.remove());
                }
                assert_eq!(released, want);
            }
            let listed: Vec<Slot> = buf.entries().iter().map(|(s, _)| *s).collect();
            if arrival % 500 == 0 {
                assert_eq!(listed, reference.keys().copied().collect::<Vec<_>>());
            }
        }
        // Both paths were taken, many times.
        assert!(late > 500 && late < 4_000, "{late} of 5,000 inserts out of order");
        while let Some(item) = buf.pop_until(i64::MAX) {
            released.push(id(&item));
        }
        want.extend(reference.into_values());
        assert_eq!(released, want);
        assert_eq!(buf.len(), 0);
    }

    /// After a burst the room shrinks to twice what the buffer holds since, once it has
    /// released that many; a buffer that fills and empties in cycles keeps its room.
    #[test]
    fn the_deques_room_follows_what_it_held_lately() {
        let mut buf = TimeBuffer::default();
        let mut arrival = 0u64;
        let mut push = |buf: &mut TimeBuffer, n: usize| {
            for _ in 0..n {
                buf.insert((arrival as i64, arrival), input("x"));
                arrival += 1;
            }
        };
        // Cycles of 3,000 in and all out: the room they need stays.
        for _ in 0..5 {
            push(&mut buf, 3_000);
            assert_eq!(buf.len(), 3_000);
            while buf.pop_until(i64::MAX).is_some() {}
        }
        let burst_room = buf.in_order.capacity();
        assert!(burst_room >= 3_000, "{burst_room}");
        // Then a steady 100 in the buffer: after releasing a room's worth, the room falls
        // to twice the most held meanwhile, or `MIN_ROOM`.
        push(&mut buf, 100);
        let mut released = 0;
        while released < 2 * burst_room {
            push(&mut buf, 1);
            let item = buf.pop_until(i64::MAX - 1);
            assert!(item.is_some());
            released += 1;
            // The first review after the burst still counts the burst's inputs.
            if released == burst_room {
                assert_eq!(buf.in_order.capacity(), burst_room, "not before a room's worth");
            }
        }
        let room = buf.in_order.capacity();
        assert!((MIN_ROOM..2 * MIN_ROOM).contains(&room), "room {room} after a steady 100");
        assert_eq!(buf.len(), 100);
        // Order is kept across the trim: the 100 left are the last 100 in.
        let mut slots = Vec::new();
        while let Some(slot) = buf.first() {
            assert!(buf.pop_until(i64::MAX).is_some());
            slots.push(slot.1);
        }
        assert_eq!(slots, (arrival - 100..arrival).collect::<Vec<_>>());
        buf.release_room();
        assert_eq!(buf.in_order.capacity(), 0);
    }
}
