//! Trust (docs/threat-model.md): nothing an unprivileged user can write decides what the agent
//! runs or what it knows. Strict modes on `--rules` and `--state`, compiled code authenticated
//! with a key only the agent reads, and minisign-signed rules under `--trusted-key`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{K8S_TOKEN, Run, Streaming, new_exe_rule, picket, rule_wasm, temp_dir, token_read};

const RELOAD_WAIT: Duration = Duration::from_secs(10);

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `picket replay` of `events` with `rules` (and `state`, and `extra` arguments).
fn replay(rules: &Path, state: Option<&Path>, extra: &[&str], events: &[String]) -> Run {
    let mut command = picket();
    command
        .args(["replay", "--learning-period", "0s"])
        .args(extra)
        .arg("--rules")
        .arg(rules);
    if let Some(state) = state {
        command.arg("--state").arg(state);
    }
    command.arg("-");
    support::run(&mut command, &(events.join("\n") + "\n"))
}

/// Token reads by `count` different programs, the first of which is learned silently.
fn reads(tag: &str, count: u32) -> Vec<String> {
    (0..count)
        .map(|i| token_read(i, &format!("/tmp/{tag}{i}/cat"), K8S_TOKEN))
        .collect()
}

/// A directory `name` under a fresh private temporary directory, holding the k8s-sa-token rule.
fn rules_dir(top: &Path) -> PathBuf {
    let rules = top.join("rules");
    std::fs::create_dir(&rules).unwrap();
    chmod(&rules, 0o755);
    std::fs::copy(rule_wasm("k8s-sa-token"), rules.join("k8s_sa_token.wasm")).unwrap();
    rules
}

fn assert_refused(run: &Run, expected: &[&str]) {
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    for text in expected {
        assert!(
            run.stderr.contains(text),
            "expected `{text}` in:\n{}",
            run.stderr
        );
    }
}

#[test]
fn a_rules_directory_others_can_write_is_refused_naming_it_and_its_mode() {
    let top = temp_dir();
    let rules = rules_dir(top.path());
    let shown = rules.display().to_string();
    let ok = replay(&rules, None, &[], &reads("a", 2));
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert_eq!(ok.signals().len(), 1, "{}", ok.stderr);

    chmod(&rules, 0o777);
    let run = replay(&rules, None, &[], &reads("a", 2));
    assert_refused(
        &run,
        &[&format!(
            "rules directory {shown} is writable by group and others (mode 0777)"
        )],
    );
    chmod(&rules, 0o775);
    let run = replay(&rules, None, &[], &reads("a", 2));
    assert_refused(
        &run,
        &[&format!(
            "rules directory {shown} is writable by group (mode 0775)"
        )],
    );

    // A world-writable directory above it, without the sticky bit, lets anyone swap it.
    chmod(&rules, 0o755);
    chmod(top.path(), 0o777);
    let run = replay(&rules, None, &[], &reads("a", 2));
    assert_refused(
        &run,
        &[&format!(
            "the directory {} above it is writable by group and others without the sticky bit \
             (mode 0777)",
            top.path().display()
        )],
    );
    // With the sticky bit (as /tmp has), it is fine.
    chmod(top.path(), 0o1777);
    let run = replay(&rules, None, &[], &reads("a", 2));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    chmod(top.path(), 0o700);

    // `picket run` refuses it before it loads any probe.
    chmod(&rules, 0o777);
    let state = temp_dir();
    let run = support::run(
        picket()
            .args(["run", "--rules"])
            .arg(&rules)
            .arg("--state")
            .arg(state.path()),
        "",
    );
    assert_refused(&run, &[&format!("rules directory {shown} is writable")]);
    assert!(!run.stderr.contains("probes attached"), "{}", run.stderr);
}

#[test]
fn a_module_others_can_write_is_refused_and_the_other_rules_run() {
    let top = temp_dir();
    let rules = rules_dir(top.path());
    let loose = rules.join("eks_token.wasm");
    std::fs::copy(rule_wasm("eks-token"), &loose).unwrap();
    chmod(&loose, 0o666);
    let run = replay(&rules, None, &[], &reads("m", 2));
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "rule module {} is writable by group and others (mode 0666)",
            loose.display()
        )),
        "{}",
        run.stderr
    );
    let rules_fired: Vec<_> = run.signals().iter().map(|s| s["rule"].clone()).collect();
    assert_eq!(rules_fired, ["k8s-sa-token"], "{}", run.stderr);
}

#[test]
fn a_state_directory_others_can_write_is_refused_naming_it_and_its_mode() {
    let top = temp_dir();
    let rules = rules_dir(top.path());
    let state = top.path().join("state");
    let ok = replay(&rules, Some(&state), &[], &reads("s", 2));
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert_eq!(mode(&state), 0o700, "a new state directory is private");

    for (path, loose, what) in [
        (state.clone(), 0o777, "state directory"),
        (state.clone(), 0o770, "state directory"),
        (
            state.join("modules"),
            0o707,
            "compiled-module cache directory",
        ),
        (state.join("state.redb"), 0o666, "state file"),
    ] {
        let before = mode(&path);
        chmod(&path, loose);
        let run = replay(&rules, Some(&state), &[], &reads("s", 2));
        assert_refused(
            &run,
            &[
                &format!("{what} {}", path.display()),
                &format!("(mode {loose:04o})"),
            ],
        );
        chmod(&path, before);
    }
    // A world-writable directory above it, without the sticky bit.
    chmod(top.path(), 0o777);
    let run = replay(&rules, Some(&state), &[], &reads("s", 2));
    assert_refused(
        &run,
        &["above it is writable by group and others without the sticky bit"],
    );
    chmod(top.path(), 0o700);
    let run = replay(&rules, Some(&state), &[], &reads("s", 2));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn the_cache_key_is_made_0600_and_a_key_others_can_read_is_refused() {
    let rules_top = temp_dir();
    let rules = rules_dir(rules_top.path());
    let state = temp_dir();
    let run = replay(&rules, Some(state.path()), &[], &reads("k", 2));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let key = state.path().join("module-cache.key");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::metadata(&key).unwrap().len(), 32);
    assert!(
        run.stderr.contains("compiled-module cache key created"),
        "{}",
        run.stderr
    );

    chmod(&key, 0o644);
    let run = replay(&rules, Some(state.path()), &[], &reads("k", 2));
    assert_refused(
        &run,
        &[
            &format!("compiled-module cache key {}", key.display()),
            "mode 0644",
        ],
    );
    // A link in its place is not followed.
    chmod(&key, 0o600);
    let elsewhere = state.path().join("elsewhere.key");
    std::fs::rename(&key, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
    let run = replay(&rules, Some(state.path()), &[], &reads("k", 2));
    assert_refused(&run, &["a symbolic link is refused"]);
}

/// The cache entry of `module` in `state`.
fn cache_entry(state: &Path, module: &[u8]) -> PathBuf {
    let prefix = blake3::hash(module).to_hex().to_string();
    std::fs::read_dir(state.join("modules"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .expect("the module has a cache entry")
}

#[test]
fn a_forged_cache_entry_is_recompiled_and_never_executed() {
    let (alpha_rules, beta_rules, state) = (temp_dir(), temp_dir(), temp_dir());
    let alpha = new_exe_rule("alpha", "alpha rule");
    let beta = new_exe_rule("beta", "beta rule");
    std::fs::write(alpha_rules.path().join("rule.wasm"), &alpha).unwrap();
    std::fs::write(beta_rules.path().join("rule.wasm"), &beta).unwrap();
    let run_alpha = |tag: &str| replay(alpha_rules.path(), Some(state.path()), &[], &reads(tag, 3));
    // Every signal is alpha's, as alpha's manifest says: beta's code would raise beta's.
    let only_alpha = |run: &Run| {
        let signals = run.signals();
        assert!(!signals.is_empty(), "{}", run.stderr);
        for signal in signals {
            assert_eq!(
                signal["rule"], "alpha",
                "another module's code ran:\n{}",
                run.stderr
            );
            assert_eq!(signal["title"], "alpha rule", "{}", run.stderr);
        }
    };

    let first = run_alpha("a");
    only_alpha(&first);
    // beta's code, compiled and authenticated by this agent with the same key.
    let beta_run = replay(beta_rules.path(), Some(state.path()), &[], &reads("b", 3));
    assert_eq!(beta_run.code, Some(0), "{}", beta_run.stderr);
    let alpha_entry = cache_entry(state.path(), &alpha);
    let beta_entry = std::fs::read(cache_entry(state.path(), &beta)).unwrap();
    let second = run_alpha("c");
    assert!(
        second.stderr.contains("rule loaded (cached code)"),
        "{}",
        second.stderr
    );

    // 1. beta's entry, MAC and all, under alpha's name. 2. beta's code with the unkeyed
    // checksum that earlier versions checked, which anyone can compute.
    let payload = &beta_entry[32..];
    let unkeyed = [blake3::hash(payload).as_bytes().as_slice(), payload].concat();
    for (forgery, tag) in [(beta_entry.clone(), "d"), (unkeyed, "e")] {
        std::fs::write(&alpha_entry, &forgery).unwrap();
        let run = run_alpha(tag);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        only_alpha(&run);
        assert!(
            run.stderr
                .contains("its MAC does not match this agent's key")
                && run.stderr.contains("its code was not executed"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("rule loaded (compiled)"),
            "{}",
            run.stderr
        );
    }
    // The rebuilt entry is authentic again.
    let last = run_alpha("f");
    assert!(
        last.stderr.contains("rule loaded (cached code)"),
        "{}",
        last.stderr
    );
    only_alpha(&last);
}

/// Runs minisign quietly with `args`; `Err` when it is not installed.
fn minisign(args: &[&std::ffi::OsStr]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("minisign")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
}

/// A minisign key pair in `dir`: (public key, secret key). Fails without minisign, which
/// dev/setup installs: a signing test that could not sign must not pass.
fn minisign_keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    let flags = ["-G", "-W", "-p", "-s"].map(std::ffi::OsStr::new);
    match minisign(&[
        flags[0],
        flags[1],
        flags[2],
        public.as_os_str(),
        flags[3],
        secret.as_os_str(),
    ]) {
        Ok(status) if status.success() => (public, secret),
        Ok(status) => panic!("minisign -G failed: {status}"),
        Err(err) => panic!("running minisign: {err} (dev/setup installs it)"),
    }
}

/// Signs `module` with `secret` into `MODULE.minisig` as rule `id`, version `version`, as the
/// README's recipe does (the trusted comment binds the file name, the id and the version).
fn sign(secret: &Path, module: &Path, id: &str, version: u64) {
    let file = module.file_name().unwrap().to_str().unwrap();
    sign_with_comment(
        secret,
        module,
        &picket::signing::trusted_comment(file, id, version),
    );
}

/// Signs `module` with `secret` and the trusted comment `comment`.
fn sign_with_comment(secret: &Path, module: &Path, comment: &str) {
    let flags = ["-S", "-s", "-m", "-t"].map(std::ffi::OsStr::new);
    let status = minisign(&[
        flags[0],
        flags[1],
        secret.as_os_str(),
        flags[2],
        module.as_os_str(),
        flags[3],
        std::ffi::OsStr::new(comment),
    ]);
    assert!(status.unwrap().success());
}

fn signature(module: &Path) -> PathBuf {
    PathBuf::from(format!("{}.minisig", module.display()))
}

#[test]
fn under_trusted_keys_only_signed_modules_load_and_hot_reload() {
    let keys = temp_dir();
    let (trusted, trusted_secret) = minisign_keys(keys.path(), "trusted");
    let (_, other_secret) = minisign_keys(keys.path(), "other");
    let rules = temp_dir();
    let (signed, unsigned, wrong) = (
        rules.path().join("signed.wasm"),
        rules.path().join("unsigned.wasm"),
        rules.path().join("wrong.wasm"),
    );
    std::fs::write(&signed, new_exe_rule("signed", "signed v1")).unwrap();
    sign(&trusted_secret, &signed, "signed", 1);
    std::fs::write(&unsigned, new_exe_rule("unsigned", "unsigned")).unwrap();
    std::fs::write(&wrong, new_exe_rule("wrong", "wrong")).unwrap();
    sign(&other_secret, &wrong, "wrong", 1);

    let mut agent = Streaming::spawn(
        picket()
            .args([
                "replay",
                "--watch",
                "--learning-period",
                "0s",
                "--trusted-key",
            ])
            .arg(&trusted)
            .arg("--rules")
            .arg(rules.path())
            .arg("-"),
    );
    assert!(
        agent.wait_for_log("rule loaded", RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    let log = agent.stderr();
    assert!(
        log.contains("only rule modules signed by a trusted key are loaded"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "{}: is not signed ({} is missing)",
            unsigned.display(),
            signature(&unsigned).display()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "{}: is signed ({}) by a key that is not one of the --trusted-key keys",
            wrong.display(),
            signature(&wrong).display()
        )),
        "{log}"
    );
    let mut sent = 0;
    let mut send = |agent: &mut Streaming| {
        agent.send(&token_read(sent, &format!("/tmp/s{sent}/cat"), K8S_TOKEN));
        sent += 1;
    };
    send(&mut agent);
    send(&mut agent);

    // An update without a new signature is refused; v1 keeps running.
    std::fs::write(&signed, new_exe_rule("signed", "signed v2")).unwrap();
    assert!(
        agent.wait_for_log("does not match its content", RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    send(&mut agent);
    // Signing it (only the .minisig changes) loads it.
    sign(&trusted_secret, &signed, "signed", 2);
    assert!(
        agent.wait_for_log("rule replaced by a new version", RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    send(&mut agent);
    // Signing a refused module with the trusted key admits it too.
    sign(&trusted_secret, &unsigned, "unsigned", 1);
    assert!(
        agent.wait_for_log("rule=unsigned", RELOAD_WAIT),
        "{}",
        agent.stderr()
    );
    send(&mut agent);
    send(&mut agent);
    let (code, signals, stderr) = agent.finish();
    // 2: modules were refused at start.
    assert_eq!(code, Some(2), "{stderr}");
    let mut fired: Vec<String> = signals
        .iter()
        .map(|s| {
            let exe = s["event"]["process"]["exe"].as_str().unwrap();
            format!("{} {exe}", s["title"].as_str().unwrap())
        })
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        [
            "signed v1 /tmp/s1/cat",
            "signed v1 /tmp/s2/cat",
            "signed v2 /tmp/s3/cat",
            "signed v2 /tmp/s4/cat",
            "signed v2 /tmp/s5/cat",
            "unsigned /tmp/s5/cat",
        ],
        "{stderr}"
    );
    assert!(!stderr.contains("rule=wrong"), "{stderr}");
}

#[test]
fn picket_test_under_a_trusted_key_refuses_unsigned_and_wrongly_signed_modules() {
    let keys = temp_dir();
    let (trusted, trusted_secret) = minisign_keys(keys.path(), "trusted");
    let (_, other_secret) = minisign_keys(keys.path(), "other");
    let dir = temp_dir();
    let module = dir.path().join("k8s_sa_token.wasm");
    std::fs::copy(rule_wasm("k8s-sa-token"), &module).unwrap();
    let cases = support::workspace().join("rules/k8s-sa-token/cases");
    let test = || {
        support::run(
            picket()
                .arg("test")
                .arg("--trusted-key")
                .arg(&trusted)
                .arg(&module)
                .arg(&cases),
            "",
        )
    };
    let run = test();
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("is not signed"), "{}", run.stdout);
    sign(&other_secret, &module, "k8s-sa-token", 1);
    let run = test();
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("not one of the --trusted-key keys"),
        "{}",
        run.stdout
    );
    sign(&trusted_secret, &module, "k8s-sa-token", 1);
    let run = test();
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("0 failed, 0 unusable"),
        "{}",
        run.stdout
    );
    // A tampered module under a good signature.
    let mut bytes = std::fs::read(&module).unwrap();
    bytes.extend_from_slice(b"\0\x04junk");
    std::fs::write(&module, bytes).unwrap();
    let run = test();
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("does not match its content"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_trusted_key_others_can_write_is_refused() {
    let keys = temp_dir();
    let (trusted, _) = minisign_keys(keys.path(), "trusted");
    chmod(&trusted, 0o666);
    let rules = temp_dir();
    let run = replay(
        rules.path(),
        None,
        &["--trusted-key", trusted.to_str().unwrap()],
        &reads("t", 1),
    );
    assert_refused(
        &run,
        &[&format!(
            "trusted key {} is writable by group and others (mode 0666)",
            trusted.display()
        )],
    );
}

#[test]
#[ignore = "needs root: mounts (./run-tests runs it)"]
fn a_read_only_mount_is_trusted_whatever_its_mode_bits() {
    // Kubernetes mounts a ConfigMap volume read-only, with 0777 directories: nothing can write
    // it through that mount, so its mode bits do not matter.
    support::require_root("the read-only mount test (mounts)");
    let top = temp_dir();
    let rules = rules_dir(top.path());
    chmod(&rules, 0o777);
    let events = top.path().join("events.jsonl");
    std::fs::write(&events, reads("r", 2).join("\n")).unwrap();
    let replay = format!(
        "{picket} replay --learning-period 0s --rules {rules} {events}",
        picket = env!("CARGO_BIN_EXE_picket"),
        rules = rules.display(),
        events = events.display(),
    );
    let script = format!(
        "if {replay} 2>&1; then exit 10; fi\n\
         mount --bind {rules} {rules}\n\
         mount -o remount,bind,ro {rules}\n\
         exec {replay}",
        rules = rules.display()
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec", &script])
        .output()
        .expect("running unshare");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("writable by group and others (mode 0777)"),
        "writable, it is refused first:\n{stdout}"
    );
    let signals: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(
        signals.len(),
        1,
        "read-only, it is loaded:\n{stdout}\n{stderr}"
    );
}

/// `replay --watch --trusted-key KEY --rules DIR`, streaming.
fn watch_signed(trusted: &Path, rules: &Path) -> Streaming {
    Streaming::spawn(
        picket()
            .args([
                "replay",
                "--watch",
                "--learning-period",
                "0s",
                "--trusted-key",
            ])
            .arg(trusted)
            .arg("--rules")
            .arg(rules)
            .arg("-"),
    )
}

/// Waits for `text` in the agent's log; kills it (it may be blocked) and fails if it never comes.
fn expect_log(agent: Streaming, text: &str) -> Streaming {
    if agent.wait_for_log(text, RELOAD_WAIT) {
        return agent;
    }
    let stderr = agent.kill9();
    panic!("expected `{text}` in the log:\n{stderr}");
}

/// Issue 21 item 6: a FIFO as `MODULE.wasm.minisig` once hung the agent's start (and, under
/// `run`, the rules watcher for good); it is refused at once, and a module signed later loads.
#[test]
fn a_fifo_as_a_signature_is_refused_at_once_and_later_modules_still_load() {
    let keys = temp_dir();
    let (trusted, secret) = minisign_keys(keys.path(), "trusted");
    let rules = temp_dir();
    let blocked = rules.path().join("blocked.wasm");
    std::fs::write(&blocked, new_exe_rule("blocked", "blocked")).unwrap();
    let status = Command::new("mkfifo")
        .arg(signature(&blocked))
        .status()
        .unwrap();
    assert!(status.success());
    let agent = watch_signed(&trusted, rules.path());
    let agent = expect_log(
        agent,
        &format!(
            "{}: its signature {} is a FIFO, not a regular file",
            blocked.display(),
            signature(&blocked).display()
        ),
    );
    let later = rules.path().join("later.wasm");
    std::fs::write(&later, new_exe_rule("later", "later")).unwrap();
    sign(&secret, &later, "later", 1);
    let mut agent = expect_log(agent, "rule=later");
    for i in 0..2 {
        agent.send(&token_read(i, &format!("/tmp/l{i}/cat"), K8S_TOKEN));
    }
    let (_, signals, stderr) = agent.finish();
    let titles: Vec<&str> = signals
        .iter()
        .map(|s| s["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["later"], "{stderr}");
}

/// Issue 21 item 6: a signature says which file, rule id and version it was made for. A signed
/// module renamed, one signed for another rule id, one signed the old way (no such comment), and
/// an older signed version put back in place of a newer one are refused, each saying why.
#[test]
fn a_signature_binds_the_file_name_the_rule_id_and_the_version() {
    let keys = temp_dir();
    let (trusted, secret) = minisign_keys(keys.path(), "trusted");
    let key = trusted.to_str().unwrap();
    let top = temp_dir();
    let rules = top.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let module = rules.join("bound.wasm");
    let refused = |text: &str| {
        let run = replay(&rules, None, &["--trusted-key", key], &reads("b", 2));
        assert!(run.signals().is_empty(), "{}", run.stderr);
        assert!(
            run.stderr.contains(text),
            "expected `{text}` in:\n{}",
            run.stderr
        );
    };

    // Signed the old way: minisign's own trusted comment names no rule.
    std::fs::write(&module, new_exe_rule("bound", "bound v1")).unwrap();
    sign_with_comment(
        &secret,
        &module,
        "timestamp:1764700000\tfile:bound.wasm\thashed",
    );
    refused("whose trusted comment does not say which rule it is for (an old-style signature");
    // Signed for another rule id than the manifest declares.
    sign(&secret, &module, "other-rule", 1);
    refused("is signed as rule `other-rule`, but its manifest declares rule `bound`");
    // Renamed: its signature was made for bound.wasm.
    sign(&secret, &module, "bound", 1);
    let renamed = rules.join("renamed.wasm");
    std::fs::rename(&module, &renamed).unwrap();
    std::fs::rename(signature(&module), signature(&renamed)).unwrap();
    refused("made for the file bound.wasm, not renamed.wasm");
    std::fs::rename(&renamed, &module).unwrap();
    std::fs::rename(signature(&renamed), signature(&module)).unwrap();
    let v1 = (
        std::fs::read(&module).unwrap(),
        std::fs::read(signature(&module)).unwrap(),
    );

    // Version 2 running; version 1, validly signed, put back: refused, version 2 kept.
    std::fs::write(&module, new_exe_rule("bound", "bound v2")).unwrap();
    sign(&secret, &module, "bound", 2);
    let mut agent = expect_log(watch_signed(&trusted, &rules), "rule=bound");
    agent.send(&token_read(0, "/tmp/v0/cat", K8S_TOKEN));
    agent.send(&token_read(1, "/tmp/v1/cat", K8S_TOKEN));
    std::fs::write(signature(&module), &v1.1).unwrap();
    std::fs::write(&module, &v1.0).unwrap();
    let mut agent = expect_log(
        agent,
        "is signed as version 1 of rule `bound`, older than version 2 already loaded",
    );
    agent.send(&token_read(2, "/tmp/v2/cat", K8S_TOKEN));
    let (_, signals, stderr) = agent.finish();
    let titles: Vec<&str> = signals
        .iter()
        .map(|s| s["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["bound v2", "bound v2"], "{stderr}");
}
