//! Signal output: JSON lines (docs/signals.md) through a bounded queue and a writer thread
//! per output, the live agent's metered sink in front of it, and the log lines for rule
//! failures.

use crate::event::Event;
use crate::metrics::RuleMetrics;
use crate::pipeline::{FleetMark, OutputSignal, RuleStatus, Sink};
use crate::sandbox::{NewValue, RuleError};
use crate::time::Timestamp;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `text` with every control character (newlines, carriage returns, escape sequences...) written
/// as a Rust escape such as `\n` or `\u{1b}`.
pub fn escape_controls(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// A signal as it is written out.
#[derive(Serialize)]
struct SignalRecord<'a> {
    ts: Timestamp,
    rule: &'a str,
    title: &'a str,
    severity: &'a str,
    tactic: &'a str,
    technique: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_value: Option<&'a NewValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<&'a FleetMark>,
    event: &'a Event<'a>,
}

/// Writes one signal as a JSON line.
pub fn write_signal(out: &mut impl Write, signal: &OutputSignal<'_>) -> io::Result<()> {
    let record = SignalRecord {
        ts: signal.event.ts,
        rule: &signal.rule.id,
        title: &signal.rule.title,
        severity: signal.rule.severity.as_str(),
        tactic: &signal.rule.tactic,
        technique: &signal.rule.technique,
        new_value: signal.new_value,
        fleet: signal.fleet,
        event: signal.event,
    };
    serde_json::to_writer(&mut *out, &record)?;
    out.write_all(b"\n")
}

/// Logs a rule's failure on an event.
pub fn log_rule_failure(rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
    tracing::warn!(
        rule = %rule.manifest.id,
        module = %rule.source,
        event.ts = %event.ts,
        event.path = %event.file.path,
        "rule failed on an event: {error}"
    );
}

/// Logs a rule's quarantine.
pub fn log_quarantine(rule: &RuleStatus, reason: &str) {
    tracing::error!(
        rule = %rule.manifest.id,
        module = %rule.source,
        "rule quarantined, it gets no more events until a new version is loaded: {reason}"
    );
}

/// Where signals go.
#[derive(Clone, Debug)]
pub enum Output {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

impl Output {
    fn open(&self) -> io::Result<(Box<dyn Write + Send>, String)> {
        Ok(match self {
            Output::Stdout => (Box::new(io::stdout()), "stdout".into()),
            Output::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|err| {
                        io::Error::new(err.kind(), format!("{}: {err}", path.display()))
                    })?;
                (Box::new(file), path.display().to_string())
            }
        })
    }
}

/// What a sink's queue does when it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the new signal, counted and reported: the live agent must keep detecting, saving
    /// and answering signals whatever its output does.
    Drop,
    /// Wait for room: a replay is a batch job whose reader sets the pace, and loses nothing.
    Wait,
}

/// What a failing write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Keep the signal and retry every second (a full disk may be freed); the queue fills
    /// meanwhile. A closed pipe (nobody will ever read) ends the output instead.
    Retry,
    /// Stop the output; the error is returned by [`SignalOutput::error`].
    Stop,
}

/// How long a failing write waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a failing output is reported again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counters {
    /// Signals handed to the queue.
    queued: AtomicU64,
    /// Signals written out.
    written: AtomicU64,
    /// Signals refused because the queue was full.
    dropped: AtomicU64,
    /// The error that ended the output.
    error: Mutex<Option<String>>,
}

/// How an output ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Signals written.
    pub written: u64,
    /// Signals dropped because the queue was full.
    pub dropped: u64,
    /// Signals not written because the output failed, or still waiting when the writer was
    /// given up on at shutdown.
    pub undelivered: u64,
}

/// Signals as JSON lines to one output, through a bounded queue written by a thread of its
/// own: the thread that evaluates events only serializes a signal and hands it over, so an
/// output that blocks (a pipe nobody reads, a hung disk) can never stop detection, state saving
/// or shutdown. Signals that find the queue full are dropped (or waited for, see [`WhenFull`]);
/// each drop is counted and reported.
pub struct SignalOutput {
    tx: Option<SyncSender<Vec<u8>>>,
    counters: Arc<Counters>,
    done: mpsc::Receiver<()>,
    target: String,
    when_full: WhenFull,
    dropped_reported: u64,
    last_drop_report: Option<Instant>,
}

impl SignalOutput {
    /// Opens `output` with a queue of `bound` signals in front of it.
    pub fn open(
        output: &Output,
        bound: usize,
        when_full: WhenFull,
        on_error: OnError,
    ) -> io::Result<SignalOutput> {
        let (out, target) = output.open()?;
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(bound.max(1));
        let (done_tx, done) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let writer_counters = Arc::clone(&counters);
        let writer_target = target.clone();
        std::thread::Builder::new()
            .name("picket-output".into())
            .spawn(move || {
                write_lines(out, &rx, &writer_counters, &writer_target, on_error);
                let _ = done_tx.send(());
            })?;
        Ok(SignalOutput {
            tx: Some(tx),
            counters,
            done,
            target,
            when_full,
            dropped_reported: 0,
            last_drop_report: None,
        })
    }

    /// The error that ended the output, if one did.
    pub fn error(&self) -> Option<String> {
        self.counters
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Signals dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Logs signals dropped since the last report (at most once a minute while it goes on).
    pub fn report(&mut self) {
        let dropped = self.dropped();
        if dropped > self.dropped_reported
            && self
                .last_drop_report
                .is_none_or(|at| at.elapsed() >= REPORT_EVERY)
        {
            tracing::error!(
                output = %self.target,
                dropped = dropped - self.dropped_reported,
                total = dropped,
                "signals dropped: the output does not keep up and its queue is full (see --output-queue)"
            );
            self.dropped_reported = dropped;
            self.last_drop_report = Some(Instant::now());
        }
    }

    /// Closes the queue and waits for the writer to write what is in it: up to `grace` (or
    /// for as long as it takes, with `None`). Reports what could not be delivered.
    pub fn finish(mut self, grace: Option<Duration>) -> Delivery {
        self.last_drop_report = None;
        self.report();
        self.tx.take();
        let finished = match grace {
            Some(grace) => self.done.recv_timeout(grace).is_ok(),
            None => self.done.recv().is_ok(),
        };
        let counters = &self.counters;
        let written = counters.written.load(Ordering::Relaxed);
        let delivery = Delivery {
            written,
            dropped: counters.dropped.load(Ordering::Relaxed),
            undelivered: counters
                .queued
                .load(Ordering::Relaxed)
                .saturating_sub(written),
        };
        if !finished {
            tracing::error!(
                output = %self.target,
                undelivered = delivery.undelivered,
                "the output did not take the waiting signals within {:?}; stopping without them",
                grace.unwrap_or_default()
            );
        } else if delivery.undelivered > 0 {
            tracing::error!(
                output = %self.target,
                undelivered = delivery.undelivered,
                "signals not delivered: the output failed"
            );
        }
        delivery
    }
}

/// Most signals written in one go.
const BATCH: u64 = 256;

/// The writer thread: writes what is queued, a batch at a time, each batch flushed.
fn write_lines(
    mut out: Box<dyn Write + Send>,
    rx: &mpsc::Receiver<Vec<u8>>,
    counters: &Counters,
    target: &str,
    on_error: OnError,
) {
    let mut failing_since: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut batch = Vec::with_capacity(1 << 16);
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.extend_from_slice(&first);
        let mut count: u64 = 1;
        while count < BATCH {
            let Ok(line) = rx.try_recv() else { break };
            batch.extend_from_slice(&line);
            count += 1;
        }
        loop {
            match out.write_all(&batch).and_then(|()| out.flush()) {
                Ok(()) => {
                    counters.written.fetch_add(count, Ordering::Relaxed);
                    if let Some(since) = failing_since.take() {
                        tracing::info!(output = %target, "signals written again after failing for {:?}", since.elapsed());
                    }
                    break;
                }
                // Tried again whole: part of it may then appear twice, which beats losing it.
                Err(err)
                    if on_error == OnError::Retry && err.kind() != io::ErrorKind::BrokenPipe =>
                {
                    let first = failing_since.is_none();
                    failing_since.get_or_insert_with(Instant::now);
                    if first || last_report.elapsed() >= REPORT_EVERY {
                        last_report = Instant::now();
                        tracing::error!(output = %target, "cannot write signals, keeping them and retrying: {err}");
                    }
                    std::thread::sleep(RETRY_AFTER);
                }
                Err(err) => {
                    tracing::error!(output = %target, "signal output failed, no more signals are written to it: {err}");
                    *counters.error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("{target}: {err}"));
                    // Whatever still comes is taken and never written: it stays counted as
                    // queued and not delivered.
                    rx.iter().for_each(drop);
                    return;
                }
            }
        }
    }
}

impl Sink for SignalOutput {
    fn signal(&mut self, signal: &OutputSignal<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(1024);
        write_signal(&mut line, signal).expect("writing to a Vec cannot fail");
        let result = match self.when_full {
            WhenFull::Drop => tx.try_send(line),
            WhenFull::Wait => tx
                .send(line)
                .map_err(|err| TrySendError::Disconnected(err.0)),
        };
        match result {
            // A signal handed to a writer that is gone counts as queued and not delivered.
            Ok(()) | Err(TrySendError::Disconnected(_)) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if self.last_drop_report.is_none() {
                    // The first drop is said at once; later ones at the next report.
                    self.report();
                }
            }
        }
    }

    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
        log_rule_failure(rule, error, event);
    }

    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str) {
        log_quarantine(rule, reason);
    }
}

/// The live agent's sink: signals go to a [`SignalOutput`] (its bounded queue, counted and
/// reported drops, never blocking the event loop), and every rule outcome also moves the rule's
/// metrics (`/metrics`). Replay and `picket test` use the output alone.
pub struct MeteredOutput {
    output: SignalOutput,
    /// Each rule's metrics, looked up once.
    rule_metrics: HashMap<String, RuleMetrics>,
}

impl MeteredOutput {
    /// Meters the signals and rule outcomes that go to `output`.
    pub fn new(output: SignalOutput) -> MeteredOutput {
        MeteredOutput {
            output,
            rule_metrics: HashMap::new(),
        }
    }

    /// The output, for its periodic drop report.
    pub fn output_mut(&mut self) -> &mut SignalOutput {
        &mut self.output
    }

    /// The output, to finish it at shutdown.
    pub fn into_output(self) -> SignalOutput {
        self.output
    }

    fn metrics_of(&mut self, rule: &str) -> &RuleMetrics {
        if !self.rule_metrics.contains_key(rule) {
            let metrics = crate::metrics::global().rule(rule);
            self.rule_metrics.insert(rule.to_string(), metrics);
        }
        &self.rule_metrics[rule]
    }
}

impl Sink for MeteredOutput {
    fn signal(&mut self, signal: &OutputSignal<'_>) {
        self.metrics_of(&signal.rule.id).signal();
        self.output.signal(signal);
    }

    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
        self.metrics_of(&rule.manifest.id)
            .failed(matches!(error, RuleError::Timeout(_)));
        self.output.rule_failed(rule, error, event);
    }

    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str) {
        self.metrics_of(&rule.manifest.id).quarantined();
        self.output.rule_quarantined(rule, reason);
    }

    fn rule_evaluated(&mut self, rule: &RuleStatus, took: Duration) {
        self.metrics_of(&rule.manifest.id).evaluated(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("ok\n2026-11-24T00:00:00Z ERROR forged\r\u{1b}[2J\u{85}é"),
            "ok\\n2026-11-24T00:00:00Z ERROR forged\\r\\u{1b}[2J\\u{85}é"
        );
    }
}
