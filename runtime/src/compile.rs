//! Compiling rule modules off the path of everything else: each module on its own worker
//! thread, a few at a time, each with a time budget.
//!
//! wasmtime cannot interrupt a compile, so the budget is enforced by the waiting side: past it,
//! the module is refused and the compile's result, when it comes, is thrown away. The worker
//! itself runs to completion (the module size limit bounds how long that can be).

use crate::sandbox::{LoadError, LoadedModule, Sandbox};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A module to compile: its file, content and blake3 hash.
pub struct Job {
    /// The module file.
    pub path: PathBuf,
    /// blake3 of `bytes`.
    pub hash: blake3::Hash,
    /// The content read.
    pub bytes: Vec<u8>,
}

/// A finished compile.
pub struct Compiled {
    /// The module file.
    pub path: PathBuf,
    /// blake3 of the content compiled.
    pub hash: blake3::Hash,
    /// The loaded module, or why it was refused.
    pub result: Result<LoadedModule, LoadError>,
}

/// What a worker reports.
pub enum Progress {
    /// Compiling started (the budget counts from here; before, the job waited for a worker).
    Started {
        /// The module file.
        path: PathBuf,
        /// Its content's hash.
        hash: blake3::Hash,
    },
    /// Compiling finished.
    Done(Compiled),
}

/// Compiles at most this many modules at once, so that a folder of huge modules cannot take
/// every core and all memory.
fn max_parallel() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// Counts compiles under way.
static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct Permit;

impl Permit {
    fn acquire() -> Permit {
        let (count, freed) = &RUNNING;
        let mut running = count.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= max_parallel() {
            running = freed.wait(running).unwrap_or_else(|p| p.into_inner());
        }
        *running += 1;
        Permit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let (count, freed) = &RUNNING;
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// Starts compiling `job` on a worker thread; progress goes to `tx`, wrapped by `wrap`.
pub fn spawn<M: Send + 'static>(
    sandbox: &Arc<Sandbox>,
    job: Job,
    tx: mpsc::Sender<M>,
    wrap: fn(Progress) -> M,
) {
    let sandbox = Arc::clone(sandbox);
    let path = job.path.clone();
    let spawned = std::thread::Builder::new()
        .name("picket-compile".into())
        .spawn(move || {
            let _permit = Permit::acquire();
            let (path, hash) = (job.path, job.hash);
            let started = Progress::Started {
                path: path.clone(),
                hash,
            };
            if tx.send(wrap(started)).is_err() {
                return;
            }
            let result = sandbox.load(&path.display().to_string(), &job.bytes);
            let _ = tx.send(wrap(Progress::Done(Compiled { path, hash, result })));
        });
    if let Err(err) = spawned {
        tracing::error!(module = %path.display(), "cannot start a compile worker: {err}");
    }
}

/// The refusal of a module whose compile ran past `budget`.
pub fn over_budget(budget: Duration) -> String {
    format!(
        "compiling took longer than the {budget:?} budget (--compile-timeout); refused. A smaller \
         module, or a longer budget, loads"
    )
}

/// Deadlines of the compiles under way, to give up on those past their budget.
#[derive(Default)]
pub struct Deadlines {
    running: Vec<(PathBuf, blake3::Hash, Instant)>,
}

impl Deadlines {
    /// A compile started now.
    pub fn started(&mut self, path: PathBuf, hash: blake3::Hash, budget: Duration) {
        let deadline = Instant::now().checked_add(budget);
        let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 30));
        self.running.push((path, hash, deadline));
    }

    /// A compile finished.
    pub fn finished(&mut self, path: &Path, hash: &blake3::Hash) {
        self.running.retain(|(p, h, _)| p != path || h != hash);
    }

    /// How long until the next deadline, if any compile is under way.
    pub fn next(&self) -> Option<Duration> {
        let now = Instant::now();
        self.running
            .iter()
            .map(|(_, _, at)| at.saturating_duration_since(now))
            .min()
    }

    /// The compiles past their deadline, removed.
    pub fn expired(&mut self) -> Vec<(PathBuf, blake3::Hash)> {
        let now = Instant::now();
        let (late, running) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(_, _, at)| *at <= now);
        self.running = running;
        late.into_iter().map(|(p, h, _)| (p, h)).collect()
    }
}

/// Compiles every job in parallel and waits for all of them, each up to the sandbox's compile
/// budget; one past it comes back refused.
pub fn compile_all(sandbox: &Arc<Sandbox>, jobs: Vec<Job>) -> Vec<Compiled> {
    let budget = sandbox.limits().compile_timeout;
    let (tx, rx) = mpsc::channel();
    let mut waiting = jobs.len();
    for job in jobs {
        spawn(sandbox, job, tx.clone(), |p| p);
    }
    drop(tx);
    let mut deadlines = Deadlines::default();
    let mut results = Vec::new();
    while waiting > 0 {
        let wait = deadlines.next().unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(wait) {
            Ok(Progress::Started { path, hash }) => deadlines.started(path, hash, budget),
            Ok(Progress::Done(compiled)) => {
                deadlines.finished(&compiled.path, &compiled.hash);
                results.push(compiled);
                waiting -= 1;
            }
            Err(RecvTimeoutError::Timeout) => {
                for (path, hash) in deadlines.expired() {
                    let source = path.display().to_string();
                    results.push(Compiled {
                        path,
                        hash,
                        result: Err(LoadError {
                            source,
                            message: over_budget(budget),
                        }),
                    });
                    waiting -= 1;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    results
}
