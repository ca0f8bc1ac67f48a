//! The ring buffer the eBPF programs write records to: reading and decoding it, and waiting for
//! it to fill through tokio.

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::records::{self, Record};

/// The `EVENTS` ring buffer, with counts of what was read from it.
pub(crate) struct Ring {
    state: State,
    /// Open records read, and their bytes (diagnostics).
    open_records: u64,
    open_record_bytes: u64,
}

enum State {
    /// Not yet registered with tokio: that needs a runtime, and `load` may run outside one.
    Plain(RingBuf<MapData>),
    Async(AsyncFd<RingBuf<MapData>>),
    /// Only while switching from `Plain` to `Async`.
    Taken,
}

impl Ring {
    /// Wraps the ring buffer; it is registered with tokio on the first wait.
    pub(crate) fn new(ring: RingBuf<MapData>) -> Ring {
        Ring {
            state: State::Plain(ring),
            open_records: 0,
            open_record_bytes: 0,
        }
    }

    /// The next well-formed record, or `None` when the ring is empty. Malformed records are
    /// logged and skipped.
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            let ring = match &mut self.state {
                State::Plain(ring) => ring,
                State::Async(fd) => fd.get_mut(),
                State::Taken => bail!("ring buffer lost after a failed registration"),
            };
            let Some(item) = ring.next() else {
                return Ok(None);
            };
            let len = item.len();
            let record = records::parse(&item);
            drop(item);
            match record {
                Ok(record) => {
                    if let Record::Open(_) = record {
                        self.open_records += 1;
                        self.open_record_bytes += len as u64;
                    }
                    return Ok(Some(record));
                }
                Err(err) => tracing::warn!("skipping a malformed ring buffer record: {err:#}"),
            }
        }
    }

    /// Waits until the ring may hold records again. Cancel-safe: nothing is read here.
    pub(crate) async fn readable(&mut self) -> Result<()> {
        let fd = self.async_fd()?;
        let mut guard = fd.readable_mut().await?;
        // Cleared before draining again, so a record arriving now still wakes us.
        guard.clear_ready();
        Ok(())
    }

    /// Open records read so far, and their total bytes.
    pub(crate) fn open_records(&self) -> (u64, u64) {
        (self.open_records, self.open_record_bytes)
    }

    fn async_fd(&mut self) -> Result<&mut AsyncFd<RingBuf<MapData>>> {
        if let State::Plain(_) = self.state {
            // AsyncFd registration panics outside a runtime; fail instead.
            tokio::runtime::Handle::try_current()
                .context("Probes::next_event must run inside a tokio runtime")?;
        }
        self.state = match std::mem::replace(&mut self.state, State::Taken) {
            State::Plain(ring) => {
                // SAFETY: the RingBuf owns its map fd, keeps it open until dropped (which only
                // the AsyncFd can do now) and always returns that same fd from as_raw_fd.
                let registered =
                    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
                match registered {
                    Ok(fd) => State::Async(fd),
                    Err(err) => {
                        let (ring, cause) = err.into_parts();
                        self.state = State::Plain(ring);
                        return Err(cause).context("registering the ring buffer with tokio");
                    }
                }
            }
            other => other,
        };
        match &mut self.state {
            State::Async(fd) => Ok(fd),
            _ => bail!("ring buffer lost after a failed registration"),
        }
    }
}
