//! What the fleet store's users count, registered with the agent's metrics
//! ([`crate::metrics`], documented in docs/cli.md).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    rule: String,
    status: &'static str,
}

/// The fleet's instruments.
pub struct FleetMetrics {
    up: Gauge,
    round_trips: Family<OpLabel, Counter>,
    failures: Family<OpLabel, Counter>,
    claim_seconds: Histogram,
    unconfirmed: Counter,
    suppressed: Counter,
    reconciliations: Counter,
    malformed: Counter,
    refused: Counter,
    groups: Family<GroupLabel, Gauge>,
}

fn claim_histogram() -> Histogram {
    // 100 µs to about 6.5 s.
    Histogram::new(exponential_buckets(1e-4, 2.0, 17))
}

impl Default for FleetMetrics {
    fn default() -> FleetMetrics {
        FleetMetrics::new()
    }
}

impl FleetMetrics {
    /// Fresh instruments.
    pub fn new() -> FleetMetrics {
        FleetMetrics {
            up: Gauge::default(),
            round_trips: Family::default(),
            failures: Family::default(),
            claim_seconds: claim_histogram(),
            unconfirmed: Counter::default(),
            suppressed: Counter::default(),
            reconciliations: Counter::default(),
            malformed: Counter::default(),
            refused: Counter::default(),
            groups: Family::default(),
        }
    }

    /// Adds the instruments to `registry`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "fleet_store_up",
            "Whether the fleet store (--shared-state) answers: 1 yes, 0 no (the agent decides alone meanwhile)",
            self.up.clone(),
        );
        r.register(
            "fleet_round_trips",
            "Round trips to the fleet store, by operation (claim, push, follow, load)",
            self.round_trips.clone(),
        );
        r.register(
            "fleet_failures",
            "Round trips to the fleet store that failed or timed out, by operation",
            self.failures.clone(),
        );
        r.register_with_unit(
            "fleet_claim",
            "Time the fleet store took to confirm a value this node found new",
            Unit::Seconds,
            self.claim_seconds.clone(),
        );
        r.register(
            "fleet_signals_unconfirmed",
            "Signals raised without the fleet's confirmation (store unreachable or too slow)",
            self.unconfirmed.clone(),
        );
        r.register(
            "fleet_signals_suppressed",
            "Signals not raised because another node already knew the value",
            self.suppressed.clone(),
        );
        r.register(
            "fleet_reconciliations",
            "Times this node caught up with the fleet store after an outage or a gap in its log",
            self.reconciliations.clone(),
        );
        r.register(
            "fleet_malformed_entries",
            "Entries read from the fleet store that failed the checks and were skipped",
            self.malformed.clone(),
        );
        r.register(
            "fleet_values_refused",
            "Values the fleet store did not keep because their group was full there",
            self.refused.clone(),
        );
        r.register(
            "groups",
            "New-value groups by rule and status (learning or detecting)",
            self.groups.clone(),
        );
    }

    /// Whether the store answers.
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// A round trip of `op` ended, `ok` or not.
    pub fn round_trip(&self, op: &'static str, ok: bool) {
        self.round_trips.get_or_create(&OpLabel { op }).inc();
        if !ok {
            self.failures.get_or_create(&OpLabel { op }).inc();
        }
    }

    /// A claim was answered in `took`.
    pub fn claimed(&self, took: Duration) {
        self.claim_seconds.observe(took.as_secs_f64());
    }

    /// A signal went out without the fleet's confirmation.
    pub fn unconfirmed(&self) {
        self.unconfirmed.inc();
    }

    /// A signal was held back because the fleet knew the value.
    pub fn suppressed(&self) {
        self.suppressed.inc();
    }

    /// The node caught up with the store.
    pub fn reconciled(&self) {
        self.reconciliations.inc();
    }

    /// Entries read from the store were skipped as malformed.
    pub fn malformed(&self, count: u64) {
        self.malformed.inc_by(count);
    }

    /// Values the store refused (group full).
    pub fn refused(&self, count: u64) {
        self.refused.inc_by(count);
    }

    /// Groups of `rule` learning and detecting now.
    pub fn set_groups(&self, rule: &str, learning: usize, detecting: usize) {
        for (status, count) in [("learning", learning), ("detecting", detecting)] {
            self.groups
                .get_or_create(&GroupLabel {
                    rule: rule.to_string(),
                    status,
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}
