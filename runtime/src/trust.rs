//! Strict modes: the agent runs as root, so a file or directory that decides what it runs or what
//! it knows (the rules directory and its modules, the state directory, the compiled-module cache
//! and its key, trusted signing keys) is accepted only if nobody but root, or the agent's own
//! user, can change it. Like sshd's `StrictModes`:
//!
//! - the path is resolved (links followed) and every component is checked, from `/` down;
//! - each must be owned by root or the agent's effective user;
//! - the directory or file itself must not be writable by group or others;
//! - a directory above it may be writable by others only with the sticky bit (as `/tmp` is),
//!   which keeps them from renaming or removing what they do not own.
//!
//! Once every component passes, only root (or the agent's user) can change what the path leads
//! to, so reading it afterwards by path cannot be redirected by anyone else.
//!
//! One exception: a component on a read-only mount cannot be written through that mount whatever
//! its mode bits say. Kubernetes mounts ConfigMap volumes read-only with mode 0777 directories;
//! what is behind such a mount on the host is the host's to protect (docs/threat-model.md).

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a path is not trusted; the message names the path, its owner or mode, and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotTrusted(pub String);

impl fmt::Display for NotTrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotTrusted {}

impl From<NotTrusted> for io::Error {
    fn from(err: NotTrusted) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, err.0)
    }
}

/// The user the agent runs as.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether files owned by `uid` may decide what the agent does.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// Whether `path` is on a read-only mount, where nobody can write it through this path.
fn on_read_only_mount(path: &Path) -> bool {
    rustix::fs::statvfs(path)
        .is_ok_and(|stat| stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// Who besides the owner may write, in words; `None` when nobody may.
fn loose_writers(mode: u32) -> Option<&'static str> {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => None,
        (true, false) => Some("group"),
        (false, true) => Some("others"),
        (true, true) => Some("group and others"),
    }
}

/// Checks `path` itself (already resolved): owner, and not writable by group or others.
/// `shown` is the path as the operator gave it.
fn check_target(path: &Path, meta: &Metadata, what: &str, shown: &Path) -> Result<(), NotTrusted> {
    let named = if path == shown {
        format!("{what} {}", shown.display())
    } else {
        format!(
            "{what} {} (resolved to {})",
            shown.display(),
            path.display()
        )
    };
    if !trusted_owner(meta.uid()) {
        return Err(NotTrusted(format!(
            "{named} is owned by uid {}, not by root or the agent's user (uid {}); picket \
             refuses it, since its owner could make the agent run or believe anything \
             (chown root {})",
            meta.uid(),
            euid(),
            path.display()
        )));
    }
    if let Some(writers) = loose_writers(meta.mode())
        && !on_read_only_mount(path)
    {
        return Err(NotTrusted(format!(
            "{named} is writable by {writers} (mode {:04o}); picket refuses it, since whoever \
             can write it could make the agent run or believe anything (chmod go-w {})",
            meta.mode() & 0o7777,
            path.display()
        )));
    }
    Ok(())
}

/// Checks every directory above `path` (already resolved): owned by root or the agent's user,
/// and not writable by group or others unless sticky.
fn check_ancestors(path: &Path, what: &str, shown: &Path) -> Result<(), NotTrusted> {
    for dir in path.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(|err| {
            NotTrusted(format!(
                "{what} {}: cannot check {} above it: {err}",
                shown.display(),
                dir.display()
            ))
        })?;
        if !trusted_owner(meta.uid()) {
            return Err(NotTrusted(format!(
                "{what} {}: the directory {} above it is owned by uid {}, who could replace \
                 what is below it; picket refuses it (move it under a directory owned by root)",
                shown.display(),
                dir.display(),
                meta.uid()
            )));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if let Some(writers) = loose_writers(meta.mode())
            && !sticky
            && !on_read_only_mount(dir)
        {
            return Err(NotTrusted(format!(
                "{what} {}: the directory {} above it is writable by {writers} without the \
                 sticky bit (mode {:04o}), so anyone could replace what is below it; picket \
                 refuses it (chmod go-w {}, or chmod +t)",
                shown.display(),
                dir.display(),
                meta.mode() & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Resolves `path` (links followed) and checks what it leads to (a directory when `dir`, else a
/// regular file) and every directory above that. Returns the resolved path.
fn check_path(path: &Path, what: &str, dir: bool) -> Result<PathBuf, NotTrusted> {
    let resolved = fs::canonicalize(path)
        .map_err(|err| NotTrusted(format!("{what} {}: {err}", path.display())))?;
    let meta = fs::metadata(&resolved)
        .map_err(|err| NotTrusted(format!("{what} {}: {err}", path.display())))?;
    let (kind_ok, kind) = if dir {
        (meta.is_dir(), "a directory")
    } else {
        (meta.is_file(), "a regular file")
    };
    if !kind_ok {
        return Err(NotTrusted(format!(
            "{what} {} is not {kind}",
            path.display()
        )));
    }
    check_target(&resolved, &meta, what, path)?;
    check_ancestors(&resolved, what, path)?;
    Ok(resolved)
}

/// Checks a directory that decides what the agent runs or knows (see [`check_path`]).
pub fn check_dir(path: &Path, what: &str) -> Result<PathBuf, NotTrusted> {
    check_path(path, what, true)
}

/// Creates `path` (mode 0700, with any missing parents) unless it exists, then checks it with
/// [`check_dir`].
pub fn ensure_dir(path: &Path, what: &str) -> Result<PathBuf, NotTrusted> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|err| {
            NotTrusted(format!(
                "{what} {} cannot be created: {err}",
                path.display()
            ))
        })?;
    check_dir(path, what)
}

/// Checks a file that decides what the agent runs (a rule module, a trusted key), following
/// links (a ConfigMap volume's entries are links through `..data`): the file it resolves to and
/// every directory above that.
pub fn check_file(path: &Path, what: &str) -> Result<(), NotTrusted> {
    check_path(path, what, false).map(drop)
}

/// Checks a file the agent keeps in a directory already checked with [`check_dir`] (the state
/// database): it must not be a link (nothing in there is meant to point elsewhere), and when it
/// exists it must be a regular file owned by root or the agent's user, writable only by them.
pub fn check_own_file(path: &Path, what: &str) -> Result<(), NotTrusted> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(NotTrusted(format!("{what} {}: {err}", path.display()))),
    };
    if meta.file_type().is_symlink() {
        return Err(NotTrusted(format!(
            "{what} {} is a symbolic link; picket does not follow links there, since a link \
             could send it to a file someone else controls",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(NotTrusted(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    check_target(path, &meta, what, path)
}

/// The directories and files under `--state` that the agent trusts: the state directory, the
/// state database in it and the compiled-module cache directory (created 0700 when missing).
pub fn check_state_dir(state_dir: &Path) -> Result<(), NotTrusted> {
    ensure_dir(state_dir, "state directory")?;
    check_own_file(&state_dir.join(crate::store::STATE_FILE), "state file")?;
    ensure_dir(
        &state_dir.join(crate::module_cache::CACHE_DIR),
        "compiled-module cache directory",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn loose_modes_are_refused_with_the_path_and_mode() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("rules");
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        assert!(check_dir(&dir, "rules directory").is_ok());

        chmod(&dir, 0o777);
        let err = check_dir(&dir, "rules directory").unwrap_err().0;
        assert!(
            err.contains("writable by group and others (mode 0777)"),
            "{err}"
        );
        assert!(err.contains(&dir.display().to_string()), "{err}");
        chmod(&dir, 0o775);
        let err = check_dir(&dir, "rules directory").unwrap_err().0;
        assert!(err.contains("writable by group (mode 0775)"), "{err}");
        // Sticky does not excuse the directory itself.
        chmod(&dir, 0o1777);
        assert!(check_dir(&dir, "rules directory").is_err());

        chmod(&dir, 0o755);
        chmod(top.path(), 0o777);
        let err = check_dir(&dir, "rules directory").unwrap_err().0;
        assert!(
            err.contains("above it is writable by group and others without the sticky bit"),
            "{err}"
        );
        // A sticky parent, like /tmp, is fine.
        chmod(top.path(), 0o1777);
        assert!(check_dir(&dir, "rules directory").is_ok());
        chmod(top.path(), 0o700);
    }

    #[test]
    fn files_are_checked_through_links_and_own_files_must_not_be_links() {
        let top = tempfile::tempdir().unwrap();
        let file = top.path().join("rule.wasm");
        fs::write(&file, b"x").unwrap();
        chmod(&file, 0o644);
        assert!(check_file(&file, "rule module").is_ok());
        chmod(&file, 0o666);
        let err = check_file(&file, "rule module").unwrap_err().0;
        assert!(err.contains("(mode 0666)"), "{err}");

        let link = top.path().join("link.wasm");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = check_file(&link, "rule module").unwrap_err().0;
        assert!(err.contains("resolved to"), "{err}");
        chmod(&file, 0o600);
        assert!(check_file(&link, "rule module").is_ok());
        assert!(check_own_file(&file, "state file").is_ok());
        assert!(check_own_file(&link, "state file").is_err());
        assert!(check_own_file(&top.path().join("absent"), "state file").is_ok());
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("a/b");
        ensure_dir(&dir, "state directory").unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }
}
