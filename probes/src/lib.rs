//! picket's kernel probes: loads the eBPF programs that watch file opens, keeps the approver set
//! (the basenames the rules care about) in the kernel, and turns ring buffer records into
//! [`OpenEvent`]s with their process context.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::collections::BTreeSet;
//! use picket_probes::{Probes, Strategy};
//!
//! let mut probes = Probes::load(Strategy::Auto)?;
//! probes.set_basenames(&BTreeSet::from(["token".to_owned()]))?;
//! loop {
//!     let event = probes.next_event().await?;
//!     println!("{} opened {}", event.process.comm, event.path);
//! }
//! # }
//! ```
//!
//! Loading needs root (CAP_BPF, CAP_PERFMON and, for tracepoints, CAP_SYS_ADMIN to mount tracefs
//! or securityfs when absent). Everything is detached when the [`Probes`] is dropped.
//! [`Probes::next_event`] must be awaited inside a tokio runtime with I/O enabled.
//!
//! Diagnostics: `PICKET_PROBES_STOP_AFTER=<n>` makes the open programs stop after prefilter step
//! `n` (so nothing is reported), to measure what each step costs; see `probes/NOTES.md`.

#![warn(missing_docs)]

mod btf;
mod events;
mod filter;
mod identity;
mod offsets;
mod process;
mod tracefs;
mod verifier;

use std::{
    collections::BTreeSet,
    fmt,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, Lsm, RawTracePoint, TracePoint},
};
use picket_probes_common::{BasenameKey, Filter, MAX_BASENAME, names, programs};
use tokio::io::{Interest, unix::AsyncFd};

pub use crate::identity::{FileId, file_id_from_kernel, file_id_of, kernel_dev};
pub use crate::process::container_id_from_cgroup;
use crate::{
    events::Record,
    process::{Cached, ContainerImages, ProcessCache},
};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/picket-ebpf"));

/// Which kernel hook reports file opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Try [`Strategy::Lsm`], then [`Strategy::Fentry`], then [`Strategy::Tracepoint`].
    Auto,
    /// `lsm/file_open`: needs `CONFIG_BPF_LSM` and `bpf` in the kernel's active LSM list. Sees
    /// every open, io_uring's and the kernel's own (exec) included.
    Lsm,
    /// `fentry/security_file_open`: the same hook point without the LSM requirement; needs a
    /// kernel that allows BPF trampolines.
    Fentry,
    /// Tracepoints on the exits of `open`, `openat`, `openat2`, `creat` and `open_by_handle_at`,
    /// plus `io_uring_complete` for io_uring opens. Works wherever tracepoints do.
    Tracepoint,
}

impl Strategy {
    /// Parses `auto`, `lsm`, `fentry` or `tracepoint`.
    pub fn parse(name: &str) -> Result<Strategy> {
        Ok(match name {
            "auto" => Strategy::Auto,
            "lsm" => Strategy::Lsm,
            "fentry" => Strategy::Fentry,
            "tracepoint" => Strategy::Tracepoint,
            other => bail!("unknown strategy {other:?} (expected auto, lsm, fentry or tracepoint)"),
        })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Auto => "auto",
            Strategy::Lsm => "lsm",
            Strategy::Fentry => "fentry",
            Strategy::Tracepoint => "tracepoint",
        })
    }
}

/// How the file was opened, from `file->f_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Readable only.
    Read,
    /// Writable only.
    Write,
    /// Readable and writable.
    ReadWrite,
    /// Neither (`O_RDONLY|O_WRONLY`, used for ioctl-only opens of devices).
    Neither,
}

/// The process that opened a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id (tgid), as seen from the host's pid namespace.
    pub pid: u32,
    /// Parent's process id.
    pub ppid: u32,
    /// Real user id (in the initial user namespace).
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// The opening thread's name (`comm`, at most 15 bytes).
    pub comm: String,
    /// Executable path, resolved in the kernel from `mm->exe_file` at the time of the open, as
    /// the process sees it (container paths for containers).
    pub exe: String,
    /// Command line, from the exec event (or `/proc` for processes older than the probes).
    /// Empty when unknown.
    pub args: Vec<String>,
    /// Container id (64 hex digits) from the process's cgroup.
    pub container_id: Option<String>,
    /// Image name from the container runtime's metadata, when it can be read.
    pub container_image: Option<String>,
}

/// A file with an approved basename was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenEvent {
    /// When the open happened (converted from the kernel's boot-time clock).
    pub ts: SystemTime,
    /// Absolute path of the file actually opened, as the process sees it (relative to its root),
    /// with symlinks and `..` resolved. When `path_truncated` is set and the walk did not reach
    /// the root, this is only the tail and has no leading `/`.
    pub path: String,
    /// The path is incomplete: too deep, a name too long, or a kernel read failed.
    pub path_truncated: bool,
    /// Read and/or write.
    pub access: Access,
    /// The `O_*` flags of the open file (`file->f_flags`).
    pub flags: u32,
    /// Thread id of the opener.
    pub tid: u32,
    /// Which file was opened: its device and inode.
    pub file: FileId,
    /// The open was reported because of the file's identity ([`Probes::set_identities`]), not
    /// its basename.
    pub by_identity: bool,
    /// The opening process.
    pub process: ProcessInfo,
}

/// The loaded and attached probes. Dropping it detaches and unloads everything.
pub struct Probes {
    ebpf: Ebpf,
    strategy: Strategy,
    ring: Ring,
    basenames: BTreeSet<String>,
    /// What the kernel's FILTER map holds.
    filter: Filter,
    /// The files approved by identity, as the kernel's IDENTITIES and INODE_FILTER hold them.
    identities: identity::Approved,
    cache: ProcessCache,
    images: ContainerImages,
    /// Open records read, and their bytes (diagnostics, logged when dropped).
    open_records: u64,
    open_record_bytes: u64,
}

enum Ring {
    /// Not yet registered with tokio: that needs a runtime, and `load` may run outside one.
    Plain(RingBuf<MapData>),
    Async(AsyncFd<RingBuf<MapData>>),
    /// Only while switching from `Plain` to `Async`.
    Taken,
}

impl Probes {
    /// Loads the programs and attaches the lifecycle tracepoints and the open hook for
    /// `strategy`. [`Strategy::Auto`] tries LSM, then fentry, then tracepoints, logging (through
    /// `tracing`) why each one was refused. Nothing is reported until [`Probes::set_basenames`].
    pub fn load(strategy: Strategy) -> Result<Probes> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("loading eBPF programs needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)");
        }
        raise_memlock_limit();
        tracefs::ensure_mounted()?;
        let btf = btf::Btf::from_sys_fs()?;
        let (offsets, io_uring) = offsets::from_kernel(&btf)?;
        ensure!(
            !EBPF_OBJECT.is_empty(),
            "this build has no eBPF object (built with AYA_BUILD_SKIP?)"
        );
        let self_tgid = std::process::id();
        let stop_after = stop_after()?;
        let mut ebpf = EbpfLoader::new()
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(names::SELF_TGID, &self_tgid, true)
            .override_global(names::STOP_AFTER, &stop_after, true)
            .load(EBPF_OBJECT)
            // Some of aya's parse errors display as nothing; their Debug form names the cause.
            .map_err(|err| anyhow::anyhow!("{err:?}"))
            .context("loading the eBPF object (maps and relocations)")?;

        attach_lifecycle(&mut ebpf)?;
        let aya_btf = aya::Btf::from_sys_fs().context("reading kernel BTF for aya")?;
        let attached = match strategy {
            Strategy::Auto => {
                let mut reasons = Vec::new();
                let mut chosen = None;
                for candidate in [Strategy::Lsm, Strategy::Fentry, Strategy::Tracepoint] {
                    match attach_open(&mut ebpf, candidate, &aya_btf, io_uring) {
                        Ok(()) => {
                            chosen = Some(candidate);
                            break;
                        }
                        Err(err) => {
                            tracing::info!("strategy {candidate} refused: {err:#}");
                            reasons.push(format!("{candidate}: {err:#}"));
                        }
                    }
                }
                chosen.with_context(|| {
                    format!("no open hook could be attached ({})", reasons.join("; "))
                })?
            }
            explicit => {
                attach_open(&mut ebpf, explicit, &aya_btf, io_uring)
                    .with_context(|| format!("strategy {explicit}"))?;
                explicit
            }
        };
        tracing::info!("file opens reported by the {attached} strategy");
        for (name, program) in ebpf.programs() {
            if let Ok(info) = program.info() {
                // The verifier's cost of each program: comparable across kernels (BENCHMARKS.md).
                match info.verified_instruction_count() {
                    Some(count) => {
                        tracing::debug!("verifier: {name}: {count} instructions processed")
                    }
                    None => tracing::debug!(
                        "verifier: {name}: loaded (this kernel does not report the instructions processed)"
                    ),
                }
            }
        }

        let ring = RingBuf::try_from(
            ebpf.take_map(names::EVENTS)
                .context("no EVENTS map in the eBPF object")?,
        )?;
        // After attaching, so that a process started in between is in the scan or has an event.
        let cache = ProcessCache::scan(Path::new("/proc"));
        tracing::debug!("process cache starts with {} processes", cache.len());
        Ok(Probes {
            ebpf,
            strategy: attached,
            ring: Ring::Plain(ring),
            basenames: BTreeSet::new(),
            filter: Filter::EMPTY,
            identities: identity::Approved::default(),
            cache,
            images: ContainerImages::new("/"),
            open_records: 0,
            open_record_bytes: 0,
        })
    }

    /// The strategy that was attached (never [`Strategy::Auto`]).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The approved basenames, as last set.
    pub fn basenames(&self) -> &BTreeSet<String> {
        &self.basenames
    }

    /// Replaces the set of basenames whose opens are reported; an empty set reports nothing.
    /// Each name is at most 63 bytes, without `/` or NUL. Opens already in the ring buffer are
    /// still delivered.
    pub fn set_basenames(&mut self, names: &BTreeSet<String>) -> Result<()> {
        for name in names {
            ensure!(
                !name.is_empty()
                    && name.len() <= MAX_BASENAME
                    && !name.contains('/')
                    && !name.contains('\0'),
                "invalid basename {name:?}: must be 1 to {MAX_BASENAME} bytes without '/' or NUL"
            );
        }
        // Widen the filter, change the map, then narrow the filter: at no point is a name that is
        // in both the old and the new set missed (see filter::widen for torn reads).
        let mut wide = self.filter;
        filter::widen(&mut wide, names);
        self.set_filter(&wide)?;
        let mut approvers: BpfHashMap<&mut MapData, BasenameKey, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::APPROVERS)
                .context("no APPROVERS map")?,
        )?;
        for name in names.difference(&self.basenames) {
            approvers.insert(&key(name), &1, 0)?;
        }
        for name in self.basenames.difference(names) {
            approvers.remove(&key(name))?;
        }
        let mut narrow = wide;
        filter::narrow(&mut narrow, names);
        self.set_filter(&narrow)?;
        self.filter = narrow;
        self.basenames = names.clone();
        Ok(())
    }

    /// Replaces the set of files whose opens are reported whatever name, mount or root they are
    /// reached through (hard links, bind mounts, chroots): opens of these pass the kernel
    /// prefilter beside those of approved basenames, and are flagged
    /// [`OpenEvent::by_identity`] when their name is not approved. At most
    /// [`Probes::MAX_IDENTITIES`]; a file whose device the kernel could not encode is refused.
    pub fn set_identities(&mut self, files: &BTreeSet<FileId>) -> Result<()> {
        self.identities.set(&mut self.ebpf, files)
    }

    /// The files approved by identity, as last set.
    pub fn identities(&self) -> &BTreeSet<FileId> {
        self.identities.files()
    }

    /// Most files [`Probes::set_identities`] takes.
    pub const MAX_IDENTITIES: usize = picket_probes_common::IDENTITY_CAPACITY as usize;

    fn set_filter(&mut self, value: &Filter) -> Result<()> {
        let mut map: Array<&mut MapData, Filter> =
            Array::try_from(self.ebpf.map_mut(names::FILTER).context("no FILTER map")?)?;
        map.set(0, value, 0)?;
        Ok(())
    }

    /// Events the kernel could not queue because the ring buffer was full.
    pub fn lost_events(&self) -> u64 {
        let lost = || -> Result<u64> {
            let map: PerCpuArray<&MapData, u64> =
                PerCpuArray::try_from(self.ebpf.map(names::LOST).context("no LOST map")?)?;
            Ok(map.get(&0, 0)?.iter().sum())
        };
        lost().unwrap_or_else(|err| {
            tracing::warn!("reading the lost-events counter: {err:#}");
            0
        })
    }

    /// Instructions the verifier processed for each loaded program (diagnostics; `None` when the
    /// kernel does not report it).
    pub fn verified_instructions(&self) -> Vec<(String, Option<u32>)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((name.to_owned(), info.verified_instruction_count()))
            })
            .collect()
    }

    /// Waits for the next open of an approved file. Exec, fork and exit records met on the way
    /// update the process cache. Cancel-safe: dropping the future loses no event.
    pub async fn next_event(&mut self) -> Result<OpenEvent> {
        loop {
            if let Some(event) = self.drain()? {
                return Ok(event);
            }
            let fd = self.async_ring()?;
            let mut guard = fd.readable_mut().await?;
            // Cleared before draining again, so a record arriving now still wakes us.
            guard.clear_ready();
        }
    }

    /// Reads records until an open event or an empty ring.
    fn drain(&mut self) -> Result<Option<OpenEvent>> {
        loop {
            let ring = match &mut self.ring {
                Ring::Plain(ring) => ring,
                Ring::Async(fd) => fd.get_mut(),
                Ring::Taken => bail!("ring buffer lost after a failed registration"),
            };
            let Some(item) = ring.next() else {
                return Ok(None);
            };
            let len = item.len();
            let record = events::parse(&item);
            drop(item);
            match record {
                Ok(Record::Open(open)) => {
                    self.open_records += 1;
                    self.open_record_bytes += len as u64;
                    return Ok(Some(self.open_event(open)));
                }
                Ok(Record::Exec(exec)) => {
                    let container_id = container_id_from_cgroup(&exec.cgroup);
                    self.cache.exec(
                        exec.raw.task.tgid,
                        Cached {
                            exe: exec.exe,
                            args: exec.args,
                            container_id,
                        },
                    );
                }
                Ok(Record::Fork(raw)) => self.cache.fork(raw.parent_tgid, raw.child_tgid),
                Ok(Record::Exit(raw)) => self.cache.exit(raw.tgid),
                Err(err) => tracing::warn!("skipping a malformed ring buffer record: {err:#}"),
            }
        }
    }

    fn async_ring(&mut self) -> Result<&mut AsyncFd<RingBuf<MapData>>> {
        if let Ring::Plain(_) = self.ring {
            // AsyncFd registration panics outside a runtime; fail instead.
            tokio::runtime::Handle::try_current()
                .context("Probes::next_event must run inside a tokio runtime")?;
            let Ring::Plain(ring) = std::mem::replace(&mut self.ring, Ring::Taken) else {
                unreachable!("checked above");
            };
            // SAFETY: the RingBuf owns its map fd, keeps it open until dropped (which only the
            // AsyncFd can do now) and always returns that same fd from as_raw_fd.
            match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
                Ok(fd) => self.ring = Ring::Async(fd),
                Err(err) => {
                    let (ring, cause) = err.into_parts();
                    self.ring = Ring::Plain(ring);
                    return Err(cause).context("registering the ring buffer with tokio");
                }
            }
        }
        match &mut self.ring {
            Ring::Async(fd) => Ok(fd),
            _ => bail!("ring buffer lost after a failed registration"),
        }
    }

    fn open_event(&mut self, open: events::Open) -> OpenEvent {
        let events::Open {
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
            None => std::fs::read(format!("/proc/{}/cmdline", task.tgid))
                .map(|raw| process::split_args(&raw))
                .unwrap_or_default(),
        };
        let container_id = container_id_from_cgroup(&cgroup)
            .or_else(|| cached.and_then(|c| c.container_id.clone()));
        let container_image = container_id.as_deref().and_then(|id| self.images.image(id));
        OpenEvent {
            ts: boot_ns_to_wall(raw.header.ts_boot_ns),
            path,
            path_truncated,
            access: events::access(raw.f_mode),
            flags: raw.f_flags,
            tid: task.tid,
            file: file_id_from_kernel(raw.dev, raw.ino),
            by_identity: raw.by_identity != 0,
            process: ProcessInfo {
                pid: task.tgid,
                ppid: task.ppid,
                uid: task.uid,
                gid: task.gid,
                comm: events::c_string(&task.comm),
                exe,
                args,
                container_id,
                container_image,
            },
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        if self.open_records > 0 {
            // In the ring buffer each record also takes an 8-byte header and is padded to 8.
            let avg = self.open_record_bytes as f64 / self.open_records as f64;
            tracing::debug!(
                "read {} open records of {avg:.0} bytes on average ({} events lost)",
                self.open_records,
                self.lost_events()
            );
        }
    }
}

/// `PICKET_PROBES_STOP_AFTER=<n>` cuts the open prefilter after step `n` (0: return at once;
/// 1: after finding the `struct file`; 2: after its dentry; 3: after the name length), to measure
/// what each step costs. Unset in production.
fn stop_after() -> Result<u32> {
    match std::env::var("PICKET_PROBES_STOP_AFTER") {
        Ok(n) => {
            let n = n
                .parse()
                .context("PICKET_PROBES_STOP_AFTER must be a number")?;
            tracing::warn!(
                "PICKET_PROBES_STOP_AFTER={n}: measurement mode, opens are not all reported"
            );
            Ok(n)
        }
        Err(_) => Ok(u32::MAX),
    }
}

fn key(name: &str) -> BasenameKey {
    let mut key = BasenameKey {
        name: [0; picket_probes_common::BASENAME_KEY_LEN],
    };
    key.name[..name.len()].copy_from_slice(name.as_bytes());
    key
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: limit is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn attach_lifecycle(ebpf: &mut Ebpf) -> Result<()> {
    let exec: &mut TracePoint = program(ebpf, programs::SCHED_EXEC)?;
    exec.load()
        .map_err(|err| verifier::load_error(err, "loading sched_process_exec"))?;
    exec.attach("sched", "sched_process_exec")
        .context("attaching sched/sched_process_exec")?;
    for (name, tp) in [
        (programs::SCHED_FORK, "sched_process_fork"),
        (programs::SCHED_EXIT, "sched_process_exit"),
    ] {
        let raw: &mut RawTracePoint = program(ebpf, name)?;
        raw.load()
            .map_err(|err| verifier::load_error(err, &format!("loading {name}")))?;
        raw.attach(tp)
            .with_context(|| format!("attaching raw tracepoint {tp}"))?;
    }
    Ok(())
}

/// The syscalls whose exit returns a new descriptor for a file opened by path or handle.
/// (`open_tree` also returns one, but only as an `O_PATH`-like mount handle.)
const OPEN_SYSCALLS: [&str; 5] = ["open", "openat", "openat2", "creat", "open_by_handle_at"];

fn attach_open(ebpf: &mut Ebpf, strategy: Strategy, btf: &aya::Btf, io_uring: bool) -> Result<()> {
    match strategy {
        Strategy::Auto => bail!("Auto is not a hook"),
        Strategy::Lsm => {
            match tracefs::active_lsms() {
                Some(lsms) if !lsms.split(',').any(|l| l == "bpf") => {
                    bail!("the BPF LSM is not active (active LSMs: {lsms}); boot with lsm=...,bpf")
                }
                Some(_) => {}
                None => tracing::warn!(
                    "cannot read /sys/kernel/security/lsm; an LSM program may attach but never run"
                ),
            }
            let lsm: &mut Lsm = program(ebpf, programs::LSM_FILE_OPEN)?;
            lsm.load("file_open", btf)
                .map_err(|err| verifier::load_error(err, "loading lsm/file_open"))?;
            if let Err(err) = lsm.attach() {
                let _ = lsm.unload();
                return Err(err).context("attaching lsm/file_open");
            }
        }
        Strategy::Fentry => {
            let fentry: &mut FEntry = program(ebpf, programs::FENTRY_FILE_OPEN)?;
            fentry
                .load("security_file_open", btf)
                .map_err(|err| verifier::load_error(err, "loading fentry/security_file_open"))?;
            if let Err(err) = fentry.attach() {
                let _ = fentry.unload();
                return Err(err).context("attaching fentry/security_file_open");
            }
        }
        Strategy::Tracepoint => {
            let name = load_sys_exit_open(ebpf)?;
            let tp: &mut TracePoint = program(ebpf, name)?;
            let mut attached = Vec::new();
            for syscall in OPEN_SYSCALLS {
                let name = format!("sys_exit_{syscall}");
                if !tracefs::event_exists("syscalls", &name) {
                    // e.g. arm64 has no open(2) or creat(2).
                    tracing::debug!("no tracepoint syscalls/{name} on this kernel");
                    continue;
                }
                tp.attach("syscalls", &name)
                    .with_context(|| format!("attaching syscalls/{name}"))?;
                attached.push(name);
            }
            ensure!(
                attached.iter().any(|n| n == "sys_exit_openat"),
                "no syscalls/sys_exit_openat tracepoint (kernel without CONFIG_FTRACE_SYSCALLS?)"
            );
            if io_uring && tracefs::event_exists("io_uring", "io_uring_complete") {
                let tp: &mut TracePoint = program(ebpf, programs::IO_URING_COMPLETE)?;
                let res = tp
                    .load()
                    .map_err(|err| verifier::load_error(err, "loading io_uring_complete"))
                    .and_then(|()| Ok(tp.attach("io_uring", "io_uring_complete")?));
                if let Err(err) = res {
                    tracing::warn!("io_uring opens will not be seen: {err:#}");
                }
            }
        }
    }
    Ok(())
}

/// Loads the `sys_exit_*` program, or its variant for kernels without
/// `bpf_get_current_task_btf` (before 5.11) when the kernel refuses it; returns the name of the
/// one loaded.
fn load_sys_exit_open(ebpf: &mut Ebpf) -> Result<&'static str> {
    let tp: &mut TracePoint = program(ebpf, programs::SYS_EXIT_OPEN)?;
    let Err(err) = tp.load() else {
        return Ok(programs::SYS_EXIT_OPEN);
    };
    let first = verifier::load_error(err, "loading the sys_exit_* tracepoint program");
    tracing::debug!("{first:#}; trying the variant for kernels before 5.11");
    let compat: &mut TracePoint = program(ebpf, programs::SYS_EXIT_OPEN_COMPAT)?;
    match compat.load() {
        Ok(()) => Ok(programs::SYS_EXIT_OPEN_COMPAT),
        Err(err) => Err(first.context(verifier::load_error(
            err,
            "and its variant without bpf_get_current_task_btf",
        ))),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the eBPF object"))?;
    Ok(program.try_into()?)
}

fn clock_ns(clock: libc::clockid_t) -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write; both clocks exist on every Linux we load on.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Converts `bpf_ktime_get_boot_ns()` to wall-clock time using the clocks' current difference.
fn boot_ns_to_wall(boot_ns: u64) -> SystemTime {
    let now_boot = clock_ns(libc::CLOCK_BOOTTIME);
    let ago = now_boot.saturating_sub(u128::from(boot_ns));
    SystemTime::now() - Duration::from_nanos(u64::try_from(ago).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_can_move_between_tasks() {
        fn assert_send<T: Send>() {}
        assert_send::<super::Probes>();
    }

    #[test]
    fn strategies_round_trip() {
        for s in ["auto", "lsm", "fentry", "tracepoint"] {
            assert_eq!(super::Strategy::parse(s).unwrap().to_string(), s);
        }
        assert!(super::Strategy::parse("kprobe").is_err());
    }
}
