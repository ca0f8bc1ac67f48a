//! Small rule modules written in the WebAssembly text format, for the unit tests of the
//! sandbox, the pipeline, the rules directory and the module cache: real wasmtime, real modules,
//! with behaviour a test can count on.

use picket_abi::{
    EventKind, FuncSig, IMPORT_MODULE, Manifest, NewValueDefaults, Severity, SignalRequest,
    Subscription, ValType,
};

/// A manifest for rule `id`, subscribed to every open, that learns with no learning period.
pub(crate) fn manifest(id: &str) -> Manifest {
    Manifest {
        id: id.into(),
        title: format!("test rule {id}"),
        description: String::new(),
        severity: Severity::Low,
        tactic: String::new(),
        technique: String::new(),
        subscription: Subscription {
            kinds: vec![EventKind::Open],
            basenames: Vec::new(),
            path_prefixes: Vec::new(),
        },
        new_value: NewValueDefaults {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        },
        states: Vec::new(),
    }
}

/// Bytes as a WAT string literal.
fn literal(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A rule module for `manifest`. On its n-th event since it was instantiated it asks
/// `new_value("s", "g", v)` with `v` the n-th letter of the alphabet, raises a signal when that
/// is new, and then traps (`unreachable`) if n is in `trap_on`. Its counter lives in the
/// instance, so a rebuilt instance starts again at "a".
pub(crate) fn rule(manifest: &Manifest, trap_on: &[u32]) -> Vec<u8> {
    let mut encoded = Vec::new();
    picket_abi::encode_into_vec(manifest, &mut encoded).unwrap();
    let mut signal = Vec::new();
    picket_abi::encode_into_vec(
        &SignalRequest {
            new_value: None,
            context: Vec::new(),
        },
        &mut signal,
    )
    .unwrap();
    let traps: String = trap_on
        .iter()
        .map(|n| format!("(if (i32.eq (global.get $n) (i32.const {n})) (then unreachable))\n"))
        .collect();
    let wat = format!(
        r#"(module
  (import "picket" "new_value" (func $new_value (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "picket" "emit_signal" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (data (i32.const 1024) "{manifest}")
  (data (i32.const 2048) "sg_abcdefghijklmnopqrstuvwxyz")
  (data (i32.const 3072) "{signal}")
  (func (export "picket_abi_version") (result i32) (i32.const {version}))
  (func (export "picket_manifest") (result i64) (i64.const {packed}))
  (func (export "picket_alloc") (param i32) (result i32) (i32.const 8192))
  (func (export "picket_on_event") (param i32 i32) (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (if (call $new_value
          (i32.const 2048) (i32.const 1)
          (i32.const 2049) (i32.const 1)
          (i32.add (i32.const 2050) (global.get $n)) (i32.const 1))
      (then (drop (call $emit (i32.const 3072) (i32.const {signal_len})))))
    {traps}
    (i32.const 0)))"#,
        manifest = literal(&encoded),
        signal = literal(&signal),
        signal_len = signal.len(),
        version = picket_abi::ABI_VERSION,
        packed = picket_abi::pack_ptr_len(1024, encoded.len() as u32),
    );
    wat::parse_str(&wat).expect("the test module is valid WAT")
}

/// A module importing `sigs` from picket, in the text format.
pub(crate) fn wat_importing(sigs: &[FuncSig]) -> String {
    let types = |types: &[ValType]| {
        types
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut wat = String::from("(module\n");
    for sig in sigs {
        wat += &format!(
            "(import \"{IMPORT_MODULE}\" \"{}\" (func (param {}) (result {})))\n",
            sig.name,
            types(sig.params),
            types(sig.results)
        );
    }
    wat + ")"
}
