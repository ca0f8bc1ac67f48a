//! The schema of the state file and the transactions on it: open and check its format, read
//! every state back, commit a batch of changes.

use super::StoreError;
use super::overlay::{GroupIds, GroupKey};
use crate::state::{Change, RuleChange, RuleState, Settings};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Version of the layout of the tables below; a state file with another is refused.
pub const STATE_FORMAT: u64 = 1;

/// "format" → [`STATE_FORMAT`]; "next_group" → the next group id to hand out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (rule, state, group) → (group id, start of the group's learning period in ns).
const GROUPS: TableDefinition<(&str, &str, &str), (u64, i64)> = TableDefinition::new("groups");
/// (group id, value) → when the value was last seen, ns. Keying values by a group id rather than
/// by (rule, state, group) keeps each key to the value itself: a third of the size on disk.
const VALUES: TableDefinition<(u64, &str), i64> = TableDefinition::new("values");

/// rule → (learning period, forget after) in ns: the settings the agent last ran each rule
/// with, for `picket state show` to say which groups are still learning.
const RULES: TableDefinition<&str, (u64, u64)> = TableDefinition::new("rules");

/// redb's page cache. Its default (1 GiB) would let a rule churning through its byte budget
/// make the agent hold a gigabyte of cached pages; the state is read whole once, at start, and
/// written in batches after, so a small cache costs nothing.
const CACHE_BYTES: usize = 32 << 20;

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.redb";

/// Whether an error opening the database means its content is damaged, rather than that it is
/// locked by another process or cannot be reached.
fn is_damage(err: &redb::DatabaseError) -> bool {
    use redb::{DatabaseError, StorageError};
    match err {
        DatabaseError::Storage(StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        DatabaseError::Storage(StorageError::Corrupted(_) | StorageError::ValueTooLarge(_))
        | DatabaseError::RepairAborted
        | DatabaseError::UpgradeRequired(_) => true,
        _ => false,
    }
}

/// The format a state file says it is in, when it is newer than this picket's; read without
/// changing the file. `None` for anything else (no file, this format, older, unreadable: the
/// read-write open then decides).
fn newer_format_of(path: &Path) -> Option<u64> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return None;
    }
    let db = redb::Builder::new().open_read_only(path).ok()?;
    let txn = db.begin_read().ok()?;
    let meta = txn.open_table(META).ok()?;
    let format = meta.get("format").ok()??.value();
    (format > STATE_FORMAT).then_some(format)
}

/// The database of learned values.
pub struct StateStore {
    db: Database,
    pub(super) dir: PathBuf,
    path: PathBuf,
    /// Group ids, as stored, so a change does not look its group up on disk.
    ids: HashMap<GroupKey, u64>,
}

impl StateStore {
    /// Opens (creating) `dir/state.redb`. Refuses a file that is not a picket state database of
    /// this format, rather than reusing it silently.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        StateStore::open_file(dir, STATE_FILE)
    }

    /// [`StateStore::open`] for the file `name` in `dir` (a side file: see
    /// [`super::open_and_load`]).
    pub fn open_file(dir: &Path, name: &str) -> Result<StateStore, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| StoreError::new(format!("state directory {}: {err}", dir.display())))?;
        let path = dir.join(name);
        // A file a newer picket wrote is recognised without opening it for writing: redb
        // rewrites a file's header when it opens it read-write, and that file must stay as the
        // newer picket left it (an upgrade rolled back, docs/new-value.md).
        if let Some(newer) = newer_format_of(&path) {
            return Err(StoreError::newer(
                format!(
                    "state file {} was written in state format {newer} by a newer picket; this \
                     one reads format {STATE_FORMAT}",
                    path.display()
                ),
                newer,
            ));
        }
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|err| {
            let message = format!(
                "state file {}: cannot be opened (not a picket state database, or damaged): {err}",
                path.display()
            );
            if is_damage(&err) {
                StoreError::damage(message)
            } else {
                StoreError::new(message)
            }
        })?;
        let mut store = StateStore {
            db,
            dir: dir.to_path_buf(),
            path,
            ids: HashMap::new(),
        };
        store.check_format()?;
        store.read_group_ids()?;
        Ok(store)
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let path = self.path.display();
        let err = |err: &dyn fmt::Display| StoreError::damage(format!("state file {path}: {err}"));
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
            let format = meta.get("format").map_err(|e| err(&e))?.map(|v| v.value());
            match format {
                Some(STATE_FORMAT) => {}
                // Written by a newer picket: left as it is (this transaction is dropped, not
                // committed), for that picket to find again.
                Some(newer) if newer > STATE_FORMAT => {
                    return Err(StoreError::newer(
                        format!(
                            "state file {path} was written in state format {newer} by a newer \
                             picket; this one reads format {STATE_FORMAT}"
                        ),
                        newer,
                    ));
                }
                Some(other) => {
                    return Err(StoreError::new(format!(
                        "state file {path} was written in state format {other}, but this picket \
                         reads format {STATE_FORMAT}; move it aside or use another --state directory"
                    )));
                }
                None => {
                    let groups = txn.open_table(GROUPS).map_err(|e| err(&e))?;
                    if !groups.is_empty().map_err(|e| err(&e))? {
                        return Err(StoreError::new(format!(
                            "state file {path} holds state but no format marker; it was not \
                             written by picket"
                        )));
                    }
                    meta.insert("format", STATE_FORMAT).map_err(|e| err(&e))?;
                }
            }
            txn.open_table(VALUES).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }

    fn read_group_ids(&mut self) -> Result<(), StoreError> {
        let path = self.path.display();
        let err = |e: &dyn fmt::Display| StoreError::damage(format!("state file {path}: {e}"));
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let groups = txn.open_table(GROUPS).map_err(|e| err(&e))?;
        for row in groups.iter().map_err(|e| err(&e))? {
            let (key, value) = row.map_err(|e| err(&e))?;
            let (rule, state, group) = key.value();
            self.ids
                .insert((rule.into(), state.into(), group.into()), value.value().0);
        }
        Ok(())
    }

    /// Reads every rule's state back; the settings are placeholders until the rule is
    /// installed. Returns the states by rule id and the number of values read.
    pub fn load(&self, capacity: usize) -> Result<(HashMap<String, RuleState>, usize), StoreError> {
        let path = self.path.display();
        let err = |e: &dyn fmt::Display| StoreError::damage(format!("state file {path}: {e}"));
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let mut states: HashMap<String, RuleState> = HashMap::new();
        let placeholder = Settings {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        };
        let mut by_id: HashMap<u64, (String, String, String)> = HashMap::new();
        let groups = txn.open_table(GROUPS).map_err(|e| err(&e))?;
        for row in groups.iter().map_err(|e| err(&e))? {
            let (key, value) = row.map_err(|e| err(&e))?;
            let (rule, state, group) = key.value();
            let (id, started) = value.value();
            states
                .entry(rule.to_string())
                .or_insert_with(|| RuleState::new(placeholder, capacity))
                .restore_group(state, group, started);
            by_id.insert(id, (rule.into(), state.into(), group.into()));
        }
        let values = txn.open_table(VALUES).map_err(|e| err(&e))?;
        let mut count = 0;
        for row in values.iter().map_err(|e| err(&e))? {
            let (key, last_seen) = row.map_err(|e| err(&e))?;
            let (id, value) = key.value();
            let Some((rule, state, group)) = by_id.get(&id) else {
                continue;
            };
            if let Some(rule_state) = states.get_mut(rule) {
                rule_state.restore_value(state, group, value, last_seen.value());
                count += 1;
            }
        }
        Ok((states, count))
    }

    /// Records the settings rules run with.
    pub fn set_settings(&mut self, settings: &[(String, Settings)]) -> Result<(), StoreError> {
        let path = self.path.display().to_string();
        let err = |e: &dyn fmt::Display| StoreError::damage(format!("state file {path}: {e}"));
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut rules = txn.open_table(RULES).map_err(|e| err(&e))?;
            for (rule, s) in settings {
                rules
                    .insert(rule.as_str(), (s.learning_period_ns, s.forget_after_ns))
                    .map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))
    }

    /// The settings each rule last ran with (none for a file no agent of this version wrote).
    pub fn settings(&self) -> Result<HashMap<String, Settings>, StoreError> {
        let path = self.path.display();
        let err = |e: &dyn fmt::Display| StoreError::damage(format!("state file {path}: {e}"));
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let rules = match txn.open_table(RULES) {
            Ok(rules) => rules,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(err(&e)),
        };
        let mut settings = HashMap::new();
        for row in rules.iter().map_err(|e| err(&e))? {
            let (rule, value) = row.map_err(|e| err(&e))?;
            let (learning_period_ns, forget_after_ns) = value.value();
            settings.insert(
                rule.value().to_string(),
                Settings {
                    learning_period_ns,
                    forget_after_ns,
                },
            );
        }
        Ok(settings)
    }

    /// Commits `changes` in order, in one transaction.
    pub fn apply(&mut self, changes: &[RuleChange]) -> Result<(), StoreError> {
        let path = self.path.display().to_string();
        let err = |e: &dyn fmt::Display| StoreError::damage(format!("state file {path}: {e}"));
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        let mut ids;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
            let next = meta
                .get("next_group")
                .map_err(|e| err(&e))?
                .map_or(1, |v| v.value());
            ids = GroupIds::new(&self.ids, next);
            let mut groups = txn.open_table(GROUPS).map_err(|e| err(&e))?;
            let mut values = txn.open_table(VALUES).map_err(|e| err(&e))?;
            for (rule, change) in changes {
                let rule = rule.as_str();
                let (state, group, _) = change.place();
                let key: GroupKey = (rule.into(), state.into(), group.into());
                match change {
                    Change::Group { started_ns, .. } => match ids.get(&key) {
                        None => {
                            let id = ids.allocate(key);
                            groups
                                .insert((rule, state, group), (id, *started_ns))
                                .map_err(|e| err(&e))?;
                        }
                        // The fleet found an earlier first sighting, or values allowed ahead of
                        // the group's first event were followed by that event.
                        Some(id) => {
                            let stored = groups
                                .get((rule, state, group))
                                .map_err(|e| err(&e))?
                                .map(|row| row.value().1);
                            if stored.is_none_or(|stored| *started_ns < stored) {
                                groups
                                    .insert((rule, state, group), (id, *started_ns))
                                    .map_err(|e| err(&e))?;
                            }
                        }
                    },
                    Change::Value {
                        value,
                        last_seen_ns,
                        ..
                    } => {
                        let id = match ids.get(&key) {
                            Some(id) => id,
                            // A value always follows its group's creation; should a log ever
                            // lack it, the value's time is the best start there is.
                            None => {
                                let id = ids.allocate(key);
                                groups
                                    .insert((rule, state, group), (id, *last_seen_ns))
                                    .map_err(|e| err(&e))?;
                                id
                            }
                        };
                        values
                            .insert((id, &**value), last_seen_ns)
                            .map_err(|e| err(&e))?;
                    }
                    Change::ValueRemoved { value, .. } => {
                        if let Some(id) = ids.get(&key) {
                            values.remove((id, &**value)).map_err(|e| err(&e))?;
                        }
                    }
                    Change::GroupRemoved { .. } => {
                        groups.remove((rule, state, group)).map_err(|e| err(&e))?;
                        if let Some(id) = ids.remove(key) {
                            values
                                .retain_in((id, "")..(id + 1, ""), |_, _| false)
                                .map_err(|e| err(&e))?;
                        }
                    }
                }
            }
            meta.insert("next_group", ids.next).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))?;
        let (added, removed) = (ids.added, ids.removed);
        for key in removed {
            self.ids.remove(&key);
        }
        self.ids.extend(added);
        Ok(())
    }
}

/// Sets the format marker of the state file at `path` (tests: a file a newer picket wrote).
#[cfg(test)]
pub(super) fn set_format(path: &Path, format: u64) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("format", format)
        .unwrap();
    txn.commit().unwrap();
}
