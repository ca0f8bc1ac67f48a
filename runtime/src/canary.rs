//! Proof that the kernel hook sees opens: a hook can attach and still report nothing (an LSM
//! program where the BPF LSM is not active, a confinement that blinds it, a kernel bug). The
//! agent keeps a file of its own, [`BASENAME`] in its state directory, whose basename it adds
//! to the kernel prefilter; a child process opens it, and the hook must report that open within
//! [`DEADLINE`]. At start a strategy that does not is replaced by the next one; while none does
//! the agent is blind: `/readyz` fails and `picket_probe_blind` is 1 (docs/cli.md). The proof is
//! repeated every [`EVERY`] (every [`EVERY_WHILE_BLIND`] while blind).
//!
//! The open is made by a forked child because the probes leave out the agent's own process.

use picket_probes::OpenEvent;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The canary file's name, added to the kernel's basename approvers.
pub const BASENAME: &str = "picket-canary";
/// How long the hook may take to report the canary open.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// How often the proof is repeated while the hook sees opens.
pub const EVERY: Duration = Duration::from_secs(60);
/// How often it is repeated while the agent is blind.
pub const EVERY_WHILE_BLIND: Duration = Duration::from_secs(10);

/// What a check of the canary found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing new: no open pending, or one pending within its deadline.
    Waiting,
    /// The pending open was not reported within [`DEADLINE`].
    Missed,
}

/// The canary file and the open of it waiting to be reported.
pub struct Canary {
    path: PathBuf,
    c_path: CString,
    id: picket_probes::FileId,
    /// When the last open was made, and whether it is still waiting to be reported.
    sent: Option<Instant>,
    pending: bool,
    blind: bool,
}

impl Canary {
    /// Creates (or reuses) the canary file in `dir`, the agent's state directory (only root can
    /// write there, so no one else can make the opens this proof counts).
    pub fn create(dir: &Path) -> anyhow::Result<Canary> {
        let path = dir.join(BASENAME);
        // Empty: it takes an inode and no block, so even a full state disk can hold it.
        crate::trust::check_own_file(&path, "canary file")?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|err| anyhow::anyhow!("creating the canary file {}: {err}", path.display()))?;
        let metadata = file.metadata()?;
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| anyhow::anyhow!("{}: a NUL in the path", path.display()))?;
        Ok(Canary {
            id: picket_probes::file_id_of(&metadata),
            path,
            c_path,
            sent: None,
            pending: false,
            blind: false,
        })
    }

    /// The canary file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the canary (in a child process) and starts waiting for its report.
    pub fn open(&mut self) -> io::Result<()> {
        self.sent = Some(Instant::now());
        self.pending = true;
        open_in_child(&self.c_path)
    }

    /// Whether `event` is an open of the canary; one that is ends the wait. Such events are the
    /// agent's own and go to no rule.
    pub fn is_canary(&mut self, event: &OpenEvent) -> bool {
        let ours = event.file == self.id || Path::new(&event.path) == self.path;
        if ours {
            self.pending = false;
        }
        ours
    }

    /// Whether an open is waiting to be reported.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Whether the last proof failed.
    pub fn blind(&self) -> bool {
        self.blind
    }

    /// Records the outcome of the last proof; returns whether it changed.
    pub fn set_blind(&mut self, blind: bool) -> bool {
        std::mem::replace(&mut self.blind, blind) != blind
    }

    /// On the agent's periodic tick: whether the pending open missed its deadline (then it is
    /// no longer pending), and a new open when the last one is old enough.
    pub fn tick(&mut self) -> io::Result<Verdict> {
        let Some(sent) = self.sent else {
            return Ok(Verdict::Waiting);
        };
        if self.pending {
            if sent.elapsed() >= DEADLINE {
                self.pending = false;
                return Ok(Verdict::Missed);
            }
            return Ok(Verdict::Waiting);
        }
        let every = if self.blind { EVERY_WHILE_BLIND } else { EVERY };
        if sent.elapsed() >= every {
            self.open()?;
        }
        Ok(Verdict::Waiting)
    }
}

/// Opens `path` read-only in a forked child and waits for the child to exit.
fn open_in_child(path: &CString) -> io::Result<()> {
    // SAFETY: fork has no preconditions; the child below calls only async-signal-safe functions
    // (open, close, _exit) on memory prepared before the fork, as POSIX requires of the child of
    // a multithreaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: `path` is a valid NUL-terminated string, alive in the child's copy of memory.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: closes the descriptor just opened.
            unsafe { libc::close(fd) };
        }
        // SAFETY: ends the child without running the parent's exit handlers or destructors.
        unsafe { libc::_exit(if fd >= 0 { 0 } else { 1 }) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the child opening the canary failed (wait status {status})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_opens_the_canary_and_a_missed_report_is_a_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let mut canary = Canary::create(dir.path()).unwrap();
        assert_eq!(canary.path(), dir.path().join(BASENAME));
        // Ok only when the child's open succeeded (its exit status says so).
        canary.open().unwrap();
        assert!(canary.pending());
        // No hook here: the open is never reported; only the deadline can end the wait, which
        // this test does not wait for. A report ends it.
        assert_eq!(canary.tick().unwrap(), Verdict::Waiting);
        assert!(canary.set_blind(true));
        assert!(!canary.set_blind(true));
        assert!(canary.blind());
    }

    #[test]
    fn a_failing_child_is_an_error() {
        let missing = CString::new("/nonexistent/picket-canary").unwrap();
        assert!(open_in_child(&missing).is_err());
    }
}
