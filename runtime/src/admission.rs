//! Whether a module in the rules directory may be loaded at all, before it is compiled: the
//! directory and the file pass strict modes ([`crate::trust`]), and, when `--trusted-key` is
//! given, the module carries a valid signature by one of those keys ([`crate::signing`]).

use crate::signing::{Signed, Signers};
use crate::trust;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// The rules directory's admission policy.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    signers: Option<Arc<Signers>>,
}

/// What [`Admission::judge`] decided about one module file.
pub struct Verdict {
    /// Changes whenever anything the decision rests on changes (the content, the file's owner
    /// and mode, its signature), so an unchanged file is not judged and reported again, and a
    /// fixed mode or a new signature alone is noticed.
    pub key: blake3::Hash,
    /// Whether the module may be compiled (with what its signature says it is, when signatures
    /// are required), or why not.
    pub result: Result<Option<Signed>, String>,
}

impl Admission {
    /// Strict modes, and signatures by `signers` when given.
    pub fn new(signers: Option<Arc<Signers>>) -> Admission {
        Admission { signers }
    }

    /// Checks the rules directory itself: a directory that others can write is not loaded from.
    pub fn check_dir(&self, dir: &Path) -> std::io::Result<()> {
        trust::check_dir(dir, "rules directory")?;
        Ok(())
    }

    /// Judges the module at `path` whose content, as read once, is `bytes` (blake3 `hash`); the
    /// caller compiles exactly these bytes when the verdict allows it.
    pub fn judge(&self, path: &Path, bytes: &[u8], hash: &blake3::Hash) -> Verdict {
        let mut key = blake3::Hasher::new();
        key.update(hash.as_bytes());
        if let Ok(meta) = std::fs::metadata(path) {
            key.update(&meta.uid().to_le_bytes())
                .update(&meta.mode().to_le_bytes());
        }
        let signature = self.signers.as_ref().map(|_| Signers::read_signature(path));
        if let Some(text) = &signature {
            key.update(text.as_deref().unwrap_or("").as_bytes());
        }
        let result = trust::check_file(path, "rule module")
            .map_err(|err| err.0)
            .and_then(|()| match (&self.signers, &signature) {
                (Some(signers), Some(text)) => {
                    signers.verify(path, bytes, text.as_deref()).map(Some)
                }
                _ => Ok(None),
            });
        Verdict {
            key: key.finalize(),
            result,
        }
    }
}
