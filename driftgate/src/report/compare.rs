//! The difference between two replays of the same input under different pact versions: the
//! enforcement events that appear, disappear or move in time.
//!
//! Events are matched by what they mean to a router, not by id (ids depend on sequence
//! numbers, which shift when one event appears): agent, scope, pact, clause, reason and the
//! lane set. Within one such key, the n-th event of one run pairs with the n-th of the
//! other, in event-time order; a pair at different times has moved.

use super::Figures;
use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::lane::{Lane, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What happened to an event between the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Only under the new pacts.
    Appeared,
    /// Only under the current pacts.
    Disappeared,
    /// Under both, at different event times.
    Moved,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffRow {
    /// What happened.
    pub kind: DiffKind,
    /// The agent.
    pub agent_id: String,
    /// Scope.
    pub scope: Scope,
    /// The pact and clause cited, if any.
    pub pact_id: Option<String>,
    /// See `pact_id`.
    pub clause_id: Option<String>,
    /// Reason code.
    pub reason: String,
    /// Lane set.
    pub lane_to: Lane,
    /// Event time under the current pacts (µs).
    pub old_at: Option<i64>,
    /// Event time under the new pacts (µs).
    pub new_at: Option<i64>,
}

/// The comparison section of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// Pact versions replaced: `(id, current version, new version)`; a new version of a
    /// pact not loaded before has current version 0.
    pub pacts: Vec<(String, u32, u32)>,
    /// Events under the current and the new pacts.
    pub events: (u64, u64),
    /// Events in the same place under both.
    pub unchanged: u64,
    /// The differences, by agent and time.
    pub rows: Vec<DiffRow>,
    /// The four figures under the new pacts (the report's own are the current ones).
    pub new_figures: Figures,
}

type Key<'a> = (&'a str, Scope, Option<&'a str>, Option<&'a str>, &'a str, Lane);

fn key(e: &EnforcementEvent) -> Key<'_> {
    (&e.agent_id, e.scope, e.pact_id.as_deref(), e.clause_id.as_deref(), &e.reason.code, e.lane_to)
}

/// Pairs two runs' events; returns the differences (sorted by agent, then time) and the
/// number of events in the same place under both.
pub fn diff_events(old: &[EnforcementEvent], new: &[EnforcementEvent]) -> (Vec<DiffRow>, u64) {
    let mut groups: BTreeMap<Key<'_>, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
    for e in old {
        groups.entry(key(e)).or_default().0.push(e.effective_at);
    }
    for e in new {
        groups.entry(key(e)).or_default().1.push(e.effective_at);
    }
    let (mut rows, mut unchanged) = (Vec::new(), 0);
    for ((agent, scope, pact, clause, reason, lane), (mut a, mut b)) in groups {
        a.sort_unstable();
        b.sort_unstable();
        for i in 0..a.len().max(b.len()) {
            let (o, n) = (a.get(i).copied(), b.get(i).copied());
            let kind = match (o, n) {
                (Some(x), Some(y)) if x == y => {
                    unchanged += 1;
                    continue;
                }
                (Some(_), Some(_)) => DiffKind::Moved,
                (Some(_), None) => DiffKind::Disappeared,
                (None, _) => DiffKind::Appeared,
            };
            rows.push(DiffRow {
                kind,
                agent_id: agent.to_string(),
                scope,
                pact_id: pact.map(String::from),
                clause_id: clause.map(String::from),
                reason: reason.to_string(),
                lane_to: lane,
                old_at: o,
                new_at: n,
            });
        }
    }
    rows.sort_by(|x, y| {
        (&x.agent_id, x.old_at.or(x.new_at), x.kind).cmp(&(&y.agent_id, y.old_at.or(y.new_at), y.kind))
    });
    (rows, unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(agent: &str, at: i64, to: Lane) -> EnforcementEvent {
        crate::report::test_event(agent, at, "drift_verified", Lane::Normal, to)
    }

    #[test]
    fn events_pair_in_order_and_the_rest_appear_or_disappear() {
        let old = [ev("a", 10, Lane::Degrade), ev("a", 50, Lane::Degrade), ev("b", 5, Lane::Degrade)];
        let new = [
            ev("a", 10, Lane::Degrade),
            ev("a", 40, Lane::Degrade),
            ev("b", 5, Lane::Block),
            ev("c", 7, Lane::Watch),
        ];
        let (rows, unchanged) = diff_events(&old, &new);
        assert_eq!(unchanged, 1);
        let got: Vec<_> =
            rows.iter().map(|r| (r.agent_id.as_str(), r.kind, r.lane_to, r.old_at, r.new_at)).collect();
        assert_eq!(
            got,
            [
                ("a", DiffKind::Moved, Lane::Degrade, Some(50), Some(40)),
                ("b", DiffKind::Appeared, Lane::Block, None, Some(5)),
                ("b", DiffKind::Disappeared, Lane::Degrade, Some(5), None),
                ("c", DiffKind::Appeared, Lane::Watch, None, Some(7)),
            ]
        );
    }

    #[test]
    fn identical_runs_have_no_differences() {
        let old = [ev("a", 10, Lane::Degrade), ev("b", 5, Lane::Block)];
        assert_eq!(diff_events(&old, &old), (vec![], 2));
    }
}
