//! Replay: a JSON-lines event file fed through the same pipeline as live events.

use crate::event::parse_event;
use crate::pipeline::{Pipeline, Sink};
use std::io::{self, BufRead, Read};

/// Longest event line accepted.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Events evaluated.
    pub events: u64,
    /// Lines refused as malformed (each reported with its line number).
    pub rejected: u64,
}

/// Feeds every event of `input` (named `name` in messages) to `pipeline`. A malformed line is
/// reported through `on_reject` with its location and skipped; the replay goes on.
pub fn replay(
    pipeline: &mut Pipeline,
    input: &mut dyn BufRead,
    name: &str,
    sink: &mut dyn Sink,
    on_reject: &mut dyn FnMut(&str),
) -> io::Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut line = Vec::with_capacity(4096);
    for number in 1.. {
        line.clear();
        let read =
            Read::take(&mut *input, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            skip_rest_of_line(input)?;
            on_reject(&format!(
                "{name}:{number}: line is longer than {MAX_LINE_BYTES} bytes"
            ));
            report.rejected += 1;
            continue;
        }
        let text = match std::str::from_utf8(&line) {
            Ok(text) => text.trim_end_matches(['\n', '\r']),
            Err(err) => {
                on_reject(&format!("{name}:{number}: not valid UTF-8: {err}"));
                report.rejected += 1;
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_event(text) {
            Ok(event) => {
                pipeline.handle(&event, sink);
                report.events += 1;
            }
            Err(err) => {
                on_reject(&format!("{name}:{number}: {err}"));
                report.rejected += 1;
            }
        }
    }
    Ok(report)
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
