//! Per-request decisions: lane → action, and the fail-safe when driftgate's view is stale.

use crate::liveness::Liveness;
use crate::table::{Entry, Reason};
use driftgate_core::model::lane::{ByScope, Lane, Scope};
use driftgate_core::model::telemetry::Risk;
use std::sync::atomic::{AtomicU64, Ordering};

/// How lanes become actions, and what happens when driftgate is silent.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A heartbeat older than this (µs) makes the agent's lanes stale.
    pub max_staleness_us: i64,
    /// The lane of an agent driftgate has never published.
    pub unknown_agent_lane: Lane,
    /// The lane high-risk requests fall back to while stale (a more restrictive known lane
    /// stays). Other requests keep the last known lane, marked stale.
    pub stale_high_risk_lane: Lane,
    /// The action per scope and lane (indexed by `Lane as usize`).
    pub actions: ByScope<[String; 5]>,
    /// Per scope, the least restrictive lane that denies the request.
    pub deny_from: ByScope<Lane>,
}

impl Default for Policy {
    fn default() -> Self {
        let actions = Lane::ALL.map(|l| l.action().to_string());
        Policy {
            max_staleness_us: 15_000_000,
            unknown_agent_lane: Lane::Watch,
            stale_high_risk_lane: Lane::Review,
            actions: ByScope::both(actions),
            deny_from: ByScope { all: Lane::Block, high_risk: Lane::Review },
        }
    }
}

impl Policy {
    /// The action for a lane in a scope.
    pub fn action(&self, scope: Scope, lane: Lane) -> &str {
        let a = match scope {
            Scope::All => &self.actions.all,
            Scope::HighRisk => &self.actions.high_risk,
        };
        &a[lane as usize]
    }

    /// Whether the lane denies requests of the scope.
    pub fn denies(&self, scope: Scope, lane: Lane) -> bool {
        lane >= match scope {
            Scope::All => self.deny_from.all,
            Scope::HighRisk => self.deny_from.high_risk,
        }
    }
}

/// What a router does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The action for the lane and scope.
    pub action: &'a str,
    /// The lane applied.
    pub lane: Lane,
    /// The scope judged: `high_risk` for high-risk requests.
    pub scope: Scope,
    /// Whether the request may pass (see [`Policy::deny_from`]).
    pub allow: bool,
    /// Why the lane is what it is.
    pub reason: Reason,
    /// Event time (µs) the lane applies from, when known.
    pub since: Option<i64>,
    /// driftgate's view of the agent is older than `max_staleness`.
    pub stale: bool,
    /// driftgate has published the agent.
    pub known: bool,
}

/// Decisions counted, for the router's metrics. Relaxed atomics: a count, not a fence.
#[derive(Default)]
pub struct DecisionStats {
    by_lane: [[AtomicU64; 5]; 2],
    /// Decisions made on a stale view.
    pub stale: AtomicU64,
    /// Decisions for agents driftgate never published.
    pub unknown_agent: AtomicU64,
}

impl DecisionStats {
    /// Decisions per scope (`All`, `HighRisk`) and lane.
    pub fn by_lane(&self, scope: Scope, lane: Lane) -> u64 {
        self.by_lane[scope as usize][lane as usize].load(Ordering::Relaxed)
    }

    fn count(&self, d: &Decision<'_>) {
        self.by_lane[d.scope as usize][d.lane as usize].fetch_add(1, Ordering::Relaxed);
        if d.stale {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        if !d.known {
            self.unknown_agent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The decision for an agent's entry (or its absence) at `now_us` of wall time.
pub fn decide<'p>(
    policy: &'p Policy,
    live: &Liveness,
    stats: &DecisionStats,
    entry: Option<&Entry>,
    risk: Risk,
    now_us: i64,
) -> Decision<'p> {
    let scope = if risk == Risk::High { Scope::HighRisk } else { Scope::All };
    let (mut lane, mut reason, since, source) = match entry {
        None => (policy.unknown_agent_lane, Reason::UnknownAgent, None, None),
        Some(e) => {
            let all = e.scope(Scope::All);
            // A high-risk request is judged by the stricter of the agent-wide and
            // high-risk lanes; the reason is the stricter one's.
            let s = match (scope, e.scope(Scope::HighRisk)) {
                (Scope::HighRisk, Some(h)) if all.is_none_or(|a| h.lane >= a.lane) => Some(h),
                _ => all,
            };
            match s {
                Some(s) => (s.lane, s.reason, s.since, e.source),
                None => (Lane::Normal, Reason::Snapshot, None, e.source),
            }
        }
    };
    let stale = live.last_beat(source).is_none_or(|t| now_us.saturating_sub(t) > policy.max_staleness_us);
    if stale && scope == Scope::HighRisk && policy.stale_high_risk_lane > lane {
        lane = policy.stale_high_risk_lane;
        reason = Reason::StaleFallback;
    }
    let d = Decision {
        action: policy.action(scope, lane),
        lane,
        scope,
        allow: !policy.denies(scope, lane),
        reason,
        since,
        stale,
        known: entry.is_some(),
    };
    stats.count(&d);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Change, Table, Update, Version};
    use driftgate_core::engine::CauseCode;

    fn setup() -> (Policy, Liveness, DecisionStats, Table) {
        let live = Liveness::default();
        let src = live.id("in", 0);
        let t = Table::default();
        let ev = |seq, scope, lane| Update {
            agent: "a".into(),
            version: Version { incarnation: 1, seq },
            source: src,
            change: Change::Event {
                scope,
                lane,
                reason: Reason::Engine(CauseCode::LimitBreached),
                since: 77,
            },
        };
        t.apply(&ev(1, Scope::All, Lane::Degrade));
        t.apply(&ev(2, Scope::HighRisk, Lane::Watch));
        (Policy::default(), live, DecisionStats::default(), t)
    }

    #[test]
    fn fresh_decisions_follow_the_lanes() {
        let (p, live, stats, t) = setup();
        live.beat("in", 0, 1_000_000);
        let e = t.get("a");
        let low = decide(&p, &live, &stats, e.as_ref(), Risk::Low, 2_000_000);
        assert_eq!(
            (low.lane, low.action, low.allow, low.stale, low.since),
            (Lane::Degrade, "route_lower_trust", true, false, Some(77))
        );
        // High risk: the stricter of the two scopes (agent-wide degrade over high-risk watch).
        let high = decide(&p, &live, &stats, e.as_ref(), Risk::High, 2_000_000);
        assert_eq!((high.lane, high.scope, high.allow), (Lane::Degrade, Scope::HighRisk, true));
        assert_eq!(stats.by_lane(Scope::HighRisk, Lane::Degrade), 1);
        assert_eq!(stats.stale.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_stale_view_sends_high_risk_to_review_and_marks_the_rest() {
        let (p, live, stats, t) = setup();
        live.beat("in", 0, 1_000_000);
        let e = t.get("a");
        let later = 1_000_000 + p.max_staleness_us + 1;
        let high = decide(&p, &live, &stats, e.as_ref(), Risk::High, later);
        assert_eq!(
            (high.lane, high.reason, high.allow, high.stale),
            (Lane::Review, Reason::StaleFallback, false, true)
        );
        let low = decide(&p, &live, &stats, e.as_ref(), Risk::Medium, later);
        assert_eq!((low.lane, low.stale, low.allow), (Lane::Degrade, true, true));
        assert_eq!(stats.stale.load(Ordering::Relaxed), 2);
        // The boundary itself is still fresh.
        let edge = decide(&p, &live, &stats, e.as_ref(), Risk::High, 1_000_000 + p.max_staleness_us);
        assert!(!edge.stale);
        // A heartbeat ends the fallback by itself.
        live.beat("in", 0, later);
        let back = decide(&p, &live, &stats, e.as_ref(), Risk::High, later);
        assert_eq!((back.lane, back.stale), (Lane::Degrade, false));
    }

    #[test]
    fn a_stricter_known_lane_outranks_the_fallback() {
        let (p, live, stats, t) = setup();
        t.apply(&Update {
            agent: "a".into(),
            version: Version { incarnation: 1, seq: 3 },
            source: None,
            change: Change::Event {
                scope: Scope::All,
                lane: Lane::Block,
                reason: Reason::Engine(CauseCode::ZeroToleranceBreach),
                since: 9,
            },
        });
        let d = decide(&p, &live, &stats, t.get("a").as_ref(), Risk::High, 0);
        assert_eq!(
            (d.lane, d.reason, d.stale, d.allow),
            (Lane::Block, Reason::Engine(CauseCode::ZeroToleranceBreach), true, false)
        );
    }

    #[test]
    fn unknown_agents_get_the_configured_lane_and_are_counted() {
        let (p, live, stats, _) = setup();
        live.beat("in", 0, 5);
        let d = decide(&p, &live, &stats, None, Risk::Low, 5);
        assert_eq!(
            (d.lane, d.reason, d.known, d.allow, d.action),
            (Lane::Watch, Reason::UnknownAgent, false, true, "allow_and_monitor")
        );
        assert_eq!(stats.unknown_agent.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn deny_thresholds_are_per_scope() {
        let p = Policy::default();
        assert!(!p.denies(Scope::All, Lane::Review));
        assert!(p.denies(Scope::HighRisk, Lane::Review));
        assert!(p.denies(Scope::All, Lane::Block));
        assert!(!p.denies(Scope::HighRisk, Lane::Degrade));
    }
}
