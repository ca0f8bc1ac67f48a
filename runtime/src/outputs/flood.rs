//! Flood control: past `--flood-limit` signals of one rule and group within `--flood-window`
//! (event time), the rest of that window are held back and, when the window closes, sent as one
//! signal with `folded` saying how many it stands for. Counted by
//! `picket_signals_folded_total{rule}`, never silent.

use super::signal::{Folded, signal_line, with_folded};
use crate::pipeline::OutputSignal;
use crate::time::Timestamp;
use std::collections::BTreeMap;
use std::time::Duration;

/// How many signals pass per rule and group, and over what window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodSettings {
    /// Signals of one rule and group passed as they are within one window; 0 turns flood
    /// control off.
    pub limit: u32,
    /// The window, in event time.
    pub window: Duration,
}

impl Default for FloodSettings {
    fn default() -> FloodSettings {
        FloodSettings {
            limit: 100,
            window: Duration::from_secs(60),
        }
    }
}

struct Held {
    /// The first held signal's line: the folded signal is it, with `folded` added.
    line: Vec<u8>,
    folded: Folded,
}

struct Window {
    start_ns: i64,
    passed: u32,
    held: Option<Held>,
}

impl Window {
    fn new(start_ns: i64) -> Window {
        Window {
            start_ns,
            passed: 0,
            held: None,
        }
    }

    fn fold(&mut self) -> Option<Vec<u8>> {
        self.held
            .take()
            .map(|held| with_folded(&held.line, &held.folded))
    }
}

/// Flood control over every rule and group.
pub struct FloodControl {
    settings: FloodSettings,
    window_ns: i64,
    /// By rule, then group; ordered, so that what is flushed comes in the same order each run.
    windows: BTreeMap<String, BTreeMap<String, Window>>,
    /// The latest event time seen.
    latest_ns: i64,
}

impl FloodControl {
    /// Flood control with `settings`.
    pub fn new(settings: FloodSettings) -> FloodControl {
        FloodControl {
            settings,
            window_ns: i64::try_from(settings.window.as_nanos())
                .unwrap_or(i64::MAX)
                .max(1),
            windows: BTreeMap::new(),
            latest_ns: i64::MIN,
        }
    }

    /// Adds to `out` what goes out for `signal`: the fold of its rule and group's window if
    /// this signal closes it, then the signal itself unless it is held back.
    pub fn admit(&mut self, signal: &OutputSignal<'_>, out: &mut Vec<Vec<u8>>) {
        if self.settings.limit == 0 {
            out.push(signal_line(signal));
            return;
        }
        let ts = signal.event.ts.as_nanos();
        self.latest_ns = self.latest_ns.max(ts);
        let group = signal.new_value.map_or("", |v| v.group.as_str());
        // Looked up without allocating; keys are made once per new rule and group.
        if !self.windows.contains_key(&signal.rule.id) {
            self.windows.insert(signal.rule.id.clone(), BTreeMap::new());
        }
        let groups = self.windows.get_mut(&signal.rule.id).expect("inserted");
        if !groups.contains_key(group) {
            groups.insert(group.to_string(), Window::new(ts));
        }
        let window = groups.get_mut(group).expect("inserted");
        if ts < window.start_ns || ts - window.start_ns >= self.window_ns {
            out.extend(window.fold());
            *window = Window::new(ts);
        }
        if window.passed < self.settings.limit {
            window.passed += 1;
            out.push(signal_line(signal));
            return;
        }
        let at = Timestamp::from_nanos(ts);
        match &mut window.held {
            Some(held) => {
                held.folded.count += 1;
                held.folded.last_ts = at;
            }
            None => {
                window.held = Some(Held {
                    line: signal_line(signal),
                    folded: Folded {
                        count: 1,
                        first_ts: at,
                        last_ts: at,
                    },
                });
            }
        }
        crate::metrics::global().signals_folded(&signal.rule.id, 1);
    }

    /// Adds to `out` the folds of the windows closed by `now` (the latest event time seen when
    /// `None`), and forgets those windows.
    pub fn flush_due(&mut self, now: Option<Timestamp>, out: &mut Vec<Vec<u8>>) {
        let now = now.map_or(self.latest_ns, Timestamp::as_nanos);
        let window_ns = self.window_ns;
        for groups in self.windows.values_mut() {
            groups.retain(|_, window| {
                let open = now >= window.start_ns && now - window.start_ns < window_ns;
                if !open {
                    out.extend(window.fold());
                }
                open
            });
        }
        self.windows.retain(|_, groups| !groups.is_empty());
    }

    /// Adds to `out` every fold still held (at the end).
    pub fn flush_all(&mut self, out: &mut Vec<Vec<u8>>) {
        for (_, groups) in std::mem::take(&mut self.windows) {
            for (_, mut window) in groups {
                out.extend(window.fold());
            }
        }
    }
}
