//! tracefs (and securityfs) access: mounting them when absent, and reading event formats.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Where tracefs is, mounting it at `/sys/kernel/tracing` if nothing is mounted yet. Must run
/// before aya's first tracepoint attach, which looks tracefs up once and caches the answer.
pub(crate) fn ensure_mounted() -> Result<PathBuf> {
    if let Some(found) = find() {
        return Ok(found);
    }
    mount("tracefs", TRACEFS)
        .with_context(|| format!("tracefs is not mounted and mounting it at {TRACEFS} failed"))?;
    find().with_context(|| format!("mounted tracefs at {TRACEFS} but it has no events"))
}

fn find() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("events").is_dir())
}

/// Mounts a pseudo filesystem (`tracefs`, `securityfs`) at `target`.
pub(crate) fn mount(fstype: &str, target: &str) -> Result<()> {
    let source = CString::new("nodev")?;
    let fstype_c = CString::new(fstype)?;
    let target_c = CString::new(target)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call; no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mount -t {fstype} nodev {target}: {}",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("mounted {fstype} at {target}");
    Ok(())
}

/// Whether `category/name` exists as a tracepoint.
pub(crate) fn event_exists(category: &str, name: &str) -> bool {
    find().is_some_and(|dir| dir.join("events").join(category).join(name).is_dir())
}

/// One field of a trace event record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The parsed `format` file of a trace event.
#[derive(Debug)]
pub(crate) struct Format {
    fields: Vec<(String, Field)>,
}

impl Format {
    pub(crate) fn parse(text: &str) -> Format {
        let mut fields = Vec::new();
        for line in text.lines() {
            // "\tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;"
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.parse().ok();
                }
            }
            if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
                // The name is the last identifier of the declaration, before any array suffix.
                let name = decl
                    .split('[')
                    .next()
                    .unwrap_or(decl)
                    .rsplit([' ', '*'])
                    .next()
                    .unwrap_or(decl);
                fields.push((name.to_owned(), Field { offset, size }));
            }
        }
        Format { fields }
    }

    pub(crate) fn field(&self, name: &str) -> Option<Field> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
    }
}

/// Reads and parses `events/<category>/<name>/format`.
pub(crate) fn event_format(category: &str, name: &str) -> Result<Format> {
    let dir = find().context("tracefs is not mounted")?;
    let path = dir.join("events").join(category).join(name).join("format");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Format::parse(&text))
}

/// The active LSMs (`/sys/kernel/security/lsm`), mounting securityfs if needed. `None` when the
/// list cannot be read.
pub(crate) fn active_lsms() -> Option<String> {
    let path = Path::new("/sys/kernel/security/lsm");
    if !path.exists()
        && let Err(err) = mount("securityfs", "/sys/kernel/security")
    {
        tracing::debug!("cannot mount securityfs: {err:#}");
    }
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_format_file() {
        let text = "name: io_uring_complete\nID: 2141\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:int res;\toffset:32;\tsize:4;\tsigned:1;\n\
            \tfield:char comm[16];\toffset:40;\tsize:16;\tsigned:0;\n\n\
            print fmt: \"ring %p\", REC->ctx\n";
        let format = Format::parse(text);
        assert_eq!(
            format.field("req"),
            Some(Field {
                offset: 16,
                size: 8
            })
        );
        assert_eq!(
            format.field("res"),
            Some(Field {
                offset: 32,
                size: 4
            })
        );
        assert_eq!(
            format.field("comm"),
            Some(Field {
                offset: 40,
                size: 16
            })
        );
        assert_eq!(
            format.field("common_type"),
            Some(Field { offset: 0, size: 2 })
        );
        assert_eq!(format.field("nope"), None);
    }
}
