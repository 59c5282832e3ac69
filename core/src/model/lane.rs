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

    /// Both scopes, agent-wide first.
    pub const BOTH: [Scope; 2] = [Scope::All, Scope::HighRisk];
}

/// One value per scope. Serialised as the pair `[all, high_risk]`, the form the state
/// changelog has always used for the published lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(
    from = "[T; 2]",
    into = "[T; 2]",
    bound(serialize = "T: Clone + Serialize", deserialize = "T: Deserialize<'de>")
)]
pub struct ByScope<T> {
    /// Every action of the agent.
    pub all: T,
    /// High-risk actions only.
    pub high_risk: T,
}

impl<T> ByScope<T> {
    /// The same value for both scopes.
    pub fn both(v: T) -> Self
    where
        T: Clone,
    {
        ByScope { all: v.clone(), high_risk: v }
    }

    /// `(scope, value)` for both scopes, agent-wide first.
    pub fn iter(&self) -> impl Iterator<Item = (Scope, &T)> {
        [(Scope::All, &self.all), (Scope::HighRisk, &self.high_risk)].into_iter()
    }
}

impl<T> std::ops::Index<Scope> for ByScope<T> {
    type Output = T;
    fn index(&self, scope: Scope) -> &T {
        match scope {
            Scope::All => &self.all,
            Scope::HighRisk => &self.high_risk,
        }
    }
}

impl<T> std::ops::IndexMut<Scope> for ByScope<T> {
    fn index_mut(&mut self, scope: Scope) -> &mut T {
        match scope {
            Scope::All => &mut self.all,
            Scope::HighRisk => &mut self.high_risk,
        }
    }
}

impl<T> From<[T; 2]> for ByScope<T> {
    fn from([all, high_risk]: [T; 2]) -> Self {
        ByScope { all, high_risk }
    }
}

impl<T> From<ByScope<T>> for [T; 2] {
    fn from(b: ByScope<T>) -> Self {
        [b.all, b.high_risk]
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

    #[test]
    fn by_scope_indexes_by_scope_and_keeps_the_pair_encoding() {
        let mut b = ByScope { all: Lane::Watch, high_risk: Lane::Block };
        assert_eq!((b[Scope::All], b[Scope::HighRisk]), (Lane::Watch, Lane::Block));
        b[Scope::HighRisk] = Lane::Review;
        assert_eq!(
            b.iter().map(|(s, l)| (s, *l)).collect::<Vec<_>>(),
            [(Scope::All, Lane::Watch), (Scope::HighRisk, Lane::Review)]
        );
        // The changelog's encoding of `[Lane; 2]`: a restored v1 state reads the same.
        let pair = rmp_serde::to_vec_named(&[Lane::Watch, Lane::Review]).unwrap();
        assert_eq!(rmp_serde::to_vec_named(&b).unwrap(), pair);
        assert_eq!(rmp_serde::from_slice::<ByScope<Lane>>(&pair).unwrap(), b);
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"["watch","review"]"#);
    }
}
