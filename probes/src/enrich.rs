//! Enrichment: turns the decoded records of the ring buffer into [`OpenEvent`]s with their
//! process context (arguments, user name, container and pod), and keeps the process cache that
//! context comes from current with the exec, fork and exit records.

use std::path::{Path, PathBuf};

use crate::{
    OpenEvent, ProcessInfo,
    clock::boot_ns_to_wall,
    containers::ContainerMetadata,
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

    fn exec(&mut self, exec: Exec) {
        let container_id = container_id_from_cgroup(&exec.cgroup);
        // First sight of a process: its root is most likely still there to read.
        self.users
            .observe(exec.raw.task.tgid, container_id.as_deref());
        self.cache.exec(
            exec.raw.task.tgid,
            Cached {
                exe: exec.exe,
                args: exec.args,
                container_id,
            },
        );
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
            Some(cached) => cached.args.clone(),
            // Neither an exec event nor the start-up scan saw it: try /proc while it lives.
            None => std::fs::read(self.proc.join(task.tgid.to_string()).join("cmdline"))
                .map(|raw| process::split_args(&raw))
                .unwrap_or_default(),
        };
        let container_id = container_id_from_cgroup(&cgroup)
            .or_else(|| cached.and_then(|c| c.container_id.clone()));
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
                user,
                comm: records::c_string(&task.comm),
                exe,
                args,
                container_id,
                container_image: meta.and_then(|m| m.image.clone()),
                container_name: meta.and_then(|m| m.name.clone()),
                pod: meta.and_then(|m| m.pod.clone()),
            },
        }
    }
}
