//! Test rule: panics on every event
//!
//! A hostile or broken module the host must contain while the rules beside it keep working.

use picket_rule_sdk::prelude::*;

fn manifest() -> Manifest {
    ManifestBuilder::new("hostile-panic")
        .title("panics on every event")
        .mitre("TA0006-credential-access", "T1552-unsecured-credentials")
        .subscribe(EventKind::Open, &["token"])
        .build()
}

fn on_event(event: &Event) {
    panic!("refusing to handle {}", event.path());
}

picket_rule_sdk::rule!(manifest, on_event);
