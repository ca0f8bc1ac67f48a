//! Reads a file through one of the ways a process can reach it, for the tests that check the
//! probes see every one of them: plain `open`, `openat2`, an `O_PATH` descriptor reopened
//! through `/proc/self/fd`, a file handle (`open_by_handle_at`), another thread, io_uring, a
//! copy of this program executed from a memfd, and a chroot into a parent of the file. The `token-reader` binary exposes them on its
//! command line, so that a test (on this kernel or in a QEMU guest) can run a renamed copy of it.

pub mod io_uring;

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _},
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

/// How [`read`] reaches the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// `open(path, O_RDONLY)`.
    Open,
    /// Like [`How::Open`], then `_exit` at once: a reader that lives a millisecond or two.
    Quick,
    /// `openat2(AT_FDCWD, path, {O_RDONLY})`.
    Openat2,
    /// `open(path, O_PATH)`, then `open("/proc/self/fd/<n>", O_RDONLY)`.
    OPathReopen,
    /// `name_to_handle_at` then `open_by_handle_at` on the file's directory.
    Handle,
    /// `open` in a second thread.
    Thread,
    /// `IORING_OP_OPENAT` into a normal descriptor.
    IoUring,
    /// `IORING_OP_OPENAT` into a fixed-file slot of the ring (Linux 5.15+): no descriptor, and
    /// nothing is read (the open is what the probes see).
    IoUringFixed,
    /// This program copied into a memfd and executed from it (`execveat(AT_EMPTY_PATH)`), which
    /// then opens the file; the executable's path is the memfd's.
    Memfd,
    /// `open(path, O_WRONLY | O_APPEND)`, writing nothing: no access to the contents.
    WriteOnly,
    /// The path is `ROOT//INNER`: `chroot(ROOT)`, then `open("/INNER")`, the shortened path a
    /// reader that chroots into a parent of the file uses.
    Chroot,
}

impl How {
    /// Every way, with its command-line name.
    pub const ALL: [(&'static str, How); 11] = [
        ("open", How::Open),
        ("quick", How::Quick),
        ("openat2", How::Openat2),
        ("o-path-reopen", How::OPathReopen),
        ("handle", How::Handle),
        ("thread", How::Thread),
        ("io-uring", How::IoUring),
        ("io-uring-fixed", How::IoUringFixed),
        ("memfd", How::Memfd),
        ("write-only", How::WriteOnly),
        ("chroot", How::Chroot),
    ];

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<How> {
        How::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, how)| *how)
    }
}

fn cstring(path: &str) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Takes ownership of a descriptor returned by a system call, or its error.
fn owned(fd: i64) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn read_all(fd: OwnedFd) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::from(fd).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads `path` the way `how` says and returns its contents (empty for [`How::WriteOnly`]).
/// [`How::Memfd`] does not return: it executes the copy, which reads and prints the file.
pub fn read(how: How, path: &str) -> io::Result<Vec<u8>> {
    match how {
        How::Open | How::Quick => std::fs::read(path),
        How::Openat2 => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; }
            let open_how: [u64; 3] = [libc::O_RDONLY as u64, 0, 0];
            let c = cstring(path)?;
            // SAFETY: a NUL-terminated path and an open_how of the size passed.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    open_how.as_ptr(),
                    size_of_val(&open_how),
                )
            };
            read_all(owned(fd)?)
        }
        How::OPathReopen => {
            let c = cstring(path)?;
            // SAFETY: a NUL-terminated path.
            let o_path = owned(unsafe { libc::open(c.as_ptr(), libc::O_PATH) }.into())?;
            use std::os::fd::AsRawFd as _;
            std::fs::read(format!("/proc/self/fd/{}", o_path.as_raw_fd()))
        }
        How::Handle => read_all(open_by_handle(path)?),
        How::Thread => {
            let path = path.to_owned();
            std::thread::spawn(move || std::fs::read(path))
                .join()
                .map_err(|_| io::Error::other("the reading thread panicked"))?
        }
        How::IoUring => {
            let fd = io_uring::openat(path)?;
            if fd < 0 {
                return Err(io::Error::from_raw_os_error(-fd));
            }
            read_all(owned(fd.into())?)
        }
        How::IoUringFixed => match io_uring::openat_fixed(path)? {
            res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
            _ => Ok(Vec::new()),
        },
        How::Memfd => Err(exec_from_memfd(path)),
        How::WriteOnly => {
            std::fs::OpenOptions::new().append(true).open(path)?;
            Ok(Vec::new())
        }
        How::Chroot => {
            let (root, inner) = path.split_once("//").ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "chroot needs ROOT//INNER")
            })?;
            std::os::unix::fs::chroot(root)?;
            std::env::set_current_dir("/")?;
            std::fs::read(format!("/{inner}"))
        }
    }
}

/// `name_to_handle_at` on `path` (links followed), then `open_by_handle_at` with the file's
/// directory as the mount reference.
fn open_by_handle(path: &str) -> io::Result<OwnedFd> {
    /// `struct file_handle` with room for `MAX_HANDLE_SZ` bytes.
    #[repr(C)]
    struct FileHandle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 128],
    }
    let mut handle = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id = 0i32;
    let c = cstring(path)?;
    // SAFETY: a NUL-terminated path, a handle buffer of the size it declares, an int for the id.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut handle as *mut FileHandle,
            &mut mount_id as *mut i32,
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let resolved = std::fs::canonicalize(path)?;
    let dir = resolved.parent().unwrap_or(Path::new("/"));
    let mount = File::open(dir)?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: the handle name_to_handle_at filled, and a descriptor on the same mount.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut handle as *mut FileHandle,
            libc::O_RDONLY,
        )
    };
    owned(fd)
}

/// Copies this program into a memfd named after it and executes that with `open <path>`;
/// returns only on failure.
fn exec_from_memfd(path: &str) -> io::Error {
    let run = || -> io::Result<()> {
        let exe = std::env::current_exe()?;
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "token-reader".into());
        let c_name = cstring(&name)?;
        // SAFETY: a NUL-terminated name and no flags.
        let memfd = owned(unsafe { libc::memfd_create(c_name.as_ptr(), 0) }.into())?;
        let mut file = File::from(memfd);
        std::io::copy(&mut File::open(&exe)?, &mut file)?;
        let argv = [c_name.clone(), cstring("open")?, cstring(path)?];
        let mut argv: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let envp = [std::ptr::null::<libc::c_char>()];
        use std::os::fd::AsRawFd as _;
        // SAFETY: NUL-terminated argv and envp arrays of NUL-terminated strings that outlive
        // the call; AT_EMPTY_PATH executes the descriptor itself.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                file.as_raw_fd(),
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        Err(io::Error::last_os_error())
    };
    match run() {
        Ok(()) => io::Error::other("execveat returned"),
        Err(err) => err,
    }
}
