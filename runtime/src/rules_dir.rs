//! The rules directory: which modules it holds, and what changed since the last look.
//!
//! A survey lists every `*.wasm` entry (following links, as a Kubernetes ConfigMap volume's
//! entries are links through `..data`), reads each with [`safe_file::read_regular`] (an entry
//! swapped for a FIFO, a device or a directory is refused without blocking), hashes it with
//! blake3, and compares with what is installed from that entry. Entries that are not regular
//! files are skipped and logged once each, saying why. New or changed content is compiled, each
//! module on its own worker thread ([`crate::compile`]), and checked before it is offered for
//! installation, so a broken module never replaces a working one and a slow one delays only
//! itself; an entry that disappeared uninstalls its rule. The pipeline applies the resulting
//! updates between two events.
//!
//! Rule ids are unique. A module claiming the id of a running rule never replaces it (only a new
//! version of the same file does). At start, modules that claim one id are all refused: which
//! one would win must not depend on file names, on compile speed or on which node looks, and
//! none may take over the learned state of the id (it stays kept for the id). The refusal is
//! logged as an error naming every file; once only one is left, it loads. While running, each
//! module is accepted when its compile finishes, so of two new files claiming one id the first
//! ready runs and the other is refused as claiming a running rule's id.
//!
//! While the directory is watched, a module is judged only once it is complete: a refusal (a
//! module that does not compile, or whose signature does not match yet) is held back until the
//! file has stayed unchanged (size and modification time) for [`SETTLE`], and reported then,
//! once. A write in progress (a slow `cp`, a module copied before its signature) is not an
//! error: the next change rescans it, and a module that stays broken is reported. Writing to a
//! temporary name and renaming into place (docs/rule-guide.md) avoids even the wait.

use crate::admission::Admission;
use crate::compile::{Compiled, Job};
use crate::module_cache::Origin;
use crate::pipeline::{Installed, Pipeline};
use crate::safe_file::{self, Refused};
use crate::sandbox::{LoadError, LoadedModule, Sandbox};
use crate::signing::{Signed, Signers};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long a refused module's file must stay unchanged before the refusal is reported, while
/// the directory is watched.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What a listing of the rules directory found.
#[derive(Debug, Default)]
pub struct Listing {
    /// The `*.wasm` regular files (links followed), in name order.
    pub files: Vec<PathBuf>,
    /// `*.wasm` entries that are not regular files, and why.
    pub skipped: Vec<(PathBuf, Refused)>,
}

/// Lists the `*.wasm` entries directly in `dir` (hidden entries left out).
pub fn list_modules(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        if name.starts_with('.') || !path.extension().is_some_and(|ext| ext == "wasm") {
            continue;
        }
        if name.chars().any(char::is_control) {
            // Its name would break the log lines that name it.
            listing.skipped.push((path, Refused::ControlCharacters));
            continue;
        }
        match safe_file::not_regular(&path) {
            None => listing.files.push(path),
            Some(why) => listing.skipped.push((path, why)),
        }
    }
    listing.files.sort();
    listing.skipped.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(listing)
}

/// Reads a module file: a regular file of at most `max_bytes`, opened without blocking.
pub fn read_module(path: &Path, max_bytes: usize) -> Result<Vec<u8>, LoadError> {
    safe_file::read_regular(path, max_bytes as u64).map_err(|why| LoadError {
        source: path.display().to_string(),
        message: why.to_string(),
    })
}

/// Reads and loads one module file; with `signers`, only if it carries a valid signature by
/// one of them (checked over the same bytes that are compiled).
pub fn load_file(
    sandbox: &Sandbox,
    path: &Path,
    signers: Option<&Signers>,
) -> Result<LoadedModule, LoadError> {
    let bytes = read_module(path, sandbox.limits().max_module_bytes)?;
    let source = path.display().to_string();
    let signed = match signers {
        Some(signers) => Some(
            signers
                .verify(path, &bytes, Signers::read_signature(path).as_deref())
                .map_err(|message| LoadError {
                    source: source.clone(),
                    message,
                })?,
        ),
        None => None,
    };
    let module = sandbox.load(&source, &bytes)?;
    if let Some(signed) = &signed {
        check_signed_id(signed, &module.manifest.id)
            .map_err(|message| LoadError { source, message })?;
    }
    Ok(module)
}

/// Checks that a module's manifest declares the rule id its signature was made for.
fn check_signed_id(signed: &Signed, id: &str) -> Result<(), String> {
    if signed.id == id {
        return Ok(());
    }
    Err(format!(
        "is signed as rule `{}`, but its manifest declares rule `{id}` (a signature moved to \
         another module?); sign it as id:{id}",
        crate::text::escape_controls(&signed.id)
    ))
}

/// A change for the pipeline.
pub enum Update {
    /// Install (add, or replace the running version of) a rule.
    Install(LoadedModule),
    /// Remove a rule whose module left the directory.
    Remove {
        /// The rule id.
        id: String,
        /// The file it came from.
        source: String,
    },
}

/// What a scan found.
#[derive(Default)]
pub struct Scan {
    /// Changes to apply, in order.
    pub updates: Vec<Update>,
    /// Modules refused; each is reported once per content.
    pub errors: Vec<LoadError>,
}

impl Scan {
    /// Whether there is nothing to apply or report.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.errors.is_empty()
    }
}

struct Entry {
    /// The admission verdict's key: content, modes and signature.
    hash: blake3::Hash,
    id: String,
}

/// A file's size and modification time: what changes while it is being written.
type Stamp = (u64, SystemTime);

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

/// A refusal waiting for its file to settle.
struct Held {
    /// The file's stamp when it was read.
    stamp: Option<Stamp>,
    since: Instant,
    error: LoadError,
}

/// What a survey found: removals to apply now, and content to compile.
pub struct Survey {
    /// Removals (and errors reading files), ready to apply.
    pub scan: Scan,
    /// New or changed modules to compile.
    pub jobs: Vec<Job>,
}

/// What is installed from a rules directory.
pub struct RuleDirectory {
    dir: PathBuf,
    installed: BTreeMap<PathBuf, Entry>,
    /// Content already refused, so that an unchanged broken file is not reported again.
    refused: HashMap<PathBuf, blake3::Hash>,
    /// Content refused only because another module claims the same id: tried again at every
    /// look, since the other may have gone; reported once per content.
    duplicates: HashMap<PathBuf, blake3::Hash>,
    /// Content being compiled now.
    compiling: HashMap<PathBuf, blake3::Hash>,
    /// Entries skipped as not regular files, with the reason last logged.
    skipped: HashMap<PathBuf, String>,
    /// Strict modes and signatures.
    admission: Admission,
    /// Each file's stamp when it was last read.
    stamps: HashMap<PathBuf, Stamp>,
    /// Refusals waiting for their file to settle (only with `settle`).
    held: HashMap<PathBuf, Held>,
    /// How long a refused file must stay unchanged before the refusal is reported; `None`
    /// reports at once (a single scan, such as the one at start).
    settle: Option<Duration>,
    /// What the signature of each module being compiled says it is (under `--trusted-key`).
    signed: HashMap<PathBuf, Signed>,
    /// The highest signed version loaded for each rule id while the agent runs: an older one
    /// put back is refused.
    signed_versions: HashMap<String, u64>,
}

impl RuleDirectory {
    /// A directory with nothing installed yet; the first scan loads everything.
    pub fn new(dir: &Path) -> RuleDirectory {
        RuleDirectory {
            dir: dir.to_path_buf(),
            installed: BTreeMap::new(),
            refused: HashMap::new(),
            duplicates: HashMap::new(),
            compiling: HashMap::new(),
            skipped: HashMap::new(),
            admission: Admission::default(),
            stamps: HashMap::new(),
            held: HashMap::new(),
            settle: None,
            signed: HashMap::new(),
            signed_versions: HashMap::new(),
        }
    }

    /// Holds each refusal back until its file has stayed unchanged for `settle`, so that a
    /// module being written is not reported as broken; see [`RuleDirectory::settled`].
    pub fn settle_refusals(mut self, settle: Duration) -> RuleDirectory {
        self.settle = Some(settle);
        self
    }

    /// Refuses `path`'s content `hash`: reported now, or held until the file settles.
    fn refuse(&mut self, path: PathBuf, hash: blake3::Hash, error: LoadError, scan: &mut Scan) {
        self.refused.insert(path.clone(), hash);
        match self.settle {
            None => scan.errors.push(error),
            Some(_) => {
                let held = Held {
                    stamp: self.stamps.get(&path).copied(),
                    since: Instant::now(),
                    error,
                };
                self.held.insert(path, held);
            }
        }
    }

    /// When the next held refusal is due, if any.
    pub fn next_settle(&self) -> Option<Duration> {
        let settle = self.settle?;
        self.held
            .values()
            .map(|held| settle.saturating_sub(held.since.elapsed()))
            .min()
    }

    /// Reports the held refusals whose files stayed unchanged for the settle time. A file that
    /// changed meanwhile waits again: a change of content rescans it (and drops the refusal), and
    /// the same bytes written again are reported once they have settled.
    pub fn settled(&mut self) -> Scan {
        let mut scan = Scan::default();
        let Some(settle) = self.settle else {
            return scan;
        };
        let due: Vec<PathBuf> = self
            .held
            .iter()
            .filter(|(_, held)| held.since.elapsed() >= settle)
            .map(|(path, _)| path.clone())
            .collect();
        for path in due {
            let mut held = self.held.remove(&path).expect("listed above");
            let now = stamp(&path);
            if now.is_none() {
                continue; // gone: nothing to report
            }
            if now == held.stamp {
                scan.errors.push(held.error);
            } else {
                held.stamp = now;
                held.since = Instant::now();
                self.held.insert(path, held);
            }
        }
        scan
    }

    /// Loads only what `admission` admits (strict modes are always checked).
    pub fn with_admission(mut self, admission: Admission) -> RuleDirectory {
        self.admission = admission;
        self
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Compares the directory with what is installed and compiles what is new, every module
    /// in parallel, waiting for all of them (each up to the compile budget). Fails only if the
    /// directory itself cannot be listed, or others could write it (then nothing is loaded
    /// from it).
    pub fn scan(&mut self, sandbox: &Arc<Sandbox>) -> io::Result<Scan> {
        let survey = self.survey(sandbox.limits().max_module_bytes)?;
        let mut scan = survey.scan;
        let results = crate::compile::compile_all(sandbox, survey.jobs);
        let accepted = self.accept(results);
        scan.updates.extend(accepted.updates);
        scan.errors.extend(accepted.errors);
        Ok(scan)
    }

    /// Lists and reads the directory: removals of modules that left it, and jobs for the new or
    /// changed content (not already compiling).
    pub fn survey(&mut self, max_module_bytes: usize) -> io::Result<Survey> {
        self.admission.check_dir(&self.dir)?;
        let listing = list_modules(&self.dir)?;
        self.report_skipped(&listing.skipped);
        let files = listing.files;
        let mut scan = Scan::default();
        // Removals first, so that a module renamed in place does not collide with itself.
        let gone: Vec<PathBuf> = self
            .installed
            .keys()
            .filter(|path| !files.contains(path))
            .cloned()
            .collect();
        for path in gone {
            let entry = self.installed.remove(&path).expect("listed above");
            scan.updates.push(Update::Remove {
                id: entry.id,
                source: path.display().to_string(),
            });
        }
        self.refused.retain(|path, _| files.contains(path));
        self.duplicates.retain(|path, _| files.contains(path));
        self.held.retain(|path, _| files.contains(path));
        self.stamps.retain(|path, _| files.contains(path));

        let mut jobs = Vec::new();
        for path in files {
            // Taken before the read: a write after it changes the stamp, and a held refusal of
            // what was read is then dropped rather than reported.
            if let Some(now) = stamp(&path) {
                self.stamps.insert(path.clone(), now);
            }
            let bytes = match read_module(&path, max_module_bytes) {
                Ok(bytes) => bytes,
                Err(error) => {
                    scan.errors.push(error);
                    continue;
                }
            };
            let verdict = self.admission.judge(&path, &bytes, &blake3::hash(&bytes));
            let hash = verdict.key;
            if self.installed.get(&path).is_some_and(|e| e.hash == hash)
                || self.refused.get(&path) == Some(&hash)
                || self.compiling.get(&path) == Some(&hash)
            {
                continue;
            }
            // New content: a refusal held for the old one is moot.
            self.held.remove(&path);
            match verdict.result {
                Err(message) => {
                    let source = path.display().to_string();
                    self.refuse(path, hash, LoadError { source, message }, &mut scan);
                    continue;
                }
                Ok(Some(signed)) => {
                    self.signed.insert(path.clone(), signed);
                }
                Ok(None) => {
                    self.signed.remove(&path);
                }
            }
            self.compiling.insert(path.clone(), hash);
            jobs.push(Job { path, hash, bytes });
        }
        Ok(Survey { scan, jobs })
    }

    /// Checks a compiled module against what its signature says: the rule id its manifest
    /// declares, and a version no older than the highest loaded for that id.
    fn check_signed(&self, signed: &Signed, module: &LoadedModule) -> Result<(), LoadError> {
        let id = &module.manifest.id;
        let refused = |message| LoadError {
            source: module.source.to_string(),
            message,
        };
        check_signed_id(signed, id).map_err(refused)?;
        match self.signed_versions.get(id) {
            Some(&highest) if signed.version < highest => Err(refused(format!(
                "is signed as version {} of rule `{id}`, older than version {highest} already \
                 loaded (an older signed module put back?); refused, the newer one is kept",
                signed.version
            ))),
            _ => Ok(()),
        }
    }

    fn report_skipped(&mut self, skipped: &[(PathBuf, Refused)]) {
        self.skipped
            .retain(|path, _| skipped.iter().any(|(other, _)| other == path));
        for (path, why) in skipped {
            let why = why.to_string();
            if self.skipped.get(path) != Some(&why) {
                let entry = crate::text::escape_controls(&path.display().to_string());
                tracing::warn!(%entry, "rules directory entry skipped: it {why}");
                self.skipped.insert(path.clone(), why);
            }
        }
    }

    /// Takes compiled modules (one look's worth, or one that just finished) and decides what
    /// to install: see the module documentation for duplicate ids.
    pub fn accept(&mut self, results: Vec<Compiled>) -> Scan {
        let mut scan = Scan::default();
        let mut loaded: Vec<(PathBuf, blake3::Hash, LoadedModule, Option<u64>)> = Vec::new();
        for Compiled { path, hash, result } in results {
            if self.compiling.get(&path) != Some(&hash) {
                continue; // given up on, or superseded by newer content
            }
            self.compiling.remove(&path);
            let signed = self.signed.remove(&path);
            let result = result.and_then(|module| match &signed {
                Some(signed) => self.check_signed(signed, &module).map(|()| module),
                None => Ok(module),
            });
            match result {
                Ok(module) => loaded.push((path, hash, module, signed.map(|s| s.version))),
                Err(error) => {
                    self.duplicates.remove(&path);
                    self.refuse(path, hash, error, &mut scan);
                }
            }
        }
        let mut claims: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for (path, _, module, _) in &loaded {
            claims
                .entry(module.manifest.id.clone())
                .or_default()
                .push(path.clone());
        }
        for (path, hash, module, version) in loaded {
            let id = module.manifest.id.clone();
            let source = path.display().to_string();
            let owner = self
                .installed
                .iter()
                .find(|(other, entry)| entry.id == id && **other != path)
                .map(|(other, _)| other.clone());
            let rivals: Vec<&PathBuf> = claims[&id].iter().filter(|p| **p != path).collect();
            let refusal = if let Some(owner) = owner {
                Some(format!(
                    "rule id `{id}` is already loaded from {}; keeping that one",
                    owner.display()
                ))
            } else if !rivals.is_empty() && !self.installed.contains_key(&path) {
                let others: Vec<String> = rivals.iter().map(|p| p.display().to_string()).collect();
                Some(format!(
                    "rule id `{id}` is also claimed by {}; none of them is loaded (which one \
                     should run cannot be decided; remove all but one)",
                    others.join(", ")
                ))
            } else {
                None
            };
            if let Some(message) = refusal {
                // Reported once per content; tried again at every look in case the rival left.
                if self.duplicates.insert(path.clone(), hash) != Some(hash) {
                    scan.errors.push(LoadError { source, message });
                }
                continue;
            }
            self.duplicates.remove(&path);
            if let Some(previous) = self.installed.get(&path)
                && previous.id != id
            {
                scan.updates.push(Update::Remove {
                    id: previous.id.clone(),
                    source: source.clone(),
                });
            }
            self.refused.remove(&path);
            if let Some(version) = version {
                let highest = self.signed_versions.entry(id.clone()).or_insert(version);
                *highest = (*highest).max(version);
            }
            self.installed.insert(path, Entry { hash, id });
            scan.updates.push(Update::Install(module));
        }
        scan
    }

    /// Gives up on a compile that ran past its budget: its content is refused.
    pub fn give_up(&mut self, path: &Path, hash: blake3::Hash, message: String) -> Scan {
        let mut scan = Scan::default();
        if self.compiling.get(path) == Some(&hash) {
            self.compiling.remove(path);
            self.refused.insert(path.to_path_buf(), hash);
            scan.errors.push(LoadError {
                source: path.display().to_string(),
                message,
            });
        }
        scan
    }
}

/// Applies a scan's updates to the pipeline between two events, logging each; returns whether
/// any rule was added, replaced or removed.
pub fn apply(pipeline: &mut Pipeline, scan: Scan) -> bool {
    for error in &scan.errors {
        tracing::error!("rule module refused: {error}");
    }
    let mut changed = false;
    let (mut applied, mut refused) = (0, scan.errors.len());
    for update in scan.updates {
        match update {
            Update::Install(module) => {
                let (id, source) = (module.manifest.id.clone(), module.source.clone());
                let hash = module.hash.to_hex();
                let how = match module.origin {
                    Origin::Cached => "cached code",
                    Origin::Compiled => "compiled",
                };
                match pipeline.install(module) {
                    Ok(Installed::Added) => {
                        applied += 1;
                        tracing::info!(rule = %id, module = %source, blake3 = %&hash[..16], "rule loaded ({how})");
                        changed = true;
                    }
                    Ok(Installed::Replaced) => {
                        applied += 1;
                        tracing::info!(rule = %id, module = %source, blake3 = %&hash[..16], "rule replaced by a new version ({how}); its state is kept");
                        changed = true;
                    }
                    Err(err) => {
                        refused += 1;
                        tracing::error!(rule = %id, module = %source, "rule module refused, the running version stays: {err}");
                    }
                }
            }
            Update::Remove { id, source } => {
                if pipeline.remove(&id) {
                    tracing::info!(rule = %id, module = %source, "rule removed (its module left the directory); its state is kept");
                    changed = true;
                }
            }
        }
    }
    crate::metrics::global().reloaded(applied, refused);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PipelineConfig;
    use crate::sandbox::{Limits, test_module};

    fn write(dir: &Path, file: &str, id: &str, trap_on: &[u32]) {
        let bytes = test_module::rule(&test_module::manifest(id), trap_on);
        std::fs::write(dir.join(file), bytes).unwrap();
    }

    /// A rules directory holding `file`, for rule id `rule`, installed in a pipeline.
    fn running(file: &str) -> (tempfile::TempDir, Arc<Sandbox>, Pipeline, RuleDirectory) {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Arc::new(Sandbox::new(Limits::default()).unwrap());
        let mut pipeline = Pipeline::new(Arc::clone(&sandbox), PipelineConfig::default());
        write(dir.path(), file, "rule", &[]);
        let mut rules = RuleDirectory::new(dir.path());
        assert!(apply(&mut pipeline, rules.scan(&sandbox).unwrap()));
        (dir, sandbox, pipeline, rules)
    }

    fn installed(scan: &Scan) -> Vec<String> {
        scan.updates
            .iter()
            .map(|update| match update {
                Update::Install(module) => format!("install {}", module.manifest.id),
                Update::Remove { id, .. } => format!("remove {id}"),
            })
            .collect()
    }

    #[test]
    fn modules_claiming_one_id_at_start_are_all_refused_until_one_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Arc::new(Sandbox::new(Limits::default()).unwrap());
        write(dir.path(), "one.wasm", "same", &[]);
        write(dir.path(), "two.wasm", "same", &[1]);
        write(dir.path(), "other.wasm", "other", &[]);
        std::fs::write(dir.path().join("notes.txt"), "not a module").unwrap();
        let mut rules = RuleDirectory::new(dir.path());

        let scan = rules.scan(&sandbox).unwrap();
        assert_eq!(installed(&scan), ["install other"]);
        assert_eq!(scan.errors.len(), 2, "each claimant is reported");
        for error in &scan.errors {
            assert!(
                error.message.contains("rule id `same` is also claimed by"),
                "{error}"
            );
        }
        // Nothing changed: not reported again.
        assert!(rules.scan(&sandbox).unwrap().is_empty());

        std::fs::remove_file(dir.path().join("two.wasm")).unwrap();
        let scan = rules.scan(&sandbox).unwrap();
        assert_eq!(installed(&scan), ["install same"]);
        assert!(scan.errors.is_empty());
    }

    #[test]
    fn a_running_rules_id_is_not_taken_over_and_a_gone_module_is_removed() {
        let (dir, sandbox, mut pipeline, mut rules) = running("a.wasm");

        write(dir.path(), "b.wasm", "rule", &[]);
        let scan = rules.scan(&sandbox).unwrap();
        assert!(scan.updates.is_empty());
        assert!(
            scan.errors[0].message.contains("already loaded from"),
            "{}",
            scan.errors[0]
        );
        assert!(!apply(&mut pipeline, scan));
        assert_eq!(
            pipeline.rules().next().unwrap().source.as_ref(),
            dir.path().join("a.wasm").display().to_string()
        );

        // With the owner gone, the other claimant takes its place in the same look.
        std::fs::remove_file(dir.path().join("a.wasm")).unwrap();
        let scan = rules.scan(&sandbox).unwrap();
        assert_eq!(installed(&scan), ["remove rule", "install rule"]);
        assert!(apply(&mut pipeline, scan));
        let source = dir.path().join("b.wasm").display().to_string();
        assert_eq!(pipeline.rules().next().unwrap().source.as_ref(), source);
    }

    #[test]
    fn a_broken_module_is_refused_and_does_not_replace_a_working_one() {
        let (dir, sandbox, mut pipeline, mut rules) = running("r.wasm");

        std::fs::write(dir.path().join("r.wasm"), b"\0asm\x01\0\0\0garbage").unwrap();
        let scan = rules.scan(&sandbox).unwrap();
        assert!(scan.updates.is_empty());
        assert!(
            scan.errors[0]
                .message
                .contains("not a valid WebAssembly module"),
            "{}",
            scan.errors[0]
        );
        assert!(!apply(&mut pipeline, scan));
        assert_eq!(pipeline.rules().count(), 1, "the running version stays");
    }

    /// While watched, a refusal waits for the file to settle: reported once if the file stayed
    /// as it was read, forgotten (and judged again at the next look) if it changed meanwhile.
    #[test]
    fn a_refusal_waits_for_its_file_to_settle() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Arc::new(Sandbox::new(Limits::default()).unwrap());
        let mut rules = RuleDirectory::new(dir.path()).settle_refusals(Duration::ZERO);
        let module = dir.path().join("r.wasm");
        let good = test_module::rule(&test_module::manifest("rule"), &[]);

        // Half a module: refused, but held, not reported.
        std::fs::write(&module, &good[..good.len() / 2]).unwrap();
        assert!(rules.scan(&sandbox).unwrap().is_empty());
        assert_eq!(rules.next_settle(), Some(Duration::ZERO));
        // The writer went on: the file is no longer what was read, so nothing is reported, and
        // the next look loads the whole module (dropping the refusal of the half).
        std::fs::write(&module, &good).unwrap();
        assert!(rules.settled().is_empty());
        assert_eq!(installed(&rules.scan(&sandbox).unwrap()), ["install rule"]);
        assert_eq!(rules.next_settle(), None);

        // A module that stays broken: reported once it is due, and only once.
        std::fs::write(&module, b"\0asm\x01\0\0\0garbage").unwrap();
        assert!(rules.scan(&sandbox).unwrap().is_empty());
        let reported = rules.settled();
        assert_eq!(reported.errors.len(), 1);
        assert!(
            reported.errors[0]
                .message
                .contains("not a valid WebAssembly module"),
            "{}",
            reported.errors[0]
        );
        assert_eq!(rules.next_settle(), None);
        assert!(rules.settled().is_empty());
        assert!(rules.scan(&sandbox).unwrap().is_empty());

        // The same broken bytes written again while held (the file's time changes, its content
        // does not): reported once they settle.
        std::fs::write(&module, b"\0asm\x01\0\0\0rubbish").unwrap();
        assert!(rules.scan(&sandbox).unwrap().is_empty());
        let rewritten = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&module)
            .unwrap()
            .set_modified(rewritten)
            .unwrap();
        assert!(
            rules.settled().is_empty(),
            "changed since it was read: it waits"
        );
        assert!(
            rules.scan(&sandbox).unwrap().is_empty(),
            "same content: not judged again"
        );
        assert_eq!(rules.settled().errors.len(), 1);
    }
}
