//! Group ids as one transaction sees them.

use std::collections::HashMap;

/// A group's identity in the store: (rule, state, group).
pub(super) type GroupKey = (String, Box<str>, Box<str>);

/// Group ids as a transaction sees them: the committed ones, with this transaction's changes
/// on top (which only count once it commits).
pub(super) struct GroupIds<'a> {
    committed: &'a HashMap<GroupKey, u64>,
    pub(super) added: HashMap<GroupKey, u64>,
    pub(super) removed: Vec<GroupKey>,
    pub(super) next: u64,
}

impl<'a> GroupIds<'a> {
    pub(super) fn new(committed: &'a HashMap<GroupKey, u64>, next: u64) -> Self {
        GroupIds {
            committed,
            added: HashMap::new(),
            removed: Vec::new(),
            next,
        }
    }

    pub(super) fn get(&self, key: &GroupKey) -> Option<u64> {
        self.added.get(key).copied().or_else(|| {
            (!self.removed.contains(key))
                .then(|| self.committed.get(key).copied())
                .flatten()
        })
    }

    pub(super) fn allocate(&mut self, key: GroupKey) -> u64 {
        let id = self.next;
        self.next += 1;
        self.added.insert(key, id);
        id
    }

    pub(super) fn remove(&mut self, key: GroupKey) -> Option<u64> {
        let id = self.get(&key);
        self.added.remove(&key);
        self.removed.push(key);
        id
    }
}
