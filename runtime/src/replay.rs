//! Replay input: a JSON-lines event file (or stdin) read on its own thread, so that the thread
//! evaluating events stays free to apply rule reloads and save state while input is slow.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::mpsc;

/// Longest event line accepted.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most lines handed over at once.
const BATCH: usize = 256;

/// Where events come from.
pub enum Source {
    /// Standard input.
    Stdin,
    /// A file.
    File(PathBuf),
}

/// One input line: its number, and its text or why it was refused before parsing.
pub struct Line {
    /// 1-based line number.
    pub number: u64,
    /// The line without its end, or the reason it is unusable.
    pub text: Result<String, String>,
}

/// What the reader thread sends.
pub enum Input {
    /// Lines, in order.
    Lines(Vec<Line>),
    /// Reading failed; nothing follows.
    Failed(io::Error),
}

/// Starts reading `source` on a new thread; the channel closes at the end of the input.
pub fn spawn_reader(source: Source) -> io::Result<mpsc::Receiver<Input>> {
    let file = match &source {
        Source::Stdin => None,
        Source::File(path) => Some(File::open(path)?),
    };
    let (tx, rx) = mpsc::sync_channel(64);
    std::thread::Builder::new()
        .name("picket-replay-input".into())
        .spawn(move || {
            let raw: Box<dyn Read> = match file {
                Some(file) => Box::new(file),
                None => Box::new(io::stdin()),
            };
            if let Err(err) = read_lines(BufReader::with_capacity(1 << 16, raw), &tx) {
                let _ = tx.send(Input::Failed(err));
            }
        })?;
    Ok(rx)
}

fn read_lines(
    mut reader: BufReader<Box<dyn Read>>,
    tx: &mpsc::SyncSender<Input>,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut raw = Vec::with_capacity(4096);
    for number in 1.. {
        raw.clear();
        let read =
            Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut raw)?;
        if read == 0 {
            break;
        }
        let text = if raw.len() > MAX_LINE_BYTES && raw.last() != Some(&b'\n') {
            skip_rest_of_line(&mut reader)?;
            Err(format!("line is longer than {MAX_LINE_BYTES} bytes"))
        } else {
            match std::str::from_utf8(&raw) {
                Ok(text) => Ok(text.trim_end_matches(['\n', '\r']).to_string()),
                Err(err) => Err(format!("not valid UTF-8: {err}")),
            }
        };
        batch.push(Line { number, text });
        // Hand over a full batch, or whatever is there when the next read would have to wait
        // for the writer, so that a slow stream is evaluated as it arrives.
        if batch.len() == BATCH || reader.buffer().is_empty() {
            if tx.send(Input::Lines(std::mem::take(&mut batch))).is_err() {
                return Ok(());
            }
            batch.reserve(BATCH);
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Input::Lines(batch));
    }
    Ok(())
}

fn skip_rest_of_line(input: &mut dyn BufRead) -> io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(at) => {
                input.consume(at + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                input.consume(len);
            }
        }
    }
}
