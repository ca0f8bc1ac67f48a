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

/// The most learned values the persister says it committed so far (its debug line).
fn committed_values(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|line| line.contains("learned values committed"))
        .filter_map(|line| line.split("added_total=").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn kill_9_during_heavy_learning_forgets_nothing_committed() {
    let (rules, state) = (rules_dir(), temp_dir());
    let mut command = replay_with_state(rules.path(), state.path());
    command.env("PICKET_LOG", "info,picket::store::persister=debug");
    let mut agent = Streaming::spawn(&mut command);
    // What must survive: a baseline (learned silently) and `first` values, each signalled once
    // the agent learned it.
    let first = 2000u32;
    agent.send(&event(0, "/usr/bin/baseline"));
    let learner = |i: u32| format!("/tmp/learner{i}/cat");
    for i in 1..=first {
        agent.send(&event(i, &learner(i)));
    }
    assert!(
        agent.wait_for_signals(first as usize, Duration::from_secs(120)),
        "the first values were never all learned\n{}",
        agent.stderr()
    );
    // Keep learning hard until the persister says those are committed (an observable, not a
    // time), and go on learning while the process is killed.
    let mut i = first + 1;
    let mut send_more = |agent: &mut Streaming| {
        for _ in 0..50 {
            agent.send(&event(i, &learner(i)));
            i += 1;
        }
    };
    let committed = u64::from(first) + 1;
    // A guard against a hang, not a measurement.
    let guard = Instant::now();
    while committed_values(&agent.stderr()) < committed {
        assert!(
            guard.elapsed() < Duration::from_secs(120),
            "the persister never said the first {committed} values were committed\n{}",
            agent.stderr()
        );
        send_more(&mut agent);
        std::thread::sleep(Duration::from_millis(1));
    }
    send_more(&mut agent);
    let stderr = agent.kill9();

    // Restart on the same state and replay every committed value: none may be new.
    let input: Vec<String> = std::iter::once(event(0, "/usr/bin/baseline"))
        .chain((1..=first).map(|n| event(n, &learner(n))))
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
        "values committed before kill -9 were forgotten\n{stderr}\n{}",
        after.stderr
    );
}

#[test]
fn a_newer_state_format_is_left_untouched_and_the_agent_keeps_detecting() {
    // (A damaged file is set aside: tests/robustness.rs.)
    let rules = rules_dir();
    // A future picket's state format: an upgrade rolled back (docs/new-value.md).
    let future = temp_dir();
    let file = future.path().join("state.redb");
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            txn.open_table(meta).unwrap().insert("format", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let before = std::fs::read(&file).unwrap();
    let out = run(&mut replay_with_state(rules.path(), future.path()), "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("was written in state format 99 by a newer picket")
            && out.stderr.contains("state.v1.redb"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the newer file was changed"
    );
    assert!(future.path().join("state.v1.redb").is_file());
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
