//! Compiled rule modules kept on disk, so that a restart does not recompile them.
//!
//! An entry is named by the module's blake3 and a fingerprint of the engine (wasmtime's version
//! and compilation settings), so a new picket or a changed setting never picks up stale code.
//! Each entry starts with the blake3 of its payload: a torn or corrupt file is detected, removed
//! and rebuilt. The directory must be as trusted as the picket binary itself (it holds native
//! code), so it is created readable by its owner only.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use wasmtime::{Engine, Module};

/// Where a module's compiled code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read back from the cache.
    Cached,
    /// Compiled now (and stored, when the cache could be written).
    Compiled,
}

/// A directory of compiled modules for one engine configuration.
#[derive(Debug)]
pub struct ModuleCache {
    dir: PathBuf,
    engine_tag: String,
}

/// Feeds `Hash` output into blake3, to fingerprint wasmtime's compatibility hash.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let hash = self.0.finalize();
        u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

impl ModuleCache {
    /// Opens (creating) the cache directory `dir` for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<ModuleCache> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_tag = hasher.0.finalize().to_hex()[..16].to_string();
        Ok(ModuleCache {
            dir: dir.to_path_buf(),
            engine_tag,
        })
    }

    fn entry(&self, module_hash: &blake3::Hash) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            module_hash.to_hex(),
            self.engine_tag
        ))
    }

    /// The compiled module for `bytes` (whose blake3 is `module_hash`): from the cache when a
    /// sound entry exists, else compiled and stored.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        module_hash: &blake3::Hash,
    ) -> Result<(Module, Origin), wasmtime::Error> {
        let path = self.entry(module_hash);
        match self.read(engine, &path) {
            Ok(Some(module)) => return Ok((module, Origin::Cached)),
            Ok(None) => {}
            Err(problem) => {
                tracing::warn!(entry = %path.display(), "module cache entry unusable, recompiling: {problem}");
                let _ = fs::remove_file(&path);
            }
        }
        let module = Module::new(engine, bytes)?;
        if let Err(err) = self.write(&path, &module) {
            tracing::warn!(entry = %path.display(), "could not store compiled module: {err}");
        }
        Ok((module, Origin::Compiled))
    }

    fn read(&self, engine: &Engine, path: &Path) -> Result<Option<Module>, String> {
        let data = match fs::read(path) {
            Ok(data) => data,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.to_string()),
        };
        let Some((checksum, payload)) = data.split_first_chunk::<32>() else {
            return Err("shorter than its checksum".into());
        };
        if blake3::hash(payload).as_bytes() != checksum {
            return Err("checksum mismatch (torn or corrupted)".into());
        }
        // SAFETY: the payload is what `Module::serialize` wrote for an engine with this
        // fingerprint (its checksum matches), in a directory only the agent can write;
        // wasmtime still checks its own header and version before using it.
        unsafe { Module::deserialize(engine, payload) }
            .map(Some)
            .map_err(|err| format!("wasmtime refused it: {err}"))
    }

    fn write(&self, path: &Path, module: &Module) -> Result<(), String> {
        let payload = module.serialize().map_err(|err| err.to_string())?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(blake3::hash(&payload).as_bytes())?;
            file.write_all(&payload)?;
            file.sync_all()?;
            // Renamed into place only when complete, so a reader never sees a partial entry.
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|err| err.to_string())
    }
}
