//! Changes waiting for the persister, folded so that an outage costs bounded memory.

use crate::state::{Change, RuleChange};
use std::collections::HashMap;

/// Changes waiting to be committed. Past a size they are folded: the last change per key,
/// without what a later removal undoes, and without what was added and removed again before it
/// reached the store. So a long outage (a full disk) holds about one entry per learned value,
/// and a rule churning through its byte budget faster than the disk takes it holds about its
/// budget, never its whole history.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) changes: Vec<RuleChange>,
    /// Key bytes of `changes`.
    bytes: usize,
    /// Size past which to fold next.
    fold_at: usize,
}

/// Most key bytes committed in one transaction.
pub(super) const COMMIT_BYTES: usize = 4 << 20;

/// Folding starts past this many key bytes pending.
const FOLD_AT_BYTES: usize = 16 << 20;

type GroupOf = (String, String, String);

impl Pending {
    pub(super) fn push(&mut self, batch: Vec<RuleChange>) {
        self.bytes += batch.iter().map(|(_, c)| c.key_bytes()).sum::<usize>();
        self.changes.extend(batch);
        if self.bytes > self.fold_at.max(FOLD_AT_BYTES) {
            self.fold();
            // Fold again only once as much again has come, so folding stays linear.
            self.fold_at = self.bytes.saturating_mul(2);
        }
    }

    /// Puts back changes that could not be committed, before what came since.
    pub(super) fn put_back(&mut self, mut batch: Vec<RuleChange>) {
        self.bytes += batch.iter().map(|(_, c)| c.key_bytes()).sum::<usize>();
        batch.append(&mut self.changes);
        self.changes = batch;
    }

    /// Takes the oldest changes, about `max_bytes` of keys: one transaction's worth, so that
    /// redb never holds a huge transaction in memory.
    pub(super) fn take(&mut self, max_bytes: usize) -> Vec<RuleChange> {
        let mut bytes = 0;
        let count = self
            .changes
            .iter()
            .take_while(|(_, change)| {
                bytes += change.key_bytes();
                bytes <= max_bytes
            })
            .count()
            .max(1);
        let rest = self.changes.split_off(count.min(self.changes.len()));
        let taken = std::mem::replace(&mut self.changes, rest);
        self.bytes -= taken.iter().map(|(_, c)| c.key_bytes()).sum::<usize>();
        taken
    }

    /// Keeps the last change per key, dropping what a later removal of its group undoes and
    /// what appeared and vanished within these changes (a group created and removed, a value
    /// added fresh and removed). The group removals go first, so what was learned after one
    /// lands after it.
    pub(super) fn fold(&mut self) {
        let group_of = |rule: &str, state: &str, group: &str| -> GroupOf {
            (rule.to_string(), state.to_string(), group.to_string())
        };
        let mut last_removal: HashMap<GroupOf, usize> = HashMap::new();
        let mut last_of_group: HashMap<GroupOf, usize> = HashMap::new();
        let mut born: std::collections::HashSet<GroupOf> = std::collections::HashSet::new();
        let mut latest = HashMap::new();
        let mut fresh_values = std::collections::HashSet::new();
        for (index, (rule, change)) in self.changes.iter().enumerate() {
            let (state, group, value) = change.place();
            let key = group_of(rule, state, group);
            if last_of_group.insert(key.clone(), index).is_none()
                && matches!(change, Change::Group { .. })
            {
                // Its first change creates it: it was not in the store before these.
                born.insert(key.clone());
            }
            match change {
                Change::GroupRemoved { .. } => {
                    last_removal.insert(key, index);
                }
                _ => {
                    let value = value.map(str::to_string);
                    let first = !latest.contains_key(&(key.clone(), value.clone()));
                    if first && matches!(change, Change::Value { fresh: true, .. }) {
                        fresh_values.insert((key.clone(), value.clone()));
                    }
                    latest.insert((key, value), index);
                }
            }
        }
        let vanished = |group: &GroupOf| {
            born.contains(group) && last_removal.get(group) == last_of_group.get(group)
        };
        let changes = &self.changes;
        let mut keep: Vec<usize> = latest
            .iter()
            .filter(|((group, _), index)| {
                !vanished(group) && last_removal.get(group).is_none_or(|r| *index > r)
            })
            .filter(|(key, index)| {
                !(fresh_values.contains(*key)
                    && matches!(changes[**index].1, Change::ValueRemoved { .. }))
            })
            .map(|(_, index)| *index)
            .chain(
                last_removal
                    .iter()
                    .filter(|(group, _)| !vanished(group))
                    .map(|(_, index)| *index),
            )
            .collect();
        keep.sort_unstable_by_key(|&index| {
            (
                !matches!(self.changes[index].1, Change::GroupRemoved { .. }),
                index,
            )
        });
        let mut changes: Vec<Option<RuleChange>> = std::mem::take(&mut self.changes)
            .into_iter()
            .map(Some)
            .collect();
        self.changes = keep
            .into_iter()
            .map(|index| changes[index].take().expect("each index kept once"))
            .collect();
        self.bytes = self.changes.iter().map(|(_, c)| c.key_bytes()).sum();
    }
}
