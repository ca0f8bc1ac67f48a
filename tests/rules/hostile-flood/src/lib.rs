//! Test rule: raises a flood of signals for every event
//!
//! A hostile or broken module the host must contain while the rules beside it keep working.

use picket_rule_sdk::prelude::*;

fn manifest() -> Manifest {
    ManifestBuilder::new("hostile-flood")
        .title("raises a flood of signals for every event")
        .mitre("TA0006-credential-access", "T1552-unsecured-credentials")
        .subscribe(EventKind::Open, &["token"])
        .build()
}

fn on_event(event: &Event) {
    for _ in 0..1_000_000 {
        Signal::new()
            .new_value("process.exe", event.exe(), "flood")
            .emit();
    }
}

picket_rule_sdk::rule!(manifest, on_event);
