//! Detector traces for backtest reports: each clause key's statistic and threshold over its
//! last observations, and a copy of them around every enforcement event that cites the key.
//!
//! Off unless [`Engine::enable_trace`] is called, so a replay or live run without a report
//! pays one branch per clause observation. Memory is bounded: one ring of `before` points
//! for each of at most `max_keys` clause keys (the first seen), and at most `max_traces`
//! copies of `before + after` points.

use super::*;
use std::collections::VecDeque;

/// One observation of a clause: its detector's statistic and threshold after the update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TracePoint {
    /// Event time of the observation (µs).
    pub at: i64,
    /// Observations of this clause key so far (1 for the first).
    pub n: u64,
    /// The statistic after the update (at an alarm: the statistic that crossed).
    pub statistic: f64,
    /// The threshold it is compared with.
    pub threshold: f64,
}

/// The trace of one enforcement event's clause around the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClauseTrace {
    /// The enforcement event (its `event_id`).
    pub event_id: String,
    /// Points before and up to the decision, then up to `after` points following it.
    pub points: Vec<TracePoint>,
    /// Index in `points` of the last point at or before the decision (`None` when the key
    /// had no observation yet).
    pub decision: Option<usize>,
}

/// Size limits of a [`Tracer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLimits {
    /// Points kept per key before a decision.
    pub before: usize,
    /// Points recorded after a decision.
    pub after: usize,
    /// Enforcement events traced; later ones are counted in [`Traces::untraced`].
    pub max_traces: usize,
    /// Clause keys traced (agent × clause × segment); keys seen later are not traced, and
    /// are counted in [`Traces::untraced_keys`].
    pub max_keys: usize,
}

impl Default for TraceLimits {
    fn default() -> Self {
        // 32 B a point: at most 100 MB of rings.
        TraceLimits { before: 160, after: 40, max_traces: 2_000, max_keys: 20_000 }
    }
}

#[derive(Debug, Default)]
struct Ring {
    n: u64,
    points: VecDeque<TracePoint>,
    /// Traces still taking points after their decision.
    open: Vec<usize>,
    /// A key beyond `max_keys`: nothing recorded.
    off: bool,
}

/// Collects traces while the engine runs (see the module documentation).
#[derive(Debug)]
pub struct Tracer {
    limits: TraceLimits,
    rings: HashMap<String, HashMap<ClauseKey, Ring>>,
    traces: Vec<ClauseTrace>,
    untraced: u64,
    keys: usize,
    untraced_keys: u64,
}

/// What a [`Tracer`] collected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traces {
    /// One per traced enforcement event that cites a clause, in emission order.
    pub traces: Vec<ClauseTrace>,
    /// Enforcement events citing a clause beyond `max_traces`.
    pub untraced: u64,
    /// Clause keys beyond `max_keys`, not traced.
    pub untraced_keys: u64,
    /// The limits they were collected under.
    pub limits: TraceLimits,
}

impl Tracer {
    /// An empty tracer.
    pub fn new(limits: TraceLimits) -> Tracer {
        Tracer { limits, rings: HashMap::new(), traces: Vec::new(), untraced: 0, keys: 0, untraced_keys: 0 }
    }

    /// Records one observation of `key` for `agent`.
    pub(super) fn record(&mut self, agent: &str, key: &ClauseKey, at: i64, statistic: f64, threshold: f64) {
        let per_agent = match self.rings.get_mut(agent) {
            Some(m) => m,
            None => self.rings.entry(agent.to_string()).or_default(),
        };
        let ring = match per_agent.get_mut(key) {
            Some(r) => r,
            None if self.keys >= self.limits.max_keys => {
                // Marked off once, so it is counted once.
                self.untraced_keys += 1;
                per_agent
                    .insert(key.clone(), Ring { n: 0, points: VecDeque::new(), open: Vec::new(), off: true });
                return;
            }
            None => {
                self.keys += 1;
                per_agent.entry(key.clone()).or_default()
            }
        };
        if ring.off {
            return;
        }
        ring.n += 1;
        let p = TracePoint { at, n: ring.n, statistic, threshold };
        if ring.points.len() == self.limits.before.max(1) {
            ring.points.pop_front();
        }
        ring.points.push_back(p);
        let (traces, after) = (&mut self.traces, self.limits.after);
        ring.open.retain(|&i| {
            let t = &mut traces[i];
            t.points.push(p);
            t.points.len() - t.decision.map_or(0, |d| d + 1) < after
        });
    }

    /// Copies `key`'s recent points for the enforcement event `event_id`, and keeps adding
    /// the points that follow.
    pub(super) fn mark(&mut self, agent: &str, key: &ClauseKey, event_id: &str) {
        if self.traces.len() >= self.limits.max_traces {
            self.untraced += 1;
            return;
        }
        let ring = self.rings.get_mut(agent).and_then(|m| m.get_mut(key));
        let points: Vec<TracePoint> =
            ring.as_ref().map(|r| r.points.iter().copied().collect()).unwrap_or_default();
        let decision = points.len().checked_sub(1);
        self.traces.push(ClauseTrace { event_id: event_id.to_string(), points, decision });
        if let Some(r) = ring.filter(|r| !r.off && self.limits.after > 0) {
            r.open.push(self.traces.len() - 1);
        }
    }

    /// Everything collected.
    pub fn finish(self) -> Traces {
        Traces {
            traces: self.traces,
            untraced: self.untraced,
            untraced_keys: self.untraced_keys,
            limits: self.limits,
        }
    }
}

impl Engine {
    /// Starts tracing detector statistics for reports (see [`Tracer`]).
    pub fn enable_trace(&mut self, limits: TraceLimits) {
        self.trace = Some(Box::new(Tracer::new(limits)));
    }

    /// Stops tracing and returns what was collected (empty when tracing was off).
    pub fn take_trace(&mut self) -> Traces {
        self.trace.take().map(|t| t.finish()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::Segment;

    fn key() -> ClauseKey {
        (0, 1, Segment::default())
    }

    #[test]
    fn keeps_the_last_points_and_those_after_a_decision() {
        let mut t = Tracer::new(TraceLimits { before: 3, after: 2, max_traces: 1, max_keys: 10 });
        for i in 0..5 {
            t.record("a", &key(), i, i as f64, 10.0);
        }
        t.record("b", &key(), 99, 99.0, 10.0);
        t.mark("a", &key(), "e1");
        t.mark("a", &key(), "e2");
        for i in 5..9 {
            t.record("a", &key(), i, i as f64, 10.0);
        }
        let out = t.finish();
        assert_eq!(out.untraced, 1);
        assert_eq!(out.traces.len(), 1);
        let tr = &out.traces[0];
        assert_eq!(tr.event_id, "e1");
        assert_eq!(tr.decision, Some(2));
        let at: Vec<i64> = tr.points.iter().map(|p| p.at).collect();
        assert_eq!(at, [2, 3, 4, 5, 6]);
        assert_eq!(tr.points[2].n, 5);
    }

    #[test]
    fn keys_beyond_the_limit_are_counted_once_and_not_traced() {
        let mut t = Tracer::new(TraceLimits { before: 3, after: 2, max_traces: 10, max_keys: 1 });
        let other: ClauseKey = (0, 2, Segment::default());
        for i in 0..4 {
            t.record("a", &key(), i, 1.0, 2.0);
            t.record("a", &other, i, 1.0, 2.0);
            t.record("b", &key(), i, 1.0, 2.0);
        }
        t.mark("a", &key(), "e1");
        t.mark("b", &key(), "e2");
        let out = t.finish();
        assert_eq!(out.untraced_keys, 2);
        assert_eq!(out.traces[0].points.len(), 3);
        assert!(out.traces[1].points.is_empty(), "an untraced key has no points");
    }

    #[test]
    fn a_key_never_observed_gives_an_empty_trace() {
        let mut t = Tracer::new(TraceLimits::default());
        t.mark("a", &key(), "e1");
        t.record("a", &key(), 1, 0.5, 1.0);
        let out = t.finish();
        assert_eq!(out.traces[0].decision, None);
        assert!(out.traces[0].points.is_empty());
    }
}
