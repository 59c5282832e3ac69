//! One shared value per key, for as long as someone holds it.
//!
//! Why: a bank is a pure function of its clause's configuration and a key's baseline, and a
//! baseline is counts (ones out of `n` at a stage), so across a fleet most keys of a clause
//! learn one of a few hundred baselines. Each key building and holding its own bank cost
//! about 300 bytes per bernoulli key; interned, the fleet holds one per distinct baseline.
//! Banks are built only when a baseline stage completes or a key is restored, so a lock
//! there costs nothing on the per-event path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// Fewest entries before dead ones are swept.
const MIN_SWEEP: usize = 64;

/// Values by key, held weakly: a value lives while a detector holds it, and its entry is
/// swept once the map has doubled since the last sweep (amortised `O(1)` per insert).
pub(crate) struct Interner<K, V> {
    inner: Mutex<Inner<K, V>>,
}

/// Not the entries: a detector's debug output would list the whole clause's.
impl<K, V> std::fmt::Debug for Interner<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner").finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    /// Ordered, not hashed: entries come and go as keys rebuild their banks, and a hash
    /// table's room then grows in doublings (and tombstones) that depend on where keys
    /// hashed, which moved a bernoulli key's measured memory by 21 B from one run to the
    /// next. A B-tree holds about its entries, the same in every run; it is looked up only
    /// when a bank is built.
    map: BTreeMap<K, Weak<V>>,
    sweep_at: usize,
}

impl<K, V> Default for Interner<K, V> {
    fn default() -> Self {
        Interner { inner: Mutex::new(Inner { map: BTreeMap::new(), sweep_at: MIN_SWEEP }) }
    }
}

impl<K: Ord, V> Interner<K, V> {
    /// The value for `key`: the one someone still holds, or `make()`'s, kept for the next.
    ///
    /// `make` must be a pure function of `key`, so that which caller builds it does not
    /// matter. It runs under the lock: two keys reaching the same baseline at once build it
    /// once.
    pub fn get_or_make(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        // A panic elsewhere while holding the lock leaves the map consistent (entries are
        // only inserted or swept whole), so a poisoned lock is still usable.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = inner.map.get(&key).and_then(Weak::upgrade) {
            return v;
        }
        let v = Arc::new(make());
        inner.map.insert(key, Arc::downgrade(&v));
        if inner.map.len() >= inner.sweep_at {
            inner.map.retain(|_, w| w.strong_count() > 0);
            inner.sweep_at = (2 * inner.map.len()).max(MIN_SWEEP);
        }
        v
    }

    /// Gives back a value got for `key`: when the caller held it last, its entry goes now,
    /// with the allocation a weak entry keeps (a key rebuilding its bank at each baseline
    /// stage left one dead entry behind per stage, about 120 B per bernoulli key until the
    /// next sweep).
    ///
    /// Counting under the lock is exact: values are only handed out under it, and a count
    /// of one means no other holder can clone it.
    pub fn release(&self, key: &K, v: Arc<V>) {
        // Shared: someone else holds it, no lock needed.
        if Arc::strong_count(&v) != 1 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ours = inner.map.get(key).is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&v)));
        if ours && Arc::strong_count(&v) == 1 {
            inner.map.remove(key);
        }
    }

    /// Entries, dead or alive (for tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shared_while_held_and_made_again_after() {
        let i: Interner<u32, String> = Interner::default();
        let mut made = 0;
        let a = i.get_or_make(1, || {
            made += 1;
            "one".to_string()
        });
        let b = i.get_or_make(1, || {
            made += 1;
            "other".to_string()
        });
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((made, b.as_str()), (1, "one"));
        drop((a, b));
        let c = i.get_or_make(1, || {
            made += 1;
            "again".to_string()
        });
        assert_eq!((made, c.as_str()), (2, "again"), "nobody held it: made again");
    }

    #[test]
    fn a_value_given_back_by_its_last_holder_leaves_no_entry() {
        let i: Interner<u32, String> = Interner::default();
        let a = i.get_or_make(1, || "one".to_string());
        let b = i.get_or_make(1, || unreachable!("shared"));
        i.release(&1, a);
        assert_eq!(i.entries(), 1, "still held by another");
        assert!(Arc::ptr_eq(&b, &i.get_or_make(1, || unreachable!("still shared"))));
        // A value made for the key by someone else is not this one's entry.
        let stray = Arc::new("stray".to_string());
        i.release(&1, stray);
        assert_eq!(i.entries(), 1, "another value's entry stays");
        i.release(&1, b);
        assert_eq!(i.entries(), 0, "the last holder took its entry with it");
    }

    #[test]
    fn dead_entries_are_swept_and_live_ones_kept() {
        let i: Interner<usize, usize> = Interner::default();
        let held: Vec<Arc<usize>> = (0..10).map(|k| i.get_or_make(k, || k)).collect();
        for k in 10..10_000 {
            drop(i.get_or_make(k, || k));
        }
        // Never more than twice the live entries since the last sweep, nor under the minimum.
        assert!(i.entries() <= 2 * MIN_SWEEP, "{} entries", i.entries());
        for (k, v) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(v, &i.get_or_make(k, || usize::MAX)), "entry {k} was kept");
        }
    }
}
