//! Every rule's new-value state, owned in one place and keyed by rule id.
//!
//! State belongs to the rule id, not to a module or an instance: it outlives a rule being
//! replaced, quarantined, or removed and added again, and the pipeline lends one state to a rule
//! instance only for the length of a call (`RuleInstance::handle`). The durable store sees the
//! states only through what this type hands it ([`RuleStates::take_changes`]) and what it reads
//! back ([`RuleStates::restore`]), so storage does not depend on the pipeline.

pub use crate::state::RuleChange;
use crate::state::{Claim, Outbox, RuleState, Settings};
use hashbrown::HashMap;

/// Settings of a state restored or merged before its rule is installed; installing the rule
/// sets its own.
pub const PLACEHOLDER_SETTINGS: Settings = Settings {
    learning_period_ns: 0,
    forget_after_ns: u64::MAX,
};

/// A handle on one rule's state in [`RuleStates`]; states are never dropped, so a handle stays
/// valid for the life of its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateId(usize);

/// The new-value states of every rule, installed or not.
#[derive(Debug)]
pub struct RuleStates {
    /// Rule id → position in `entries`.
    index: HashMap<String, usize>,
    /// In order of first use, so that walks over them are deterministic.
    entries: Vec<(String, RuleState)>,
    capacity: usize,
    rule_bytes: usize,
    total_bytes: usize,
    journal: bool,
    /// Whether states keep an outbox for the fleet store.
    outbox: bool,
}

impl RuleStates {
    /// No states yet. Each will hold at most `capacity` entries and `rule_bytes` bytes, all of
    /// them together at most `total_bytes`; `journal` makes new states record their changes for
    /// a durable store.
    pub fn new(capacity: usize, rule_bytes: usize, total_bytes: usize, journal: bool) -> Self {
        RuleStates {
            index: HashMap::new(),
            entries: Vec::new(),
            capacity,
            rule_bytes,
            total_bytes,
            journal,
            outbox: false,
        }
    }

    /// Makes every state, present and future, keep an outbox for the fleet store.
    pub fn enable_outbox(&mut self) {
        self.outbox = true;
        for (_, state) in &mut self.entries {
            state.enable_outbox();
        }
    }

    /// The state of rule `id`, created empty if it has none, with `settings` and this owner's
    /// bounds applied (a reloaded rule may bring new defaults; what was learned is kept).
    pub fn prepare(&mut self, id: &str, settings: Settings) -> StateId {
        let at = match self.index.get(id) {
            Some(&at) => at,
            None => {
                let state = self.new_state(settings);
                self.insert(id, state)
            }
        };
        let state = &mut self.entries[at].1;
        state.set_settings(settings);
        state.set_bounds(self.capacity, self.rule_bytes);
        StateId(at)
    }

    fn new_state(&self, settings: Settings) -> RuleState {
        let mut state = RuleState::new(settings, self.capacity);
        if self.journal {
            state.enable_journal();
        }
        if self.outbox {
            state.enable_outbox();
        }
        state.set_bounds(self.capacity, self.rule_bytes);
        state
    }

    /// The state of rule `id`, created if it has none, for what the fleet or an operator
    /// changes: a rule not installed yet gets a state with placeholder settings, which its
    /// installation replaces ([`RuleStates::prepare`]).
    pub fn state_of(&mut self, id: &str) -> &mut RuleState {
        let at = match self.index.get(id) {
            Some(&at) => at,
            None => {
                let state = self.new_state(PLACEHOLDER_SETTINGS);
                self.insert(id, state)
            }
        };
        &mut self.entries[at].1
    }

    fn insert(&mut self, id: &str, state: RuleState) -> usize {
        match self.index.get(id) {
            Some(&at) => {
                self.entries[at].1 = state;
                at
            }
            None => {
                let at = self.entries.len();
                self.entries.push((id.to_string(), state));
                self.index.insert(id.to_string(), at);
                at
            }
        }
    }

    /// Places states read back from a durable store, journaling on; a rule installed later
    /// picks its own up through [`RuleStates::prepare`].
    pub fn restore(&mut self, states: impl IntoIterator<Item = (String, RuleState)>) {
        for (id, mut state) in states {
            state.enable_journal();
            if self.outbox {
                state.enable_outbox();
            }
            state.set_bounds(self.capacity, self.rule_bytes);
            self.insert(&id, state);
        }
    }

    /// The state behind a handle from [`RuleStates::prepare`].
    pub fn get_mut(&mut self, id: StateId) -> &mut RuleState {
        &mut self.entries[id.0].1
    }

    /// The state of rule `id`, if it has one.
    pub fn get(&self, id: &str) -> Option<&RuleState> {
        self.index.get(id).map(|&at| &self.entries[at].1)
    }

    /// Every state with its rule id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RuleState)> {
        self.entries.iter().map(|(id, state)| (id.as_str(), state))
    }

    /// Every state with its rule id, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut RuleState)> {
        self.entries
            .iter_mut()
            .map(|(id, state)| (id.as_str(), state))
    }

    /// Number of rules with a state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no rule has a state yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of keys waiting in every state's journal.
    pub fn journal_bytes(&self) -> usize {
        self.entries.iter().map(|(_, s)| s.journal_bytes()).sum()
    }

    /// Takes every state's journal, each change attributed to its rule, for the persister.
    pub fn take_changes(&mut self) -> Vec<RuleChange> {
        let mut changes = Vec::new();
        for (id, state) in &mut self.entries {
            changes.extend(state.take_changes().into_iter().map(|c| (id.clone(), c)));
        }
        changes
    }

    /// Takes every state's outbox, attributed to its rule, for the fleet store.
    pub fn take_outboxes(&mut self) -> Vec<(String, Outbox)> {
        let mut taken = Vec::new();
        for (id, state) in &mut self.entries {
            let outbox = state.take_outbox();
            if !outbox.is_empty() {
                taken.push((id.clone(), outbox));
            }
        }
        taken
    }

    /// Takes the claims made since the last call (during one event), by rule id.
    pub fn take_claims(&mut self) -> Vec<(String, Vec<Claim>)> {
        let mut taken = Vec::new();
        for (id, state) in &mut self.entries {
            let claims = state.take_claims();
            if !claims.is_empty() {
                taken.push((id.clone(), claims));
            }
        }
        taken
    }

    /// Keeps all states together within the total byte budget: past it, the largest state
    /// evicts its least recently seen values until the total is at 7/8 of the budget.
    pub fn enforce_total_bytes(&mut self) {
        let total = self.total_bytes;
        let sum: usize = self.entries.iter().map(|(_, s)| s.bytes()).sum();
        if sum <= total {
            return;
        }
        let largest = self.entries.iter().map(|(_, s)| s.bytes()).max();
        let largest = largest.unwrap_or(0);
        let target = largest.saturating_sub(sum - (total - total / 8));
        if let Some((_, state)) = self.entries.iter_mut().find(|(_, s)| s.bytes() == largest) {
            state.shrink_to(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Change, Verdict};

    const SETTINGS: Settings = Settings {
        learning_period_ns: 0,
        forget_after_ns: u64::MAX,
    };

    #[test]
    fn a_state_is_kept_by_rule_id_across_prepares() {
        let mut states = RuleStates::new(100, usize::MAX, usize::MAX, false);
        let first = states.prepare("rule", SETTINGS);
        // A group's first value starts it, and is learned silently.
        assert_eq!(
            states.get_mut(first).check(1, "s", "g", "/a").unwrap(),
            Verdict::Learning
        );
        let longer = Settings {
            learning_period_ns: 5,
            ..SETTINGS
        };
        let again = states.prepare("rule", longer);
        assert_eq!(first, again);
        assert_eq!(states.get("rule").unwrap().settings(), longer);
        assert_eq!(
            states.get_mut(again).check(100, "s", "g", "/a").unwrap(),
            Verdict::Known
        );
        assert_eq!(states.len(), 1);
    }

    #[test]
    fn restored_states_journal_and_are_picked_up() {
        let mut states = RuleStates::new(100, usize::MAX, usize::MAX, false);
        let mut stored = RuleState::new(SETTINGS, 100);
        stored.restore_group("s", "g", 0);
        stored.restore_value("s", "g", "/a", 0);
        states.restore([("rule".to_string(), stored)]);
        let id = states.prepare("rule", SETTINGS);
        let state = states.get_mut(id);
        assert_eq!(state.check(1, "s", "g", "/a").unwrap(), Verdict::Known);
        assert_eq!(state.check(1, "s", "g", "/b").unwrap(), Verdict::New);
        let changes = states.take_changes();
        assert!(
            changes.iter().any(|(rule, c)| rule == "rule"
                && matches!(c, Change::Value { value, .. } if &**value == "/b")),
            "{changes:?}"
        );
        assert_eq!(states.journal_bytes(), 0);
    }

    #[test]
    fn the_largest_state_gives_way_past_the_total_budget() {
        let mut states = RuleStates::new(1 << 20, usize::MAX, 4096, false);
        let small = states.prepare("small", SETTINGS);
        states.get_mut(small).check(1, "s", "g", "/x").unwrap();
        let big = states.prepare("big", SETTINGS);
        for i in 0..100 {
            states
                .get_mut(big)
                .check(i, "s", "g", &format!("/value/{i}"))
                .unwrap();
        }
        let before = states.get("small").unwrap().bytes();
        assert!(states.iter().map(|(_, s)| s.bytes()).sum::<usize>() > 4096);
        states.enforce_total_bytes();
        assert!(states.iter().map(|(_, s)| s.bytes()).sum::<usize>() <= 4096);
        assert_eq!(states.get("small").unwrap().bytes(), before);
    }
}
