//! Shared by the integration tests: builds the rule modules to wasm once, runs the real `picket`
//! binary, and writes events.
//!
//! Tests that need what a plain `cargo test` may not have (root for BPF and mounts, the QEMU
//! kernels, the container image) are marked `#[ignore = "needs root: ..."]` (the reason says
//! what is missing), so that such a run reports them *ignored*, never passed. `./run-tests` runs
//! them with `-- --include-ignored`; a requirement missing then fails the test, saying which
//! (see [`require_root`]). No other test is ignored, so that flag runs exactly these.
#![allow(dead_code)]

pub mod receiver;
pub mod redis;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ sits in the workspace")
        .to_path_buf()
}

/// The wasm packages the tests load: every bundled rule (a folder `rules/NAME/` with a
/// `Cargo.toml`, package `NAME`) and every test rule (`tests/rules/NAME/`), found by folder so
/// that a new rule needs no entry here.
pub fn wasm_packages() -> Vec<String> {
    let mut packages: Vec<String> = bundled_rules().into_iter().map(|rule| rule.name).collect();
    packages.extend(rule_folders(&workspace().join("tests/rules")));
    packages
}

/// A bundled rule: its folder `rules/NAME/` and package name.
pub struct BundledRule {
    /// The package name, the folder's name.
    pub name: String,
    /// `rules/NAME`.
    pub dir: PathBuf,
}

/// Every bundled rule, in name order.
pub fn bundled_rules() -> Vec<BundledRule> {
    let rules = workspace().join("rules");
    rule_folders(&rules)
        .into_iter()
        .map(|name| BundledRule {
            dir: rules.join(&name),
            name,
        })
        .collect()
}

/// The names of the folders under `dir` that hold a `Cargo.toml`, each checked to name its
/// package as the folder is named (module files, `-p` arguments and case files rely on it).
fn rule_folders(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let manifest = path.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            text.lines()
                .any(|line| line == format!("name = \"{name}\"")),
            "{}: the package must be named `{name}`, as its folder is",
            manifest.display()
        );
        names.push(name);
    }
    names.sort();
    names
}

/// The conformance cases of a rule's `cases/` folder, ready for `picket test`: its `*.json`
/// files as they are, plus, for each `TEMPLATE.vars` file, the case templates of
/// `rule-sdk/cases/TEMPLATE/` with every `{{name}}` replaced by the value the `.vars` file (a
/// JSON object of strings) gives it. Cases shared by rules of one kind (the token readers) are
/// written once that way. Returns the folder the cases were written to, and how many.
pub fn rule_cases(cases: &Path) -> (tempfile::TempDir, usize) {
    let out = temp_dir();
    let mut count = 0;
    let mut write = |name: &std::ffi::OsStr, text: &str| {
        let path = out.path().join(name);
        assert!(!path.exists(), "two cases named {}", path.display());
        std::fs::write(&path, text).unwrap();
        count += 1;
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(cases)
        .unwrap_or_else(|e| panic!("{}: {e}", cases.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        match path.extension().and_then(|x| x.to_str()) {
            Some("json") => write(
                path.file_name().unwrap(),
                &std::fs::read_to_string(&path).unwrap(),
            ),
            Some("vars") => {
                let vars: std::collections::BTreeMap<String, String> =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let template = workspace()
                    .join("rule-sdk/cases")
                    .join(path.file_stem().unwrap());
                let mut templates: Vec<PathBuf> = std::fs::read_dir(&template)
                    .unwrap_or_else(|e| panic!("{}: {e}", template.display()))
                    .map(|entry| entry.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect();
                templates.sort();
                for case in templates {
                    let text = expand(&std::fs::read_to_string(&case).unwrap(), &vars)
                        .unwrap_or_else(|e| {
                            panic!("{} with {}: {e}", case.display(), path.display())
                        });
                    write(case.file_name().unwrap(), &text);
                }
            }
            _ => {}
        }
    }
    (out, count)
}

/// `text` with each `{{name}}` replaced by `vars[name]`; a name without a value is an error.
fn expand(text: &str, vars: &std::collections::BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .ok_or_else(|| "a `{{` without `}}`".to_string())?;
        let name = &rest[start + 2..start + end];
        let value = vars
            .get(name)
            .ok_or_else(|| format!("no value for `{{{{{name}}}}}`"))?;
        out.push_str(value);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Builds the rule modules once per test binary and returns the directory holding them. Cargo's
/// own lock serializes test binaries that build at the same time.
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(workspace()).args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ]);
        for package in wasm_packages() {
            command.args(["-p", &package]);
        }
        let status = command
            .status()
            .expect("running cargo to build the rule modules");
        assert!(status.success(), "building the rule modules to wasm failed");
        target_dir().join("wasm32-unknown-unknown/release")
    })
}

/// Builds binary `bin` of workspace package `package` (release) and returns its path. For
/// helpers the tests copy elsewhere (a QEMU guest); cargo's lock serializes concurrent builds.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--release", "-p", package, "--bin", bin])
        .status()
        .expect("running cargo");
    assert!(status.success(), "building {package} failed");
    target_dir().join("release").join(bin)
}

/// Cargo's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The module of a wasm package, such as `eks-token`.
pub fn rule_wasm(package: &str) -> PathBuf {
    let path = wasm_dir().join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A `picket` command.
pub fn picket() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_picket"));
    command.env("PICKET_LOG", "info");
    command
}

/// What a finished command printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout lines parsed as JSON signals.
    pub fn signals(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

/// Starts `command` with stdin, stdout and stderr piped.
fn spawn_piped(command: &mut Command) -> std::process::Child {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting picket")
}

/// Runs `command` to completion, with `stdin` as its input.
pub fn run(command: &mut Command, stdin: &str) -> Run {
    use std::io::Write;
    let mut child = spawn_piped(command);
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("waiting for picket");
    writer.join().expect("stdin writer");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Asserts that a `picket test` run (`what` names it) exited 0 with all of its `count` cases
/// passed.
pub fn assert_all_cases_passed(what: &str, out: &Run, count: usize) {
    assert_eq!(out.code, Some(0), "{what}:\n{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("{count} case(s): {count} passed, 0 failed")),
        "{what}: expected {count} cases to pass\n{}",
        out.stdout
    );
}

/// A token-read event as one JSON line.
pub fn token_read(second: u32, exe: &str, path: &str) -> String {
    serde_json::json!({
        "ts": format!("2026-11-22T10:{:02}:{:02}Z", second / 60, second % 60),
        "kind": "open",
        "host": "node-a",
        "file": {"path": path, "access": "read"},
        "process": {"pid": 1000 + second, "exe": exe},
    })
    .to_string()
}

/// The Kubernetes token path.
pub const K8S_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The EKS token path.
pub const EKS_TOKEN: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token";

/// Whether the tests run as root (needed for BPF and for mounts in a private namespace).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Fails the test, saying why, unless it runs as root. For the tests marked
/// `#[ignore = "needs root: ..."]`: run with `--include-ignored`, they must not pass without
/// having run.
pub fn require_root(what: &str) {
    assert!(
        is_root(),
        "{what} needs root; run it as root (./run-tests does), or without --include-ignored"
    );
}

/// For the live benchmarks, which need their own mount namespace: in the process started by
/// `cargo bench`, re-runs this binary with `--inner` (and `--quick` if given) in a private mount
/// namespace, waits for it and returns `None`; in that child, returns `Some(quick)`. Without
/// root, says why it skips and returns `None`.
pub fn bench_in_private_mount_namespace(name: &str) -> Option<bool> {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--inner") {
        return Some(quick);
    }
    if !is_root() {
        println!("SKIPPED {name} benchmark: needs root for BPF and mounts");
        return None;
    }
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .arg("--inner")
        .args(quick.then_some("--quick"))
        .status()
        .expect("unshare");
    assert!(status.success(), "the {name} benchmark failed");
    None
}

/// Runs a shell script; panics if it fails.
pub fn sh(script: &str) {
    let status = Command::new("sh").args(["-ec", script]).status().unwrap();
    assert!(status.success(), "{script}");
}

/// For the live benchmarks, inside their private mount namespace: a tmpfs over /run holding the
/// kubelet's projected Kubernetes token, a temporary work directory with `rules/` holding the
/// k8s-sa-token module, and `bin/reader<i>` for each `i` in `readers`, renamed copies of `cat`.
pub fn bench_token_layout(readers: std::ops::RangeInclusive<usize>) -> tempfile::TempDir {
    let work = temp_dir();
    let w = work.path().display().to_string();
    let (first, last) = readers.into_inner();
    sh(&format!(
        "mount -t tmpfs bench /run
         sa=/run/secrets/kubernetes.io/serviceaccount; mkdir -p $sa; mount -t tmpfs bench-sa $sa
         mkdir $sa/..2026_11_22_10_00_00.1; echo t > $sa/..2026_11_22_10_00_00.1/token
         ln -s ..2026_11_22_10_00_00.1 $sa/..data; ln -s ..data/token $sa/token
         mkdir -p {w}/rules {w}/bin
         for i in $(seq {first} {last}); do cp $(command -v cat) {w}/bin/reader$i; done"
    ));
    std::fs::copy(
        rule_wasm("k8s-sa-token"),
        work.path().join("rules/k8s_sa_token.wasm"),
    )
    .unwrap();
    work
}

/// For the live benchmarks: `picket run` on a [`bench_token_layout`] work directory, with a
/// learning period of 0 and `extra` arguments, signals read from its stdout.
pub struct BenchAgent {
    child: std::process::Child,
    signals: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    work: PathBuf,
}

impl BenchAgent {
    /// Starts the agent, waits until it is ready, and has the group's baseline read the token
    /// (learned silently).
    pub fn start(work: &Path, extra: &[String]) -> BenchAgent {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_picket"))
            .args(["run", "--learning-period", "0s", "--rules"])
            .arg(work.join("rules"))
            .arg("--state")
            .arg(work.join("state"))
            .args(extra)
            .env("PICKET_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let signals = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log = std::io::BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                if line.contains("agent ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the agent did not get ready");
        sh("cat /var/run/secrets/kubernetes.io/serviceaccount/token >/dev/null");
        BenchAgent {
            child,
            signals,
            work: work.to_path_buf(),
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `bin/reader<i>` for each `i`, one at a time, each reading the token once; returns
    /// each one's open -> signal latency in microseconds: the time its signal was read from the
    /// agent's output minus the event's kernel timestamp (both wall clock on this machine).
    pub fn latencies_us(&mut self, readers: std::ops::RangeInclusive<usize>) -> Vec<f64> {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let w = self.work.display().to_string();
        let mut latencies = Vec::new();
        for i in readers {
            let status = Command::new(format!("{w}/bin/reader{i}"))
                .arg("/var/run/secrets/kubernetes.io/serviceaccount/token")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            let line = self.signals.next().expect("a signal").unwrap();
            let read_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let signal: serde_json::Value = serde_json::from_str(&line).unwrap();
            let ts = signal["ts"].as_str().unwrap();
            let opened_at =
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                    .unwrap()
                    .unix_timestamp_nanos();
            let opened_at = Duration::from_nanos(opened_at as u64);
            latencies.push((read_at.as_secs_f64() - opened_at.as_secs_f64()) * 1e6);
            assert_eq!(signal["new_value"]["value"], format!("{w}/bin/reader{i}"));
        }
        latencies
    }

    /// Stops the agent (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The `p` quantile (0 to 1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A temporary rules directory holding the modules of `packages` (such as `k8s-sa-token`).
pub fn rules_dir_of(packages: &[&str]) -> tempfile::TempDir {
    let dir = temp_dir();
    for package in packages {
        let file = format!("{}.wasm", package.replace('-', "_"));
        std::fs::copy(rule_wasm(package), dir.path().join(file)).unwrap();
    }
    dir
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// A picket process fed through stdin while the test watches its signals as they arrive.
pub struct Streaming {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    signals: std::sync::mpsc::Receiver<(std::time::Instant, serde_json::Value)>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Signals [`Streaming::wait_for_signals`] took off the channel, kept for `finish`.
    waited: Vec<serde_json::Value>,
}

impl Streaming {
    /// Starts `command` with piped stdin, stdout and stderr.
    pub fn spawn(command: &mut Command) -> Streaming {
        use std::io::BufRead;
        let mut child = spawn_piped(command);
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, signals) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log_writer = std::sync::Arc::clone(&log);
        let readers = vec![
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    let value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("signal is not JSON ({e}): {line}"));
                    if tx.send((std::time::Instant::now(), value)).is_err() {
                        return;
                    }
                }
            }),
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    let mut log = log_writer.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }),
        ];
        Streaming {
            stdin: child.stdin.take(),
            child,
            signals,
            stderr: log,
            readers,
            waited: Vec::new(),
        }
    }

    /// Writes one event line.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(line.as_bytes()).expect("writing to picket");
        stdin.write_all(b"\n").expect("writing to picket");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Signals that arrived so far, with when they arrived.
    pub fn received(&self) -> Vec<(std::time::Instant, serde_json::Value)> {
        self.signals.try_iter().collect()
    }

    /// Waits until `count` signals have arrived in all (since the start, not counting those
    /// [`Streaming::received`] took), up to `timeout`: proof that the events before them were
    /// evaluated. They stay part of what [`Streaming::finish`] returns.
    pub fn wait_for_signals(&mut self, count: usize, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.waited.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.signals.recv_timeout(left) {
                Ok((_, signal)) => self.waited.push(signal),
                Err(_) => return false,
            }
        }
        true
    }

    /// Waits until stderr contains `text`, up to `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: std::time::Duration) -> bool {
        self.wait_for_stderr(timeout, |stderr| stderr.contains(text))
    }

    /// Waits for one log line that contains every one of `parts` (a message and the module it
    /// names, say: a single substring could match an earlier line about the same module).
    pub fn wait_for_log_line(&self, parts: &[&str], timeout: std::time::Duration) -> bool {
        self.wait_for_stderr(timeout, |stderr| {
            stderr
                .lines()
                .any(|line| parts.iter().all(|part| line.contains(part)))
        })
    }

    /// Polls what picket logged until `found` holds, up to `timeout`.
    fn wait_for_stderr(&self, timeout: std::time::Duration, found: impl Fn(&str) -> bool) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if found(&self.stderr()) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    /// What picket logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Closes stdin and waits for the exit; returns the exit code and the remaining signals.
    pub fn finish(mut self) -> (Option<i32>, Vec<serde_json::Value>, String) {
        self.stdin.take();
        let status = self.child.wait().expect("waiting for picket");
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        let mut signals = std::mem::take(&mut self.waited);
        signals.extend(self.signals.try_iter().map(|(_, v)| v));
        (status.code(), signals, self.stderr())
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(mut self) -> String {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        self.stdin.take();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.stderr()
    }
}

/// The bincode-encoded manifest of a test rule subscribed to opens of `token` files.
pub fn manifest_bytes(id: &str, title: &str) -> Vec<u8> {
    use picket_abi::{EventKind, Manifest, NewValueDefaults, Severity, Subscription};
    let manifest = Manifest {
        id: id.into(),
        title: title.into(),
        description: String::new(),
        severity: Severity::Low,
        tactic: "TA0006-credential-access".into(),
        technique: "T1552-unsecured-credentials".into(),
        subscription: Subscription {
            kinds: vec![EventKind::Open],
            basenames: vec!["token".into()],
            path_prefixes: vec![],
        },
        new_value: NewValueDefaults {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        },
        states: Vec::new(),
    };
    let mut bytes = Vec::new();
    picket_abi::encode_into_vec(&manifest, &mut bytes).unwrap();
    bytes
}

/// Bytes as a WAT string literal.
pub fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A small rule in WAT: raises a signal (titled `title`) the first time each `process.exe`
/// reads a token, in one group. Two builds with different titles are two versions of one rule
/// whose signals say which version evaluated the event.
pub fn new_exe_rule(id: &str, title: &str) -> Vec<u8> {
    let text = new_exe_rule_wat(id, title);
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The WAT text of [`new_exe_rule`].
pub fn new_exe_rule_wat(id: &str, title: &str) -> String {
    let manifest = manifest_bytes(id, title);
    let packed = (1024i64 << 32) | manifest.len() as i64;
    format!(
        r#"(module
  (import "picket" "new_value" (func $new_value (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "picket" "emit_signal" (func $emit_signal (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{manifest}")
  (data (i32.const 3072) "process.exe")
  (data (i32.const 3088) "g")
  (data (i32.const 3104) "\00")
  (func (export "picket_abi_version") (result i32) i32.const 1)
  (func (export "picket_manifest") (result i64) i64.const {packed})
  (func (export "picket_alloc") (param i32) (result i32) i32.const 8192)
  (func (export "picket_on_event") (param $p i32) (param $n i32) (result i32)
    ;; the exe string slot: offset at +56, length at +60 (docs/abi.md)
    (if (i32.eq
          (call $new_value (i32.const 3072) (i32.const 11) (i32.const 3088) (i32.const 1)
            (i32.add (local.get $p) (i32.load offset=56 (local.get $p)))
            (i32.load offset=60 (local.get $p)))
          (i32.const 1))
      (then (drop (call $emit_signal (i32.const 3104) (i32.const 1)))))
    i32.const 0))"#,
        manifest = wat_bytes(&manifest),
    )
}
