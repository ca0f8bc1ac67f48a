//! Signed rules: with `--trusted-key FILE` (minisign public keys), a module loads only with a
//! valid minisign signature by one of those keys in `MODULE.wasm.minisig` beside it.
//!
//! The signature is checked over the very bytes that are then compiled (the caller reads the
//! module once and hands the same buffer to both), so nothing can change the module between
//! the check and the load. Only pre-hashed signatures (minisign's default since 0.8) are
//! accepted.
//!
//! The signature also binds what the module is: its trusted comment (signed with it) must read
//! `picket-rule file:<file name> id:<rule id> version:<number>` ([`Signed`]). The file name is
//! checked here, the rule id against the module's manifest once it is compiled, and the version
//! against the highest one loaded for that rule id, so a signed module renamed, or an older
//! signed one put back, is refused. A signature without that comment (minisign's default one)
//! is refused, saying how to sign.
//!
//! The key and signature files are opened as [`crate::safe_file`] opens what others control:
//! without blocking (a FIFO as `MODULE.wasm.minisig` is refused at once, not waited on).

use crate::safe_file::{self, Refused};
use minisign_verify::{Error as MinisignError, PublicKey, Signature};
use std::fmt;
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

/// Reads a small text file: a regular file of at most [`MAX_SIGNING_FILE`] bytes, opened
/// without blocking.
fn read_small(path: &Path) -> Result<String, Refused> {
    let bytes = safe_file::read_regular(path, MAX_SIGNING_FILE)?;
    String::from_utf8(bytes).map_err(|_| {
        Refused::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })
}

/// What a module's signature says it is (its trusted comment), once verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The rule id the module's manifest must declare.
    pub id: String,
    /// The signer's version number: a module older than one already loaded for its rule id is
    /// refused.
    pub version: u64,
}

/// The start of the trusted comment of a picket rule signature.
pub const TRUSTED_COMMENT_PREFIX: &str = "picket-rule";

/// The trusted comment to sign `file` (a file name) as rule `id`, version `version`:
/// `minisign -S -t "$(that)" -m FILE`.
pub fn trusted_comment(file: &str, id: &str, version: u64) -> String {
    format!("{TRUSTED_COMMENT_PREFIX} file:{file} id:{id} version:{version}")
}

/// Parses a trusted comment made by [`trusted_comment`]: (file, id, version).
fn parse_trusted_comment(comment: &str) -> Option<(&str, &str, u64)> {
    let mut words = comment.split_ascii_whitespace();
    if words.next() != Some(TRUSTED_COMMENT_PREFIX) {
        return None;
    }
    let file = words.next()?.strip_prefix("file:")?;
    let id = words.next()?.strip_prefix("id:")?;
    let version = words.next()?.strip_prefix("version:")?.parse().ok()?;
    if words.next().is_some() || file.is_empty() || id.is_empty() {
        return None;
    }
    Some((file, id, version))
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
                .map_err(|err| anyhow::anyhow!("trusted key {} {err}", file.display()))?;
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

    /// The signature file of `module` as it is now (read without blocking; why not, when it
    /// cannot be), also for noticing that a signature changed while the module did not.
    pub fn read_signature(module: &Path) -> Result<String, Refused> {
        read_small(&signature_path(module))
    }

    /// Checks that `signature` (the text of `MODULE.wasm.minisig`, or why it could not be read)
    /// is a valid signature of `bytes` by one of the trusted keys, made for this file name.
    /// Returns the rule id and version it was signed for; the error says why not.
    pub fn verify(
        &self,
        module: &Path,
        bytes: &[u8],
        signature: Result<&str, &Refused>,
    ) -> Result<Signed, String> {
        let sig_path = signature_path(module);
        let text = match signature {
            Ok(text) => text,
            Err(Refused::Missing | Refused::BrokenLink) => {
                return Err(format!(
                    "is not signed ({} is missing), and --trusted-key requires a signature by a \
                     trusted key",
                    sig_path.display()
                ));
            }
            Err(why) => {
                return Err(format!(
                    "its signature {} {why}; --trusted-key requires a signature by a trusted key",
                    sig_path.display()
                ));
            }
        };
        let signature = Signature::decode(text)
            .map_err(|err| format!("{} is not a minisign signature: {err}", sig_path.display()))?;
        let mut other_key = true;
        for (_, key) in &self.keys {
            match key.verify(bytes, &signature, false) {
                Ok(()) => return signed_for(module, &sig_path, signature.trusted_comment()),
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

/// What a verified signature's trusted comment says the module is, if it was signed for
/// `module`'s file name.
fn signed_for(module: &Path, sig_path: &Path, comment: &str) -> Result<Signed, String> {
    let file = module
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let how = format!(
        "sign it with minisign -S -t \"{TRUSTED_COMMENT_PREFIX} file:{file} id:RULE-ID \
         version:N\" -m {file}"
    );
    let Some((signed_file, id, version)) = parse_trusted_comment(comment) else {
        return Err(format!(
            "has a valid signature ({}) whose trusted comment does not say which rule it is for \
             (an old-style signature, trusted comment \"{}\"); {how}",
            sig_path.display(),
            crate::text::escape_controls(comment)
        ));
    };
    if signed_file != file {
        return Err(format!(
            "has a signature ({}) made for the file {}, not {file} (a signed module renamed or \
             copied?); {how}",
            sig_path.display(),
            crate::text::escape_controls(signed_file)
        ));
    }
    Ok(Signed {
        id: id.to_owned(),
        version,
    })
}
