//! Signed rules: with `--trusted-key FILE` (minisign public keys), a module loads only with a
//! valid minisign signature by one of those keys in `MODULE.wasm.minisig` beside it.
//!
//! The signature is checked over the very bytes that are then compiled (the caller reads the
//! module once and hands the same buffer to both), so nothing can change the module between
//! the check and the load. Only pre-hashed signatures (minisign's default since 0.8) are
//! accepted.

use minisign_verify::{Error as MinisignError, PublicKey, Signature};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest public key or signature file read (both are a few hundred bytes).
const MAX_SIGNING_FILE: u64 = 16 << 10;

/// The public keys a module's signature must verify against.
pub struct Signers {
    keys: Vec<(PathBuf, PublicKey)>,
}

impl fmt::Debug for Signers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(path, _)| path))
            .finish()
    }
}

/// Reads a small text file, at most [`MAX_SIGNING_FILE`] bytes.
fn read_small(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_SIGNING_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Where the signature of `module` is: `MODULE.wasm.minisig` beside it.
pub fn signature_path(module: &Path) -> PathBuf {
    let mut path = module.as_os_str().to_owned();
    path.push(".minisig");
    PathBuf::from(path)
}

impl Signers {
    /// Reads the minisign public keys in `files`; `None` when there are none (signatures are
    /// then not required). A key file is trusted only under strict modes (whoever can change it
    /// decides which rules run).
    pub fn load(files: &[PathBuf]) -> anyhow::Result<Option<Signers>> {
        if files.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(files.len());
        for file in files {
            crate::trust::check_file(file, "trusted key")?;
            let text = read_small(file)
                .map_err(|err| anyhow::anyhow!("trusted key {}: {err}", file.display()))?;
            let key = PublicKey::decode(&text).map_err(|err| {
                anyhow::anyhow!(
                    "trusted key {} is not a minisign public key: {err}",
                    file.display()
                )
            })?;
            keys.push((file.clone(), key));
        }
        Ok(Some(Signers { keys }))
    }

    /// The signature file of `module` as it is now (`None` when it cannot be read), for
    /// noticing that a signature changed while the module did not.
    pub fn read_signature(module: &Path) -> Option<String> {
        read_small(&signature_path(module)).ok()
    }

    /// Checks that `signature` (the text of `MODULE.wasm.minisig`, `None` when it is missing)
    /// is a valid signature of `bytes` by one of the trusted keys. The error says why not.
    pub fn verify(
        &self,
        module: &Path,
        bytes: &[u8],
        signature: Option<&str>,
    ) -> Result<(), String> {
        let sig_path = signature_path(module);
        let Some(text) = signature else {
            return Err(format!(
                "is not signed ({} is missing or unreadable), and --trusted-key requires a \
                 signature by a trusted key",
                sig_path.display()
            ));
        };
        let signature = Signature::decode(text)
            .map_err(|err| format!("{} is not a minisign signature: {err}", sig_path.display()))?;
        let mut other_key = true;
        for (_, key) in &self.keys {
            match key.verify(bytes, &signature, false) {
                Ok(()) => return Ok(()),
                Err(MinisignError::UnexpectedKeyId) => {}
                Err(_) => other_key = false,
            }
        }
        Err(if other_key {
            format!(
                "is signed ({}) by a key that is not one of the --trusted-key keys",
                sig_path.display()
            )
        } else {
            format!(
                "has a signature ({}) by a trusted key that does not match its content (signed \
                 another version of the module, or a legacy signature: sign with minisign -S)",
                sig_path.display()
            )
        })
    }
}
