//! Decoding of ring buffer records.
//!
//! Open and exec records are variable-length: a fixed `#[repr(C)]` part, then strings whose
//! lengths the fixed part gives. Every length is checked against its limit and against the
//! record's actual size before anything is sliced: a record is never trusted.

use std::mem::size_of;

use anyhow::{Context as _, Result, bail, ensure};
use picket_probes_common::{
    ARGS_LEN, CGROUP_NAME_LEN, EXE_BYTES, ExecRecord, ExitRecord, FMODE_READ, FMODE_WRITE,
    ForkRecord, NAME_READ, OpenRecord, PATH_BYTES, PATH_COMPLETE, PATH_READ_ERROR, PATH_TOO_DEEP,
    PATH_TOO_LONG, PathInfo, RecordHeader, RecordKind,
};

use picket_abi::Access;

/// One decoded record.
pub(crate) enum Record {
    Open(Open),
    Exec(Exec),
    Fork(ForkRecord),
    Exit(ExitRecord),
}

/// An open record: its fixed part and its decoded strings.
pub(crate) struct Open {
    pub raw: OpenRecord,
    /// Leaf name of the task's cgroup (v2).
    pub cgroup: String,
    /// The file's path, and whether it is incomplete.
    pub path: (String, bool),
    /// The executable's path, and whether it is incomplete.
    pub exe: (String, bool),
}

/// An exec record: its fixed part and its decoded strings.
pub(crate) struct Exec {
    pub raw: ExecRecord,
    pub cgroup: String,
    pub exe: String,
    pub args: Vec<String>,
}

/// Copies a `T` out of the start of `bytes`; returns it and the bytes after it.
fn read<T: aya::Pod>(bytes: &[u8]) -> Result<(T, &[u8])> {
    ensure!(
        bytes.len() >= size_of::<T>(),
        "record of {} bytes, expected at least {}",
        bytes.len(),
        size_of::<T>()
    );
    // SAFETY: the length is checked above; read_unaligned copes with the ring buffer's 8-byte
    // alignment; and a Pod is valid for any bytes.
    let value = unsafe { bytes.as_ptr().cast::<T>().read_unaligned() };
    Ok((value, &bytes[size_of::<T>()..]))
}

/// Splits the variable part of a record into strings of the given lengths, each checked against
/// its limit; the lengths must add up to exactly what the record holds.
fn split<'a, const N: usize>(
    mut data: &'a [u8],
    fields: [(&str, u32, usize); N],
) -> Result<[&'a [u8]; N]> {
    let mut out = [&data[..0]; N];
    for (slot, (name, len, max)) in out.iter_mut().zip(fields) {
        let len = usize::try_from(len)?;
        ensure!(len <= max, "{name} of {len} bytes, at most {max} expected");
        ensure!(
            len <= data.len(),
            "{name} of {len} bytes overruns the record ({} bytes left)",
            data.len()
        );
        (*slot, data) = data.split_at(len);
    }
    ensure!(
        data.is_empty(),
        "{} bytes after the record's last field",
        data.len()
    );
    Ok(out)
}

/// The nanoseconds of an inode's change time: since 6.13 (multigrain timestamps) the kernel keeps
/// a flag in the top bit of `i_ctime_nsec` (`I_CTIME_QUERIED`), which `stat` never shows.
const CTIME_NSEC_MASK: u32 = (1 << 30) - 1;

/// Decodes one ring buffer record, checking every length it gives against its limit and
/// against the record's size.
pub(crate) fn parse(bytes: &[u8]) -> Result<Record> {
    let (header, _) = read::<RecordHeader>(bytes)?;
    Ok(match RecordKind::from_u32(header.kind) {
        Some(RecordKind::Open) => {
            let (mut raw, data) = read::<OpenRecord>(bytes)?;
            raw.exe_id.ctime_nsec &= CTIME_NSEC_MASK;
            let [cgroup, path, exe] = split(
                data,
                [
                    ("cgroup name", raw.task.cgroup_len, CGROUP_NAME_LEN),
                    ("path", raw.path.len, PATH_BYTES + NAME_READ - 1),
                    ("executable path", raw.exe.len, EXE_BYTES + NAME_READ - 1),
                ],
            )
            .context("open record")?;
            Record::Open(Open {
                cgroup: c_string(cgroup),
                path: path_string(path, raw.path),
                exe: path_string(exe, raw.exe),
                raw,
            })
        }
        Some(RecordKind::Exec) => {
            let (mut raw, data) = read::<ExecRecord>(bytes)?;
            raw.exe_id.ctime_nsec &= CTIME_NSEC_MASK;
            let [cgroup, exe, args] = split(
                data,
                [
                    ("cgroup name", raw.task.cgroup_len, CGROUP_NAME_LEN),
                    ("executable path", raw.exe.len, EXE_BYTES + NAME_READ - 1),
                    ("arguments", raw.args_len, ARGS_LEN),
                ],
            )
            .context("exec record")?;
            Record::Exec(Exec {
                cgroup: c_string(cgroup),
                exe: path_string(exe, raw.exe).0,
                args: crate::process::split_args(args),
                raw,
            })
        }
        Some(RecordKind::Fork) => Record::Fork(read(bytes)?.0),
        Some(RecordKind::Exit) => Record::Exit(read(bytes)?.0),
        None => bail!("unknown event kind {}", header.kind),
    })
}

/// A NUL-terminated (or full) byte array as a string.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Joins the leaf-first, NUL-terminated names of a path into `/a/b/c`. Returns the path and
/// whether it is incomplete (then, if the walk did not reach the root, it has no leading `/`).
pub(crate) fn path_string(names: &[u8], info: PathInfo) -> (String, bool) {
    let mut parts: Vec<_> = names
        .split(|&b| b == 0)
        // A filesystem root's own name is "/", met only in detached trees; the last piece is
        // what follows the final NUL.
        .filter(|name| !name.is_empty() && *name != b"/")
        .map(String::from_utf8_lossy)
        .collect();
    parts.reverse();
    let joined = parts.join("/");
    let complete = info.flags & PATH_COMPLETE != 0;
    let truncated =
        !complete || info.flags & (PATH_TOO_DEEP | PATH_TOO_LONG | PATH_READ_ERROR) != 0;
    let path = if complete {
        format!("/{joined}")
    } else {
        joined
    };
    (path, truncated)
}

/// How a file was opened, from its `f_mode`: the one place a kernel mode becomes an [`Access`];
/// `None` when it is neither readable nor writable.
pub(crate) fn access(f_mode: u32) -> Option<Access> {
    match (f_mode & FMODE_READ != 0, f_mode & FMODE_WRITE != 0) {
        (true, true) => Some(Access::ReadWrite),
        (true, false) => Some(Access::Read),
        (false, true) => Some(Access::Write),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use picket_probes_common::{ExeId, PATH_ABSENT, TaskInfo};

    use super::*;

    /// The leaf-first names of a walk, as the kernel packs them.
    fn names(leaf_first: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for name in leaf_first {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        out
    }

    fn info(names: &[u8], flags: u32) -> PathInfo {
        PathInfo {
            len: names.len() as u32,
            flags,
        }
    }

    #[test]
    fn joins_leaf_first_names() {
        let p = names(&["token", "..data", "secrets", "run"]);
        assert_eq!(
            path_string(&p, info(&p, PATH_COMPLETE)),
            ("/run/secrets/..data/token".to_owned(), false)
        );
        assert_eq!(
            path_string(&[], info(&[], PATH_COMPLETE)),
            ("/".to_owned(), false)
        );
        let p = names(&["x", "/"]);
        assert_eq!(
            path_string(&p, info(&p, PATH_COMPLETE)),
            ("/x".to_owned(), false)
        );
    }

    #[test]
    fn flags_incomplete_paths() {
        let p = names(&["c", "b"]);
        assert_eq!(
            path_string(&p, info(&p, PATH_TOO_DEEP)),
            ("b/c".to_owned(), true)
        );
        assert_eq!(
            path_string(&p, info(&p, PATH_TOO_LONG)),
            ("b/c".to_owned(), true)
        );
        assert_eq!(
            path_string(&p, info(&p, PATH_COMPLETE | PATH_READ_ERROR)),
            ("/b/c".to_owned(), true)
        );
        assert!(path_string(&[], info(&[], PATH_ABSENT)).1);
    }

    fn task(cgroup_len: u32) -> TaskInfo {
        TaskInfo {
            tgid: 7,
            tid: 8,
            ppid: 1,
            uid: 0,
            gid: 0,
            euid: 0,
            egid: 0,
            cgroup_len,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    /// An open record as the kernel writes it.
    fn open_record(cgroup: &[u8], path: &[u8], exe: &[u8]) -> (OpenRecord, Vec<u8>) {
        let raw = OpenRecord {
            header: RecordHeader {
                kind: RecordKind::Open as u32,
                _pad: 0,
                ts_boot_ns: 1,
            },
            task: task(cgroup.len() as u32),
            source: 3,
            f_mode: 1,
            f_flags: 0,
            fd: 3,
            path: info(path, PATH_COMPLETE),
            exe: info(exe, PATH_COMPLETE),
            ino: 12,
            dev: 34,
            by_identity: 0,
            exe_id: ExeId::default(),
        };
        (raw, [cgroup, path, exe].concat())
    }

    fn bytes_of(raw: &OpenRecord, data: &[u8]) -> Vec<u8> {
        // SAFETY: OpenRecord is a plain integer struct without padding.
        let fixed = unsafe {
            std::slice::from_raw_parts(
                (raw as *const OpenRecord).cast::<u8>(),
                size_of::<OpenRecord>(),
            )
        };
        [fixed, data].concat()
    }

    #[test]
    fn decodes_an_open_record() {
        let (raw, data) = open_record(
            b"session-1.scope\0",
            &names(&["token", "tmp"]),
            &names(&["cat", "bin", "usr"]),
        );
        let Record::Open(open) = parse(&bytes_of(&raw, &data)).unwrap() else {
            panic!("not an open");
        };
        assert_eq!(open.cgroup, "session-1.scope");
        assert_eq!(open.path, ("/tmp/token".to_owned(), false));
        assert_eq!(open.exe, ("/usr/bin/cat".to_owned(), false));
    }

    #[test]
    fn rejects_lengths_that_do_not_fit() {
        let (raw, data) = open_record(b"cg\0", &names(&["token"]), &names(&["cat"]));
        let good = bytes_of(&raw, &data);
        // Cut short, or with bytes to spare.
        for bytes in [
            &good[..good.len() - 1],
            &[good.as_slice(), &[0]].concat()[..],
        ] {
            assert!(parse(bytes).is_err());
        }
        assert!(parse(&good[..size_of::<OpenRecord>() - 1]).is_err());
        // Lengths beyond their limits, or beyond the record, however they add up.
        let mut bad = raw;
        bad.task.cgroup_len = CGROUP_NAME_LEN as u32 + 1;
        let err = parse(&bytes_of(&bad, &data)).err().unwrap();
        assert!(
            format!("{err:#}").contains("cgroup name of 129 bytes"),
            "{err:#}"
        );
        let mut bad = raw;
        bad.path.len = u32::MAX;
        assert!(parse(&bytes_of(&bad, &data)).is_err());
        let mut bad = raw;
        bad.exe.len += 1;
        let err = parse(&bytes_of(&bad, &data)).err().unwrap();
        assert!(
            format!("{err:#}").contains("overruns the record"),
            "{err:#}"
        );
        let mut bad = raw;
        bad.header.kind = 99;
        assert!(parse(&bytes_of(&bad, &data)).is_err());
    }

    #[test]
    fn access_from_f_mode() {
        assert_eq!(access(1), Some(Access::Read));
        assert_eq!(access(2), Some(Access::Write));
        assert_eq!(access(3 | 0x20), Some(Access::ReadWrite));
        assert_eq!(access(0), None);
    }

    #[test]
    fn c_strings() {
        assert_eq!(c_string(b"cat\0\0junk"), "cat");
        assert_eq!(c_string(b"full"), "full");
    }
}
