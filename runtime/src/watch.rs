//! Watches the rules directory and hands over what changed.
//!
//! Any change in the directory (a file written, renamed into place, removed; a link replaced,
//! as the kubelet does when it swaps a ConfigMap's `..data` link) starts a short quiet period,
//! then a rescan of the whole directory. Rescanning, rather than acting on each event, is what
//! makes every way of updating the directory look the same: an editor's temporary file, a slow
//! copy and a `..data` swap all end in one scan that sees the final content. Compiling happens
//! on worker threads ([`crate::compile`]), off the event path and off this thread: each module
//! is handed over as soon as it is ready, so a slow one delays only itself, and the watch keeps
//! answering changes meanwhile. The pipeline only swaps in modules that are ready. A refusal is
//! reported only once its file has stayed unchanged for [`SETTLE`]: a module still being
//! written is not an error.

use crate::compile::{self, Deadlines, Progress, over_budget};
use crate::rules_dir::{RuleDirectory, SETTLE, Scan};
use crate::sandbox::Sandbox;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long the directory must stay quiet before it is rescanned.
const QUIET: Duration = Duration::from_millis(20);
/// Longest a burst of changes can delay a rescan.
const MAX_DELAY: Duration = Duration::from_millis(80);

/// Keeps the watch alive; dropping it stops the watcher thread.
pub struct RuleWatcher {
    _watcher: RecommendedWatcher,
}

/// Whether an event can mean the directory's content changed. Opening or reading a file cannot,
/// and the scan itself reads every module: counting those would rescan forever.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

enum Message {
    /// The directory may have changed.
    Changed,
    /// A compile worker's progress.
    Compile(Progress),
}

/// Watches `directory`'s folder; after each change, surveys it, compiles what is new on worker
/// threads and passes each result to `deliver` as soon as it is ready (a slow module delays
/// only itself). `deliver` returns `false` once nobody listens any more.
pub fn spawn(
    directory: RuleDirectory,
    sandbox: Arc<Sandbox>,
    mut deliver: impl FnMut(Scan) -> bool + Send + 'static,
) -> notify::Result<RuleWatcher> {
    let mut directory = directory.settle_refusals(SETTLE);
    let (tx, rx) = mpsc::channel::<Message>();
    let kick = tx.clone();
    let notify_tx = tx.clone();
    let mut watcher =
        notify::recommended_watcher(move |result: notify::Result<notify::Event>| match result {
            Ok(event) if !is_change(&event.kind) => {}
            Ok(_) => {
                let _ = notify_tx.send(Message::Changed);
            }
            Err(err) => tracing::warn!("watching the rules directory: {err}"),
        })?;
    watcher.watch(directory.path(), RecursiveMode::NonRecursive)?;
    // Whatever changed between the caller's first scan and this watch starting raised no event:
    // one scan now catches it.
    let _ = kick.send(Message::Changed);
    let budget = sandbox.limits().compile_timeout;
    let max_bytes = sandbox.limits().max_module_bytes;
    std::thread::Builder::new()
        .name("picket-rules-watch".into())
        .spawn(move || {
            let mut deadlines = Deadlines::default();
            // A burst of changes: when it started, and the last change in it.
            let mut burst: Option<(Instant, Instant)> = None;
            loop {
                // Wake at the end of a quiet period, or at the next compile deadline.
                let survey_in = burst.map(|(first, last)| {
                    QUIET
                        .saturating_sub(last.elapsed())
                        .min(MAX_DELAY.saturating_sub(first.elapsed()))
                });
                let wait = [survey_in, deadlines.next(), directory.next_settle()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(Duration::from_secs(3600));
                let mut scan = Scan::default();
                match rx.recv_timeout(wait) {
                    Ok(Message::Changed) => {
                        let now = Instant::now();
                        burst = Some((burst.map_or(now, |(first, _)| first), now));
                    }
                    Ok(Message::Compile(Progress::Started { path, hash })) => {
                        tracing::info!(module = %path.display(), "compiling rule module");
                        deadlines.started(path, hash, budget);
                    }
                    Ok(Message::Compile(Progress::Done(compiled))) => {
                        deadlines.finished(&compiled.path, &compiled.hash);
                        scan = directory.accept(vec![compiled]);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                scan.errors.extend(directory.settled().errors);
                for (path, hash) in deadlines.expired() {
                    let late = directory.give_up(&path, hash, over_budget(budget));
                    scan.errors.extend(late.errors);
                }
                if let Some((first, last)) = burst
                    && (last.elapsed() >= QUIET || first.elapsed() >= MAX_DELAY)
                {
                    burst = None;
                    match directory.survey(max_bytes) {
                        Ok(survey) => {
                            scan.updates.extend(survey.scan.updates);
                            scan.errors.extend(survey.scan.errors);
                            for job in survey.jobs {
                                compile::spawn(&sandbox, job, tx.clone(), Message::Compile);
                            }
                        }
                        Err(err) => tracing::error!(
                            dir = %directory.path().display(),
                            "cannot list the rules directory; the loaded rules keep running: {err}"
                        ),
                    }
                }
                if !scan.is_empty() && !deliver(scan) {
                    return;
                }
            }
        })
        .map_err(|err| notify::Error::generic(&err.to_string()))?;
    Ok(RuleWatcher { _watcher: watcher })
}
