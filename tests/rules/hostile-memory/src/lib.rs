//! Test rule: allocates without bound
//!
//! A hostile or broken module the host must contain while the rules beside it keep working.

use picket_rule_sdk::prelude::*;

fn manifest() -> Manifest {
    ManifestBuilder::new("hostile-memory")
        .title("allocates without bound")
        .mitre("TA0006-credential-access", "T1552-unsecured-credentials")
        .subscribe(EventKind::Open, &["token"])
        .build()
}

fn on_event(_event: &Event) {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

picket_rule_sdk::rule!(manifest, on_event);
