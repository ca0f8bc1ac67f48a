//! Enrichment: turns the decoded records of the ring buffer into [`OpenEvent`]s with their
//! process context (arguments, user name, container and pod), and keeps the process cache that
//! context comes from current with the exec, fork and exit records.

use std::path::{Path, PathBuf};

use crate::{
    OpenEvent, ProcessInfo,
    clock::boot_ns_to_wall,
    containers::ContainerMetadata,
    exe_digest::ExeDigests,
    file_id_from_kernel,
    process::{self, Cached, ProcessCache, container_id_from_cgroup},
    records::{self, Exec, Open, Record},
    users::UserNames,
};

/// What the probes know of the host's processes and containers beside what each record carries.
pub(crate) struct Enricher {
    cache: ProcessCache,
    containers: ContainerMetadata,
    users: UserNames,
    digests: ExeDigests,
    /// The host's procfs, read for processes no exec record or start-up scan saw.
    proc: PathBuf,
}

impl Enricher {
    /// Starts with a scan of the processes in `proc`; `root` is where the host's container
    /// runtime state is found.
    pub(crate) fn new(root: &Path, proc: &Path) -> Enricher {
        let cache = ProcessCache::scan(proc);
        tracing::debug!("process cache starts with {} processes", cache.len());
        Enricher {
            cache,
            containers: ContainerMetadata::new(root),
            users: UserNames::new(proc),
            digests: ExeDigests::new(proc),
            proc: proc.to_owned(),
        }
    }

    /// Takes in one record: an open becomes an event, the lifecycle records update the cache.
    pub(crate) fn record(&mut self, record: Record) -> Option<OpenEvent> {
        match record {
            Record::Open(open) => return Some(self.open_event(open)),
            Record::Exec(exec) => self.exec(exec),
            Record::Fork(raw) => self.cache.fork(raw.parent_tgid, raw.child_tgid),
            Record::Exit(raw) => self.cache.exit(raw.tgid),
        }
        None
    }

    /// The container of process `tgid`, whose cgroup's leaf name the kernel gave as `leaf`. A
    /// leaf alone can lie (a container can make a child cgroup named after another container,
    /// or anything else), so: the whole cgroup path while the process lives, else what the cache
    /// holds (its exec, or its parent's at fork), and the leaf only for a process never seen.
    /// At an open, a leaf that agrees with the cache is taken without reading `/proc`.
    fn container_of(&self, tgid: u32, leaf: &str, at_open: bool) -> Option<String> {
        let cached = self.cache.get(tgid).map(|c| c.container_id.clone());
        let from_leaf = container_id_from_cgroup(leaf);
        if at_open && cached.as_ref() == Some(&from_leaf) {
            return from_leaf;
        }
        // A cache that says "no container" yields to the leaf: a process that moved into a
        // container's cgroup after it was forked outside one (only a host process with rights
        // over the cgroup tree can) is in that container; a process already in a container
        // keeps its container whatever a child cgroup is named.
        process::live_container_id(&self.proc, tgid)
            .or(cached.filter(Option::is_some))
            .unwrap_or(from_leaf)
    }

    fn exec(&mut self, exec: Exec) {
        let task = &exec.raw.task;
        let tgid = task.tgid;
        let container_id = self.container_of(tgid, &exec.cgroup, false);
        // First sight of a process: its root is most likely still there to read.
        self.users.observe(tgid, container_id.as_deref());
        let exe_id = exec.raw.exe_id;
        // Where else the file may be seen if this process is already gone: its ancestors (a
        // forking shell), then the other processes of its container.
        let ancestors: Vec<u32> = self
            .cache
            .get(tgid)
            .map(|c| c.ancestors.iter().map(|a| a.pid).collect())
            .unwrap_or_default();
        let peers = ancestors.into_iter().chain(
            self.cache
                .pids_in(container_id.as_deref())
                .filter(|&pid| pid != tgid)
                .take(4)
                .collect::<Vec<_>>(),
        );
        let exe_digest = self.digests.digest(exe_id, &exec.exe, tgid, peers);
        let mut entry = Cached::new(tgid, exec.exe, exec.args, Some(task.uid));
        entry.container_id = container_id;
        entry.exe_id = Some(exe_id);
        entry.exe_digest = exe_digest;
        self.cache.exec(tgid, entry);
    }

    fn open_event(&mut self, open: Open) -> OpenEvent {
        let Open {
            raw,
            cgroup,
            path: (path, path_truncated),
            exe: (exe, _),
        } = open;
        let task = &raw.task;
        let cached = self.cache.get(task.tgid);
        let args = match cached {
            Some(cached) => cached.me.args.clone(),
            // Neither an exec event nor the start-up scan saw it: try /proc while it lives.
            None => std::fs::read(self.proc.join(task.tgid.to_string()).join("cmdline"))
                .map(|raw| process::split_args(&raw))
                .unwrap_or_default(),
        };
        let container_id = self.container_of(task.tgid, &cgroup, true);
        let meta = container_id
            .as_deref()
            .and_then(|id| self.containers.get(id));
        let meta = meta.as_deref();
        let user = self.users.name(
            task.uid,
            task.tgid,
            task.ppid,
            container_id.as_deref(),
            &self.cache,
        );
        // The executable is the one the exec opened; mm->exe_file, which the open record read,
        // can since have been swapped by the process itself (prctl PR_SET_MM_EXE_FILE or
        // PR_SET_MM_MAP) to pass for another program.
        let exec_id = cached.and_then(|c| c.exe_id);
        let (exe, exe_swapped_to) = match (cached, exec_id) {
            (Some(cached), Some(id)) if (id.ino, id.dev) != (raw.exe_id.ino, raw.exe_id.dev) => {
                (cached.me.exe.clone(), Some(exe))
            }
            (Some(cached), Some(_)) => (cached.me.exe.clone(), None),
            _ => (exe, None),
        };
        let ancestors = cached
            .map(|c| c.ancestors.iter().map(|a| (**a).clone()).collect())
            .unwrap_or_default();
        let exe_digest = cached.and_then(|c| c.exe_digest.as_deref().map(str::to_owned));
        OpenEvent {
            ts: boot_ns_to_wall(raw.header.ts_boot_ns),
            path,
            path_truncated,
            access: records::access(raw.f_mode),
            flags: raw.f_flags,
            tid: task.tid,
            file: file_id_from_kernel(raw.dev, raw.ino),
            by_identity: raw.by_identity != 0,
            process: ProcessInfo {
                pid: task.tgid,
                ppid: task.ppid,
                uid: task.uid,
                gid: task.gid,
                euid: task.euid,
                egid: task.egid,
                user,
                comm: records::c_string(&task.comm),
                exe,
                exe_digest,
                exe_swapped_to,
                ancestors,
                args,
                container_id,
                container_image: meta.and_then(|m| m.image.clone()),
                container_name: meta.and_then(|m| m.name.clone()),
                pod: meta.and_then(|m| m.pod.clone()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use picket_abi::Access;
    use picket_probes_common::{
        ExeId, ExecRecord, ExitRecord, ForkRecord, OpenRecord, PATH_COMPLETE, PathInfo,
        RecordHeader, RecordKind, TaskInfo,
    };

    use super::*;

    /// Nothing to read there: the cache starts empty and /proc fallbacks find nothing.
    fn enricher() -> Enricher {
        let nowhere = Path::new("/nonexistent/picket-enrich-test");
        Enricher::new(nowhere, nowhere)
    }

    fn header(kind: RecordKind) -> RecordHeader {
        RecordHeader {
            kind: kind as u32,
            _pad: 0,
            ts_boot_ns: 1,
        }
    }

    fn task(tgid: u32) -> TaskInfo {
        TaskInfo {
            tgid,
            tid: tgid + 1,
            ppid: 1,
            uid: 1000,
            gid: 1001,
            euid: 0,
            egid: 1001,
            cgroup_len: 0,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    fn open(tgid: u32, f_mode: u32, cgroup: &str) -> Record {
        let complete = PathInfo {
            len: 0,
            flags: PATH_COMPLETE,
        };
        Record::Open(Open {
            raw: OpenRecord {
                header: header(RecordKind::Open),
                task: task(tgid),
                source: 1,
                f_mode,
                f_flags: 0o2,
                fd: -1,
                path: complete,
                exe: complete,
                ino: 12,
                dev: 34,
                by_identity: 1,
                exe_id: ExeId {
                    ino: 5,
                    ..ExeId::default()
                },
            },
            cgroup: cgroup.to_owned(),
            path: ("/run/token".to_owned(), false),
            exe: ("/usr/bin/cat".to_owned(), false),
        })
    }

    fn exec(tgid: u32, cgroup: &str, args: &[&str]) -> Record {
        Record::Exec(Exec {
            raw: ExecRecord {
                header: header(RecordKind::Exec),
                task: task(tgid),
                args_len: 0,
                args_truncated: 0,
                exe: PathInfo::default(),
                exe_id: ExeId {
                    ino: 5,
                    ..ExeId::default()
                },
            },
            cgroup: cgroup.to_owned(),
            exe: "/usr/bin/cat".to_owned(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
        })
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn an_open_carries_what_the_record_and_the_exec_before_it_say() {
        let mut enricher = enricher();
        let scope = format!("cri-containerd-{ID}.scope");
        assert_eq!(
            enricher.record(exec(7, &scope, &["cat", "/run/token"])),
            None
        );
        // The open's own cgroup is not a container's: the id comes from the exec.
        let event = enricher.record(open(7, 3, "session-1.scope")).unwrap();
        assert_eq!(event.path, "/run/token");
        assert!(!event.path_truncated);
        assert_eq!(event.access, Some(Access::ReadWrite));
        assert_eq!(event.flags, 0o2);
        assert_eq!(event.tid, 8);
        assert_eq!(event.file, file_id_from_kernel(34, 12));
        assert!(event.by_identity);
        let process = &event.process;
        assert_eq!((process.pid, process.ppid), (7, 1));
        assert_eq!((process.uid, process.gid), (1000, 1001));
        assert_eq!(process.comm, "cat");
        assert_eq!(process.exe, "/usr/bin/cat");
        assert_eq!(process.args, ["cat", "/run/token"]);
        assert_eq!(process.container_id.as_deref(), Some(ID));
        // No runtime metadata and no passwd under the nonexistent roots.
        assert_eq!(process.container_image, None);
        assert_eq!(process.user, None);
    }

    #[test]
    fn fork_copies_and_exit_forgets_the_process_context() {
        let mut enricher = enricher();
        enricher.record(exec(7, "", &["sh", "-c", "cat"]));
        let fork = ForkRecord {
            header: header(RecordKind::Fork),
            parent_tgid: 7,
            child_tgid: 9,
        };
        assert_eq!(enricher.record(Record::Fork(fork)), None);
        let child = enricher.record(open(9, 1, "")).unwrap();
        assert_eq!(child.process.args, ["sh", "-c", "cat"]);
        assert_eq!(child.access, Some(Access::Read));
        let exit = ExitRecord {
            header: header(RecordKind::Exit),
            tgid: 7,
            _pad: 0,
        };
        assert_eq!(enricher.record(Record::Exit(exit)), None);
        let gone = enricher.record(open(7, 0, "")).unwrap();
        assert!(gone.process.args.is_empty());
        assert_eq!(gone.access, None);
        // The open's own cgroup names the container when the cache does not.
        let in_container = enricher.record(open(11, 2, ID)).unwrap();
        assert_eq!(in_container.process.container_id.as_deref(), Some(ID));
        assert_eq!(in_container.access, Some(Access::Write));
    }
}
