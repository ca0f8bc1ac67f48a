//! Test rule: never returns from its handler
//!
//! A hostile or broken module the host must contain while the rules beside it keep working.

use picket_rule_sdk::prelude::*;

fn manifest() -> Manifest {
    ManifestBuilder::new("hostile-loop")
        .title("never returns from its handler")
        .mitre("TA0006-credential-access", "T1552-unsecured-credentials")
        .subscribe(EventKind::Open, &["token"])
        .build()
}

fn on_event(_event: &Event) {
    let mut spins: u64 = 0;
    loop {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
}

picket_rule_sdk::rule!(manifest, on_event);
