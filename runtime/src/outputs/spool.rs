//! The disk spool of a remote output: signals not yet acknowledged by the receiver, kept under
//! `--state DIR/spool/<output>/` so that a restart, even after kill -9, delivers them.
//!
//! Append-only segment files (`<number>.seg`, each at most an eighth of the bound) of frames:
//! `[payload length: u32 LE][CRC-32 of the rest: u32 LE][queued at, Unix ms: u64 LE][payload]`.
//! Why segments and not the state database: a queue is written once at its tail and deleted at
//! its head, which files do with one `write` and one `unlink`, and dropping the oldest past the
//! bound is deleting the oldest file; a B-tree would rewrite pages and keep its file's size.
//!
//! - **Durability.** Each appended batch is written and `fdatasync`ed before it is first sent:
//!   what was handed to a receiver is on disk (a kill -9 loses nothing even before the sync; the
//!   sync covers a power loss).
//! - **Acknowledgements.** The position of the first unacknowledged signal is written to `ack`
//!   (with its own checksum) after each delivery, not synced: after a crash a batch may be sent
//!   again (receivers deduplicate by `id`), never lost. Segments wholly acknowledged are deleted.
//! - **Recovery.** At open every segment is read; a frame whose length or checksum does not hold
//!   (a write cut short by a crash) ends its segment there: the last segment is truncated to its
//!   good frames, an earlier one's rest is counted as dropped and logged.
//! - **Bound.** Past `bound` bytes the oldest segments are deleted; the signals they held that
//!   were not delivered are counted as dropped and reported.
//! - **One owner.** `lock` is held with `flock` while the spool is open: a second agent or
//!   replay on the same state directory and output is refused.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of a frame's header.
const HEADER: u64 = 16;
/// Largest frame payload accepted (a signal is far smaller: 16 signals per event, 4 KiB fields).
const MAX_PAYLOAD: u32 = 16 << 20;

/// One signal read back from the spool.
#[derive(Clone, Debug)]
pub struct Spooled {
    /// When it was first queued, Unix milliseconds.
    pub queued_ms: u64,
    /// The signal line.
    pub line: bytes::Bytes,
}

struct Segment {
    number: u64,
    /// Bytes of good frames.
    bytes: u64,
    /// Frames in it.
    frames: u64,
}

/// A position: a segment and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    segment: u64,
    offset: u64,
}

/// The spool of one output.
pub struct Spool {
    dir: PathBuf,
    bound: u64,
    segment_max: u64,
    segments: VecDeque<Segment>,
    /// The tail segment, open for appending.
    writer: File,
    /// The first unacknowledged frame.
    read: Position,
    /// Frames read ahead of `read` (not acknowledged yet), with the position after each.
    ahead: VecDeque<(Spooled, Position)>,
    /// Unacknowledged frames and their bytes.
    pending: u64,
    pending_bytes: u64,
    ack: File,
    _lock: File,
    /// Changes when frames are dropped under a delivery in flight (see [`Spool::ack`]).
    generation: u64,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

fn frame(queued_ms: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&queued_ms.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&queued_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads the frame at the reader's position; `None` at the end or at a damaged frame.
fn read_frame(file: &mut impl Read) -> io::Result<Option<Spooled>> {
    let mut header = [0u8; HEADER as usize];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let queued_ms = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    match file.read_exact(&mut payload) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let mut check = crc32fast::Hasher::new();
    check.update(&queued_ms.to_le_bytes());
    check.update(&payload);
    if check.finalize() != crc {
        return Ok(None);
    }
    Ok(Some(Spooled {
        queued_ms,
        line: payload.into(),
    }))
}

/// What opening a spool found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Signals waiting from before.
    pub pending: u64,
    /// Signals lost to damaged frames.
    pub damaged: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, bounded to `bound` bytes.
    pub fn open(dir: &Path, bound: u64) -> io::Result<(Spool, Recovered)> {
        let named = |err: io::Error, what: &Path| {
            io::Error::new(err.kind(), format!("{}: {err}", what.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| named(e, dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| named(e, &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{}: the spool is in use by another picket process",
                        dir.display()
                    ),
                )
            },
        )?;
        let ack_path = dir.join("ack");
        let mut ack = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&ack_path)
            .map_err(|e| named(e, &ack_path))?;
        let mut saved = Vec::new();
        ack.read_to_end(&mut saved)?;
        let acked = parse_ack(&saved);

        let mut numbers: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| named(e, dir))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                name.to_str()?.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut recovered = Recovered::default();
        let mut segments = VecDeque::new();
        let mut read = None;
        for (index, &number) in numbers.iter().enumerate() {
            let path = segment_path(dir, number);
            if acked.is_some_and(|at| number < at.segment) {
                std::fs::remove_file(&path).map_err(|e| named(e, &path))?;
                continue;
            }
            let mut file = io::BufReader::new(File::open(&path).map_err(|e| named(e, &path))?);
            let size = file.get_ref().metadata()?.len();
            let (mut bytes, mut frames) = (0u64, 0u64);
            while let Some(spooled) = read_frame(&mut file)? {
                let end = bytes + HEADER + spooled.line.len() as u64;
                if let Some(at) = acked.filter(|at| at.segment == number)
                    && end <= at.offset
                {
                    // Acknowledged before the stop.
                } else {
                    read.get_or_insert(Position {
                        segment: number,
                        offset: bytes,
                    });
                    recovered.pending += 1;
                }
                bytes = end;
                frames += 1;
            }
            if bytes < size {
                if index + 1 == numbers.len() {
                    // A write cut short at the tail: its signal was never acknowledged to the
                    // agent's pipeline as spooled, so it was never counted as delivered.
                    OpenOptions::new().write(true).open(&path)?.set_len(bytes)?;
                } else {
                    recovered.damaged += 1;
                    tracing::error!(segment = %path.display(), "damaged spool segment: the signals after byte {bytes} are lost");
                }
            }
            segments.push_back(Segment {
                number,
                bytes,
                frames,
            });
        }
        let next = segments.back().map_or(0, |s| s.number + 1);
        let writer_number = match segments.back() {
            Some(last) if last.bytes < bound.max(1) / 8 => last.number,
            _ => {
                File::create(segment_path(dir, next))?;
                segments.push_back(Segment {
                    number: next,
                    bytes: 0,
                    frames: 0,
                });
                next
            }
        };
        let writer = OpenOptions::new()
            .append(true)
            .open(segment_path(dir, writer_number))?;
        let read = read.unwrap_or_else(|| {
            let last = segments.back().expect("a segment was made");
            Position {
                segment: last.number,
                offset: last.bytes,
            }
        });
        let pending_bytes = segments
            .iter()
            .filter(|s| s.number >= read.segment)
            .map(|s| s.bytes)
            .sum::<u64>()
            - read.offset;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            bound,
            segment_max: (bound / 8).max(1),
            segments,
            writer,
            read,
            ahead: VecDeque::new(),
            pending: recovered.pending,
            pending_bytes,
            ack,
            _lock: lock,
            generation: 0,
        };
        spool.save_ack()?;
        spool.delete_acknowledged()?;
        Ok((spool, recovered))
    }

    /// Signals not acknowledged yet.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Changes whenever frames not yet acknowledged are dropped.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends `lines` (queued at `queued_ms`) and syncs them; drops the oldest past the bound.
    /// Returns how many signals were dropped.
    pub fn append(&mut self, lines: &[bytes::Bytes], queued_ms: u64) -> io::Result<u64> {
        let mut dropped = 0;
        let mut buffer = Vec::with_capacity(lines.iter().map(|l| l.len() + 16).sum());
        for line in lines {
            if line.len() as u64 + HEADER > self.bound || line.len() > MAX_PAYLOAD as usize {
                dropped += 1;
                continue;
            }
            let tail = self.segments.back().expect("a tail segment");
            if tail.bytes + (buffer.len() as u64) >= self.segment_max {
                self.flush(&mut buffer)?;
                self.start_segment()?;
            }
            frame(queued_ms, line, &mut buffer);
            self.segments.back_mut().expect("a tail segment").frames += 1;
        }
        self.flush(&mut buffer)?;
        dropped += self.enforce_bound()?;
        Ok(dropped)
    }

    fn flush(&mut self, buffer: &mut Vec<u8>) -> io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let tail = self.segments.back_mut().expect("a tail segment");
        if let Err(err) = self.writer.write_all(buffer) {
            // Keep the segment's length what it was, so that the next append does not follow a
            // partial frame.
            let _ = self.writer.set_len(tail.bytes);
            tail.frames -= count_frames(buffer);
            buffer.clear();
            return Err(err);
        }
        self.writer.sync_data()?;
        let frames = count_frames(buffer);
        tail.bytes += buffer.len() as u64;
        self.pending += frames;
        self.pending_bytes += buffer.len() as u64;
        buffer.clear();
        Ok(())
    }

    fn start_segment(&mut self) -> io::Result<()> {
        let number = self.segments.back().map_or(0, |s| s.number + 1);
        self.writer = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.dir, number))?;
        // The new file's name must survive a crash along with what is written to it.
        File::open(&self.dir)?.sync_all()?;
        self.segments.push_back(Segment {
            number,
            bytes: 0,
            frames: 0,
        });
        Ok(())
    }

    /// Deletes the oldest segments while the spool is over its bound; returns the signals lost.
    fn enforce_bound(&mut self) -> io::Result<u64> {
        let mut dropped = 0;
        while self.bytes() > self.bound && self.segments.len() > 1 {
            let oldest = self.segments.pop_front().expect("two segments");
            let undelivered = oldest.number >= self.read.segment;
            if undelivered {
                // Frames not delivered: the ones from the read position on.
                let (lost, lost_bytes) = if oldest.number == self.read.segment {
                    let from = self.read.offset;
                    (
                        self.count_from(oldest.number, from, oldest.bytes)?,
                        oldest.bytes - from,
                    )
                } else {
                    (oldest.frames, oldest.bytes)
                };
                dropped += lost;
                self.pending -= lost;
                self.pending_bytes -= lost_bytes;
            }
            std::fs::remove_file(segment_path(&self.dir, oldest.number))?;
            if undelivered {
                let next = self.segments.front().expect("one segment left");
                self.read = Position {
                    segment: next.number,
                    offset: 0,
                };
                self.ahead.clear();
                self.generation += 1;
                self.save_ack()?;
            }
        }
        Ok(dropped)
    }

    /// Frames between `from` and `to` in a segment (known from the read-ahead or by reading).
    fn count_from(&self, segment: u64, from: u64, to: u64) -> io::Result<u64> {
        let file = match File::open(segment_path(&self.dir, segment)) {
            Ok(file) => file,
            // Already deleted: count what the read-ahead knew, else none.
            Err(_) => return Ok(0),
        };
        let mut reader = io::BufReader::new(file);
        reader.seek(SeekFrom::Start(from))?;
        let (mut at, mut count) = (from, 0);
        while at < to {
            match read_frame(&mut reader)? {
                Some(spooled) => {
                    at += HEADER + spooled.line.len() as u64;
                    count += 1;
                }
                None => break,
            }
        }
        Ok(count)
    }

    /// Up to `max` signals from the first unacknowledged one, in order (the same ones again
    /// until they are acknowledged).
    pub fn peek(&mut self, max: usize) -> io::Result<Vec<Spooled>> {
        let mut at = self.ahead.back().map_or(self.read, |(_, after)| *after);
        let mut reader: Option<(u64, io::BufReader<File>)> = None;
        while self.ahead.len() < max {
            let Some(segment) = self.segments.iter().find(|s| s.number == at.segment) else {
                break;
            };
            if at.offset >= segment.bytes {
                match self.segments.iter().find(|s| s.number > at.segment) {
                    Some(next) => {
                        at = Position {
                            segment: next.number,
                            offset: 0,
                        };
                        continue;
                    }
                    None => break,
                }
            }
            if reader
                .as_ref()
                .is_none_or(|(number, _)| *number != at.segment)
            {
                let mut file = io::BufReader::new(File::open(segment_path(&self.dir, at.segment))?);
                file.seek(SeekFrom::Start(at.offset))?;
                reader = Some((at.segment, file));
            }
            let (_, file) = reader.as_mut().expect("opened above");
            match read_frame(file)? {
                Some(spooled) => {
                    at.offset += HEADER + spooled.line.len() as u64;
                    self.ahead.push_back((spooled, at));
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: damaged frame at byte {}",
                            segment_path(&self.dir, at.segment).display(),
                            at.offset
                        ),
                    ));
                }
            }
        }
        Ok(self
            .ahead
            .iter()
            .take(max)
            .map(|(spooled, _)| spooled.clone())
            .collect())
    }

    /// When the oldest unacknowledged signal was queued (Unix ms).
    pub fn oldest_ms(&mut self) -> Option<u64> {
        if self.pending == 0 {
            return None;
        }
        if self.ahead.is_empty() {
            let _ = self.peek(1);
        }
        self.ahead.front().map(|(spooled, _)| spooled.queued_ms)
    }

    /// The first `count` signals of the last [`Spool::peek`] were acknowledged by the receiver.
    /// Ignored when `generation` is no longer current: those frames were dropped meanwhile.
    pub fn ack(&mut self, count: usize, generation: u64) -> io::Result<()> {
        if generation != self.generation {
            return Ok(());
        }
        for _ in 0..count {
            let Some((spooled, after)) = self.ahead.pop_front() else {
                break;
            };
            self.read = after;
            self.pending -= 1;
            self.pending_bytes -= HEADER + spooled.line.len() as u64;
        }
        self.save_ack()?;
        self.delete_acknowledged()
    }

    fn save_ack(&mut self) -> io::Result<()> {
        let mut record = [0u8; 20];
        record[0..8].copy_from_slice(&self.read.segment.to_le_bytes());
        record[8..16].copy_from_slice(&self.read.offset.to_le_bytes());
        let crc = crc32fast::hash(&record[0..16]);
        record[16..20].copy_from_slice(&crc.to_le_bytes());
        self.ack.write_all_at(&record, 0)
    }

    /// Deletes the segments before the read position (never the tail).
    fn delete_acknowledged(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 {
            let front = self.segments.front().expect("two segments");
            let done = front.number < self.read.segment
                || (front.number == self.read.segment && self.read.offset >= front.bytes);
            if !done {
                break;
            }
            let number = front.number;
            self.segments.pop_front();
            std::fs::remove_file(segment_path(&self.dir, number))?;
            if self.read.segment == number {
                let next = self.segments.front().expect("one left");
                self.read = Position {
                    segment: next.number,
                    offset: 0,
                };
                self.save_ack()?;
            }
        }
        Ok(())
    }
}

fn count_frames(buffer: &[u8]) -> u64 {
    let mut at = 0;
    let mut count = 0;
    while at + HEADER as usize <= buffer.len() {
        let len = u32::from_le_bytes(buffer[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += HEADER as usize + len;
        count += 1;
    }
    count
}

fn parse_ack(saved: &[u8]) -> Option<Position> {
    let record: &[u8; 20] = saved.get(..20)?.try_into().ok()?;
    let crc = u32::from_le_bytes(record[16..20].try_into().ok()?);
    (crc32fast::hash(&record[0..16]) == crc).then(|| Position {
        segment: u64::from_le_bytes(record[0..8].try_into().expect("8 bytes")),
        offset: u64::from_le_bytes(record[8..16].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<u32>) -> Vec<bytes::Bytes> {
        range
            .map(|i| bytes::Bytes::from(format!("{{\"n\":{i}}}")))
            .collect()
    }

    fn texts(spooled: &[Spooled]) -> Vec<String> {
        spooled
            .iter()
            .map(|s| String::from_utf8(s.line.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn delivers_in_order_and_keeps_the_unacknowledged_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.pending, 0);
        assert_eq!(spool.append(&lines(0..10), 7).unwrap(), 0);
        let first = spool.peek(4).unwrap();
        assert_eq!(texts(&first)[0], "{\"n\":0}");
        assert_eq!(first[0].queued_ms, 7);
        spool.ack(4, spool.generation()).unwrap();
        drop(spool);
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.pending, 6);
        let rest = spool.peek(100).unwrap();
        assert_eq!(
            texts(&rest),
            (4..10)
                .map(|i| format!("{{\"n\":{i}}}"))
                .collect::<Vec<_>>()
        );
        spool.ack(6, spool.generation()).unwrap();
        assert_eq!(spool.pending(), 0);
    }

    #[test]
    fn a_torn_tail_is_cut_at_its_last_good_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&lines(0..3), 1).unwrap();
        drop(spool);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.pending, 3);
        assert_eq!(spool.peek(10).unwrap().len(), 3);
        spool.append(&lines(3..4), 1).unwrap();
        assert_eq!(texts(&spool.peek(10).unwrap())[3], "{\"n\":3}");
    }

    #[test]
    fn past_its_bound_the_oldest_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 4096).unwrap();
        let mut dropped = 0;
        for chunk in 0..50 {
            dropped += spool
                .append(&lines(chunk * 10..chunk * 10 + 10), 1)
                .unwrap();
        }
        assert!(dropped > 0);
        assert!(spool.bytes() <= 4096, "{}", spool.bytes());
        assert_eq!(spool.pending() + dropped, 500);
        let kept = spool.peek(1000).unwrap();
        assert_eq!(kept.len() as u64, spool.pending());
        // The newest are kept, in order.
        assert_eq!(texts(&kept).last().unwrap(), "{\"n\":499}");
        let first: u32 = texts(&kept)[0][5..].trim_end_matches('}').parse().unwrap();
        assert_eq!(first as u64, dropped);
    }
}
