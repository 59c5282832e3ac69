//! One shared value per key, for as long as someone holds it.
//!
//! Why: a bank is a pure function of its clause's configuration and a key's baseline, and a
//! baseline is counts (ones out of `n` at a stage), so across a fleet most keys of a clause
//! learn one of a few hundred baselines. Each key building and holding its own bank cost
//! about 300 bytes per bernoulli key; interned, the fleet holds one per distinct baseline.
//! Banks are built only when a baseline stage completes or a key is restored, so a lock
//! there costs nothing on the per-event path.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, Weak};

/// Values by key, held weakly: a value lives while a detector holds it, and its entry leaves
/// with it (see [`Interned`]), so the map holds the live values only.
pub(crate) struct Interner<K: Ord, V> {
    /// Ordered, not hashed: entries come and go as keys rebuild their banks, and a hash
    /// table's room then grows in doublings (and tombstones) that depend on where keys
    /// hashed, which moved a bernoulli key's measured memory by 21 B from one run to the
    /// next. A B-tree holds about its entries, the same in every run; it is looked up only
    /// when a bank is built or dropped.
    map: Mutex<BTreeMap<K, Weak<Interned<K, V>>>>,
}

/// Not the entries: a detector's debug output would list the whole clause's.
impl<K: Ord, V> std::fmt::Debug for Interner<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner").finish_non_exhaustive()
    }
}

impl<K: Ord, V> Default for Interner<K, V> {
    fn default() -> Self {
        Interner { map: Mutex::new(BTreeMap::new()) }
    }
}

/// A value an [`Interner`] shares. When its last holder drops it, its entry leaves the
/// interner: a key that rebuilt its bank at each baseline stage left a dead entry behind
/// per stage, with the allocation a weak pointer keeps (60 B per bernoulli key after 20,000
/// events), until a sweep once the map had doubled.
pub(crate) struct Interned<K: Ord, V> {
    value: V,
    key: K,
    /// Where its entry is; none for a value no interner holds.
    home: Weak<Interner<K, V>>,
}

impl<K: Ord, V> Interned<K, V> {
    /// A value of no interner (a shared placeholder, say).
    pub fn alone(key: K, value: V) -> Self {
        Interned { value, key, home: Weak::new() }
    }
}

impl<K: Ord, V> Deref for Interned<K, V> {
    type Target = V;
    fn deref(&self) -> &V {
        &self.value
    }
}

impl<K: Ord, V: std::fmt::Debug> std::fmt::Debug for Interned<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

impl<K: Ord, V> Drop for Interned<K, V> {
    fn drop(&mut self) {
        let Some(home) = self.home.upgrade() else { return };
        let mut map = home.lock();
        // The entry may already be another value's: one made for the key after this one's
        // last holder let go and before this ran.
        if map.get(&self.key).is_some_and(|w| std::ptr::eq(w.as_ptr(), self)) {
            map.remove(&self.key);
        }
    }
}

impl<K: Ord + Clone, V> Interner<K, V> {
    /// The value for `key`: the one someone still holds, or `make()`'s, kept for the next.
    ///
    /// `make` must be a pure function of `key`, so that which caller builds it does not
    /// matter. It runs under the lock: two keys reaching the same baseline at once build it
    /// once.
    pub fn get_or_make(self: &Arc<Self>, key: K, make: impl FnOnce() -> V) -> Arc<Interned<K, V>> {
        let mut map = self.lock();
        if let Some(v) = map.get(&key).and_then(Weak::upgrade) {
            return v;
        }
        let v = Arc::new(Interned { value: make(), key: key.clone(), home: Arc::downgrade(self) });
        map.insert(key, Arc::downgrade(&v));
        v
    }
}

impl<K: Ord, V> Interner<K, V> {
    /// A panic elsewhere while holding the lock leaves the map consistent (entries are only
    /// inserted or removed whole), so a poisoned lock is still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<K, Weak<Interned<K, V>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries, dead or alive (for tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shared_while_held_and_made_again_after() {
        let i: Arc<Interner<u32, String>> = Arc::default();
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
    fn an_entry_leaves_with_its_last_holder() {
        let i: Arc<Interner<u32, String>> = Arc::default();
        let a = i.get_or_make(1, || "one".to_string());
        let b = i.get_or_make(1, || unreachable!("shared"));
        drop(a);
        assert_eq!(i.entries(), 1, "still held by another");
        assert!(Arc::ptr_eq(&b, &i.get_or_make(1, || unreachable!("still shared"))));
        // A value of no interner, under the same key, is not this one's entry.
        drop(Interned::alone(1, "stray".to_string()));
        assert_eq!(i.entries(), 1, "another value's entry stays");
        drop(b);
        assert_eq!(i.entries(), 0, "the last holder took its entry with it");
        // A value that outlives its interner drops without it.
        let c = i.get_or_make(2, || "two".to_string());
        drop(i);
        assert_eq!(c.as_str(), "two");
    }

    #[test]
    fn dropped_values_leave_no_entry_and_held_ones_stay() {
        let i: Arc<Interner<usize, usize>> = Arc::default();
        let held: Vec<_> = (0..10).map(|k| i.get_or_make(k, || k)).collect();
        for k in 10..10_000 {
            drop(i.get_or_make(k, || k));
        }
        assert_eq!(i.entries(), 10, "only the held values");
        for (k, v) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(v, &i.get_or_make(k, || usize::MAX)), "entry {k} was kept");
        }
    }
}
