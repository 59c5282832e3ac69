//! An agent's clause states, in key order.

use super::state::{ClauseKey, ClauseState, Segment};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, Serializer};

/// An agent's clause states, kept sorted by key in one vector.
///
/// Every event looks up each of its clauses here, in key order: the B-tree this replaced
/// spent 7 % of the engine's instructions walking its nodes, and a binary search as many.
/// So a lookup first tries the entry after the last one found, and the one found last;
/// an unsegmented clause is then found with one comparison. The vector also holds 40 bytes
/// per state where the B-tree's first node took about 440 however few it held. Inserting
/// is linear in the agent's states, which only a clause segmented by a field with very
/// many values makes noticeable.
///
/// Stored as a map from key to state, exactly as the `BTreeMap` it replaced.
#[derive(Debug, Clone, Default)]
pub struct ClauseMap {
    entries: Vec<(ClauseKey, Box<ClauseState>)>,
    /// The entry found last: a hint, not part of the map's value.
    cursor: usize,
}

/// Equal maps hold equal states; where the last lookup landed does not matter.
impl PartialEq for ClauseMap {
    fn eq(&self, o: &ClauseMap) -> bool {
        self.entries == o.entries
    }
}

/// Key order of `a` against the key `(p, c, segment)`, with the two indexes compared as
/// one number: the order of [`ClauseKey`] itself.
fn order_parts(a: &ClauseKey, p: u16, c: u16, segment: &str) -> std::cmp::Ordering {
    let (x, y) = ((a.0 as u32) << 16 | a.1 as u32, (p as u32) << 16 | c as u32);
    x.cmp(&y).then_with(|| a.2.cmp_str(segment))
}

impl ClauseMap {
    /// An empty map.
    pub const fn new() -> ClauseMap {
        ClauseMap { entries: Vec::new(), cursor: 0 }
    }

    /// How many states the agent has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the agent has no clause state.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where `key` is (`Ok`) or would go (`Err`).
    #[inline(always)]
    fn find(&self, key: &ClauseKey) -> Result<usize, usize> {
        self.find_parts(key.0, key.1, key.2.as_str())
    }

    /// Where the key of pact `p`, clause `c` and `segment` (`""` when unsegmented) is or would
    /// go, without building it: the entry after the cursor and the cursor's first, then a
    /// binary search. An event's clause is looked up from its parts, so that a segmented
    /// clause finds its state without allocating a key on every event. Always inlined: a
    /// call per clause and event costs more than its few comparisons.
    #[inline(always)]
    fn find_parts(&self, p: u16, c: u16, segment: &str) -> Result<usize, usize> {
        let next = if self.cursor + 1 < self.entries.len() { self.cursor + 1 } else { 0 };
        for i in [next, self.cursor] {
            if self.entries.get(i).is_some_and(|(k, _)| k.0 == p && k.1 == c && k.2.is(segment)) {
                return Ok(i);
            }
        }
        self.entries.binary_search_by(|(k, _)| order_parts(k, p, c, segment))
    }

    /// The state at `key`.
    pub fn get(&self, key: &ClauseKey) -> Option<&ClauseState> {
        self.find(key).ok().map(|i| &*self.entries[i].1)
    }

    /// The state at `key`, to change.
    pub fn get_mut(&mut self, key: &ClauseKey) -> Option<&mut ClauseState> {
        let i = self.find(key).ok()?;
        self.cursor = i;
        Some(&mut *self.entries[i].1)
    }

    /// The key and state of pact `p`, clause `c` and `segment` (`""` when unsegmented), the
    /// state made by `new` if there is none yet. The key is built only then; the one
    /// returned is the map's own, so that a caller needs no key of its own.
    #[inline]
    pub fn entry_or_insert_with(
        &mut self,
        p: u16,
        c: u16,
        segment: &str,
        new: impl FnOnce() -> Box<ClauseState>,
    ) -> (&ClauseKey, &mut ClauseState) {
        let i = match self.find_parts(p, c, segment) {
            Ok(i) => i,
            Err(i) => {
                self.insert_at(i, (p, c, Segment::from(segment)), new());
                i
            }
        };
        self.cursor = i;
        let (k, s) = &mut self.entries[i];
        (k, s)
    }

    /// Sets the state at `key`; the state it replaces, if any.
    pub fn insert(&mut self, key: ClauseKey, state: Box<ClauseState>) -> Option<Box<ClauseState>> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, state)),
            Err(i) => {
                self.insert_at(i, key, state);
                None
            }
        }
    }

    /// Inserts at `i`, with room doubling from one: a vector's own growth starts at four
    /// (120 bytes unused for the many agents with a single clause). Out of line: it is rare,
    /// and kept apart it leaves the lookups small enough to inline.
    #[cold]
    #[inline(never)]
    fn insert_at(&mut self, i: usize, key: ClauseKey, state: Box<ClauseState>) {
        let len = self.entries.len();
        if len == self.entries.capacity() {
            self.entries.reserve_exact(len.max(1));
        }
        self.entries.insert(i, (key, state));
    }

    /// Keeps only the states for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&ClauseKey, &mut ClauseState) -> bool) {
        self.entries.retain_mut(|(k, s)| keep(k, s));
    }

    /// The states in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&ClauseKey, &ClauseState)> + Clone {
        self.entries.iter().map(|(k, s)| (k, &**s))
    }

    /// The states in key order, to change.
    pub fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = (&ClauseKey, &mut ClauseState)> {
        self.entries.iter_mut().map(|(k, s)| (&*k, &mut **s))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &ClauseKey> + Clone {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The states in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &ClauseState> + Clone {
        self.entries.iter().map(|(_, s)| &**s)
    }
}

impl FromIterator<(ClauseKey, Box<ClauseState>)> for ClauseMap {
    /// As a `BTreeMap` collects: sorted, and the last of equal keys kept.
    fn from_iter<I: IntoIterator<Item = (ClauseKey, Box<ClauseState>)>>(iter: I) -> ClauseMap {
        let mut entries: Vec<_> = iter.into_iter().collect();
        // Stable, so that among equal keys the last one collected stays last.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(ClauseKey, Box<ClauseState>)> = Vec::with_capacity(entries.len());
        for e in entries {
            match kept.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => kept.push(e),
            }
        }
        ClauseMap { entries: kept, cursor: 0 }
    }
}

impl IntoIterator for ClauseMap {
    type Item = (ClauseKey, Box<ClauseState>);
    type IntoIter = std::vec::IntoIter<(ClauseKey, Box<ClauseState>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl Serialize for ClauseMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for ClauseMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ClauseMap, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = ClauseMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map from clause key to clause state")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ClauseMap, A::Error> {
                let mut entries = Vec::with_capacity(m.size_hint().unwrap_or(0).min(64));
                while let Some(e) = m.next_entry::<ClauseKey, Box<ClauseState>>()? {
                    entries.push(e);
                }
                // Written in order, so read in order; anything else is put in order as a
                // `BTreeMap` would (the last of equal keys wins).
                if entries.windows(2).all(|w| w[0].0 < w[1].0) {
                    Ok(ClauseMap { entries, cursor: 0 })
                } else {
                    Ok(entries.into_iter().collect())
                }
            }
        }
        d.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A state told apart by its creation time.
    fn state(t: i64) -> Box<ClauseState> {
        let pact = include_str!("../../../tests/fixtures/lane-rules.yaml");
        let p = crate::pact::parse_pact(pact, "rules.yaml").unwrap();
        let proto = crate::engine::Engine::new(Default::default(), vec![p]).protos[0][0].clone();
        Box::new(ClauseState::new(proto, t))
    }

    fn key(p: u16, c: u16, seg: &str) -> ClauseKey {
        (p, c, Segment::from(seg))
    }

    /// The state at `k`, made with creation time `t` if there is none; its creation time.
    fn entry(m: &mut ClauseMap, k: &ClauseKey, t: i64) -> i64 {
        let (found, s) = m.entry_or_insert_with(k.0, k.1, k.2.as_str(), || state(t));
        assert_eq!(found, k, "the entry's key is the one asked for");
        s.created
    }

    /// The same keys in the same order as a B-tree, whatever order they come in, and each
    /// lookup finds its own state, cursor or not.
    #[test]
    fn keeps_btree_order_and_finds_every_key() {
        let keys =
            [key(1, 0, ""), key(0, 2, "b"), key(0, 2, ""), key(0, 2, "aa"), key(0, 0, ""), key(2, 1, "")];
        let mut m = ClauseMap::new();
        let mut b = BTreeMap::new();
        for (t, k) in keys.iter().enumerate() {
            entry(&mut m, k, t as i64);
            b.insert(k.clone(), t as i64);
        }
        assert_eq!(m.keys().cloned().collect::<Vec<_>>(), b.keys().cloned().collect::<Vec<_>>());
        // In order, backwards and by jumps: the cursor only changes where the search starts.
        let mut order: Vec<&ClauseKey> = keys.iter().collect();
        order.extend(keys.iter().rev());
        order.extend([&keys[3], &keys[0], &keys[3], &keys[5]]);
        for k in order {
            assert_eq!(m.get_mut(k).map(|s| s.created), Some(b[k]), "{k:?}");
            assert_eq!(m.get(k).map(|s| s.created), Some(b[k]), "{k:?}");
        }
        assert!(m.get(&key(0, 1, "")).is_none());
        assert!(m.get_mut(&key(0, 2, "c")).is_none());
        // An existing key is found, not inserted again.
        assert_eq!(entry(&mut m, &keys[1], 99), 1);
        assert_eq!(m.len(), keys.len());
    }

    /// A key's parts compare as the key built from them would: found and ordered the same,
    /// for the unsegmented key, segments of one length and of different lengths.
    #[test]
    fn parts_compare_as_their_key() {
        let segments = ["", "a", "b", "aa", "ab", "b|x", "é", "a|"];
        for x in segments {
            for y in segments {
                let (a, b) = (Segment::from(x), Segment::from(y));
                assert_eq!(a.cmp_str(y), a.cmp(&b), "{x:?} against {y:?}");
                assert_eq!(a.is(y), a == b, "{x:?} is {y:?}");
            }
        }
        // Across indexes and segments, a lookup by parts lands where the key's would.
        let keys: Vec<ClauseKey> = [(0, 1, "b"), (0, 1, ""), (1, 0, "aa"), (0, 2, ""), (1, 0, "a")]
            .iter()
            .map(|&(p, c, s)| key(p, c, s))
            .collect();
        let mut m = ClauseMap::new();
        for (t, k) in keys.iter().enumerate() {
            entry(&mut m, k, t as i64);
        }
        for probe in
            [key(0, 0, ""), key(0, 1, "a"), key(0, 1, "ba"), key(1, 0, "b"), key(2, 0, ""), key(0, 1, "b")]
        {
            let sorted: Vec<&ClauseKey> = m.keys().collect();
            let want = sorted.binary_search(&&probe);
            assert_eq!(m.find_parts(probe.0, probe.1, probe.2.as_str()), want, "{probe:?}");
        }
    }

    /// Capacity doubles from one: an agent with one clause state holds room for one.
    #[test]
    fn capacity_doubles_from_one() {
        let mut m = ClauseMap::new();
        let mut caps = Vec::new();
        for c in 0..5 {
            entry(&mut m, &key(0, c, ""), 0);
            caps.push(m.entries.capacity());
        }
        m.insert(key(1, 0, ""), state(1));
        caps.push(m.entries.capacity());
        assert_eq!(caps, [1, 2, 4, 4, 8, 8]);
    }

    /// Collected as a B-tree collects: sorted, the last of equal keys kept.
    #[test]
    fn collects_like_a_btree() {
        let m: ClauseMap = [(key(1, 0, ""), state(1)), (key(0, 0, ""), state(2)), (key(1, 0, ""), state(3))]
            .into_iter()
            .collect();
        let got: Vec<(ClauseKey, i64)> = m.iter().map(|(k, s)| (k.clone(), s.created)).collect();
        assert_eq!(got, vec![(key(0, 0, ""), 2), (key(1, 0, ""), 3)]);
    }

    /// Stored exactly as the `BTreeMap` it replaced, and read back from it, in order or not.
    #[test]
    fn stores_the_btree_format() {
        let entries = [(key(0, 1, "x"), state(1)), (key(0, 1, ""), state(2)), (key(3, 0, ""), state(3))];
        let m: ClauseMap = entries.iter().cloned().collect();
        let b: BTreeMap<ClauseKey, Box<ClauseState>> = entries.iter().cloned().collect();
        let bytes = rmp_serde::to_vec_named(&m).unwrap();
        assert_eq!(bytes, rmp_serde::to_vec_named(&b).unwrap());
        assert_eq!(rmp_serde::from_slice::<ClauseMap>(&bytes).unwrap(), m);
        // A map written out of order (not by us) is put in order, the last duplicate kept.
        let unordered: Vec<(ClauseKey, Box<ClauseState>)> =
            vec![entries[2].clone(), entries[0].clone(), (key(3, 0, ""), state(9)), entries[1].clone()];
        struct AsMap(Vec<(ClauseKey, Box<ClauseState>)>);
        impl Serialize for AsMap {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        let buf = rmp_serde::to_vec_named(&AsMap(unordered)).unwrap();
        let back: ClauseMap = rmp_serde::from_slice(&buf).unwrap();
        let got: Vec<(ClauseKey, i64)> = back.iter().map(|(k, s)| (k.clone(), s.created)).collect();
        assert_eq!(got, vec![(key(0, 1, ""), 2), (key(0, 1, "x"), 1), (key(3, 0, ""), 9)]);
    }

    /// Equality ignores the cursor.
    #[test]
    fn equality_ignores_the_cursor() {
        let a: ClauseMap = [(key(0, 0, ""), state(1)), (key(0, 1, ""), state(2))].into_iter().collect();
        let mut b = a.clone();
        b.get_mut(&key(0, 1, ""));
        assert_eq!(a, b);
        b.retain(|k, _| k.1 == 0);
        assert_ne!(a, b);
        assert_eq!(b.len(), 1);
    }
}
