//! Names for cgroup ids: the kernel counts lost events by cgroup (v2) id; the agent reports the
//! cgroup's path and, for a container, its id.
//!
//! A cgroup v2 id is the inode number of the cgroup's directory in the cgroup2 filesystem, so the
//! ids are found by walking that tree (where it is mounted: `/sys/fs/cgroup` on unified hosts,
//! `/sys/fs/cgroup/unified` on hybrid ones) and reading each directory's inode number.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::process::container_id_from_cgroup_path;

/// Events lost in one cgroup since the probes were loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLoss {
    /// The cgroup (v2) id, as `bpf_get_current_cgroup_id()` gives it.
    pub cgroup_id: u64,
    /// Events lost while a task of this cgroup was current.
    pub events: u64,
    /// The cgroup's path in the cgroup2 hierarchy (`/kubepods.slice/...`), when found.
    pub path: Option<String>,
    /// The container id of the path (its outermost name that names a container: a container's
    /// child cgroup cannot pass for another container), when it is in a container's cgroup.
    pub container_id: Option<String>,
}

/// Most directories read in one walk of the cgroup tree.
const MAX_WALK: usize = 100_000;
/// A walk that missed an id is not repeated sooner than this.
const REWALK_AFTER: Duration = Duration::from_secs(1);

/// Cgroup paths by id, read lazily from the cgroup2 mount.
#[derive(Debug, Default)]
pub(crate) struct CgroupPaths {
    paths: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl CgroupPaths {
    /// Fills in the path and container id of each loss it can.
    pub(crate) fn describe(&mut self, losses: &mut [CgroupLoss]) {
        let unknown = losses
            .iter()
            .any(|l| !self.paths.contains_key(&l.cgroup_id));
        if unknown && self.last_walk.is_none_or(|t| t.elapsed() >= REWALK_AFTER) {
            self.last_walk = Some(Instant::now());
            match cgroup2_mount() {
                Some((mount, root)) => self.paths = walk(&mount, &root),
                None => tracing::debug!("no cgroup2 mount: lost events are reported by cgroup id"),
            }
        }
        for loss in losses {
            loss.path = self.paths.get(&loss.cgroup_id).cloned();
            loss.container_id = loss.path.as_deref().and_then(container_id_from_cgroup_path);
        }
    }
}

/// Where the cgroup2 filesystem is mounted, and which of its directories is the mount's root
/// (not `/` inside a cgroup namespace), from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        if rest.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = fields.split(' ');
        let root = unescape(fields.nth(3)?);
        let mount = unescape(fields.next()?);
        Some((PathBuf::from(mount), root))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every cgroup directory under `mount` by inode number, as paths under `root`.
fn walk(mount: &Path, root: &str) -> HashMap<u64, String> {
    let mut paths = HashMap::new();
    let mut pending = vec![(mount.to_path_buf(), String::new())];
    let prefix = root.trim_end_matches('/');
    while let Some((dir, relative)) = pending.pop() {
        if paths.len() >= MAX_WALK {
            tracing::debug!("cgroup tree larger than {MAX_WALK} directories: walk cut short");
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        let shown = if relative.is_empty() {
            if prefix.is_empty() {
                "/".to_owned()
            } else {
                prefix.to_owned()
            }
        } else {
            format!("{prefix}{relative}")
        };
        paths.insert(meta.ino(), shown);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                pending.push((entry.path(), format!("{relative}/{name}")));
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/cgroup\040x"), "/sys/fs/cgroup x");
        assert_eq!(unescape(r"/a\\b"), r"/a\\b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }

    /// A directory removed when dropped.
    struct Dir(PathBuf);
    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_walk_maps_directory_inodes_to_paths() {
        let dir = Dir(std::env::temp_dir().join(format!("picket-cgroups-{}", std::process::id())));
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let leaf = dir
            .path()
            .join(format!("kubepods/cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&leaf).unwrap();
        let paths = walk(dir.path(), "/");
        let ino = std::fs::metadata(&leaf).unwrap().ino();
        let path = &paths[&ino];
        assert_eq!(path, &format!("/kubepods/cri-containerd-{id}.scope"));
        assert_eq!(container_id_from_cgroup_path(path).as_deref(), Some(id));
        let root = std::fs::metadata(dir.path()).unwrap().ino();
        assert_eq!(paths[&root], "/");
        assert_eq!(
            walk(dir.path(), "/ns")[&ino],
            format!("/ns/kubepods/cri-containerd-{id}.scope")
        );
    }
}
