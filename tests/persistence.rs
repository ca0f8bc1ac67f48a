//! Learned state under `--state`: it survives restarts and kill -9, refuses foreign files, and
//! rides out a full disk without losing signals.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::{K8S_TOKEN, Streaming, picket, rule_wasm, run, temp_dir, token_read};

fn rules_dir() -> tempfile::TempDir {
    let dir = temp_dir();
    std::fs::copy(
        rule_wasm("k8s-sa-token"),
        dir.path().join("k8s_sa_token.wasm"),
    )
    .unwrap();
    dir
}

fn replay_with_state(rules: &Path, state: &Path) -> std::process::Command {
    let mut command = picket();
    command
        .args(["replay", "--learning-period", "0s", "--rules"])
        .arg(rules)
        .arg("--state")
        .arg(state)
        .arg("-");
    command
}

fn event(i: u32, exe: &str) -> String {
    token_read(i % 3600, exe, K8S_TOKEN)
}

fn value(signal: &serde_json::Value) -> String {
    signal["new_value"]["value"].as_str().unwrap().to_string()
}

#[test]
fn a_restart_remembers_and_a_known_exe_raises_nothing() {
    let (rules, state) = (rules_dir(), temp_dir());
    let first = run(
        &mut replay_with_state(rules.path(), state.path()),
        &[event(0, "/usr/bin/app"), event(1, "/tmp/x/cat")].join("\n"),
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(first.signals().len(), 1);
    let second = run(
        &mut replay_with_state(rules.path(), state.path()),
        &[
            event(2, "/usr/bin/app"),
            event(3, "/tmp/x/cat"),
            event(4, "/tmp/y/cat"),
        ]
        .join("\n"),
    );
    assert!(
        second.stderr.contains("learned state restored"),
        "{}",
        second.stderr
    );
    let values: Vec<String> = second.signals().iter().map(value).collect();
    assert_eq!(values, ["/tmp/y/cat"], "{}", second.stderr);
}

#[test]
fn kill_9_during_heavy_learning_forgets_nothing_learned_a_second_before() {
    let (rules, state) = (rules_dir(), temp_dir());
    let mut agent = Streaming::spawn(&mut replay_with_state(rules.path(), state.path()));
    agent.send(&event(0, "/usr/bin/baseline"));
    // Learn as fast as the pipe allows for about two seconds, noting when each new value's
    // signal came out: that is when the agent had learned it.
    let mut learned: Vec<(Instant, String)> = Vec::new();
    let start = Instant::now();
    let mut i = 1;
    while start.elapsed() < Duration::from_millis(2200) {
        for _ in 0..50 {
            agent.send(&event(i, &format!("/tmp/learner{i}/cat")));
            i += 1;
        }
        for (at, signal) in agent.received() {
            learned.push((at, value(&signal)));
        }
        // Pacing, not ordering: the time passing is what this test is about.
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed_at = Instant::now();
    let stderr = agent.kill9();
    let old: Vec<&String> = learned
        .iter()
        .filter(|(at, _)| killed_at.duration_since(*at) > Duration::from_secs(1))
        .map(|(_, value)| value)
        .collect();
    assert!(
        old.len() > 1000,
        "only {} values learned over a second before the kill\n{stderr}",
        old.len()
    );

    // Restart on the same state and replay every one of them: none may be new.
    let input: Vec<String> = old
        .iter()
        .enumerate()
        .map(|(n, exe)| event(n as u32 + 1, exe))
        .chain(std::iter::once(event(0, "/tmp/brand-new/cat")))
        .collect();
    let after = run(
        &mut replay_with_state(rules.path(), state.path()),
        &input.join("\n"),
    );
    assert_eq!(after.code, Some(0), "{}", after.stderr);
    let values: Vec<String> = after.signals().iter().map(value).collect();
    assert_eq!(
        values,
        ["/tmp/brand-new/cat"],
        "values learned over a second before kill -9 were forgotten\n{}",
        after.stderr
    );
}

#[test]
fn a_foreign_state_file_is_refused_with_its_name() {
    // (A damaged one is set aside: tests/robustness.rs.)
    let rules = rules_dir();
    // A redb file from some other program, or a future picket's state format.
    let future = temp_dir();
    {
        let db = redb::Database::create(future.path().join("state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            txn.open_table(meta).unwrap().insert("format", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let out = run(&mut replay_with_state(rules.path(), future.path()), "");
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("written in state format 99, but this picket reads format 1"),
        "{}",
        out.stderr
    );
}

/// Runs `script` as root in a private mount namespace; fails without root.
fn in_private_mount_namespace(script: &str) -> std::process::Output {
    support::require_root("the full-disk test (mounts a small tmpfs)");
    std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec", script])
        .output()
        .expect("running unshare")
}

#[test]
#[ignore = "needs root: mounts a small tmpfs (./run-tests runs it)"]
fn a_full_disk_is_reported_and_no_signal_is_lost() {
    let rules = rules_dir();
    let state = temp_dir();
    let events = temp_dir();
    let path = events.path().join("events.jsonl");
    let count = 20_000u32;
    let lines: Vec<String> = (0..count)
        .map(|i| {
            event(
                i,
                &format!("/tmp/filling-the-disk-with-long-paths/{i:08}/cat"),
            )
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    // 256 KiB cannot hold 20,000 learned values: commits start failing part way.
    let script = format!(
        "mount -t tmpfs -o size=256k,mode=0700 picket-test {state}\n\
         exec {picket} replay --learning-period 0s --rules {rules} --state {state} {events} >{out}",
        state = state.path().display(),
        picket = env!("CARGO_BIN_EXE_picket"),
        rules = rules.path().display(),
        events = path.display(),
        out = events.path().join("signals.jsonl").display(),
    );
    let output = in_private_mount_namespace(&script);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("No space left on device") || stderr.contains("cannot save learned values"),
        "expected the full disk to be reported:\n{stderr}"
    );
    let signals = std::fs::read_to_string(events.path().join("signals.jsonl")).unwrap();
    assert_eq!(
        signals.lines().count() as u32,
        count - 1,
        "signals were lost while the disk was full:\n{stderr}"
    );
}
