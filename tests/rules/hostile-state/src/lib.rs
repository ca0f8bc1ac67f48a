//! Test rule: asks about a new 4 KiB group and 4 KiB value, 64 times per event
//!
//! A hostile or broken module that tries to make the host hold gigabytes of new-value state;
//! the host's byte budgets must hold it.

use core::sync::atomic::{AtomicU64, Ordering};
use picket_rule_sdk::prelude::*;

fn manifest() -> Manifest {
    ManifestBuilder::new("hostile-state")
        .title("learns 4 KiB groups and values without end")
        .mitre("TA0006-credential-access", "T1552-unsecured-credentials")
        .subscribe(EventKind::Open, &["token"])
        .build()
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A 4 KiB string that starts with `n`, so that each is distinct.
fn big(tag: char, n: u64) -> String {
    let mut text = format!("{tag}{n:016x}");
    text.extend(core::iter::repeat_n(tag, 4096 - text.len()));
    text
}

fn on_event(_event: &Event) {
    for _ in 0..64 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        new_value("hoard", &big('g', n), &big('v', n));
    }
}

picket_rule_sdk::rule!(manifest, on_event);
