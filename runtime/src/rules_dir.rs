//! Loading the rule modules of a directory.

use crate::sandbox::{LoadError, LoadedModule, Sandbox};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// The `*.wasm` files directly in `dir`, in name order.
pub fn module_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm") && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and loads one module file.
pub fn load_file(sandbox: &Sandbox, path: &Path) -> Result<LoadedModule, LoadError> {
    let source = path.display().to_string();
    let bytes = read_bounded(path, sandbox.limits().max_module_bytes).map_err(|err| LoadError {
        source: source.clone(),
        message: err,
    })?;
    sandbox.load(&source, &bytes)
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

/// Loads every module in `dir`. A module that fails, or that repeats a rule id loaded from an
/// earlier file, is reported and left out; the others load.
pub fn load_dir(sandbox: &Sandbox, dir: &Path) -> io::Result<(Vec<LoadedModule>, Vec<LoadError>)> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for path in module_files(dir)? {
        match load_file(sandbox, &path) {
            Ok(module) => {
                let id = module.manifest.id.clone();
                if let Some(first) = ids.get(&id) {
                    errors.push(LoadError {
                        source: module.source.to_string(),
                        message: format!(
                            "rule id `{id}` is already loaded from {first}; keeping that one"
                        ),
                    });
                    continue;
                }
                ids.insert(id, module.source.to_string());
                loaded.push(module);
            }
            Err(err) => errors.push(err),
        }
    }
    Ok((loaded, errors))
}
