//! A test rule for the rule API beyond `new_value` (tests/conformance.rs runs its cases): learning
//! settings per state, `is_known`, and context in signals.
//!
//! It learns the readers of `secret` files in two states: `reader` with the rule's defaults
//! (learning 1 hour) and `reader.late` with its own, longer learning period (2 hours). A
//! signal raised in either carries `known.elsewhere`: whether the same executable is known in the
//! other state, asked with `is_known`, which learns nothing (the cases show that a value only
//! asked about stays unknown).

use picket_rule_sdk::prelude::*;
use picket_rule_sdk::{hours, is_known};

fn manifest() -> Manifest {
    ManifestBuilder::new("state-api")
        .title("A reader of a secret file not seen before")
        .subscribe(EventKind::Open, &["secret"])
        .learning_period(hours(1))
        .forget_after(hours(24))
        .state("reader.late", hours(2), hours(24))
        .build()
}

fn on_event(event: &Event) {
    let group = event.workload();
    let exe = event.exe();
    // `probe` only asks: it never learns, so it stays unknown however often it is asked about.
    let probe = if is_known("reader", group, "probe") {
        "known"
    } else {
        "unknown"
    };
    for (state, other) in [("reader", "reader.late"), ("reader.late", "reader")] {
        if new_value(state, group, exe) {
            let elsewhere = if is_known(other, group, exe) {
                "known"
            } else {
                "unknown"
            };
            Signal::new()
                .new_value(state, exe, group)
                .context("known.elsewhere", elsewhere)
                .context("probe", probe)
                .emit();
        }
    }
}

picket_rule_sdk::rule!(manifest, on_event);
