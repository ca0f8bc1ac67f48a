//! `picket replay`: a JSON-lines event file (or stdin), read on its own thread so that the
//! thread evaluating events stays free to apply rule reloads and save state while input is
//! slow, fed through the rules, with signals to the outputs (stdout by default), which deliver
//! everything before the replay exits, or within `--output-wait`.

use crate::event::parse_event;
use crate::outputs::{OutputSettings, OutputSpec, Outputs};
use crate::rule_engine::{RuleEngine, RuleEngineOptions};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// What to replay, and with which rules.
pub struct ReplayOptions {
    /// Rules, state and limits.
    pub engine: RuleEngineOptions,
    /// Reload rules while replaying, as modules change in the rules directory.
    pub watch: bool,
    /// Where the events come from.
    pub source: Source,
    /// Where signals go.
    pub outputs: Vec<OutputSpec>,
    /// How.
    pub output_settings: OutputSettings,
    /// At the end, longest to wait for the outputs to deliver.
    pub output_wait: Duration,
}

/// How a replay went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Events evaluated.
    pub events: u64,
    /// Event lines refused (each logged with its line number).
    pub rejected: u64,
    /// Signals delivered (by the first output).
    pub signals: u64,
    /// Signals not delivered in time, waiting in a spool under `--state`.
    pub spooled: u64,
    /// Whether some module in the rules directory was refused, at the start or (with `--watch`)
    /// while replaying.
    pub unusable_rules: bool,
}

impl Replayed {
    /// Whether every module and every event line could be used.
    pub fn all_usable(&self) -> bool {
        !self.unusable_rules && self.rejected == 0
    }
}

/// Replays `options.source` through the rules to the end of the input; signals go to the
/// outputs. Fails when the input cannot be read, or signals were lost (a local output failed,
/// a queue or spool dropped some, or they were not delivered in time without a spool).
pub fn run(options: ReplayOptions) -> anyhow::Result<Replayed> {
    let (mut engine, scan) = RuleEngine::start(&options.engine)?;
    let mut unusable_rules = !scan.errors.is_empty();
    engine.apply(scan);
    if engine.pipeline().rules().next().is_none() {
        tracing::warn!("no rules loaded from {}", options.engine.rules.display());
    }
    let (reload_tx, reload_rx) = mpsc::channel();
    let _watcher = if options.watch {
        Some(engine.watch(move |scan| reload_tx.send(scan).is_ok())?)
    } else {
        None
    };
    let name = match &options.source {
        Source::Stdin => "stdin".to_string(),
        Source::File(path) => path.display().to_string(),
    };
    let input = spawn_reader(options.source).map_err(|err| anyhow::anyhow!("{name}: {err}"))?;
    let mut sink = Outputs::open(&options.outputs, &options.output_settings)?;
    let (mut events, mut rejected) = (0u64, 0u64);
    loop {
        // Reloads land between batches of events, so each event meets one version of a rule.
        while let Ok(scan) = reload_rx.try_recv() {
            // A module refused while watching counts as one refused at the start (exit 2).
            unusable_rules |= !scan.errors.is_empty();
            engine.apply(scan);
        }
        match input.recv_timeout(Duration::from_millis(50)) {
            Ok(Input::Lines(lines)) => {
                for line in lines {
                    let parsed = line.text.and_then(|text| {
                        parse_event(&text)
                            .map(|event| engine.handle(&event, &mut sink))
                            .map_err(|err| err.to_string())
                    });
                    match parsed {
                        Ok(()) => events += 1,
                        Err(err) => {
                            tracing::error!("event refused: {name}:{}: {err}", line.number);
                            rejected += 1;
                        }
                    }
                }
            }
            Ok(Input::Failed(err)) => anyhow::bail!("reading {name}: {err}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        engine.poll_fleet(&mut sink);
        if let Some(err) = sink.error() {
            anyhow::bail!("writing signals: {err}");
        }
        sink.tick(None);
        engine.save_if_due();
    }
    // Signals raised on values the fleet must confirm wait for its answers (each comes within
    // --shared-state-timeout, or unconfirmed).
    engine.release_held(FLEET_GRACE, &mut sink);
    let deliveries = sink.finish(Some(options.output_wait));
    let lost: u64 = deliveries
        .iter()
        .map(|d| d.dropped + if d.spooled { 0 } else { d.undelivered })
        .sum();
    let spooled: u64 = deliveries
        .iter()
        .filter(|d| d.spooled)
        .map(|d| d.undelivered)
        .sum();
    let signals = deliveries.first().map_or(0, |d| d.delivered);
    if lost > 0 {
        engine.shutdown();
        anyhow::bail!("{lost} signal(s) could not be delivered (see the errors above)");
    }
    tracing::info!(events, rejected, signals, spooled, "replay done");
    for rule in engine.pipeline().rules() {
        if rule.stats.failures > 0 {
            tracing::warn!(
                rule = %rule.manifest.id,
                failures = rule.stats.failures,
                events = rule.stats.events,
                "rule failed on some events"
            );
        }
    }
    engine.shutdown();
    Ok(Replayed {
        events,
        rejected,
        signals,
        spooled,
        unusable_rules,
    })
}

/// Longest a replay waits, at its end, for the fleet's answers on held signals.
const FLEET_GRACE: Duration = Duration::from_secs(10);

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
