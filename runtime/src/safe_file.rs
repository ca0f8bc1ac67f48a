//! Reading files that someone else controls (rule modules, conformance cases) without letting
//! them block, grow without bound or pose as something else.
//!
//! A path in a rules folder can be swapped between listing and reading: for a FIFO (an `open`
//! that blocks until a writer comes, forever), a device such as `/dev/zero` (a read that never
//! ends), a directory or a dangling link. So a file is opened with `O_NONBLOCK` (opening a FIFO
//! returns at once) and `O_CLOEXEC`, checked with `fstat` on the descriptor actually opened (not
//! on the path, which may have changed since), accepted only as a regular file of at most the
//! given size, and read with that bound again (a file may grow while it is read).

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not read.
#[derive(Debug)]
pub enum Refused {
    /// Nothing at the path.
    Missing,
    /// A symbolic link whose target does not exist.
    BrokenLink,
    /// Something other than a regular file (what it is).
    NotRegular(&'static str),
    /// Larger than allowed.
    TooLarge {
        /// Its size, or at least how much was there when reading stopped.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// Opening or reading failed.
    Io(io::Error),
    /// Its name holds control characters (it would break the log lines naming it).
    ControlCharacters,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Missing => f.write_str("does not exist"),
            Refused::BrokenLink => f.write_str("is a broken symbolic link"),
            Refused::NotRegular(kind) => write!(f, "is a {kind}, not a regular file"),
            Refused::TooLarge { size, max } => {
                write!(f, "is {size} bytes or more, more than the {max} allowed")
            }
            Refused::Io(err) => write!(f, "cannot be read: {err}"),
            Refused::ControlCharacters => f.write_str("has control characters in its name"),
        }
    }
}

impl std::error::Error for Refused {}

/// What kind of file `metadata` describes, in words.
fn kind(metadata: &Metadata) -> &'static str {
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens `path` (following links, as a ConfigMap volume's entries are links through `..data`)
/// without blocking, and accepts it only if the opened descriptor is a regular file of at most
/// `max_bytes`. Returns the file and its metadata from `fstat`.
pub fn open_regular(path: &Path, max_bytes: u64) -> Result<(File, Metadata), Refused> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| match err.kind() {
            io::ErrorKind::NotFound if std::fs::symlink_metadata(path).is_ok() => {
                Refused::BrokenLink
            }
            io::ErrorKind::NotFound => Refused::Missing,
            _ => match std::fs::metadata(path) {
                // Opening a directory read-only works on Linux, but other kinds can fail first.
                Ok(metadata) if !metadata.is_file() => Refused::NotRegular(kind(&metadata)),
                _ => Refused::Io(err),
            },
        })?;
    let metadata = file.metadata().map_err(Refused::Io)?;
    if !metadata.is_file() {
        return Err(Refused::NotRegular(kind(&metadata)));
    }
    if metadata.len() > max_bytes {
        return Err(Refused::TooLarge {
            size: metadata.len(),
            max: max_bytes,
        });
    }
    Ok((file, metadata))
}

/// Reads a whole regular file of at most `max_bytes` (see [`open_regular`]).
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>, Refused> {
    let (file, metadata) = open_regular(path, max_bytes)?;
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(Refused::Io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Refused::TooLarge {
            size: bytes.len() as u64,
            max: max_bytes,
        });
    }
    Ok(bytes)
}

/// What is at `path` when it is not a regular file (following links), for a listing that skips
/// such entries: `None` for a regular file.
pub fn not_regular(path: &Path) -> Option<Refused> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => None,
        Ok(metadata) => Some(Refused::NotRegular(kind(&metadata))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            Some(if std::fs::symlink_metadata(path).is_ok() {
                Refused::BrokenLink
            } else {
                Refused::Missing
            })
        }
        Err(err) => Some(Refused::Io(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"12345");
        assert!(matches!(
            read_regular(&file, 4),
            Err(Refused::TooLarge { size: 5, max: 4 })
        ));
        assert!(matches!(
            read_regular(dir.path(), 100),
            Err(Refused::NotRegular("directory"))
        ));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 100),
            Err(Refused::NotRegular("character device"))
        ));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("gone"), &link).unwrap();
        assert!(matches!(read_regular(&link, 100), Err(Refused::BrokenLink)));
        assert!(matches!(not_regular(&link), Some(Refused::BrokenLink)));
        assert!(not_regular(&file).is_none());
        // A FIFO with no writer: a plain open would block forever.
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(matches!(
            read_regular(&fifo, 100),
            Err(Refused::NotRegular("FIFO"))
        ));
    }
}
