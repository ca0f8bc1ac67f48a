//! Finds, on the node, the files the rules watch, so that the kernel knows them by what they are
//! (device and inode) and not only by their name.
//!
//! A rule's subscription says which basenames it wants under which path prefixes (for the bundled
//! rules: `token` under `/run/secrets/kubernetes.io/serviceaccount/`, its `/var/run` spelling and
//! the kubelet's `/var/lib/kubelet/pods/`, where every pod's projected volumes live). Every
//! regular file with such a basename under such a prefix is a file the rule would see by its
//! path; its identity lets the agent recognize it through a hard link under another name, a bind
//! mount of the file or of its directory elsewhere, or a chrooted reader's shortened path, and
//! report the path it was found at as the event's `file.canonical_path`.
//!
//! The kubelet replaces a projected volume's files on every rotation (a new timestamped
//! directory, then an atomic swap of the `..data` link), and pods come and go. A watcher thread
//! rescans after any change in the directories that lead to a found file or sit in the top levels
//! of a prefix (inotify, after a short quiet period), and every [`RESCAN_EVERY`] in any case.
//! A file that disappears stays known for [`RETIRED_KEEP`]: a hard link made to it before the
//! rotation still reaches the old token, which stays valid until it expires.

use crate::pipeline::Pipeline;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use picket_probes::{FileId, file_id_of};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Deepest file looked for below a prefix: the kubelet's
/// `pods/<uid>/volumes/<plugin>/<volume>/<..timestamp>/<file>` is 6.
const MAX_DEPTH: usize = 6;
/// Directories this close to a prefix are watched for changes even when nothing was found in
/// them yet: where a new pod or volume appears.
const WATCH_DEPTH: usize = 3;
/// Most directory entries one scan reads, so that a huge tree under a prefix (an `emptyDir`
/// full of files) cannot stall discovery.
const MAX_ENTRIES: usize = 200_000;
/// Rescan this often even without a change notification (one may be missed: a directory that
/// appeared and filled between two scans, or a watch limit reached).
pub const RESCAN_EVERY: Duration = Duration::from_secs(10);
/// How long a file that disappeared stays known.
pub const RETIRED_KEEP: Duration = Duration::from_secs(24 * 3600);
/// Quiet period after a change notification before the rescan.
const QUIET: Duration = Duration::from_millis(20);
/// Longest a burst of changes delays a rescan.
const MAX_DELAY: Duration = Duration::from_millis(100);
/// Most files known at once (the kernel map's size).
const MAX_FILES: usize = picket_probes::Probes::MAX_IDENTITIES;

/// What to look for: the basenames wanted under each path prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    by_prefix: BTreeMap<PathBuf, BTreeSet<String>>,
}

impl Targets {
    /// What the installed, not quarantined rules subscribe to. A rule without path prefixes
    /// (any path) contributes nothing: there is no bounded place to look for its files.
    pub fn of_rules(pipeline: &Pipeline) -> Targets {
        let mut targets = Targets::default();
        for rule in pipeline.rules().filter(|r| r.quarantined.is_none()) {
            let subscription = &rule.manifest.subscription;
            for prefix in &subscription.path_prefixes {
                targets.add(prefix, subscription.basenames.iter().cloned());
            }
        }
        targets
    }

    /// Looks for files named `basenames` (all files when empty) under `prefix`.
    pub fn add(&mut self, prefix: &str, basenames: impl IntoIterator<Item = String>) {
        // A prefix with `*` segments (`/home/*/.aws/`) is looked for from its literal part.
        let prefix = prefix.find("/*/").map_or(prefix, |at| &prefix[..=at]);
        // A prefix ending inside a name (`/run/sec`) is looked for from its directory.
        let dir = match prefix.rfind('/') {
            Some(end) => &prefix[..=end],
            None => return,
        };
        self.by_prefix
            .entry(PathBuf::from(dir))
            .or_default()
            .extend(basenames);
    }

    /// Whether there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// Files found: each identity with the path it was found at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    files: BTreeMap<FileId, String>,
    /// Entries read; the scan stopped early when this reached [`MAX_ENTRIES`].
    entries: usize,
}

impl Found {
    /// The identities, for the kernel.
    pub fn ids(&self) -> BTreeSet<FileId> {
        self.files.keys().copied().collect()
    }

    /// Where the file `id` was found.
    pub fn path_of(&self, id: &FileId) -> Option<&str> {
        self.files.get(id).map(String::as_str)
    }

    /// Each identity with its path.
    pub fn iter(&self) -> impl Iterator<Item = (&FileId, &str)> {
        self.files.iter().map(|(id, path)| (id, path.as_str()))
    }

    /// How many files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// One scan: every regular file with a wanted basename under each prefix, without following
/// symlinks (each file is found once, at its real place: the kubelet's `token` and `..data`
/// links are skipped and the file in the timestamped directory is found). Prefixes are resolved
/// first, so `/var/run/...` and `/run/...` are one place and paths come out without links.
/// Also returns the directories to watch.
pub fn scan(targets: &Targets) -> (Found, BTreeSet<PathBuf>) {
    let mut found = Found::default();
    let mut watch = BTreeSet::new();
    let mut resolved: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for (prefix, names) in &targets.by_prefix {
        match std::fs::canonicalize(prefix) {
            Ok(real) => resolved
                .entry(real)
                .or_default()
                .extend(names.iter().cloned()),
            Err(_) => {
                // Not there (yet): watch the nearest existing ancestor to see it appear.
                if let Some(parent) = prefix.ancestors().skip(1).find(|p| p.is_dir()) {
                    watch.insert(parent.to_path_buf());
                }
            }
        }
    }
    for (prefix, names) in &resolved {
        walk(prefix, 0, names, &mut found, &mut watch);
    }
    if found.entries >= MAX_ENTRIES {
        tracing::warn!(
            entries = found.entries,
            "file discovery stopped early: too many entries under the rules' path prefixes"
        );
    }
    (found, watch)
}

fn walk(
    dir: &Path,
    depth: usize,
    names: &BTreeSet<String>,
    found: &mut Found,
    watch: &mut BTreeSet<PathBuf>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    if depth <= WATCH_DEPTH {
        watch.insert(dir.to_path_buf());
    }
    for entry in entries.flatten() {
        found.entries += 1;
        if found.entries >= MAX_ENTRIES {
            return;
        }
        // DirEntry::metadata does not follow symlinks.
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let path = entry.path();
        if metadata.is_dir() {
            if depth + 1 < MAX_DEPTH {
                walk(&path, depth + 1, names, found, watch);
            }
        } else if metadata.is_file()
            && (names.is_empty() || names.contains(&*entry.file_name().to_string_lossy()))
            && found.files.len() < MAX_FILES
        {
            // The directory that holds the file and the one above it (a projected volume, where
            // the kubelet swaps `..data`) tell of its rotation.
            for ancestor in path.ancestors().skip(1).take(2) {
                watch.insert(ancestor.to_path_buf());
            }
            found
                .files
                .entry(file_id_of(&metadata))
                .or_insert_with(|| path.to_string_lossy().into_owned());
        }
    }
}

/// Keeps what a scan found together with the files that disappeared less than
/// [`RETIRED_KEEP`] ago.
#[derive(Default)]
struct Known {
    current: Found,
    retired: BTreeMap<FileId, (String, Instant)>,
}

impl Known {
    /// Takes a new scan; returns what to publish, or `None` when nothing changed.
    fn update(&mut self, scan: Found, now: Instant) -> Option<Found> {
        let mut changed = false;
        for (id, path) in &self.current.files {
            if !scan.files.contains_key(id) {
                self.retired.insert(*id, (path.clone(), now));
                changed = true;
            }
        }
        let before = self.retired.len();
        self.retired.retain(|id, (_, since)| {
            !scan.files.contains_key(id) && now.duration_since(*since) < RETIRED_KEEP
        });
        // Over capacity, the longest retired go first.
        while scan.files.len() + self.retired.len() > MAX_FILES {
            let oldest = self
                .retired
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => self.retired.remove(&id),
                None => break,
            };
        }
        changed |= self.retired.len() != before || scan.files != self.current.files;
        self.current = scan;
        changed.then(|| self.published())
    }

    fn published(&self) -> Found {
        let mut files = self.current.files.clone();
        for (id, (path, _)) in &self.retired {
            files.entry(*id).or_insert_with(|| path.clone());
        }
        Found {
            files,
            entries: self.current.entries,
        }
    }
}

/// The discovery thread's state.
struct Scanner {
    targets: Targets,
    known: Known,
    watcher: Option<RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
}

impl Scanner {
    /// Scans, watches what the scan says to, and returns what to publish if anything changed.
    fn rescan(&mut self) -> Option<Found> {
        let started = Instant::now();
        let (found, watch) = scan(&self.targets);
        let elapsed = started.elapsed();
        if let Some(watcher) = self.watcher.as_mut() {
            rewatch(watcher, &mut self.watched, watch);
        }
        let entries = found.entries;
        let published = self.known.update(found, Instant::now())?;
        tracing::debug!(
            files = self.known.current.len(),
            retired = self.known.retired.len(),
            entries,
            "files to watch by identity changed (scan took {elapsed:?})"
        );
        Some(published)
    }
}

enum Wake {
    Changed,
    Targets(Targets),
    /// The [`Discovery`] was dropped. (The channel alone would never close: the watcher, which
    /// the thread owns, holds a sender.)
    Stop,
}

/// The discovery thread. Dropping it stops the thread.
pub struct Discovery {
    wake: mpsc::Sender<Wake>,
}

impl Discovery {
    /// Scans for `targets` once and returns what it found, then keeps looking in a thread and
    /// calls `deliver` with the files known after each later scan that changed them (the files
    /// found now plus those retired recently), until it returns `false`.
    pub fn spawn(
        targets: Targets,
        mut deliver: impl FnMut(Found) -> bool + Send + 'static,
    ) -> std::io::Result<(Discovery, Found)> {
        let (wake, rx) = mpsc::channel::<Wake>();
        let kick = wake.clone();
        let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            match result {
                // Reads (of the tokens above all) change nothing.
                Ok(event)
                    if matches!(event.kind, EventKind::Access(kind)
                        if kind != AccessKind::Close(AccessMode::Write)) => {}
                Ok(_) => {
                    let _ = kick.send(Wake::Changed);
                }
                Err(err) => tracing::debug!("file discovery watch: {err}"),
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(
                    "file discovery cannot watch for changes, rescanning every {RESCAN_EVERY:?}: {err}"
                );
                None
            }
        };
        let mut scanner = Scanner {
            targets,
            known: Known::default(),
            watcher,
            watched: BTreeSet::new(),
        };
        scanner.rescan();
        let first = scanner.known.published();
        std::thread::Builder::new()
            .name("picket-discovery".into())
            .spawn(move || {
                loop {
                    match wait(&rx) {
                        Some(Some(new)) => {
                            // Files of rules that left are no longer wanted, even recent ones.
                            scanner.targets = new;
                            scanner.known = Known::default();
                        }
                        Some(None) => {}
                        None => return,
                    }
                    if let Some(published) = scanner.rescan()
                        && !deliver(published)
                    {
                        return;
                    }
                }
            })?;
        Ok((Discovery { wake }, first))
    }

    /// Looks for other targets from now on (the rules changed).
    pub fn set_targets(&self, targets: Targets) {
        let _ = self.wake.send(Wake::Targets(targets));
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.wake.send(Wake::Stop);
    }
}

/// Waits for a reason to rescan: a change (after its burst settles), new targets, or
/// [`RESCAN_EVERY`]. `None` once the [`Discovery`] is dropped.
fn wait(rx: &mpsc::Receiver<Wake>) -> Option<Option<Targets>> {
    let mut targets = None;
    match rx.recv_timeout(RESCAN_EVERY) {
        Ok(Wake::Targets(new)) => targets = Some(new),
        Ok(Wake::Changed) | Err(RecvTimeoutError::Timeout) => {}
        Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return None,
    }
    let burst = Instant::now();
    loop {
        match rx.recv_timeout(QUIET) {
            Ok(Wake::Targets(new)) => targets = Some(new),
            Ok(Wake::Changed) if burst.elapsed() < MAX_DELAY => {}
            Ok(Wake::Changed) | Err(RecvTimeoutError::Timeout) => return Some(targets),
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Watches exactly `want` from now on.
fn rewatch(
    watcher: &mut RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    want: BTreeSet<PathBuf>,
) {
    for gone in watched.difference(&want) {
        let _ = watcher.unwatch(gone);
    }
    let mut now = BTreeSet::new();
    for dir in want {
        if watched.contains(&dir) || watcher.watch(&dir, RecursiveMode::NonRecursive).is_ok() {
            now.insert(dir);
        }
    }
    *watched = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubelet-like tree: a pod's projected volume with a timestamped directory, `..data` and
    /// per-file links, plus look-alikes.
    fn kubelet(root: &Path) -> PathBuf {
        let volume = root.join("pods/p1/volumes/kubernetes.io~projected/kube-api-access-x");
        let stamp = volume.join("..2026_11_22_10_00_00.1");
        std::fs::create_dir_all(&stamp).unwrap();
        for name in ["token", "ca.crt"] {
            std::fs::write(stamp.join(name), name).unwrap();
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.join(name)).unwrap();
        }
        std::os::unix::fs::symlink("..2026_11_22_10_00_00.1", volume.join("..data")).unwrap();
        // Too deep to be a projected file.
        let deep = root.join("pods/p1/volumes/kubernetes.io~empty-dir/v/a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("token"), "x").unwrap();
        stamp.join("token")
    }

    fn targets(prefix: &Path) -> Targets {
        let mut targets = Targets::default();
        targets.add(&format!("{}/", prefix.display()), ["token".to_string()]);
        targets
    }

    #[test]
    fn finds_each_file_once_at_its_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let token = kubelet(dir.path());
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (found, watch) = scan(&targets(&root.join("pods")));
        let real = std::fs::canonicalize(&token).unwrap();
        let id = file_id_of(&std::fs::metadata(&token).unwrap());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found.path_of(&id), Some(real.to_str().unwrap()));
        // The volume (where `..data` is swapped) and the top levels are watched.
        assert!(watch.contains(real.parent().unwrap().parent().unwrap()));
        assert!(watch.contains(&root.join("pods")));
        // A prefix spelled through a link is the same place.
        std::os::unix::fs::symlink(root.join("pods"), root.join("link")).unwrap();
        let (through_link, _) = scan(&targets(&root.join("link")));
        assert_eq!(through_link.files, found.files);
    }

    #[test]
    fn targets_come_from_prefixes_and_a_missing_prefix_watches_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let mut targets = Targets::default();
        targets.add(
            &format!("{}/later/secrets/", dir.path().display()),
            ["token".to_string()],
        );
        targets.add("relative", ["x".to_string()]);
        let (found, watch) = scan(&targets);
        assert!(found.is_empty());
        assert!(watch.contains(dir.path()), "{watch:?}");
    }

    #[test]
    fn the_thread_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let token = kubelet(dir.path());
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (tx, rx) = mpsc::channel();
        let (discovery, first) = Discovery::spawn(targets(&root.join("pods")), move |found| {
            tx.send(found).is_ok()
        })
        .unwrap();
        let old = file_id_of(&std::fs::metadata(&token).unwrap());
        assert_eq!(first.ids(), BTreeSet::from([old]));
        // The kubelet's rotation: a new timestamped directory, then the `..data` swap.
        let volume = token.parent().unwrap().parent().unwrap();
        let stamp = volume.join("..2026_11_22_11_00_00.2");
        std::fs::create_dir(&stamp).unwrap();
        std::fs::write(stamp.join("token"), "new").unwrap();
        std::os::unix::fs::symlink("..2026_11_22_11_00_00.2", volume.join("..data_tmp")).unwrap();
        std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
        std::fs::remove_dir_all(token.parent().unwrap()).unwrap();
        let new = file_id_of(&std::fs::metadata(stamp.join("token")).unwrap());
        let rotated = loop {
            // The timeout only guards against a hang.
            let found = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            if found.path_of(&new).is_some() {
                break found;
            }
        };
        // The old token stays known (a link to it would still read it).
        assert_eq!(rotated.ids(), BTreeSet::from([old, new]));
        drop(discovery);
    }

    #[test]
    fn a_rotated_file_stays_known_for_a_while() {
        let t0 = Instant::now();
        let a = FileId { dev: 1, ino: 10 };
        let b = FileId { dev: 1, ino: 11 };
        let found = |files: &[(FileId, &str)]| Found {
            files: files.iter().map(|(id, p)| (*id, p.to_string())).collect(),
            entries: 0,
        };
        let mut known = Known::default();
        let first = known.update(found(&[(a, "/v/..1/token")]), t0).unwrap();
        assert_eq!(first.ids(), BTreeSet::from([a]));
        assert!(known.update(found(&[(a, "/v/..1/token")]), t0).is_none());
        let rotated = known.update(found(&[(b, "/v/..2/token")]), t0).unwrap();
        assert_eq!(rotated.ids(), BTreeSet::from([a, b]));
        assert_eq!(rotated.path_of(&a), Some("/v/..1/token"));
        let later = t0 + RETIRED_KEEP + Duration::from_secs(1);
        let expired = known.update(found(&[(b, "/v/..2/token")]), later).unwrap();
        assert_eq!(expired.ids(), BTreeSet::from([b]));
    }
}
