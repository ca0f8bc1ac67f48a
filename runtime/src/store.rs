//! Durable new-value state: an embedded redb database under `--state DIR`.
//!
//! redb commits are atomic and copy-on-write with checksums, so a crash at any moment leaves the
//! last committed state readable. The pipeline drains each rule's journal of changes a few times
//! a second and hands them to a persister thread, which commits them; a failed commit (a full
//! disk) is logged and retried, and nothing is dropped meanwhile. State is keyed by rule id and
//! state name, so a new version of a rule finds what the old one learned.

pub use crate::state::RuleChange;
use crate::state::{Change, RuleState, Settings};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Version of the layout of the tables below; a state file with another is refused.
pub const STATE_FORMAT: u64 = 1;

/// "format" → [`STATE_FORMAT`]; "next_group" → the next group id to hand out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (rule, state, group) → (group id, start of the group's learning period in ns).
const GROUPS: TableDefinition<(&str, &str, &str), (u64, i64)> = TableDefinition::new("groups");
/// (group id, value) → when the value was last seen, ns. Keying values by a group id rather than
/// by (rule, state, group) keeps each key to the value itself: a third of the size on disk.
const VALUES: TableDefinition<(u64, &str), i64> = TableDefinition::new("values");

/// A group's identity in the store.
type GroupKey = (String, Box<str>, Box<str>);

/// redb's page cache. Its default (1 GiB) would let a rule churning through its byte budget
/// make the agent hold a gigabyte of cached pages; the state is read whole once, at start, and
/// written in batches after, so a small cache costs nothing.
const CACHE_BYTES: usize = 32 << 20;

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.redb";

/// A state store problem, naming the file.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    /// Whether the file itself is damaged (as opposed to locked, unreadable, foreign).
    damaged: bool,
}

impl StoreError {
    fn new(message: String) -> StoreError {
        StoreError {
            message,
            damaged: false,
        }
    }

    fn damage(message: String) -> StoreError {
        StoreError {
            message,
            damaged: true,
        }
    }

    /// Whether the file's content is damaged: it should be set aside, not retried.
    pub fn is_damage(&self) -> bool {
        self.damaged
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

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

impl std::error::Error for StoreError {}

/// The database of learned values.
pub struct StateStore {
    db: Database,
    dir: PathBuf,
    path: PathBuf,
    /// Group ids, as stored, so a change does not look its group up on disk.
    ids: HashMap<GroupKey, u64>,
}

impl StateStore {
    /// Opens (creating) `dir/state.redb`. Refuses a file that is not a picket state database of
    /// this format, rather than reusing it silently.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| StoreError::new(format!("state directory {}: {err}", dir.display())))?;
        let path = dir.join(STATE_FILE);
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
                    Change::Group { started_ns, .. } => {
                        if ids.get(&key).is_none() {
                            let id = ids.allocate(key);
                            groups
                                .insert((rule, state, group), (id, *started_ns))
                                .map_err(|e| err(&e))?;
                        }
                    }
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

/// A state file opened and read back by [`open_and_load`].
pub struct Restored {
    /// The store, for the persister.
    pub store: StateStore,
    /// Every rule's state, by rule id.
    pub states: HashMap<String, RuleState>,
    /// Values read.
    pub values: usize,
    /// Where a damaged file was moved, if one was.
    pub set_aside: Option<PathBuf>,
}

/// Opens `dir/state.redb` and reads it back. A damaged file (redb refuses it as corrupt, or
/// panics on it) or an emptied one (present but 0 bytes: it was truncated, since redb never
/// leaves one) is never fatal and never silent: it is moved aside as
/// `state.redb.damaged-<unix seconds>` for whoever investigates, an error names both paths, and
/// a fresh file is started, so the agent keeps detecting rather than crash-looping. Other
/// failures (the file locked by another process, a foreign or newer file, no permission) are
/// returned: those are for the operator to decide, and moving the file would hide them.
pub fn open_and_load(dir: &Path, capacity: usize) -> Result<Restored, StoreError> {
    let path = dir.join(STATE_FILE);
    let mut set_aside = None;
    if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        set_aside = Some(move_aside(
            &path,
            "it is empty (0 bytes): it was truncated",
        )?);
    }
    match guarded(|| open_loaded(dir, capacity)) {
        Ok(mut restored) => {
            restored.set_aside = set_aside;
            return Ok(restored);
        }
        Err(err) if !err.is_damage() => return Err(err),
        Err(err) => set_aside = Some(move_aside(&path, &err.to_string())?),
    }
    let mut restored = guarded(|| open_loaded(dir, capacity))?;
    restored.set_aside = set_aside;
    Ok(restored)
}

fn open_loaded(dir: &Path, capacity: usize) -> Result<Restored, StoreError> {
    let store = StateStore::open(dir)?;
    let (states, values) = store.load(capacity)?;
    Ok(Restored {
        store,
        states,
        values,
        set_aside: None,
    })
}

/// Runs `f`, turning a panic inside it (redb's, on a file it cannot make sense of) into an
/// error about a damaged file.
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(StoreError::damage(format!(
            "the state database panicked reading it: {what}"
        )))
    })
}

/// Renames a damaged state file to `<name>.damaged-<unix seconds>` and says so.
fn move_aside(path: &Path, why: &str) -> Result<PathBuf, StoreError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
    for n in 1.. {
        if !aside.exists() {
            break;
        }
        aside = PathBuf::from(format!("{}.damaged-{stamp}.{n}", path.display()));
    }
    std::fs::rename(path, &aside).map_err(|err| {
        StoreError::new(format!(
            "state file {} is damaged ({why}) and cannot be moved aside to {}: {err}",
            path.display(),
            aside.display()
        ))
    })?;
    crate::metrics::global().state_file_set_aside();
    tracing::error!(
        file = %path.display(),
        moved_to = %aside.display(),
        "state file damaged: moved aside and starting with an empty state; what it held is \
         learned again (values are silent while their group learns, new ones raise signals). \
         Cause: {why}"
    );
    Ok(aside)
}

/// Group ids as a transaction sees them: the committed ones, with this transaction's changes
/// on top (which only count once it commits).
struct GroupIds<'a> {
    committed: &'a HashMap<GroupKey, u64>,
    added: HashMap<GroupKey, u64>,
    removed: Vec<GroupKey>,
    next: u64,
}

impl<'a> GroupIds<'a> {
    fn new(committed: &'a HashMap<GroupKey, u64>, next: u64) -> Self {
        GroupIds {
            committed,
            added: HashMap::new(),
            removed: Vec::new(),
            next,
        }
    }

    fn get(&self, key: &GroupKey) -> Option<u64> {
        self.added.get(key).copied().or_else(|| {
            (!self.removed.contains(key))
                .then(|| self.committed.get(key).copied())
                .flatten()
        })
    }

    fn allocate(&mut self, key: GroupKey) -> u64 {
        let id = self.next;
        self.next += 1;
        self.added.insert(key, id);
        id
    }

    fn remove(&mut self, key: GroupKey) -> Option<u64> {
        let id = self.get(&key);
        self.added.remove(&key);
        self.removed.push(key);
        id
    }
}

/// Changes waiting to be committed. Past a size they are folded: the last change per key,
/// without what a later removal undoes, and without what was added and removed again before it
/// reached the store. So a long outage (a full disk) holds about one entry per learned value,
/// and a rule churning through its byte budget faster than the disk takes it holds about its
/// budget, never its whole history.
#[derive(Default)]
struct Pending {
    changes: Vec<RuleChange>,
    /// Key bytes of `changes`.
    bytes: usize,
    /// Size past which to fold next.
    fold_at: usize,
}

/// Most key bytes committed in one transaction.
const COMMIT_BYTES: usize = 4 << 20;

/// Folding starts past this many key bytes pending.
const FOLD_AT_BYTES: usize = 16 << 20;

type GroupOf = (String, String, String);

impl Pending {
    fn push(&mut self, batch: Vec<RuleChange>) {
        self.bytes += batch.iter().map(|(_, c)| c.key_bytes()).sum::<usize>();
        self.changes.extend(batch);
        if self.bytes > self.fold_at.max(FOLD_AT_BYTES) {
            self.fold();
            // Fold again only once as much again has come, so folding stays linear.
            self.fold_at = self.bytes.saturating_mul(2);
        }
    }

    /// Puts back changes that could not be committed, before what came since.
    fn put_back(&mut self, mut batch: Vec<RuleChange>) {
        self.bytes += batch.iter().map(|(_, c)| c.key_bytes()).sum::<usize>();
        batch.append(&mut self.changes);
        self.changes = batch;
    }

    /// Takes the oldest changes, about `max_bytes` of keys: one transaction's worth, so that
    /// redb never holds a huge transaction in memory.
    fn take(&mut self, max_bytes: usize) -> Vec<RuleChange> {
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
    fn fold(&mut self) {
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

/// What the event loop and the persister thread share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    pending: Pending,
    closed: bool,
}

/// Commits changes on its own thread. Changes handed over wait in one folded queue, not a
/// channel of batches, so that a store slower than the rules learn costs bounded memory.
pub struct Persister {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// How long to wait before retrying a failed commit.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a persisting failure is logged again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

impl Persister {
    /// Starts the persister for `store`.
    pub fn start(store: StateStore) -> Persister {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("picket-state".into())
            .spawn(move || persist(store, &thread_shared))
            .expect("spawning the state thread");
        Persister {
            shared,
            thread: Some(thread),
        }
    }

    /// Queues changes for the next commit.
    pub fn send(&self, changes: Vec<RuleChange>) {
        if changes.is_empty() {
            return;
        }
        lock(&self.shared.queue).pending.push(changes);
        self.shared.wake.notify_one();
    }

    /// Commits what is queued and stops.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn persist(mut store: StateStore, shared: &Shared) {
    let mut failing_since: Option<Instant> = None;
    let mut last_report = Instant::now();
    loop {
        let (batch, closing) = {
            let mut queue = lock(&shared.queue);
            while queue.pending.changes.is_empty() && !queue.closed {
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.pending.changes.is_empty() {
                return;
            }
            (queue.pending.take(COMMIT_BYTES), queue.closed)
        };
        let saved = guarded(|| store.apply(&batch));
        crate::metrics::global().state_saved(saved.is_ok());
        match saved {
            Ok(()) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        file = %store.path().display(),
                        "state saved again after failing for {:?}",
                        since.elapsed()
                    );
                }
            }
            Err(err) => {
                let waiting = batch.len();
                lock(&shared.queue).pending.put_back(batch);
                let first = failing_since.is_none();
                failing_since.get_or_insert_with(Instant::now);
                if first || last_report.elapsed() >= REPORT_EVERY {
                    last_report = Instant::now();
                    tracing::error!(
                        pending = waiting,
                        "cannot save learned values, keeping them in memory and retrying: {err}"
                    );
                }
                if closing {
                    // Shutting down: one last attempt was made; what could not be saved is
                    // lost with the process, and said so.
                    tracing::error!(
                        pending = lock(&shared.queue).pending.changes.len(),
                        "stopping with learned values that could not be saved: {err}"
                    );
                    return;
                }
                std::thread::sleep(RETRY_AFTER);
                // After a failed write redb refuses further writes on the same handle, so the
                // retry goes through a fresh one (for example once space was freed).
                let dir = store.dir.clone();
                drop(store);
                store = loop {
                    match guarded(|| StateStore::open(&dir)) {
                        Ok(reopened) => break reopened,
                        Err(err) => {
                            tracing::error!("reopening the state store: {err}");
                            std::thread::sleep(RETRY_AFTER);
                        }
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Verdict;

    fn group(state: &str, group: &str, started_ns: i64) -> RuleChange {
        let change = Change::Group {
            state: state.into(),
            group: group.into(),
            started_ns,
        };
        ("rule".into(), change)
    }

    fn value(group: &str, value: &str, last_seen_ns: i64) -> RuleChange {
        let change = Change::Value {
            state: "s".into(),
            group: group.into(),
            value: value.into(),
            last_seen_ns,
            fresh: false,
        };
        ("rule".into(), change)
    }

    /// The rule's state as read back from `store`, with learning off; asserts the value count.
    fn reloaded(store: &StateStore, values: usize) -> RuleState {
        let (mut states, count) = store.load(1000).unwrap();
        assert_eq!(count, values);
        let mut state = states.remove("rule").unwrap();
        state.set_settings(Settings {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        });
        state
    }

    #[test]
    fn folding_keeps_the_outcome_of_the_log() {
        let removed = |g: &str| {
            let change = Change::GroupRemoved {
                state: "s".into(),
                group: g.into(),
            };
            ("rule".to_string(), change)
        };
        let mut pending = Pending {
            changes: vec![
                group("s", "g", 1),
                value("g", "/old", 1),
                value("g", "/kept", 2),
                removed("g"),
                group("s", "g", 5),
                value("g", "/kept", 6),
                value("g", "/kept", 7),
                group("s", "h", 8),
                value("h", "/h", 8),
            ],
            ..Pending::default()
        };
        pending.fold();
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.apply(&pending.changes).unwrap();
        assert_eq!(pending.changes.len(), 5, "{:?}", pending.changes);
        let mut state = reloaded(&store, 2);
        assert_eq!(state.check(9, "s", "g", "/old").unwrap(), Verdict::New);
        assert_eq!(state.check(9, "s", "g", "/kept").unwrap(), Verdict::Known);
        assert_eq!(state.check(9, "s", "h", "/h").unwrap(), Verdict::Known);
    }

    #[test]
    fn folding_drops_what_appeared_and_vanished_before_it_was_saved() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store
            .apply(&[group("s", "old", 1), value("old", "/kept", 1)])
            .unwrap();
        let removed_group = |g: &str| {
            let change = Change::GroupRemoved {
                state: "s".into(),
                group: g.into(),
            };
            ("rule".to_string(), change)
        };
        let removed_value = |g: &str, v: &str| {
            let change = Change::ValueRemoved {
                state: "s".into(),
                group: g.into(),
                value: v.into(),
            };
            ("rule".to_string(), change)
        };
        let fresh = |g: &str, v: &str, at: i64| {
            let mut change = value(g, v, at);
            if let Change::Value { fresh, .. } = &mut change.1 {
                *fresh = true;
            }
            change
        };
        let mut pending = Pending::default();
        let mut changes = Vec::new();
        // Churn: a thousand groups created and evicted, a thousand values added and evicted.
        for i in 0..1000 {
            let g = format!("churn{i}");
            changes.extend([
                group("s", &g, i),
                fresh(&g, "/v", i),
                removed_value(&g, "/v"),
            ]);
            changes.push(removed_group(&g));
            changes.extend([
                fresh("old", &format!("/x{i}"), i),
                removed_value("old", &format!("/x{i}")),
            ]);
        }
        changes.push(fresh("old", "/new", 2000));
        pending.push(changes);
        pending.fold();
        assert_eq!(pending.changes.len(), 1, "{:?}", &pending.changes[..3]);
        store.apply(&pending.changes).unwrap();
        let mut state = reloaded(&store, 2);
        assert_eq!(state.check(9, "s", "old", "/kept").unwrap(), Verdict::Known);
        assert_eq!(state.check(9, "s", "old", "/new").unwrap(), Verdict::Known);
        assert_eq!(state.check(9, "s", "old", "/x1").unwrap(), Verdict::New);
    }

    #[test]
    fn changes_survive_a_reopen_including_removals() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store
            .apply(&[
                group("s", "g", 10),
                value("g", "/a", 10),
                value("g", "/b", 11),
                group("s", "h", 12),
                value("h", "/c", 12),
            ])
            .unwrap();
        // In one batch: a value evicted, a group evicted and learned again from scratch.
        let removed_value = Change::ValueRemoved {
            state: "s".into(),
            group: "g".into(),
            value: "/a".into(),
        };
        let removed_group = Change::GroupRemoved {
            state: "s".into(),
            group: "h".into(),
        };
        store
            .apply(&[
                ("rule".into(), removed_value),
                ("rule".into(), removed_group),
                group("s", "h", 20),
                value("h", "/d", 20),
            ])
            .unwrap();
        drop(store);

        let store = StateStore::open(dir.path()).unwrap();
        let state = &mut reloaded(&store, 2);
        let check = |state: &mut RuleState, group: &str, value: &str| {
            state.check(30, "s", group, value).unwrap()
        };
        assert_eq!(check(state, "g", "/b"), Verdict::Known);
        assert_eq!(check(state, "g", "/a"), Verdict::New);
        assert_eq!(check(state, "h", "/d"), Verdict::Known);
        assert_eq!(check(state, "h", "/c"), Verdict::New);
    }
}
