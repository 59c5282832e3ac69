//! Which of driftgate's partition engines are alive, from their heartbeats.
//!
//! Without heartbeats a router cannot tell "nothing changed" from "driftgate stopped
//! watching". Each input partition's engine publishes one every `heartbeat_interval`; the
//! agent's lanes are as fresh as the newest heartbeat of the partition that publishes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::RwLock;

/// Partitions tracked; ids beyond it are judged by the oldest heartbeat of all.
pub const MAX_PARTITIONS: usize = 4096;
const NEVER: i64 = i64::MIN;

/// Newest heartbeat per input partition, readable without a lock.
pub struct Liveness {
    /// Ids by topic, then partition: looked up by `&str` on every record, so no key is built.
    ids: RwLock<HashMap<String, HashMap<i32, u32>>>,
    /// Partitions registered (the next id).
    known: AtomicUsize,
    beats: Box<[AtomicI64]>,
    oldest: AtomicI64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            ids: RwLock::new(HashMap::new()),
            known: AtomicUsize::new(0),
            beats: (0..MAX_PARTITIONS).map(|_| AtomicI64::new(NEVER)).collect(),
            oldest: AtomicI64::new(NEVER),
        }
    }
}

impl Liveness {
    /// The id of an input partition, registering it on first sight. A registered partition
    /// has had no heartbeat until [`Liveness::beat`] says so, and counts as stale.
    pub fn id(&self, topic: &str, partition: i32) -> Option<u32> {
        let find = |ids: &HashMap<String, HashMap<i32, u32>>| ids.get(topic)?.get(&partition).copied();
        if let Some(id) = find(&self.ids.read().unwrap_or_else(|p| p.into_inner())) {
            return Some(id);
        }
        let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = find(&ids) {
            return Some(id);
        }
        let next = self.known.load(Ordering::Relaxed);
        if next >= MAX_PARTITIONS {
            return None;
        }
        ids.entry(topic.to_string()).or_default().insert(partition, next as u32);
        self.known.store(next + 1, Ordering::Relaxed);
        drop(ids);
        self.recompute_oldest();
        Some(next as u32)
    }

    /// Records a heartbeat published at `wall_us` (the engine's clock). Older ones than the
    /// newest seen are ignored, so a compacted topic read from the start is harmless.
    pub fn beat(&self, topic: &str, partition: i32, wall_us: i64) {
        if let Some(id) = self.id(topic, partition) {
            self.beats[id as usize].fetch_max(wall_us, Ordering::Relaxed);
            self.recompute_oldest();
        }
    }

    fn recompute_oldest(&self) {
        let n = self.known.load(Ordering::Relaxed);
        let oldest = self.beats[..n].iter().map(|b| b.load(Ordering::Relaxed)).min().unwrap_or(NEVER);
        self.oldest.store(oldest, Ordering::Relaxed);
    }

    /// When the partition last proved alive (µs), if it ever did; for an unknown partition,
    /// the oldest of all.
    pub fn last_beat(&self, id: Option<u32>) -> Option<i64> {
        let v = match id {
            Some(i) if (i as usize) < MAX_PARTITIONS => self.beats[i as usize].load(Ordering::Relaxed),
            _ => self.oldest.load(Ordering::Relaxed),
        };
        (v != NEVER).then_some(v)
    }

    /// The age (µs) of the stalest partition's heartbeat at `now_us`; `None` before any
    /// partition is known, `Some(i64::MAX)` while one has never beaten.
    pub fn max_age(&self, now_us: i64) -> Option<i64> {
        (self.partitions() > 0).then(|| match self.oldest.load(Ordering::Relaxed) {
            NEVER => i64::MAX,
            t => now_us.saturating_sub(t),
        })
    }

    /// Partitions known.
    pub fn partitions(&self) -> usize {
        self.known.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_per_partition_and_monotone() {
        let l = Liveness::default();
        let a = l.id("t", 0);
        let b = l.id("t", 1);
        assert_ne!(a, b);
        assert_eq!(l.last_beat(a), None);
        assert_eq!(l.max_age(100), Some(i64::MAX));
        l.beat("t", 0, 50);
        l.beat("t", 0, 40);
        assert_eq!(l.last_beat(a), Some(50));
        // The unknown source is judged by the oldest partition, which never beat.
        assert_eq!(l.last_beat(None), None);
        l.beat("t", 1, 70);
        assert_eq!((l.last_beat(None), l.max_age(100)), (Some(50), Some(50)));
        assert_eq!(l.id("t", 1), b);
    }
}
