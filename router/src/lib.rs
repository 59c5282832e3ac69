//! # driftgate-router
//!
//! The router side of driftgate, for gateways written in Rust (the `driftgate route` sidecar
//! serves the same library over HTTP to every other gateway).
//!
//! - **Follow.** [`follow`] reads driftgate's snapshot topic from its beginning and the
//!   enforcement topic from its end at start-up, and keeps following both. The router is
//!   ready once the snapshot topic has been read to its end.
//! - **Apply idempotently.** Each agent's lane per scope is a last-writer-wins register keyed
//!   by `(incarnation, seq)` ([`Table`]), so duplicates, replays and the two topics' relative
//!   order are harmless.
//! - **Decide.** [`Router::decide`] maps the lane to an action per scope ([`Policy`]). It
//!   takes no lock the follower holds for more than one update.
//! - **Fail safe.** Each agent's lanes are as fresh as the newest heartbeat of the input
//!   partition that publishes it ([`Liveness`]); past `max_staleness`, high-risk requests fall
//!   back to `stale_high_risk_lane` and every decision says `stale`.

#![warn(missing_docs)]

mod codec;
mod decide;
mod follow;
mod liveness;
mod table;

pub use codec::{parse, Parsed, RecordError, RecordHeaders, TopicKind, INCARNATION, KIND, SOURCE};
pub use decide::{decide, Decision, DecisionStats, Policy};
pub use follow::{follow, FollowConfig, FollowError, Follower};
pub use liveness::{Liveness, MAX_PARTITIONS};
pub use table::{Applied, Change, Entry, Origin, Reason, ScopeState, Table, Update, Version};

use driftgate_core::model::lane::{Lane, Scope};
use driftgate_core::model::telemetry::Risk;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counts of what the follower read, for the router's metrics.
#[derive(Default)]
pub struct FollowStats {
    /// Updates that changed the table, by topic (`[snapshot, enforcement]`).
    pub applied: [AtomicU64; 2],
    /// Updates already covered by the table (duplicates, or overtaken), by topic.
    pub duplicates: [AtomicU64; 2],
    /// Heartbeats read.
    pub heartbeats: AtomicU64,
    /// Records skipped as malformed, by topic.
    pub malformed: [AtomicU64; 2],
}

/// The router's state: the table, the partitions' liveness and the policy.
pub struct Router {
    table: Table,
    live: Liveness,
    policy: Policy,
    ready: AtomicBool,
    /// Decisions counted.
    pub decisions: DecisionStats,
    /// Records read.
    pub follow: FollowStats,
}

impl Router {
    /// An empty router; not ready until a follower has read the snapshot topic.
    pub fn new(policy: Policy) -> Router {
        Router {
            table: Table::default(),
            live: Liveness::default(),
            policy,
            ready: AtomicBool::new(false),
            decisions: DecisionStats::default(),
            follow: FollowStats::default(),
        }
    }

    /// The decision for a request of `risk` by `agent`, now.
    pub fn decide(&self, agent: &str, risk: Risk) -> Decision<'_> {
        self.decide_at(agent, risk, wall_micros())
    }

    /// The decision at `now_us` of wall time (µs since the Unix epoch).
    pub fn decide_at(&self, agent: &str, risk: Risk, now_us: i64) -> Decision<'_> {
        self.table.with(agent, |e| decide(&self.policy, &self.live, &self.decisions, e, risk, now_us))
    }

    /// The agent's lane in a scope as driftgate last published it, if it did.
    pub fn lane(&self, agent: &str, scope: Scope) -> Option<Lane> {
        self.table.get(agent).map(|e| e.lane(scope))
    }

    /// Applies one parsed record, counting it. Returns whether it changed the table.
    pub fn apply(&self, topic: TopicKind, parsed: Parsed) -> bool {
        let t = topic as usize;
        match parsed {
            Parsed::Update(mut u, source) => {
                u.source = source.and_then(|(topic, p)| self.live.id(&topic, p));
                let newer = self.table.apply(&u) == Applied::Newer;
                let c = if newer { &self.follow.applied[t] } else { &self.follow.duplicates[t] };
                c.fetch_add(1, Ordering::Relaxed);
                newer
            }
            Parsed::Heartbeat(h) => {
                self.live.beat(&h.source_topic, h.source_partition, h.wall_time);
                self.follow.heartbeats.fetch_add(1, Ordering::Relaxed);
                false
            }
            Parsed::Ignored(_) => false,
        }
    }

    /// Counts a malformed record of `topic`.
    pub fn malformed(&self, topic: TopicKind) {
        self.follow.malformed[topic as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the snapshot topic has been read to its end.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The partitions' liveness.
    pub fn liveness(&self) -> &Liveness {
        &self.live
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// Wall time, µs since the Unix epoch.
pub fn wall_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
