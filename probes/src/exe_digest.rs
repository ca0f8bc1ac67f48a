//! The content digest of each executable a process exec's, so that a rule can tell a program
//! from another file put at its path.
//!
//! The kernel reads, at the exec, which file was exec'd and its change time and size
//! ([`ExeId`]); a file replaced or written over has another inode or another change time (no
//! system call sets a change time back). Hashing a program at every exec would cost far more
//! than the rest of the event path, so digests are cached under that key and a program is read
//! once per version (`BENCHMARKS.md`: a 100 MB program's first exec against a cached one).
//!
//! The bytes are read through a live process that can see the file: `/proc/PID/exe` of the
//! process itself, else `/proc/PID/root/<exe path>` of an ancestor or of another process of the
//! same container (a 2 ms process may be gone before its exec record is read). Whatever is
//! opened is hashed only when its `fstat` shows the very identity the kernel reported, so a file
//! swapped at the path in between is never taken for the exec'd one. When nothing shows it, the
//! digest is unknown (`None`), never guessed.

use std::{
    collections::HashMap,
    fs::File,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use picket_probes_common::ExeId;
use sha2::{Digest as _, Sha256};

use crate::identity::{file_id_of, kernel_dev};

/// Digests kept; past this the cache starts over (a node runs far fewer program versions).
const CACHE_ENTRIES: usize = 16_384;
/// Larger executables are not hashed (their digest is unknown): reading one would hold up the
/// event path for seconds.
const MAX_HASHED_BYTES: u64 = 1 << 30;

/// Content digests of executables by identity.
pub(crate) struct ExeDigests {
    cache: HashMap<ExeId, Arc<str>>,
    proc: PathBuf,
}

impl ExeDigests {
    /// Reads executables through `proc` (the host's procfs).
    pub(crate) fn new(proc: &Path) -> ExeDigests {
        ExeDigests {
            cache: HashMap::new(),
            proc: proc.to_owned(),
        }
    }

    /// The digest of the executable `id`, exec'd by `pid` from `exe` (its path in the process's
    /// root); `peers` are other live processes that may see the same file at the same path
    /// (ancestors, the container's processes), tried in order after `pid`.
    pub(crate) fn digest(
        &mut self,
        id: ExeId,
        exe: &str,
        pid: u32,
        peers: impl IntoIterator<Item = u32>,
    ) -> Option<Arc<str>> {
        if id.ino == 0 {
            return None;
        }
        if let Some(digest) = self.cache.get(&id) {
            return Some(digest.clone());
        }
        let relative = exe.trim_start_matches('/');
        let own = self.proc.join(pid.to_string()).join("exe");
        let candidates = std::iter::once(own).chain(
            peers
                .into_iter()
                .map(|peer| self.proc.join(peer.to_string()).join("root").join(relative)),
        );
        let digest: Arc<str> = candidates
            .take(8)
            .find_map(|path| hash_if_same(&path, &id))?
            .into();
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(id, digest.clone());
        Some(digest)
    }
}

/// `sha256:<hex>` of the file at `path` when it is the file `id` names, at the same change time
/// and size.
fn hash_if_same(path: &Path, id: &ExeId) -> Option<String> {
    // Non-blocking: a FIFO put at the path must not hold up the agent (it fails the check below).
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    let same = meta.is_file()
        && kernel_dev(&file_id_of(&meta)) == Some(id.dev)
        && meta.ino() == id.ino
        && meta.ctime() == id.ctime_sec
        && meta.ctime_nsec() == i64::from(id.ctime_nsec)
        && meta.size() == id.size as u64
        && meta.size() <= MAX_HASHED_BYTES;
    if !same {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    // Written to while being read: the bytes may mix two versions.
    let after = file.metadata().ok()?;
    if after.ctime() != meta.ctime() || after.ctime_nsec() != meta.ctime_nsec() {
        return None;
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("sha256:{hex}"))
}

/// The identity `fstat` gives for `meta`, as the kernel would report it.
#[cfg(test)]
pub(crate) fn exe_id_of(meta: &std::fs::Metadata) -> ExeId {
    ExeId {
        ino: meta.ino(),
        dev: kernel_dev(&file_id_of(meta)).expect("a kernel device number"),
        ctime_nsec: meta.ctime_nsec() as u32,
        ctime_sec: meta.ctime(),
        size: meta.size() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_cached_by_identity_and_a_rewrite_is_another_one() {
        let dir = std::env::temp_dir().join(format!("picket-exe-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("prog");
        std::fs::write(&program, b"abc").unwrap();
        // A fake procfs: /proc/1/exe is the program, /proc/2/root is "/" of a peer.
        let proc = dir.join("proc");
        std::fs::create_dir_all(proc.join("1")).unwrap();
        std::fs::create_dir_all(proc.join("2")).unwrap();
        std::os::unix::fs::symlink(&program, proc.join("1/exe")).unwrap();
        std::os::unix::fs::symlink("/", proc.join("2/root")).unwrap();
        let id = exe_id_of(&std::fs::metadata(&program).unwrap());
        let mut digests = ExeDigests::new(&proc);
        let abc = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(digests.digest(id, "/nowhere", 1, []).as_deref(), Some(abc));
        // Cached: found even when nothing shows the file any more.
        std::fs::remove_file(proc.join("1/exe")).unwrap();
        assert_eq!(digests.digest(id, "/nowhere", 1, []).as_deref(), Some(abc));
        // Written over in place: same inode, new change time; reached through a peer's root.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&program, b"abd").unwrap();
        let rewritten = exe_id_of(&std::fs::metadata(&program).unwrap());
        assert_eq!(rewritten.ino, id.ino);
        assert_ne!(rewritten, id);
        let path = program.to_str().unwrap();
        let new = digests.digest(rewritten, path, 1, [2]).unwrap();
        assert!(new.starts_with("sha256:") && *new != *abc, "{new}");
        // The old identity no longer matches the file: only the cache knew it.
        assert_eq!(ExeDigests::new(&proc).digest(id, path, 1, [2]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
