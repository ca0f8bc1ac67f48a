//! User names for uids, from the `/etc/passwd` in each process's own root: a container's users
//! are its image's, not the node's.
//!
//! The file can only be reached through `/proc/<pid>/root` while some process of that root lives,
//! and the reader of a token is often gone (a `cat` lives a millisecond) by the time its event is
//! read. So tables are kept per root (a container, or the host), read at first sight of the root
//! (its first exec record, while that process most likely still runs) and, when still missing at
//! an open, through the opener, its parent, or any other live process of the same container.
//!
//! The file belongs to the container, which may be hostile: it is opened with `openat2`'s
//! `RESOLVE_IN_ROOT` (an absolute link inside it cannot lead out to the agent's own files),
//! non-blocking (a FIFO cannot hang the agent), must be a regular file, and is read up to a bound.
//! What it says is a hint, and checked as one: a name longer than [`MAX_NAME_BYTES`] or with
//! other characters than a user name's is not taken, and `root` names uid 0 only (a container
//! calling uid 4242 `root`, or uid 0 anything else, gets no name: the signal's uid says who).
//! The host's table is read only through the host's own root (`/proc/1/root`), never through
//! the process that opened: a host process in a chroot has the chroot's passwd.

use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::process::ProcessCache;

/// Largest passwd file read; the rest is ignored.
const MAX_PASSWD_BYTES: u64 = 1 << 20;
/// Most roots whose tables are kept (cleared and refilled past it).
const MAX_TABLES: usize = 4096;
/// A table that lacks a uid is read again after this long (a user added since).
const REREAD_AFTER: Duration = Duration::from_secs(10);
/// Other live processes of a container tried when the opener and its parent are gone.
const MAX_CANDIDATES: usize = 8;
/// Longest user name taken (Linux's `useradd` allows 32 bytes).
pub const MAX_NAME_BYTES: usize = 32;
/// The host's init, whose root is the host's (through the host's procfs).
const HOST_INIT: u32 = 1;

/// Users of one root: uid to name, as the first matching passwd line says.
#[derive(Debug)]
struct Table {
    names: HashMap<u32, String>,
    read_at: Instant,
}

/// User-name tables per root: `None` for the host's, `Some(id)` for a container's.
#[derive(Debug)]
pub(crate) struct UserNames {
    proc_root: PathBuf,
    tables: HashMap<Option<String>, Table>,
}

impl UserNames {
    pub(crate) fn new(proc_root: impl Into<PathBuf>) -> UserNames {
        UserNames {
            proc_root: proc_root.into(),
            tables: HashMap::new(),
        }
    }

    /// First sight of a process (its exec): reads its root's table if none is known yet.
    pub(crate) fn observe(&mut self, pid: u32, container: Option<&str>) {
        let key = container.map(str::to_owned);
        if !self.tables.contains_key(&key) {
            // The host's table only ever from the host's root.
            let pid = if container.is_none() { HOST_INIT } else { pid };
            self.read_from(&key, [pid]);
        }
    }

    /// The name of `uid` for the process `pid` (parent `ppid`) of `container`.
    pub(crate) fn name(
        &mut self,
        uid: u32,
        pid: u32,
        ppid: u32,
        container: Option<&str>,
        cache: &ProcessCache,
    ) -> Option<String> {
        let key = container.map(str::to_owned);
        match self.tables.get(&key) {
            Some(table) if table.names.contains_key(&uid) => return table.names.get(&uid).cloned(),
            Some(table) if table.read_at.elapsed() < REREAD_AFTER => return None,
            _ => {}
        }
        if container.is_none() {
            // A host process may have chrooted anywhere: the host's table comes from its root.
            self.read_from(&key, [HOST_INIT]);
            return self.tables.get(&key)?.names.get(&uid).cloned();
        }
        // The opener first (its root is the one that counts), then processes sure to share it.
        let same_root = |other: u32| {
            cache
                .get(other)
                .is_some_and(|c| c.container_id.as_deref() == container)
        };
        let parent = same_root(ppid).then_some(ppid);
        let others = cache
            .pids_in(container)
            .filter(|&other| other != pid && Some(other) != parent)
            .take(MAX_CANDIDATES);
        let candidates = std::iter::once(pid).chain(parent).chain(others);
        self.read_from(&key, candidates);
        self.tables.get(&key)?.names.get(&uid).cloned()
    }

    /// Reads the table for `key` from the first candidate process whose root can be opened.
    fn read_from(&mut self, key: &Option<String>, candidates: impl IntoIterator<Item = u32>) {
        for pid in candidates {
            let Some(root) = open_root(&self.proc_root, pid) else {
                continue; // gone, or not ours to look into
            };
            // A root without a readable passwd has no names: remembered as such.
            let names = read_passwd(&root).map(|t| parse(&t)).unwrap_or_default();
            if self.tables.len() >= MAX_TABLES {
                self.tables.clear();
            }
            self.tables.insert(
                key.clone(),
                Table {
                    names,
                    read_at: Instant::now(),
                },
            );
            return;
        }
    }
}

/// `/proc/<pid>/root` as a directory descriptor.
fn open_root(proc_root: &std::path::Path, pid: u32) -> Option<OwnedFd> {
    let path = CString::new(
        proc_root
            .join(pid.to_string())
            .join("root")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .ok()?;
    // SAFETY: path is a valid NUL-terminated string; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads `etc/passwd` under `root`, resolving every link inside that root.
fn read_passwd(root: &OwnedFd) -> Option<String> {
    // SAFETY: open_how is plain integers (non-exhaustive in libc, so built from zeroes).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let name = c"etc/passwd";
    // SAFETY: valid dirfd, NUL-terminated path and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd as i32) };
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_PASSWD_BYTES).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether `name` looks like a user name: at most [`MAX_NAME_BYTES`] of letters, digits, `.`,
/// `_`, `-` (not first), and a final `$` (machine accounts); anything else is not shown.
fn valid_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !body.starts_with('-')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `name:password:uid:...` lines; the first line of a uid wins, as with `getpwuid`. Names that
/// are not valid ([`valid_name`]), and `root` for any uid but 0 or another name for uid 0, give
/// that uid no name.
fn parse(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if name.is_empty() || name.starts_with(['#', '+']) {
            continue;
        }
        let Ok(uid) = uid.trim().parse::<u32>() else {
            continue;
        };
        let believable = valid_name(name) && ((uid == 0) == (name == "root"));
        // The first line decides, as with getpwuid: a later line cannot replace a refused one.
        names
            .entry(uid)
            .or_insert_with(|| believable.then(|| name.to_owned()));
    }
    names
        .into_iter()
        .filter_map(|(uid, name)| Some((uid, name?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_passwd_lines() {
        let names = parse(
            "root:x:0:0:root:/root:/bin/bash\n# comment\n+nis\nbroken\napp:x:1000:1000::/:/bin/sh\n\
             again:x:1000:1000::/:/bin/sh\n:x:5:5::/:\n",
        );
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&1000).map(String::as_str), Some("app"));
        assert_eq!(names.len(), 2);
    }

    /// Issue 21 item 5: a container's passwd can say anything; what is not believable is not
    /// shown (the signal keeps the uid).
    #[test]
    fn names_that_lie_are_not_taken() {
        let huge = "a".repeat(1 << 20);
        let names = parse(&format!(
            "root:x:4242:0::/:/bin/sh\nnobody:x:0:0::/:\n{huge}:x:7:7::/:\n\
             bad\u{1b}[31mname:x:8:8::/:\nspace name:x:9:9::/:\n-dash:x:10:10::/:\n\
             ok.name_1-x:x:11:11::/:\nhost$:x:12:12::/:\nroot:x:13:13::/:\nlater:x:4242:0::/:\n"
        ));
        for uid in [4242, 0, 7, 8, 9, 10, 13] {
            assert_eq!(names.get(&uid), None, "uid {uid}: {:?}", names.get(&uid));
        }
        assert_eq!(names.get(&11).map(String::as_str), Some("ok.name_1-x"));
        assert_eq!(names.get(&12).map(String::as_str), Some("host$"));
        assert_eq!(
            parse("root:x:0:0::/:\n").get(&0).map(String::as_str),
            Some("root")
        );
        assert!(valid_name(&"u".repeat(MAX_NAME_BYTES)));
        assert!(!valid_name(&"u".repeat(MAX_NAME_BYTES + 1)));
    }

    #[test]
    fn reads_this_process_root() {
        let mut users = UserNames::new("/proc");
        let cache = ProcessCache::default();
        let me = std::process::id();
        // Whatever the host (the root of this procfs's init) calls uid 0, if it has one.
        let expected = std::fs::read_to_string("/proc/1/root/etc/passwd")
            .ok()
            .and_then(|text| parse(&text).get(&0).cloned());
        assert_eq!(users.name(0, me, 0, None, &cache), expected);
        // A process that does not exist gives no table, and no name.
        assert_eq!(
            users.name(0, u32::MAX - 1, 0, Some("no-such-container"), &cache),
            None
        );
    }

    /// Issue 21 item 5: a host process in a chroot whose passwd lacks its uid once replaced the
    /// host's table with the chroot's, so that later host reads said the wrong names.
    #[test]
    fn a_chrooted_host_process_never_decides_the_hosts_names() {
        let top = std::env::temp_dir().join(format!("picket-chroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let root = |name: &str, passwd: &str| {
            let dir = top.join(name);
            std::fs::create_dir_all(dir.join("etc")).unwrap();
            std::fs::write(dir.join("etc/passwd"), passwd).unwrap();
            dir
        };
        let host = root("host", "root:x:0:0::/:\nalice:x:1000:1000::/:\n");
        let chroot = root("chroot", "root:x:0:0::/:\nnobody:x:1000:1000::/:\n");
        // A procfs with the host's init (pid 1) and a chrooted host process (pid 500).
        let proc = top.join("proc");
        for (pid, dir) in [(1, &host), (500, &chroot)] {
            std::fs::create_dir_all(proc.join(pid.to_string())).unwrap();
            std::os::unix::fs::symlink(dir, proc.join(pid.to_string()).join("root")).unwrap();
        }
        let mut users = UserNames::new(&proc);
        let cache = ProcessCache::default();
        users.observe(500, None);
        assert_eq!(
            users.name(1000, 500, 1, None, &cache).as_deref(),
            Some("alice")
        );
        assert_eq!(
            users.name(1000, 1, 0, None, &cache).as_deref(),
            Some("alice")
        );
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn links_stay_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("picket-users-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("inside"), "inside:x:7:7::/:\n").unwrap();
        // An absolute link: resolved in the root it is in, never in the agent's.
        std::os::unix::fs::symlink("/inside", dir.join("etc/passwd")).unwrap();
        let root = File::open(&dir).unwrap();
        let root = OwnedFd::from(root);
        let text = read_passwd(&root).unwrap();
        assert_eq!(parse(&text).get(&7).map(String::as_str), Some("inside"));
        // A file outside the root, named by its absolute path and through `..`: both resolve
        // inside the root, where it does not exist.
        let outside = std::env::temp_dir().join(format!("picket-users-out-{}", std::process::id()));
        std::fs::write(&outside, "outside:x:7:7::/:\n").unwrap();
        for target in [
            outside.clone(),
            Path::new("/../../../..").join(outside.strip_prefix("/").unwrap()),
        ] {
            std::fs::remove_file(dir.join("etc/passwd")).unwrap();
            std::os::unix::fs::symlink(&target, dir.join("etc/passwd")).unwrap();
            assert_eq!(read_passwd(&root), None, "{}", target.display());
        }
        std::fs::remove_file(&outside).unwrap();
        // A FIFO is refused at once instead of blocking the agent.
        std::fs::remove_file(dir.join("etc/passwd")).unwrap();
        let fifo =
            CString::new(dir.join("etc/passwd").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert_eq!(read_passwd(&root), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
