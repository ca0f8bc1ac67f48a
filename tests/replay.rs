//! `picket replay` through the real binary: the example file, bad lines, determinism.

mod support;

use support::{K8S_TOKEN, picket, rule_wasm, run, temp_dir, token_read, workspace};

fn bundled_rules() -> tempfile::TempDir {
    let dir = temp_dir();
    for rule in ["eks-token", "k8s-sa-token"] {
        let file = format!("{}.wasm", rule.replace('-', "_"));
        std::fs::copy(rule_wasm(rule), dir.path().join(file)).unwrap();
    }
    dir
}

#[test]
fn the_example_raises_one_signal_per_token_for_the_intruder_only() {
    let rules = bundled_rules();
    let example = workspace().join("examples/token-reads.jsonl");
    let out = run(
        picket()
            .arg("replay")
            .arg("--rules")
            .arg(rules.path())
            .arg(&example),
        "",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let signals = out.signals();
    let summary: Vec<(String, String, String)> = signals
        .iter()
        .map(|s| {
            (
                s["rule"].as_str().unwrap().to_string(),
                s["new_value"]["value"].as_str().unwrap().to_string(),
                s["new_value"]["group"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Readers are learned per image repository: 2.7.1's week of learning covers 2.7.2, deployed
    // on day eight, whose own reads raise nothing.
    let api = "registry.example/payments-api".to_string();
    assert_eq!(
        summary,
        [
            ("k8s-sa-token".into(), "/tmp/.x/kubectl".into(), api.clone()),
            ("eks-token".into(), "/usr/bin/cat".into(), api),
        ]
    );
    // A signal carries the rule's fields and the whole event, as docs/signals.md shows.
    let first = &signals[0];
    assert_eq!(first["ts"], "2026-11-22T22:22:03.517200114Z");
    assert_eq!(first["severity"], "medium");
    assert_eq!(first["tactic"], "TA0006-credential-access");
    assert_eq!(first["technique"], "T1552-unsecured-credentials");
    assert_eq!(first["new_value"]["field"], "process.exe");
    assert_eq!(first["event"]["process"]["pid"], 31337);
    assert_eq!(first["event"]["process"]["args"][1], "auth");
    // The signal keeps the full image reference.
    assert_eq!(
        first["event"]["container"]["image"],
        "registry.example/payments-api:2.7.2"
    );
    assert!(out.stderr.contains("events=141"), "{}", out.stderr);
}

#[test]
fn replay_is_deterministic_and_reads_stdin() {
    let rules = bundled_rules();
    let example = workspace().join("examples/token-reads.jsonl");
    let text = std::fs::read_to_string(&example).unwrap();
    let from_file = run(
        picket()
            .arg("replay")
            .arg("--rules")
            .arg(rules.path())
            .arg(&example),
        "",
    );
    let from_stdin = run(
        picket()
            .arg("replay")
            .arg("--rules")
            .arg(rules.path())
            .arg("-"),
        &text,
    );
    assert_eq!(from_file.stdout, from_stdin.stdout);
    assert_eq!(from_file.signals().len(), 2);
}

#[test]
fn settings_override_the_rules_defaults() {
    let rules = bundled_rules();
    let events: String = [
        token_read(0, "/usr/bin/app", K8S_TOKEN),
        token_read(1, "/tmp/x/cat", K8S_TOKEN),
    ]
    .join("\n");
    let default = run(
        picket()
            .arg("replay")
            .arg("--rules")
            .arg(rules.path())
            .arg("-"),
        &events,
    );
    assert_eq!(
        default.signals().len(),
        0,
        "still learning with the 7d default"
    );
    let zero = run(
        picket()
            .args(["replay", "--learning-period", "0s", "--rules"])
            .arg(rules.path())
            .arg("-"),
        &events,
    );
    assert_eq!(zero.signals().len(), 1);
}

#[test]
fn bad_lines_are_reported_by_line_and_field_and_skipped() {
    let rules = bundled_rules();
    let good = |i| token_read(i, &format!("/tmp/r{i}/cat"), K8S_TOKEN);
    let lines = [
        good(0),
        r#"{"ts":"2026-11-22T10:00:01Z","kind":"open","file":{"path":"/x"},"process":{"pid":"12","exe":"/y"}}"#.into(),
        good(2),
        r#"{"ts":"2026-11-22T10:00:03Z","kind":"open","file":{"path":"/x","acess":"read"},"process":{"pid":1,"exe":"/y"}}"#.into(),
        "not json at all".into(),
        String::new(),
        r#"{"ts":"yesterday","kind":"open","file":{"path":"/x"},"process":{"pid":1,"exe":"/y"}}"#.into(),
        good(8),
    ];
    let out = run(
        picket()
            .args(["replay", "--learning-period", "0s", "--rules"])
            .arg(rules.path())
            .arg("-"),
        &lines.join("\n"),
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    for expected in [
        "stdin:2: field `process.pid`: invalid type: string \"12\", expected u32",
        "stdin:4: field `file.acess`: unknown field `acess`",
        "stdin:5: expected ident",
        "stdin:7: field `ts`: `yesterday` is not an RFC 3339 timestamp",
    ] {
        assert!(
            out.stderr.contains(expected),
            "expected `{expected}` in\n{}",
            out.stderr
        );
    }
    let values: Vec<String> = out
        .signals()
        .iter()
        .map(|s| s["new_value"]["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, ["/tmp/r2/cat", "/tmp/r8/cat"]);
}

#[test]
fn a_missing_rules_directory_or_input_is_an_error() {
    let out = run(
        picket().args(["replay", "--rules", "/nonexistent/rules", "-"]),
        "",
    );
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("/nonexistent/rules"), "{}", out.stderr);
    let rules = bundled_rules();
    let out = run(
        picket()
            .arg("replay")
            .arg("--rules")
            .arg(rules.path())
            .arg("/nonexistent/events.jsonl"),
        "",
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("/nonexistent/events.jsonl"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_full_new_value_state_is_reported() {
    let rules = bundled_rules();
    let events: String = (0..50)
        .map(|i| token_read(i, &format!("/tmp/r{i}/cat"), K8S_TOKEN) + "\n")
        .collect();
    let out = run(
        picket()
            .args([
                "replay",
                "--learning-period",
                "0s",
                "--state-capacity",
                "10",
            ])
            .arg("--rules")
            .arg(rules.path())
            .arg("-"),
        &events,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("new-value state full") && out.stderr.contains("rule=k8s-sa-token"),
        "{}",
        out.stderr
    );
    // Evicted values are new again, never silently known: every reader still raised a signal.
    assert_eq!(out.signals().len(), 49);
}

/// A token read inside a container of `image`, `minutes` after 2026-11-14T10:00Z (within
/// November).
fn container_read(minutes: u32, image: &str, exe: &str) -> String {
    let at = 10 * 60 + minutes;
    let day = 14 + at / 1440;
    assert!(day <= 30);
    let ts = format!("2026-11-{day:02}T{:02}:{:02}:00Z", at % 1440 / 60, at % 60);
    serde_json::json!({
        "ts": ts,
        "kind": "open",
        "host": "node-a",
        "file": {"path": K8S_TOKEN, "access": "read"},
        "process": {"pid": 4242, "exe": exe},
        "container": {"id": "c0ffee000001", "image": image},
    })
    .to_string()
        + "\n"
}

/// The attack of issue 21 (cross-group blinding through state eviction): 50 workloads learned
/// their token readers 8 days ago; a new image, still learning (so its own new readers raise
/// nothing), reads its token with thousands of distinct executables of 2 KB, far past a small
/// per-rule budget. Its flood may only evict its own values: afterwards an unfamiliar reader
/// in every victim raises a signal, the same day and the next (from the saved state), and the
/// log names the group that evicted.
#[test]
fn a_flood_of_new_values_in_one_group_does_not_blind_the_others() {
    let rules = bundled_rules();
    let state = temp_dir();
    let victim = |v: usize| format!("registry.example/victim-{v}:1.0");
    let mut events = String::new();
    for v in 0..50 {
        events += &container_read(v as u32, &victim(v), "/app/server");
        events += &container_read(60 + v as u32, &victim(v), "/usr/bin/python3");
    }
    let attacker = "registry.example/attacker:6.6.6";
    let day8 = 8 * 1440;
    for i in 0..8_200 {
        let exe = format!("/tmp/flood/{i:05}/{}", "x".repeat(2_000));
        events += &container_read(day8 + i / 60, attacker, &exe);
    }
    let after = day8 + 8_200 / 60 + 5;
    for v in 0..50 {
        events += &container_read(after, &victim(v), "/app/server");
        events += &container_read(after + 1, &victim(v), "/tmp/.x/kubectl");
    }
    let replay = |events: &str| {
        run(
            picket()
                .args(["replay", "--state-bytes-per-rule", "4MiB", "--state"])
                .arg(state.path())
                .arg("--rules")
                .arg(rules.path())
                .arg("-"),
            events,
        )
    };
    let out = replay(&events);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let raised = |out: &support::Run, exe: &str| -> Vec<String> {
        out.signals()
            .iter()
            .filter(|s| s["new_value"]["value"] == exe)
            .map(|s| s["new_value"]["group"].as_str().unwrap().to_string())
            .collect()
    };
    let victims: Vec<String> = (0..50)
        .map(|v| format!("registry.example/victim-{v}"))
        .collect();
    let mut groups = raised(&out, "/tmp/.x/kubectl");
    groups.sort_by_key(|g| g.rsplit('-').next().unwrap().parse::<usize>().unwrap());
    assert_eq!(groups, victims, "{}", out.stderr);
    // Nothing else: the flood learned silently, the known readers stayed known.
    assert_eq!(out.signals().len(), 50);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("new-value state full")
                && l.contains("k8s-sa-token")
                && l.contains("evicting=process.exe/registry.example/attacker: ")),
        "{}",
        out.stderr
    );
    // The next day, from the saved state: every victim still judges its readers.
    let next: String = (0..50)
        .map(|v| {
            container_read(after + 1440, &victim(v), "/app/server")
                + &container_read(after + 1441, &victim(v), "/usr/bin/python3")
                + &container_read(after + 1442, &victim(v), "/tmp/.y/curl")
        })
        .collect();
    let out = replay(&next);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(raised(&out, "/tmp/.y/curl").len(), 50, "{}", out.stderr);
    assert_eq!(out.signals().len(), 50, "{}", out.stdout);
}
