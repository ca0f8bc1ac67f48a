//! Hot reload: modules added, replaced and removed in the rules directory of a running
//! `picket replay --watch` while events stream through it.

mod support;

use std::path::Path;
use std::time::Duration;
use support::{K8S_TOKEN, Streaming, new_exe_rule, picket, rule_wasm, temp_dir, token_read};

const RELOAD_WAIT: Duration = Duration::from_secs(10);

fn stream(rules: &Path) -> Streaming {
    Streaming::spawn(
        picket()
            .args(["replay", "--watch", "--learning-period", "0s", "--rules"])
            .arg(rules)
            .arg("-"),
    )
}

fn event(i: u32) -> String {
    token_read(i % 3600, &format!("/tmp/reader{i}/cat"), K8S_TOKEN)
}

fn exe(signal: &serde_json::Value) -> String {
    signal["event"]["process"]["exe"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Writes a module the way `cp` does: truncate, then write in place.
fn copy_into(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn swaps_under_a_stream_lose_and_double_no_signal() {
    let dir = temp_dir();
    let module = dir.path().join("rule.wasm");
    let (v1, v2) = (
        new_exe_rule("reloaded", "v1"),
        new_exe_rule("reloaded", "v2"),
    );
    copy_into(&module, &v1);
    let mut agent = stream(dir.path());
    assert!(agent.wait_for_log("rule loaded", RELOAD_WAIT));
    let swaps = 6;
    let mut sent = 0;
    let mut send_some = |agent: &mut Streaming, count: u32| {
        for _ in 0..count {
            agent.send(&event(sent));
            sent += 1;
        }
        // Pacing, not ordering: the stream keeps flowing while a swap lands, and what is
        // asserted holds whatever the timing.
        std::thread::sleep(Duration::from_millis(2));
    };
    send_some(&mut agent, 200);
    for swap in 1..=swaps {
        copy_into(&module, if swap % 2 == 1 { &v2 } else { &v1 });
        // Keep the stream flowing until this swap has landed.
        let started = std::time::Instant::now();
        while agent
            .stderr()
            .matches("rule replaced by a new version")
            .count()
            < swap
        {
            assert!(started.elapsed() < RELOAD_WAIT, "swap {swap} never landed");
            send_some(&mut agent, 10);
        }
        send_some(&mut agent, 200);
    }
    let total = sent;
    // An exe seen before every swap is still known to the last version: the state survived.
    agent.send(&event(1));
    let (code, signals, stderr) = agent.finish();
    assert_eq!(code, Some(0), "{stderr}");

    // Every event after the group's first raised exactly one signal, in order.
    let exes: Vec<String> = signals.iter().map(exe).collect();
    let expected: Vec<String> = (1..total).map(|i| format!("/tmp/reader{i}/cat")).collect();
    assert_eq!(
        exes.len(),
        expected.len(),
        "lost or doubled signals\n{stderr}"
    );
    assert_eq!(exes, expected);

    // Each event met exactly one version, and versions changed only at swaps: the titles form
    // runs v1, v2, v1, ... with no interleaving.
    let titles: Vec<&str> = signals
        .iter()
        .map(|s| s["title"].as_str().unwrap())
        .collect();
    let mut runs: Vec<&str> = titles.clone();
    runs.dedup();
    assert_eq!(
        runs,
        ["v1", "v2", "v1", "v2", "v1", "v2", "v1"],
        "each swap must split the stream once\n{stderr}"
    );
}

#[test]
fn a_broken_or_half_written_module_leaves_the_running_version_in_place() {
    let dir = temp_dir();
    let module = dir.path().join("k8s_sa_token.wasm");
    let good = std::fs::read(rule_wasm("k8s-sa-token")).unwrap();
    copy_into(&module, &good);
    let mut agent = stream(dir.path());
    assert!(agent.wait_for_log("rule loaded", RELOAD_WAIT));
    agent.send(&event(0));
    agent.send(&event(1));

    // Half a module, as a slow copy would leave it for a moment, then garbage.
    copy_into(&module, &good[..good.len() / 2]);
    assert!(agent.wait_for_log("is not a valid WebAssembly module", RELOAD_WAIT));
    agent.send(&event(2));
    copy_into(&module, b"\0asm\x01\0\0\0garbage");
    assert!(agent.wait_for_log("k8s_sa_token.wasm: is not a valid", RELOAD_WAIT));
    agent.send(&event(3));
    // A file of another name that is not wasm at all.
    copy_into(
        &dir.path().join("notes.wasm"),
        b"remember to rotate the keys",
    );
    assert!(agent.wait_for_log("notes.wasm: is not a WebAssembly module", RELOAD_WAIT));
    agent.send(&event(4));
    // The complete module again: identical to the running one, so nothing is reloaded.
    copy_into(&module, &good);
    agent.send(&event(5));
    // Proof that a scan ran after that copy (else "nothing replaced" below would prove
    // nothing): another module, written after it, loads. Its first event is learned silently.
    copy_into(
        &dir.path().join("witness.wasm"),
        &new_exe_rule("witness", "witness"),
    );
    assert!(
        agent.wait_for_log_line(&["rule loaded", "witness.wasm"], RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    let (code, signals, stderr) = agent.finish();
    // Modules were refused while replaying: exit 2, as for a module refused at the start.
    assert_eq!(code, Some(2), "{stderr}");
    let exes: Vec<String> = signals.iter().map(exe).collect();
    assert_eq!(
        exes,
        (1..=5)
            .map(|i| format!("/tmp/reader{i}/cat"))
            .collect::<Vec<_>>(),
        "{stderr}"
    );
    assert!(!stderr.contains("replaced"), "{stderr}");
}

/// A module written in two parts is judged once complete: the half the watch saw is not
/// reported as an error. A module that stays broken is reported, once.
#[test]
fn a_module_being_written_is_not_an_error_and_a_broken_one_is_reported_once() {
    use std::io::Write;
    let dir = temp_dir();
    copy_into(
        &dir.path().join("witness1.wasm"),
        &new_exe_rule("witness1", "witness"),
    );
    let agent = stream(dir.path());
    assert!(agent.wait_for_log("rule loaded", RELOAD_WAIT));
    let good = std::fs::read(rule_wasm("k8s-sa-token")).unwrap();
    let module = dir.path().join("k8s_sa_token.wasm");
    let mut file = std::fs::File::create(&module).unwrap();
    file.write_all(&good[..good.len() / 2]).unwrap();
    // The watch has read the first half and is compiling it (a refusal, held back) ...
    assert!(
        agent.wait_for_log_line(&["compiling rule module", "k8s_sa_token.wasm"], RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    // ... when the writer goes on.
    file.write_all(&good[good.len() / 2..]).unwrap();
    drop(file);
    assert!(
        agent.wait_for_log_line(&["rule loaded", "k8s_sa_token.wasm"], RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    // A module that stays half written is refused once it has settled.
    copy_into(&dir.path().join("broken.wasm"), &good[..good.len() / 2]);
    assert!(agent.wait_for_log(
        "broken.wasm: is not a valid WebAssembly module",
        RELOAD_WAIT
    ));
    // Proof that the watch went on after that report: another module loads.
    copy_into(
        &dir.path().join("witness2.wasm"),
        &new_exe_rule("witness2", "witness"),
    );
    assert!(agent.wait_for_log_line(&["rule loaded", "witness2.wasm"], RELOAD_WAIT));
    let (code, _, stderr) = agent.finish();
    assert_eq!(code, Some(2), "a module was refused: {stderr}");
    assert!(!stderr.contains("k8s_sa_token.wasm: is"), "{stderr}");
    assert_eq!(stderr.matches("rule module refused").count(), 1, "{stderr}");
}

/// The install recipe of docs/rule-guide.md: written under a hidden name (never loaded), then
/// renamed into place.
#[test]
fn a_module_written_under_a_hidden_name_loads_once_renamed_into_place() {
    let dir = temp_dir();
    let mut agent = stream(dir.path());
    assert!(agent.wait_for_log("no rules loaded", RELOAD_WAIT));
    let hidden = dir.path().join(".rule.wasm.new");
    copy_into(&hidden, &new_exe_rule("renamed", "renamed"));
    std::fs::rename(&hidden, dir.path().join("rule.wasm")).unwrap();
    assert!(
        agent.wait_for_log_line(&["rule loaded", "rule.wasm"], RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    agent.send(&event(0));
    agent.send(&event(1));
    let (code, signals, stderr) = agent.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(signals.len(), 1, "{stderr}");
    assert!(!stderr.contains(".rule.wasm.new"), "{stderr}");
}

#[test]
fn removing_a_module_stops_its_rule_and_bringing_it_back_keeps_its_state() {
    let dir = temp_dir();
    let module = dir.path().join("rule.wasm");
    let rule = new_exe_rule("comes-and-goes", "v1");
    copy_into(&module, &rule);
    let mut agent = stream(dir.path());
    assert!(agent.wait_for_log("rule loaded", RELOAD_WAIT));
    for i in 0..3 {
        agent.send(&event(i));
    }
    // Learned before the removal: the signals of events 1 and 2 (0 is learned silently).
    assert!(agent.wait_for_signals(2, RELOAD_WAIT), "{}", agent.stderr());
    std::fs::remove_file(&module).unwrap();
    assert!(
        agent.wait_for_log("rule removed", RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    agent.send(&event(3));
    // Back under another name: same rule id, so the same state.
    copy_into(&dir.path().join("renamed.wasm"), &rule);
    assert!(
        agent.wait_for_log_line(&["rule loaded", "renamed.wasm"], RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    agent.send(&event(2)); // learned before the removal: still known
    agent.send(&event(4));
    let (_, signals, stderr) = agent.finish();
    let exes: Vec<String> = signals.iter().map(exe).collect();
    assert_eq!(
        exes,
        ["/tmp/reader1/cat", "/tmp/reader2/cat", "/tmp/reader4/cat"],
        "{stderr}"
    );
}

#[test]
fn a_configmap_style_update_through_a_data_link_is_picked_up() {
    // The kubelet's layout: entries are links through `..data`, which is itself a link to a
    // timestamped directory; an update writes a new directory and renames a new `..data` over
    // the old one. The entries' own files are never written.
    let dir = temp_dir();
    let root = dir.path();
    let old = root.join("..2026_11_22_10_00_00.000000001");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("rule.wasm"), new_exe_rule("configmap", "v1")).unwrap();
    std::os::unix::fs::symlink(old.file_name().unwrap(), root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/rule.wasm", root.join("rule.wasm")).unwrap();
    let mut agent = stream(root);
    assert!(agent.wait_for_log("rule loaded", RELOAD_WAIT));
    agent.send(&event(0));
    agent.send(&event(1));
    // v1 evaluated both before the update: event 1's signal (0 is learned silently).
    assert!(agent.wait_for_signals(1, RELOAD_WAIT), "{}", agent.stderr());

    let new = root.join("..2026_11_22_11_00_00.000000002");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("rule.wasm"), new_exe_rule("configmap", "v2")).unwrap();
    std::os::unix::fs::symlink(new.file_name().unwrap(), root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(&old).unwrap();
    assert!(
        agent.wait_for_log("rule replaced by a new version", RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    agent.send(&event(2));
    let (_, signals, stderr) = agent.finish();
    let titles: Vec<&str> = signals
        .iter()
        .map(|s| s["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["v1", "v2"], "{stderr}");
}

#[test]
fn a_second_rule_with_the_same_id_is_refused_and_the_first_keeps_running() {
    let dir = temp_dir();
    copy_into(&dir.path().join("a.wasm"), &new_exe_rule("twin", "first"));
    let mut agent = stream(dir.path());
    assert!(agent.wait_for_log("rule loaded", RELOAD_WAIT));
    agent.send(&event(0));
    copy_into(&dir.path().join("b.wasm"), &new_exe_rule("twin", "second"));
    assert!(agent.wait_for_log("already loaded from", RELOAD_WAIT));
    agent.send(&event(1));
    let (_, signals, stderr) = agent.finish();
    assert!(
        stderr.contains("b.wasm: rule id `twin` is already loaded from"),
        "{stderr}"
    );
    let titles: Vec<&str> = signals
        .iter()
        .map(|s| s["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["first"]);
}

#[test]
fn compiled_modules_are_cached_across_restarts_and_a_corrupt_entry_is_rebuilt() {
    let rules = temp_dir();
    let state = temp_dir();
    std::fs::copy(
        rule_wasm("k8s-sa-token"),
        rules.path().join("k8s_sa_token.wasm"),
    )
    .unwrap();
    let run_once = || {
        support::run(
            picket()
                .args(["replay", "--rules"])
                .arg(rules.path())
                .arg("--state")
                .arg(state.path())
                .arg("-"),
            &event(0),
        )
    };
    let first = run_once();
    assert!(
        first.stderr.contains("rule loaded (compiled)"),
        "{}",
        first.stderr
    );
    let second = run_once();
    assert!(
        second.stderr.contains("rule loaded (cached code)"),
        "{}",
        second.stderr
    );

    let cache = state.path().join("modules");
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let third = run_once();
    assert!(
        third.stderr.contains("module cache entry unusable"),
        "{}",
        third.stderr
    );
    assert!(
        third.stderr.contains("rule loaded (compiled)"),
        "{}",
        third.stderr
    );
    assert_eq!(third.code, Some(0));
    let fourth = run_once();
    assert!(
        fourth.stderr.contains("rule loaded (cached code)"),
        "{}",
        fourth.stderr
    );
}
