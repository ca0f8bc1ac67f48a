//! Standard output and files: signals as JSON lines. A file is reopened when its path no longer
//! names the file being written (logrotate renamed it) and after any write error.

use super::{Destination, Failure, Sending};
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Where the lines go.
enum Target {
    Stdout,
    Path {
        path: PathBuf,
        /// The file open now, with its device and inode.
        open: Option<(File, (u64, u64))>,
    },
}

/// Stdout or a file.
pub struct FileOutput {
    target: Target,
    /// Whether a failure ends the output (a replay) or is retried.
    give_up: bool,
    /// A batch cut short by an error: its length and the bytes of it already written, so that
    /// the retry writes only the rest.
    resume: Option<(usize, usize)>,
    buffer: Vec<u8>,
}

impl FileOutput {
    /// Standard output.
    pub fn stdout(give_up: bool) -> FileOutput {
        FileOutput::new(Target::Stdout, give_up)
    }

    /// The file at `path`, created if missing and appended to; opened now, so that a path that
    /// cannot be opened fails the start.
    pub fn file(path: PathBuf, give_up: bool) -> io::Result<FileOutput> {
        let mut output = FileOutput::new(Target::Path { path, open: None }, give_up);
        output.open_file()?;
        Ok(output)
    }

    fn new(target: Target, give_up: bool) -> FileOutput {
        FileOutput {
            target,
            give_up,
            resume: None,
            buffer: Vec::with_capacity(1 << 16),
        }
    }

    /// Opens the file at the path (again), unless the open one is still the one it names.
    fn open_file(&mut self) -> io::Result<()> {
        let Target::Path { path, open } = &mut self.target else {
            return Ok(());
        };
        let named = std::fs::metadata(&*path).ok().map(|m| (m.dev(), m.ino()));
        if let Some((_, identity)) = open
            && named == Some(*identity)
        {
            return Ok(());
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*path)
            .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))?;
        let meta = file.metadata()?;
        if open.is_some() {
            tracing::info!(output = %path.display(), "output file reopened (it was renamed, removed or failed)");
        }
        *open = Some((file, (meta.dev(), meta.ino())));
        Ok(())
    }

    fn write(&mut self, batch: &[Bytes]) -> io::Result<()> {
        let reopened_before = match &self.target {
            Target::Path { open, .. } => open.as_ref().map(|(_, id)| *id),
            Target::Stdout => None,
        };
        self.open_file()?;
        self.buffer.clear();
        for line in batch {
            self.buffer.extend_from_slice(line);
            self.buffer.push(b'\n');
        }
        let mut at = match self.resume.take() {
            Some((len, at)) if len == self.buffer.len() => at,
            _ => 0,
        };
        let reopened = match &self.target {
            Target::Path { open, .. } => open.as_ref().map(|(_, id)| *id) != reopened_before,
            Target::Stdout => false,
        };
        if reopened {
            // The part already written went to the old file: the new one starts at a line.
            at = self.buffer[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |end| end + 1);
        }
        let result = match &mut self.target {
            Target::Stdout => write_from(&mut io::stdout().lock(), &self.buffer, &mut at),
            Target::Path { open, .. } => {
                let (file, _) = open.as_mut().expect("opened above");
                write_from(file, &self.buffer, &mut at)
            }
        };
        if let Err(err) = result {
            self.resume = Some((self.buffer.len(), at));
            if let Target::Path { open, .. } = &mut self.target {
                // Reopened before the retry: the error may be the file's (a lost NFS handle).
                *open = None;
            }
            return Err(err);
        }
        Ok(())
    }
}

/// Writes `buffer[*at..]`, moving `at` as bytes are written.
fn write_from(out: &mut impl Write, buffer: &[u8], at: &mut usize) -> io::Result<()> {
    while *at < buffer.len() {
        match out.write(&buffer[*at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *at += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    out.flush()
}

impl Destination for FileOutput {
    fn max_batch(&self) -> usize {
        256
    }

    fn deliver<'a>(&'a mut self, batch: &'a [Bytes]) -> Sending<'a> {
        // A local write: done here, on the output's own thread.
        let result = self.write(batch).map_err(|err| {
            if self.give_up {
                Failure::Fatal(err.to_string())
            } else {
                Failure::Retry(err.to_string())
            }
        });
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_file_is_reopened_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signals.jsonl");
        let mut output = FileOutput::file(path.clone(), false).unwrap();
        output.write(&[Bytes::from_static(b"{\"n\":1}")]).unwrap();
        let rotated = dir.path().join("signals.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        output.write(&[Bytes::from_static(b"{\"n\":2}")]).unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "{\"n\":1}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
    }
}
