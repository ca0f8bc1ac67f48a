//! What the probes report: an open of an approved file, with the process behind it.

use std::time::SystemTime;

use picket_abi::Access;

use crate::{FileId, Pod};

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
    /// Effective user id: what the kernel checks the open against (a setuid program's owner).
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// The name of `uid` in the process's own root (its `/etc/passwd`), when it has one.
    pub user: Option<String>,
    /// The opening thread's name (`comm`, at most 15 bytes).
    pub comm: String,
    /// Executable path, as the process sees it (container paths for containers): the file its
    /// exec opened, resolved in the kernel at the exec. For a process no exec record saw (older
    /// than the probes, or its record lost), `mm->exe_file` at the time of the open.
    pub exe: String,
    /// The executable's content digest, `sha256:<64 hex digits>`, of the file the exec opened;
    /// `None` when no live process could show that file to the agent (see `exe_digest.rs`).
    pub exe_digest: Option<String>,
    /// What `mm->exe_file` (`/proc/PID/exe`) pointed at when the file was opened, when it is no
    /// longer the file the process exec'd: the process swapped its executable
    /// (`prctl(PR_SET_MM_EXE_FILE)` or `PR_SET_MM_MAP`) to look like another program.
    pub exe_swapped_to: Option<String>,
    /// The parent first, then its parent, at most [`LINEAGE_DEPTH`](crate::LINEAGE_DEPTH), each
    /// as it was when it forked its child; empty when not known.
    pub ancestors: Vec<Ancestor>,
    /// Command line, from the exec event (or `/proc` for processes older than the probes).
    /// Empty when unknown.
    pub args: Vec<String>,
    /// Container id (64 hex digits) from the process's cgroup.
    pub container_id: Option<String>,
    /// Image name from the container runtime's metadata, when it can be read.
    pub container_image: Option<String>,
    /// The container's name (in its pod), from the same metadata.
    pub container_name: Option<String>,
    /// The Kubernetes pod of the container, from the same metadata.
    pub pod: Option<Pod>,
}

/// A process of a lineage, as its child saw it at the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ancestor {
    /// Process id (tgid).
    pub pid: u32,
    /// Real user id, when known.
    pub uid: Option<u32>,
    /// Executable path, as for [`ProcessInfo::exe`].
    pub exe: String,
    /// Command line; empty when unknown.
    pub args: Vec<String>,
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
    /// Read and/or write, from `file->f_mode`; `None` when neither (`O_RDONLY|O_WRONLY`, used
    /// for ioctl-only opens of devices).
    pub access: Option<Access>,
    /// The `O_*` flags of the open file (`file->f_flags`).
    pub flags: u32,
    /// Thread id of the opener.
    pub tid: u32,
    /// Which file was opened: its device and inode.
    pub file: FileId,
    /// The open was reported because of the file's identity ([`Probes::set_identities`](crate::Probes::set_identities)), not
    /// its basename.
    pub by_identity: bool,
    /// The opening process.
    pub process: ProcessInfo,
}
