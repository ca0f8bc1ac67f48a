//! Hostile and broken rule modules are contained: each gets a clear error naming it and what it
//! did, while a good rule loaded beside it keeps raising every one of its signals.

mod support;

use std::path::Path;
use support::{K8S_TOKEN, manifest_bytes, picket, rule_wasm, run, temp_dir, token_read, wat_bytes};

/// Events that make the good rule (k8s-sa-token, learning period 0) raise one signal each after
/// the first.
fn events(count: u32) -> String {
    (0..count)
        .map(|i| token_read(i, &format!("/tmp/reader{i}/cat"), K8S_TOKEN) + "\n")
        .collect()
}

/// Replays `count` events with the good rule and the module at `hostile` in one directory;
/// asserts the good rule raised all its signals, and returns stderr.
fn replay_beside_good_rule(hostile: &Path, count: u32) -> (Option<i32>, String) {
    let dir = temp_dir();
    std::fs::copy(
        rule_wasm("k8s-sa-token"),
        dir.path().join("k8s_sa_token.wasm"),
    )
    .unwrap();
    std::fs::copy(hostile, dir.path().join(hostile.file_name().unwrap())).unwrap();
    let out = run(
        picket()
            .args(["replay", "--learning-period", "0s", "--rules"])
            .arg(dir.path())
            .arg("-"),
        &events(count),
    );
    let good: Vec<String> = out
        .signals()
        .iter()
        .filter(|s| s["rule"] == "k8s-sa-token")
        .map(|s| s["new_value"]["value"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (1..count).map(|i| format!("/tmp/reader{i}/cat")).collect();
    assert_eq!(
        good, expected,
        "the good rule lost signals; stderr:\n{}",
        out.stderr
    );
    (out.code, out.stderr)
}

#[test]
fn endless_loop_is_interrupted_and_quarantined() {
    let (code, stderr) = replay_beside_good_rule(&rule_wasm("hostile-loop"), 8);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("interrupted after running past 50ms"),
        "{stderr}"
    );
    assert!(stderr.contains("hostile_loop.wasm"), "{stderr}");
    assert!(stderr.contains("rule quarantined"), "{stderr}");
    // Quarantined after 5 failures: no sixth attempt.
    assert_eq!(
        stderr.matches("interrupted after").count(),
        5 + 1,
        "{stderr}"
    );
}

#[test]
fn memory_growth_past_the_cap_is_stopped() {
    let (_, stderr) = replay_beside_good_rule(&rule_wasm("hostile-memory"), 4);
    assert!(
        stderr.contains("memory limit exceeded: asked for")
            && stderr.contains("the cap is 16777216"),
        "{stderr}"
    );
}

#[test]
fn a_panic_is_reported_with_its_message() {
    let (_, stderr) = replay_beside_good_rule(&rule_wasm("hostile-panic"), 4);
    // One line, its location then its message: no literal `\n` between them.
    let line = stderr
        .lines()
        .find(|l| l.contains("rule panicked at "))
        .unwrap_or_else(|| panic!("no panic line in\n{stderr}"));
    assert!(
        line.contains("src/lib.rs:16:5: refusing to handle /var/run/secrets"),
        "{line}"
    );
    assert!(!line.contains("\\n"), "{line}");
    assert!(stderr.contains("hostile-panic"), "{stderr}");
}

#[test]
fn a_signal_flood_is_cut_off() {
    let dir = temp_dir();
    std::fs::copy(rule_wasm("k8s-sa-token"), dir.path().join("good.wasm")).unwrap();
    std::fs::copy(rule_wasm("hostile-flood"), dir.path().join("flood.wasm")).unwrap();
    let out = run(
        picket()
            .args(["replay", "--learning-period", "0s", "--rules"])
            .arg(dir.path())
            .arg("-"),
        &events(10),
    );
    let signals = out.signals();
    let flood = signals
        .iter()
        .filter(|s| s["rule"] == "hostile-flood")
        .count();
    let good = signals
        .iter()
        .filter(|s| s["rule"] == "k8s-sa-token")
        .count();
    assert_eq!(good, 9, "{}", out.stderr);
    // 16 per event until quarantine after 5 events, instead of a million per event.
    assert_eq!(flood, 16 * 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("more than 16 signals for one event"),
        "{}",
        out.stderr
    );
}

/// A WAT module with valid exports around the given pieces. The manifest sits at 1024 and the
/// event buffer at 8192; address 4096 holds the bytes ff fe (not UTF-8).
struct Wat<'a> {
    id: &'a str,
    abi_version: i32,
    handler: &'a str,
    alloc_result: &'a str,
    manifest_result: Option<&'a str>,
    extra: &'a str,
    memory_pages: u32,
    omit_export: Option<&'a str>,
}

impl<'a> Wat<'a> {
    fn new(id: &'a str) -> Self {
        Wat {
            id,
            abi_version: 1,
            handler: "",
            alloc_result: "i32.const 8192",
            manifest_result: None,
            extra: "",
            memory_pages: 1,
            omit_export: None,
        }
    }

    fn write(&self, dir: &Path) -> std::path::PathBuf {
        let manifest = manifest_bytes(self.id, &format!("test module {}", self.id));
        let packed = (1024i64 << 32) | manifest.len() as i64;
        let manifest_result = self
            .manifest_result
            .map(str::to_string)
            .unwrap_or_else(|| format!("i64.const {packed}"));
        let export = |name: &str| {
            if self.omit_export == Some(name) {
                String::new()
            } else {
                format!("(export \"{name}\")")
            }
        };
        let text = format!(
            r#"(module
  (import "picket" "new_value" (func $new_value (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "picket" "emit_signal" (func $emit_signal (param i32 i32) (result i32)))
  (import "picket" "log" (func $log (param i32 i32 i32)))
  {extra}
  (memory {memory_export} {pages})
  (data (i32.const 1024) "{manifest}")
  (data (i32.const 4096) "\ff\fe")
  (func {abi_export} (result i32) i32.const {abi})
  (func {manifest_export} (result i64) {manifest_result})
  (func {alloc_export} (param i32) (result i32) {alloc_result})
  (func {event_export} (param i32 i32) (result i32) {handler} i32.const 0))"#,
            extra = self.extra,
            memory_export = export("memory"),
            pages = self.memory_pages,
            manifest = wat_bytes(&manifest),
            abi_export = export("picket_abi_version"),
            abi = self.abi_version,
            manifest_export = export("picket_manifest"),
            alloc_export = export("picket_alloc"),
            alloc_result = self.alloc_result,
            event_export = export("picket_on_event"),
            handler = self.handler,
        );
        let wasm = wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let path = dir.join(format!("{}.wasm", self.id));
        std::fs::write(&path, wasm).unwrap();
        path
    }
}

#[test]
fn out_of_bounds_pointers_to_each_import_trap_with_a_clear_error() {
    let cases = [
        (
            "oob-state",
            "(drop (call $new_value (i32.const 0xfffffff0) (i32.const 64) (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1)))",
            "new_value: state name at 0xfffffff0 (+64 bytes) lies outside the module's 65536-byte memory",
        ),
        (
            "oob-group",
            "(drop (call $new_value (i32.const 0) (i32.const 1) (i32.const 65530) (i32.const 10) (i32.const 0) (i32.const 1)))",
            "new_value: group at 0xfffa (+10 bytes) lies outside",
        ),
        (
            "oob-value",
            "(drop (call $new_value (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 0) (i32.const -1)))",
            "new_value: value is 4294967295 bytes, more than the 4096 allowed",
        ),
        (
            "bad-utf8",
            "(drop (call $new_value (i32.const 0) (i32.const 1) (i32.const 4096) (i32.const 2) (i32.const 0) (i32.const 1)))",
            "new_value: the group is not valid UTF-8",
        ),
        (
            "oob-signal",
            "(drop (call $emit_signal (i32.const 0x7fffffff) (i32.const 16)))",
            "emit_signal: signal request at 0x7fffffff (+16 bytes) lies outside",
        ),
        (
            "garbage-signal",
            "(drop (call $emit_signal (i32.const 4096) (i32.const 2)))",
            "emit_signal: the signal request is not a valid encoding: field `new_value` at byte \
             0: 255 is neither 0 (absent) nor 1 (present, the value follows)",
        ),
        (
            "oob-log",
            "(call $log (i32.const 2) (i32.const 0x10000) (i32.const 1))",
            "log: message at 0x10000 (+1 bytes) lies outside",
        ),
        (
            "bad-handler-code",
            "(return (i32.const 7))",
            "handler returned error code 7",
        ),
    ];
    let dir = temp_dir();
    for (id, handler, expected) in cases {
        let mut wat = Wat::new(id);
        wat.handler = handler;
        let module = wat.write(dir.path());
        let (code, stderr) = replay_beside_good_rule(&module, 4);
        assert_eq!(code, Some(0), "{id}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{id}: expected `{expected}` in\n{stderr}"
        );
        assert!(stderr.contains(&format!("rule={id}")), "{id}: {stderr}");
    }
}

#[test]
fn a_bad_alloc_result_is_refused_without_writing_out_of_bounds() {
    let dir = temp_dir();
    let mut wat = Wat::new("bad-alloc");
    wat.alloc_result = "i32.const 65500";
    let (_, stderr) = replay_beside_good_rule(&wat.write(dir.path()), 3);
    assert!(
        stderr.contains("`picket_alloc` returned 0xffdc, which leaves no room"),
        "{stderr}"
    );
}

#[test]
fn modules_that_cannot_load_are_refused_by_name_and_the_rest_run() {
    let dir = temp_dir();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(
        &garbage,
        (0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let truncated = dir.path().join("truncated.wasm");
    let good = std::fs::read(rule_wasm("eks-token")).unwrap();
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();

    let mut missing = Wat::new("missing-export");
    missing.omit_export = Some("picket_on_event");
    let mut wrong_abi = Wat::new("wrong-abi");
    wrong_abi.abi_version = 2;
    let mut unknown_import = Wat::new("unknown-import");
    unknown_import.extra = r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#;
    let mut start_loop = Wat::new("start-loop");
    start_loop.extra = "(func $spin (loop $l (br $l))) (start $spin)";
    let mut huge_memory = Wat::new("huge-memory");
    huge_memory.memory_pages = 1024;
    let mut bad_manifest = Wat::new("bad-manifest");
    bad_manifest.manifest_result = Some("i64.const 0x0000_0400_0000_0010");
    // The manifest's length one byte too long: a zero byte trails the encoding.
    let mut trailing_manifest = Wat::new("trailing-manifest");
    let trailing_len = manifest_bytes("trailing-manifest", "test module trailing-manifest").len();
    // Two bytes more than the manifest, both 0 in the module's memory: the first reads as the
    // optional `states` list, empty; the second is one byte too many.
    let trailing_result = format!("i64.const {}", (1024i64 << 32) | (trailing_len as i64 + 2));
    trailing_manifest.manifest_result = Some(&trailing_result);
    // The bytes ff fe: no varint starts with 255.
    let mut garbage_manifest = Wat::new("garbage-manifest");
    garbage_manifest.manifest_result = Some("i64.const 0x0000_1000_0000_0002");
    let mut oob_manifest = Wat::new("oob-manifest");
    oob_manifest.manifest_result = Some("i64.const 0x0000_ffff_0000_1000");

    let trailing_expected = format!(
        "trailing-manifest.wasm: `picket_manifest` returned an invalid manifest ({} bytes at \
         0x400): at byte {}: the manifest ends here, but 1 more byte(s) follow",
        trailing_len + 2,
        trailing_len + 1
    );
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (garbage, "garbage.wasm: is not a WebAssembly module"),
        (
            truncated,
            "truncated.wasm: is not a valid WebAssembly module",
        ),
        (
            missing.write(dir.path()),
            "missing-export.wasm: is missing the export `picket_on_event`",
        ),
        (
            wrong_abi.write(dir.path()),
            "wrong-abi.wasm: was built for picket ABI version 2, but this host speaks version 1",
        ),
        (
            unknown_import.write(dir.path()),
            "unknown-import.wasm: imports `wasi_snapshot_preview1.fd_write`, which picket does not provide",
        ),
        (
            start_loop.write(dir.path()),
            "start-loop.wasm: could not be instantiated: interrupted after running past 50ms",
        ),
        (
            huge_memory.write(dir.path()),
            "huge-memory.wasm: could not be instantiated: memory limit exceeded",
        ),
        (
            bad_manifest.write(dir.path()),
            "bad-manifest.wasm: `picket_manifest` returned an invalid manifest (16 bytes at \
             0x400): field `title` at byte 13: its length says 24, but only 2 bytes of the \
             manifest follow",
        ),
        (trailing_manifest.write(dir.path()), &trailing_expected),
        (
            garbage_manifest.write(dir.path()),
            "garbage-manifest.wasm: `picket_manifest` returned an invalid manifest (2 bytes at \
             0x1000): field `id` at byte 0: 255 does not start an integer that fits 64 bits",
        ),
        (
            oob_manifest.write(dir.path()),
            "oob-manifest.wasm: `picket_manifest` returned 0xffff (+4096 bytes), outside",
        ),
    ];
    for (module, expected) in cases {
        let (code, stderr) = replay_beside_good_rule(&module, 3);
        assert_eq!(code, Some(2), "{expected}: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in\n{stderr}"
        );
    }
}

#[test]
fn a_duplicate_rule_id_at_start_is_refused_for_both_whatever_the_names() {
    // `aaa.wasm` sorts before the bundled module and claims its id: neither may win by name.
    let dir = temp_dir();
    std::fs::copy(rule_wasm("eks-token"), dir.path().join("eks_token.wasm")).unwrap();
    std::fs::write(
        dir.path().join("aaa.wasm"),
        support::new_exe_rule("eks-token", "impostor"),
    )
    .unwrap();
    std::fs::copy(
        rule_wasm("k8s-sa-token"),
        dir.path().join("k8s_sa_token.wasm"),
    )
    .unwrap();
    let replay = |dir: &Path| {
        let eks = support::EKS_TOKEN;
        let input: String = (0..3)
            .map(|i| token_read(i, &format!("/tmp/reader{i}/cat"), eks) + "\n")
            .chain((0..3).map(|i| token_read(i, &format!("/tmp/reader{i}/cat"), K8S_TOKEN) + "\n"))
            .collect();
        run(
            picket()
                .args(["replay", "--learning-period", "0s", "--rules"])
                .arg(dir)
                .arg("-"),
            &input,
        )
    };
    let out = replay(dir.path());
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    for (file, other) in [
        ("aaa.wasm", "eks_token.wasm"),
        ("eks_token.wasm", "aaa.wasm"),
    ] {
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(&format!("{file}: rule id `eks-token` is also claimed by")))
            .unwrap_or_else(|| panic!("no refusal of {file}:\n{}", out.stderr));
        assert!(
            line.contains("ERROR")
                && line.contains(other)
                && line.contains("none of them is loaded"),
            "{line}"
        );
    }
    let signals = out.signals();
    let rules: Vec<&str> = signals
        .iter()
        .map(|s| s["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["k8s-sa-token", "k8s-sa-token"], "{}", out.stderr);

    // With the impostor gone, the bundled module loads.
    std::fs::remove_file(dir.path().join("aaa.wasm")).unwrap();
    let out = replay(dir.path());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let titles: Vec<String> = out
        .signals()
        .iter()
        .filter(|s| s["rule"] == "eks-token")
        .map(|s| s["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles.len(), 2, "{}", out.stderr);
    assert!(titles.iter().all(|t| t != "impostor"), "{titles:?}");
}

#[test]
fn a_rule_cannot_forge_log_lines() {
    let dir = temp_dir();
    let module = Wat {
        extra: r#"(data (i32.const 5000) "read\n2026-11-24T00:00:00Z ERROR agent stopped\1b[2J")"#,
        handler: "(call $log (i32.const 2) (i32.const 5000) (i32.const 49))",
        ..Wat::new("forger")
    }
    .write(dir.path());
    let (_, stderr) = replay_beside_good_rule(&module, 2);
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("agent stopped"))
        .collect();
    assert_eq!(
        logged.len(),
        2,
        "one line per event, none forged:\n{stderr}"
    );
    for line in logged {
        assert!(
            line.contains("rule=\"forger\"") || line.contains("rule=forger"),
            "{line}"
        );
        assert!(
            line.contains("read\\n2026-11-24T00:00:00Z ERROR agent stopped\\u{1b}[2J"),
            "{line}"
        );
    }
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("2026-11-24T00:00:00Z")),
        "{stderr}"
    );
}
