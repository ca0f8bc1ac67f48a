//! Durable new-value state: an embedded redb database under `--state DIR`.
//!
//! redb commits are atomic and copy-on-write with checksums, so a crash at any moment leaves the
//! last committed state readable. The pipeline drains each rule's journal of changes a few times
//! a second and hands them to a persister thread, which commits them; a failed commit (a full
//! disk) is logged and retried, and nothing is dropped meanwhile. State is keyed by rule id and
//! state name, so a new version of a rule finds what the old one learned.

use crate::state::{Change, RuleState, Settings};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Version of the layout of the tables below; a state file with another is refused.
pub const STATE_FORMAT: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (rule, state, group) → start of the group's learning period, ns.
const GROUPS: TableDefinition<(&str, &str, &str), i64> = TableDefinition::new("groups");
/// (rule, state, group, value) → when the value was last seen, ns.
const VALUES: TableDefinition<(&str, &str, &str, &str), i64> = TableDefinition::new("values");

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.redb";

/// A state store problem, naming the file.
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// One change, attributed to its rule.
pub type RuleChange = (String, Change);

/// The database of learned values.
pub struct StateStore {
    db: Database,
    dir: PathBuf,
    path: PathBuf,
}

impl StateStore {
    /// Opens (creating) `dir/state.redb`. Refuses a file that is not a picket state database of
    /// this format, rather than reusing it silently.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| StoreError(format!("state directory {}: {err}", dir.display())))?;
        let path = dir.join(STATE_FILE);
        let fail = |what: &str, err: &dyn fmt::Display| {
            StoreError(format!("state file {}: {what}: {err}", path.display()))
        };
        let db = Database::create(&path).map_err(|err| {
            fail(
                "cannot be opened (not a picket state database, or damaged)",
                &err,
            )
        })?;
        let store = StateStore {
            db,
            dir: dir.to_path_buf(),
            path,
        };
        store.check_format()?;
        Ok(store)
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let path = self.path.display();
        let err = |err: &dyn fmt::Display| StoreError(format!("state file {path}: {err}"));
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
            let format = meta.get("format").map_err(|e| err(&e))?.map(|v| v.value());
            match format {
                Some(STATE_FORMAT) => {}
                Some(other) => {
                    return Err(StoreError(format!(
                        "state file {path} was written in state format {other}, but this picket \
                         reads format {STATE_FORMAT}; move it aside or use another --state directory"
                    )));
                }
                None => {
                    let groups = txn.open_table(GROUPS).map_err(|e| err(&e))?;
                    if !groups.is_empty().map_err(|e| err(&e))? {
                        return Err(StoreError(format!(
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

    /// Reads every rule's state back; the settings are placeholders until the rule is
    /// installed. Returns the states by rule id and the number of values read.
    pub fn load(&self, capacity: usize) -> Result<(HashMap<String, RuleState>, usize), StoreError> {
        let path = self.path.display();
        let err = |e: &dyn fmt::Display| StoreError(format!("state file {path}: {e}"));
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let mut states: HashMap<String, RuleState> = HashMap::new();
        let placeholder = Settings {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        };
        let groups = txn.open_table(GROUPS).map_err(|e| err(&e))?;
        for row in groups.iter().map_err(|e| err(&e))? {
            let (key, started) = row.map_err(|e| err(&e))?;
            let (rule, state, group) = key.value();
            states
                .entry(rule.to_string())
                .or_insert_with(|| RuleState::new(placeholder, capacity))
                .restore_group(state, group, started.value());
        }
        let values = txn.open_table(VALUES).map_err(|e| err(&e))?;
        let mut count = 0;
        for row in values.iter().map_err(|e| err(&e))? {
            let (key, last_seen) = row.map_err(|e| err(&e))?;
            let (rule, state, group, value) = key.value();
            if let Some(rule_state) = states.get_mut(rule) {
                rule_state.restore_value(state, group, value, last_seen.value());
                count += 1;
            }
        }
        Ok((states, count))
    }

    /// Commits `changes` in order, in one transaction.
    pub fn apply(&self, changes: &[RuleChange]) -> Result<(), StoreError> {
        let path = self.path.display();
        let err = |e: &dyn fmt::Display| StoreError(format!("state file {path}: {e}"));
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut groups = txn.open_table(GROUPS).map_err(|e| err(&e))?;
            let mut values = txn.open_table(VALUES).map_err(|e| err(&e))?;
            for (rule, change) in changes {
                let rule = rule.as_str();
                match change {
                    Change::Group {
                        state,
                        group,
                        started_ns,
                    } => {
                        groups
                            .insert((rule, &**state, &**group), started_ns)
                            .map_err(|e| err(&e))?;
                    }
                    Change::Value {
                        state,
                        group,
                        value,
                        last_seen_ns,
                    } => {
                        values
                            .insert((rule, &**state, &**group, &**value), last_seen_ns)
                            .map_err(|e| err(&e))?;
                    }
                    Change::ValueRemoved {
                        state,
                        group,
                        value,
                    } => {
                        values
                            .remove((rule, &**state, &**group, &**value))
                            .map_err(|e| err(&e))?;
                    }
                    Change::GroupRemoved { state, group } => {
                        groups
                            .remove((rule, &**state, &**group))
                            .map_err(|e| err(&e))?;
                        let (state, group) = (&**state, &**group);
                        values
                            .retain_in((rule, state, group, "").., |key, _| {
                                key.0 != rule || key.1 != state || key.2 != group
                            })
                            .map_err(|e| err(&e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| err(&e))
    }
}

/// Changes waiting to be committed. While commits fail they are folded, latest change per key,
/// so a long outage (a full disk) holds at most about one entry per learned value.
#[derive(Default)]
struct Pending {
    changes: Vec<RuleChange>,
}

/// Folding starts past this many pending changes.
const FOLD_AT: usize = 1 << 20;

impl Pending {
    fn push(&mut self, batch: Vec<RuleChange>) {
        self.changes.extend(batch);
        if self.changes.len() > FOLD_AT {
            self.fold();
        }
    }

    /// Keeps the last change per key. A group's removal must still delete values stored
    /// earlier, so removals sort before the upserts that follow them.
    fn fold(&mut self) {
        type Key = (String, Box<str>, Box<str>, Option<Box<str>>);
        let mut latest: HashMap<Key, (usize, bool)> = HashMap::new();
        let mut group_removed: HashMap<(String, Box<str>, Box<str>), usize> = HashMap::new();
        for (index, (rule, change)) in self.changes.iter().enumerate() {
            let (key, removal) = match change {
                Change::Group { state, group, .. } => {
                    ((rule.clone(), state.clone(), group.clone(), None), false)
                }
                Change::Value {
                    state,
                    group,
                    value,
                    ..
                } => (
                    (
                        rule.clone(),
                        state.clone(),
                        group.clone(),
                        Some(value.clone()),
                    ),
                    false,
                ),
                Change::ValueRemoved {
                    state,
                    group,
                    value,
                } => (
                    (
                        rule.clone(),
                        state.clone(),
                        group.clone(),
                        Some(value.clone()),
                    ),
                    true,
                ),
                Change::GroupRemoved { state, group } => {
                    group_removed.insert((rule.clone(), state.clone(), group.clone()), index);
                    continue;
                }
            };
            latest.insert(key, (index, removal));
        }
        let keep: std::collections::HashSet<usize> = latest
            .values()
            .map(|(index, _)| *index)
            .chain(group_removed.values().copied())
            .collect();
        let mut kept: Vec<(usize, RuleChange)> = std::mem::take(&mut self.changes)
            .into_iter()
            .enumerate()
            .filter(|(index, _)| keep.contains(index))
            .collect();
        // Group removals first: what follows them in the log then lands after them.
        kept.sort_by_key(|(index, (_, change))| {
            (!matches!(change, Change::GroupRemoved { .. }), *index)
        });
        self.changes = kept.into_iter().map(|(_, change)| change).collect();
    }
}

/// Commits batches of changes on its own thread.
pub struct Persister {
    tx: Option<mpsc::Sender<Vec<RuleChange>>>,
    thread: Option<JoinHandle<()>>,
}

/// How long to wait before retrying a failed commit.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a persisting failure is logged again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

impl Persister {
    /// Starts the persister for `store`.
    pub fn start(store: StateStore) -> Persister {
        let (tx, rx) = mpsc::channel::<Vec<RuleChange>>();
        let thread = std::thread::Builder::new()
            .name("picket-state".into())
            .spawn(move || persist(store, rx))
            .expect("spawning the state thread");
        Persister {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues changes for the next commit.
    pub fn send(&self, changes: Vec<RuleChange>) {
        if changes.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(changes);
        }
    }

    /// Commits what is queued and stops.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx.take();
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

fn persist(mut store: StateStore, rx: mpsc::Receiver<Vec<RuleChange>>) {
    let mut pending = Pending::default();
    let mut failing_since: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut open = true;
    while open || !pending.changes.is_empty() {
        let wait = if pending.changes.is_empty() {
            Duration::from_secs(3600)
        } else {
            RETRY_AFTER
        };
        if open {
            match rx.recv_timeout(wait) {
                Ok(batch) => pending.push(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            while let Ok(batch) = rx.try_recv() {
                pending.push(batch);
            }
        }
        if pending.changes.is_empty() {
            continue;
        }
        match store.apply(&pending.changes) {
            Ok(()) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        file = %store.path().display(),
                        "state saved again after failing for {:?}",
                        since.elapsed()
                    );
                }
                pending.changes.clear();
            }
            Err(err) => {
                let first = failing_since.is_none();
                failing_since.get_or_insert_with(Instant::now);
                if first || last_report.elapsed() >= REPORT_EVERY {
                    last_report = Instant::now();
                    tracing::error!(
                        pending = pending.changes.len(),
                        "cannot save learned values, keeping them in memory and retrying: {err}"
                    );
                }
                if !open {
                    // Shutting down: one last attempt was made; what could not be saved is
                    // lost with the process, and said so.
                    tracing::error!(
                        pending = pending.changes.len(),
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
                    match StateStore::open(&dir) {
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

/// Takes the journal of every rule's state, for the persister.
pub fn drain(pipeline: &mut crate::pipeline::Pipeline) -> Vec<RuleChange> {
    let mut changes = Vec::new();
    pipeline.for_each_state(|rule, state| {
        changes.extend(
            state
                .take_changes()
                .into_iter()
                .map(|c| (rule.to_string(), c)),
        );
    });
    changes
}

/// Places stored states in the pipeline, journaling on, for their rules to pick up.
pub fn restore(pipeline: &mut crate::pipeline::Pipeline, states: HashMap<String, RuleState>) {
    for (rule, mut state) in states {
        state.enable_journal();
        pipeline.park_state(&rule, state);
    }
}
