//! The rules directory: which modules it holds, and what changed since the last look.
//!
//! A scan reads every `*.wasm` entry (following links, as a Kubernetes ConfigMap volume's entries
//! are links through `..data`), hashes it with blake3, and compares with what is installed from
//! that entry. Unchanged content is skipped; new or changed content is compiled and checked
//! before it is offered for installation, so a broken module never replaces a working one; an
//! entry that disappeared uninstalls its rule. The pipeline applies the resulting updates
//! between two events.

use crate::module_cache::Origin;
use crate::pipeline::{Installed, Pipeline};
use crate::sandbox::{LoadError, LoadedModule, Sandbox};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

/// The `*.wasm` files directly in `dir` (links followed; hidden entries skipped), in name order.
pub fn module_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && path.extension().is_some_and(|ext| ext == "wasm")
                && path.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read_bounded(path: &Path, max_bytes: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|err| format!("cannot be read: {err}"))?;
    let mut bytes = Vec::new();
    file.take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot be read: {err}"))?;
    if bytes.len() > max_bytes {
        return Err(format!(
            "is more than the {max_bytes} bytes a rule module may be"
        ));
    }
    Ok(bytes)
}

/// Reads and loads one module file.
pub fn load_file(sandbox: &Sandbox, path: &Path) -> Result<LoadedModule, LoadError> {
    let source = path.display().to_string();
    let bytes =
        read_bounded(path, sandbox.limits().max_module_bytes).map_err(|message| LoadError {
            source: source.clone(),
            message,
        })?;
    sandbox.load(&source, &bytes)
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

struct Entry {
    hash: blake3::Hash,
    id: String,
}

/// What is installed from a rules directory.
pub struct RuleDirectory {
    dir: PathBuf,
    installed: BTreeMap<PathBuf, Entry>,
    /// Content already refused, so that an unchanged broken file is not reported again.
    refused: HashMap<PathBuf, blake3::Hash>,
}

impl RuleDirectory {
    /// A directory with nothing installed yet; the first scan loads everything.
    pub fn new(dir: &Path) -> RuleDirectory {
        RuleDirectory {
            dir: dir.to_path_buf(),
            installed: BTreeMap::new(),
            refused: HashMap::new(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Compares the directory with what is installed. Fails only if the directory itself
    /// cannot be listed.
    pub fn scan(&mut self, sandbox: &Sandbox) -> io::Result<Scan> {
        let files = module_files(&self.dir)?;
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

        for path in files {
            let source = path.display().to_string();
            let bytes = match read_bounded(&path, sandbox.limits().max_module_bytes) {
                Ok(bytes) => bytes,
                Err(message) => {
                    scan.errors.push(LoadError { source, message });
                    continue;
                }
            };
            let hash = blake3::hash(&bytes);
            if self.installed.get(&path).is_some_and(|e| e.hash == hash)
                || self.refused.get(&path) == Some(&hash)
            {
                continue;
            }
            let module = match sandbox.load(&source, &bytes) {
                Ok(module) => module,
                Err(error) => {
                    self.refused.insert(path, hash);
                    scan.errors.push(error);
                    continue;
                }
            };
            let id = module.manifest.id.clone();
            let owner = self
                .installed
                .iter()
                .find(|(other, entry)| entry.id == id && **other != path);
            if let Some((other, _)) = owner {
                scan.errors.push(LoadError {
                    source,
                    message: format!(
                        "rule id `{id}` is already loaded from {}; keeping that one",
                        other.display()
                    ),
                });
                self.refused.insert(path, hash);
                continue;
            }
            if let Some(previous) = self.installed.get(&path)
                && previous.id != id
            {
                scan.updates.push(Update::Remove {
                    id: previous.id.clone(),
                    source: source.clone(),
                });
            }
            self.refused.remove(&path);
            self.installed.insert(path, Entry { hash, id });
            scan.updates.push(Update::Install(module));
        }
        Ok(scan)
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
