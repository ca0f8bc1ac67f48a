//! Signals waiting for the fleet: a signal raised on a value this node found new is held until
//! the store says whether the value is new for the fleet (the signal goes out, confirmed),
//! known to another node (it does not), or cannot say in time (it goes out, unconfirmed).

use super::store::ClaimAnswer;
use super::sync::ClaimOutcome;
use crate::event::Event;
use crate::pipeline::{FleetMark, OutputSignal, Sink};
use crate::sandbox::{Context, NewValue};
use picket_abi::Manifest;
use std::collections::HashMap;
use std::sync::Arc;

/// A signal raised, owned, so it can wait.
pub struct OwnedSignal {
    /// The rule's manifest.
    pub rule: Arc<Manifest>,
    /// The new value behind it.
    pub new_value: Option<NewValue>,
    /// The context the rule attached.
    pub context: Context,
}

struct Held {
    signals: Vec<OwnedSignal>,
    event: Event<'static>,
    waiting: usize,
    new: bool,
    unconfirmed: Option<String>,
}

/// Signals waiting for their claims' answers.
#[derive(Default)]
pub struct HeldSignals {
    held: HashMap<u64, Held>,
    /// Claim id → the held entry it belongs to.
    by_claim: HashMap<u64, u64>,
    next: u64,
}

impl HeldSignals {
    /// Holds `signals`, raised on `event`, until every claim in `claims` is answered.
    pub fn hold(&mut self, signals: Vec<OwnedSignal>, event: Event<'static>, claims: &[u64]) {
        self.next += 1;
        let entry = self.next;
        for claim in claims {
            self.by_claim.insert(*claim, entry);
        }
        self.held.insert(
            entry,
            Held {
                signals,
                event,
                waiting: claims.len(),
                new: false,
                unconfirmed: None,
            },
        );
    }

    /// Signals still waiting.
    pub fn len(&self) -> usize {
        self.held.values().map(|held| held.signals.len()).sum()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Records a claim's answer; signals whose claims are all answered go to `sink`, or are
    /// dropped when the fleet knew every value behind them.
    pub fn answer(&mut self, claim: u64, outcome: &ClaimOutcome, sink: &mut dyn Sink) {
        let Some(entry) = self.by_claim.remove(&claim) else {
            return;
        };
        let Some(held) = self.held.get_mut(&entry) else {
            return;
        };
        held.waiting -= 1;
        match outcome {
            ClaimOutcome::Answered(ClaimAnswer::New) => held.new = true,
            ClaimOutcome::Answered(_) => {}
            ClaimOutcome::Unconfirmed(why) => held.unconfirmed = Some(why.clone()),
        }
        if held.waiting > 0 {
            return;
        }
        let Some(held) = self.held.remove(&entry) else {
            return;
        };
        let metrics = &crate::metrics::global().fleet;
        let mark = if held.new {
            FleetMark {
                confirmed: true,
                reason: None,
            }
        } else if let Some(why) = held.unconfirmed {
            metrics.unconfirmed();
            FleetMark {
                confirmed: false,
                reason: Some(why),
            }
        } else {
            for signal in &held.signals {
                metrics.suppressed();
                tracing::debug!(
                    rule = %signal.rule.id,
                    "signal not raised: another node of the fleet already knew the value"
                );
            }
            return;
        };
        for signal in &held.signals {
            sink.signal(&OutputSignal {
                rule: &signal.rule,
                new_value: signal.new_value.as_ref(),
                context: &signal.context,
                event: &held.event,
                fleet: Some(&mark),
            });
        }
    }

    /// Lets every waiting signal go, unconfirmed (the fleet worker stopped answering).
    pub fn release_all(&mut self, why: &str, sink: &mut dyn Sink) {
        let claims: Vec<u64> = self.by_claim.keys().copied().collect();
        for claim in claims {
            self.answer(claim, &ClaimOutcome::Unconfirmed(why.to_string()), sink);
        }
    }
}
