//! `picket test` and `picket inspect` on the bundled rules, through the real binary.

mod support;

use support::{
    assert_all_cases_passed, bundled_rules, picket, rule_cases, rule_wasm, run, temp_dir, workspace,
};

/// Every folder `rules/NAME/` is a rule: its module builds, and passes every case of its
/// `cases/` (its own, and those it shares through a case template).
#[test]
fn every_bundled_rule_passes_all_of_its_cases() {
    let rules = bundled_rules();
    assert!(rules.len() >= 2, "found only {} bundled rules", rules.len());
    for rule in rules {
        let (cases, count) = rule_cases(&rule.dir.join("cases"));
        // The token readers share the template of eleven cases; a newer rule has its own few.
        let minimum = if rule.dir.join("cases/unfamiliar-reader.vars").is_file() {
            8
        } else {
            1
        };
        assert!(count >= minimum, "{} has only {count} cases", rule.name);
        let out = run(
            picket()
                .arg("test")
                .arg(rule_wasm(&rule.name))
                .arg(cases.path()),
            "",
        );
        assert_all_cases_passed(&rule.name, &out, count);
    }
}

/// The rule API beyond `new_value`, through a real module built with the SDK: learning settings
/// per state, `is_known` (which learns nothing) and context in signals, checked by the cases of
/// tests/rules/state-api.
#[test]
fn the_state_api_test_rule_passes_its_cases() {
    let dir = support::workspace().join("tests/rules/state-api/cases");
    let out = run(
        picket().arg("test").arg(rule_wasm("state-api")).arg(&dir),
        "",
    );
    assert_all_cases_passed("state-api", &out, 1);
}

fn write_case(dir: &std::path::Path, name: &str, case: &serde_json::Value) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(case).unwrap()).unwrap();
    path
}

fn reader_events() -> serde_json::Value {
    let event = |sec: u32, exe: &str| {
        serde_json::from_str::<serde_json::Value>(&support::token_read(
            sec,
            exe,
            support::K8S_TOKEN,
        ))
        .unwrap()
    };
    serde_json::json!([event(0, "/usr/bin/app"), event(1, "/tmp/x/cat")])
}

#[test]
fn a_wrong_expectation_fails_with_exit_1_and_says_what_differed() {
    let dir = temp_dir();
    let case = write_case(
        dir.path(),
        "wrong.json",
        &serde_json::json!({
            "rule": "k8s-sa-token",
            "settings": {"learning_period": "0s"},
            "events": reader_events(),
            "expect": [{"event": 1, "new_value": "/tmp/y/cat"}],
        }),
    );
    let out = run(
        picket()
            .arg("test")
            .arg(rule_wasm("k8s-sa-token"))
            .arg(&case),
        "",
    );
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(out.stdout.contains("FAIL"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(r#"new_value is "/tmp/x/cat", expected "/tmp/y/cat""#),
        "{}",
        out.stdout
    );

    // Missing a signal the rule raises fails too: expect lists exactly the signals.
    let case = write_case(
        dir.path(),
        "missing.json",
        &serde_json::json!({
            "rule": "k8s-sa-token",
            "settings": {"learning_period": "0s"},
            "events": reader_events(),
            "expect": [],
        }),
    );
    let out = run(
        picket()
            .arg("test")
            .arg(rule_wasm("k8s-sa-token"))
            .arg(&case),
        "",
    );
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("expected 0 signal(s), got 1"),
        "{}",
        out.stdout
    );
}

#[test]
fn unusable_cases_exit_2_naming_file_line_and_field() {
    let dir = temp_dir();
    let mut events = reader_events();
    events[1]["process"].as_object_mut().unwrap().remove("exe");
    let missing_exe = write_case(
        dir.path(),
        "missing-exe.json",
        &serde_json::json!({"rule": "k8s-sa-token", "events": events, "expect": []}),
    );
    let unknown_key = write_case(
        dir.path(),
        "unknown-key.json",
        &serde_json::json!({"rule": "k8s-sa-token", "events": reader_events(),
                            "expect": [{"event": 1, "new_valu": "/tmp/x/cat"}]}),
    );
    let other_rule = write_case(
        dir.path(),
        "other-rule.json",
        &serde_json::json!({"rule": "eks-token", "events": reader_events(), "expect": []}),
    );
    let past_end = write_case(
        dir.path(),
        "past-end.json",
        &serde_json::json!({"rule": "k8s-sa-token", "events": reader_events(),
                            "expect": [{"event": 7}]}),
    );
    let bad_duration = write_case(
        dir.path(),
        "bad-duration.json",
        &serde_json::json!({"rule": "k8s-sa-token", "settings": {"learning_period": "soon"},
                            "events": reader_events(), "expect": []}),
    );
    let mut events = reader_events();
    events[1]["file"]["dev"] = serde_json::json!(52);
    let half_identity = write_case(
        dir.path(),
        "half-identity.json",
        &serde_json::json!({"rule": "k8s-sa-token", "events": events, "expect": []}),
    );
    for (case, wanted) in [
        (&missing_exe, "events[1].process.exe"),
        (&half_identity, "events[1].file.ino"),
        (&unknown_key, "expect[0].new_valu"),
        (
            &other_rule,
            "the case is for `eks-token`, but the module is `k8s-sa-token`",
        ),
        (&past_end, "expect[0].event"),
        (&bad_duration, "settings.learning_period"),
    ] {
        let out = run(
            picket()
                .arg("test")
                .arg(rule_wasm("k8s-sa-token"))
                .arg(case),
            "",
        );
        assert_eq!(out.code, Some(2), "{}", out.stdout);
        let name = case.file_name().unwrap().to_str().unwrap();
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("ERROR") && l.contains(name))
            .unwrap_or_else(|| panic!("no error line for {name}:\n{}", out.stdout));
        assert!(line.contains(wanted), "{line} should name {wanted}");
    }
    let out = run(
        picket()
            .arg("test")
            .arg(rule_wasm("k8s-sa-token"))
            .arg(&missing_exe),
        "",
    );
    assert!(out.stdout.contains("line "), "{}", out.stdout);
}

/// A case fixes its own timing and starts from empty state: `test` takes the sandbox's options
/// and refuses the state's, rather than accepting them and doing nothing.
#[test]
fn test_takes_the_sandbox_options_and_refuses_the_state_ones() {
    let cases = workspace().join("rules/k8s-sa-token/cases");
    let out = run(
        picket()
            .args(["test", "--rule-timeout", "1s", "--rule-memory", "8"])
            .arg(rule_wasm("k8s-sa-token"))
            .arg(&cases),
        "",
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("passed, 0 failed"), "{}", out.stdout);
    for option in ["--learning-period", "--forget-after", "--state-capacity"] {
        let value = if option == "--state-capacity" {
            "10"
        } else {
            "1h"
        };
        let out = run(
            picket()
                .args(["test", option, value])
                .arg(rule_wasm("k8s-sa-token"))
                .arg(&cases),
            "",
        );
        assert_eq!(out.code, Some(2), "{option}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(option), "{option}: {}", out.stderr);
    }
}

#[test]
fn a_file_that_is_not_a_module_exits_2() {
    let dir = temp_dir();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"#!/bin/sh\necho not wasm\n").unwrap();
    let cases = workspace().join("rules/k8s-sa-token/cases");
    let out = run(picket().arg("test").arg(&bogus).arg(&cases), "");
    assert_eq!(out.code, Some(2));
    assert!(
        out.stdout
            .contains("bogus.wasm: is not a WebAssembly module"),
        "{}",
        out.stdout
    );
    let out = run(picket().arg("inspect").arg(&bogus), "");
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("bogus.wasm"), "{}", out.stderr);
}

#[test]
fn inspect_prints_the_manifest() {
    let out = run(picket().arg("inspect").arg(rule_wasm("eks-token")), "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let manifest: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(manifest["id"], "eks-token");
    assert_eq!(
        manifest["title"],
        "Unfamiliar process accessed AWS EKS service account token"
    );
    assert_eq!(manifest["severity"], "medium");
    assert_eq!(manifest["tactic"], "TA0006-credential-access");
    assert_eq!(manifest["technique"], "T1552-unsecured-credentials");
    assert_eq!(
        manifest["subscribe"]["basenames"],
        serde_json::json!(["token"])
    );
    assert_eq!(manifest["new_value"]["learning_period"], "7d");
    assert_eq!(manifest["new_value"]["forget_after"], "28d");
}
