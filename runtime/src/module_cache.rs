//! Compiled rule modules kept on disk, so that a restart does not recompile them.
//!
//! An entry is named by the module's blake3 and a fingerprint of the engine (wasmtime's version
//! and compilation settings), so a new picket or a changed setting never picks up stale code.
//!
//! An entry is native code that wasmtime runs as it is (`Module::deserialize` is unsafe: it must
//! only ever see bytes this agent wrote). So each entry starts with a MAC: blake3 keyed with a
//! secret only the agent can read ([`CACHE_KEY_FILE`], 0600 under `--state`, made at first
//! start), over the engine fingerprint, the module's blake3 and the payload. An entry whose MAC
//! does not match (torn, damaged, copied from another machine, forged by someone who could write
//! the directory, or another module's code under this module's name) is never deserialized: it
//! is removed, logged and the module compiled again.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use wasmtime::{Engine, Module};

/// The cache directory's name under `--state`.
pub const CACHE_DIR: &str = "modules";
/// The MAC key's file name under `--state`.
pub const CACHE_KEY_FILE: &str = "module-cache.key";
/// Separates this MAC from any other use of the key.
const MAC_CONTEXT: &[u8] = b"picket module cache entry v1\0";

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
    key: CacheKey,
}

/// The secret that authenticates cache entries. Only its owner can read the file it is kept in.
#[derive(Clone)]
pub struct CacheKey([u8; blake3::KEY_LEN]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

impl CacheKey {
    /// Reads the key in `state_dir` (already checked with `trust::check_state_dir`), making a
    /// new random one, mode 0600, when there is none. Refuses a key file that is a link, is not
    /// owned by root or the agent's user, or that group or others may read or write: whoever
    /// can read the key can forge native code the agent would run.
    pub fn load_or_create(state_dir: &Path) -> Result<CacheKey, String> {
        let path = state_dir.join(CACHE_KEY_FILE);
        let shown = path.display();
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(o_nofollow())
            .open(&path);
        let mut file = match file {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return CacheKey::create(&path),
            Err(err) => {
                return Err(format!(
                    "compiled-module cache key {shown} cannot be opened (a symbolic link is \
                     refused): {err}"
                ));
            }
        };
        let meta = file
            .metadata()
            .map_err(|err| format!("compiled-module cache key {shown}: {err}"))?;
        let euid = rustix::process::geteuid().as_raw();
        if !meta.is_file() || (meta.uid() != 0 && meta.uid() != euid) || meta.mode() & 0o077 != 0 {
            return Err(format!(
                "compiled-module cache key {shown} must be a regular file owned by root or \
                 the agent's user (uid {euid}) that only its owner can read or write, but it \
                 is owned by uid {} with mode {:04o}; whoever can read it can forge native \
                 code the agent would run. Remove it (a new key is made and the cache \
                 rebuilt) or chmod 600 it",
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
        let mut key = [0u8; blake3::KEY_LEN];
        let mut extra = [0u8; 1];
        let complete = file.read_exact(&mut key).is_ok() && file.read(&mut extra).ok() == Some(0);
        if !complete {
            tracing::warn!(file = %shown, "compiled-module cache key damaged; making a new one (cached code is recompiled)");
            return CacheKey::create(&path);
        }
        Ok(CacheKey(key))
    }

    /// Makes a new random key at `path`, written whole to a private temporary file first.
    fn create(path: &Path) -> Result<CacheKey, String> {
        let mut key = [0u8; blake3::KEY_LEN];
        getrandom::fill(&mut key).map_err(|err| format!("no randomness for a cache key: {err}"))?;
        if let Err(err) = write_private(path, &[&key]) {
            return Err(format!(
                "compiled-module cache key {} cannot be created: {err}",
                path.display()
            ));
        }
        tracing::info!(file = %path.display(), "compiled-module cache key created");
        Ok(CacheKey(key))
    }
}

/// Writes `parts` to `path` readable by its owner only: whole to a new temporary file (never
/// through a link), synced, then renamed into place, so a reader never sees a partial file.
fn write_private(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(o_nofollow())
            .open(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `O_NOFOLLOW`: opening a link fails, so nobody can point the agent's own files elsewhere.
fn o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
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
    /// Opens (creating) the cache directory `dir` for `engine`, authenticating entries with `key`.
    pub fn open(dir: &Path, engine: &Engine, key: CacheKey) -> std::io::Result<ModuleCache> {
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
            key,
        })
    }

    fn entry(&self, module_hash: &blake3::Hash) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            module_hash.to_hex(),
            self.engine_tag
        ))
    }

    /// The MAC of an entry holding `payload` for the module whose blake3 is `module_hash`.
    fn mac(&self, module_hash: &blake3::Hash, payload: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.key.0);
        mac.update(MAC_CONTEXT)
            .update(self.engine_tag.as_bytes())
            .update(module_hash.as_bytes())
            .update(payload);
        mac.finalize()
    }

    /// The compiled module for `bytes` (whose blake3 is `module_hash`): from the cache when an
    /// entry authenticated by the key exists, else compiled and stored.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        module_hash: &blake3::Hash,
    ) -> Result<(Module, Origin), wasmtime::Error> {
        let path = self.entry(module_hash);
        match self.read(engine, &path, module_hash) {
            Ok(Some(module)) => return Ok((module, Origin::Cached)),
            Ok(None) => {}
            Err(problem) => {
                tracing::warn!(entry = %path.display(), "module cache entry unusable, recompiling: {problem}");
                let _ = fs::remove_file(&path);
            }
        }
        let module = Module::new(engine, bytes)?;
        if let Err(err) = self.write(&path, module_hash, &module) {
            tracing::warn!(entry = %path.display(), "could not store compiled module: {err}");
        }
        Ok((module, Origin::Compiled))
    }

    fn read(
        &self,
        engine: &Engine,
        path: &Path,
        module_hash: &blake3::Hash,
    ) -> Result<Option<Module>, String> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(o_nofollow())
            .open(path);
        let mut data = Vec::new();
        match file.and_then(|mut file| file.read_to_end(&mut data)) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(format!("cannot be read (a link is refused): {err}")),
        }
        let Some((mac, payload)) = data.split_first_chunk::<32>() else {
            return Err("shorter than its MAC (torn)".into());
        };
        if self.mac(module_hash, payload) != blake3::Hash::from_bytes(*mac) {
            return Err(
                "its MAC does not match this agent's key (forged, copied from elsewhere, \
                 another module's code, or damaged); its code was not executed"
                    .into(),
            );
        }
        // SAFETY: the MAC proves that this agent (the only reader of the key) wrote exactly
        // these bytes with `Module::serialize`, for this module and an engine with this
        // fingerprint; wasmtime still checks its own header and version before using it.
        unsafe { Module::deserialize(engine, payload) }
            .map(Some)
            .map_err(|err| format!("wasmtime refused it: {err}"))
    }

    fn write(
        &self,
        path: &Path,
        module_hash: &blake3::Hash,
        module: &Module,
    ) -> Result<(), String> {
        let payload = module.serialize().map_err(|err| err.to_string())?;
        let mac = self.mac(module_hash, &payload);
        write_private(path, &[mac.as_bytes(), &payload]).map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Limits, Sandbox, test_module};

    fn open_cache(dir: &Path, key: [u8; blake3::KEY_LEN]) -> (Sandbox, ModuleCache) {
        let sandbox = Sandbox::new(Limits::default()).unwrap();
        let cache = ModuleCache::open(dir, sandbox.engine(), CacheKey(key)).unwrap();
        (sandbox, cache)
    }

    fn module() -> (Vec<u8>, blake3::Hash) {
        let bytes = test_module::rule(&test_module::manifest("cached"), &[]);
        let hash = blake3::hash(&bytes);
        (bytes, hash)
    }

    /// A cache in a new directory holding one compiled module.
    fn compiled() -> (
        tempfile::TempDir,
        Sandbox,
        ModuleCache,
        Vec<u8>,
        blake3::Hash,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (sandbox, cache) = open_cache(dir.path(), [7; 32]);
        let (bytes, hash) = module();
        cache
            .get_or_compile(sandbox.engine(), &bytes, &hash)
            .unwrap();
        (dir, sandbox, cache, bytes, hash)
    }

    /// Where the code came from on two loads in a row.
    fn origins(
        sandbox: &Sandbox,
        cache: &ModuleCache,
        bytes: &[u8],
        hash: &blake3::Hash,
    ) -> [Origin; 2] {
        [(); 2].map(|()| {
            cache
                .get_or_compile(sandbox.engine(), bytes, hash)
                .unwrap()
                .1
        })
    }

    #[test]
    fn a_compiled_module_is_read_back_under_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let (sandbox, cache) = open_cache(dir.path(), [7; 32]);
        let (bytes, hash) = module();
        assert_eq!(
            origins(&sandbox, &cache, &bytes, &hash),
            [Origin::Compiled, Origin::Cached]
        );
    }

    #[test]
    fn an_entry_whose_mac_does_not_match_is_refused_and_recompiled() {
        let (dir, sandbox, cache, bytes, hash) = compiled();
        let entry = cache.entry(&hash);

        // Another agent's key: its entries are not this one's.
        let (other_sandbox, other) = open_cache(dir.path(), [8; 32]);
        assert_eq!(
            other
                .read(other_sandbox.engine(), &entry, &hash)
                .unwrap_err(),
            "its MAC does not match this agent's key (forged, copied from elsewhere, another \
             module's code, or damaged); its code was not executed"
        );
        // One flipped payload byte under the right key.
        let mut data = fs::read(&entry).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        fs::write(&entry, &data).unwrap();
        assert!(
            cache
                .read(sandbox.engine(), &entry, &hash)
                .unwrap_err()
                .contains("MAC")
        );
        // Torn.
        fs::write(&entry, &data[..10]).unwrap();
        assert!(
            cache
                .read(sandbox.engine(), &entry, &hash)
                .unwrap_err()
                .contains("torn")
        );
        // Refused entries are replaced by a fresh compile, which then reads back.
        assert_eq!(
            origins(&sandbox, &cache, &bytes, &hash),
            [Origin::Compiled, Origin::Cached]
        );
    }

    #[test]
    fn another_modules_entry_is_refused() {
        let (_dir, sandbox, cache, _, hash) = compiled();
        let other = test_module::rule(&test_module::manifest("other"), &[]);
        let other_hash = blake3::hash(&other);
        // An entry copied over another module's name: the MAC binds it to its own module.
        fs::copy(cache.entry(&hash), cache.entry(&other_hash)).unwrap();
        let err = cache
            .read(sandbox.engine(), &cache.entry(&other_hash), &other_hash)
            .unwrap_err();
        assert!(err.contains("MAC"), "{err}");
    }
}
