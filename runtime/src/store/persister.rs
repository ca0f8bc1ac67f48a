//! The thread that commits changes, and its retry loop.

use super::StateStore;
use super::pending::{COMMIT_BYTES, Pending};
use super::recovery::guarded;
use crate::state::RuleChange;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
