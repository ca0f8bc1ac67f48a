//! User-space process cache: fed by exec/fork/exit events and a `/proc` scan at start, so that an
//! open event from a process that has already exited still gets its arguments and container.

use std::{collections::HashMap, fs, path::Path};

/// What is known of a process besides what each open event carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cached {
    pub exe: String,
    pub args: Vec<String>,
    pub container_id: Option<String>,
}

/// Processes by tgid.
#[derive(Debug, Default)]
pub(crate) struct ProcessCache {
    procs: HashMap<u32, Cached>,
}

impl ProcessCache {
    /// Reads every process in `proc_root` (normally `/proc`).
    pub(crate) fn scan(proc_root: &Path) -> ProcessCache {
        let mut cache = ProcessCache::default();
        let Ok(entries) = fs::read_dir(proc_root) else {
            return cache;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let exe = fs::read_link(dir.join("exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let args = fs::read(dir.join("cmdline"))
                .map(|raw| split_args(&raw))
                .unwrap_or_default();
            let container_id = fs::read_to_string(dir.join("cgroup"))
                .ok()
                .and_then(|text| container_id_from_proc_cgroup(&text));
            cache.procs.insert(
                pid,
                Cached {
                    exe,
                    args,
                    container_id,
                },
            );
        }
        cache
    }

    pub(crate) fn exec(&mut self, tgid: u32, entry: Cached) {
        self.procs.insert(tgid, entry);
    }

    /// A new process starts as a copy of its parent.
    pub(crate) fn fork(&mut self, parent: u32, child: u32) {
        if let Some(entry) = self.procs.get(&parent).cloned() {
            self.procs.insert(child, entry);
        }
    }

    pub(crate) fn exit(&mut self, tgid: u32) {
        self.procs.remove(&tgid);
    }

    pub(crate) fn get(&self, tgid: u32) -> Option<&Cached> {
        self.procs.get(&tgid)
    }

    /// Processes known to run in `container` (`None`: the host's).
    pub(crate) fn pids_in<'a>(
        &'a self,
        container: Option<&'a str>,
    ) -> impl Iterator<Item = u32> + 'a {
        self.procs
            .iter()
            .filter(move |(_, c)| c.container_id.as_deref() == container)
            .map(|(&pid, _)| pid)
    }

    pub(crate) fn len(&self) -> usize {
        self.procs.len()
    }
}

/// Splits a NUL-separated argument block (`/proc/<pid>/cmdline`, or what the exec probe read).
pub(crate) fn split_args(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The container id in a cgroup leaf name: `cri-containerd-<id>.scope` (containerd, systemd
/// driver), `crio-<id>.scope` (CRI-O), `docker-<id>.scope` (Docker), or a bare `<id>` (cgroupfs
/// driver), where `<id>` is 64 lowercase hex digits.
pub fn container_id_from_cgroup(leaf: &str) -> Option<String> {
    let name = leaf.strip_suffix(".scope").unwrap_or(leaf);
    let id = ["cri-containerd-", "crio-", "docker-", "libpod-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    let is_id = id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    is_id.then(|| id.to_owned())
}

/// The container id of a whole cgroup path: its outermost component that names a container.
/// A container's own cgroup is made by its runtime; below it, a container with a writable
/// cgroupfs makes and names what it likes (even `cri-containerd-<another container's id>.scope`),
/// so a nested name never decides whose process it is.
pub fn container_id_from_cgroup_path(path: &str) -> Option<String> {
    path.split('/').find_map(container_id_from_cgroup)
}

/// The container id from `/proc/<pid>/cgroup`: the cgroup v2 line first, then any v1 hierarchy
/// (hybrid hosts put containers in the v1 trees only).
fn container_id_from_proc_cgroup(text: &str) -> Option<String> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_by_key(|line| !line.starts_with("0::"));
    lines.into_iter().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        container_id_from_cgroup_path(path)
    })
}

/// The container of the live process `pid`, from its whole cgroup path; `None` when
/// `/proc/<pid>/cgroup` cannot be read (the process is gone).
pub(crate) fn live_container_id(proc_root: &Path, pid: u32) -> Option<Option<String>> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    Some(container_id_from_proc_cgroup(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_ids_from_cgroup_names() {
        for leaf in [
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("docker-{ID}.scope"),
            ID.to_owned(),
        ] {
            assert_eq!(
                container_id_from_cgroup(&leaf).as_deref(),
                Some(ID),
                "{leaf}"
            );
        }
        for leaf in [
            "",
            "/",
            "session-1.scope",
            "crio-conmon-0123.scope",
            &format!("crio-{}.scope", &ID[1..]),
            &ID.to_uppercase(),
        ] {
            assert_eq!(container_id_from_cgroup(leaf), None, "{leaf}");
        }
    }

    #[test]
    fn container_id_from_proc_cgroup_prefers_v2() {
        let text =
            format!("4:memory:/kubepods/pod1/{ID}\n0::/kubepods.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(container_id_from_proc_cgroup(&text).as_deref(), Some(ID));
        let hybrid = format!("4:memory:/docker/{ID}\n0::/\n");
        assert_eq!(container_id_from_proc_cgroup(&hybrid).as_deref(), Some(ID));
        assert_eq!(container_id_from_proc_cgroup("0::/user.slice\n"), None);
    }

    /// Issue 21 item 5: a child cgroup a container makes under its own, named after another
    /// container, does not make its processes that container's.
    #[test]
    fn a_nested_cgroup_named_after_another_container_keeps_its_own_container() {
        let victim = ID;
        let attacker = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
        let own = format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{attacker}.scope");
        let text = format!("0::{own}/cri-containerd-{victim}.scope\n");
        assert_eq!(
            container_id_from_proc_cgroup(&text).as_deref(),
            Some(attacker)
        );
        let text = format!("0::{own}/innocent\n");
        assert_eq!(
            container_id_from_proc_cgroup(&text).as_deref(),
            Some(attacker)
        );
        assert_eq!(
            container_id_from_cgroup_path(&format!("{own}/{victim}")).as_deref(),
            Some(attacker)
        );
    }

    #[test]
    fn splits_args() {
        assert_eq!(split_args(b"cat\0/x y\0"), vec!["cat", "/x y"]);
        assert_eq!(split_args(b"cat"), vec!["cat"]);
        assert_eq!(split_args(b""), Vec::<String>::new());
        assert_eq!(split_args(b"a\0\0b\0"), vec!["a", "", "b"]);
    }

    #[test]
    fn cache_follows_fork_exec_exit() {
        let mut cache = ProcessCache::default();
        let entry = Cached {
            exe: "/bin/sh".into(),
            args: vec!["sh".into()],
            container_id: None,
        };
        cache.exec(10, entry.clone());
        cache.fork(10, 11);
        assert_eq!(cache.get(11), Some(&entry));
        cache.exit(10);
        assert_eq!(cache.get(10), None);
        assert_eq!(cache.get(11), Some(&entry));
        cache.fork(99, 100);
        assert_eq!(cache.get(100), None);
    }
}
