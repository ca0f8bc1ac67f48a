//! User-space process cache: fed by exec/fork/exit events and a `/proc` scan at start, so that an
//! open event from a process that has already exited still gets its arguments and container.

use std::{collections::HashMap, fs, path::Path, sync::Arc};

use picket_probes_common::ExeId;

use crate::event::Ancestor;

/// Ancestors kept per process: the parent and three more. Enough to see what started a shell
/// (`runc init`, `sshd`, the app) and what started that; each one costs an event a few hundred
/// bytes, and a chain kept alive only by its descendants cannot grow a process's memory beyond
/// this.
pub const LINEAGE_DEPTH: usize = 4;

/// What is known of a process besides what each open event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cached {
    /// This process as its children will remember it (pid, executable, arguments, uid), shared
    /// with the entries of its descendants.
    pub me: Arc<Ancestor>,
    pub container_id: Option<String>,
    /// The executable's identity at its exec (`None` for a process only the `/proc` scan saw).
    pub exe_id: Option<ExeId>,
    /// The executable's content digest (`sha256:<hex>`), when it could be read.
    pub exe_digest: Option<Arc<str>>,
    /// Parent first, at most [`LINEAGE_DEPTH`]; each as it was when the child was forked, kept
    /// here (not looked up by pid) so that it stays right after the ancestor exits and its pid is
    /// reused.
    pub ancestors: Arc<[Arc<Ancestor>]>,
}

impl Cached {
    /// A process seen for the first time, without ancestors.
    pub(crate) fn new(pid: u32, exe: String, args: Vec<String>, uid: Option<u32>) -> Cached {
        Cached {
            me: Arc::new(Ancestor {
                pid,
                uid,
                exe,
                args,
            }),
            container_id: None,
            exe_id: None,
            exe_digest: None,
            ancestors: Arc::new([]),
        }
    }
}

/// Processes by tgid.
#[derive(Debug, Default)]
pub(crate) struct ProcessCache {
    procs: HashMap<u32, Cached>,
}

impl ProcessCache {
    /// Reads every process in `proc_root` (normally `/proc`), and links each to its parent's
    /// entry to give it its ancestors.
    pub(crate) fn scan(proc_root: &Path) -> ProcessCache {
        let mut cache = ProcessCache::default();
        let Ok(entries) = fs::read_dir(proc_root) else {
            return cache;
        };
        let mut parents = HashMap::new();
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
            let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<u32>().ok())
            };
            if let Some(ppid) = field("PPid:") {
                parents.insert(pid, ppid);
            }
            let mut cached = Cached::new(pid, exe, args, field("Uid:"));
            cached.container_id = fs::read_to_string(dir.join("cgroup"))
                .ok()
                .and_then(|text| container_id_from_proc_cgroup(&text));
            cache.procs.insert(pid, cached);
        }
        let chains: Vec<(u32, Arc<[Arc<Ancestor>]>)> = cache
            .procs
            .keys()
            .map(|&pid| {
                let mut chain = Vec::new();
                let mut at = pid;
                while chain.len() < LINEAGE_DEPTH {
                    let Some(parent) = parents.get(&at).and_then(|ppid| cache.procs.get(ppid))
                    else {
                        break;
                    };
                    chain.push(parent.me.clone());
                    at = parent.me.pid;
                }
                (pid, chain.into())
            })
            .collect();
        for (pid, chain) in chains {
            if let Some(entry) = cache.procs.get_mut(&pid) {
                entry.ancestors = chain;
            }
        }
        cache
    }

    /// A process exec'd: it keeps its ancestors (a fork, not an exec, makes a parent).
    pub(crate) fn exec(&mut self, tgid: u32, mut entry: Cached) {
        if let Some(before) = self.procs.get(&tgid) {
            entry.ancestors = before.ancestors.clone();
        }
        self.procs.insert(tgid, entry);
    }

    /// A new process starts as a copy of its parent, with the parent first in its ancestors.
    pub(crate) fn fork(&mut self, parent: u32, child: u32) {
        let Some(entry) = self.procs.get(&parent) else {
            return;
        };
        let ancestors: Arc<[Arc<Ancestor>]> = std::iter::once(entry.me.clone())
            .chain(entry.ancestors.iter().cloned())
            .take(LINEAGE_DEPTH)
            .collect();
        let me = Arc::new(Ancestor {
            pid: child,
            ..Ancestor::clone(&entry.me)
        });
        let copy = Cached {
            me,
            ancestors,
            ..entry.clone()
        };
        self.procs.insert(child, copy);
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
        let shell = Cached::new(10, "/bin/sh".into(), vec!["sh".into()], Some(0));
        cache.exec(10, shell.clone());
        cache.fork(10, 11);
        let child = cache.get(11).unwrap().clone();
        assert_eq!(child.me.exe, "/bin/sh");
        assert_eq!(child.me.pid, 11);
        assert_eq!(*child.ancestors, *std::slice::from_ref(&shell.me));
        cache.exit(10);
        assert!(cache.get(10).is_none());
        // The child execs: new program, same ancestors, the exited parent still among them.
        cache.exec(
            11,
            Cached::new(11, "/usr/bin/python3".into(), vec![], Some(0)),
        );
        let python = cache.get(11).unwrap();
        assert_eq!(python.me.exe, "/usr/bin/python3");
        assert_eq!(python.ancestors[0].exe, "/bin/sh");
        cache.fork(99, 100);
        assert!(cache.get(100).is_none());
    }

    #[test]
    fn ancestors_stop_at_the_lineage_depth() {
        let mut cache = ProcessCache::default();
        cache.exec(1, Cached::new(1, "/sbin/init".into(), vec![], Some(0)));
        for pid in 2..10 {
            cache.fork(pid - 1, pid);
            cache.exec(
                pid,
                Cached::new(pid, format!("/bin/p{pid}"), vec![], Some(0)),
            );
            // The parent exits: its children keep it.
            cache.exit(pid - 1);
        }
        let last = cache.get(9).unwrap();
        let pids: Vec<u32> = last.ancestors.iter().map(|a| a.pid).collect();
        assert_eq!(pids, [8, 7, 6, 5]);
        assert_eq!(last.ancestors[0].exe, "/bin/p8");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_scan_links_parents() {
        let cache = ProcessCache::scan(Path::new("/proc"));
        let me = cache.get(std::process::id()).expect("this process");
        let parent = me.ancestors.first().expect("a parent");
        assert_eq!(
            parent.pid,
            std::os::unix::process::parent_id(),
            "{:?}",
            me.ancestors
        );
        assert_eq!(me.me.uid, Some(own_uid()));
    }

    fn own_uid() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    }
}
