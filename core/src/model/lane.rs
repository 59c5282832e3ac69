//! Enforcement lanes and what a router does in each.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An enforcement lane, from least to most restrictive. `Ord` follows severity, so the
/// effective lane is the maximum over clauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Full trust.
    Normal,
    /// Full trust, closer monitoring.
    Watch,
    /// Routed to a lower-trust lane.
    Degrade,
    /// Human review before consequential actions.
    Review,
    /// No traffic.
    Block,
}

impl Lane {
    /// All lanes, ascending.
    pub const ALL: [Lane; 5] = [Lane::Normal, Lane::Watch, Lane::Degrade, Lane::Review, Lane::Block];

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Normal => "normal",
            Lane::Watch => "watch",
            Lane::Degrade => "degrade",
            Lane::Review => "review",
            Lane::Block => "block",
        }
    }

    /// What a router does in this lane.
    pub fn action(self) -> &'static str {
        match self {
            Lane::Normal => "allow",
            Lane::Watch => "allow_and_monitor",
            Lane::Degrade => "route_lower_trust",
            Lane::Review => "require_human_review",
            Lane::Block => "block",
        }
    }

    /// One lane less restrictive (recovery steps down one lane at a time).
    pub fn step_down(self) -> Lane {
        match self {
            Lane::Normal | Lane::Watch => Lane::Normal,
            Lane::Degrade => Lane::Watch,
            Lane::Review => Lane::Degrade,
            Lane::Block => Lane::Review,
        }
    }
}

/// What a verified breach of a clause does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consequence {
    /// Move to `watch`.
    Watch,
    /// Move to `degrade`.
    Degrade,
    /// Move to `review`.
    Review,
    /// Move to `block`.
    Block,
    /// Emit a `settle` side event (e.g. refund or compensate); no routing effect.
    Settle,
}

impl Consequence {
    /// The lane this consequence demands (`None` for settle).
    pub fn lane(self) -> Option<Lane> {
        match self {
            Consequence::Watch => Some(Lane::Watch),
            Consequence::Degrade => Some(Lane::Degrade),
            Consequence::Review => Some(Lane::Review),
            Consequence::Block => Some(Lane::Block),
            Consequence::Settle => None,
        }
    }
}

/// The scope a lane applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every action of the agent.
    All,
    /// High-risk actions only (guarded by clauses marked `high_risk`).
    HighRisk,
}

impl Scope {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::HighRisk => "high_risk",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_order_by_severity_and_step_down_one_at_a_time() {
        assert!(Lane::Normal < Lane::Watch && Lane::Watch < Lane::Degrade && Lane::Review < Lane::Block);
        assert_eq!(Lane::Block.step_down(), Lane::Review);
        assert_eq!(Lane::Watch.step_down(), Lane::Normal);
    }

    #[test]
    fn wire_names_match_serde_and_actions_are_distinct() {
        let names: Vec<&str> = Lane::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(names, ["normal", "watch", "degrade", "review", "block"]);
        for l in Lane::ALL {
            assert_eq!(serde_json::to_value(l).unwrap(), l.as_str());
        }
        let actions: std::collections::BTreeSet<&str> = Lane::ALL.iter().map(|l| l.action()).collect();
        assert_eq!(actions.len(), 5);
        assert_eq!((Scope::All.as_str(), Scope::HighRisk.as_str()), ("all", "high_risk"));
    }
}
