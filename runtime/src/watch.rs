//! Watches the rules directory and hands over what changed.
//!
//! Any change in the directory (a file written, renamed into place, removed; a link replaced,
//! as the kubelet does when it swaps a ConfigMap's `..data` link) starts a short quiet period,
//! then a rescan of the whole directory. Rescanning, rather than acting on each event, is what
//! makes every way of updating the directory look the same: an editor's temporary file, a slow
//! copy and a `..data` swap all end in one scan that sees the final content. Compiling happens
//! here, off the event path; the pipeline only swaps in modules that are ready.

use crate::rules_dir::{RuleDirectory, Scan};
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

/// Watches `directory`'s folder; after each change, scans it and passes the result to
/// `deliver`, which returns `false` once nobody listens any more.
pub fn spawn(
    mut directory: RuleDirectory,
    sandbox: Arc<Sandbox>,
    mut deliver: impl FnMut(Scan) -> bool + Send + 'static,
) -> notify::Result<RuleWatcher> {
    let (tx, rx) = mpsc::channel::<()>();
    let kick = tx.clone();
    let mut watcher =
        notify::recommended_watcher(move |result: notify::Result<notify::Event>| match result {
            Ok(event) if !is_change(&event.kind) => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(err) => tracing::warn!("watching the rules directory: {err}"),
        })?;
    watcher.watch(directory.path(), RecursiveMode::NonRecursive)?;
    // Whatever changed between the caller's first scan and this watch starting raised no event:
    // one scan now catches it.
    let _ = kick.send(());
    std::thread::Builder::new()
        .name("picket-rules-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let burst = Instant::now();
                loop {
                    match rx.recv_timeout(QUIET) {
                        Ok(()) if burst.elapsed() < MAX_DELAY => continue,
                        Ok(()) | Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                match directory.scan(&sandbox) {
                    Ok(scan) if scan.updates.is_empty() && scan.errors.is_empty() => {}
                    Ok(scan) => {
                        if !deliver(scan) {
                            return;
                        }
                    }
                    Err(err) => tracing::error!(
                        dir = %directory.path().display(),
                        "cannot list the rules directory; the loaded rules keep running: {err}"
                    ),
                }
            }
        })
        .map_err(|err| notify::Error::generic(&err.to_string()))?;
    Ok(RuleWatcher { _watcher: watcher })
}
