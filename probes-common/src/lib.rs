//! Plain-old-data types shared by picket's eBPF programs (`picket-probes-ebpf`) and their
//! user-space loader (`picket-probes`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree on the layout byte for
//! byte; the kernel writes these structs into the ring buffer and user space reads them back.
#![no_std]

/// Walk steps (dentry names and mount crossings) for the path of an opened file.
pub const PATH_DEPTH: usize = 32;
/// Walk steps for the path of an executable.
pub const EXE_DEPTH: usize = 16;
/// Bytes read per path component: `NAME_MAX` (255) plus the terminating NUL.
pub const NAME_READ: usize = 256;
/// Most bytes of names a file path carries: the walk stops (flagging [`PATH_TOO_LONG`]) once
/// this many are used, so the names take at most `PATH_BYTES + NAME_READ - 1` bytes.
pub const PATH_BYTES: usize = 4096;
/// Like [`PATH_BYTES`], for an executable's path.
pub const EXE_BYTES: usize = 2048;
/// Bytes of the NUL-separated argument block captured at exec.
pub const ARGS_LEN: usize = 2048;
/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
/// Bytes kept of the task's cgroup (v2, default hierarchy) leaf name, NUL included; a
/// `cri-containerd-<64 hex>.scope` name is 85 bytes.
pub const CGROUP_NAME_LEN: usize = 128;
/// Most bytes of variable-length data (strings) after the fixed part of any record: the
/// cgroup name, the file path and the executable path of an open, or the cgroup name, the
/// executable path and the arguments of an exec.
pub const MAX_RECORD_DATA: usize = CGROUP_NAME_LEN + PATH_BYTES + EXE_BYTES + 2 * (NAME_READ - 1);
/// Longest basename the approver map accepts (its key is this plus a NUL).
pub const MAX_BASENAME: usize = 63;
/// Key size of the approver map.
pub const BASENAME_KEY_LEN: usize = MAX_BASENAME + 1;
/// Most files the identity approver map holds (see [`FileIdKey`]).
pub const IDENTITY_CAPACITY: u32 = 16384;
/// Bits of the inode-number filter in front of the identity approver map (a power of two).
pub const INODE_FILTER_BITS: u64 = 16384;
/// `u64` words of the inode-number filter.
pub const INODE_FILTER_WORDS: usize = (INODE_FILTER_BITS / 64) as usize;

/// Names of maps and globals in the eBPF object, so both sides spell them the same way.
pub mod names {
    /// Ring buffer carrying every event.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` counter of events dropped because the ring buffer was full.
    pub const LOST: &str = "LOST";
    /// Per-CPU scratch buffer in which the tracepoint programs build a record before copying
    /// its used part into the ring buffer.
    pub const SCRATCH: &str = "SCRATCH";
    /// Hash map of approved basenames ([`crate::BasenameKey`] to `u8`).
    pub const APPROVERS: &str = "APPROVERS";
    /// One-slot array holding the [`crate::Filter`].
    pub const FILTER: &str = "FILTER";
    /// Hash map of approved files by identity ([`crate::FileIdKey`] to `u8`): opens of these are
    /// reported whatever their name.
    pub const IDENTITIES: &str = "IDENTITIES";
    /// One-slot array holding the [`crate::InodeFilter`] in front of [`IDENTITIES`].
    pub const INODE_FILTER: &str = "INODE_FILTER";
    /// Read-only global holding the [`crate::Offsets`].
    pub const OFFSETS: &str = "OFFSETS";
    /// Read-only global `u32`: the loader's own tgid, whose opens are never reported.
    pub const SELF_TGID: &str = "SELF_TGID";
    /// Read-only global `u32`: measurement aid, the open programs stop after this many
    /// prefilter steps (`u32::MAX`, the default, runs them all).
    pub const STOP_AFTER: &str = "STOP_AFTER";
    /// LRU hash map of the opens recently sent ([`crate::RepeatKey`] to [`crate::RepeatEntry`]),
    /// for dropping repeats in the kernel.
    pub const REPEATS: &str = "REPEATS";
    /// Per-CPU `u64` counter of opens dropped as repeats.
    pub const REPEATS_DROPPED: &str = "REPEATS_DROPPED";
    /// One-slot array holding the [`crate::RepeatConfig`].
    pub const REPEATS_CONFIG: &str = "REPEATS_CONFIG";
    /// LRU per-CPU hash map of events lost because the ring buffer was full, by cgroup (v2) id:
    /// `u64` to `u64` per CPU.
    pub const LOST_BY_CGROUP: &str = "LOST_BY_CGROUP";
}

/// Program names (the Rust function names in `picket-probes-ebpf`).
pub mod programs {
    /// `lsm/file_open`.
    pub const LSM_FILE_OPEN: &str = "lsm_file_open";
    /// `fentry/security_file_open`.
    pub const FENTRY_FILE_OPEN: &str = "fentry_security_file_open";
    /// Tracepoint program attached to every `syscalls/sys_exit_*` of a syscall that opens a file.
    pub const SYS_EXIT_OPEN: &str = "sys_exit_open";
    /// The same for kernels without `bpf_get_current_task_btf` (before 5.11).
    pub const SYS_EXIT_OPEN_COMPAT: &str = "sys_exit_open_compat";
    /// Raw tracepoint `io_uring_complete`, for `IORING_OP_OPENAT`/`OPENAT2`.
    pub const IO_URING_COMPLETE: &str = "io_uring_complete";
    /// Tracepoint `sched/sched_process_exec`.
    pub const SCHED_EXEC: &str = "sched_process_exec";
    /// Raw tracepoint `sched_process_fork`.
    pub const SCHED_FORK: &str = "sched_process_fork";
    /// Tracepoint `sched/sched_process_exit`.
    pub const SCHED_EXIT: &str = "sched_process_exit";
}

/// What follows a [`RecordHeader`] in the ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// [`OpenRecord`].
    Open = 1,
    /// [`ExecRecord`].
    Exec = 2,
    /// [`ForkRecord`].
    Fork = 3,
    /// [`ExitRecord`].
    Exit = 4,
}

impl RecordKind {
    /// Maps the raw header value back; `None` for a kind this build does not know.
    pub fn from_u32(kind: u32) -> Option<Self> {
        match kind {
            1 => Some(Self::Open),
            2 => Some(Self::Exec),
            3 => Some(Self::Fork),
            4 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// Which kernel hook produced an open event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenSource {
    /// `lsm/file_open`.
    Lsm = 1,
    /// `fentry/security_file_open`.
    Fentry = 2,
    /// A `syscalls/sys_exit_*` tracepoint.
    Syscall = 3,
    /// `io_uring_complete` of an open request.
    IoUring = 4,
}

/// Starts every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    /// A [`RecordKind`] value.
    pub kind: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()` when the event was produced.
    pub ts_boot_ns: u64,
}

/// What the kernel side knows of the current task, read at the time of the event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskInfo {
    /// Process id (`task->tgid`).
    pub tgid: u32,
    /// Thread id (`task->pid`).
    pub tid: u32,
    /// `task->real_parent->tgid`.
    pub ppid: u32,
    /// Real uid (`task->cred->uid`).
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective uid (`task->cred->euid`): what the kernel checks access with, which a setuid
    /// program or a `seteuid` changes without changing the real one.
    pub euid: u32,
    /// Effective gid (`task->cred->egid`).
    pub egid: u32,
    /// Bytes of the leaf name of the task's cgroup in the default (v2) hierarchy, NUL included,
    /// at the start of the record's data; 0 when it could not be read.
    pub cgroup_len: u32,
    /// `task->comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// Where a path sits in a record's data, and how its walk ended.
///
/// The path is a run of NUL-terminated names, leaf first, one per dentry met on the walk up to
/// the root (a mount crossing adds none). `len` counts every byte of them, NULs included.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathInfo {
    /// Bytes of names.
    pub len: u32,
    /// `PATH_*` flags.
    pub flags: u32,
}

/// The walk reached the task's root or the root of the mount tree.
pub const PATH_COMPLETE: u32 = 1;
/// The walk took its maximum number of steps before reaching the root.
pub const PATH_TOO_DEEP: u32 = 2;
/// A kernel read failed during the walk.
pub const PATH_READ_ERROR: u32 = 4;
/// There was no path to walk (e.g. a kernel thread has no executable).
pub const PATH_ABSENT: u32 = 8;
/// The names filled their byte budget ([`PATH_BYTES`], [`EXE_BYTES`]) before the root.
pub const PATH_TOO_LONG: u32 = 16;

/// A file was opened and its basename is approved.
///
/// A variable-length record: this fixed part, then `task.cgroup_len` bytes of cgroup name,
/// `path.len` bytes of the file's path and `exe.len` bytes of the executable's path. The kernel
/// sends only the bytes used (`bpf_ringbuf_output`), so most records are a few hundred bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenRecord {
    /// `kind == RecordKind::Open`.
    pub header: RecordHeader,
    /// The opening task.
    pub task: TaskInfo,
    /// An [`OpenSource`] value.
    pub source: u32,
    /// `file->f_mode` (`FMODE_READ` = 1, `FMODE_WRITE` = 2).
    pub f_mode: u32,
    /// `file->f_flags` (the `O_*` flags the file was opened with).
    pub f_flags: u32,
    /// The descriptor number, or -1 when the hook runs before one exists (LSM, fentry).
    pub fd: i32,
    /// The file's path as the opening task sees it.
    pub path: PathInfo,
    /// The task's executable (`mm->exe_file`).
    pub exe: PathInfo,
    /// The file's inode number (`file->f_inode->i_ino`).
    pub ino: u64,
    /// The file's device as the kernel encodes it (`i_sb->s_dev`, `major << 20 | minor`).
    pub dev: u32,
    /// Non-zero when the open was approved by the file's identity ([`IDENTITIES`]) rather than
    /// by its name.
    ///
    /// [`IDENTITIES`]: names::IDENTITIES
    pub by_identity: u32,
    /// The executable's identity now (`mm->exe_file`): user space compares it with what the
    /// process exec'd ([`ExecRecord::exe_id`]) to see an executable swapped after the exec
    /// (`prctl(PR_SET_MM_EXE_FILE)`, `PR_SET_MM_MAP`).
    pub exe_id: ExeId,
}

/// Which file an executable is, read from its inode: what changes when the file is replaced.
///
/// A new file at the same path has another inode (`ino`); the same inode written over gets a new
/// change time (`ctime`, which no system call can set back: `utimensat` sets it to now) and
/// usually another size. User space caches an executable's content digest under this key, so a
/// program is hashed once per version rather than at every exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExeId {
    /// `inode->i_ino`; 0 when there is no executable (kernel threads).
    pub ino: u64,
    /// `inode->i_sb->s_dev`, kernel encoding.
    pub dev: u32,
    /// Nanoseconds of the inode's change time.
    pub ctime_nsec: u32,
    /// Seconds of the inode's change time.
    pub ctime_sec: i64,
    /// `inode->i_size`.
    pub size: i64,
}

/// A task called `execve` successfully.
///
/// A variable-length record: this fixed part, then `task.cgroup_len` bytes of cgroup name,
/// `exe.len` bytes of the executable's path and `args_len` bytes of arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    /// `kind == RecordKind::Exec`.
    pub header: RecordHeader,
    /// The task after the exec (new comm).
    pub task: TaskInfo,
    /// Bytes of the NUL-separated argument strings, read from `mm->arg_start..arg_end`.
    pub args_len: u32,
    /// Non-zero when the argument block was longer than `ARGS_LEN`.
    pub args_truncated: u32,
    /// The new executable.
    pub exe: PathInfo,
    /// The new executable's identity: at `sched_process_exec`, `mm->exe_file` is the file the
    /// exec opened (`bprm->file`), before anything the new program runs could change it.
    pub exe_id: ExeId,
}

/// A new process (not a thread) was created.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    /// `kind == RecordKind::Fork`.
    pub header: RecordHeader,
    /// The parent's tgid.
    pub parent_tgid: u32,
    /// The child's tgid.
    pub child_tgid: u32,
}

/// A process (its whole thread group) exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    /// `kind == RecordKind::Exit`.
    pub header: RecordHeader,
    /// The process that exited.
    pub tgid: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Approver map key: a basename, NUL-padded to a fixed size.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BasenameKey {
    /// The name's bytes followed by zeros.
    pub name: [u8; BASENAME_KEY_LEN],
}

/// Identity approver map key: which file this is, however it is named or reached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileIdKey {
    /// Inode number (`inode->i_ino`).
    pub ino: u64,
    /// Device, kernel encoding (`super_block->s_dev`).
    pub dev: u32,
    /// Zero.
    pub _pad: u32,
}

/// A bitmap of approved inode numbers (bit `ino % INODE_FILTER_BITS`), tested before the
/// identity approver map so that an open of an unwatched file costs two reads and a bit test.
/// User space keeps it in sync with that map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeFilter {
    /// Files in the identity map; zero skips the identity check entirely.
    pub count: u64,
    /// The bitmap.
    pub bits: [u64; INODE_FILTER_WORDS],
}

impl InodeFilter {
    /// Approves nothing.
    pub const EMPTY: InodeFilter = InodeFilter {
        count: 0,
        bits: [0; INODE_FILTER_WORDS],
    };

    /// Sets the bit of inode number `ino`.
    pub fn insert(&mut self, ino: u64) {
        let bit = ino & (INODE_FILTER_BITS - 1);
        self.bits[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
}

/// Name prefixes kept per basename length in the [`Filter`].
pub const PREFIX_SLOTS: usize = 4;
/// A [`Filter::prefixes`] slot value meaning "more names of this length than slots: look each
/// one up". Never a real prefix: names are UTF-8, which has no 0xFF byte.
pub const PREFIX_ANY: u64 = u64::MAX;

/// Cheap tests run before the approver map. User space keeps it in sync with that map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Bit `n` is set when some approved basename is `n` bytes long (`n` <= 63). Zero means
    /// nothing is approved and every open returns after reading one length.
    pub len_mask: u64,
    /// For each name length, the [`prefix_word`]s of the approved names of that length; 0 is an
    /// empty slot (no name starts with NUL) and [`PREFIX_ANY`] matches everything.
    pub prefixes: [[u64; PREFIX_SLOTS]; MAX_BASENAME + 1],
}

impl Filter {
    /// Approves nothing.
    pub const EMPTY: Filter = Filter {
        len_mask: 0,
        prefixes: [[0; PREFIX_SLOTS]; MAX_BASENAME + 1],
    };
}

/// The first eight bytes of `name` (fewer if it is shorter, zero-padded) as a little-endian
/// word: what the kernel side compares after one 8-byte read of the dentry name.
pub const fn prefix_word(name: &[u8]) -> u64 {
    let mut word = 0u64;
    let mut i = 0;
    while i < name.len() && i < 8 {
        word |= (name[i] as u64) << (8 * i);
        i += 1;
    }
    word
}

/// Byte offsets of the kernel struct members the programs read, found in the kernel's BTF at load
/// time (Rust eBPF has no CO-RE). Field names are `<struct>_<member>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    /// `task_struct.pid`.
    pub task_pid: u64,
    /// `task_struct.tgid`.
    pub task_tgid: u64,
    /// `task_struct.real_parent`.
    pub task_real_parent: u64,
    /// `task_struct.files`.
    pub task_files: u64,
    /// `task_struct.fs`.
    pub task_fs: u64,
    /// `task_struct.mm`.
    pub task_mm: u64,
    /// `task_struct.cgroups`.
    pub task_cgroups: u64,
    /// `files_struct.fdt`.
    pub files_fdt: u64,
    /// `fdtable.fd`.
    pub fdtable_fd: u64,
    /// `file.f_path`.
    pub file_f_path: u64,
    /// `file.f_mode`.
    pub file_f_mode: u64,
    /// `file.f_flags`.
    pub file_f_flags: u64,
    /// `file.f_inode`.
    pub file_f_inode: u64,
    /// `inode.i_ino`.
    pub inode_i_ino: u64,
    /// `inode.i_sb`.
    pub inode_i_sb: u64,
    /// `super_block.s_dev`.
    pub super_block_s_dev: u64,
    /// `path.mnt`.
    pub path_mnt: u64,
    /// `path.dentry`.
    pub path_dentry: u64,
    /// `dentry.d_parent`.
    pub dentry_d_parent: u64,
    /// `dentry.d_name`.
    pub dentry_d_name: u64,
    /// `qstr.hash_len` (the length is its upper 32 bits on little-endian).
    pub qstr_hash_len: u64,
    /// `qstr.name`.
    pub qstr_name: u64,
    /// `mount.mnt` (the embedded `vfsmount`).
    pub mount_mnt: u64,
    /// `mount.mnt_parent`.
    pub mount_mnt_parent: u64,
    /// `mount.mnt_mountpoint`.
    pub mount_mnt_mountpoint: u64,
    /// `vfsmount.mnt_root`.
    pub vfsmount_mnt_root: u64,
    /// `fs_struct.root`.
    pub fs_root: u64,
    /// `mm_struct.exe_file`.
    pub mm_exe_file: u64,
    /// `mm_struct.arg_start`.
    pub mm_arg_start: u64,
    /// `mm_struct.arg_end`.
    pub mm_arg_end: u64,
    /// `css_set.dfl_cgrp`.
    pub css_set_dfl_cgrp: u64,
    /// `cgroup.kn`.
    pub cgroup_kn: u64,
    /// `kernfs_node.name`.
    pub kernfs_node_name: u64,
    /// `task_struct.signal`.
    pub task_signal: u64,
    /// `signal_struct.live` (threads still running).
    pub signal_live: u64,
    /// `inode.i_generation`.
    pub inode_i_generation: u64,
    /// `task_struct.cred`.
    pub task_cred: u64,
    /// `cred.euid`.
    pub cred_euid: u64,
    /// `cred.egid`.
    pub cred_egid: u64,
    /// Seconds of `inode`'s change time (`i_ctime_sec` since 6.11, `__i_ctime.tv_sec` in 6.6,
    /// `i_ctime.tv_sec` before).
    pub inode_ctime_sec: u64,
    /// Nanoseconds of the same (read as 4 bytes).
    pub inode_ctime_nsec: u64,
    /// `inode.i_size`.
    pub inode_i_size: u64,
    /// `io_kiocb.opcode`.
    pub io_kiocb_opcode: u64,
    /// `io_kiocb.cmd` + `io_open.file_slot`: non-zero when an open goes to a fixed-file slot.
    pub io_open_file_slot: u64,
    /// Offset of the `req` field in the `io_uring/io_uring_complete` trace record (from tracefs).
    pub tp_io_uring_req: u64,
    /// Offset of the `res` field in the `io_uring/io_uring_complete` trace record (from tracefs).
    pub tp_io_uring_res: u64,
}

/// How long an open is remembered for dropping its repeats: 1 s.
///
/// Within the window, an open with the same [`RepeatKey`] as one already sent is dropped before
/// the ring buffer. Why one second: the rules' answers move on a scale of days (learning
/// periods, forgetting), so a repeat a second later cannot change them; each key still costs at
/// most one record per second, so even thousands of flooding keys stay far below what the ring
/// buffer (~18,000 records) and the agent (~150,000 records/s) absorb; a reader that keeps
/// reading is still reported every second (its last-seen time stays fresh for forgetting); and
/// the short window bounds how long a kernel object's address can stand for a freed one (the
/// key also carries inode numbers and names for that, see [`FileIdentity`]).
pub const REPEAT_WINDOW_NS: u64 = 1_000_000_000;
/// Opens remembered for dropping repeats: an LRU map, so a flood of distinct keys only evicts
/// (and costs extra records), never hides one. ~200 bytes each in the kernel.
pub const REPEAT_ENTRIES: u32 = 4096;
/// Cgroups whose lost events are counted separately; past this the least recently used are
/// evicted (the total in `LOST` stays exact).
pub const LOST_CGROUP_ENTRIES: u32 = 1024;

/// Which file, as far as a path-based rule can tell: the kernel objects the path walk starts
/// from, and what tells a freed and reused object apart from the one remembered.
///
/// Pointers alone would identify a live object, but an object freed and reallocated within the
/// window at the same address would pass for the old one. So each object also carries what a
/// reused one would have to match as well: the dentry's parent and name (hash and length), the
/// inode's number and generation. A match then means the same name in the same directory on
/// the same inode: the same path, which is all a rule sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// `path.mnt` (`struct vfsmount *`): hard links differ by dentry, bind mounts by mount.
    pub mnt: u64,
    /// `path.dentry`.
    pub dentry: u64,
    /// `dentry->d_parent`.
    pub parent: u64,
    /// `dentry->d_name.hash_len`: the name's hash and length.
    pub name: u64,
    /// `file->f_inode`.
    pub inode: u64,
    /// `inode->i_ino`.
    pub ino: u64,
    /// `inode->i_generation` (zero-extended).
    pub generation: u64,
}

/// What makes two opens the same for every rule: the same process (its tgid and memory map: an
/// exec gives it a new map) running the same executable (same path, same inode) in the same
/// cgroup, with the same root, user and group, opening the same file the same way.
///
/// The process is part of the key because an event carries more of it than the executable: its
/// parent and ancestors, its arguments, its executable's content digest. Two processes of one
/// program (the app's interpreter, and the same interpreter started by a shell; a program
/// before and after its file was written over) can be answered differently, so only a process
/// opening the same file again, the flood a loop makes, is a repeat.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RepeatKey {
    /// The thread group id (`bpf_get_current_pid_tgid() >> 32`).
    pub tgid: u64,
    /// `task->mm`: with the tgid, a process as it runs one program (a pid reused within the
    /// window would also need the same map's address).
    pub mm: u64,
    /// `bpf_get_current_cgroup_id()` (cgroup v2).
    pub cgroup: u64,
    /// `bpf_get_current_uid_gid()`.
    pub uid_gid: u64,
    /// `f_mode & (FMODE_READ | FMODE_WRITE)`.
    pub access: u64,
    /// The task's root (`fs->root`): dentry and mount. A chroot sees other paths.
    pub root_dentry: u64,
    /// See `root_dentry`.
    pub root_mnt: u64,
    /// The executable (`mm->exe_file`).
    pub exe: FileIdentity,
    /// The opened file.
    pub file: FileIdentity,
}

/// How repeats are dropped; user space writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepeatConfig {
    /// The window in nanoseconds; 0 (before user space writes it) sends every open.
    pub window_ns: u64,
    /// Generation of the rule set: user space bumps it whenever the rules change, which makes
    /// every remembered open stale (it may not have reached the rules running now).
    pub epoch: u64,
}

/// What the kernel remembers of a sent open.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepeatEntry {
    /// A hash of the key. An LRU map can recycle an element while a program still reads it; a
    /// recycled element carries another key's tag, so it is never taken for this key's.
    pub tag: u64,
    /// [`RepeatConfig::epoch`] when it was sent: a rule change makes it stale.
    pub epoch: u64,
    /// `bpf_ktime_get_ns()` when it was sent.
    pub sent_ns: u64,
}

/// `FMODE_READ`.
pub const FMODE_READ: u32 = 0x1;
/// `FMODE_WRITE`.
pub const FMODE_WRITE: u32 = 0x2;
/// `FMODE_PATH`: an `O_PATH` descriptor, which gives no access to the contents.
pub const FMODE_PATH: u32 = 0x4000;
/// `IORING_OP_OPENAT`.
pub const IORING_OP_OPENAT: u8 = 18;
/// `IORING_OP_OPENAT2`.
pub const IORING_OP_OPENAT2: u8 = 28;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made only of integers and arrays of integers, with all
    // padding spelled out as fields, so every bit pattern is valid and there are no hidden bytes.
    unsafe impl aya::Pod for super::BasenameKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Filter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileIdKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InodeFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RepeatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RepeatEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RepeatConfig {}
    // SAFETY: as above; the ring buffer records and their parts, which user space copies out of
    // the ring buffer's bytes (the sizes are pinned below, so no padding hides in them).
    unsafe impl aya::Pod for super::RecordHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PathInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpenRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForkRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExitRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExeId {}
}

// The fixed parts of the ring buffer records, byte for byte: a change here changes the wire
// format between the eBPF object and the loader, and these sizes (the sums of the fields, so no
// implicit padding) say so at compile time.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<RecordHeader>() == 16);
    assert!(size_of::<TaskInfo>() == 32 + COMM_LEN);
    assert!(size_of::<PathInfo>() == 8);
    assert!(size_of::<ExeId>() == 32);
    assert!(size_of::<OpenRecord>() == 16 + 48 + 16 + 2 * 8 + 8 + 8 + 32);
    assert!(size_of::<ExecRecord>() == 16 + 48 + 8 + 8 + 32);
    assert!(size_of::<ForkRecord>() == 16 + 8);
    assert!(size_of::<ExitRecord>() == 16 + 8);
};
