//! The thread that commits changes, and its retry loop; and what happens if that thread dies.

use super::pending::{COMMIT_BYTES, Pending};
use super::recovery::{guarded, panic_message};
use super::{StateStore, StoreError};
use crate::state::{Change, RuleChange, Settings};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the event loop and the persister thread share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Values added (learned) that are committed, since the start, whichever thread did it.
    added_committed: std::sync::atomic::AtomicU64,
    /// Makes the thread panic on its next batch, to test what follows.
    #[cfg(test)]
    panic_next: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Queue {
    pending: Pending,
    /// Rules' settings to record.
    settings: Vec<(String, Settings)>,
    closed: bool,
}

/// Commits changes on its own thread. Changes handed over wait in one folded queue, not a
/// channel of batches, so that a store slower than the rules learn costs bounded memory.
///
/// Should the thread die (a panic outside the database calls, which are guarded), nothing is
/// lost and saving does not stop silently: the next [`Persister::send`] or
/// [`Persister::finish`] finds it dead, logs an error naming the state file, counts it
/// (`state_persister_restarts`), and starts a new thread on the file reopened; the batch it was
/// committing goes back to the queue as it unwinds.
pub struct Persister {
    shared: Arc<Shared>,
    /// `None` after the thread died and could not be started again (retried on the next send).
    thread: Option<JoinHandle<()>>,
    /// The state directory, to reopen the file for a new thread.
    dir: PathBuf,
    /// The state file, for messages.
    file: PathBuf,
    restarts: u64,
}

/// How long to wait before retrying a failed commit.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a persisting failure is logged again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

impl Persister {
    /// Starts the persister for `store`; fails if its thread cannot be started.
    pub fn start(store: StateStore) -> Result<Persister, StoreError> {
        let shared = Arc::new(Shared::default());
        let dir = store.dir.clone();
        let file = store.path().to_path_buf();
        let thread = spawn(store, &shared)?;
        Ok(Persister {
            shared,
            thread: Some(thread),
            dir,
            file,
            restarts: 0,
        })
    }

    /// Queues changes for the next commit, first starting the thread again if it died.
    pub fn send(&mut self, changes: Vec<RuleChange>) {
        self.revive();
        if changes.is_empty() {
            return;
        }
        lock(&self.shared.queue).pending.push(changes);
        self.shared.wake.notify_one();
    }

    /// Queues the settings a rule runs with, to record.
    pub fn send_settings(&mut self, rule: &str, settings: Settings) {
        lock(&self.shared.queue)
            .settings
            .push((rule.to_string(), settings));
        self.shared.wake.notify_one();
    }

    /// Commits what is queued and stops.
    pub fn finish(mut self) {
        self.revive();
        self.stop();
    }

    /// Times the thread was found dead and started again.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Finds a thread that died before it was asked to stop, reports it, and starts another on
    /// the reopened file. If that fails too, it is reported and tried again on the next call.
    fn revive(&mut self) {
        if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let file = self.file.display();
        if let Some(dead) = self.thread.take() {
            let why = match dead.join() {
                Err(panic) => panic_message(&*panic),
                Ok(()) => "it stopped before it was asked to".into(),
            };
            crate::metrics::global().state_persister_restarted();
            self.restarts += 1;
            tracing::error!(
                file = %file,
                "the thread saving learned values died ({why}); starting it again on the same \
                 file, with nothing queued lost"
            );
        }
        let reopened = guarded(|| StateStore::open(&self.dir));
        match reopened.and_then(|store| spawn(store, &self.shared)) {
            Ok(thread) => self.thread = Some(thread),
            Err(err) => tracing::error!(
                file = %file,
                "cannot start saving learned values again, keeping them in memory and retrying \
                 on the next save: {err}"
            ),
        }
    }

    fn stop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
        {
            tracing::error!(
                file = %self.file.display(),
                pending = lock(&self.shared.queue).pending.changes.len(),
                "the thread saving learned values died while stopping ({}); what it had not \
                 saved is lost with the process",
                panic_message(&*panic)
            );
        }
    }
}

/// Starts the thread that commits what `shared` queues to `store`.
fn spawn(store: StateStore, shared: &Arc<Shared>) -> Result<JoinHandle<()>, StoreError> {
    let file = store.path().display().to_string();
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("picket-state".into())
        .spawn(move || persist(store, &shared))
        .map_err(|err| {
            StoreError::new(format!(
                "state file {file}: cannot start the thread that saves it: {err}"
            ))
        })
}

/// A batch being committed: should the thread unwind while it holds one, the batch goes back to
/// the front of the queue for the next thread.
struct InFlight<'a> {
    shared: &'a Shared,
    batch: Option<Vec<RuleChange>>,
}

impl InFlight<'_> {
    fn batch(&self) -> &[RuleChange] {
        self.batch.as_deref().unwrap_or_default()
    }

    /// Hands the batch back to the queue now (a failed commit, to be retried).
    fn put_back(mut self) {
        self.restore();
    }

    /// The batch was committed.
    fn done(mut self) {
        self.batch = None;
    }

    fn restore(&mut self) {
        if let Some(batch) = self.batch.take() {
            lock(&self.shared.queue).pending.put_back(batch);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.restore();
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
            while queue.pending.changes.is_empty() && queue.settings.is_empty() && !queue.closed {
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            let settings = std::mem::take(&mut queue.settings);
            if !settings.is_empty() {
                drop(queue);
                if let Err(err) = guarded(|| store.set_settings(&settings)) {
                    tracing::warn!("cannot record the rules' settings: {err}");
                }
                queue = lock(&shared.queue);
            }
            if queue.pending.changes.is_empty() {
                if queue.closed {
                    return;
                }
                continue;
            }
            (queue.pending.take(COMMIT_BYTES), queue.closed)
        };
        let batch = InFlight {
            shared,
            batch: Some(batch),
        };
        #[cfg(test)]
        if shared
            .panic_next
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            panic!("made to panic by a test");
        }
        let saved = guarded(|| store.apply(batch.batch()));
        crate::metrics::global().state_saved(saved.is_ok());
        match saved {
            Ok(()) => {
                // What is committed, in order, for whoever must know a value is on disk (the
                // kill -9 test waits for this rather than for a time).
                let added = batch
                    .batch()
                    .iter()
                    .filter(|(_, change)| matches!(change, Change::Value { fresh: true, .. }))
                    .count() as u64;
                let total = shared
                    .added_committed
                    .fetch_add(added, std::sync::atomic::Ordering::Relaxed)
                    + added;
                tracing::debug!(
                    changes = batch.batch().len(),
                    added_total = total,
                    "learned values committed"
                );
                batch.done();
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        file = %store.path().display(),
                        "state saved again after failing for {:?}",
                        since.elapsed()
                    );
                }
            }
            Err(err) => {
                let waiting = batch.batch().len();
                batch.put_back();
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
    use crate::state::{Settings, Verdict};

    fn learned(value: &str) -> Vec<RuleChange> {
        let place = |change| ("rule".to_string(), change);
        vec![
            place(Change::Group {
                state: "s".into(),
                group: "g".into(),
                started_ns: 1,
            }),
            place(Change::Value {
                state: "s".into(),
                group: "g".into(),
                value: value.into(),
                last_seen_ns: 1,
                fresh: true,
            }),
        ]
    }

    #[test]
    fn a_dead_persister_is_restarted_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut persister = Persister::start(StateStore::open(dir.path()).unwrap()).unwrap();
        persister
            .shared
            .panic_next
            .store(true, std::sync::atomic::Ordering::Relaxed);
        persister.send(learned("/before"));
        // Wait for the death itself (not for a time): the thread ends by panicking.
        while !persister.thread.as_ref().unwrap().is_finished() {
            std::thread::yield_now();
        }
        assert_eq!(persister.restarts(), 0);
        persister.send(learned("/after"));
        assert_eq!(persister.restarts(), 1, "the dead thread was not noticed");
        persister.finish();

        let store = StateStore::open(dir.path()).unwrap();
        let (mut states, values) = store.load(100).unwrap();
        assert_eq!(values, 2, "the batch the thread died on was lost");
        let state = states.get_mut("rule").unwrap();
        state.set_settings(Settings {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        });
        for value in ["/before", "/after"] {
            assert_eq!(state.check(2, "s", "g", value).unwrap(), Verdict::Known);
        }
    }
}
