//! Signal output: JSON lines (design.md "Signal"), and the log lines for rule failures.

use crate::event::Event;
use crate::pipeline::{RuleStatus, Signal, Sink};
use crate::sandbox::{NewValue, RuleError};
use crate::time::Timestamp;
use serde::Serialize;
use std::io::{self, Write};

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
    event: &'a Event<'a>,
}

/// Writes one signal as a JSON line.
pub fn write_signal(out: &mut impl Write, signal: &Signal<'_>) -> io::Result<()> {
    let record = SignalRecord {
        ts: signal.event.ts,
        rule: &signal.rule.id,
        title: &signal.rule.title,
        severity: signal.rule.severity.as_str(),
        tactic: &signal.rule.tactic,
        technique: &signal.rule.technique,
        new_value: signal.new_value,
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

/// A sink that writes signals as JSON lines and logs failures.
pub struct JsonLinesSink<W: Write> {
    out: W,
    /// The first write error, kept so that the caller can report it; writing stops after one.
    pub error: Option<io::Error>,
    /// Signals written.
    pub written: u64,
}

impl<W: Write> JsonLinesSink<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        JsonLinesSink {
            out,
            error: None,
            written: 0,
        }
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Sink for JsonLinesSink<W> {
    fn signal(&mut self, signal: &Signal<'_>) {
        if self.error.is_some() {
            return;
        }
        match write_signal(&mut self.out, signal) {
            Ok(()) => self.written += 1,
            Err(err) => self.error = Some(err),
        }
    }

    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
        log_rule_failure(rule, error, event);
    }

    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str) {
        log_quarantine(rule, reason);
    }
}
