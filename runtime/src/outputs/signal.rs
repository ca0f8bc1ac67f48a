//! The signal JSON (docs/signals.md), built in one place from an [`OutputSignal`]: every output
//! receives this line and formats it its own way (as is, or as Falco's JSON). A field added to
//! `OutputSignal` is one line in [`SignalRecord`].

use crate::event::Event;
use crate::pipeline::{FleetMark, OutputSignal};
use crate::sandbox::{Context, NewValue};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// A signal as it is written out.
#[derive(Serialize)]
struct SignalRecord<'a> {
    id: &'a str,
    ts: Timestamp,
    rule: &'a str,
    title: &'a str,
    severity: &'a str,
    tactic: &'a str,
    technique: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_value: Option<&'a NewValue>,
    #[serde(skip_serializing_if = "Context::is_empty")]
    context: &'a Context,
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<&'a FleetMark>,
    event: &'a Event<'a>,
}

/// A signal's `id`: derived from what the signal says (node, rule, event time, process, file,
/// new value), so that the same signal raised again (a retry, a restart replaying the same
/// events) has the same id and a receiver can deduplicate it. 128 bits of BLAKE3, in hex.
pub fn signal_id(signal: &OutputSignal<'_>) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        // Each field with its length, so that no two different signals hash the same input.
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    let event = signal.event;
    field(event.node_name.as_deref().unwrap_or("").as_bytes());
    field(signal.rule.id.as_bytes());
    field(&event.ts.as_nanos().to_le_bytes());
    field(&event.process.pid.to_le_bytes());
    field(event.file.path.as_bytes());
    if let Some(new_value) = signal.new_value {
        field(new_value.field.as_bytes());
        field(new_value.value.as_bytes());
        field(new_value.group.as_bytes());
    }
    let hash = hasher.finalize();
    hash.to_hex()[..32].to_string()
}

/// The signal as one JSON object, without a line end.
pub fn signal_line(signal: &OutputSignal<'_>) -> Vec<u8> {
    let id = signal_id(signal);
    let record = SignalRecord {
        id: &id,
        ts: signal.event.ts,
        rule: &signal.rule.id,
        title: &signal.rule.title,
        severity: signal.rule.severity.as_str(),
        tactic: &signal.rule.tactic,
        technique: &signal.rule.technique,
        new_value: signal.new_value,
        context: signal.context,
        fleet: signal.fleet,
        event: signal.event,
    };
    let mut line = Vec::with_capacity(1024);
    serde_json::to_writer(&mut line, &record).expect("writing to a Vec cannot fail");
    line
}

/// How many signals a folded signal stands for (flood control, docs/signals.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folded {
    /// Signals of the rule and group this one stands for, itself included.
    pub count: u64,
    /// The first folded signal's event time.
    pub first_ts: Timestamp,
    /// The last folded signal's event time.
    pub last_ts: Timestamp,
}

/// `line` (a [`signal_line`]) with a last field `folded`. The line is the first signal that was
/// held back, so it keeps that signal's id.
pub fn with_folded(line: &[u8], folded: &Folded) -> Vec<u8> {
    let body = line
        .strip_suffix(b"}")
        .expect("a signal line is a JSON object");
    let mut out = Vec::with_capacity(line.len() + 96);
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"folded\":");
    serde_json::to_writer(&mut out, folded).expect("writing to a Vec cannot fail");
    out.push(b'}');
    out
}

/// A signal line read back by an output that formats it its own way.
#[derive(Deserialize)]
pub struct ParsedSignal<'a> {
    /// Its id.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// The raising event's time.
    pub ts: Timestamp,
    /// The rule id.
    #[serde(borrow)]
    pub rule: std::borrow::Cow<'a, str>,
    /// The rule's title.
    #[serde(borrow)]
    pub title: std::borrow::Cow<'a, str>,
    /// The rule's severity.
    #[serde(borrow)]
    pub severity: std::borrow::Cow<'a, str>,
    /// The MITRE tactic.
    #[serde(borrow)]
    pub tactic: std::borrow::Cow<'a, str>,
    /// The MITRE technique.
    #[serde(borrow)]
    pub technique: std::borrow::Cow<'a, str>,
    /// The new value, if any.
    #[serde(borrow, default)]
    pub new_value: Option<ParsedNewValue<'a>>,
    /// The rule's context.
    #[serde(borrow, default)]
    pub context: std::collections::BTreeMap<std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>>,
    /// The event.
    #[serde(borrow)]
    pub event: Event<'a>,
    /// Set on a folded signal.
    #[serde(default)]
    pub folded: Option<Folded>,
}

/// A signal's `new_value`, read back.
#[derive(Deserialize)]
pub struct ParsedNewValue<'a> {
    /// The event field the value came from.
    #[serde(borrow)]
    pub field: std::borrow::Cow<'a, str>,
    /// The value.
    #[serde(borrow)]
    pub value: std::borrow::Cow<'a, str>,
    /// The group it was new in.
    #[serde(borrow)]
    pub group: std::borrow::Cow<'a, str>,
}

/// Reads a signal line back (fields it does not know, such as ones added later, are ignored).
pub fn parse_signal(line: &[u8]) -> Result<ParsedSignal<'_>, serde_json::Error> {
    serde_json::from_slice(line)
}
