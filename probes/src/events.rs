//! Decoding of ring buffer records.

use std::mem::size_of;

use anyhow::{Result, bail, ensure};
use picket_probes_common::{
    EventHeader, EventKind, ExecEvent, ExitEvent, FMODE_READ, FMODE_WRITE, ForkEvent, OpenEvent,
    PATH_COMPLETE, PATH_READ_ERROR, PATH_TOO_DEEP, RawPath,
};

use crate::Access;

/// One decoded record. The large ones stay boxed: an open event is about 12 KiB.
pub(crate) enum Record {
    Open(Box<OpenEvent>),
    Exec(Box<ExecEvent>),
    Fork(ForkEvent),
    Exit(ExitEvent),
}

/// Copies a `T` out of `bytes`.
///
/// # Safety
/// `T` must be valid for any bit pattern (the `#[repr(C)]` integer structs of picket-probes-common).
unsafe fn read<T>(bytes: &[u8]) -> Result<T> {
    ensure!(
        bytes.len() >= size_of::<T>(),
        "record of {} bytes, expected {}",
        bytes.len(),
        size_of::<T>()
    );
    // SAFETY: length checked above; read_unaligned copes with the ring buffer's 8-byte alignment
    // and any T is valid for any bytes (caller).
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Like [`read`], straight into a box, so 12 KiB records do not travel through the stack.
///
/// # Safety
/// As for [`read`].
unsafe fn read_boxed<T>(bytes: &[u8]) -> Result<Box<T>> {
    ensure!(
        bytes.len() >= size_of::<T>(),
        "record of {} bytes, expected {}",
        bytes.len(),
        size_of::<T>()
    );
    let mut boxed = Box::<T>::new_uninit();
    // SAFETY: the destination is a fresh allocation of size_of::<T>() bytes and the source has
    // at least that many; any bytes are a valid T (caller).
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            boxed.as_mut_ptr().cast::<u8>(),
            size_of::<T>(),
        );
        Ok(boxed.assume_init())
    }
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Record> {
    // SAFETY: EventHeader is a plain integer struct, valid for any bytes.
    let header: EventHeader = unsafe { read(bytes)? };
    Ok(match EventKind::from_u32(header.kind) {
        // SAFETY (these four): the record types are the plain integer structs of
        // picket-probes-common, valid for any bytes; read/read_boxed check the length.
        Some(EventKind::Open) => Record::Open(unsafe { read_boxed(bytes)? }),
        Some(EventKind::Exec) => Record::Exec(unsafe { read_boxed(bytes)? }),
        Some(EventKind::Fork) => Record::Fork(unsafe { read(bytes)? }),
        Some(EventKind::Exit) => Record::Exit(unsafe { read(bytes)? }),
        None => bail!("unknown event kind {}", header.kind),
    })
}

/// A NUL-terminated (or full) byte array as a string.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Joins a leaf-first [`RawPath`] into `/a/b/c`. Returns the path and whether it is incomplete.
pub(crate) fn path_string<const N: usize, const L: usize>(raw: &RawPath<N, L>) -> (String, bool) {
    let mut names = Vec::with_capacity(N);
    let mut cut_name = false;
    for (len, name) in raw.lens.iter().zip(&raw.names) {
        let len = usize::from(*len).min(L);
        if len == 0 {
            continue;
        }
        // A slot filled to the brim held a longer name, cut by bpf_probe_read_kernel_str.
        cut_name |= len == L;
        let bytes = &name[..len - 1];
        // A filesystem root's own name is "/", met only in detached trees.
        if bytes == b"/" || bytes.is_empty() {
            continue;
        }
        names.push(String::from_utf8_lossy(bytes));
    }
    let complete = raw.flags & PATH_COMPLETE != 0;
    let truncated = cut_name || !complete || raw.flags & (PATH_TOO_DEEP | PATH_READ_ERROR) != 0;
    names.reverse();
    let joined = names.join("/");
    let path = if complete {
        format!("/{joined}")
    } else {
        joined
    };
    (path, truncated)
}

pub(crate) fn exec_args(raw: &ExecEvent) -> Vec<String> {
    let len = (raw.args_len as usize).min(raw.args.len());
    crate::process::split_args(&raw.args[..len])
}

pub(crate) fn access(f_mode: u32) -> Access {
    match (f_mode & FMODE_READ != 0, f_mode & FMODE_WRITE != 0) {
        (true, true) => Access::ReadWrite,
        (true, false) => Access::Read,
        (false, true) => Access::Write,
        (false, false) => Access::Neither,
    }
}

#[cfg(test)]
mod tests {
    use picket_probes_common::PATH_ABSENT;

    use super::*;

    fn raw(names: &[&str], flags: u32) -> RawPath<8, 16> {
        let mut path = RawPath {
            lens: [0; 8],
            flags,
            _pad: 0,
            names: [[0xAA; 16]; 8],
        };
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                continue; // a mount crossing
            }
            let n = name.len().min(15);
            path.names[i][..n].copy_from_slice(&name.as_bytes()[..n]);
            path.names[i][n] = 0;
            path.lens[i] = (n + 1) as u16;
        }
        path
    }

    #[test]
    fn joins_leaf_first_names() {
        let p = raw(&["token", "..data", "", "secrets", "run"], PATH_COMPLETE);
        assert_eq!(
            path_string(&p),
            ("/run/secrets/..data/token".to_owned(), false)
        );
        assert_eq!(
            path_string(&raw(&[], PATH_COMPLETE)),
            ("/".to_owned(), false)
        );
    }

    #[test]
    fn flags_incomplete_paths() {
        let p = raw(&["c", "b"], PATH_TOO_DEEP);
        assert_eq!(path_string(&p), ("b/c".to_owned(), true));
        let p = raw(&["c", "b"], PATH_COMPLETE | PATH_READ_ERROR);
        assert_eq!(path_string(&p), ("/b/c".to_owned(), true));
        // 15 bytes + NUL fill the 16-byte slot: the name may have been longer.
        let p = raw(&["abcdefghijklmnopq"], PATH_COMPLETE);
        assert_eq!(path_string(&p), ("/abcdefghijklmno".to_owned(), true));
        assert!(path_string(&raw(&[], PATH_ABSENT)).1);
    }

    #[test]
    fn access_from_f_mode() {
        assert_eq!(access(1), Access::Read);
        assert_eq!(access(2), Access::Write);
        assert_eq!(access(3 | 0x20), Access::ReadWrite);
        assert_eq!(access(0), Access::Neither);
    }

    #[test]
    fn c_strings() {
        assert_eq!(c_string(b"cat\0\0junk"), "cat");
        assert_eq!(c_string(b"full"), "full");
    }
}
