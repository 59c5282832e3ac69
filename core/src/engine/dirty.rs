//! Which agents changed since the state changelog last took them.

use super::state::AgentState;
use std::collections::HashSet;
use std::sync::Arc;

/// Agents changed since the last [`Dirty::take`], each listed once.
///
/// Every input marks its agent, so marking must not cost a lookup of its own: an agent
/// with state carries the round in which it was last listed (`AgentState::listed_in`), read
/// through the lookup its input makes anyway; taking the list starts a new round, which
/// unlists every agent at once. Ids without state (expired agents, or marked from outside)
/// are kept in a set. A hashed set of every id cost a lookup per input, 2 % of the engine's
/// instructions.
#[derive(Debug)]
pub(super) struct Dirty {
    /// The current round; agents listed in it carry it.
    round: u64,
    /// Agents with state listed in this round, in marking order. An agent that expired and
    /// came back within a round is listed twice; [`Dirty::take`] drops the repeat.
    listed: Vec<Arc<str>>,
    /// Ids marked while they had no state.
    absent: HashSet<String, foldhash::fast::RandomState>,
}

impl Default for Dirty {
    fn default() -> Dirty {
        // Agents start in round 0, so that none is listed in the first round.
        Dirty { round: 1, listed: Vec::new(), absent: HashSet::default() }
    }
}

impl Dirty {
    /// Marks `id`, whose state is `agent`, with the id as the engine holds it (`None`: it
    /// has none).
    #[inline]
    pub(super) fn mark(&mut self, id: &str, agent: Option<(&Arc<str>, &mut AgentState)>) {
        match agent {
            Some((_, a)) if a.listed_in.0 == self.round => {}
            Some((held, a)) => {
                a.listed_in.0 = self.round;
                self.listed.push(held.clone());
            }
            None => {
                if !self.absent.contains(id) {
                    self.absent.insert(id.to_string());
                }
            }
        }
    }

    /// The ids marked since the last call, sorted, each once; starts a new round.
    pub(super) fn take(&mut self) -> Vec<String> {
        let mut ids: Vec<String> = self.listed.drain(..).map(|id| id.to_string()).collect();
        ids.extend(self.absent.drain());
        ids.sort_unstable();
        ids.dedup();
        self.round += 1;
        ids
    }

    /// The agents with state listed in this round.
    #[cfg(test)]
    pub(super) fn listed(&self) -> &[Arc<str>] {
        &self.listed
    }

    /// Forgets every mark (a restored engine starts with none).
    pub(super) fn clear(&mut self) {
        self.take();
    }
}

/// The round in which an agent was last listed as changed (see [`Dirty`]): bookkeeping of
/// the running engine, not the agent's state. Never stored, and equal whatever its round.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListedIn(pub(super) u64);

impl PartialEq for ListedIn {
    fn eq(&self, _: &ListedIn) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(id: &str) -> Arc<str> {
        id.into()
    }

    fn agent() -> AgentState {
        AgentState::new("wf".into(), "v1", vec![0], 0)
    }

    /// Each id once per round, sorted, with or without state; a new round lists again.
    #[test]
    fn lists_each_agent_once_per_round() {
        let mut d = Dirty::default();
        let (mut a, mut b) = (agent(), agent());
        d.mark("b", Some((&id("b"), &mut b)));
        d.mark("a", Some((&id("a"), &mut a)));
        d.mark("b", Some((&id("b"), &mut b)));
        d.mark("gone", None);
        d.mark("gone", None);
        assert_eq!(d.take(), ["a", "b", "gone"]);
        assert!(d.take().is_empty(), "taken, and a new round lists nothing yet");
        d.mark("a", Some((&id("a"), &mut a)));
        assert_eq!(d.take(), ["a"]);
    }

    /// An agent that expires and comes back within a round (a new state, not listed) is
    /// listed again and reported once; marks forgotten by `clear` are not reported.
    #[test]
    fn an_agent_back_within_a_round_is_reported_once() {
        let mut d = Dirty::default();
        let mut a = agent();
        d.mark("a", Some((&id("a"), &mut a)));
        d.mark("a", None);
        let mut again = agent();
        d.mark("a", Some((&id("a"), &mut again)));
        assert_eq!(d.take(), ["a"]);
        d.mark("b", Some((&id("b"), &mut agent())));
        d.clear();
        assert!(d.take().is_empty());
    }

    /// The round is not part of the agent's value: a listed agent equals its stored copy.
    #[test]
    fn the_round_is_not_state() {
        let mut d = Dirty::default();
        let mut a = agent();
        let stored = a.clone();
        d.mark("a", Some((&id("a"), &mut a)));
        assert_eq!(a, stored);
        let bytes = crate::codec::changelog::encode_agent(&a);
        assert_eq!(bytes, crate::codec::changelog::encode_agent(&stored));
    }
}
